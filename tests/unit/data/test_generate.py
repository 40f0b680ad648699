"""utils.data.generate: CUB layout, determinism, boxes = mask extent, class decided by the head."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.data.generate import PART_COLOURS, generate_dataset, make_classes, read_generator_params, render_image

SMALL = dict(num_classes=3, train_per_class=3, test_per_class=2, image_size=48)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("gen") / "birds", seed=7, **SMALL)


def _lines(root, name):
    return [line.split() for line in (Path(root) / name).read_text().splitlines()]


def test_cub_layout_files_and_counts(dataset):
    images = _lines(dataset, "images.txt")
    assert len(images) == 3 * 5
    assert [int(i) for i, _ in images] == list(range(1, 16))
    classes = _lines(dataset, "classes.txt")
    assert [int(c[0]) for c in classes] == [1, 2, 3]
    assert classes[0][1].startswith("001.")
    labels = dict(_lines(dataset, "image_class_labels.txt"))
    split = dict(_lines(dataset, "train_test_split.txt"))
    assert sum(v == "1" for v in split.values()) == 9 and sum(v == "0" for v in split.values()) == 6
    for image_id, rel in images:
        folder = rel.split("/")[0]
        assert folder == classes[int(labels[image_id]) - 1][1]     # image sits in its class folder
        assert (dataset / "images" / rel).is_file() and rel.endswith(".jpg")
        seg = dataset / "segmentations" / rel.replace(".jpg", ".png")
        assert set(np.unique(cv2.imread(str(seg), cv2.IMREAD_UNCHANGED))) <= {0, 255}
    assert read_generator_params(dataset)["seed"] == 7


def test_boxes_inside_image_and_equal_to_mask_extent(dataset):
    images = dict(_lines(dataset, "images.txt"))
    for image_id, *xywh in _lines(dataset, "bounding_boxes.txt"):
        x, y, w, h = (float(v) for v in xywh)
        image = cv2.imread(str(dataset / "images" / images[image_id]))
        mask = cv2.imread(str(dataset / "segmentations" / images[image_id].replace(".jpg", ".png")), 0)
        assert image.shape[:2] == mask.shape == (48, 48)
        assert 0 <= x and 0 <= y and x + w <= 48 and y + h <= 48 and w > 4 and h > 4
        ys, xs = np.nonzero(mask)
        # x + w and y + h are one past the last object pixel
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)


def test_load_records_reads_the_layout(dataset):
    data = pytest.importorskip("utils.data.layouts")
    train = data.load_records(dataset, "cub", "train")
    test = data.load_records(dataset, "cub", "test")
    assert len(train) == 9 and len(test) == 6
    assert sorted({r.label for r in train}) == [0, 1, 2]
    r = test[0]
    assert r.size == (48, 48) and r.boxes.shape == (1, 4) and r.mask_path is not None
    x, y, w, h = (float(v) for v in _lines(dataset, "bounding_boxes.txt")[3][1:])   # id 4 = class 1's first test image
    np.testing.assert_allclose(r.boxes[0], [x, y, x + w, y + h])


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path, dataset):
    again = generate_dataset(tmp_path / "again", seed=7, **SMALL)
    other = generate_dataset(tmp_path / "other", seed=8, **SMALL)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert len(files) == 5 + 1 + 2 * 15
    for rel in files:
        assert (again / rel).read_bytes() == (dataset / rel).read_bytes(), rel
    assert (other / "bounding_boxes.txt").read_bytes() != (dataset / "bounding_boxes.txt").read_bytes()


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate_dataset(out, seed=0, **SMALL)
    assert (out / "keep.txt").exists()
    generate_dataset(out, seed=0, overwrite=True, **SMALL)
    assert not (out / "keep.txt").exists() and (out / "images.txt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp folders left


def test_classes_have_distinct_parts():
    classes = make_classes(200, seed=3)
    parts = {(c.head, c.crest_shape, c.crest, c.beak) for c in classes}
    assert len(parts) == 200
    assert all(c.crest != c.head for c in classes)
    assert make_classes(5, seed=3) == make_classes(5, seed=3)
    with pytest.raises(ValueError):
        make_classes(0, seed=0)


def test_same_class_shares_the_head_but_not_the_body():
    cls = make_classes(4, seed=1)[2]
    kwargs = dict(clutter=0.6, distractors=0.0, body_evidence=0.0, object_scale=(0.8, 0.9))
    renders = [render_image(np.random.default_rng(s), cls, 96, **kwargs) for s in range(4)]
    bodies = {info["body_rgb"] for _, _, info in renders}
    assert len(bodies) == 4                               # body colour at random (body_evidence=0)
    masks = [m for _, m, _ in renders]
    assert any(not np.array_equal(masks[0], m) for m in masks[1:])   # size / pose differ
    head = np.array(PART_COLOURS[cls.head])
    for image, mask, info in renders:
        x, y = (int(round(v)) for v in info["head_xy"])
        assert mask[y, x] == 255
        # the head colour is the class's, up to the +-10 per-channel jitter
        assert np.abs(image[y, x].astype(int) - head).max() <= 12, (image[y, x], head)


def test_body_evidence_one_gives_the_class_body_colour():
    cls = make_classes(3, seed=0)[1]
    kwargs = dict(clutter=0.0, distractors=0.0, body_evidence=1.0, object_scale=(0.8, 0.9))
    for s in range(3):
        _, _, info = render_image(np.random.default_rng(s), cls, 64, **kwargs)
        assert np.abs(np.array(info["body_rgb"]) - np.array(cls.body_rgb)).max() <= 25


# ----------------------------------------------------------------------------- families of species
def test_families_share_the_body_and_differ_only_in_the_head():
    classes = make_classes(12, seed=4, families=4)
    assert [c.family for c in classes] == [f for f in range(4) for _ in range(3)]
    assert [c.species for c in classes] == [0, 1, 2] * 4
    head = lambda c: (c.head, c.crest_shape, c.crest, c.beak)   # noqa: E731
    for f in range(4):
        siblings = [c for c in classes if c.family == f]
        assert len({(c.body_rgb, c.wing_pattern, c.tail_shape) for c in siblings}) == 1   # one family look
        assert len({head(c) for c in siblings}) == 3                                      # distinct heads
        assert len({c.head for c in siblings}) == 3                                       # head colours too
    # the families look different, and every family uses the same pool of head designs
    assert len({(c.body_rgb, c.wing_pattern, c.tail_shape) for c in classes}) == 4
    assert len({(c.wing_pattern, c.tail_shape) for c in classes}) == 4                     # <= 9 families
    pools = [frozenset(head(c) for c in classes if c.family == f) for f in range(4)]
    assert len(set(pools)) == 1
    assert classes[0].folder.startswith("001.F1_") and classes[3].folder.startswith("004.F2_")


def test_flat_classes_are_families_of_one_with_distinct_heads():
    classes = make_classes(30, seed=2)
    assert [c.family for c in classes] == list(range(30)) and {c.species for c in classes} == {0}
    assert len({(c.head, c.crest_shape, c.crest, c.beak) for c in classes}) == 30
    assert not classes[0].folder.split(".", 1)[1].startswith("F1_")


@pytest.mark.parametrize("seed", range(25))
def test_any_seed_and_class_count_make_classes(seed):
    """Every seed, flat up to 200 classes and families of up to 10 species (one head colour each)."""
    large = seed % 5 == 0   # 200 classes on every fifth seed (a draw of 200 takes a tenth of a second)
    for n in (1, 2, 6, 30, 77) + ((200,) if large else ()):
        classes = make_classes(n, seed)
        assert len(classes) == n and all(c.crest_shape == "Bald" or c.crest not in (None, c.head) for c in classes)
    for families, species in ((1, 1), (6, 3), (8, 4), (50, 4)) + (((20, 10), (200, 1)) if large else ()):
        classes = make_classes(families * species, seed, families=families)
        assert len(classes) == families * species
        assert len({c.folder for c in classes}) == families * species


def test_rendering_a_bald_species_and_every_family_look(tmp_path):
    """A bald head has no crest colour (a crest colour lookup crashed on it); every wing pattern and
    tail shape draws, the bird stays inside the image and its head has the species' colour."""
    from utils.data.generate import TAIL_SHAPES, WING_PATTERNS

    classes = make_classes(200, seed=0)
    bald = next(c for c in classes if c.crest_shape == "Bald")
    looks = {(c.wing_pattern, c.tail_shape) for c in classes}
    assert looks == {(w, t) for w in WING_PATTERNS for t in TAIL_SHAPES}
    kwargs = dict(clutter=0.0, distractors=1.0, body_evidence=1.0, object_scale=(0.6, 0.9))
    for cls in [bald] + [next(c for c in classes if (c.wing_pattern, c.tail_shape) == look) for look in sorted(looks)]:
        image, mask, info = render_image(np.random.default_rng(cls.index), cls, 64, **kwargs)
        ys, xs = np.nonzero(mask)
        assert len(xs) > 50 and xs.min() >= 0 and xs.max() < 64 and ys.max() < 64
        x, y = (int(round(v)) for v in info["head_xy"])
        assert np.abs(image[y, x].astype(int) - np.array(PART_COLOURS[cls.head])).max() <= 12


