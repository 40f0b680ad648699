"""SPOL equals the authors' code (weijun88/SPOL), number for number, on fixtures made by running it.

The fixtures in tests/fixtures/spol/ were computed once by the authors' own scripts (run on CPU,
see tests/fixtures/spol/README.md); these tests run only our code and compare. What is compared:
CAM training loss (both datasets; 0 difference on the CPU that made the fixtures, float32
rounding of the convolution kernels elsewhere, see ``close_to_fixture``), pseudo-mask PNGs (identical bytes' pixels), seg
targets and the model input tensors of cam train/test and seg train/test, predicted and GT boxes,
IoU and the per-image hit list of the authors' accuracy loop (``spol-official``) and of ours
(``spol``).
"""
import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from spol.losses import cub_cam_loss, imagenet_cam_loss, map_logits, seg_target_and_weight
from spol.model import CAMModel
from spol.pseudo_mask import pseudo_mask_from_cam
from spol.seg.test import scoremap_step
from utils.evaluation.boxes import spol_box
from utils.data.dataset import WSOLDataset
from utils.data.layouts import Record
from utils.data.transforms import SPOLTransform
from utils.evaluation.protocol import get_protocol
from utils.evaluation.handoff import read_cls_results

try:  # `python -m pytest` from the repository root puts the root on sys.path
    from tests.builders import evaluate_in_memory
except ImportError:  # plain `pytest`
    from builders import evaluate_in_memory

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "spol"


def recipe_state_dict(model):
    """Weights from each key's name alone (the fixtures were made with the same recipe)."""
    out = {}
    for key, t in model.state_dict().items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(t)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(t.shape, generator=g)
        elif key.endswith("running_mean") or (t.dim() == 1 and key.endswith("bias")):
            out[key] = 0.1 * torch.randn(t.shape, generator=g)
        elif t.dim() == 1:
            out[key] = 1 + 0.1 * torch.randn(t.shape, generator=g)
        else:
            out[key] = torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5
    return out


# ----------------------------------------------------------------------------- CAM training loss
# On the CPU that made the fixtures (AVX-512) our logits, loss and gradient equal the authors' to the
# last bit. oneDNN/MKL pick other convolution kernels on other CPUs (AVX2 here), which sum in another
# order: float32 rounding then grows through ResNet-50's 53 layers to about 6e-5 of the logits'
# scale (measured on an AMD EPYC, AVX2), 5e-7 of the loss. A tolerance 3x that still catches any
# real difference of computation (a wrong op or weight moves the logits by O(1)).
LOGIT_RTOL = 2e-4
LOSS_RTOL = 2e-6


def close_to_fixture(ours: np.ndarray, ref: np.ndarray, rtol: float) -> bool:
    """Equal up to ``rtol`` times the reference's largest magnitude (exact where the kernels match)."""
    return ours.shape == ref.shape and float(np.abs(ours - ref).max()) <= rtol * float(np.abs(ref).max())


@pytest.mark.parametrize("dataset", ["cub", "imagenet"])
def test_cam_training_loss_equals_the_authors(dataset):
    ref = np.load(FIX / "cam_loss.npz")
    model = CAMModel(200 if dataset == "cub" else 1000, pretrained="none")
    model.load_state_dict(recipe_state_dict(model))
    model.train()
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    label = torch.tensor([3, 17])
    torch.manual_seed(11)  # the same dropout masks as the authors' run
    if dataset == "cub":
        deep, fused = model(image)
        pred1, pred2 = map_logits(deep), map_logits(fused)
        loss = cub_cam_loss(pred1, pred2, label)
        assert close_to_fixture(pred1.detach().numpy(), ref["cub_pred1"], LOGIT_RTOL)
        assert close_to_fixture(pred2.detach().numpy(), ref["cub_pred2"], LOGIT_RTOL)
    else:
        _, fused = model(image, single_head=True)
        pred = map_logits(fused)
        loss = imagenet_cam_loss(pred, label)
        assert close_to_fixture(pred.detach().numpy(), ref["imagenet_pred"], LOGIT_RTOL)
    ref_loss = float(ref[f"{dataset}_loss"])
    assert abs(loss.item() - ref_loss) <= LOSS_RTOL * abs(ref_loss)
    loss.backward()
    grad = model.linear.weight.grad[:8, :8, 0, 0].numpy()
    assert close_to_fixture(grad, ref[("cub200" if dataset == "cub" else "imagenet") + "_grad_linear"], LOGIT_RTOL)


