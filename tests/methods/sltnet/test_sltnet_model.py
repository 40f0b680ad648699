"""SLT-Net networks: every backbone builds (random init) and gives CAMs of the expected stride."""
import pytest
import torch
import torch.nn.functional as F

from sltnet.model import CAMLocalizer, LocalizationBranch

# (backbone, input side, expected CAM side, channels before GAP)
# VGG16 conv5_3 stride 16; ResNet50 layer4 / DenseNet161 features stride 32; InceptionV3 Mixed_6e
# has unpadded convolutions: side 17 at 299 (stride ~16), at 96: 47-45-45-22-22-20-9-9-4.
CASES = [("vgg16", 64, 4, 1024), ("resnet50", 64, 2, 2048), ("densenet161", 64, 2, 2208),
         ("inception_v3", 96, 4, 1024)]


@pytest.mark.parametrize("backbone,side,cam_side,channels", CASES)
def test_localizer_cams_have_the_expected_stride(backbone, side, cam_side, channels):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = CAMLocalizer(backbone, num_classes=5, pretrained="none").eval()
    assert model.out_channels == channels
    with torch.no_grad():
        out = model(torch.randn(1, 3, side, side))
    assert out["cams"].shape == (1, 5, cam_side, cam_side)
    # logits = GAP of the CAMs + bias = linear layer on the GAP of the features (Eq. 6-7)
    expected = F.linear(out["features"].mean(dim=(2, 3)), model.classifier.weight, model.classifier.bias)
    assert torch.allclose(out["logits"], expected, atol=1e-4)


def test_localization_branch_outputs_and_param_groups():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    branch = LocalizationBranch("vgg16", num_classes=3, pretrained="none", extra_conv=16, regressor_hidden=8)
    images = torch.randn(2, 3, 64, 64)
    out = branch(images, torch.randn(2, 3, 80, 80))
    assert out["cams"].shape == (2, 3, 4, 4) and out["cams_t"].shape == (2, 3, 5, 5)
    assert out["logits"].shape == (2, 3) and out["boxes"].shape == (2, 4)
    # every pretrained layer at its network's lr, every new layer at that lr x head_lr_mult:
    # localizer 2e-4, its extra conv + classifier 2e-4 x 10; regressor backbone 1e-3, its FC head 1e-3 x 10
    groups = branch.param_groups(2e-4, regressor_lr=1e-3, head_lr_mult=10)
    assert [g["name"] for g in groups] == ["localizer", "localizer_head", "regressor", "regressor_head"]
    assert [g["lr"] for g in groups] == pytest.approx([2e-4, 2e-3, 1e-3, 1e-2])
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == sum(p.numel() for p in branch.parameters())    # every parameter, exactly once
    by_name = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    assert by_name["regressor_head"] == {id(p) for p in branch.regressor.fc.parameters()}
    assert by_name["localizer_head"] == {id(p) for p in [*branch.localizer.extra.parameters(),
                                                           *branch.localizer.classifier.parameters()]}
    # without --regressor-lr the regressor follows --lr: backbone 2e-4, head 2e-4 x 10 (as the localizer's)
    assert [g["lr"] for g in branch.param_groups(2e-4, head_lr_mult=10)] == pytest.approx([2e-4, 2e-3, 2e-4, 2e-3])
    # a shared backbone: the regressor head reads the localizer's features, no second backbone
    shared = LocalizationBranch("vgg16", num_classes=3, pretrained="none", extra_conv=16, regressor_hidden=8,
                                share_backbone=True)
    assert shared.regressor.features is None
    assert shared(images)["boxes"].shape == (2, 4)
    assert sum(p.numel() for p in shared.parameters()) < n_params
    # a shared-backbone regressor is its FC head alone: one group, at the regressor's lr x head_lr_mult
    shared_groups = shared.param_groups(2e-4, regressor_lr=1e-3, head_lr_mult=10)
    assert [(g["name"], g["lr"]) for g in shared_groups] == [("localizer", 2e-4), ("localizer_head", pytest.approx(2e-3)),
                                                             ("regressor_head", pytest.approx(1e-2))]


