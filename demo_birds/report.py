"""The demo's report: ``results.json``, ``report.md`` and its pictures, from measured rows.

    python -m demo_birds.report output/demo/results.json     # re-draw report.md, curves and losses
    python -m demo_birds.report output/demo/results.json --spread seed1/results.json ...  # + seed spread

``results.json`` (written by ``demo.py``; every number in percent, ``null`` = not applicable)::

    {"title": str, "dataset": {...}, "protocol": str, "notes": [str, ...], "wall_time_s": float,
     "stages": [{"name": str, "seconds": float}, ...],
     "rows": [{"method": str, "kind": "method" | "baseline" | "upper_bound",
               "top1_cls", "top1_loc", "gt_known_loc", "maxboxacc_v2", "pxap": float | null,
               "threshold": float | null, "threshold_source": str, "notes": str,
               "curve": {"thresholds": [...], "gt_known": [...]} | null,   # GT-known (IoU >= 0.5,
               # largest contour) at each score-map threshold, for the curve picture
               "output_dir": str | null}, ...],
     "loss_logs": {label: path of a stage's log.jsonl},
     "figures": {"grid": "grid.png", "curves": "gt_known_curves.png", "losses": "loss_curves.png"}}

Pictures (matplotlib, Agg backend, written atomically): the GT-known-vs-threshold curve of every
row that has score maps, the training-loss curves read from the stages' ``log.jsonl`` files
(``utils.engine.trainer.Trainer``: one JSON object per line, with ``global_step`` and ``loss``; the lines
of ``"event": "epoch_end"`` are epoch summaries and are not plotted), and a grid of test images
with each method's score map, its box (red) and the ground-truth box (green).
"""
from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import numpy as np

from utils.errors import DataError
from utils.io import atomic_write, atomic_write_json, atomic_write_text

METRICS = (("top1_cls", "Top-1 Cls"), ("top1_loc", "Top-1 Loc"), ("gt_known_loc", "GT-known Loc"),
           ("maxboxacc_v2", "MaxBoxAccV2"), ("pxap", "PxAP"))
FIGURES = {"grid": "grid.png", "curves": "gt_known_curves.png", "losses": "loss_curves.png"}
KINDS = ("method", "baseline", "upper_bound")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return Path(path)


def format_value(value) -> str:
    """A percentage with one decimal, or an em dash when not applicable."""
    return "—" if value is None else f"{float(value):.1f}"


def check_rows(rows, where="results") -> None:
    """Every row names its method and kind and has the five metric keys (number or None)."""
    for i, row in enumerate(rows):
        if "method" not in row or row.get("kind") not in KINDS:
            raise DataError.at(where, None, f"row {i + 1}: needs 'method' and 'kind' in {KINDS}")
        for key, _ in METRICS:
            if key not in row:
                raise DataError.at(where, None, f"row {i + 1} ({row['method']}): missing '{key}'")
            value = row[key]
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 100):
                raise DataError.at(where, None, f"row {i + 1} ({row['method']}): {key}={value!r} is not a percentage")


def markdown_table(rows) -> str:
    """The rows as a Markdown table (methods, then baselines, then the upper bound, as given), with
    the map each row's GT-known Loc boxes when the rows say it (``map``)."""
    with_map = any(row.get("map") for row in rows)
    header = "| Method | " + " | ".join(name for _, name in METRICS) + " | Box threshold |" + (" Map |" if with_map else "")
    lines = [header, "|---|" + "---:|" * len(METRICS) + "---|" + ("---|" if with_map else "")]
    for row in rows:
        thr = row.get("threshold")
        thr_text = "—" if thr is None else f"{thr:.3f} ({row.get('threshold_source', '')})".replace(" ()", "")
        lines.append(f"| {row['method']} | " + " | ".join(format_value(row.get(k)) for k, _ in METRICS)
                     + f" | {thr_text} |" + (f" {row.get('map') or '—'} |" if with_map else ""))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- logs and curves
