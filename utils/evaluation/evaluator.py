"""The localization evaluator, fed one image at a time: ``accumulate(image_id, scoremap)`` as each map
is made (a test step's inference consumer) or read (``python -m utils.evaluation``), then ``compute()``
once, which returns the metrics with the per-image boxes and hits it scored. Shards merge through
``state()`` / ``merge()``. What it computes, for every protocol: [docs/evaluation.md](../../docs/evaluation.md).
"""
from __future__ import annotations

import multiprocessing as mp
from collections import deque
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from utils.errors import DataError
from utils.evaluation.boxes import choe_threshold_levels
from utils.evaluation.handoff import read_scoremap
from utils.evaluation.masks import instance_ground_truth
from utils.evaluation.metrics import (BoxAccumulator, LevelSweep, PxAPAccumulator, cam_threshold_list,
                                      check_scoremap_validity)
from utils.evaluation.protocol import Protocol, spol_accuracy

BOX_METRICS_NOT_COMPUTED = ("not computed: OpenImages30k has instance masks and no boxes in Choe et al.'s "
                            "protocol, which scores it with PxAP alone")
SKIP_REASONS = ("no contour", "no GT box in the crop")
# why an image fed with accumulate_miss has no box to score (counted as a miss under every protocol)
NO_BOX, BOX_OUTSIDE_INPUT = "no box given", "box without area in the input"
BOX_ACC_IOUS = (30, 50, 70)  # the IoU thresholds of the one-box accuracies (box_acc_per_iou, box_acc_mean)


@dataclass
class Evaluation:
    """What :meth:`LocalizationEvaluator.compute` returns, per image in the records' order.

    ``metrics``: the results (what ``metrics.json`` holds); ``boxes``: image id -> the box that was
    scored (``[0, 0, 0, 0]`` = none; empty for OpenImages30k); ``hits``: per image ``{"image_id",
    "iou", "hit", "skipped"}`` (``skipped``: why ``spol_official`` left it out, else None).
    """

    metrics: dict
    boxes: dict
    hits: list


def checked_scoremap(scoremap, where, input_size: int) -> np.ndarray:
    """``scoremap`` as float64 (Choe et al. evaluate float64 maps), after the checks: a finite 2-D numpy
    array in [0, 1] of the protocol's input size (one ``DataError`` naming ``where`` otherwise)."""
    check_scoremap_validity(scoremap, where)
    if scoremap.shape != (input_size, input_size):
        raise DataError.at(where, None, f"score map shape {scoremap.shape} differs from the protocol input "
                                        f"size ({input_size}, {input_size})")
    return scoremap.astype(np.float64)


def require_instance_masks(records, split: str) -> None:
    """One ``DataError`` naming the first record without instance masks (OpenImages30k's PxAP needs them)."""
    for r in records:
        if not getattr(r, "instance_mask_paths", ()):
            raise DataError.at(r.path, msg=f"image {r.image_id} has no instance mask (split '{split}': PxAP needs "
                                           "the masks of <split>/localization.txt; OpenImages30k's train split has "
                                           "image-level labels only)")


class _ImageScorer:
    """One image's share of the evaluation; picklable, so that worker processes run it."""

    def __init__(self, protocol: Protocol, cam_curve_interval: float, threshold, *, sweep: bool, with_masks: bool,
                 instance_masks: bool):
        self.protocol, self.cam_curve_interval, self.threshold = protocol, cam_curve_interval, threshold
        self.thresholds = cam_threshold_list(cam_curve_interval)
        self.sweep, self.with_masks, self.instance_masks = sweep, with_masks, instance_masks

    def __call__(self, record, scoremap, box, where) -> dict:
        out = {}
        if scoremap is not None:
            scoremap = checked_scoremap(scoremap, where, self.protocol.input_size)
            if self.instance_masks:
                return self._instance_masks(record, scoremap)
            if self.sweep:
                gt = self.protocol.gt_boxes(record.boxes, record.size)
                levels = LevelSweep(scoremap, self.thresholds, (False, True))
                out["largest"], out["multi"] = levels.best_ious(gt, False), levels.best_ious(gt, True)
                if box is None and self.threshold is None:  # boxed at the sweep's best threshold, in compute()
                    out["levels"] = (levels.max_value, levels.levels.astype(np.uint8),
                                     levels.largest_boxes().astype(np.int16))  # kept small: one per image
                if self.with_masks:
                    pxap = PxAPAccumulator(self.cam_curve_interval)
                    pxap.accumulate(scoremap, self.protocol.gt_mask(record), path=record.mask_path)
                    out["px"] = pxap.state()
            if box is None and self.threshold is not None:
                box = self.protocol.box(scoremap, self.threshold)  # [0, 0, 0, 0] = no box
        if box is not None:
            out["box"] = np.asarray(box).reshape(4)
        return out

    def saved(self, record, folder) -> dict:
        """The same for the map of ``record`` saved under ``folder`` (:func:`utils.evaluation.handoff.read_scoremap`)."""
        scoremap, path = read_scoremap(folder, record.image_id)
        return self(record, scoremap, None, path)

    def _instance_masks(self, record, scoremap) -> dict:
        foreground, ignore = instance_ground_truth(record, self.protocol.input_size)
        pxap = PxAPAccumulator(self.cam_curve_interval)
        pxap.accumulate(scoremap, foreground, ignore, path=record.instance_mask_paths[0])
        return {"px": pxap.state(), "foreground": bool(foreground.any()), "ignored": int(ignore.sum())}


