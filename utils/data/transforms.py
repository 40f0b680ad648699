"""Joint image/mask transforms of every stage: :func:`build_transform` (torchvision v2, the
default) and :class:`SPOLTransform` (the SPOL authors' albumentations order, computed with numpy/cv2).

Both take and return the sample dict of :class:`utils.data.dataset.WSOLDataset` (``"image"`` and, when
present, ``"mask"`` / ``"pseudo_mask"``). Where an image lands for EVALUATION (resize, crop, the
ground truth in that frame) is :mod:`utils.evaluation.protocol`'s job; it builds its transforms here.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SoftMask(tv_tensors.Mask):
    """A soft [0, 1] float mask (SPOL pseudo masks): resampled BILINEARLY (without antialiasing,
    like cv2.resize INTER_LINEAR) by every interpolating transform, where a GT ``tv_tensors.Mask``
    uses nearest. Crops, flips and pads behave as for masks; colour transforms leave it alone."""


def _bilinear_kernel(image_kernel):
    def kernel(inpt, *args, **kwargs):
        kwargs["interpolation"] = v2.InterpolationMode.BILINEAR
        if "antialias" in kwargs:
            kwargs["antialias"] = False
        out = image_kernel(inpt.as_subclass(torch.Tensor), *args, **kwargs)
        return tv_tensors.wrap(out, like=inpt)
    return kernel


for _functional, _image_kernel in ((F.resize, F.resize_image), (F.resized_crop, F.resized_crop_image),
                                   (F.affine, F.affine_image), (F.rotate, F.rotate_image),
                                   (F.perspective, F.perspective_image), (F.elastic, F.elastic_image)):
    F.register_kernel(_functional, SoftMask)(_bilinear_kernel(_image_kernel))


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"size must be an int or (h, w), got {size}")
    return size


def build_transform(kind: str, *, resize: int | tuple, crop: int | None = None, flip: bool = False,
                    normalize: bool = True) -> v2.Compose:
    """Joint image/mask transform. ``resize`` int = square (r, r); tuple = (h, w).

    "train": Resize -> RandomCrop(crop) -> RandomHorizontalFlip (if flip);
    "center": Resize -> CenterCrop(crop) (SPOL test geometry: 256x256, crop 224);
    "resize": Resize only (WSOL protocol: whole image to 224x224).
    All end with ToImage, ToDtype(float32, scale=True) and ImageNet Normalize, which touch only
    the image: masks keep their dtype and values. With ``normalize=False`` the image stays uint8
    (the resize already runs on uint8) and :func:`normalize_images` does the last two steps on the
    batch, on the device (``utils.engine.inference.run_inference`` does so for every uint8 image batch):
    the same float operations in the same order, so the same bits, without per-image Python.
    """
    steps: list = [v2.ToImage(), v2.Resize(_pair(resize), antialias=True)]
    if kind == "train":
        if crop is not None:
            steps.append(v2.RandomCrop(crop))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
    elif kind == "center":
        if crop is None:
            raise ValueError("build_transform('center') needs crop")
        steps.append(v2.CenterCrop(crop))
    elif kind == "resize":
        if crop is not None:
            raise ValueError("build_transform('resize') takes no crop")
    else:
        raise ValueError(f"kind must be 'train', 'center' or 'resize', got {kind!r}")
    if kind != "train" and flip:
        raise ValueError(f"flip is only for kind 'train', not {kind!r}")
    if normalize:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[..., 3, H, W]`` (one or a batch) -> float32, ImageNet-normalised: the
    ``ToDtype(float32, scale=True)`` and ``Normalize`` of :func:`build_transform`, elementwise, so a
    batch gives bit for bit what the per-image transform gives."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_images takes uint8 images, got {images.dtype}")
    return F.normalize(F.to_dtype(images, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)


class SPOLTransform:
    """The SPOL authors' image pipeline (albumentations ``Normalize -> Resize -> [RandomCrop ->
    HorizontalFlip | CenterCrop] -> ToTensorV2``), computed with the same numpy/cv2 operations:

    * the uint8 RGB image is normalised FIRST, in float32 (``(x - mean*255) * (1 / (std*255))``),
      then resized as a float image with ``cv2.resize`` INTER_LINEAR (no antialiasing);
    * masks (``"mask"``, ``"pseudo_mask"``) are resized with INTER_NEAREST and cropped/flipped with
      the image; their values are left as they are;
    * random crop offsets ``int((size - crop) * u)``, ``u`` uniform in [0, 1), flip with p = 0.5, both
      drawn from torch's generator (seeded per DataLoader worker).

    ``kind`` as :func:`build_transform`: "train" (resize, random crop, flip), "center" (resize,
    centre crop ``(size - crop) // 2``), "resize" (resize only). Takes and returns the sample dict
    of :class:`WSOLDataset` (tensors ``[C, H, W]``).
    """

    def __init__(self, kind: str, *, resize, crop: int | None = None, flip: bool = False):
        if kind not in ("train", "center", "resize"):
            raise ValueError(f"kind must be 'train', 'center' or 'resize', got {kind!r}")
        if kind == "center" and crop is None:
            raise ValueError("SPOLTransform('center') needs crop")
        if kind == "resize" and crop is not None:
            raise ValueError("SPOLTransform('resize') takes no crop")
        if kind != "train" and flip:
            raise ValueError(f"flip is only for kind 'train', not {kind!r}")
        self.kind, self.size, self.crop, self.flip = kind, _pair(resize), crop, flip
        mean = np.array(IMAGENET_MEAN, dtype=np.float32)
        mean *= 255.0
        std = np.array(IMAGENET_STD, dtype=np.float32)
        std *= 255.0
        self.mean, self.denominator = mean, np.reciprocal(std, dtype=np.float32)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``[H, W, 3]`` RGB -> float32, albumentations' ``Normalize()`` to the last bit."""
        image = image.astype(np.float32)
        image -= self.mean
        image *= self.denominator
        return image

    def draw(self) -> dict:
        """Random parameters of one "train" sample: crop origin fractions and the flip."""
        u = torch.rand(3)
        return {"h_start": float(u[0]), "w_start": float(u[1]), "flip": bool(u[2] < 0.5) and self.flip}

    def apply(self, sample: dict, h_start: float = 0.0, w_start: float = 0.0, flip: bool = False) -> dict:
        """Apply with given random parameters (``h_start``, ``w_start`` in [0, 1) for "train")."""
        import cv2

        height, width = self.size
        y0 = x0 = 0
        crop = None
        if self.crop is not None:
            crop = _pair(self.crop)
            if self.kind == "center":
                y0, x0 = (height - crop[0]) // 2, (width - crop[1]) // 2
            else:
                y0, x0 = int((height - crop[0]) * h_start), int((width - crop[1]) * w_start)

        def geometry(array: np.ndarray, interpolation) -> np.ndarray:
            if array.shape[:2] != (height, width):
                array = cv2.resize(array, (width, height), interpolation=interpolation)
            if crop is not None:
                array = array[y0:y0 + crop[0], x0:x0 + crop[1]]
            if flip:
                array = array[:, ::-1]
            return np.ascontiguousarray(array)

        out = {}
        for key, value in sample.items():
            array = value.as_subclass(torch.Tensor).numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if key == "image":
                image = geometry(self.normalize(array.transpose(1, 2, 0)), cv2.INTER_LINEAR)
                out[key] = torch.from_numpy(image.transpose(2, 0, 1).copy())
            else:  # masks [C, H, W]: nearest, values unchanged
                mask = geometry(array.transpose(1, 2, 0), cv2.INTER_NEAREST)
                if mask.ndim == 2:
                    mask = mask[:, :, None]
                out[key] = torch.from_numpy(mask.transpose(2, 0, 1).copy())
        return out

    def __call__(self, sample: dict) -> dict:
        return self.apply(sample, **self.draw()) if self.kind == "train" else self.apply(sample)


def build_spol_transform(kind: str, *, resize, crop: int | None = None, flip: bool = False) -> SPOLTransform:
    """:class:`SPOLTransform`: the SPOL stages' resize (authors' order and interpolation)."""
    return SPOLTransform(kind, resize=resize, crop=crop, flip=flip)


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """Normalised [B, 3, H, W] (:data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`, as the transforms here
    leave it) -> uint8 [B, H, W, 3] RGB (for overlays)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = (images.detach().float().cpu() * std + mean).clamp(0, 1)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
