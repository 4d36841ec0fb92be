"""Decoding images safely: EXIF orientation applied, RGB out, pixel-count cap against decompression bombs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000: bigger images are refused, not decoded


class ImageLoadError(ValueError):
    """An image is missing, unreadable, truncated, too small or too large."""


def decode_image(data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array with EXIF orientation applied.

    Raises:
        ImageLoadError: not an image, truncated, smaller than 2x2 or larger than ``max_pixels``.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageLoadError(f"{source}: {w}x{h} image exceeds the {max_pixels}-pixel limit")
            if w < 2 or h < 2:
                raise ImageLoadError(f"{source}: {w}x{h} image is too small to predict on")
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageLoadError(f"{source}: not a readable image ({exc})") from exc


def load_image_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file; see :func:`decode_image`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot read image file ({exc.strerror or exc})") from exc
    return decode_image(data, str(path), max_pixels)
