"""Validation of what users hand to the pointer: RGB uint8 images, queries, image files.

Every rejection is an ``InputError`` with one line that says what was given and how to fix it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from part_point_ros.errors import InputError

MAX_QUERY_CHARS = 1000
MIN_IMAGE_SIDE = 2
# Limits on what one request may cost. MAX_IMAGE_PIXELS admits every robot camera up to 4K (DCI
# 4096x2160; UHD 3840x2160). The aspect ratio bounds the rest: a pad-to-square processor (LLaVA) pads
# the image to a max(W, H)^2 canvas before resizing, so a 20000x2 image (40 kpx) costs as much as a
# 20000x20000 one (5.5 GB, 17 s). With both limits the canvas is at most MAX_IMAGE_PIXELS x
# MAX_ASPECT_RATIO = 71 Mpx (8413x1051 -> 8413^2: about 1 GB and 2-3 s on one CPU core); 8:1 admits
# 32:9 monitors, side-by-side stereo and most panoramas. Qwen2.5-VL's processor refuses over 200:1.
MAX_IMAGE_PIXELS = 4096 * 2160
MAX_ASPECT_RATIO = 8.0


def check_image_size(
    width: int,
    height: int,
    *,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    what: str = "image",
) -> None:
    """Raise ``InputError`` for an image of ``width`` x ``height`` pixels over the request limits.

    Cheap (no pixel is read): callers check before decoding or converting an image. The message
    names the limit and the option that changes it (Python, CLI, ROS parameter: the same name).
    """
    short, long = min(width, height), max(width, height)
    if short < MIN_IMAGE_SIDE:
        raise InputError(f"{what} is too small ({width}x{height} px)")
    if long > max_aspect_ratio * short:
        raise InputError(
            f"{what} is {width}x{height} px, aspect ratio {long / short:.1f}:1, over the limit of "
            f"{max_aspect_ratio:g}:1: crop it nearer to square, or raise max_aspect_ratio "
            "(CLI: --max-aspect-ratio)"
        )
    if width * height > max_image_pixels:
        raise InputError(
            f"{what} is {width}x{height} = {width * height} px, over the limit of {max_image_pixels} px: "
            "downscale it, or raise max_image_pixels (CLI: --max-image-pixels)"
        )


def check_limits(max_image_pixels: object, max_aspect_ratio: object) -> tuple[int, float]:
    """The two request limits as (int, float), or ``InputError`` naming the bad one."""
    pixels, ratio = max_image_pixels, max_aspect_ratio
    if isinstance(pixels, bool) or not isinstance(pixels, (int, np.integer)) or pixels < MIN_IMAGE_SIDE**2:
        raise InputError(f"max_image_pixels must be an integer >= {MIN_IMAGE_SIDE**2}, got {pixels!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.integer, np.floating)):
        raise InputError(f"max_aspect_ratio must be a number >= 1 (long side / short side), got {ratio!r}")
    if not (1.0 <= float(ratio) < math.inf):
        raise InputError(f"max_aspect_ratio must be a number >= 1 (long side / short side), got {ratio!r}")
    return int(pixels), float(ratio)


def check_image(
    image: object,
    *,
    allow_grey: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
) -> np.ndarray:
    """Return ``image`` as a contiguous (H, W, 3) uint8 RGB array, or raise ``InputError``.

    A (H, W) or (H, W, 1) grey image is replicated to 3 channels only when ``allow_grey``. Images
    over ``max_image_pixels`` or ``max_aspect_ratio`` are refused (``check_image_size``) before any copy.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
    shape, dtype = tuple(image.shape), image.dtype
    grey = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    if image.ndim == 3 and image.shape[2] == 4:
        raise InputError(
            f"image has 4 channels (shape {shape}): RGBA is not accepted; drop or composite the alpha "
            "channel first, e.g. image[..., :3]"
        )
    if not (grey or (image.ndim == 3 and image.shape[2] == 3)):
        raise InputError(f"image must be (H, W, 3) RGB, got shape {shape} dtype {dtype}")
    if dtype != np.uint8:
        raise InputError(
            f"image must be uint8 (0..255), got dtype {dtype} with shape {shape}; convert it, e.g. "
            "(img / img.max() * 255).astype(np.uint8) for 16-bit or float images"
        )
    check_image_size(shape[1], shape[0], max_image_pixels=max_image_pixels, max_aspect_ratio=max_aspect_ratio)
    if grey:
        if not allow_grey:
            raise InputError(
                f"image is greyscale (shape {shape}); pass allow_grey=True (CLI: --allow-grey) to "
                "replicate it to RGB, or convert it yourself"
            )
        image = np.repeat(image.reshape(shape[0], shape[1], 1), 3, axis=2)  # (H, W[, 1]) -> (H, W, 3)
    return np.ascontiguousarray(image)


