"""The demo's table rows: every map scored by the shared evaluator (``utils.evaluation.evaluate``, WSOL
protocol), the threshold chosen on the TRAINING split's boxes, and the centred-box baseline."""
from __future__ import annotations

import os

import numpy as np

from utils.evaluation.evaluate import evaluate_scoremaps
from utils.evaluation.evaluator import LocalizationEvaluator
from utils.evaluation.handoff import classification_flags
from utils.evaluation.protocol import get_protocol


def centre_box_map(size: int, fraction: float) -> np.ndarray:
    """A map that is 1 inside the centred square box of side ``fraction * size``, 0 outside."""
    margin = int(round(size * (1 - fraction) / 2))
    m = np.zeros((size, size), np.float32)
    m[margin:size - margin, margin:size - margin] = 1
    return m


def choose_centre_fraction(train_records, size: int) -> tuple[float, float]:
    """The side fraction (0.30 .. 1.00, step 0.05) of the centred box with the best GT-known Loc
    on the TRAINING split's boxes (never the test split); returns (fraction, train accuracy)."""
    from utils.evaluation.boxes import boxes_from_maps
    from utils.evaluation.metrics import LocalizationMeter

    gts = [get_protocol("resize", size).gt_boxes(r.boxes, r.size) for r in train_records]
    best = (1.0, -1.0)
    for fraction in np.round(np.arange(0.30, 1.0001, 0.05), 2):
        box = boxes_from_maps(centre_box_map(size, float(fraction)), 0.5)[0]
        meter = LocalizationMeter()
        meter.update(np.repeat(box, len(gts), axis=0), gts)
        acc = meter.compute()["gt_known_loc"]
        if acc > best[1]:
            best = (float(fraction), acc)
    return best


def train_threshold(train_records, maps, size: int, interval: float) -> tuple[float, float]:
    """Choe et al.'s threshold choice on held-out boxes, here the TRAINING split's boxes (the
    generated layout has no val split; never the test split): the best threshold of the IoU-50
    sweep of the method's maps of the training images. Returns (threshold, GT-known there)."""
    res = evaluate_scoremaps(train_records, maps, "wsol", input_size=size, cam_curve_interval=interval,
                             split="train")
    return float(res["best_threshold"]), float(res["gt_known_loc"])


def evaluate_maps(records, scoremap_of, size: int, **options) -> dict:
    """The results of maps made in memory (``scoremap_of(image_id)``) through the evaluator (WSOL protocol)."""
    with LocalizationEvaluator(records, get_protocol("wsol", size), **options) as evaluator:
        for record in records:
            evaluator.accumulate(record.image_id, scoremap_of(record.image_id))
        return evaluator.compute().metrics


def score_row(name: str, kind: str, records, maps, size: int, *, threshold: float | None, predictions=None,
              top1_cls=None, notes: str = "", output_dir=None, threshold_source: str = "",
              interval: float = 0.001) -> dict:
    """One table row from score maps (a folder of saved maps, or a function image id -> map) through the
    shared evaluator (WSOL protocol at ``size``)."""
    options = dict(threshold=0.5 if threshold is None else threshold, cam_curve_interval=interval, split="test")
    if callable(maps):
        flags = None if predictions is None else classification_flags(predictions, records)
        res = evaluate_maps(records, maps, size, flags=flags, **options)
    else:
        res = evaluate_scoremaps(records, maps, "wsol", predictions=predictions, input_size=size, **options)
    if predictions is not None and top1_cls is None:
        from utils.evaluation.handoff import read_predictions

        preds = read_predictions(predictions) if isinstance(predictions, (str, os.PathLike)) else predictions
        top1_cls = 100.0 * float(np.mean([preds[r.image_id].top1_correct for r in records]))
    return {"method": name, "kind": kind, "top1_cls": top1_cls, "top1_loc": res.get("top1_loc"),
            "gt_known_loc": res["gt_known_loc"], "maxboxacc_v2": res["maxboxacc_v2"], "pxap": res.get("pxap"),
            "threshold": threshold, "threshold_source": threshold_source if threshold is not None else "",
            "notes": notes, "output_dir": None if output_dir is None else str(output_dir),
            "curve": {"thresholds": res["curves"]["thresholds"], "gt_known": res["curves"]["maxboxacc_iou50"]}}