def read_log_jsonl(path) -> list[dict]:
    """The step lines (not epoch summaries) of a ``log.jsonl`` that carry a ``loss``."""
    path = Path(path)
    if not path.is_file():
        raise DataError.at(path, None, "training log not found (written by the stage's train.py)")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError.at(path, lineno, f"not a JSON object ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError.at(path, lineno, "not a JSON object")
        if record.get("event") == "epoch_end" or "loss" not in record:
            continue
        if "global_step" not in record:
            raise DataError.at(path, lineno, "a loss line without 'global_step'")
        out.append(record)
    return out


def plot_losses(loss_logs: dict, path) -> Path:
    """One panel per log (label -> log.jsonl), training loss against the global step."""
    plt = _plt()
    items = list(loss_logs.items())
    cols = min(3, max(1, len(items)))
    rows = max(1, -(-len(items) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(items):]:
        ax.axis("off")
    for ax, (label, log) in zip(axes.flat, items):
        records = read_log_jsonl(log)
        steps = [r["global_step"] for r in records]
        ax.plot(steps, [r["loss"] for r in records], marker="." if len(steps) < 30 else None)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.grid(alpha=0.3)
        if not records:
            ax.text(0.5, 0.5, "no step logged", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("Training loss per stage", fontsize=10)
    return _save_figure(fig, path)


def plot_curves(rows, path) -> Path:
    """GT-known Loc (IoU >= 0.5, largest contour) against the score-map threshold, per row."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"method": "-", "baseline": ":", "upper_bound": "--"}
    drawn = 0
    for row in rows:
        curve = row.get("curve")
        if not curve:
            continue
        ax.plot(curve["thresholds"], curve["gt_known"], styles[row["kind"]], label=row["method"])
        if row.get("threshold") is not None and row["kind"] == "method":
            t = row["threshold"]
            y = float(np.interp(t, curve["thresholds"], curve["gt_known"]))
            ax.plot([t], [y], "o", color=ax.lines[-1].get_color())
        drawn += 1
    ax.set_xlabel("score-map threshold (fraction of the map's max)")
    ax.set_ylabel("GT-known Loc (%)")
    ax.set_ylim(0, 101)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="best")
    ax.set_title("GT-known Loc vs threshold (dot: the threshold each method uses)", fontsize=9)
    return _save_figure(fig, path)


# ----------------------------------------------------------------------------- grid
def _draw_box(ax, box, colour):
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))


def draw_grid(samples, methods, path) -> Path:
    """A grid: one row per sample, first column the image with its GT mask outline and GT box,
    then one column per method with its score map over the image, its box (red), GT box (green).

    ``samples``: list of dicts ``{"image": uint8 HxWx3 RGB, "gt_boxes": (n, 4), "mask": HxW or None,
    "maps": {method: HxW in [0, 1] or None}, "boxes": {method: (4,) or None}}``, all in the same
    pixel frame (the protocol's input size).
    """
    plt = _plt()
    n, m = len(samples), len(methods)
    if n == 0:
        raise ValueError("draw_grid needs at least one sample")
    fig, axes = plt.subplots(n, m + 1, figsize=(1.9 * (m + 1), 1.9 * n), squeeze=False)
    for r, sample in enumerate(samples):
        image = np.asarray(sample["image"])
        ax = axes[r, 0]
        ax.imshow(image)
        if sample.get("mask") is not None:
            ax.contour(np.asarray(sample["mask"]) > 0, levels=[0.5], colors="yellow", linewidths=0.8)
        for box in np.asarray(sample["gt_boxes"]).reshape(-1, 4):
            _draw_box(ax, box, "lime")
        for c, method in enumerate(methods, 1):
            ax = axes[r, c]
            ax.imshow(image)
            scoremap = sample.get("maps", {}).get(method)
            if scoremap is not None:
                ax.imshow(np.asarray(scoremap), cmap="jet", alpha=0.5, vmin=0, vmax=1,
                          extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
            for box in np.asarray(sample["gt_boxes"]).reshape(-1, 4):
                _draw_box(ax, box, "lime")
            box = sample.get("boxes", {}).get(method)
            if box is not None:
                _draw_box(ax, box, "red")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("image, GT mask/box", fontsize=8)
    for c, method in enumerate(methods, 1):
        axes[0, c].set_title(method, fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def _image_at(record, size: int) -> np.ndarray:
    import cv2

    image = cv2.imread(record.path, cv2.IMREAD_COLOR)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)[:, :, ::-1].copy()


def grid_samples(records, size: int, methods: dict, n: int) -> list[dict]:
    """``n`` test images spread evenly over the split (so over the classes), with each method's map
    and box (see :func:`draw_grid`)."""
    from utils.evaluation.boxes import boxes_from_maps
    from utils.evaluation.evaluate import load_scoremap
    from utils.evaluation.protocol import get_protocol

    samples = []
    picks = np.unique(np.linspace(0, len(records) - 1, num=min(n, len(records))).round().astype(int))
    for r in (records[int(i)] for i in picks):
        geometry = get_protocol("resize", size)
        sample = {"image": _image_at(r, size), "gt_boxes": geometry.gt_boxes(r.boxes, r.size),
                  "mask": geometry.gt_mask(r), "maps": {}, "boxes": {}}
        for name, spec in methods.items():
            if spec.get("maps") is not None:
                scoremap = load_scoremap(spec["maps"], r.image_id, size)
                sample["maps"][name] = scoremap
                sample["boxes"][name] = boxes_from_maps(scoremap, spec["threshold"])[0][0]
            if spec.get("boxes") is not None:
                sample["boxes"][name] = spec["boxes"][r.image_id]
        samples.append(sample)
    return samples


# ----------------------------------------------------------------------------- report
def spread_table(spread: dict) -> str:
    """``{"seeds": [..], "rows": {method: [value per seed]}}`` -> markdown with mean and min-max."""
    seeds = spread["seeds"]
    head = "| Method | " + " | ".join(f"seed {k}" for k in seeds) + " | mean | min..max |"
    lines = [head, "|---|" + "---:|" * (len(seeds) + 2)]
    for method, values in spread["rows"].items():
        vals = [v for v in values if v is not None]
        cells = " | ".join(format_value(v) for v in values)
        summary = (f"{np.mean(vals):.1f} | {min(vals):.1f}..{max(vals):.1f}" if vals else "- | -")
        lines.append(f"| {method} | {cells} | {summary} |")
    return "\n".join(lines) + "\n"


def report_markdown(results: dict) -> str:
    """``report.md``: the table, how each number was obtained, the pictures."""
    figures = results.get("figures", {})
    lines = [f"# {results.get('title', 'WSOL demo')}", ""]
    dataset = results.get("dataset") or {}
    if dataset:
        lines += ["Dataset: " + ", ".join(f"{k} {v}" for k, v in dataset.items()), ""]
    if results.get("protocol"):
        lines += [f"Protocol: {results['protocol']}", ""]
    pre = results.get("pretraining")
    if pre:
        st = pre.get("settings", {})
        lines += [f"Backbone initialisation of every training stage: the stand-in pretraining "
                  f"(`network.pretrain`: {st.get('arch')} on {pre.get('classes')} classes of generated generic "
                  f"objects, {pre.get('images_seen')} images at {st.get('size')} px, seed {st.get('seed')}): "
                  f"**{pre['heldout_top1']:.1f}% held-out top-1** on {pre.get('heldout_images')} images "
                  f"(chance {100.0 / max(pre.get('classes') or 1, 1):.1f}%), {pre.get('seconds')} s; "
                  f"SHA-256 {str(pre.get('sha256'))[:16]}...", ""]
    elif results.get("pretrained"):
        lines += [f"Backbone initialisation of every training stage: `--pretrained {results['pretrained']}`", ""]
    lines += [markdown_table(results["rows"])]
    spreads = results.get("seed_spread") or {}
    if "rows" in spreads:        # one metric's spread (``--spread``)
        spreads = {spreads.get("metric", "gt_known_loc"): spreads}
    names = dict(METRICS)
    for metric, spread in spreads.items():
        lines += ["", f"Seed spread ({names.get(metric, metric)}, %; one demo run per column, whose seed generates "
                  "another dataset):", "", spread_table(spread)]
    notes = [f"- **{r['method']}**: {r['notes']}" for r in results["rows"] if r.get("notes")]
    if notes:
        lines += ["How each row was obtained:", ""] + notes + [""]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    if results.get("notes"):
        lines.append("")
    if results.get("stages"):
        total = results.get("wall_time_s")
        lines += ["| Stage | Seconds |", "|---|---:|"]
        lines += [f"| {s['name']} | {s['seconds']:.1f} |" for s in results["stages"]]
        if total is not None:
            lines.append(f"| **total (wall)** | **{total:.1f}** |")
        lines.append("")
    captions = {"grid": "Test images: score map, method box (red), GT box (green)",
                "curves": "GT-known Loc against the box threshold",
                "losses": "Training loss of every stage"}
    for key, caption in captions.items():
        if figures.get(key):
            lines += [f"## {caption}", "", f"![{caption}]({figures[key]})", ""]
    return "\n".join(lines)


def write_report(results: dict, out_dir, *, grid_samples=None, grid_methods=None) -> dict:
    """Write ``results.json``, ``report.md`` and the pictures into ``out_dir``; returns their paths.

    The curve and loss pictures come from ``results`` alone (rows' curves, ``loss_logs``); the grid
    needs ``grid_samples``/``grid_methods`` (see :func:`draw_grid`) and is kept as it is otherwise.
    """
    out_dir = Path(out_dir)
    check_rows(results["rows"], out_dir / "results.json")
    figures = dict(results.get("figures") or {})
    paths = {}
    if grid_samples:
        paths["grid"] = draw_grid(grid_samples, list(grid_methods), out_dir / FIGURES["grid"])
    if (out_dir / FIGURES["grid"]).is_file():
        figures["grid"] = FIGURES["grid"]
    if any(r.get("curve") for r in results["rows"]):
        paths["curves"] = plot_curves(results["rows"], out_dir / FIGURES["curves"])
        figures["curves"] = FIGURES["curves"]
    if results.get("loss_logs"):
        paths["losses"] = plot_losses(results["loss_logs"], out_dir / FIGURES["losses"])
        figures["losses"] = FIGURES["losses"]
    results = {**results, "figures": figures}
    paths["results"] = out_dir / "results.json"
    atomic_write_json(paths["results"], results)
    paths["report"] = out_dir / "report.md"
    atomic_write_text(paths["report"], report_markdown(results))
    return paths


def load_results(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError.at(path, None, "results file not found (written by demo.py)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError.at(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise DataError.at(path, None, "expected an object with a 'rows' list")
    check_rows(results["rows"], path)
    return results


def seed_spread(runs: list[dict], metric: str = "gt_known_loc") -> dict:
    """``{"seeds": [...], "metric": metric, "rows": {method: [value per run]}}`` from several demo
    ``results.json`` (one per dataset/training seed; a method missing from a run gives None).
    Baseline names that carry a per-run value (``Centre box (65% of the side)``) are merged."""
    def key(name):
        return name.split(" (", 1)[0] if name.startswith("Centre box") else name

    order, table = [], {}
    for i, res in enumerate(runs):
        for row in res["rows"]:
            k = key(row["method"])
            if k not in table:
                order.append(k)
                table[k] = [None] * len(runs)
            table[k][i] = row.get(metric)
    seeds = [res.get("settings", {}).get("seed", i) for i, res in enumerate(runs)]
    return {"seeds": seeds, "metric": metric, "rows": {k: table[k] for k in order}}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo_birds.report", description="Re-draw report.md and its pictures from results.json")
    parser.add_argument("results", help="results.json written by demo.py")
    parser.add_argument("--spread", nargs="+", default=None, metavar="RESULTS",
                        help="results.json of the same demo at other seeds: adds the seed spread "
                             "(GT-known Loc per seed, mean, min..max) to report.md")
    return parser


def main(args) -> dict:
    path = Path(os.path.abspath(args.results))
    if getattr(args, "spread", None):
        results = load_results(path)
        results["seed_spread"] = seed_spread([results] + [load_results(p) for p in args.spread])
        atomic_write_json(path, results)
    paths = write_report(load_results(path), path.parent)
    print(markdown_table(load_results(path)["rows"]), end="")
    return paths


if __name__ == "__main__":
    main(get_args_parser().parse_args())
