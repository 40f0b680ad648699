"""utils.data.layouts, utils.data.transforms, utils.data.dataset: the three layout readers, every bad-input error and
the joint transforms (the evaluation geometry is tested in tests/unit/evaluation/test_protocol.py).

All trees are written by tests/builders.py; expected numbers are worked out by hand from it.
"""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data.dataset import WSOLDataset
from utils.data.layouts import Record, class_names, load_records, num_classes
from utils.data.transforms import build_spol_transform, build_transform
from utils.errors import DataError

try:
    from tests.builders import edit_line, make_tiny_cub, make_tiny_ilsvrc, voc_xml
except ImportError:  # plain `pytest` puts tests/ itself on sys.path
    from builders import edit_line, make_tiny_cub, make_tiny_ilsvrc, voc_xml


def drop_line(path, lineno):
    lines = path.read_text().splitlines()
    del lines[lineno - 1]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- CUB reader
def test_cub_splits_labels_boxes_sizes_masks(tiny_cub):
    train = load_records(tiny_cub, "cub", "train")
    test = load_records(tiny_cub, "cub", "test")
    assert [r.image_id for r in train] == ["001.Red_bird/Red_0001.jpg", "002.Blue_bird/Blue_0001.jpg"]
    assert [r.image_id for r in test] == ["001.Red_bird/Red_0002.jpg", "002.Blue_bird/Blue_0002.jpg"]
    assert [r.label for r in train] == [0, 1] and [r.label for r in test] == [0, 1]
    # x0 = x, y0 = y, x1 = x + w, y1 = y + h
    np.testing.assert_array_equal(train[0].boxes, [[4, 6, 14, 14]])
    np.testing.assert_array_equal(test[0].boxes, [[0.5, 1.5, 20.5, 13.5]])
    np.testing.assert_array_equal(test[1].boxes, [[2, 3, 32, 23]])
    assert train[0].boxes.dtype == np.float32
    assert all(r.size == (32, 24) for r in train + test)
    assert train[0].path == str((tiny_cub / "images" / "001.Red_bird/Red_0001.jpg").resolve())
    assert train[1].mask_path == str((tiny_cub / "segmentations/002.Blue_bird/Blue_0001.png").resolve())
    assert num_classes(train) == 2 and num_classes(train[:1]) == 1  # a slice falls back to max + 1
    assert class_names(tiny_cub, "cub") == ["001.Red_bird", "002.Blue_bird"]


def test_cub_without_classes_and_segmentations(tmp_path):
    root = make_tiny_cub(tmp_path / "c", with_segmentations=False, with_classes=False)
    records = load_records(root, "cub", "test")
    assert all(r.mask_path is None for r in records)
    assert class_names(root, "cub") == ["1", "2"] and num_classes(records) == 2


def test_cub_image_sizes_come_from_the_image_files(tmp_path):
    images = [(1, "a/x.jpg", 1, 0, (1.0, 2.0, 3.0, 4.0)), (2, "a/y.jpg", 1, 0, (0.0, 0.0, 5.0, 5.0))]
    root = make_tiny_cub(tmp_path / "c", images=images, size=(32, 24))
    Image.new("RGB", (50, 10)).save(root / "images/a/y.jpg")
    assert [r.size for r in load_records(root, "cub", "test")] == [(32, 24), (50, 10)]


def test_exclude_ids_by_image_id_file_name_or_cub_number(tiny_cub, tiny_ilsvrc, tiny_metadata):
    assert [r.image_id for r in load_records(tiny_cub, "cub", "test", exclude_ids=["Red_0002.jpg"])] \
        == ["002.Blue_bird/Blue_0002.jpg"]
    assert [r.image_id for r in load_records(tiny_cub, "cub", "test", exclude_ids=("4",))] \
        == ["001.Red_bird/Red_0002.jpg"]
    val = load_records(tiny_ilsvrc, "ilsvrc", "val", exclude_ids=("ILSVRC2012_val_00000001.JPEG",))
    assert [r.image_id for r in val] == ["val/ILSVRC2012_val_00000002.JPEG"]
    test = load_records(tiny_metadata, "metadata", "test", exclude_ids=["birds/b_0002.png"])
    assert [r.image_id for r in test] == ["birds/a_0003.png"]


