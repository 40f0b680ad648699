"""Visual-stimulus tolerance (VST, Guo et al. CVPR 2021, Eq. 10-13): transform a batch, invert on CAMs.

The transformed image (Eq. 10) is ``I^t = flip(scale(jitter(I)))``:

* colour jitter (brightness, contrast, saturation, hue), drawn independently per image and
  applied in [0, 1] RGB space (the batch arrives ImageNet-normalised; it is de-normalised, jittered
  and normalised again). Colour is not inverted on the CAM (the paper inverts spatial transforms
  only, Eq. 12). All four strengths 0 switch it off (the batch is passed on untouched); hue 0 shifts
  no hue (the other three keep each pixel's hue up to clipping to [0, 1]).
* scale: ONE factor per batch (so that the batch stays one tensor), drawn uniformly in
  ``[scale_min, scale_max]``; the scaled side is rounded to a multiple of ``size_multiple``
  (the CAM stride) so that the CAM grid of the scaled image covers exactly the same image extent
  as the original CAM grid (exact alignment for stride-divisible networks such as VGG16/ResNet50;
  for InceptionV3, whose unpadded convolutions shift the grid, the alignment is approximate).
  Resizing is bilinear with ``align_corners=False`` (extent to extent).
* horizontal flip, drawn independently per image with probability ``flip_prob``.

The inverse (Eq. 12) on a CAM stack [B, C, h', w'] undoes the flip (exact) and resizes back to the
original CAM size (bilinear, extent to extent: exact up to interpolation error). When the copy was
scaled DOWN (h' < h), the outermost cells of the inverted map have their centres outside the span
of the transformed map's cell centres: bilinear resizing clamps there, i.e. those cells are
extrapolated (a copy of the edge value), not interpolated. :func:`valid_after_inverse` marks them,
and by default (``border="mask"``) they are left out of L_VST; ``border="keep"`` keeps every cell.
A scale >= 1 extrapolates nothing (the mask is all ones).

Open choices, all configuration values with these defaults (documented in sltnet/README.md):
scale range [0.75, 1.25], flip probability 0.5, jitter strengths brightness/contrast/saturation 0.4
and hue 0.1 (the usual torchvision ColorJitter settings), raw CAMs in L_VST (no normalisation,
``normalize="none"``: Eq. 13 on M of Eq. 7), all C maps (``maps="all"``: Eq. 11 has M in
R^{W x H x C}); the original CAMs are not detached (M^o gets gradient from L_VST as M^it does;
``detach_original=True`` stops it), the extrapolated border cells are masked (``border="mask"``),
and L_VST is Eq. 13 as written (``reduction="eq13"``, sum over the C maps, mean over W x H).
Whether the transformed copy's pass updates the BatchNorm running statistics is ``--vst-bn``
(``update`` by default; ``frozen``: :func:`sltnet.model.batchnorm_statistics_frozen`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from sltnet.losses import select_cams, top_k_classes, visual_stimulus_tolerance_loss
from utils.evaluation.boxes import normalize_max, normalize_minmax

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VSTConfig:
    flip_prob: float = 0.5
    scale_min: float = 0.75
    scale_max: float = 1.25
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    size_multiple: int = 16          # round the scaled side to a multiple of the CAM stride
    normalize: str = "none"          # CAM normalisation before the MSE: none | max | minmax
    maps: str = "all"                # which maps enter L_VST: all | topk | gt
    detach_original: bool = False    # stop the gradient through M^o
    border: str = "mask"             # cells extrapolated by the inverse of a down-scale: mask | keep
    reduction: str = "eq13"          # L_VST reduction: eq13 (sum over C, mean over W x H) | mean

    @classmethod
    def from_args(cls, args, *, size_multiple: int) -> "VSTConfig":
        return cls(flip_prob=args.vst_flip_prob, scale_min=args.vst_scale_min, scale_max=args.vst_scale_max,
                   brightness=args.vst_brightness, contrast=args.vst_contrast, saturation=args.vst_saturation,
                   hue=args.vst_hue, size_multiple=size_multiple, normalize=args.vst_normalize,
                   maps=args.vst_maps, detach_original=args.vst_detach_original,
                   border=args.vst_border, reduction=args.vst_reduction)


@dataclass(frozen=True)
class SpatialParams:
    """The spatial part of one VST draw: per-image flips and the batch's transformed size."""
    flip: torch.Tensor          # bool [B]
    size: tuple[int, int]       # (H', W') of the transformed image


def sample_spatial(batch_size: int, image_size: tuple[int, int], cfg: VSTConfig,
                   rng: random.Random | None = None) -> SpatialParams:
    """Draw one scale for the batch and one flip per image (Python ``random`` unless ``rng`` given)."""
    rng = rng or random
    scale = rng.uniform(cfg.scale_min, cfg.scale_max)
    m = max(1, int(cfg.size_multiple))
    size = tuple(max(m, int(round(side * scale / m)) * m) for side in image_size)
    flip = torch.tensor([rng.random() < cfg.flip_prob for _ in range(batch_size)], dtype=torch.bool)
    return SpatialParams(flip=flip, size=size)


