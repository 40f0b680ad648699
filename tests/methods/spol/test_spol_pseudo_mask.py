"""SPOL pseudo-mask recipe on hand-made CAMs."""
import numpy as np
import torch

from spol.pseudo_mask import (gaussian_from_weights, gaussian_prior, normalize_and_resize, pseudo_mask_from_cam,
                              pseudo_mask_image)


def _two_level_rectangle():
    cam = np.zeros((256, 256))
    cam[60:80, 100:120] = 0.4   # 20 rows x 20 cols, weight 0.4
    cam[60:80, 120:140] = 0.2   # 20 rows x 20 cols, weight 0.2
    return cam


def test_gaussian_peaks_at_the_weighted_centre():
    prior = gaussian_prior(_two_level_rectangle())
    # ux = (0.4 * sum(100..119) + 0.2 * sum(120..139)) / (0.4 * 20 + 0.2 * 20) = 1394 / 12 = 116.17
    # uy = mean(60..79) = 69.5 -> rows 69 and 70 tie
    y, x = np.unravel_index(np.argmax(prior), prior.shape)
    assert x == 116 and y in (69, 70)
    # the nearest pixel is 0.17 px (x) and 0.5 px (y, sigma_y = sqrt(399 / 12 / 10) = 1.8 px) off: ~0.96
    assert prior.max() <= 1.0 and 0.95 < prior[y, x] < 1.0
    assert prior[0, 0] < 1e-6 and np.isfinite(prior).all()


def test_gaussian_variance_is_divided_by_ten():
    # uniform weights on columns 100..139 of one block -> sx = (40^2 - 1) / 12 / 10
    weights = np.zeros((64, 256))
    weights[20:40, 100:140] = 1.0
    g = gaussian_from_weights(weights)
    sx = (40 ** 2 - 1) / 12 / 10
    ux, uy = 119.5, 29.5
    # along the row through the centre (between rows 29/30, dy^2 = 0.25 / sy) compare x profile ratios
    sy = (20 ** 2 - 1) / 12 / 10
    expected = np.exp(-0.5 * ((139 - ux) ** 2 / sx + (29 - uy) ** 2 / sy))
    assert np.isclose(g[29, 139], expected, rtol=1e-9)


def test_band_limits_and_small_contours():
    cam = np.zeros((256, 256))
    cam[10:14, 10:14] = 0.3       # area 9 < 20: skipped
    cam[100:140, 100:140] = 0.9   # outside [0.1, 0.5]: no contour
    assert not gaussian_prior(cam).any()


def test_flat_zero_and_single_pixel_maps_give_no_nan():
    single_pixel = np.zeros((8, 8))
    single_pixel[3, 3] = 1.0
    for raw in (np.full((8, 8), 5.0), np.zeros((8, 8)), single_pixel):
        mask = pseudo_mask_from_cam(raw, (40, 30))
        assert mask.shape == (30, 40, 3) and mask.dtype == np.uint8
        assert not mask[:, :, 2].any()
    flat = pseudo_mask_from_cam(np.full((8, 8), 5.0), (40, 30))
    # 5 / (5 + 1e-6) * 255 = 254.99995, truncated by np.uint8 as the authors' script does
    assert flat[:, :, 0].min() == 254 and not flat[:, :, 1].any()
    # a flat in-band map: one contour around everything, finite Gaussian
    assert np.isfinite(gaussian_prior(np.full((64, 64), 0.3))).all()
    single = np.zeros((64, 64))
    single[30, 30] = 0.3
    assert not gaussian_prior(single).any()


def test_degenerate_weights_are_skipped_not_nan():
    line = np.zeros((32, 32))
    line[5, 3:20] = 1.0               # zero variance in y
    assert gaussian_from_weights(line) is None
    diag = np.zeros((32, 32))
    diag[np.arange(20), np.arange(20)] = 1.0  # |correlation| = 1
    assert gaussian_from_weights(diag) is None
    assert gaussian_from_weights(np.zeros((4, 4))) is None


def test_normalize_and_resize_divides_by_max_and_upsamples():
    cams = torch.zeros(2, 4, 4)
    cams[0, 1:3, 1:3] = 2.0  # a 2x2 block: bilinear upsampling keeps its value inside
    out = normalize_and_resize(cams, 16)
    assert out.shape == (2, 16, 16)
    assert abs(out[0].max().item() - 2.0 / (2.0 + 1e-6)) < 1e-5
    assert not out[1].any()


def test_pseudo_mask_channels_and_original_size():
    cam = _two_level_rectangle()
    cam[65:75, 160:170] = 1.0  # a confident peak elsewhere, keeps the max at 1
    mask = pseudo_mask_image(cam, (512, 128))
    assert mask.shape == (128, 512, 3)
    # R is the CAM: the peak block maps to x 320..340, y 32..37 in the original size
    assert mask[34, 330, 0] == 255
    # G is the Gaussian, peaking near the rectangle's weighted centre (116.2 * 2, 69.5 / 2)
    y, x = np.unravel_index(np.argmax(mask[:, :, 1]), mask.shape[:2])
    assert abs(x - 232.5) <= 2 and abs(y - 34.5) <= 2 and mask[y, x, 1] > 200
    assert not mask[:, :, 2].any()
