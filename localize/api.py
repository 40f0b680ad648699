"""The Python API: :func:`load_localizer` (a run folder, or a SPOL seg checkpoint file) gives a
:class:`Localizer`; calling it on images (paths, PIL images, numpy arrays) gives a :class:`Result`.
The images go through the one inference loop (``utils.engine.inference.run_inference``: batches,
``--amp``, a progress bar, the host work on a consumer thread) in the input geometry of
``utils.evaluation.protocol``, which also maps every box back to the original image's pixels."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from localize import runs
from localize.models import build
from utils.errors import DataError, one_line

SCORE = {"map": "the mean of the score map (values in [0, 1]) inside the box, 0 without a box",
         "final": "the classifier's probability of its class (the regressor gives no score of its own)"}


@dataclass
class Entry:
    """One localized image (what ``Localizer.run``'s ``on_image`` receives)."""
    index: int
    name: str
    size: tuple[int, int]          # (width, height) of the original image
    box: np.ndarray                # x0, y0, x1, y1 in the original image's pixels (all 0: no box)
    input_box: np.ndarray          # the same box in input pixels of the geometry
    score: float
    label: int | None
    label_probability: float | None
    scoremap: np.ndarray | None    # float32 at the input size, values in [0, 1] (None: sltnet-final)
    original: np.ndarray | None = field(default=None, repr=False)   # RGB uint8, when asked for


@dataclass
class Result:
    """What a :class:`Localizer` call gives, one entry per image that went through (in input order):

    ``names``; ``sizes`` ``(width, height)``; ``boxes`` ``(N, 4)`` float ``x0, y0, x1, y1`` in each
    original image's pixels (``0, 0, 0, 0``: nothing above the threshold); ``scores`` ``(N,)`` (see
    ``score_meaning``); ``classes`` (class ids, or None when the run has no classifier),
    ``probabilities`` (each class's probability, or None) and ``class_names`` (their names when the
    run's dataset is here, else None); ``maps`` (float32 score maps at the input size, values in
    [0, 1], or None for sltnet-final); ``skipped``: ``(name, reason)`` of the images that could not
    be read (``on_error="skip"``)."""
    names: list[str]
    sizes: list[tuple[int, int]]
    boxes: np.ndarray
    scores: np.ndarray
    classes: list[int] | None
    class_names: list[str] | None
    maps: list[np.ndarray] | None
    skipped: list[tuple[str, str]]
    score_meaning: str = ""
    probabilities: list[float] | None = None

    def __len__(self) -> int:
        return len(self.names)


# ----------------------------------------------------------------------------- images in
def read_item(item, name: str) -> Image.Image:
    """A path, a PIL image or a numpy array (uint8 or uint16; ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``)
    as an 8-bit RGB PIL image, through ``utils.data.dataset``'s reading (modes converted or refused in
    one ``DataError`` line naming ``name``)."""
    from utils.data.dataset import convert_image, open_image

    if isinstance(item, (str, os.PathLike)):
        return open_image(item, "RGB", "image")
    if isinstance(item, Image.Image):
        return convert_image(item, "RGB", name)
    if isinstance(item, np.ndarray):
        if item.dtype not in (np.uint8, np.uint16) or not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))):
            raise DataError.at(name, None, f"numpy array of dtype {item.dtype} and shape {item.shape}: give uint8 "
                               "(or uint16) of shape (H, W), (H, W, 3) RGB or (H, W, 4) RGBA")
        if item.dtype == np.uint16 and item.ndim == 3:
            item = (item >> 8).astype(np.uint8)   # the high byte, as 16-bit files are read
        return convert_image(Image.fromarray(np.ascontiguousarray(item)), "RGB", name)
    raise DataError.at(name, None, f"a {type(item).__name__} is no image: give a path, a PIL image or a numpy array")


class ImageItems(torch.utils.data.Dataset):
    """``items[i]`` read (:func:`read_item`) and put in the input geometry (``transform``), with the
    classifier's own view (``classifier_transform``) and the original pixels when asked. With ``skip``
    an unreadable image gives ``{"index", "error"}`` instead of raising."""

    def __init__(self, items: Sequence, names: Sequence[str], transform, classifier_transform=None, *,
                 originals: bool = False, skip: bool = False):
        self.items, self.names = list(items), list(names)
        self.transform, self.classifier_transform = transform, classifier_transform
        self.originals, self.skip = originals, skip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        try:
            image = read_item(self.items[index], self.names[index])
        except DataError as exc:
            if not self.skip:
                raise
            return {"index": index, "error": one_line(exc)}
        pixels = tv_tensors.Image(F.pil_to_tensor(image))
        sample = {"index": index, "size": image.size,
                  "image": self.transform({"image": pixels})["image"].as_subclass(torch.Tensor)}
        if self.classifier_transform is not None:
            sample["classifier_image"] = self.classifier_transform({"image": pixels})["image"].as_subclass(torch.Tensor)
        if self.originals:
            sample["original"] = np.asarray(image)
        return sample


