"""A stand-in for ImageNet pretraining (both papers fine-tune ImageNet backbones; the CPU demo cannot
download or afford ImageNet): generated generic objects (:func:`render_standin`) and the training of
a torchvision backbone on them (:func:`pretrain`), written once into ``resource/`` and reused::

    python3 -m network.pretrain --backbone resnet50 --steps 300 --batch-size 64 --seed 0
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from utils.data.generate import SUPERSAMPLE, _background, _ellipse, _fill, _hsv_rgb, _random_colour
from utils.io import atomic_write_json
from utils.paths import RESOURCE_DIR

SHAPES = ("disc", "square", "triangle", "star", "cross", "ring")
HUES = (0.0, 0.33, 0.62)                     # red, green, blue (hue circle fractions), jittered
TEXTURES = ("plain", "stripes", "dots")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DEFAULTS = dict(arch="resnet50", size=64, steps=300, batch_size=64, lr=0.05, weight_decay=5e-5, seed=0,
                clutter=0.6, distractors=1.0, object_scale=[0.45, 0.9], val_images=540, half=False)
OPTION = {"arch": "backbone"}  # a settings key whose command-line option has another name


def num_standin_classes() -> int:
    return len(SHAPES) * len(HUES) * len(TEXTURES)


def class_attributes(label: int) -> tuple[str, float, str]:
    """(shape, hue, texture) of class ``label`` (0 .. num_standin_classes() - 1)."""
    shape, rest = divmod(label, len(HUES) * len(TEXTURES))
    hue, texture = divmod(rest, len(TEXTURES))
    return SHAPES[shape], HUES[hue], TEXTURES[texture]


def _outline(shape: str, rng) -> list[np.ndarray]:
    """Polygons (unit radius, centred at 0) of a shape family; a ring is two: outer, then hole."""
    if shape == "disc":
        return [_ellipse(0, 0, 1, rng.uniform(0.8, 1.0), 0, n=40)]
    if shape == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * 0.8]
    if shape == "triangle":
        t = np.deg2rad([-90, 30, 150])
        return [np.stack([np.cos(t), np.sin(t)], 1)]
    if shape == "star":
        t = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return [np.stack([r * np.cos(t), r * np.sin(t)], 1)]
    if shape == "cross":
        a, b = 1.0, 0.33
        return [np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b],
                          [-a, b], [-a, -b], [-b, -b]], np.float64)]
    if shape == "ring":
        return [_ellipse(0, 0, 1, 1, 0, n=40), _ellipse(0, 0, 0.55, 0.55, 0, n=40)]
    raise ValueError(shape)


def _place(poly, scale, angle, centre):
    c, s = np.cos(angle), np.sin(angle)
    return poly @ np.array([[c, -s], [s, c]]).T * scale + centre


def _draw_object(canvas, rng, shape, rgb, texture, scale, angle, centre, background_rgb=None):
    """Draw one object (texture inside its silhouette) onto ``canvas`` (float32, supersampled)."""
    polys = [_place(p, scale, angle, centre) for p in _outline(shape, rng)]
    S = canvas.shape[0]
    mask = np.zeros((S, S), np.uint8)
    cv2.fillPoly(mask, [np.round(polys[0] * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    if len(polys) > 1:  # the ring's hole
        cv2.fillPoly(mask, [np.round(polys[1] * 16).astype(np.int32)], 0, lineType=cv2.LINE_AA, shift=4)
    layer = np.empty_like(canvas)
    layer[:] = rgb
    if texture != "plain":
        dark = np.clip(np.asarray(rgb, np.float32) * rng.uniform(0.25, 0.45), 0, 255)
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
        period = max(scale * rng.uniform(0.35, 0.5), 4.0)
        if texture == "stripes":
            a = angle + rng.uniform(-0.3, 0.3)
            u = (xx * np.cos(a) + yy * np.sin(a)) / period
            pattern = (u - np.floor(u)) < 0.45
        else:  # dots on a lattice
            u, v = xx / period + rng.random(), yy / period + rng.random()
            pattern = ((u - np.floor(u) - 0.5) ** 2 + (v - np.floor(v) - 0.5) ** 2) < 0.07
        layer[pattern] = dark
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    canvas *= 1 - alpha
    canvas += alpha * layer


def render_standin(rng, label: int, size: int, *, clutter: float, distractors: float,
                   object_scale: tuple[float, float]) -> np.ndarray:
    """One uint8 HxWx3 RGB image of class ``label`` on a cluttered background.

    One object per image, its class decided by the whole object: shape family (``SHAPES``: disc,
    square, triangle, star, cross, ring, ...) x colour (``HUES``, jittered) x texture (plain,
    stripes, dots); none is a bird and no class is decided by a small part, so what transfers to
    the demo is generic (edges, colour, texture, "a compact object on clutter"). Backgrounds: the
    birds generator's smooth coloured noise and random shapes (``utils.data.generate``) and smaller
    distractor objects; random size (``object_scale`` of the side), rotation and position."""
    shape, hue, texture = class_attributes(label)
    S = size * SUPERSAMPLE
    canvas = cv2.resize(_background(rng, size, clutter), (S, S), interpolation=cv2.INTER_LINEAR)
    for _ in range(rng.poisson(8 * clutter)):  # random background shapes, as in utils.data.generate
        c = rng.uniform(0, S, 2)
        r = rng.uniform(0.03, 0.12) * S
        _fill(canvas, None, _ellipse(c[0], c[1], r, r * rng.uniform(0.3, 1), rng.uniform(0, 180),
                                     n=int(rng.choice([4, 36]))), _random_colour(rng))
    for _ in range(rng.poisson(distractors)):  # smaller objects of any family, plain random colour
        d_scale = rng.uniform(0.08, 0.18) * S
        _draw_object(canvas, rng, SHAPES[rng.integers(len(SHAPES))], _random_colour(rng), "plain", d_scale,
                     rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.9, 2) * S)
    rgb = _hsv_rgb((hue + rng.uniform(-0.04, 0.04)) % 1.0, rng.uniform(0.6, 0.95), rng.uniform(0.6, 0.95))
    scale = rng.uniform(*object_scale) * S / 2
    centre = rng.uniform(scale, S - scale, 2) if S > 2 * scale else np.array([S / 2, S / 2])
    _draw_object(canvas, rng, shape, rgb, texture, scale, rng.uniform(0, 2 * np.pi), centre)
    image = cv2.resize(np.clip(canvas, 0, 255), (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def standin_batch(seed: int, stream: int, index: int, count: int, size: int, settings: dict):
    """``count`` images (normalised float tensor [count, 3, size, size]) and labels, deterministic:
    image ``j`` comes from ``default_rng([seed, stream, index, j])``."""
    images, labels = [], []
    n = num_standin_classes()
    for j in range(count):
        rng = np.random.default_rng([seed, stream, index, j])
        label = int(rng.integers(n))
        img = render_standin(rng, label, size, clutter=settings["clutter"], distractors=settings["distractors"],
                             object_scale=tuple(settings["object_scale"]))
        images.append((img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)
        labels.append(label)
    x = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())
    return x, torch.tensor(labels)


def weight_name(s: dict) -> str:
    """File name encoding the settings that change the weights."""
    lo, hi = s["object_scale"]
    return (f"standin_{s['arch']}_s{s['size']}_c{num_standin_classes()}_st{s['steps']}_b{s['batch_size']}"
            f"_lr{s['lr']:g}_wd{s['weight_decay']:g}_cl{s['clutter']:g}_d{s['distractors']:g}"
            f"_sc{lo:g}-{hi:g}_seed{s['seed']}{'_fp16' if s.get('half') else ''}.pth")


def weight_path(settings: dict, resource_dir=RESOURCE_DIR) -> Path:
    return Path(resource_dir) / weight_name({**DEFAULTS, **settings})


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def evaluate(model, seed: int, s: dict, device, batch: int = 90) -> float:
    model.eval()
    correct = 0
    for start in range(0, s["val_images"], batch):
        n = min(batch, s["val_images"] - start)
        x, y = standin_batch(seed, 1, start, n, s["size"], s)
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return 100.0 * correct / max(s["val_images"], 1)


def pretrain(settings: dict | None = None, *, resource_dir=RESOURCE_DIR, device: str = "cpu",
             progress: bool = True, command: str | None = None) -> Path:
    """Train ``settings['arch']`` on the stand-in generator and write ``resource_dir/<weight_name>``
    (+ ``.json``); returns the weight path. Writes nothing until training has finished.

    A torchvision classifier (random init) sees fresh images at every step (image ``i`` of step ``t``
    from ``default_rng([seed, 0, t, i])``: deterministic by seed on one device type and thread count,
    never an image twice); held-out accuracy on ``val_images`` images of another stream
    (``[seed, 1, i]``). SGD, momentum 0.9, Nesterov, cosine lr decay, label smoothing 0.1. The weights:
    a plain state dict in torchvision's layout (``fc`` of ``num_classes``), loadable by every stage as
    ``--pretrained <file>``; the JSON beside it: command, settings (the backbone under the key
    ``arch``, as in the file name), held-out accuracy, seconds, SHA-256."""
    from tqdm import tqdm

    from network.backbones import build_classifier

    from utils.paths import check_output_path

    s = {**DEFAULTS, **(settings or {})}
    unknown = set(s) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown pretraining setting(s): {sorted(unknown)}")
    check_output_path(resource_dir, "--resource-dir")  # before training, not when the file is written
    out = Path(resource_dir) / weight_name(s)
    torch.manual_seed(s["seed"])
    dev = torch.device(device)
    model = build_classifier(s["arch"], num_standin_classes(), "none").to(dev)
    for m in model.modules():  # zero-init the last BN of each residual branch (Goyal et al.): stable start
        last_bn = getattr(m, "bn3", None) if hasattr(m, "conv3") else getattr(m, "bn2", None) if hasattr(m, "downsample") else None
        if isinstance(last_bn, torch.nn.BatchNorm2d):
            torch.nn.init.zeros_(last_bn.weight)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": s["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}], lr=s["lr"], momentum=0.9, nesterov=True)
    warmup = max(1, s["steps"] // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(t, s["steps"]) / s["steps"])))
    start = time.perf_counter()
    bar = tqdm(range(s["steps"]), desc=f"pretrain {s['arch']} (stand-in)", unit="step", disable=not progress)
    running = None
    model.train()
    for step in bar:
        x, y = standin_batch(s["seed"], 0, step, s["batch_size"], s["size"], s)
        loss = F.cross_entropy(model(x.to(dev)), y.to(dev), label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        value = float(loss.detach())
        running = value if running is None else 0.9 * running + 0.1 * value
        bar.set_postfix(loss=f"{running:.3f}")
    bar.close()
    return finish(model, s, out, time.perf_counter() - start, dev, command)


def finish(model, s: dict, out: Path, seconds: float, device, command: str | None = None) -> Path:
    """Write the trained ``model``'s state dict to ``out`` (float16 tensors when ``s['half']``: half
    the bytes; the stages copy them into their float32 parameters) and the JSON beside it. The
    held-out accuracy is measured with the weights as written."""
    from utils.engine.checkpoint import save_checkpoint

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if s["half"]:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state)  # evaluate what is shipped: the rounded weights
    accuracy = evaluate(model, s["seed"], s, device)
    save_checkpoint(out, state)
    flags = {"half"}
    info = {"command": command or "python3 -m network.pretrain " + " ".join(
                (f"--{k}" if v else "") if k in flags else
                f"--{OPTION.get(k, k.replace('_', '-'))} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in s.items()).strip(),
            "settings": s, "classes": num_standin_classes(), "images_seen": s["steps"] * s["batch_size"],
            "heldout_top1": accuracy, "heldout_images": s["val_images"], "seconds": round(seconds, 1),
            "device": str(device), "torch": torch.__version__, "sha256": sha256(out)}
    atomic_write_json(out.with_suffix(".json"), info)
    print(f"pretrain: {out} ({s['steps']} steps, {accuracy:.1f}% held-out top-1 on "
          f"{s['val_images']} images, {seconds:.0f} s)", flush=True)
    return out


def read_info(path) -> dict | None:
    meta = Path(path).with_suffix(".json")
    return json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else None


def _option_types() -> dict:
    """The valid range of each numeric setting (``utils.options``), as its option's ``type``."""
    from utils.ranges import (fraction, non_negative_float, non_negative_int, positive_float, positive_int,
                              probability)

    return dict(size=positive_int, steps=positive_int, batch_size=positive_int, lr=positive_float,
                weight_decay=non_negative_float, seed=non_negative_int, clutter=probability,
                distractors=non_negative_float, object_scale=fraction, val_images=positive_int)


