"""The one writer of every stage's results: ``metrics.json`` (the results dict as it is) and
``metrics.txt`` beside it (:func:`format_table`: the named metrics first, then every other scalar,
then one section per nested result, e.g. a protocol of ``spol/seg/test.py``). Used by every test step
and by ``python -m utils.evaluation``. The keys: [docs/evaluation.md](../../docs/evaluation.md).
"""
from __future__ import annotations

import os
from pathlib import Path

from utils.io import atomic_write_json, atomic_write_text

_METRICS = ("gt_known_loc", "top1_loc", "top5_loc", "maxboxacc", "maxboxacc_v2", "box_acc_mean", "pxap", "top1_cls",
            "top5_cls")


def _pct(value) -> str:
    return f"{value:.2f}"


def _headline(results: dict) -> tuple[list[tuple[str, str]], set]:
    """The named rows of ``results`` and the keys they show."""
    used = {"protocol", "split", "num_images", "top1_loc", "top5_loc", "gt_known_loc", "num_skipped", "num_counted",
            "num_skipped_by_reason", "maxboxacc", "best_threshold", "maxboxacc_v2", "maxboxacc_v2_per_iou", "pxap",
            "box_metrics", "top1_cls", "top5_cls", "box_acc_mean", "box_acc_per_iou", "num_images_without_box"}
    rows = [(name, str(results[key])) for key, name in (("protocol", "protocol"), ("split", "split"),
                                                         ("num_images", "images")) if key in results]
    if results.get("num_skipped"):
        why = ", ".join(f"{n} {k}" for k, n in results.get("num_skipped_by_reason", {}).items() if n)
        counted = f": counted {results['num_counted']}" if "num_counted" in results else ""
        rows.append(("  skipped", f"{results['num_skipped']} ({why}){counted}"))
    if results.get("num_images_without_box"):
        rows.append(("  without a box", f"{results['num_images_without_box']} (each a miss; images_without_box)"))
    for key, name in (("top1_loc", "Top-1 Loc"), ("top5_loc", "Top-5 Loc"), ("gt_known_loc", "GT-known Loc")):
        if results.get(key) is not None:
            rows.append((name, _pct(results[key])))
    if results.get("threshold_used") is not None:
        source = f" ({results['threshold_source']})" if "threshold_source" in results else ""
        iou = f", IoU {results['iou_compare']} {results['iou_threshold']}" if "iou_threshold" in results else ""
        rows.append(("  at threshold", f"{results['threshold_used']:.3f}{source}{iou}"))
        used |= {"threshold_used", "threshold_source", "iou_compare", "iou_threshold"}
    if "maxboxacc" in results:
        best = results.get("best_threshold")
        rows.append(("MaxBoxAcc (IoU 50)", _pct(results["maxboxacc"]) + ("" if best is None else
                                                                         f" (best threshold {best:.3f})")))
    if "maxboxacc_v2" in results:
        per = results.get("maxboxacc_v2_per_iou")
        rows.append(("MaxBoxAccV2", _pct(results["maxboxacc_v2"]) + ("" if per is None else " (IoU 30/50/70: "
                                    + " / ".join(_pct(per[k]) for k in ("30", "50", "70")) + ")")))
    if "box_acc_mean" in results:
        per = results.get("box_acc_per_iou")
        rows.append(("BoxAcc, one box", _pct(results["box_acc_mean"]) + ("" if per is None else " (IoU 30/50/70: "
                     + " / ".join(_pct(per[k]) for k in ("30", "50", "70")) + "; their mean, not MaxBoxAccV2)")))
    for key, name, show in (("pxap", "PxAP", _pct), ("box_metrics", "box metrics", str), ("top1_cls", "Top-1 CLS", _pct),
                            ("top5_cls", "Top-5 CLS", _pct)):
        if results.get(key) is not None:
            rows.append((name, show(results[key])))
    return rows, used


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_results(value) -> bool:
    """A nested results dict: a mapping that holds a metric as a number (not a curve)."""
    return isinstance(value, dict) and any(isinstance(value.get(k), (int, float)) for k in _METRICS)


def _block(rows: list[tuple[str, str]]) -> str:
    if not rows:
        return ""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows) + "\n"


def format_table(results: dict) -> str:
    """``results`` as text: the named metrics (protocol, images, Loc, threshold, MaxBoxAcc(V2), PxAP,
    classification), then the other scalar entries (and mappings of scalars) as ``key  value``, then
    one ``== key ==`` section per entry that is itself a results dict. Lists (curves, per-image
    outcomes) stay in the JSON."""
    sections = {k: v for k, v in results.items() if _is_results(v)}
    rows, used = _headline(results)
    others = []
    for key, value in results.items():
        if key in used or key in sections:
            continue
        if _is_scalar(value):
            others.append((key, "—" if value is None else str(value)))
        elif isinstance(value, dict) and value and all(_is_scalar(v) for v in value.values()):
            others.append((key, ", ".join(f"{k}: {v}" for k, v in value.items())))
    text = _block(rows)
    if others:
        text += ("\n" if text else "") + _block(others)
    for key, value in sections.items():
        text += ("\n" if text else "") + f"== {key} ==\n" + format_table(value)
    return text


def write_metrics(path: str | os.PathLike, results: dict) -> str:
    """Write ``results`` to ``path`` (JSON, atomically) and :func:`format_table` of it beside, with the
    suffix ``.txt``; returns the text."""
    path = Path(path)
    text = format_table(results)
    atomic_write_json(path, results)
    atomic_write_text(path.with_suffix(".txt"), text)
    return text