# ----------------------------------------------------------------------------- ILSVRC reader
def test_ilsvrc_train_sorted_wnids_and_header_sizes(tiny_ilsvrc):
    train = load_records(tiny_ilsvrc, "ilsvrc", "train")
    assert [(r.image_id, r.label, r.size) for r in train] == [
        ("train/n01000001/n01000001_1.JPEG", 0, (40, 30)),
        ("train/n01000001/n01000001_2.JPEG", 0, (36, 28)),
        ("train/n02000002/n02000002_1.JPEG", 1, (30, 40))]
    assert all(r.boxes.shape == (0, 4) and r.mask_path is None for r in train)
    assert class_names(tiny_ilsvrc, "ilsvrc") == ["n01000001", "n02000002"]


def test_ilsvrc_val_keeps_every_box_of_the_labelled_class(tiny_ilsvrc):
    val = load_records(tiny_ilsvrc, "ilsvrc", "val")
    assert [(r.image_id, r.label, r.size) for r in val] == [
        ("val/ILSVRC2012_val_00000001.JPEG", 0, (48, 32)),  # size from the XML
        ("val/ILSVRC2012_val_00000002.JPEG", 1, (40, 40))]
    # val 1: two n01000001 boxes kept, the n02000002 box in between ignored
    np.testing.assert_array_equal(val[0].boxes, [[2, 3, 20, 30], [25, 1, 47, 31]])
    np.testing.assert_array_equal(val[1].boxes, [[5, 6, 35, 38]])


@pytest.fixture
def ilsvrc_no_train(tmp_path):
    return make_tiny_ilsvrc(tmp_path / "il", with_train=False)


def test_ilsvrc_class_order_from_wnids_txt(ilsvrc_no_train):
    # wnids.txt lists n02000002 first: indices still follow the sorted order
    assert class_names(ilsvrc_no_train, "ilsvrc") == ["n01000001", "n02000002"]
    val = load_records(ilsvrc_no_train, "ilsvrc", "val")
    assert [r.label for r in val] == [0, 1] and len(val[0].boxes) == 2


# ----------------------------------------------------------------------------- metadata reader
def test_metadata_splits_boxes_sizes(tiny_metadata):
    train = load_records(tiny_metadata, "metadata", "train")
    assert [(r.image_id, r.label, r.size) for r in train] == [
        ("birds/a_0001.png", 0, (32, 24)), ("birds/b_0001.png", 1, (24, 32))]
    assert all(r.boxes.shape == (0, 4) and r.mask_path is None for r in train)
    test = load_records(tiny_metadata, "metadata", "test")
    np.testing.assert_array_equal(test[0].boxes, [[0, 0, 10, 10], [12, 4, 31, 23]])
    np.testing.assert_array_equal(test[1].boxes, [[3, 5, 20, 30]])
    assert test[1].path == str((tiny_metadata / "birds/b_0002.png").resolve())
    val = load_records(tiny_metadata, "metadata", "val")
    np.testing.assert_array_equal(val[0].boxes, [[1, 2, 30, 20]])
    assert num_classes(val) == 2  # val holds only class 0; the count comes from every split folder
    assert class_names(tiny_metadata, "metadata") == ["0", "1"]


def test_metadata_root_elsewhere_and_class_names_file(tiny_metadata, tmp_path):
    meta = tmp_path / "elsewhere"
    shutil.move(str(tiny_metadata / "metadata"), meta)
    (meta / "class_names.txt").write_text("albatross\nblackbird\nwren\n")
    test = load_records(tiny_metadata, "metadata", "test", metadata_root=meta)
    assert len(test) == 2 and num_classes(test) == 3
    assert class_names(tiny_metadata, "metadata", metadata_root=meta) == ["albatross", "blackbird", "wren"]


# ----------------------------------------------------------------------------- bad input
def error_of(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_records(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_root(tmp_path):
    message = error_of(tmp_path / "nowhere", "cub", "train")
    assert "nowhere" in message and "root not found" in message


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt", "train_test_split.txt",
                                  "bounding_boxes.txt"])
def test_cub_missing_required_file(tiny_cub, name):
    (tiny_cub / name).unlink()
    message = error_of(tiny_cub, "cub", "train")
    assert message.startswith(str((tiny_cub / name).resolve()) + ": missing")
    assert "'cub' layout" in message


def test_ilsvrc_and_metadata_missing_files(tiny_ilsvrc, tiny_metadata):
    (tiny_ilsvrc / "val.txt").unlink()
    message = error_of(tiny_ilsvrc, "ilsvrc", "val")
    assert "val.txt: missing" in message and "'ilsvrc' layout" in message
    (tiny_metadata / "metadata/test/image_sizes.txt").unlink()
    assert "test/image_sizes.txt: missing" in error_of(tiny_metadata, "metadata", "test")
    (tiny_metadata / "metadata/val/localization.txt").unlink()
    assert "val/localization.txt: missing" in error_of(tiny_metadata, "metadata", "val")
    assert "metadata/nosplit: missing split 'nosplit'" in error_of(tiny_metadata, "metadata", "nosplit")