def test_blocks_after_the_cut_are_removed():
    """No parameter after the CAM block (they would get no gradient and break DDP)."""
    torch.set_num_threads(1)
    inception = CAMLocalizer("inception_v3", num_classes=2, pretrained="none")
    assert not [n for n, _ in inception.named_parameters() if "Mixed_7" in n]
    vgg = CAMLocalizer("vgg16", num_classes=2, pretrained="none", feature="conv4", extra_conv=0)
    assert vgg.stride == 8 and len(vgg.features.backbone.features) == 23     # up to the ReLU of conv4_3
    with torch.no_grad():
        assert vgg(torch.randn(1, 3, 32, 32))["cams"].shape == (1, 2, 4, 4)
    resnet = CAMLocalizer("resnet50", num_classes=2, pretrained="none", feature="layer3")
    assert not [n for n, _ in resnet.named_parameters() if "layer4" in n] and resnet.out_channels == 1024


def test_regressor_head_is_fc_relu_fc_relu():
    """Sec. 3.1: "two fully connected layers and corresponding ReLU layers": a ReLU after each FC."""
    import torch.nn as nn

    from sltnet.model import BoxRegressor

    head = BoxRegressor(None, in_channels=6, hidden=5)
    assert [type(m) for m in head.fc] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert (head.fc[0].in_features, head.fc[0].out_features, head.fc[2].out_features) == (6, 5, 4)
    with torch.no_grad():
        head.fc[2].bias.fill_(-1.0)
        head.fc[2].weight.zero_()
        assert head(torch.randn(2, 6, 3, 3)).eq(0).all()          # the final ReLU: never below 0
    linear = BoxRegressor(None, in_channels=6, hidden=5, final_relu=False)
    assert [type(m) for m in linear.fc] == [nn.Linear, nn.ReLU, nn.Linear]
    branch = LocalizationBranch("vgg16", num_classes=3, pretrained="none", extra_conv=8, regressor_hidden=4,
                                share_backbone=True)
    assert isinstance(branch.regressor.fc[-1], nn.ReLU)


