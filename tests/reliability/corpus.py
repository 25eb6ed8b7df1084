"""Generates the bad-input corpus: every kind of awkward file, with its documented outcome.

``OUTCOMES[name]`` is ``"indexed"`` or ``"skipped: <words of the reason>"``.
"""
from __future__ import annotations

import io
import os
import shutil
import struct
import zlib

import numpy as np
from PIL import Image

OUTCOMES = {
    "photo.jpg": "indexed",
    "truncated.jpg": "skipped: truncated",
    "broken_crc.png": "skipped: broken PNG",
    "empty.jpg": "skipped: empty file",
    "text_named.jpg": "skipped: not an image file",
    "one_pixel.png": "skipped: too small",
    "flat.png": "indexed",  # no keypoints: indexed with no words, never returned
    "cmyk.jpg": "indexed",
    "gray16.png": "indexed",
    "palette.png": "indexed",
    "rgba.png": "indexed",
    "animated.gif": "indexed",  # first frame
    "animated.webp": "indexed",
    "exif_rotated.jpg": "indexed",
    "bomb.png": "skipped: exceeds the limit",
    "name with spaces é.jpg": "indexed",
    "missing.jpg": "skipped: no such file",
    "folder.jpg": "skipped: is a directory",
}


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


def make_corpus(folder: str, photo_path: str, other_photo_path: str) -> list[str]:
    """Write the corpus into ``folder``; returns the paths as a user would list them
    (the missing file included, one photo listed twice)."""
    os.makedirs(folder, exist_ok=True)
    photo = Image.open(photo_path).convert("RGB")
    other = Image.open(other_photo_path).convert("RGB")

    def path(name):
        return os.path.join(folder, name)

    shutil.copy(photo_path, path("photo.jpg"))
    buffer = io.BytesIO()
    other.save(buffer, format="JPEG", quality=90)
    open(path("truncated.jpg"), "wb").write(buffer.getvalue()[:len(buffer.getvalue()) // 3])
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    idat = data.find(b"IDAT")
    data[idat + 4 + int.from_bytes(data[idat - 4:idat], "big")] ^= 0xFF  # the IDAT chunk's CRC
    open(path("broken_crc.png"), "wb").write(bytes(data))
    open(path("empty.jpg"), "wb").close()
    open(path("text_named.jpg"), "w").write("this is a text file, not a JPEG\n")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(path("one_pixel.png"))
    Image.new("RGB", (320, 240), (128, 128, 128)).save(path("flat.png"))
    other.convert("CMYK").save(path("cmyk.jpg"))
    Image.fromarray(np.asarray(other.convert("L")).astype(np.uint16) * 257).save(path("gray16.png"))
    other.convert("P", palette=Image.ADAPTIVE).save(path("palette.png"))
    rgba = other.convert("RGBA")
    rgba.putalpha(180)
    rgba.save(path("rgba.png"))
    frames = [other, other.transpose(Image.FLIP_LEFT_RIGHT)]
    frames[0].save(path("animated.gif"), save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(path("animated.webp"), save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6
    other.save(path("exif_rotated.jpg"), exif=exif)
    open(path("bomb.png"), "wb").write(_png_with_declared_size(100_000, 100_000))
    shutil.copy(other_photo_path, path("name with spaces é.jpg"))
    os.makedirs(path("folder.jpg"), exist_ok=True)
    listed = [path(name) for name in OUTCOMES]
    return listed + [path("photo.jpg")]  # a duplicate path
