"""utils.engine.classify: head/backbone lr groups, per-epoch linear decay, ten-crop views and averaging,
top-5 prediction and predictions.csv, on hand-made models and inputs."""
import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from utils.engine.classify import (LinearEpochDecay, classifier_param_groups, final_linear, top_k_step,
                                   ten_crop_views, eval_transform, write_classification)
from utils.options import ARCHS, add_classifier_args
from utils.data.layouts import load_records
from utils.engine.distributed import DistContext
from utils.evaluation.handoff import read_predictions


class TinyNet(nn.Module):
    """features (conv) + classifier Linear(4 -> classes)."""

    def __init__(self, classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.features(x))


class ChannelMeans(nn.Module):
    """Logits = scale x per-channel mean of the input: the answer of every view is known by hand."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * x.mean(dim=(2, 3))


def test_param_groups_give_backbone_the_lr_multiplier():
    model = TinyNet(3)
    head, body = classifier_param_groups(model, model.fc, lr=0.05, backbone_lr_mult=0.1, weight_decay=1e-4)
    assert head["lr"] == 0.05 and math.isclose(body["lr"], 0.005)
    assert {id(p) for p in head["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(body["params"]) == 2  # conv weight and bias


@pytest.mark.parametrize("arch", ARCHS)
def test_final_linear_is_the_head_network_names(arch):
    """utils.engine.classify finds the head without importing network: the same layer as
    network.classifier_head, for every classifier it trains (built on the meta device: no memory)."""
    from network.backbones import build_classifier, classifier_head

    with torch.device("meta"):
        model = build_classifier(arch, 7, "none")
    parent, attr = classifier_head(model, arch)
    assert final_linear(model) is getattr(parent, attr)
    assert final_linear(model).out_features == 7
    with pytest.raises(ValueError, match="no linear layer"):
        final_linear(nn.Conv2d(3, 4, 1))


def test_linear_decay_is_stepped_per_epoch():
    decay = LinearEpochDecay(epochs=4)
    assert decay(0) == 1.0 and decay(123) == 1.0  # steps per epoch not known yet
    decay.steps_per_epoch = 10
    assert [decay(s) for s in (0, 9, 10, 19, 20, 35)] == [1.0, 1.0, 0.75, 0.75, 0.5, 0.25]


def test_ten_crop_views_order_and_content():
    images = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5)
    views = ten_crop_views(images, 2)
    assert views.shape == (2, 10, 1, 2, 2)
    img = images[1, 0]
    assert torch.equal(views[1, 0, 0], img[0:2, 0:2])       # top-left
    assert torch.equal(views[1, 1, 0], img[0:2, 3:5])       # top-right
    assert torch.equal(views[1, 2, 0], img[2:4, 0:2])       # bottom-left
    assert torch.equal(views[1, 3, 0], img[2:4, 3:5])       # bottom-right
    assert torch.equal(views[1, 4, 0], img[1:3, 2:4])       # centre: round((4-2)/2)=1, round((5-2)/2)=2
    assert torch.equal(views[1, 5, 0], img.flip(1)[0:2, 0:2])  # flipped top-left
    with pytest.raises(ValueError):
        ten_crop_views(images, 6)


def test_ten_crop_averages_softmax_not_logits():
    # 4x4 image, crops of 2: the four quadrants, the centre, and the same of the mirror image.
    # Channel 0 is 40 at pixel (0, 0) only: the top-left view and the flipped top-right view see a
    # mean of 10, the 8 others 0. Channel 1 is 1 everywhere, channel 2 is 0.
    image = torch.zeros(1, 3, 4, 4)
    image[0, 0, 0, 0] = 40.0
    image[0, 1] = 1.0
    indices, top = top_k_step(ChannelMeans(), {"image": image, "index": torch.tensor([7])}, ten_crop=2, k=3)
    views = [torch.tensor([10.0, 1.0, 0.0])] * 2 + [torch.tensor([0.0, 1.0, 0.0])] * 8
    mean_softmax = torch.stack([torch.softmax(v, 0) for v in views]).mean(0)
    mean_logits = torch.stack(views).mean(0)                 # (2.0, 1.0, 0.0): class 0 would win
    assert mean_logits.argmax() == 0 and mean_softmax.argmax() == 1
    assert indices.tolist() == [7]
    assert top.tolist() == [[1, 0, 2]]


def test_top_k_step_one_view_and_k_capped_by_classes():
    x = torch.zeros(2, 3, 4, 4)
    x[0, 2] = 1.0
    x[1, 1] = 2.0
    x[1, 0] = 1.0
    indices, top = top_k_step(ChannelMeans(), {"image": x, "index": torch.tensor([0, 1])})
    assert top.shape == (2, 3)  # 3 classes < 5
    assert top[0, 0] == 2 and top[1].tolist() == [1, 0, 2]


def test_write_classification_on_a_tiny_dataset(tiny_cub, tmp_path):
    records = load_records(tiny_cub, "cub", "test")
    parser = add_classifier_args(argparse.ArgumentParser(), train=False)
    args = parser.parse_args(["--resize-size", "16"])
    args.batch_size, args.workers, args.amp = 1, 0, "off"
    model = ChannelMeans()
    stats = write_classification(model, records, eval_transform(args), args, DistContext(), tmp_path / "p.csv")
    preds = read_predictions(tmp_path / "p.csv")
    assert set(preds) == {r.image_id for r in records}
    for r in records:
        assert preds[r.image_id].label == r.label and len(preds[r.image_id].top5) == 3
    top1 = np.mean([preds[r.image_id].top1_correct for r in records]) * 100
    assert stats["num_images"] == 2 and stats["top1_cls"] == top1
