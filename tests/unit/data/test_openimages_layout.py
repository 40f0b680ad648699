"""utils.data.layouts, "openimages" layout (OpenImages30k in Choe et al.'s metadata format): records,
masks, and one error naming the file and line for every bad input.

The tree is tests/builders.py's OPENIMAGES_SPLITS: val/0a/v_0001.jpg (8 x 6, label 0, masks m0 and m1,
ignore mask on the first line), val/1b/v_0002.jpg (6 x 8, label 1, mask m0, no ignore mask).
localization.txt of val: line 1 v_0001 m0 + ignore, line 2 v_0001 m1, line 3 v_0002 m0.
"""
import numpy as np
import pytest
from PIL import Image

from utils.data.layouts import class_names, load_records, num_classes
from utils.errors import DataError

try:
    from tests.builders import edit_line, make_tiny_openimages
except ImportError:  # plain `pytest` puts tests/ itself on sys.path
    from builders import edit_line, make_tiny_openimages


def error_of(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_records(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_records_masks_and_no_boxes(tiny_openimages):
    val = load_records(tiny_openimages, "openimages", "val")
    root = tiny_openimages.resolve()
    assert [(r.image_id, r.label, r.size) for r in val] == [
        ("val/0a/v_0001.jpg", 0, (8, 6)), ("val/1b/v_0002.jpg", 1, (6, 8))]
    assert val[0].instance_mask_paths == (str(root / "val/0a/v_0001_m0.png"), str(root / "val/0a/v_0001_m1.png"))
    assert val[0].ignore_mask_path == str(root / "val/0a/v_0001_ignore.png")
    assert val[1].instance_mask_paths == (str(root / "val/1b/v_0002_m0.png"),) and val[1].ignore_mask_path is None
    assert all(r.boxes.shape == (0, 4) and r.mask_path is None for r in val)
    assert val[1].path == str(root / "val/1b/v_0002.jpg")
    assert num_classes(val) == 2 and class_names(tiny_openimages, "openimages") == ["0", "1"]
    # the train split has image-level labels only: no localization.txt needed, no masks
    train = load_records(tiny_openimages, "openimages", "train")
    assert [r.label for r in train] == [0, 1] and all(r.instance_mask_paths == () for r in train)
    assert [r.image_id for r in load_records(tiny_openimages, "openimages", "val", exclude_ids=["v_0001.jpg"])] \
        == ["val/1b/v_0002.jpg"]


def test_metadata_root_elsewhere(tiny_openimages, tmp_path):
    meta = tmp_path / "wsolevaluation" / "metadata" / "OpenImages"
    meta.parent.mkdir(parents=True)
    (tiny_openimages / "metadata").rename(meta)
    assert len(load_records(tiny_openimages, "openimages", "val", metadata_root=meta)) == 2
    assert "metadata: missing metadata folder (required by the 'openimages' layout)" in \
        error_of(tiny_openimages, "openimages", "val")


def test_masks_at_another_scale_are_accepted_a_transposed_mask_is_not(tmp_path):
    # OpenImages V5 masks are often the image at another scale (same aspect ratio): 8x6 -> 16x12
    big = np.zeros((12, 16), np.uint8)
    big[2:8, 2:8] = 255
    # a 683 x 1024 image, its masks 1068 x 1600 (1600 * 683 / 1024 = 1067.2, rounded): accepted too
    splits = {"val": [("val/0a/a.jpg", 0, (8, 6), [big], None),
                      ("val/0a/b.jpg", 0, (1024, 683), [np.zeros((1068, 1600), np.uint8)], None)]}
    root = make_tiny_openimages(tmp_path / "oi", splits=splits)
    assert [r.size for r in load_records(root, "openimages", "val")] == [(8, 6), (1024, 683)]
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(root / "val/0a/a_m0.png")  # 6 x 8: transposed
    message = error_of(root, "openimages", "val")
    assert "val/localization.txt:1: mask val/0a/a_m0.png is 6x8 but its image val/0a/a.jpg is 8x6" in message
    Image.fromarray(np.zeros((4, 8), np.uint8)).save(root / "val/0a/a_m0.png")  # 8 x 4: another aspect ratio
    assert "localization.txt:1: mask val/0a/a_m0.png is 8x4" in error_of(root, "openimages", "val")


# ----------------------------------------------------------------------------- bad input
def test_missing_or_corrupt_mask_names_the_line(tiny_openimages):
    (tiny_openimages / "val/0a/v_0001_m1.png").unlink()
    assert "val/localization.txt:2: mask " in (m := error_of(tiny_openimages, "openimages", "val"))
    assert m.endswith("val/0a/v_0001_m1.png not found")
    make_tiny_openimages(tiny_openimages)
    (tiny_openimages / "val/0a/v_0001_ignore.png").write_bytes(b"not a png")
    assert "val/localization.txt:1: cannot read the header of ignore mask" in \
        error_of(tiny_openimages, "openimages", "val")


def test_malformed_lines(tiny_openimages):
    loc = tiny_openimages / "metadata/val/localization.txt"
    edit_line(loc, 3, "val/1b/v_0002.jpg,val/1b/v_0002_m0.png")
    assert "val/localization.txt:3: expected 3 fields '<image_id>,<mask_path>,<ignore_path>', got 2" in \
        error_of(tiny_openimages, "openimages", "val")
    edit_line(loc, 3, "val/1b/v_0002.jpg,,")
    assert "val/localization.txt:3: empty mask path" in error_of(tiny_openimages, "openimages", "val")
    edit_line(loc, 3, "val/1b/nowhere.jpg,val/1b/v_0002_m0.png,")
    assert "val/localization.txt:3: image id val/1b/nowhere.jpg is not in image_ids.txt" in \
        error_of(tiny_openimages, "openimages", "val")
    make_tiny_openimages(tiny_openimages)
    edit_line(tiny_openimages / "metadata/val/class_labels.txt", 2, "val/1b/v_0002.jpg,one")
    assert "val/class_labels.txt:2: label is not an integer: 'one'" in error_of(tiny_openimages, "openimages", "val")


def test_second_ignore_mask_is_refused(tiny_openimages):
    # their get_mask_paths asserts that only an image's first line names an ignore mask
    loc = tiny_openimages / "metadata/val/localization.txt"
    edit_line(loc, 2, "val/0a/v_0001.jpg,val/0a/v_0001_m1.png,val/0a/v_0001_ignore.png")
    assert "val/localization.txt:2: second ignore mask for val/0a/v_0001.jpg" in \
        error_of(tiny_openimages, "openimages", "val")


def test_image_without_class_label_or_mask_line(tiny_openimages):
    labels = tiny_openimages / "metadata/val/class_labels.txt"
    labels.write_text("val/0a/v_0001.jpg,0\n")
    assert "val/class_labels.txt: image id val/1b/v_0002.jpg (image_ids.txt:2) has no line in class_labels.txt" \
        in error_of(tiny_openimages, "openimages", "val")
    make_tiny_openimages(tiny_openimages)
    loc = tiny_openimages / "metadata/val/localization.txt"
    loc.write_text("\n".join(loc.read_text().splitlines()[:2]) + "\n")
    assert "val/localization.txt: image id val/1b/v_0002.jpg (image_ids.txt:2) has no mask line" in \
        error_of(tiny_openimages, "openimages", "val")
    loc.unlink()
    assert "val/localization.txt: missing mask list (localization) file" in \
        error_of(tiny_openimages, "openimages", "val")


def test_missing_image_and_label_out_of_range(tiny_openimages):
    (tiny_openimages / "val/1b/v_0002.jpg").unlink()
    assert "val/image_ids.txt:2: image" in error_of(tiny_openimages, "openimages", "val")
    make_tiny_openimages(tiny_openimages)
    (tiny_openimages / "metadata/class_names.txt").write_text("cat\n")
    assert "val/class_labels.txt:2: label 1 out of range [0, 1) (class_names.txt)" in \
        error_of(tiny_openimages, "openimages", "val")


def test_an_image_id_listed_twice_names_both_lines(tiny_openimages):
    ids = tiny_openimages / "metadata/val/image_ids.txt"
    ids.write_text(ids.read_text() + "val/0a/v_0001.jpg\n")
    assert "val/image_ids.txt:3: image id val/0a/v_0001.jpg listed twice (first on line 1)" in \
        error_of(tiny_openimages, "openimages", "val")