def test_malformed_lines_name_file_and_line(tiny_cub, tiny_metadata, tiny_ilsvrc):
    boxes = tiny_cub / "bounding_boxes.txt"
    edit_line(boxes, 3, "3 10.0 2.0 21.0")
    assert "bounding_boxes.txt:3: expected 5 fields" in error_of(tiny_cub, "cub", "train")
    edit_line(boxes, 3, "3 10.0 two 21.0 21.0")
    assert "bounding_boxes.txt:3: y is not a number: 'two'" in error_of(tiny_cub, "cub", "train")
    edit_line(tiny_cub / "image_class_labels.txt", 2, "2 1 7")
    edit_line(boxes, 3, "3 10.0 2.0 21.0 21.0")
    assert "image_class_labels.txt:2: expected 2 fields" in error_of(tiny_cub, "cub", "train")

    labels = tiny_metadata / "metadata/test/class_labels.txt"
    edit_line(labels, 2, "birds/b_0002.png,one")
    assert "test/class_labels.txt:2: label is not an integer: 'one'" in error_of(tiny_metadata, "metadata", "test")
    edit_line(tiny_ilsvrc / "val.txt", 2, "ILSVRC2012_val_00000002.JPEG")
    assert "val.txt:2: expected 2 fields" in error_of(tiny_ilsvrc, "ilsvrc", "val")


def test_corrupt_image(tiny_cub, tiny_metadata):
    # CUB reads image headers at load time
    (tiny_cub / "images/002.Blue_bird/Blue_0002.jpg").write_bytes(b"not a jpeg at all")
    message = error_of(tiny_cub, "cub", "test")
    assert "Blue_0002.jpg: cannot read image header" in message
    # metadata trusts image_sizes.txt: the dataset reports the bad file when it reads it
    bad = tiny_metadata / "birds/b_0002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    records = load_records(tiny_metadata, "metadata", "test")
    dataset = WSOLDataset(records, build_transform("resize", resize=16))
    assert dataset[0]["image"].shape == (3, 16, 16)
    with pytest.raises(DataError, match=r"b_0002\.png: unreadable or corrupt image"):
        dataset[1]
    assert "b_0002.png: unreadable or corrupt image" in error_of(tiny_metadata, "metadata", "test",
                                                                 check_images=True)


def test_missing_image_and_size_mismatch(tiny_metadata, tiny_ilsvrc):
    (tiny_metadata / "birds/a_0003.png").unlink()
    assert "test/image_ids.txt:1: image" in error_of(tiny_metadata, "metadata", "test")
    (tiny_ilsvrc / "val/ILSVRC2012_val_00000002.JPEG").unlink()
    assert "val.txt:2: image" in error_of(tiny_ilsvrc, "ilsvrc", "val")
    sizes = tiny_metadata / "metadata/val/image_sizes.txt"
    edit_line(sizes, 1, "birds/a_0002.png,32,25")
    message = error_of(tiny_metadata, "metadata", "val", check_images=True)
    assert f"a_0002.png: image is 32x24 but {sizes}:1 says 32x25" in message


def test_box_outside_image_cub(tiny_cub):
    boxes = tiny_cub / "bounding_boxes.txt"
    edit_line(boxes, 4, "4 2.0 3.0 30.9 20.0")  # x1 = 32.9: within the 1 px tolerance
    assert load_records(tiny_cub, "cub", "test")[1].boxes[0, 2] == pytest.approx(32.9)
    edit_line(boxes, 4, "4 2.0 3.0 31.5 20.0")  # x1 = 33.5
    assert "bounding_boxes.txt:4: box" in error_of(tiny_cub, "cub", "test")
    edit_line(boxes, 4, "4 -1.5 3.0 20.0 20.0")
    assert "outside the 32x24 image" in error_of(tiny_cub, "cub", "test")


def test_box_outside_image_ilsvrc(tiny_ilsvrc):
    xml = tiny_ilsvrc / "box/ILSVRC2012_val_00000002.xml"
    xml.write_text(voc_xml("ILSVRC2012_val_00000002.JPEG", (40, 40), [("n02000002", (5, 6, 45, 38))]))
    message = error_of(tiny_ilsvrc, "ilsvrc", "val")
    assert "ILSVRC2012_val_00000002.xml: box" in message and "(object 1)" in message