def test_generated_families_dataset_names_its_families(tmp_path):
    root = generate_dataset(tmp_path / "fam", num_classes=6, families=2, train_per_class=1, test_per_class=1,
                            image_size=32, seed=3)
    params = read_generator_params(root)
    assert params["families"] == 2 and params["num_classes"] == 6 and params["version"] == 2
    names = [line.split()[1] for line in (root / "classes.txt").read_text().splitlines()]
    assert [n.split(".", 1)[1].split("_", 1)[0] for n in names] == ["F1"] * 3 + ["F2"] * 3


@pytest.mark.parametrize("argv, message", [
    (["--classes", "201"], "argument --classes: must be an integer in [1, 200], got '201'"),
    (["--classes", "0"], "argument --classes: must be an integer in [1, 200], got '0'"),
    (["--families", "4", "--classes", "6"], "6 classes cannot be split into 4 families of equal size"),
    (["--families", "2", "--species", "11"], "at most 10 species per family (one head colour each), got 11"),
    (["--species", "3"], "--species needs --families (classes = families x species)"),
    (["--families", "2", "--species", "3", "--classes", "5"],
     "--classes 5 contradicts --families 2 x --species 3 = 6"),
    (["--families", "0", "--species", "3"], "argument --families: must be an integer >= 1, got '0'"),
    (["--families", "300", "--species", "1"], "the number of classes must be in 1..200, got 300"),
])
def test_invalid_class_counts_are_one_error_line(tmp_path, capsys, argv, message):
    from utils.data.generate import cli

    out = tmp_path / "never"
    with pytest.raises(SystemExit) as info:
        cli(["--out", str(out), "--train-per-class", "1", "--test-per-class", "0", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()