def test_output_stride_8_gives_finer_cams_and_the_stride_the_stages_read():
    """--output-stride 8 (ResNets): layer3 CAMs at stride 8, 8x8 at 64 px (4x4 at the default 32);
    ``stride`` (box scale m, VST size multiple) follows, in the localizer and the regressor."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    for output_stride, side in ((8, 8), (16, 4), (32, 4)):
        model = CAMLocalizer("resnet18", num_classes=3, pretrained="none", feature="layer3",
                             output_stride=output_stride).eval()
        assert model.stride == 64 // side and model.features.backbone.output_stride == output_stride
        with torch.no_grad():
            assert model(x)["cams"].shape == (1, 3, side, side)
    branch = LocalizationBranch("resnet18", num_classes=3, pretrained="none", cam_feature="layer4",
                                regressor_hidden=8, output_stride=8).eval()
    assert branch.localizer.stride == 8 and branch.regressor.features.stride == 8
    with torch.no_grad():
        out = branch(x)
    assert out["cams"].shape == (1, 3, 8, 8) and out["boxes"].shape == (1, 4)
    with pytest.raises(ValueError, match="backbone vgg16 has output stride 32 only"):
        CAMLocalizer("vgg16", num_classes=3, pretrained="none", output_stride=8)


# ----------------------------------------------------------------------------- VST BatchNorm statistics
def _bn_buffers(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k or "num_batches_tracked" in k}


def _training_step(base, images, labels, vst_bn, *, amp=False):
    """One loss of sltnet/localizer/train.py (L_SMT + beta L_VST + L_REG, the VST draw seeded) and its
    backward on a copy of ``base``: (model after the step, loss)."""
    import copy
    import random

    from sltnet.localizer.train import get_args_parser, make_branch_loss
    from utils.config import parse_args

    args = parse_args(get_args_parser(), ["--top-k", "2", "--vst-bn", vst_bn], stage="localizer_train")
    model = copy.deepcopy(base).train()
    random.seed(1)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss, _ = make_branch_loss(args, model.localizer.stride)(model, {"image": images, "label": labels})
    loss.backward()
    return model, loss


def _bn_branch():
    torch.manual_seed(0)   # ResNet-18: BatchNorm layers (VGG16 has none)
    return LocalizationBranch("resnet18", num_classes=3, pretrained="none", cam_feature="layer3", output_stride=8,
                              regressor_hidden=8, share_backbone=True)


def test_vst_bn_frozen_leaves_the_running_statistics_of_the_original_pass():
    """--vst-bn frozen: the transformed copy's pass (Eq. 10-11) updates no BatchNorm running_mean /
    running_var / num_batches_tracked, so after a training step they equal those after a step on the
    original images alone; with update (the default) they differ. Both passes normalise with batch
    statistics in train mode either way, so the loss and every gradient of the step are the same."""
    torch.set_num_threads(1)
    base = _bn_branch()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    updated, loss_update = _training_step(base, images, labels, "update")
    frozen, loss_frozen = _training_step(base, images, labels, "frozen")
    original = __import__("copy").deepcopy(base).train()
    original(images)                                   # the original images alone
    ref, got_frozen, got_update = _bn_buffers(original), _bn_buffers(frozen), _bn_buffers(updated)
    assert len(ref) == 3 * 15     # mean, var, count of 15 BN layers: bn1, 4 in layer1, 5 in layer2 and in layer3
    assert all(torch.equal(ref[k], got_frozen[k]) for k in ref)
    assert not all(torch.equal(ref[k], got_update[k]) for k in ref)
    assert got_update["localizer.features.backbone.bn1.num_batches_tracked"].item() == 2
    assert got_frozen["localizer.features.backbone.bn1.num_batches_tracked"].item() == 1
    assert torch.equal(loss_update, loss_frozen)
    for (name, p), q in zip(updated.named_parameters(), frozen.parameters()):
        assert torch.equal(p.grad, q.grad), name
    # the layers track their statistics again after the pass, and eval mode reads them
    assert all(m.track_running_stats for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_vst_bn_frozen_under_autocast():
    torch.set_num_threads(1)
    base = _bn_branch()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    frozen, _ = _training_step(base, images, labels, "frozen", amp=True)
    original = __import__("copy").deepcopy(base).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        original(images)
    ref, got = _bn_buffers(original), _bn_buffers(frozen)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    with pytest.raises(ValueError, match="vst_bn"):
        base(images, images, vst_bn="fixed")


DDP_WORKER = """
import copy, json, os, random, sys
import torch
from torch.nn.parallel import DistributedDataParallel
from sltnet.localizer.train import get_args_parser, make_branch_loss
from sltnet.model import LocalizationBranch
from utils.config import parse_args
from utils.engine.distributed import cleanup, init_distributed
torch.set_num_threads(1)
ctx = init_distributed("cpu")
torch.manual_seed(0)
base = LocalizationBranch("resnet18", num_classes=3, pretrained="none", cam_feature="layer3", output_stride=8,
                          regressor_hidden=8, share_backbone=True)
torch.manual_seed(10 + ctx.rank)                 # each rank its own images
images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
out = {}
for mode in ("update", "frozen"):
    model = copy.deepcopy(base).train()
    ddp = DistributedDataParallel(model)
    args = parse_args(get_args_parser(), ["--top-k", "2", "--vst-bn", mode], stage="localizer_train")
    random.seed(1)
    loss, _ = make_branch_loss(args, 8)(ddp, {"image": images, "label": labels})
    loss.backward()
    reference = copy.deepcopy(base).train()
    reference(images)                            # this rank's original images alone
    ref, got = reference.state_dict(), model.state_dict()
    keys = [k for k in ref if "running_" in k or "num_batches_tracked" in k]
    out[mode] = all(torch.equal(ref[k], got[k]) for k in keys)
with open(os.path.join(sys.argv[1], f"rank{ctx.rank}.json"), "w") as f:
    json.dump(out, f)