def test_box_outside_image_metadata(tiny_metadata):
    loc = tiny_metadata / "metadata/test/localization.txt"
    edit_line(loc, 3, "birds/b_0002.png,3,5,20,34")  # image is 24x32
    assert "test/localization.txt:3: box" in error_of(tiny_metadata, "metadata", "test")
    edit_line(loc, 3, "birds/b_0002.png,20,5,3,30")
    assert "test/localization.txt:3: box [20.0, 5.0, 3.0, 30.0] has x1 < x0" in \
        error_of(tiny_metadata, "metadata", "test")


def test_label_out_of_range_cub(tiny_cub):
    labels = tiny_cub / "image_class_labels.txt"
    edit_line(labels, 3, "3 3")  # classes.txt names 2 classes
    assert "image_class_labels.txt:3: label 2 out of range [0, 2)" in error_of(tiny_cub, "cub", "train")
    edit_line(labels, 3, "3 0")  # CUB classes are 1-based
    assert "image_class_labels.txt:3: label -1 out of range" in error_of(tiny_cub, "cub", "train")


def test_label_out_of_range_ilsvrc(tiny_ilsvrc):
    edit_line(tiny_ilsvrc / "val.txt", 1, "ILSVRC2012_val_00000001.JPEG 2")
    assert "val.txt:1: label 2 out of range [0, 2)" in error_of(tiny_ilsvrc, "ilsvrc", "val")


def test_label_out_of_range_metadata(tiny_metadata):
    edit_line(tiny_metadata / "metadata/test/class_labels.txt", 1, "birds/a_0003.png,-1")
    assert "test/class_labels.txt:1: label -1 out of range" in error_of(tiny_metadata, "metadata", "test")
    (tiny_metadata / "metadata/class_names.txt").write_text("albatross\n")  # class 1 has no name
    assert "train/class_labels.txt:2: label 1 out of range [0, 1) (class_names.txt)" in \
        error_of(tiny_metadata, "metadata", "train")


def test_empty_split_cub(tiny_cub):
    split = tiny_cub / "train_test_split.txt"
    split.write_text("1 1\n2 1\n3 1\n4 1\n")
    assert "train_test_split.txt: no image in split 'test'" in error_of(tiny_cub, "cub", "test")
    edit_line(split, 2, "2 2")
    assert "train_test_split.txt:2: is_train flag must be 0 or 1" in error_of(tiny_cub, "cub", "train")


def test_empty_split_metadata(tiny_metadata):
    message = error_of(tiny_metadata, "metadata", "val", exclude_ids=["a_0002.png"])
    assert "val/image_ids.txt: no image in split 'val'" in message


def test_ids_inconsistent_between_files_cub(tiny_cub):
    drop_line(tiny_cub / "image_class_labels.txt", 2)
    message = error_of(tiny_cub, "cub", "test")
    assert "image_class_labels.txt: image id 2 (images.txt:2) has no line in image_class_labels.txt" in message
    make_tiny_cub(tiny_cub)  # rebuild
    with open(tiny_cub / "bounding_boxes.txt", "a") as f:
        f.write("5 1 1 2 2\n")
    assert "bounding_boxes.txt:5: image id 5 is not in images.txt" in error_of(tiny_cub, "cub", "test")
    make_tiny_cub(tiny_cub)
    edit_line(tiny_cub / "images.txt", 4, "3 002.Blue_bird/Blue_0002.jpg")
    assert "images.txt:4: image id 3 listed twice (first on line 3)" in error_of(tiny_cub, "cub", "test")


def test_ids_inconsistent_between_files_metadata(tiny_metadata):
    drop_line(tiny_metadata / "metadata/test/image_sizes.txt", 2)
    assert "test/image_sizes.txt: image id birds/b_0002.png (image_ids.txt:2) has no line" in \
        error_of(tiny_metadata, "metadata", "test")
    drop_line(tiny_metadata / "metadata/val/localization.txt", 1)
    assert "val/localization.txt: image id birds/a_0002.png" in error_of(tiny_metadata, "metadata", "val")
    with open(tiny_metadata / "metadata/train/class_labels.txt", "a") as f:
        f.write("birds/zzz.png,0\n")
    assert "train/class_labels.txt:3: image id birds/zzz.png is not in image_ids.txt" in \
        error_of(tiny_metadata, "metadata", "train")


