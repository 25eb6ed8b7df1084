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
from PIL import Image, UnidentifiedImageError

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

    A JPEG at least twice ``max_side`` is decoded at 1/2, 1/4 or 1/8 of its size
    by the JPEG decoder itself (DCT-domain scaling, Pillow's ``draft``; the
    grayscale one decodes only the luma), the largest reduction that keeps it at
    least as large as the result, then resized exactly: the result has the same
    size as a full decode would give (so keypoints are in the same frame), and
    decoding a 12-megapixel photo to 1024 px costs 24 ms instead of 106 ms
    (``benchmarks/results/extraction_speed.md``). Every other image (smaller
    JPEGs, other formats, ``max_side`` 0) is decoded in full, as before.

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
        with warnings.catch_warnings():
            # Our own max_pixels check is the limit that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            try:
                width, height = img.size
                if width * height > options.max_pixels:
                    raise ImageReadError(
                        path, f"{width}x{height} pixels exceeds the limit of {options.max_pixels}")
                if img.format == "PNG":
                    img.verify()  # chunk checksums: decoding alone ignores a broken CRC
                    img.close()
                    img = Image.open(path)  # verify() leaves the image unusable
                img.seek(0)
                reduced = _draft(img, options.max_side, color)
                img.load()
                orientation = img.getexif().get(ORIENTATION, 1)
                array = _decoded_array(img, color)
            finally:
                img.close()
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"declared size exceeds the limit of {options.max_pixels} pixels "
                                   f"(decompression bomb)") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image file (no image format Pillow reads)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"corrupt or truncated image data ({exc})") from exc
    array = _oriented(array, orientation)
    if min(array.shape[:2]) < 2:
        raise ImageReadError(path, f"image too small ({array.shape[1]}x{array.shape[0]} pixels)")
    if not reduced:
        return resize_to_max_side(array, options.max_side)
    # The size a full decode would be resized to: from the declared size, turned upright.
    return cv2.resize(array, _scaled_size(*_upright(width, height, orientation), options.max_side),
                      interpolation=cv2.INTER_AREA)


def upright_size(path: str) -> tuple[int, int]:
    """(width, height) in pixels of an image file as ``load_image`` turns it upright (EXIF orientation),
    from its header alone: nothing is decoded.

    Raises:
        ImageReadError: missing file or not an image.
    """
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return _upright(*img.size, img.getexif().get(ORIENTATION, 1))
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image file (no image format Pillow reads)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(path, f"corrupt image header ({exc})") from exc


def _upright(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) of an image stored as (width, height) once turned by its EXIF ``orientation``."""
    return (height, width) if orientation in _SWAPS_AXES else (width, height)


#: EXIF tag of the orientation.
ORIENTATION = 0x0112
#: EXIF orientations whose upright image is the stored one turned a quarter (width and height swap).
_SWAPS_AXES = (5, 6, 7, 8)


def _oriented(array: np.ndarray, orientation: int) -> np.ndarray:
    """The upright image of a decoded one with EXIF ``orientation`` (what ``ImageOps.exif_transpose``
    does, as a contiguous array; orientation 1 or unknown: unchanged, no copy)."""
    if orientation == 2:  # mirrored left-right
        array = array[:, ::-1]
    elif orientation == 3:  # turned 180 degrees
        array = array[::-1, ::-1]
    elif orientation == 4:  # mirrored top-bottom
        array = array[::-1]
    elif orientation == 5:  # transposed (mirrored about the main diagonal)
        array = array.swapaxes(0, 1)
    elif orientation == 6:  # to be turned 90 degrees clockwise
        array = np.rot90(array, -1)
    elif orientation == 7:  # transversed (mirrored about the other diagonal)
        array = array[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:  # to be turned 90 degrees counter-clockwise
        array = np.rot90(array, 1)
    else:
        return array
    return np.ascontiguousarray(array)


def _draft(img: Image.Image, max_side: int, color: bool) -> bool:
    """Let the JPEG decoder down-scale by 2, 4 or 8 while the image stays at least as large as
    ``max_side`` asks; True when it will (then only the exact final resize is left)."""
    if max_side <= 0 or img.format not in ("JPEG", "MPO"):
        return False
    width, height = img.size
    if max(width, height) < 2 * max_side:
        return False
    target = _scaled_size(width, height, max_side)  # the longest side is the same turned or not
    if min(width // target[0], height // target[1]) < 2:
        return False
    mode = img.mode
    if mode == "RGB" and not color:
        mode = "L"  # decode the luma only
    chosen = img.draft(mode, target)
    return chosen is not None and img.size != (width, height)


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


def _scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) of a ``width`` x ``height`` image whose longest side is brought down to
    ``max_side`` (when larger)."""
    if max_side <= 0 or max(height, width) <= max_side:
        return width, height
    scale = max_side / max(height, width)
    return max(2, round(width * scale)), max(2, round(height * scale))


def resize_to_max_side(array: np.ndarray, max_side: int) -> np.ndarray:
    """Down-scale so that the longest side is at most ``max_side`` (area interpolation)."""
    height, width = array.shape[:2]
    if max_side <= 0 or max(height, width) <= max_side:
        return array
    return cv2.resize(array, _scaled_size(width, height, max_side), interpolation=cv2.INTER_AREA)


def rescale(array: np.ndarray, scale: float) -> np.ndarray:
    """Resize by ``scale`` (each side rounded, at least 1 pixel): area interpolation down,
    bilinear up; the array itself at scale 1."""
    if scale == 1:
        return array
    height, width = array.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
