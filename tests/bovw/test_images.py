import os

import numpy as np
import pytest
from PIL import Image

from bovw.images import ImageOptions, ImageReadError, load_image


@pytest.fixture
def photo(data_dir):
    return np.asarray(Image.open(os.path.join(data_dir, "ukbench", "ukbench00000.jpg")).convert("RGB"))


def test_max_side_downscales_and_never_upscales(photo, tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(photo).save(path)
    assert load_image(str(path), ImageOptions(max_side=160)).shape == (120, 160)
    assert load_image(str(path), ImageOptions(max_side=4000)).shape == photo.shape[:2]


@pytest.mark.parametrize("mode,suffix", [("L", ".png"), ("RGBA", ".png"), ("P", ".png"), ("RGB", ".webp"),
                                         ("CMYK", ".jpg"), ("I;16", ".png")])
def test_reads_modes_and_formats(photo, tmp_path, mode, suffix):
    path = tmp_path / f"img{suffix}"
    if mode == "I;16":
        Image.fromarray((photo[..., 0].astype(np.uint16) * 257)).save(path)
    else:
        Image.fromarray(photo).convert(mode).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    gray = load_image(str(path))
    assert gray.dtype == np.uint8 and gray.shape == photo.shape[:2]
    assert 20 < gray.mean() < 235
    assert load_image(str(path), color=True).shape == photo.shape


def test_sixteen_bit_keeps_the_full_range(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    gray = load_image(str(tmp_path / "ramp.png"))
    assert gray.min() == 0 and gray.max() == 255


def test_exif_orientation_is_applied(photo, tmp_path):
    img = Image.fromarray(photo)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(str(tmp_path / "rotated.jpg")).shape == photo.shape[1::-1][:2]


@pytest.mark.parametrize("make,reason", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("this is not an image"), "not an image file"),
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "directory"),
    (lambda p: Image.new("RGB", (1, 1)).save(p, format="PNG"), "too small"),
])
def test_bad_files_raise_named_errors(tmp_path, make, reason):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(ImageReadError) as info:
        load_image(str(path))
    assert reason in info.value.reason and str(path) in str(info.value)


def test_truncated_jpeg_is_refused(photo, tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(photo).save(good, quality=90)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ImageReadError, match="truncated"):
        load_image(str(bad))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (4000, 3000)).save(path)
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        load_image(str(path), ImageOptions(max_pixels=1_000_000))
