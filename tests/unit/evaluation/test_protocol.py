"""utils.evaluation.protocol: each evaluation geometry's transform, ground truth, box rule and IoU convention on
tiny hand-built cases, and the lookup by either spelling. Expected numbers are worked out by hand."""
import numpy as np
import pytest
import torch

from utils.data.layouts import Record, load_records
from utils.evaluation.protocol import (CHOICES, CenterCrop, Resize, SpolOfficial, canonical, choices, expand, get_protocol)
from utils.data.transforms import SPOLTransform


# ----------------------------------------------------------------------------- lookup
def test_lookup_accepts_neutral_names_and_the_old_command_line_names():
    for old, new, cls in (("wsol", "resize", Resize), ("spol", "center_crop", CenterCrop),
                          ("spol-official", "spol_official", SpolOfficial)):
        assert canonical(old) == canonical(new) == new
        a, b = get_protocol(old, 32, 40), get_protocol(new, 32, 40)
        assert type(a) is type(b) is cls and a.geometry["resize"] == b.geometry["resize"]
        assert a.label == old and b.label == new and a.name == b.name == new  # outputs keep the spelling asked
    assert set(CHOICES) == {"wsol", "spol", "spol-official", "resize", "center_crop", "spol_official"}
    assert choices("resize", "center_crop") == ["wsol", "spol", "resize", "center_crop"]
    assert expand("both") == ["spol", "wsol"] and expand("center_crop") == ["center_crop"]
    proto = get_protocol("resize")
    assert get_protocol(proto) is proto
    with pytest.raises(ValueError, match="protocol must be one of"):
        get_protocol("other")
    with pytest.raises(ValueError, match="resize_size 16 < input_size 32"):
        get_protocol("center_crop", 32, 16)


def test_option_parsers_take_their_choices_from_the_module():
    from spol.options import seg_test_parser
    from utils.options import evaluate_parser

    def protocol_choices(parser):
        return next(a.choices for a in parser._actions if "--protocol" in a.option_strings)

    assert tuple(protocol_choices(evaluate_parser())) == CHOICES
    assert protocol_choices(seg_test_parser()) == list(CHOICES) + ["both"]


# ----------------------------------------------------------------------------- geometry
def test_geometry_and_transform_of_each_protocol():
    assert get_protocol("resize").geometry == {"protocol": "resize", "resize": (224, 224), "crop": None,
                                               "offset": (0, 0), "output_size": (224, 224)}
    crop = get_protocol("center_crop").geometry
    assert crop["offset"] == (16, 16) and crop["crop"] == 224 and crop["resize"] == (256, 256)
    image = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8)
    from torchvision import tv_tensors
    sample = {"image": tv_tensors.Image(image)}
    assert get_protocol("resize", 16).transform()(sample)["image"].shape == (3, 16, 16)
    # center_crop: the SPOL authors' pipeline by default (what SPOL trains with), torchvision's on request
    assert isinstance(get_protocol("center_crop", 16, 20).transform(), SPOLTransform)
    assert isinstance(get_protocol("spol-official", 16, 20).transform(), SPOLTransform)
    out = get_protocol("center_crop", 16, 20).transform(pipeline="torchvision")(sample)
    assert out["image"].shape == (3, 16, 16)
    assert not isinstance(get_protocol("center_crop", 16, 20).transform(pipeline="torchvision"), SPOLTransform)
    with pytest.raises(ValueError):
        get_protocol("resize").transform(pipeline="albumentations")


def test_resize_gt_boxes_use_choe_truncation():
    out = get_protocol("wsol").gt_boxes([[10, 20, 110, 220]], (500, 375))
    # int(10*224/500)=int(4.48)=4, int(20*224/375)=int(11.95)=11, int(49.28)=49, int(131.41)=131
    np.testing.assert_array_equal(out, [[4, 11, 49, 131]])
    assert out.dtype == np.float32


def test_center_crop_gt_boxes_follow_the_authors_albumentations_path():
    boxes = [[0, 0, 512, 256], [10, 10, 20, 40], [100, 50, 300, 100]]
    for name in ("center_crop", "spol_official"):
        out = get_protocol(name).gt_boxes(boxes, (512, 256))
        # clip to the image (511, 255), scale x by 0.5, y by 1, subtract 16, clip to [0, 224] (not 223):
        # (0,0,255.5,255) -> (0,0,224,224); (-11,-6,-6,24) has no area in the crop: dropped; (34,34,134,84)
        np.testing.assert_array_equal(out, [[0, 0, 224, 224], [34, 34, 134, 84]])
    assert get_protocol("spol").gt_boxes([[10, 10, 20, 40]], (512, 256)).shape == (0, 4)