def test_the_fixture_tolerance_catches_a_changed_computation():
    """The tolerance above is far below what a real difference does: the same model with one
    BatchNorm layer's scale (the last block's) changed by 1 % is caught."""
    ref = np.load(FIX / "cam_loss.npz")
    model = CAMModel(1000, pretrained="none")
    state = recipe_state_dict(model)
    key = [k for k in state if k.endswith("bn3.weight")][-1]
    state[key] = state[key] * 1.01
    model.load_state_dict(state)
    model.train()
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(11)
    _, fused = model(image, single_head=True)
    assert not close_to_fixture(map_logits(fused).detach().numpy(), ref["imagenet_pred"], LOGIT_RTOL)


# ----------------------------------------------------------------------------- pseudo masks
def _cub_list():
    rows = [line.strip().split(",") for line in (FIX / "cub" / "list.txt").read_text().splitlines()]
    return [(name, int(label), [float(v) for v in box.split()]) for name, label, box in rows]


def _cub_records():
    out = []
    for name, label, box in _cub_list():
        path = FIX / "cub" / "image" / name
        h, w = cv2.imread(str(path)).shape[:2]
        out.append(Record(name, str(path), label, np.asarray([box], np.float32), (w, h), None))
    return out


@pytest.mark.parametrize("index", range(4))
def test_pseudo_masks_are_the_authors_pngs(index):
    cams = np.load(FIX / "pseudo_mask_cams.npz")
    record = _cub_records()[index]
    ref = cv2.imread(str(FIX / "cub" / "seg" / record.image_id.replace(".jpg", ".png")))  # their file, B,G,R
    ours = pseudo_mask_from_cam(cams["cams"][index], tuple(cams["sizes"][index]))
    assert tuple(cams["sizes"][index]) == record.size
    assert ours.shape == ref.shape and np.array_equal(ours, ref)  # every pixel, every channel
    assert ours[:, :, 1].max() > 200 and not ours[:, :, 2].any()  # a real Gaussian; R is zero


# ----------------------------------------------------------------------------- model inputs, seg targets
def _close(tensor, ref, prefix):
    t = tensor.numpy().astype(np.float64)
    assert list(t.shape) == list(ref[prefix + "_shape"])
    np.testing.assert_allclose(t[..., ::16, ::16], ref[prefix + "_sub"], rtol=0, atol=2e-5)  # float noise only
    np.testing.assert_allclose(t.sum(), ref[prefix + "_sum"], rtol=1e-6, atol=1e-2)
    np.testing.assert_allclose((t ** 2).sum(), ref[prefix + "_sumsq"], rtol=1e-6)


@pytest.mark.parametrize("tag", ["camtrain_0", "camtrain_1", "segtrain_2", "segtrain_3"])
def test_training_inputs_and_seg_targets_equal_the_authors(tag):
    ref = np.load(FIX / "inputs.npz")
    h_start, w_start, flip = ref[tag + "_params"]
    transform = SPOLTransform("train", resize=256, crop=224, flip=True)
    seg = tag.startswith("seg")
    dataset = WSOLDataset(_cub_records(), lambda s: transform.apply(s, h_start, w_start, bool(flip)),
                          pseudo_mask_dir=FIX / "cub" / "seg" if seg else None)  # masks their script wrote
    item = dataset[int(ref[tag + "_index"])]
    _close(item["image"], ref, tag + "_image")
    if seg:
        target, weight = seg_target_and_weight(item["pseudo_mask"][None])
        shape = tuple(ref[tag + "_maskshape"])
        mask_ref = np.unpackbits(ref[tag + "_mask"])[:np.prod(shape)].reshape(shape).astype(bool)
        weight_ref = np.unpackbits(ref[tag + "_weight"])[:np.prod(shape)].reshape(shape).astype(bool)
        assert np.array_equal(target[0, 0].numpy().astype(bool), mask_ref)
        assert np.array_equal(weight[0, 0].numpy().astype(bool), weight_ref)
        assert 0 < mask_ref.sum() and not weight_ref.all()  # foreground and ignored pixels both present