def collate(samples: list[dict]) -> dict:
    """A batch of the images that were read; the others' ``(index, reason)`` in ``"errors"``."""
    ok = [s for s in samples if "error" not in s]
    batch = {"index": torch.tensor([s["index"] for s in ok], dtype=torch.long), "size": [s["size"] for s in ok],
             "errors": [(s["index"], s["error"]) for s in samples if "error" in s]}
    if ok:
        batch["image"] = torch.stack([s["image"] for s in ok])
        if "classifier_image" in ok[0]:
            batch["classifier_image"] = torch.stack([s["classifier_image"] for s in ok])
        if "original" in ok[0]:
            batch["original"] = [s["original"] for s in ok]
    return batch


# ----------------------------------------------------------------------------- boxes
def boxes_of_maps(maps: np.ndarray, threshold: runs.Threshold, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw maps ``[B, S, S]`` -> ``(boxes [B, 4] in input pixels, saved maps [B, S, S] in [0, 1])``.

    SPOL: the sigmoid map is saved as it is; rule ``spol`` is the authors' (float32 map > t, largest
    contour, ``[x, y, x + w, y + h]``, :func:`utils.evaluation.boxes.spol_box`), ``choe`` Choe et al.'s on
    that map (what the wsol protocol scores). SLT-Net / CAM: the raw map is boxed by the run's rule
    (:func:`sltnet.boxes.maps_to_boxes`) and saved min-max normalised, as the localizer's test step does."""
    from utils.evaluation.boxes import boxes_from_maps, normalize_minmax, spol_box

    if kind == "spol":
        if threshold.rule == "spol":
            boxes = [spol_box(m, threshold.value) or [0, 0, 0, 0] for m in maps]
        else:
            boxes = [b[0] for b in boxes_from_maps(maps, threshold.value)]
        return np.asarray(boxes, np.float64).reshape(-1, 4), maps.astype(np.float32)
    from sltnet.boxes import maps_to_boxes

    boxes = [b[0] for b in maps_to_boxes(maps, threshold.value, threshold.rule)]
    return np.asarray(boxes, np.float64).reshape(-1, 4), normalize_minmax(maps).astype(np.float32)