def test_gt_mask_is_nearest_resized_to_the_geometry(tiny_cub):
    record = load_records(tiny_cub, "cub", "train")[0]  # mask 255 on x 4..13, y 6..13 of 32x24
    # nearest 32x24 -> 16x16: src x = 2x, src y = floor(1.5y): x 2..6, y 4..9
    expected = np.zeros((16, 16), np.uint8)
    expected[4:10, 2:7] = 255
    np.testing.assert_array_equal(get_protocol("resize", 16).gt_mask(record), expected)
    # 32x24 -> 32x32 (src y = floor(0.75y): rows 8..18), then crop offset 8: rows 0..10, cols 0..5
    expected = np.zeros((16, 16), np.uint8)
    expected[0:11, 0:6] = 255
    np.testing.assert_array_equal(get_protocol("center_crop", 16, 32).gt_mask(record), expected)
    image = get_protocol("center_crop", 16, 32).image(record)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    no_mask = Record("x.jpg", "/x.jpg", 0, np.zeros((0, 4), np.float32), (1, 1), None)
    assert get_protocol("resize").gt_mask(no_mask) is None


def test_to_image_fraction_inverts_the_geometry():
    assert get_protocol("resize", 100).to_image_fraction([10, 20, 50, 100]) == [0.1, 0.2, 0.5, 1.0]
    # center_crop 100 of 120: offset 10, so input pixel 0 is resized pixel 10 = 1/12 of the image
    assert get_protocol("center_crop", 100, 120).to_image_fraction([0, 0, 50, 110]) == pytest.approx(
        [10 / 120, 10 / 120, 0.5, 1.0])



def test_to_image_box_gives_original_pixels_of_a_non_square_image():
    # a 300 x 150 image: x scales by 300 / 100 = 3, y by 150 / 100 = 1.5
    box = get_protocol("resize", 100).to_image_box([10, 20, 50, 60], (300, 150))
    assert box.tolist() == [30.0, 30.0, 150.0, 90.0]
    # centre crop 100 of 120 (offset 10): (x + 10) / 120 * 300 and (y + 10) / 120 * 150
    box = get_protocol("center_crop", 100, 120).to_image_box([10, 20, 50, 60], (300, 150))
    assert box.tolist() == pytest.approx([50.0, 37.5, 150.0, 87.5])
    # clipped to the image; the no-box placeholder stays [0, 0, 0, 0]
    assert get_protocol("center_crop", 100, 120).to_image_box([0, 0, 110, 110], (300, 150)).tolist() == \
        pytest.approx([25.0, 12.5, 300.0, 150.0])
    assert get_protocol("center_crop", 100, 120).to_image_box([0, 0, 0, 0], (300, 150)).tolist() == [0, 0, 0, 0]


def test_map_to_image_puts_the_map_back_over_the_original_image():
    m = np.zeros((4, 4), np.float32)
    m[:, 2:] = 1.0                                        # the right half of the input
    whole = get_protocol("resize", 4).map_to_image(m, (8, 2))
    assert whole.shape == (2, 8) and whole[:, :3].max() == 0 and whole[:, 5:].min() == 1
    # centre crop 4 of 8 (offset 2): the input covers the middle half; outside it the map is 0
    cropped = get_protocol("center_crop", 4, 8).map_to_image(np.ones((4, 4), np.float32), (16, 16))
    assert cropped.shape == (16, 16) and cropped[6:10, 6:10].min() == 1
    assert cropped[:, :2].max() == 0 and cropped[:2].max() == 0 and cropped[14:].max() == 0

def test_from_image_box_brings_a_predicted_box_into_the_input_as_the_gt_boxes():
    """A 300 x 150 image. resize at 100: x * 100 / 300, y * 100 / 150, truncated as Choe's resize_bbox."""
    resize = get_protocol("resize", 100)
    assert resize.from_image_box([30, 30, 150, 90], (300, 150)).tolist() == [10, 20, 50, 60]
    assert resize.from_image_box([31, 31, 152, 91], (300, 150)).tolist() == [10, 20, 50, 60]  # 10.3, 20.7, ...
    # centre crop 100 of 120 (offset 10): x / 300 * 120 - 10, y / 150 * 120 - 10
    crop = get_protocol("center_crop", 100, 120)
    assert crop.from_image_box([50, 37.5, 150, 87.5], (300, 150)).tolist() == pytest.approx([10, 20, 50, 60])
    # clipped to the crop [0, 100]; a box the crop leaves out (x1 = 20 / 300 * 120 - 10 = -2) is no box
    assert crop.from_image_box([0, 0, 299, 149], (300, 150)).tolist() == pytest.approx([0, 0, 100, 100])
    assert crop.from_image_box([0, 0, 20, 150], (300, 150)).tolist() == [0, 0, 0, 0]
    # the same path as the image's GT boxes, so a box equal to its GT box lands on it
    gt = np.array([[12.5, 7, 280, 140]])
    for protocol in (resize, crop):
        np.testing.assert_array_equal(protocol.from_image_box(gt[0], (300, 150)), protocol.gt_boxes(gt, (300, 150))[0])
    assert resize.same_geometry(get_protocol("wsol", 100))
    assert crop.same_geometry(get_protocol("spol_official", 100, 120))
    assert not crop.same_geometry(get_protocol("center_crop", 100, 128)) and not crop.same_geometry(resize)


# ----------------------------------------------------------------------------- box rule and IoU
def _block_map():
    m = np.zeros((8, 8))
    m[2:5, 3:6] = 1.0  # rows 2..4, cols 3..5
    return m