@pytest.mark.parametrize("kind,index", [("camtest", 1), ("camtest", 2), ("segtest", 0), ("segtest", 3)])
def test_test_inputs_equal_the_authors(kind, index):
    ref = np.load(FIX / "inputs.npz")
    transform = (SPOLTransform("resize", resize=256) if kind == "camtest"
                 else SPOLTransform("center", resize=256, crop=224))
    item = WSOLDataset(_cub_records(), transform)[index]
    _close(item["image"], ref, f"{kind}_{index}_image")


# ----------------------------------------------------------------------------- boxes, IoU, hit lists
class _Logits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.from_numpy(logits)

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()][:, None]


def _scoremaps(logits):
    """Our seg test's map step (bilinear align_corners=True to 224, sigmoid), saved as float32."""
    batch = {"image": torch.arange(len(logits), dtype=torch.float32)[:, None, None, None].expand(-1, 3, 4, 4),
             "index": torch.arange(len(logits))}
    _, maps = scoremap_step(_Logits(logits), batch, size=224)
    return maps.numpy().astype(np.float32)


def _authors_records(dataset):
    spec = json.loads((FIX / "boxes.json").read_text())[dataset]
    records = []
    for k, im in enumerate(spec["images"]):
        boxes = [im["box"]] if dataset == "cub" else im["boxes_of_label"]
        # the CUB list holds one image twice (two boxes): ids made unique for the in-memory maps
        image_id = f"{k}/{im['name']}" if dataset == "cub" else "val/" + im["name"]
        records.append(Record(image_id, "", im["label"], np.asarray(boxes, np.float32), tuple(im["size"]), None))
    return spec, records


def _final_line(line):
    parts = dict(p.strip().split("=") for p in line.split("|"))
    return int(parts["count"]), float(parts["top1"]), float(parts["top5"]), float(parts["GT-Known"])


@pytest.mark.parametrize("dataset", ["cub", "imagenet"])
def test_boxes_iou_and_hit_list_equal_the_authors(dataset, tmp_path):
    spec, records = _authors_records(dataset)
    maps = _scoremaps(np.load(FIX / "box_logits.npz")[dataset])
    if dataset == "cub":
        flags = {r.image_id: (True, True) for r in records}
    else:  # their published-file format: a pickled dict name -> [top1, top5]
        np.save(tmp_path / "top1top5.npy", spec["top1top5"])
        flags = read_cls_results(tmp_path / "top1top5.npy", [r.image_id for r in records])
    kwargs = dict(threshold=spec["threshold"], flags=flags, input_size=224, resize_size=256)
    official = evaluate_in_memory(records, dict(zip([r.image_id for r in records], maps)), "spol-official",
                                  iou_compare=">", **kwargs)
    # per image: the authors' IoU calls (pred box, GT box, value); no call = skipped by their loop
    calls = {}
    for c in spec["iou_calls"]:
        calls.setdefault(c["image"], []).append(c)
    for i, (r, o) in enumerate(zip(records, official["per_image"])):
        gt = get_protocol("center_crop").gt_boxes(r.boxes, r.size)
        if i not in calls:
            assert o["skipped"] is not None and o["iou"] is None
            continue
        assert o["skipped"] is None
        assert [list(g) for g in gt] == [c["gt"] for c in calls[i]]   # GT boxes, exact floats
        assert spol_box(maps[i], spec["threshold"]) == calls[i][0]["pred"]
        assert o["iou"] == max(c["iou"] for c in calls[i])            # IoU, exact
        assert o["hit"] == (o["iou"] > 0.5)
    count, top1, top5, gt_known = _final_line(spec["final_line"])
    assert official["num_counted"] == count and official["num_skipped"] == len(records) - count > 0
    assert round(official["gt_known_loc"] / 100, 5) == gt_known
    assert round(official["top1_loc"] / 100, 5) == top1 and round(official["top5_loc"] / 100, 5) == top5
    # ours: the same computation, every image counted (a skipped one is a miss), IoU >= 0.5
    ours = evaluate_in_memory(records, dict(zip([r.image_id for r in records], maps)), "spol", **kwargs)
    assert ours["num_skipped"] == 0
    hits = [o["hit"] for o in official["per_image"]]
    assert ours["gt_known_loc"] == pytest.approx(100 * sum(hits) / len(records))
    assert 0 < sum(hits) < count