def test_ilsvrc_xml_missing_or_without_labelled_class(tiny_ilsvrc):
    xml = tiny_ilsvrc / "box/ILSVRC2012_val_00000002.xml"
    xml.write_text(voc_xml("ILSVRC2012_val_00000002.JPEG", (40, 40), [("n01000001", (5, 6, 35, 38))]))
    message = error_of(tiny_ilsvrc, "ilsvrc", "val")
    assert "ILSVRC2012_val_00000002.xml: no object of the labelled class n02000002 (objects: n01000001)" in message
    xml.write_text("<annotation><size><width>40</width>")
    assert "ILSVRC2012_val_00000002.xml:1: malformed XML" in error_of(tiny_ilsvrc, "ilsvrc", "val")
    xml.unlink()
    assert "ILSVRC2012_val_00000002.xml: missing box XML" in error_of(tiny_ilsvrc, "ilsvrc", "val")


# ----------------------------------------------------------------------------- dataset
def test_flip_moves_mask_with_image(tiny_cub):
    records = load_records(tiny_cub, "cub", "train")
    dataset = WSOLDataset(records, build_transform("train", resize=(24, 32), flip=True), with_gt_mask=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        item = dataset[0]
        assert item["image"].shape == (3, 24, 32) and item["mask"].shape == (1, 24, 32)
        assert item["label"] == 0 and item["index"] == 0
        # builder: left half dark, right half bright; record 0's mask covers x 4..13, y 6..13
        flipped = bool(item["image"][0, 0, 0] > 0)
        cols = torch.nonzero(item["mask"][0, 10]).flatten().tolist()
        assert cols == (list(range(18, 28)) if flipped else list(range(4, 14)))
        assert torch.nonzero(item["mask"][0, :, cols[0]]).flatten().tolist() == list(range(6, 14))
        seen.add(flipped)
    assert seen == {True, False}


def test_random_crop_is_the_same_window_for_image_and_mask(tiny_cub):
    records = load_records(tiny_cub, "cub", "test")
    full = WSOLDataset(records, build_transform("resize", resize=(24, 32)), with_gt_mask=True)[1]
    crop = WSOLDataset(records, build_transform("train", resize=(24, 32), crop=16), with_gt_mask=True)
    torch.manual_seed(1)
    for _ in range(4):
        item = crop[1]
        matches = [(y, x) for y in range(9) for x in range(17)
                   if torch.equal(item["mask"], full["mask"][:, y:y + 16, x:x + 16])
                   and torch.equal(item["image"], full["image"][:, y:y + 16, x:x + 16])]
        assert matches


def test_pseudo_masks_soft_bilinear_and_missing(tiny_cub, tmp_path):
    records = load_records(tiny_cub, "cub", "train")
    pseudo_dir = tmp_path / "pseudo"
    ramp = np.zeros((24, 32, 3), np.uint8)
    ramp[:, :, 0] = np.arange(32) * 8  # 0, 8, ..., 248
    ramp[:, :, 1] = 255
    path = pseudo_dir / "001.Red_bird/Red_0001.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(ramp).save(path)
    dataset = WSOLDataset(records, build_transform("resize", resize=(12, 16)), pseudo_mask_dir=pseudo_dir)
    pseudo = dataset[0]["pseudo_mask"]
    assert pseudo.shape == (3, 12, 16) and pseudo.dtype == torch.float32
    # channels in the file's B, G, R order (cv2.imread's, the SPOL authors' layout): the ramp is R
    # halving bilinearly averages pixel pairs: (0+8)/2 = 4, (16+24)/2 = 20 ... (nearest would give 0, 16)
    np.testing.assert_allclose(pseudo[2, 5].numpy() * 255, np.arange(16) * 16 + 4, atol=1e-3)
    assert torch.all(pseudo[1] == 1) and torch.all(pseudo[0] == 0)
    # the SPOL transform resamples it with nearest, values untouched
    spol = WSOLDataset(records, build_spol_transform("resize", resize=(12, 16)), pseudo_mask_dir=pseudo_dir)
    np.testing.assert_array_equal(spol[0]["pseudo_mask"][2, 5].numpy() * 255, np.arange(16) * 16)
    with pytest.raises(DataError, match=r"Blue_0001\.png: pseudo mask not found.*spol/cam/test\.py"):
        dataset[1]


def test_gt_mask_required_where_there_is_none(tiny_metadata):
    records = load_records(tiny_metadata, "metadata", "test")
    with pytest.raises(DataError, match=r"a_0003\.png: no GT mask"):
        WSOLDataset(records, build_transform("resize", resize=16), with_gt_mask=True)


def test_center_transform_and_bad_kind():
    with pytest.raises(ValueError):
        build_transform("center", resize=256)
    with pytest.raises(ValueError):
        build_transform("sideways", resize=256)
