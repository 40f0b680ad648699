"""``from localize import load_localizer``: paths, PIL images and numpy arrays in one call, the Result's
fields, an unreadable image raised or skipped, and input that is no image."""
import numpy as np
import pytest
from PIL import Image

from localize import load_localizer
from utils.errors import DataError


@pytest.fixture(scope="module")
def seg_localizer(made_runs):
    return load_localizer(made_runs["seg"], device="cpu", batch_size=2)


def test_paths_pil_images_and_arrays_in_one_call(seg_localizer, tmp_path):
    Image.fromarray(np.full((30, 70, 3), 200, np.uint8)).save(tmp_path / "a.jpg")
    items = [tmp_path / "a.jpg", Image.new("LA", (20, 40)), np.zeros((24, 36, 3), np.uint8),
             np.full((10, 12), 40000, np.uint16), np.zeros((16, 16, 4), np.uint8)]
    result = seg_localizer(items)
    assert result.names == [str(tmp_path / "a.jpg"), "image_1", "image_2", "image_3", "image_4"]
    assert result.sizes == [(70, 30), (20, 40), (36, 24), (12, 10), (16, 16)]
    assert result.boxes.shape == (5, 4) and result.scores.shape == (5,) and result.skipped == []
    for (w, h), box in zip(result.sizes, result.boxes):
        assert 0 <= box[0] <= box[2] <= w and 0 <= box[1] <= box[3] <= h
    assert [m.shape for m in result.maps] == [(32, 32)] * 5
    assert all(0 <= m.min() and m.max() <= 1 for m in result.maps)
    assert len(result.classes) == 5 and set(result.classes) <= {0, 1}
    assert result.class_names == [["001.Red_bird", "002.Blue_bird"][c] for c in result.classes]
    assert all(0.5 <= p <= 1 for p in result.probabilities)   # the top class of two
    # one image alone is a list of one, named as given
    assert seg_localizer(np.zeros((8, 8, 3), np.uint8), names=["mine"]).names == ["mine"]


def test_an_unreadable_image_is_raised_or_skipped(seg_localizer, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG nothing")
    good = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(DataError, match=f"^{tmp_path / 'bad.png'}: unreadable or corrupt image"):
        seg_localizer([good, tmp_path / "bad.png"])
    result = seg_localizer([good, tmp_path / "bad.png", tmp_path / "gone.jpg"], on_error="skip")
    assert result.names == ["image_0"] and [n for n, _ in result.skipped] == [str(tmp_path / "bad.png"),
                                                                            str(tmp_path / "gone.jpg")]
    assert result.skipped[1][1] == f"{tmp_path / 'gone.jpg'}: image not found"


def test_what_is_no_image_is_one_line_naming_it(seg_localizer):
    with pytest.raises(DataError, match=r"^image_1: numpy array of dtype float32 and shape \(4, 4, 3\): give uint8"):
        seg_localizer([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(DataError, match=r"^image_0: numpy array of dtype uint8 and shape \(4, 4, 2\)"):
        seg_localizer([np.zeros((4, 4, 2), np.uint8)])
    with pytest.raises(DataError, match="^image_0: a int is no image: give a path, a PIL image or a numpy array"):
        seg_localizer([3])
    with pytest.raises(DataError, match="^image_0: .*32-bit float|^image_0: .*mode F"):
        seg_localizer([Image.new("F", (4, 4))])


def test_every_kind_through_the_api(made_runs):
    image = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    for name, kind in (("localizer", "sltnet-map"), ("plain_cam", "cam"), ("regressor", "sltnet-final")):
        loc = load_localizer(made_runs[name], device="cpu")
        result = loc([image, image])
        assert loc.kind == kind and result.boxes.shape == (2, 4) and len(result.classes) == 2
        assert np.array_equal(result.boxes[0], result.boxes[1])   # one image twice in a batch: one answer
        assert (result.maps is None) == (kind == "sltnet-final")
    loc = load_localizer(made_runs["seg"], classifier_run="none", threshold=0.6, protocol="spol", device="cpu")
    result = loc([image])
    assert result.classes is None and result.class_names is None and result.probabilities is None
    assert loc.threshold.value == 0.6 and loc.protocol.describe() == "resize 40, centre crop 32"


def test_load_localizer_errors_are_one_line(made_runs, tmp_path):
    with pytest.raises(DataError, match=r"^give a run folder \(--run\) or a SPOL seg checkpoint file"):
        load_localizer()
    with pytest.raises(DataError, match="not both"):
        load_localizer(made_runs["seg"], checkpoint=made_runs["seg"] / "model.pth")
    with pytest.raises(DataError, match=f"^{tmp_path / 'x.pth'}: --checkpoint: file not found"):
        load_localizer(checkpoint=tmp_path / "x.pth", dataset="cub")
    with pytest.raises(DataError, match="--kind cam: a --checkpoint file is a SPOL seg state dict"):
        load_localizer(checkpoint=made_runs["seg"] / "model.pth", kind="cam", dataset="cub")
    with pytest.raises(DataError, match="^--protocol: protocol must be one of"):
        load_localizer(made_runs["seg"], protocol="square")
    for options, message in (({"batch_size": 0}, "--batch-size: must be a whole number >= 1, got 0"),
                             ({"workers": -1}, "--workers: must be a whole number >= 0, got -1"),
                             ({"amp": "fp8"}, "--amp: must be off, bf16 or fp16, got 'fp8'")):
        with pytest.raises(DataError, match=f"^{message}$"):
            load_localizer(made_runs["seg"], **options)


def test_mixed_precision_gives_float32_maps_near_the_full_precision_ones(made_runs):
    """--amp bf16 (torch.autocast on the CPU here): the maps come back float32, within bf16's error."""
    image = np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    full = load_localizer(made_runs["seg"], device="cpu")([image])
    half = load_localizer(made_runs["seg"], device="cpu", amp="bf16")([image])
    assert half.maps[0].dtype == np.float32 and not np.array_equal(half.maps[0], full.maps[0])
    np.testing.assert_allclose(half.maps[0], full.maps[0], atol=0.05)