# ----------------------------------------------------------------------------- by hand
def test_an_iou_of_exactly_one_half_is_a_hit_only_without_the_authors_epsilon():
    from utils.evaluation.metrics import spol_iou

    pred, gt = [0, 0, 10, 10], np.array([[0.0, 0.0, 10.0, 5.0]])  # inter 50, union 100
    assert spol_iou(pred, gt[0]) < 0.5 == spol_iou(pred, gt[0], eps=0.0)
    assert spol_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0  # touching, exclusive coordinates
    assert spol_iou([0, 0, 10, 10], [5, 0, 15, 10], eps=0.0) == pytest.approx(1 / 3)
    official = get_protocol("spol-official").hits([pred, None, pred], [gt, gt, np.zeros((0, 4))], iou_compare=">")
    ours = get_protocol("spol").hits([pred, None, pred], [gt, gt, np.zeros((0, 4))])
    assert [o["skipped"] for o in official] == [None, "no contour", "no GT box in the crop"]
    assert [o["hit"] for o in official] == [False, False, False]
    assert [o["skipped"] for o in ours] == [None, None, None] and [o["hit"] for o in ours] == [True, False, False]


def test_masks_under_the_authors_names_are_found(tmp_path):
    from utils.data.dataset import find_pseudo_mask

    (tmp_path / "n001").mkdir()
    (tmp_path / "n001" / "x.JPEG").write_bytes(b"")  # their ImageNet naming: the image's own name
    assert find_pseudo_mask(tmp_path, "train/n001/x.JPEG") == tmp_path / "n001" / "x.JPEG"
    (tmp_path / "train" / "n001").mkdir(parents=True)
    (tmp_path / "train" / "n001" / "x.png").write_bytes(b"")  # ours wins when both exist
    assert find_pseudo_mask(tmp_path, "train/n001/x.JPEG") == tmp_path / "train" / "n001" / "x.png"


def test_authors_classification_file_must_cover_the_split(tmp_path):
    from utils.errors import DataError

    np.save(tmp_path / "t.npy", {"ILSVRC2012_val_00000001.JPEG": [True, True], "other.JPEG": [False, True]})
    got = read_cls_results(tmp_path / "t.npy", ["val/ILSVRC2012_val_00000001.JPEG"])
    assert got == {"val/ILSVRC2012_val_00000001.JPEG": (True, True)}
    with pytest.raises(DataError, match=r"t\.npy: no entry for 1 of the 2 images.*ILSVRC2012_val_00000002"):
        read_cls_results(tmp_path / "t.npy", ["val/ILSVRC2012_val_00000001.JPEG", "val/ILSVRC2012_val_00000002.JPEG"])


def test_authors_mask_format_writes_their_imagenet_jpeg_names(tmp_path):
    from spol.cam.test import pseudo_mask_path, save_mask

    mask = pseudo_mask_from_cam(np.load(FIX / "pseudo_mask_cams.npz")["cams"][0], (40, 30))
    theirs = pseudo_mask_path(tmp_path, "train/n001/x.JPEG", "authors")
    assert theirs == tmp_path / "n001" / "x.JPEG"
    assert pseudo_mask_path(tmp_path, "train/n001/x.JPEG") == tmp_path / "train" / "n001" / "x.png"
    save_mask(theirs, mask)
    assert open(theirs, "rb").read(2) == b"\xff\xd8"  # a JPEG, as cv2.imwrite writes for that name
    back = cv2.imread(str(theirs))
    assert back.shape == mask.shape and np.abs(back.astype(int) - mask).mean() < 3  # lossy
    save_mask(tmp_path / "m.png", mask)
    assert np.array_equal(cv2.imread(str(tmp_path / "m.png")), mask)  # lossless, same B, G, R layout