def get_args_parser() -> argparse.ArgumentParser:
    from utils.config import HelpFormatter, OptionParser

    p = OptionParser(prog="python -m network.pretrain", formatter_class=HelpFormatter,
                     description="Pretrain a torchvision backbone on generated generic objects "
                                 "(stand-in for ImageNet)")
    types = _option_types()
    for key, value in DEFAULTS.items():
        if key == "arch":  # the settings key keeps its name (file names, JSON); the option is --backbone
            p.add_argument("--backbone", dest="arch", type=str, default=value, help="torchvision ResNet to pretrain")
            continue
        if isinstance(value, bool):
            p.add_argument("--" + key, action="store_true",
                           help="store the weights as float16 (half the file; loaded into float32)")
            continue
        kind = types.get(key) or (type(value[0]) if isinstance(value, list) else type(value))
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=value,
                       nargs=len(value) if isinstance(value, list) else None)
    p.add_argument("--resource-dir", type=str, default=str(RESOURCE_DIR))
    p.add_argument("--device", type=str, default="cpu")
    return p


def main(argv=None) -> Path:
    args = get_args_parser().parse_args(argv)
    settings = {k: getattr(args, k) for k in DEFAULTS}
    lo, hi = settings["object_scale"]
    if lo > hi:
        from utils.errors import DataError
        raise DataError(f"--object-scale {lo} {hi}: the first value must not be larger than the second")
    return pretrain(settings, resource_dir=args.resource_dir, device=args.device,
                    command="python3 -m network.pretrain " + " ".join(sys.argv[1:] if argv is None else argv))


def cli(argv=None) -> Path:
    """``python -m network.pretrain``: an option out of range, a ``--resource-dir`` that cannot be
    written, end with one ``error:`` line and exit status 2; Ctrl-C (nothing is written before the
    training ends) with one line and 130."""
    from utils.errors import DataError, one_line

    try:
        return main(argv)
    except (DataError, ValueError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C): nothing was written (the weights are written when the training "
              "ends); the same command trains again", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    cli()
