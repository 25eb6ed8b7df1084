"""Image decoding: any common file format to a uint8 numpy array, safely.

Every failure raises :class:`ImageReadError` naming the file and the reason, so a
build over a folder can skip the file, report it and go on.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Files with more pixels than this are refused before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 100_000_000


class ImageReadError(Exception):
    """An image file could not be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class ImageOptions:
    """How images are decoded before feature extraction.

    Attributes:
        max_side: longest side in pixels after down-scaling (never up-scaled);
            0 keeps the original size.
        max_pixels: width * height above which a file is refused unread.
    """

    max_side: int = 1024
    max_pixels: int = DEFAULT_MAX_PIXELS


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale an integer or float image of any bit depth to uint8."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.max(initial=0) > 255 else 255
        return (array.astype(np.float32) * (255.0 / top)).round().astype(np.uint8)
    return (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)


def load_image(path: str, options: ImageOptions = ImageOptions(), color: bool = False) -> np.ndarray:
    """Decode an image file, apply its EXIF orientation and limit its size.

    Reads whatever Pillow reads (JPEG, PNG, WebP, GIF, TIFF, ...): grayscale,
    palette, RGBA (alpha dropped), CMYK and 16-bit images; the first frame of an
    animation.

    Args:
        path: image file.
        options: size limits.
        color: return RGB instead of grayscale.

    Returns:
        (h, w) uint8 grayscale, or (h, w, 3) uint8 RGB when ``color``.

    Raises:
        ImageReadError: missing file, directory, empty, undecodable, truncated,
            too many pixels, or degenerate (a side under 2 pixels).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageReadError(path, "no such file")
    if os.path.isdir(path):
        raise ImageReadError(path, "is a directory, not an image")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > options.max_pixels:
                raise ImageReadError(
                    path, f"{width}x{height} pixels exceeds the limit of {options.max_pixels}")
            if img.format == "PNG":
                img.verify()  # chunk checksums: decoding alone ignores a broken CRC
        with Image.open(path) as img:
            with warnings.catch_warnings():
                # Our own max_pixels check above is the limit that applies.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
            array = _decoded_array(img, color)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"declared size exceeds the limit of {options.max_pixels} pixels "
                                   f"(decompression bomb)") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image file (no image format Pillow reads)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image data ({exc})") from exc
    if min(array.shape[:2]) < 2:
        raise ImageReadError(path, f"image too small ({array.shape[1]}x{array.shape[0]} pixels)")
    return resize_to_max_side(array, options.max_side)


def _decoded_array(img: Image.Image, color: bool) -> np.ndarray:
    """Convert a loaded Pillow image to a uint8 gray or RGB array."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _to_uint8(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=2) if color else gray
    if img.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1", "RGBX", "La", "RGBa", "HSV", "LAB"):
        img = img.convert("RGB")
    if color:
        return np.ascontiguousarray(np.asarray(img.convert("RGB")))
    return np.ascontiguousarray(np.asarray(img.convert("L")))


def resize_to_max_side(array: np.ndarray, max_side: int) -> np.ndarray:
    """Down-scale so that the longest side is at most ``max_side`` (area interpolation)."""
    height, width = array.shape[:2]
    if max_side <= 0 or max(height, width) <= max_side:
        return array
    scale = max_side / max(height, width)
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)
