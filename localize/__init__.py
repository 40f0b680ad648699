"""Localize the objects of your own images with a trained run: one command and a Python API.

    python -m localize --run output/spol/cub/seg --images my_photos --out output/localized
    python -m localize --run output/sltnet/cub/vgg16/regressor --images my_photos --out output/final
    python -m localize --checkpoint resource/spol_cub200_seg.pth --backbone resnet50 --dataset cub \\
        --images my_photos --out output/released
    torchrun --nproc_per_node 4 -m localize -- --run output/spol/cub/seg --images my_photos --out output/localized

    from localize import load_localizer
    loc = load_localizer("output/spol/cub/seg")
    result = loc(["a.jpg", pil_image, numpy_array])
    result.boxes, result.maps, result.scores, result.classes

Any run of this project that localizes: a SPOL seg run (``spol``), an SLT-Net localizer run (its map,
``sltnet-map``: top-K ACAM of the predicted classes; or ``cam``: the predicted class's CAM, the default
for a plain CAM run trained with --no-smt --no-acam --no-vst), an SLT-Net regressor run with a classifier
run (``sltnet-final``: the regressor's box, the classifier's class, Fig. 2c), or a SPOL seg state dict
without its folder (``--checkpoint``). The kind is read from the run's ``args.yaml``
(:mod:`localize.runs`), its networks are built as it trained them (:mod:`localize.models`), the images go
through the one inference loop in the geometry of ``utils.evaluation.protocol`` (:mod:`localize.api`)
and every box goes back to the original image's pixels; the command writes ``boxes.csv``, the score
maps, pictures and ``predictions.json`` (:mod:`localize.outputs`, :mod:`localize.cli`). Under torchrun
each process localizes its share of the images (the ``--`` keeps torchrun from reading ``--run`` as an
abbreviation of its own ``--run-path``).

A package beside ``spol`` and ``sltnet`` rather than one script beside ``demo.py``: ``pip install -e .``
(the last line of requirements.txt) makes ``from localize import load_localizer`` and ``python -m
localize`` work from any folder, its parts are one job per file, and the import rule (it may import
``utils``, ``network``, ``spol`` and ``sltnet``; nothing imports it) is checked with the others'.
This file imports nothing heavy: ``python -m localize --help`` answers before torch loads.
"""
from __future__ import annotations


def load_localizer(run=None, **options):
    """See :func:`localize.api.load_localizer`."""
    from localize.api import load_localizer as load

    return load(run, **options)


def __getattr__(name: str):
    if name in ("Localizer", "Result", "Entry"):
        from localize import api

        return getattr(api, name)
    raise AttributeError(f"module 'localize' has no attribute {name!r}")


__all__ = ["load_localizer", "Localizer", "Result", "Entry"]