cleanup(ctx)
"""


@pytest.mark.slow  # two processes under torchrun
def test_vst_bn_frozen_under_two_process_ddp(tmp_path):
    """torchrun --nproc_per_node 2 (gloo): under DDP (buffers broadcast from rank 0 at each forward) a
    frozen step leaves every rank with the statistics of its own original images; update does not."""
    import json
    import os
    import subprocess
    import sys
    import textwrap

    from utils.paths import REPO_ROOT

    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(DDP_WORKER))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"update": False, "frozen": True}


# ----------------------------------------------------------------------------- regressor head
def test_regressor_grid_pooling_keeps_position_and_refuses_the_other_heads_weights():
    """--regressor-pool grid (not in the paper): adaptive average pooling to N x N, flattened channel by
    channel, then the same FC-ReLU-FC[-ReLU]. Hand-worked on one 4 x 4 channel:
    [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]] -> 2 x 2 cells of 2 x 2:
    (1+2+5+6)/4 = 3.5, (3+4+7+8)/4 = 5.5, (9+10+13+14)/4 = 11.5, (11+12+15+16)/4 = 13.5; GAP: 8.5.
    A feature moved from the top-left to the bottom-right cell keeps the GAP and changes the grid."""
    import torch.nn as nn

    from sltnet.model import BoxRegressor
    from utils.engine.checkpoint import load_state_dict_checked
    from utils.errors import DataError

    feats = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    grid = BoxRegressor(None, in_channels=1, hidden=3, pool="grid", grid=2)
    gap = BoxRegressor(None, in_channels=1, hidden=3)
    assert grid.pooled(feats).tolist() == [[3.5, 5.5, 11.5, 13.5]]
    assert gap.pooled(feats).tolist() == [[8.5]]
    two = torch.cat([feats, 10 * feats], dim=1)                          # channel-major: channel 0's cells first
    assert BoxRegressor(None, in_channels=2, hidden=3, pool="grid", grid=2).pooled(two).tolist() == \
        [[3.5, 5.5, 11.5, 13.5, 35.0, 55.0, 115.0, 135.0]]
    assert (grid.fc[0].in_features, gap.fc[0].in_features) == (4, 1)
    assert [type(m) for m in grid.fc] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    corner, moved = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    corner[0, 0, 0, 0], moved[0, 0, 3, 3] = 1.0, 1.0
    assert torch.equal(gap.pooled(corner), gap.pooled(moved)) and not torch.equal(grid.pooled(corner), grid.pooled(moved))
    # grid 1 is GAP; a grid head's weights never load into a GAP head (or another grid), and back
    assert torch.equal(BoxRegressor(None, in_channels=1, hidden=3, pool="grid", grid=1).pooled(feats), gap.pooled(feats))
    with pytest.raises(DataError, match=r"fc.0.weight \[3, 4\] vs model \[3, 1\]"):
        load_state_dict_checked(gap, grid.state_dict(), source="model.pth")
    with pytest.raises(DataError, match=r"fc.0.weight \[3, 1\] vs model \[3, 4\]"):
        load_state_dict_checked(grid, gap.state_dict(), source="model.pth")
    with pytest.raises(ValueError, match="regressor pooling"):
        BoxRegressor(None, in_channels=1, pool="max")
    branch = LocalizationBranch("vgg16", num_classes=3, pretrained="none", extra_conv=8, regressor_hidden=4,
                                share_backbone=True, regressor_pool="grid", regressor_grid=3)
    assert branch.regressor.fc[0].in_features == 8 * 9
    with torch.no_grad():
        assert branch(torch.randn(2, 3, 32, 32))["boxes"].shape == (2, 4)


def test_linear_regressor_output_still_learns_a_coordinate_below_zero():
    """--no-regressor-final-relu: a coordinate whose pre-activation is below 0 gets a gradient from
    L_REG; with the final ReLU (Sec. 3.1's FC-ReLU-FC-ReLU) it gets none (ReLU'(z) = 0 for z < 0).

    Output layer: weight 0, bias (-1, 2, 2, 2); target (1, 2, 2, 2). Smooth-L1 (Eq. 4) on the first
    coordinate: linear: p = -1, |p - 1| = 2 >= 1 -> d/dp = sign(p - 1) = -1, so bias 0 gets -1;
    ReLU: p = relu(-1) = 0, but dp/dz = 0 -> bias 0 gets 0. The other coordinates are exact (0 in both).
    """
    from sltnet.losses import box_regression_loss
    from sltnet.model import BoxRegressor

    target = torch.tensor([[1.0, 2.0, 2.0, 2.0]])
    grads = {}
    for final_relu in (True, False):
        head = BoxRegressor(None, in_channels=2, hidden=3, final_relu=final_relu)
        with torch.no_grad():
            head.fc[2].weight.zero_()
            head.fc[2].bias.copy_(torch.tensor([-1.0, 2.0, 2.0, 2.0]))
        box_regression_loss(head(torch.ones(1, 2, 2, 2)), target).backward()
        grads[final_relu] = head.fc[2].bias.grad.tolist()
    assert grads[False] == [-1.0, 0.0, 0.0, 0.0]
    assert grads[True] == [0.0, 0.0, 0.0, 0.0]
