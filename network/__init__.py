"""Backbones and classifiers shared by both methods (network/backbones.py); the stand-in pretraining
(network/pretrain.py, imported on its own: `python3 -m network.pretrain`)."""
from network.backbones import (NAMES, WEIGHTS, Backbone, build_backbone, build_classifier,
                               classifier_head, load_imagenet_weights, resnet50_trunk, resnet_trunk, weight_file,
                               weight_url)

__all__ = ["NAMES", "WEIGHTS", "Backbone", "build_backbone", "build_classifier", "classifier_head",
           "load_imagenet_weights", "resnet50_trunk", "resnet_trunk", "weight_file", "weight_url"]
