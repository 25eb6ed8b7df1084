import os

import numpy as np
import pytest
from PIL import Image

from bovw.images import ImageOptions, ImageReadError, load_image, upright_size


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
    assert upright_size(str(tmp_path / "rotated.jpg")) == photo.shape[:2]  # (width, height) of the turned photo
    with pytest.raises(ImageReadError, match="no such file"):
        upright_size(str(tmp_path / "missing.jpg"))


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


# ---- reduced JPEG decoding (Pillow's draft) ---------------------------------------------------

def _reference(path, max_side=1024, color=False):
    """load_image as it was before reduced decoding: full decode, exif_transpose, convert, resize."""
    from PIL import ImageOps

    from bovw.images import resize_to_max_side
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        array = np.asarray(img.convert("RGB" if color else "L"))
    return resize_to_max_side(array, max_side)


@pytest.fixture(scope="module")
def large_photo(data_dir):
    """A real 1080x695 photo up-scaled to 2400x1545 (more than twice 1024 px)."""
    path = os.path.join(data_dir, "sacre_coeur", "03903474_1471484089.jpg")
    with Image.open(path) as img:
        return img.convert("RGB").resize((2400, 1545), Image.Resampling.BICUBIC)


def _spy_draft(monkeypatch):
    """Record what bovw.images._draft answered (True: the decoder reduced the image)."""
    import bovw.images as images
    answers = []
    real = images._draft

    def spy(*args):
        answers.append(real(*args))
        return answers[-1]
    monkeypatch.setattr(images, "_draft", spy)
    return answers


def _pixel_error(a, b):
    return np.abs(a.astype(np.int16) - b).mean()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_large_jpeg_is_reduced_while_decoding_and_turned_upright(large_photo, tmp_path, monkeypatch, orientation):
    """Every EXIF orientation: the reduced decode has exactly the size of the full decode's result
    (width and height swapped for the quarter turns) and its pixels, give or take the resampling."""
    exif = large_photo.getexif()
    exif[0x0112] = orientation
    path = str(tmp_path / f"o{orientation}.jpg")
    large_photo.save(path, quality=92, exif=exif)
    answers = _spy_draft(monkeypatch)
    gray = load_image(path)
    assert answers == [True]
    expected = _reference(path)
    assert gray.shape == expected.shape == ((1024, 659) if orientation >= 5 else (659, 1024))
    assert gray.dtype == np.uint8 and gray.flags.c_contiguous
    assert _pixel_error(gray, expected) < 1.5
    # the wrong way up would be far off
    assert _pixel_error(gray, expected[::-1, ::-1]) > 10 * _pixel_error(gray, expected)
    color = load_image(path, color=True)
    assert color.shape == expected.shape + (3,)
    assert _pixel_error(color, _reference(path, color=True)) < 1.5


@pytest.mark.parametrize("size,max_side,orientation,tolerance", [
    ((2051, 1537), 1024, 8, 2.0),  # odd sizes, exactly twice the target: reduced by 2
    ((4032, 3024), 1024, 6, 2.0),  # a phone photo: reduced by 2 (4 would be under 1024)
    # Reduced by 8: the decoder's 8x8 block means, then an area resize by 1.25, instead of one
    # area resize by 10, differ more on these fine-textured 100-300 px results.
    ((1000, 750), 100, 1, 4.0),
    ((1001, 3001), 300, 3, 6.0),   # portrait, longest side 3001 -> 376 -> 300
])
def test_reduced_size_arithmetic_matches_a_full_decode(large_photo, tmp_path, monkeypatch, size, max_side,
                                                       orientation, tolerance):
    img = large_photo.resize(size)
    exif = img.getexif()
    exif[0x0112] = orientation
    path = str(tmp_path / "p.jpg")
    img.save(path, quality=90, exif=exif)
    answers = _spy_draft(monkeypatch)
    gray = load_image(path, ImageOptions(max_side=max_side))
    assert answers == [True]
    expected = _reference(path, max_side)
    assert gray.shape == expected.shape and max(gray.shape) == max_side
    assert _pixel_error(gray, expected) < tolerance


@pytest.mark.parametrize("kind", ["progressive", "grayscale", "cmyk", "mpo"])
def test_reduced_decoding_of_other_jpeg_kinds(large_photo, tmp_path, monkeypatch, kind):
    path = str(tmp_path / "p.jpg")
    if kind == "progressive":
        large_photo.save(path, quality=90, progressive=True)
    elif kind == "grayscale":
        large_photo.convert("L").save(path, quality=90)
    elif kind == "cmyk":
        large_photo.convert("CMYK").save(path, quality=90)
    else:  # a phone's multi-picture file: the first picture is the photo
        large_photo.save(path, format="MPO", save_all=True, append_images=[large_photo.resize((320, 206))])
    answers = _spy_draft(monkeypatch)
    gray = load_image(path)
    assert answers == [True]
    expected = _reference(path)
    assert gray.shape == expected.shape == (659, 1024)
    assert _pixel_error(gray, expected) < 1.5


def test_images_not_reduced_decode_exactly_as_before(data_dir, tmp_path, monkeypatch):
    """Less than twice max_side (the benchmark images, 1024-px photos), max_side 0, other formats:
    bit for bit what the full decode gave, in every EXIF orientation, gray and colour."""
    answers = _spy_draft(monkeypatch)
    photos = [os.path.join(data_dir, "ukbench", "ukbench00000.jpg"),
              os.path.join(data_dir, "holidays", "100000.jpg"),
              os.path.join(data_dir, "sacre_coeur", "02928139_3448003521.jpg"),  # 780x1063 -> 1024
              os.path.join(data_dir, "sacre_coeur", "71295362_4051449754.jpg")]  # 675x1012, kept
    with Image.open(photos[2]) as img:
        rgb = img.convert("RGB")
    for orientation in range(1, 9):
        exif = rgb.getexif()
        exif[0x0112] = orientation
        photos.append(str(tmp_path / f"o{orientation}.jpg"))
        rgb.save(photos[-1], quality=90, exif=exif)
    rgb.resize((2200, 1600)).save(tmp_path / "large.png")
    for path in photos:
        for color in (False, True):
            for max_side in (1024, 0):
                got = load_image(path, ImageOptions(max_side=max_side), color=color)
                assert np.array_equal(got, _reference(path, max_side, color)), (path, color, max_side)
    png = str(tmp_path / "large.png")
    assert np.array_equal(load_image(png), _reference(png))  # PNG: no reduced decoding
    assert not any(answers)


def test_pixel_limit_applies_to_the_declared_size_of_a_reducible_jpeg(large_photo, tmp_path):
    path = tmp_path / "big.jpg"
    large_photo.save(path, quality=80)
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        load_image(str(path), ImageOptions(max_pixels=2400 * 1545 - 1))
    assert load_image(str(path), ImageOptions(max_pixels=2400 * 1545)).shape == (659, 1024)


def test_truncated_large_jpeg_is_refused(large_photo, tmp_path):
    good = tmp_path / "good.jpg"
    large_photo.save(good, quality=90)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        load_image(str(bad))
