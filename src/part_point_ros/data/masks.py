"""Image and mask helpers shared by the loaders: reading, thresholding, union, area, resizing.

Threshold rules differ per dataset and are easy to get wrong: InstructPart masks hold 0 and 1
(``threshold=0``), Point-Bench masks are foreground where any colour channel is above 127
(``threshold=127``). ``read_mask`` applies one rule: foreground where ANY colour channel > threshold.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from part_point_ros.data.errors import DataError


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found; check the dataset root") from err
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot be decoded as an image ({err.__class__.__name__})") from err
    return img


def read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from any PIL-readable file; EXIF orientation is NOT applied (annotations
    refer to the stored pixel grid)."""
    return np.asarray(_open(path).convert("RGB"), dtype=np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found; check the dataset root") from err
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot be decoded as an image ({err.__class__.__name__})") from err
    return height, width


def read_mask(path: Path, *, threshold: int) -> np.ndarray:
    """bool (H, W): True where any colour channel of the PNG is > ``threshold``.

    Alpha is ignored (an opaque RGBA mask is not all foreground); palette images are read through
    their palette colours; 16-bit greyscale is compared as is.
    """
    img = _open(path)
    if img.mode == "P":
        img = img.convert("RGB")
    elif img.mode in ("RGBA", "RGBX", "CMYK", "YCbCr"):
        img = img.convert("RGB")
    elif img.mode in ("LA", "PA"):
        img = img.convert("L")
    arr = np.asarray(img)
    if arr.dtype == bool:
        return arr.copy()
    if arr.ndim == 3:
        return (arr > threshold).any(axis=2)  # (H, W, C) -> (H, W)
    return arr > threshold


def union(masks: Iterable[np.ndarray]) -> np.ndarray:
    """Logical OR of same-shaped bool masks; raises ValueError on an empty input or shape mismatch."""
    out: np.ndarray | None = None
    for m in masks:
        m = np.asarray(m, dtype=bool)
        if out is None:
            out = m.copy()
        elif m.shape != out.shape:
            raise ValueError(f"union of masks with different shapes {out.shape} and {m.shape}")
        else:
            out |= m
    if out is None:
        raise ValueError("union of no masks")
    return out


def area_fraction(mask: np.ndarray) -> float:
    """Fraction of the image covered by the mask, in [0, 1]."""
    return float(np.count_nonzero(mask)) / float(mask.size) if mask.size else 0.0


def fit_max_side(height: int, width: int, max_side: int | None) -> tuple[int, int, float]:
    """(new_height, new_width, scale) so that both sides are <= ``max_side`` (never upscales)."""
    if max_side is None or max(height, width) <= max_side:
        return height, width, 1.0
    scale = max_side / max(height, width)
    new_h = min(max_side, max(1, round(height * scale)))
    new_w = min(max_side, max(1, round(width * scale)))
    return new_h, new_w, scale


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to ``size`` = (height, width)."""
    height, width = size
    if mask.shape == (height, width):
        return mask
    small = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return small.astype(bool)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-averaging resize of an RGB uint8 image to ``size`` = (height, width) (for downsampling)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