def box_score(scoremap: np.ndarray, box) -> float:
    """The mean of ``scoremap`` over the box's pixels ``[y0, y1) x [x0, x1)``; 0 without a box."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    inside = scoremap[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
    return float(inside.mean()) if inside.size else 0.0


# ----------------------------------------------------------------------------- the localizer
class Localizer:
    """A loaded localizer (:func:`load_localizer`); ``localizer(images)`` -> :class:`Result`."""

    def __init__(self, *, kind, built, threshold, protocol, run, classifier, class_names, names_source,
                 ctx, batch_size, amp, workers, checkpoint=None):
        self.kind, self.built, self.threshold, self.protocol = kind, built, threshold, protocol
        self.run_folder, self.classifier_run, self.checkpoint = run, classifier, checkpoint
        self.class_names, self.names_source = class_names, names_source
        self.ctx, self.batch_size, self.amp, self.workers = ctx, batch_size, amp, workers
        built.networks.to(ctx.device).eval()

    @property
    def classifies(self) -> bool:
        return self.kind != "spol" or self.classifier_run is not None

    def describe(self) -> dict:
        """What predictions.json records about the localizer."""
        return {
            "kind": self.kind, "network": self.built.network,
            "run": os.fspath(self.run_folder.folder.resolve()) if self.run_folder else None,
            "run_options": self.run_folder.options if self.run_folder else None,
            "checkpoint": os.fspath(Path(self.checkpoint).resolve()) if self.checkpoint else None,
            "classifier_run": os.fspath(self.classifier_run.folder.resolve()) if self.classifier_run else None,
            "classifier_options": self.classifier_run.options if self.classifier_run else None,
            "protocol": {**self.protocol.meta(), "geometry": self.protocol.describe()},
            "threshold": self.threshold.value, "threshold_source": self.threshold.why,
            "box_rule": self.threshold.rule,
            "score": SCORE["final" if self.kind == "sltnet-final" else "map"],
            "classes": ("none" if not self.classifies else
                        "the localizer's own top logit" if self.kind in ("sltnet-map", "cam") else
                        f"the classifier run {self.classifier_run.folder}"),
            "class_names": self.names_source,
            "device": str(self.ctx.device), "amp": self.amp, "batch_size": self.batch_size,
        }

    def __call__(self, images: Sequence, *, names: Sequence[str] | None = None, on_error: str = "raise") -> Result:
        """Localize ``images`` (paths, PIL images, numpy arrays; one of them alone is taken as a list of
        one). ``names`` default to the paths as given and ``image_<i>`` for the others.
        ``on_error="raise"``: an unreadable image is one ``DataError``; ``"skip"``: it is left out and
        listed in ``Result.skipped``."""
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        if names is None:
            names = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"image_{i}" for i, x in enumerate(images)]
        return self.run(images, list(names), on_error=on_error)

    def run(self, items: Sequence, names: Sequence[str], *, on_error: str = "raise",
            on_image: Callable[[Entry], None] | None = None, warn: Callable[[str], None] | None = None,
            keep_maps: bool = True, originals: bool = False, desc: str = "localize") -> Result:
        """:meth:`__call__` for the command line: ``on_image(entry)`` is called for every image on the
        loop's consumer thread (writing its files while the network runs on the next batch), ``warn``
        with the line of each skipped image; ``keep_maps=False`` keeps no map in the result."""
        from utils.data.transforms import build_transform
        from utils.engine.inference import gather_lists, run_inference

        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if len(names) != len(items):
            raise ValueError(f"{len(items)} images but {len(names)} names")
        pipeline = "spol" if self.kind == "spol" and self.protocol.crops else "torchvision"
        transform = (self.protocol.transform("spol") if pipeline == "spol"
                     else self.protocol.transform("torchvision", normalize=False))
        classifier_transform = (build_transform("resize", resize=self.built.classifier_resize, normalize=False)
                                if self.built.classifier_resize else None)
        dataset = ImageItems(items, names, transform, classifier_transform, originals=originals,
                             skip=on_error == "skip")
        entries: list[Entry] = []
        skipped: list[tuple[int, str]] = []

        def step(networks, batch):
            out = networks.step(batch) if "image" in batch else {"index": batch["index"]}
            return {**out, "size": batch["size"], "errors": batch["errors"], "original": batch.get("original")}

        def consume(result):
            for index, reason in result["errors"]:
                skipped.append((index, reason))
                if warn is not None:
                    warn(f"warning: {reason} (skipped)")
            for entry in self._entries(result, names):
                if on_image is not None:
                    on_image(entry)
                entry.original = None
                if not keep_maps:
                    entry.scoremap = None
                entries.append(entry)

        run_inference(self.built.networks, dataset, step, self.ctx, batch_size=self.batch_size,
                      workers=self.workers, amp=self.amp, collate_fn=collate, desc=desc, consume=consume)
        # under torchrun each rank localized its shard (utils.data.samplers.ShardSampler): every rank
        # gets the whole result, in input order
        entries, skipped = gather_lists(entries, self.ctx), gather_lists(skipped, self.ctx)
        return self._result(entries, [(names[i], reason) for i, reason in sorted(skipped)])

    def _entries(self, result: dict, names: Sequence[str]) -> list[Entry]:
        """The host side of one batch: boxes in input and original pixels, scores, classes, maps."""
        index = result["index"].cpu().tolist()
        if not index:
            return []
        if "maps" in result:
            boxes, maps = boxes_of_maps(result["maps"].float().cpu().numpy(), self.threshold, self.kind)
        else:
            boxes, maps = result["boxes"].float().cpu().numpy().astype(np.float64), None
        probs = result["probs"].float().cpu() if "probs" in result else None
        out = []
        for j, i in enumerate(index):
            size = tuple(int(v) for v in result["size"][j])
            label = int(probs[j].argmax()) if probs is not None else None
            p = float(probs[j, label]) if probs is not None else None
            scoremap = maps[j] if maps is not None else None
            score = box_score(scoremap, boxes[j]) if scoremap is not None else float(p)
            out.append(Entry(i, names[i], size, self.protocol.to_image_box(boxes[j], size), boxes[j], score,
                             label, p, scoremap, result["original"][j] if result.get("original") else None))
        return out

    def _result(self, entries: list[Entry], skipped) -> Result:
        entries.sort(key=lambda e: e.index)
        classes = [e.label for e in entries] if self.classifies else None
        names = ([self.class_names[c] for c in classes] if classes is not None and self.class_names else None)
        maps = None if self.kind == "sltnet-final" else [e.scoremap for e in entries]
        return Result([e.name for e in entries], [e.size for e in entries],
                      np.asarray([e.box for e in entries], np.float64).reshape(-1, 4),
                      np.asarray([e.score for e in entries], np.float64), classes, names,
                      maps if maps is None or all(m is not None for m in maps) else None, skipped,
                      SCORE["final" if self.kind == "sltnet-final" else "map"],
                      [e.label_probability for e in entries] if classes is not None else None)


def load_localizer(run=None, *, checkpoint=None, kind: str | None = None, classifier_run=None,
                   threshold: float | None = None, protocol: str = "wsol", backbone: str | None = None,
                   output_stride: int | None = None, dataset: str | None = None, input_size: int | None = None,
                   resize_size: int | None = None, device: str = "auto", batch_size: int = 16, amp: str = "off",
                   workers: int = 0, say: Callable[[str], None] | None = None) -> Localizer:
    """A :class:`Localizer` of the training run in ``run`` (its kind read from its ``args.yaml``, or
    ``kind``: ``spol``, ``sltnet-map``, ``cam``, ``sltnet-final``), or of a SPOL seg state dict
    ``checkpoint`` (``backbone``, ``output_stride``, ``dataset``, ``input_size``, ``resize_size``
    describe it). ``classifier_run``: the classes' classifier (default the run's sibling ``cls/`` or
    ``classifier/`` folder; ``"none"``). ``threshold`` replaces the run's (see
    :func:`localize.runs.choose_threshold`); ``protocol``: ``wsol``/``resize`` (whole image) or
    ``spol``/``center_crop``. ``say`` receives the lines that say what was loaded and which threshold
    and why. Bad input is one ``DataError`` line."""
    from utils.engine.distributed import init_distributed
    from utils.evaluation.protocol import canonical, get_protocol

    runs.check_source(run, checkpoint)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"--batch-size: must be a whole number >= 1, got {batch_size!r}")
    if not isinstance(workers, int) or workers < 0:
        raise DataError(f"--workers: must be a whole number >= 0, got {workers!r}")
    if amp not in ("off", "bf16", "fp16"):
        raise DataError(f"--amp: must be off, bf16 or fp16, got {amp!r}")
    given = {"--backbone": backbone, "--output-stride": output_stride, "--dataset": dataset,
             "--input-size": input_size, "--resize-size": resize_size}
    if run is not None:
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise DataError(f"{extra[0]}: read from the run's args.yaml; it describes a --checkpoint file only")
        the_run = runs.read_run(run)
        kind = runs.run_kind(the_run, kind)
    else:
        if not Path(checkpoint).is_file():
            raise DataError.at(checkpoint, None, "--checkpoint: file not found" if not Path(checkpoint).exists()
                               else "--checkpoint: is a folder; a training run's folder is --run")
        if kind not in (None, "spol"):
            raise DataError(f"--kind {kind}: a --checkpoint file is a SPOL seg state dict (kind spol)")
        the_run, kind = None, "spol"
    classifier = runs.find_classifier(the_run, kind, None if classifier_run is None else os.fspath(classifier_run))
    try:
        crops = canonical(protocol) != "resize"
    except ValueError as exc:
        raise DataError(f"--protocol: {exc}") from None
    chosen = runs.choose_threshold(kind, the_run, threshold, runs.spol_dataset(the_run, dataset), crops=crops)
    built = build(kind, the_run, classifier, checkpoint=checkpoint, backbone=backbone,
                  output_stride=output_stride, input_size=input_size, resize_size=resize_size)
    try:
        geometry = get_protocol(protocol, built.input_size, built.resize_size)
    except ValueError as exc:
        raise DataError(f"--protocol {protocol}: {exc}") from None
    ctx = init_distributed(device)   # one process, or this rank's under torchrun
    names_from = the_run if kind in ("sltnet-map", "cam") else classifier
    class_names, names_source = runs.class_names(names_from, built.num_classes) if names_from else (None, "no classes")
    localizer = Localizer(kind=kind, built=built, threshold=chosen, protocol=geometry, run=the_run,
                          classifier=classifier, class_names=class_names, names_source=names_source, ctx=ctx,
                          batch_size=batch_size, amp=amp, workers=workers, checkpoint=checkpoint)
    if say is not None and ctx.is_main:
        what = f"{the_run.folder} is {the_run.words}" if the_run else f"{checkpoint}"
        say(f"localize: {what}: kind {kind}, {built.network}; {geometry.describe()}; device {ctx.device}")
        say(f"localize: threshold: {chosen.why}" if chosen.value is None else
            f"localize: threshold {chosen.value:g}: {chosen.why}")
        if localizer.classifies:
            say(f"localize: classes: {localizer.describe()['classes']}; names: "
                + (names_source if class_names else f"none ({names_source})"))
    return localizer


__all__ = ["load_localizer", "Localizer", "Result", "Entry", "read_item", "boxes_of_maps", "box_score"]