def test_box_rules():
    # Choe: x1 = min(x0 + w, W - 1) = 6; SPOL's: [x, y, x + w, y + h] = the same corner here
    np.testing.assert_array_equal(get_protocol("resize", 8).box(_block_map(), 0.5), [3, 2, 6, 5])
    np.testing.assert_array_equal(get_protocol("center_crop", 8, 8).box(_block_map(), 0.5), [3, 2, 6, 5])
    m = np.zeros((8, 8))
    m[4:8, 4:8] = 1.0  # touching the right/bottom edge: Choe clips to W - 1, SPOL does not
    np.testing.assert_array_equal(get_protocol("resize", 8).box(m, 0.5), [4, 4, 7, 7])
    np.testing.assert_array_equal(get_protocol("center_crop", 8, 8).box(m, 0.5), [4, 4, 8, 8])
    for name in ("resize", "center_crop", "spol_official"):  # no box: the [0, 0, 0, 0] placeholder
        np.testing.assert_array_equal(get_protocol(name, 8, 8).box(np.zeros((8, 8)), 0.5), [0, 0, 0, 0])


def test_iou_conventions():
    pred, gt = [3, 2, 6, 5], [[3.0, 2.0, 5.0, 4.0]]
    # resize, inclusive: pred 4x4 = 16, GT 3x3 = 9, inter 9 -> 0.5625, a hit
    loc, per_image = get_protocol("resize", 8).score([pred], [gt])
    assert loc["gt_known_loc"] == 100.0 and per_image is None
    # center_crop, the authors' exclusive IoU: pred 3x3 = 9, GT 2x2 = 4 -> 0.444, a miss
    loc, per_image = get_protocol("center_crop", 8, 8).score([pred], [gt])
    assert loc["gt_known_loc"] == 0.0 and per_image[0]["iou"] == pytest.approx(4 / 9)


def test_counting_rules_of_center_crop_and_spol_official():
    half = [[0.0, 0.0, 10.0, 5.0]]  # IoU exactly 0.5 against [0, 0, 10, 10]
    preds = [[0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 10, 10]]
    gts = [half, half, np.zeros((0, 4))]
    flags = [(True, True), (True, True), (False, True)]
    ours, per_image = get_protocol("spol", 16, 16).score(preds, gts, flags)
    assert [o["hit"] for o in per_image] == [True, False, False]   # >= 0.5; no box and no GT box: misses
    assert (ours["gt_known_loc"], ours["num_counted"], ours["num_skipped"]) == (pytest.approx(100 / 3), 3, 0)
    # theirs: skipped images, '> 0.5' whatever was asked, union + 1e-12 (0.5 becomes 0.4999999999999995)
    theirs, per_image = get_protocol("spol-official", 16, 16).score(preds, gts, flags, iou_compare=">=")
    assert [o["skipped"] for o in per_image] == [None, "no contour", "no GT box in the crop"]
    assert (theirs["gt_known_loc"], theirs["num_counted"], theirs["num_skipped"]) == (0.0, 1, 2)
    assert theirs["top1_loc"] == 0.0


def test_seg_grid_title_names_the_protocol_run(tiny_cub, tmp_path, monkeypatch):
    import spol.visualize as vis

    seen = {}

    def fake_picture(images, box_sets, **kwargs):
        seen.update(kwargs, shapes=[i.shape for i in images], gts=[b[0][0] for b in box_sets])
        return np.zeros((4, 4, 3), np.uint8)

    monkeypatch.setattr(vis, "stage_picture", fake_picture)
    record = load_records(tiny_cub, "cub", "test")[0]
    proto = get_protocol("spol-official", 16, 20)
    vis.write_grid(tmp_path / "grid.png", [record], {record.image_id: np.zeros((16, 16))},
                   {record.image_id: np.zeros(4)}, proto)
    assert "spol-official protocol: resize 20, centre crop 16" in seen["title"]
    assert seen["shapes"] == [(16, 16, 3)]
    np.testing.assert_array_equal(seen["gts"][0], proto.gt_boxes(record.boxes, record.size))
    assert (tmp_path / "grid.png").is_file()


def test_bad_geometry_and_pipeline_requests_are_refused_with_their_reason():
    with pytest.raises(ValueError, match="resize_size 200 < input_size 224"):
        get_protocol("center_crop", 224, 200)
    assert get_protocol("resize", 224, 200).input_size == 224  # no crop: resize_size plays no part
    p = get_protocol("center_crop", 224, 256)
    with pytest.raises(ValueError, match="normalises before it resizes"):
        p.transform("spol", normalize=False)
    with pytest.raises(ValueError, match="pipeline must be"):
        p.transform("pil")


def test_batch_normalisation_takes_uint8_only():
    from utils.data.transforms import normalize_images

    with pytest.raises(TypeError, match="takes uint8 images, got torch.float32"):
        normalize_images(torch.zeros(1, 3, 2, 2))
    out = normalize_images(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    assert torch.allclose(out.flatten(), (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
