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
    groups = branch.param_groups(2e-4, regressor_lr=1e-3, head_lr_mult=10)
    assert [g["name"] for g in groups] == ["localizer", "localizer_head", "regressor"]
    assert [g["lr"] for g in groups] == pytest.approx([2e-4, 2e-3, 1e-3])
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == sum(p.numel() for p in branch.parameters())    # every parameter, exactly once
    # a shared backbone: the regressor head reads the localizer's features, no second backbone
    shared = LocalizationBranch("vgg16", num_classes=3, pretrained="none", extra_conv=16, regressor_hidden=8,
                                share_backbone=True)
    assert shared.regressor.features is None
    assert shared(images)["boxes"].shape == (2, 4)
    assert sum(p.numel() for p in shared.parameters()) < n_params


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
