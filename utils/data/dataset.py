"""The WSOL dataset: images (and GT / pseudo masks) of a list of records, transformed jointly.

Records come from :mod:`utils.data.layouts` (``load_records``); transforms from :mod:`utils.data.transforms`;
the evaluation geometry (where an image lands, its ground truth in that frame) from :mod:`utils.evaluation.protocol`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from utils.errors import DataError
from utils.data.layouts import Record, check_image_size
from utils.data.transforms import SoftMask

# PIL modes converted to RGB / L by PIL itself: 8 bits per channel, palette, CMYK (JPEG's Adobe
# inversion handled by PIL's decoder), YCbCr. 16-bit grey ("I;16*", and "I" holding 0..65535) keeps its
# high byte, as OpenCV's imread and PIL's own reading of 16-bit RGB PNGs do (PIL's convert() would clip
# every value above 255 to white); anything else is refused.
_PIL_CONVERTS = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}


def convert_image(im: Image.Image, mode: str, path, what: str = "image") -> Image.Image:
    """``im`` as an 8-bit ``mode`` ("RGB" or "L") image with the values it shows (see
    ``_PIL_CONVERTS``); an image mode it cannot convert is one ``DataError`` naming the file."""
    if im.mode in _PIL_CONVERTS:
        return im.convert(mode)
    if im.mode.startswith("I;16") or im.mode == "I":
        array = np.asarray(im)
        if array.size and (int(array.min()) < 0 or int(array.max()) > 65535):
            raise DataError.at(path, msg=f"{what} of mode {im.mode} holds values outside 0..65535: save it as "
                                         "an 8- or 16-bit image")
        return Image.fromarray((array.astype(np.uint32) >> 8).astype(np.uint8), "L").convert(mode)
    raise DataError.at(path, msg=f"{what} of PIL mode {im.mode} is not supported: save it as an 8- or 16-bit "
                                 "RGB, grey or palette image")


def open_image(path, mode: str = "RGB", what: str = "image", hint: str = "") -> Image.Image:
    """The file ``path`` as an 8-bit ``mode`` image (:func:`convert_image`), decoded now; a missing,
    unreadable or corrupt file, or an image mode it cannot convert, is one ``DataError`` naming the
    file (``hint`` is added to the "not found" message)."""
    try:
        with Image.open(path) as im:
            return convert_image(im, mode, path, what)
    except FileNotFoundError:
        raise DataError.at(path, msg=f"{what} not found{hint}") from None
    except DataError:
        raise
    except Exception as e:
        raise DataError.at(path, msg=f"unreadable or corrupt {what}: {e}") from None


def _id_stem(image_id: str) -> str:
    return os.path.splitext(image_id)[0]


def pseudo_mask_candidates(mask_dir, image_id: str) -> list[Path]:
    """Where the pseudo mask of ``image_id`` may be, in order: ours (``<id stem>.png``), then the SPOL
    authors' names (CUB ``<id stem>.png``; ImageNet the training image's own name, a JPEG, relative
    to ``train/``), so that the seg stage reads masks written by either."""
    mask_dir = Path(mask_dir)
    ids = [image_id]
    if image_id.startswith("train/"):
        ids.append(image_id[len("train/"):])
    out = []
    for i in ids:
        out += [mask_dir / (_id_stem(i) + ".png"), mask_dir / i]
    return list(dict.fromkeys(out))


def find_pseudo_mask(mask_dir, image_id: str) -> Path:
    """The first existing :func:`pseudo_mask_candidates` (ours when none exists, for the error)."""
    candidates = pseudo_mask_candidates(mask_dir, image_id)
    for path in candidates:
        if path.is_file():
            return path
    return candidates[0]


class WSOLDataset(torch.utils.data.Dataset):
    """Images (and optionally GT / pseudo masks) of a list of records, transformed jointly.

    ``__getitem__(i)`` -> dict: "image" float [3,H,W] normalised, "label" int, "index" int,
    "mask" float [1,H,W] in [0,1] (GT mask / 255, when ``with_gt_mask``; nearest resampling),
    "pseudo_mask" float [3,H,W] in [0,1] (when ``pseudo_mask_dir``; the file of
    :func:`find_pseudo_mask`), / 255 in the file's B, G, R order as ``cv2.imread`` gives it (the
    SPOL authors' layout: 0 = CAM, 1 = Gaussian prior, 2 = 0); resampled bilinearly by
    :func:`build_transform`, nearest by :class:`SPOLTransform`. Masks must have the image's size,
    and the image the size its annotation states (``utils.data.layouts.check_image_size``); 16-bit,
    palette and CMYK files are converted to 8-bit RGB / grey (:func:`convert_image`).
    """

    def __init__(self, records, transform, *, with_gt_mask=False, pseudo_mask_dir=None):
        self.records = list(records)
        self.transform = transform
        self.with_gt_mask = with_gt_mask
        self.pseudo_mask_dir = Path(pseudo_mask_dir) if pseudo_mask_dir is not None else None
        if with_gt_mask:
            for r in self.records:
                if r.mask_path is None:
                    raise DataError.at(r.path, msg="no GT mask for this image (only the 'cub' layout "
                                                   "with a segmentations/ folder has masks)")

    def __len__(self) -> int:
        return len(self.records)

    def pseudo_mask_path(self, record: Record) -> Path:
        return find_pseudo_mask(self.pseudo_mask_dir, record.image_id)

    @staticmethod
    def _open(path, mode: str, what: str, hint: str = "") -> Image.Image:
        return open_image(path, mode, what, hint)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = self._open(record.path, "RGB", "image")
        check_image_size(record, image.size)  # an XML <size> or image_sizes.txt that is not the image's
        sample = {"image": tv_tensors.Image(F.pil_to_tensor(image))}
        if self.with_gt_mask:
            mask = self._open(record.mask_path, "L", "GT mask")
            self._same_size(mask, image, record.mask_path)
            sample["mask"] = tv_tensors.Mask(F.pil_to_tensor(mask))
        if self.pseudo_mask_dir is not None:
            path = self.pseudo_mask_path(record)
            hint = " (pseudo masks are written by the cam stage's test step, spol/cam/test.py)"
            pseudo = self._open(path, "RGB", "pseudo mask", hint)
            self._same_size(pseudo, image, path)
            # RGB -> the file's B, G, R order (cv2.imread's, in which the SPOL authors index it)
            sample["pseudo_mask"] = SoftMask(F.pil_to_tensor(pseudo).flip(0).float() / 255.0)
        out = self.transform(sample)
        item = {"image": out["image"].as_subclass(torch.Tensor), "label": int(record.label), "index": int(index)}
        if "mask" in out:
            item["mask"] = out["mask"].as_subclass(torch.Tensor).float() / 255.0
        if "pseudo_mask" in out:
            item["pseudo_mask"] = out["pseudo_mask"].as_subclass(torch.Tensor).float().clamp_(0.0, 1.0)
        return item

    @staticmethod
    def _same_size(mask: Image.Image, image: Image.Image, path) -> None:
        if mask.size != image.size:
            raise DataError.at(path, msg=f"mask is {mask.size[0]}x{mask.size[1]} but its image is "
                                         f"{image.size[0]}x{image.size[1]}")