def _flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    flip = flip.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(flip, x.flip(-1), x)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def apply_spatial(x: torch.Tensor, params: SpatialParams) -> torch.Tensor:
    """The forward spatial transform on [B, C, H, W]: resize to ``params.size``, then flip."""
    return _flip_where(_resize(x, params.size), params.flip)


def invert_spatial(maps: torch.Tensor, params: SpatialParams, size) -> torch.Tensor:
    """g' of Eq. 12 on [B, C, h', w'] maps: undo the flip, then resize back to ``size`` = (h, w)."""
    return _resize(_flip_where(maps, params.flip), size)


def _valid_axis(n: int, n_t: int, eps: float = 1e-6) -> torch.Tensor:
    """Bool [n]: cells of an axis resized from ``n_t`` to ``n`` cells whose centre is interpolated.

    Bilinear with ``align_corners=False``: output cell ``i`` reads source coordinate
    ``(i + 0.5) * n_t / n - 0.5``; outside ``[0, n_t - 1]`` the source is clamped (extrapolation).
    """
    src = (torch.arange(n, dtype=torch.float64) + 0.5) * (n_t / n) - 0.5
    return (src >= -eps) & (src <= n_t - 1 + eps)


def valid_after_inverse(params: SpatialParams, cam_size, cam_size_t) -> torch.Tensor:
    """[1, 1, h, w] float mask: 1 where the inverted map (Eq. 12) is interpolated, 0 where extrapolated.

    ``cam_size`` = (h, w) of M^o, ``cam_size_t`` = (h', w') of M^t. Flipping maps the mask onto
    itself (it is symmetric), so one mask serves the whole batch.
    """
    (h, w), (h_t, w_t) = tuple(cam_size), tuple(cam_size_t)
    mask = _valid_axis(h, h_t)[:, None] & _valid_axis(w, w_t)[None, :]
    return mask.float()[None, None]


def colour_jitter(images: torch.Tensor, cfg: VSTConfig, *, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Per-image ColorJitter on a normalised batch [B, 3, H, W]; returns a normalised batch."""
    if max(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) <= 0:
        return images
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    rgb = (images * std_t + mean_t).clamp(0, 1)
    jitter = v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast,
                            saturation=cfg.saturation, hue=cfg.hue)
    out = torch.stack([jitter(img) for img in rgb])
    return (out - mean_t) / std_t


def transform_batch(images: torch.Tensor, cfg: VSTConfig, rng: random.Random | None = None):
    """I^t = g(I) (Eq. 10). Returns (transformed images, :class:`SpatialParams`)."""
    params = sample_spatial(images.shape[0], tuple(images.shape[-2:]), cfg, rng)
    return apply_spatial(colour_jitter(images, cfg), params), params


def _normalise(maps: torch.Tensor, how: str) -> torch.Tensor:
    if how == "none":
        return maps
    if how == "max":
        return normalize_max(F.relu(maps))
    if how == "minmax":
        return normalize_minmax(maps)
    raise ValueError(f"unknown VST normalisation {how!r} (none | max | minmax)")


def vst_map_pair(cams: torch.Tensor, cams_t: torch.Tensor, params: SpatialParams, cfg: VSTConfig, *,
                 logits: torch.Tensor | None = None, labels: torch.Tensor | None = None, k: int = 1):
    """(M^o, M^it) ready for :func:`sltnet.losses.visual_stimulus_tolerance_loss`.

    ``cams`` [B, C, h, w] of the original images, ``cams_t`` [B, C, h', w'] of the transformed ones.
    ``cfg.maps``: "all" keeps the C maps, "topk" the top-K classes of the ORIGINAL logits,
    "gt" the ground-truth class.
    """
    inverted = invert_spatial(cams_t, params, cams.shape[-2:])
    if cfg.maps == "topk":
        classes = top_k_classes(logits.detach(), k)
    elif cfg.maps == "gt":
        classes = labels
    elif cfg.maps == "all":
        classes = None
    else:
        raise ValueError(f"unknown VST map selection {cfg.maps!r} (all | topk | gt)")
    if classes is not None:
        cams, inverted = select_cams(cams, classes), select_cams(inverted, classes)
    if cfg.detach_original:
        cams = cams.detach()
    return _normalise(cams, cfg.normalize), _normalise(inverted, cfg.normalize)


def vst_loss(cams: torch.Tensor, cams_t: torch.Tensor, params: SpatialParams, cfg: VSTConfig, *,
             logits: torch.Tensor | None = None, labels: torch.Tensor | None = None, k: int = 1) -> torch.Tensor:
    """L_VST (Eq. 13) of one batch under ``cfg``: :func:`vst_map_pair`, the border mask, the reduction."""
    m_o, m_it = vst_map_pair(cams, cams_t, params, cfg, logits=logits, labels=labels, k=k)
    if cfg.border == "mask":
        valid = valid_after_inverse(params, cams.shape[-2:], cams_t.shape[-2:]).to(cams.device)
    elif cfg.border == "keep":
        valid = None
    else:
        raise ValueError(f"unknown VST border rule {cfg.border!r} (mask | keep)")
    return visual_stimulus_tolerance_loss(m_o, m_it, valid, reduction=cfg.reduction)