class _Done:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


class _Workers:
    """Runs the per-image work in this process, or in a pool of ``workers`` processes. The workers
    start from a fork server, not by forking this process: a process that has run both torch and
    OpenCV's thread pool (e.g. a large cv2.resize) leaves that pool unusable in a forked child, whose
    first cv2 call then hangs."""

    def __init__(self, workers: int):
        self.workers, self.pool = int(workers or 0), None

    def submit(self, fn, *args):
        if self.workers <= 1:
            return _Done(fn(*args))
        if self.pool is None:
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            self.pool = mp.get_context(method).Pool(self.workers, initializer=_worker_init)
        return self.pool.apply_async(fn, args)

    def close(self, failed: bool = False):
        if self.pool is not None:
            if failed:
                self.pool.terminate()  # do not finish the remaining images after an error
            else:
                self.pool.close()
            self.pool.join()
            self.pool = None


def _worker_init():
    import cv2
    cv2.setNumThreads(1)


class LocalizationEvaluator:
    """GT-known / Top-1 / Top-5 Loc, MaxBoxAcc, MaxBoxAccV2 and PxAP of ``records`` under ``protocol``.

    ``threshold``: the box threshold of GT-known / Top-k Loc (required by the SPOL protocols); None =
    the best threshold of the IoU-50 largest-contour sweep, each image's box kept per level until
    then. ``flags``: image id -> ``(top1_correct, top5_correct)`` (adds Top-1 / Top-5 Loc;
    :func:`utils.evaluation.handoff.classification_flags` reads them from a file). ``sweep=False``
    leaves out MaxBoxAcc(V2), PxAP and their curves. ``workers`` > 1: the per-image work runs in that
    many processes (same numbers). Records with instance masks (OpenImages30k) get PxAP alone.

    Use it as a context manager (an error stops its workers) or call :meth:`close`.
    """

    def __init__(self, records, protocol: Protocol, *, threshold: float | None = None,
                 flags: Mapping[str, tuple] | None = None, cam_curve_interval: float = 0.001,
                 iou_threshold: float = 0.5, iou_compare: str = ">=", inclusive_iou: bool = True,
                 sweep: bool = True, split: str = "", workers: int = 0):
        if not isinstance(protocol, Protocol):
            raise TypeError(f"protocol must be a utils.evaluation.protocol.Protocol (get_protocol), got {protocol!r}")
        self.records = list(records)
        if not self.records:
            raise ValueError("no records to evaluate")
        self.by_id = {r.image_id: r for r in self.records}
        if len(self.by_id) != len(self.records):
            raise ValueError("duplicate image ids in the evaluated records")
        self.protocol, self.threshold, self.split = protocol, threshold, split
        self.instance_masks = any(getattr(r, "instance_mask_paths", ()) for r in self.records)
        if self.instance_masks:
            self._check_instance_masks(threshold, flags)
        elif protocol.needs_threshold and threshold is None and sweep:  # without the sweep a box comes with each image
            raise ValueError(f"protocol '{protocol.name}' needs a fixed threshold (--threshold; SPOL's: "
                             "configs/spol_*.yaml seg_test.spol_threshold, 0.2 CUB, 0.8 ImageNet)")
        if flags is not None:
            missing = [r.image_id for r in self.records if r.image_id not in flags]
            if missing:
                raise ValueError(f"no classification result for {len(missing)} image(s) (first: {missing[0]})")
        self.flags = flags
        self.cam_curve_interval, self.sweep = cam_curve_interval, bool(sweep) or self.instance_masks
        self.iou_threshold, self.inclusive_iou = iou_threshold, inclusive_iou
        self.iou_compare = protocol.iou_compare or iou_compare  # spol_official: the authors' '>', whatever was asked
        self.with_masks = all(r.mask_path is not None for r in self.records)
        self.scorer = _ImageScorer(protocol, cam_curve_interval, threshold, sweep=self.sweep,
                                   with_masks=self.with_masks, instance_masks=self.instance_masks)
        self.maxboxacc = BoxAccumulator(cam_curve_interval, iou_thresholds=(50,), multi_contour=False)
        self.maxboxacc_v2 = BoxAccumulator(cam_curve_interval, iou_thresholds=(30, 50, 70), multi_contour=True)
        self.pxap = PxAPAccumulator(cam_curve_interval)
        self.masks = {"without_foreground": 0, "ignored": 0}
        self.images: dict[str, dict] = {}   # image id -> its box, or its boxes per level
        self._seen: set[str] = set()
        self._pending: deque = deque()
        self._workers = _Workers(workers)
        self._max_pending = 4 * max(1, int(workers or 0))

    def _check_instance_masks(self, threshold, flags) -> None:
        if self.protocol.crops:
            raise ValueError(f"protocol '{self.protocol.label}': PxAP on instance masks (OpenImages30k) is Choe et "
                             "al.'s MaskEvaluator, on the whole image resized: use --protocol wsol (resize)")
        if threshold is not None or flags is not None:
            raise ValueError("--threshold / --predictions are for box metrics (GT-known, Top-1/5 Loc), which are not "
                             "computed on OpenImages30k: it has instance masks and no boxes in Choe et al.'s protocol")
        require_instance_masks(self.records, self.split)

    # ------------------------------------------------------------------ feeding
    def accumulate(self, image_id: str, scoremap: np.ndarray | None = None, *, box=None) -> None:
        """Add one image: its score map (2-D numpy, [0, 1], the protocol's input size) and/or the box a
        method predicted for it (``x0, y0, x1, y1`` input pixels; scored instead of the protocol's box
        of the map). Without a box, the map is boxed by the protocol's rule at the threshold."""
        record = self._take(image_id)
        if scoremap is None and (box is None or self.sweep):
            raise ValueError(f"{image_id}: a score map is needed ({'the sweep' if self.sweep else 'no box given'})")
        if box is None and self.threshold is None and not self.sweep:
            raise ValueError(f"{image_id}: no box: give one, a fixed threshold, or keep the sweep")
        self._submit(image_id, self.scorer, record, scoremap, box, f"<score map of {image_id}>")

    def accumulate_miss(self, image_id: str, reason: str = NO_BOX) -> None:
        """Add one image that has no box to score (``sweep=False`` only): ``NO_BOX``, a box file without
        a line for it; ``BOX_OUTSIDE_INPUT``, its box has no area in the protocol's input (outside the
        centre crop). A miss under every protocol, counted in every denominator: ``spol_official`` too,
        whose skipped images are maps without a contour. The results list the images without a box."""
        if reason not in (NO_BOX, BOX_OUTSIDE_INPUT):
            raise ValueError(f"reason must be {NO_BOX!r} or {BOX_OUTSIDE_INPUT!r}, got {reason!r}")
        if self.sweep:
            raise ValueError(f"{image_id}: the sweep needs a score map of every image (an image without a box "
                             "is for an evaluator with sweep=False)")
        self._take(image_id)
        self.images[image_id] = {"box": np.zeros(4), "miss": reason}

    def accumulate_saved(self, image_id: str, folder) -> None:
        """Add one image from its map saved under ``folder`` (read, with ``workers``, in the worker)."""
        self._submit(image_id, self.scorer.saved, self._take(image_id), folder)

    def _take(self, image_id: str):
        record = self.by_id.get(image_id)
        if record is None:
            raise ValueError(f"image {image_id} is not among the evaluated records")
        if image_id in self._seen:
            raise ValueError(f"image {image_id} accumulated twice")
        self._seen.add(image_id)
        return record

    def _submit(self, image_id, fn, *args) -> None:
        self._pending.append((image_id, self._workers.submit(fn, *args)))
        while len(self._pending) > self._max_pending:
            self._absorb(*self._pending.popleft())

    def _drain(self) -> None:
        while self._pending:
            self._absorb(*self._pending.popleft())

    def _absorb(self, image_id: str, result) -> None:
        out = result.get()
        if "px" in out:
            self.pxap.merge(out["px"])
        if self.instance_masks:
            self.masks["without_foreground"] += not out["foreground"]
            self.masks["ignored"] += out["ignored"]
            self.images[image_id] = {}
            return
        if "largest" in out:
            self.maxboxacc.accumulate_ious(out["largest"])
            self.maxboxacc_v2.accumulate_ious(out["multi"])
        self.images[image_id] = {k: out[k] for k in ("box", "levels") if k in out}

    # ------------------------------------------------------------------ shards
    def state(self) -> dict:
        """Everything accumulated so far (for :meth:`merge` on another rank's evaluator)."""
        self._drain()
        return {"images": self.images, "maxboxacc": self.maxboxacc.state(), "maxboxacc_v2": self.maxboxacc_v2.state(),
                "pxap": self.pxap.state(), "masks": dict(self.masks)}

    def merge(self, state: dict) -> "LocalizationEvaluator":
        """Add another shard's :meth:`state` (each image in exactly one shard)."""
        self._drain()
        twice = set(state["images"]) & set(self.images)
        if twice:
            raise ValueError(f"{len(twice)} image(s) in two shards (e.g. {min(twice)})")
        self.images.update(state["images"])
        self._seen.update(state["images"])
        self.maxboxacc.merge(state["maxboxacc"])
        self.maxboxacc_v2.merge(state["maxboxacc_v2"])
        self.pxap.merge(state["pxap"])
        for key, value in state["masks"].items():
            self.masks[key] += value
        return self

    def close(self, failed: bool = False) -> None:
        self._workers.close(failed)

    def __enter__(self) -> "LocalizationEvaluator":
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.close(failed=kind is not None)

    # ------------------------------------------------------------------ results
    def compute(self) -> Evaluation:
        """The metrics, boxes and hits of every record (each must have been accumulated once)."""
        self._drain()
        self.close()
        missing = [r.image_id for r in self.records if r.image_id not in self.images]
        if missing:
            raise ValueError(f"{len(missing)} of the {len(self.records)} images were never accumulated "
                             f"(first: {missing[0]}): every image is counted")
        if self.instance_masks:
            return Evaluation(self._mask_metrics(), {}, [])
        return self._box_evaluation()

    def _box_evaluation(self) -> Evaluation:
        protocol, records = self.protocol, self.records
        gts = [protocol.gt_boxes(r.boxes, r.size) for r in records]
        results = {"protocol": protocol.label, "split": self.split, "num_images": len(records)}
        best_threshold = None
        if self.sweep:
            box, box_v2 = self.maxboxacc.compute(), self.maxboxacc_v2.compute()
            best_threshold = box["best_threshold"][50]
        threshold_used = best_threshold if self.threshold is None else float(self.threshold)
        boxes = [self._box(self.images[r.image_id], threshold_used) for r in records]
        missed = [self.images[r.image_id].get("miss") for r in records]
        flags = None if self.flags is None else [tuple(bool(f) for f in self.flags[r.image_id]) for r in records]
        loc, outcomes = protocol.score(boxes, gts, flags, iou_threshold=self.iou_threshold,
                                       iou_compare=self.iou_compare, inclusive_iou=self.inclusive_iou)
        if outcomes is not None and any(missed):  # spol_official skips maps without contour, not images without a box
            outcomes = [{"iou": None, "hit": False, "skipped": None} if why and o["skipped"] == "no contour" else o
                        for o, why in zip(outcomes, missed)]
            loc = spol_accuracy(outcomes, flags)
        results["gt_known_loc"] = loc["gt_known_loc"]
        if flags is not None:
            results["top1_loc"], results["top5_loc"] = loc["top1_loc"], loc["top5_loc"]
        if outcomes is not None:
            results["num_counted"], results["num_skipped"] = loc["num_counted"], loc["num_skipped"]
            results["num_skipped_by_reason"] = {why: sum(o["skipped"] == why for o in outcomes) for why in SKIP_REASONS}
        else:
            outcomes = protocol.hits(boxes, gts, iou_threshold=self.iou_threshold, iou_compare=self.iou_compare,
                                     inclusive_iou=self.inclusive_iou)
        hits = [{"image_id": r.image_id, "iou": o["iou"], "hit": o["hit"], "skipped": o["skipped"]}
                for r, o in zip(records, outcomes)]
        if not self.sweep:  # one box per image: its accuracy at IoU 30 / 50 / 70 (no threshold to sweep)
            results.update(self._box_accuracy(outcomes))
            results["num_images_without_box"] = sum(why == NO_BOX for why in missed)
            results["images_without_box"] = [r.image_id for r, why in zip(records, missed) if why == NO_BOX]
            results["num_boxes_outside_input"] = sum(why == BOX_OUTSIDE_INPUT for why in missed)
        if protocol.crops:  # the SPOL protocols list every image's outcome in their results
            results["per_image"] = hits
        if self.sweep:
            results.update({
                "maxboxacc": box["max_box_acc"][50],
                "maxboxacc_v2": box_v2["mean_max_box_acc"],
                "maxboxacc_v2_per_iou": {str(k): v for k, v in box_v2["max_box_acc"].items()},
            })
            if self.with_masks:
                px = self.pxap.compute()
                results["pxap"] = px["pxap"]
            results.update({"best_threshold": best_threshold,
                            "best_threshold_v2_per_iou": {str(k): v for k, v in box_v2["best_threshold"].items()}})
        if threshold_used is not None:
            results["threshold_used"] = threshold_used
            results["threshold_source"] = ("fixed" if self.threshold is not None
                                           else "best of the IoU-50 sweep on this split")
        results.update({
            "iou_threshold": self.iou_threshold, "iou_compare": self.iou_compare,
            "iou_convention": ("exclusive (SPOL authors' IoU)" if not protocol.inclusive_iou
                               else "inclusive" if self.inclusive_iou else "exclusive"),
        })
        if self.sweep:
            results["cam_curve_interval"] = self.cam_curve_interval
        results.update({"input_size": protocol.input_size, "resize_size": protocol.meta()["resize_size"],
                        "num_images_without_gt_box": int(sum(len(g) == 0 for g in gts))})
        if self.sweep:
            results["curves"] = {"thresholds": [float(t) for t in self.maxboxacc.thresholds],
                                 "maxboxacc_iou50": box["curve"][50].tolist(),
                                 "maxboxacc_v2": {str(k): c.tolist() for k, c in box_v2["curve"].items()}}
            if self.with_masks:
                # precision is undefined (null) at thresholds above every score
                results["curves"]["pxap_precision"] = [None if np.isnan(v) else float(v) for v in px["precision"]]
                results["curves"]["pxap_recall"] = px["recall"].tolist()
        return Evaluation(results, {r.image_id: b for r, b in zip(records, boxes)}, hits)

    def _box_accuracy(self, outcomes) -> dict:
        """The share of the counted images (not skipped) whose box has an IoU ``>=`` (``>`` with
        ``iou_compare='>'``) 0.3, 0.5 and 0.7 with a GT box, in percent, and their mean. NOT Choe et al.'s
        MaxBoxAccV2, which takes each IoU's best accuracy over a map's thresholds; the mean that C2AM's PSOL
        evaluation prints as "Max Box acc" (``CVI-SZU/CCAM``, ``WSOL/PSOL/inference_CUB.py``: IoU ``>``,
        averaged per class there)."""
        counted = [o["iou"] for o in outcomes if o["skipped"] is None]
        above = (lambda iou, t: iou > t) if self.iou_compare == ">" else (lambda iou, t: iou >= t)
        per_iou = {str(k): (100.0 * sum(iou is not None and above(iou, k / 100) for iou in counted) / len(counted)
                            if counted else float("nan")) for k in BOX_ACC_IOUS}
        return {"box_acc_per_iou": per_iou, "box_acc_mean": float(np.mean(list(per_iou.values())))}

    @staticmethod
    def _box(entry: dict, threshold: float) -> np.ndarray:
        """The image's scored box: the one given or made at the fixed threshold, else its largest-contour
        box at the level of ``threshold`` (Choe et al.'s ``int(t * max)``), from the sweep."""
        if "box" in entry:
            return entry["box"]
        max_value, levels, largest = entry["levels"]
        level = choe_threshold_levels(max_value, [threshold])[0]
        return largest[int(np.searchsorted(levels, level))].astype(np.int64)

    def _mask_metrics(self) -> dict:
        px = self.pxap.compute()
        edges = self.pxap.threshold_list_right_edge  # thresholds + [1, 2, 3]; entry i counts scores >= edges[-2 - i]
        return {
            "protocol": self.protocol.label, "split": self.split, "num_images": len(self.records),
            "pxap": px["pxap"], "box_metrics": BOX_METRICS_NOT_COMPUTED,
            "num_images_without_foreground": self.masks["without_foreground"],
            "num_ignored_pixels": self.masks["ignored"],
            "cam_curve_interval": self.cam_curve_interval, "input_size": self.protocol.input_size,
            "curves": {"pxap_thresholds": [float(t) for t in edges[:-1][::-1]],
                       "pxap_precision": [None if np.isnan(v) else float(v) for v in px["precision"]],
                       "pxap_recall": px["recall"].tolist()},
        }