def check_query(query: object, *, max_chars: int = MAX_QUERY_CHARS, reserved: Sequence[str] = ()) -> str:
    """Return the stripped query, or raise ``InputError`` for non-strings, empty or too-long ones, and
    for a query holding one of the ``reserved`` strings (the backbone's special tokens)."""
    if not isinstance(query, str):
        raise InputError(f"query must be a string, got {type(query).__name__}")
    text = query.strip()
    if not text:
        raise InputError('query is empty: say which part to point at, e.g. "the handle of the mug"')
    if len(text) > max_chars:
        raise InputError(f"query is {len(text)} characters long; the limit is {max_chars}")
    token = next((t for t in reserved if t in text), None)
    if token is not None:
        raise InputError(
            f"query contains {token!r}, a special token of the backbone's prompt (an image or chat "
            "marker, not text): leave it out and say the part in words"
        )
    return text


def reserved_tokens(processor: Any) -> tuple[str, ...]:
    """The special tokens of a backbone's prompt (``<image>``, ``<|image_pad|>``, ``</s>``, ...).

    A query is put into the prompt as text, and a tokenizer turns a special token's string into that
    token wherever it appears: ``<image>`` in a LLaVA query adds an image slot, and the processor then
    fails with "N image tokens in the prompt". Longest first, so the reason names the whole token.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    found = {"<image>"}  # LLaVA's placeholder, also when the tokenizer cannot be read
    image_token = getattr(processor, "image_token", None)
    if isinstance(image_token, str):
        found.add(image_token)
    found.update(getattr(tokenizer, "all_special_tokens", None) or ())
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found.update(t.content for t in added.values() if getattr(t, "special", False))
    return tuple(sorted((t for t in found if isinstance(t, str) and t.strip()), key=len, reverse=True))


def read_image(
    path: str | Path,
    *,
    allow_grey: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (EXIF orientation applied), or raise ``InputError``.

    Palette images without transparency are converted to RGB; 16-bit, alpha and (unless
    ``allow_grey``) greyscale images are refused with a message naming the mode. The size limits
    (``check_image_size``) are checked from the header, before a pixel is decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image file")
    try:
        with warnings.catch_warnings():  # PIL warns above 89 Mpx: the limits below say it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img_file = Image.open(path)
        with img_file as img:
            width, height = img.size
            check_image_size(
                width,
                height,
                max_image_pixels=max_image_pixels,
                max_aspect_ratio=max_aspect_ratio,
                what=str(path),
            )
            img.load()
            img = ImageOps.exif_transpose(img)
            mode = img.mode
            if mode == "P":
                if "transparency" in img.info:
                    raise InputError(
                        f"{path}: palette image with transparency; save it as RGB (no alpha) first"
                    )
                img = img.convert("RGB")
                mode = "RGB"
            if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
                raise InputError(
                    f"{path}: image has an alpha channel (mode {mode}); save it as RGB without alpha first"
                )
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise InputError(f"{path}: {mode} image (16/32-bit); part-point needs an 8-bit RGB image")
            if mode in ("L", "1"):
                if not allow_grey:
                    raise InputError(
                        f"{path}: greyscale image (mode {mode}); pass --allow-grey to use it as RGB"
                    )
                img = img.convert("RGB")
            elif mode != "RGB":
                raise InputError(f"{path}: image mode {mode} is not supported; save it as 8-bit RGB")
            array = np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError as err:
        raise InputError(f"{path}: cannot decode as an image (is it a PNG/JPEG file?)") from err
    except Image.DecompressionBombError as err:  # PIL refuses over 2 x Image.MAX_IMAGE_PIXELS (179 Mpx)
        raise InputError(
            f"{path}: too large to decode ({str(err).rstrip('.')}); the limit is {max_image_pixels} px "
            "(max_image_pixels, CLI: --max-image-pixels): downscale it"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: cannot read the image ({err})") from err
    return check_image(array, max_image_pixels=max_image_pixels, max_aspect_ratio=max_aspect_ratio)
