"""Decoding: every format a scrape holds becomes the same-size RGB array, and bad files fail with one clear error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artistid.errors import ImageError
from artistid.images import Preprocess, load_image


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _painting(size: tuple[int, int] = (320, 200)) -> Image.Image:
    x = np.linspace(0, 255, size[0], dtype=np.uint8)
    y = np.linspace(0, 255, size[1], dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (size[1], 1)), np.tile(y[:, None], (1, size[0])),
                                     np.full((size[1], size[0]), 90, np.uint8)], axis=2))  # fmt: skip


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "LA"),
     ("WEBP", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB")],
)  # fmt: skip
def test_every_common_format_and_mode_becomes_rgb_of_the_input_size(fmt: str, mode: str) -> None:
    data = _encode(_painting().convert(mode), fmt)
    pixels = load_image(data, Preprocess(size=224), name=f"painting.{fmt.lower()}")
    assert pixels.shape == (224, 224, 3)
    assert pixels.dtype == np.uint8


def test_sixteen_bit_grayscale_keeps_its_range() -> None:
    ramp = (np.tile(np.linspace(0, 65535, 256), (64, 1))).astype(np.uint16)
    pixels = load_image(_encode(Image.fromarray(ramp), "PNG"), Preprocess(size=64))
    assert pixels[..., 0].min() < 10 and pixels[..., 0].max() > 245  # not clipped to white


def test_transparent_areas_are_painted_white() -> None:
    image = Image.new("RGBA", (100, 100), (200, 0, 0, 0))
    pixels = load_image(_encode(image, "PNG"), Preprocess(size=32))
    assert (pixels == 255).all()


def test_exif_orientation_is_honoured() -> None:
    tall = Image.new("RGB", (60, 120), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 0, 60, 60))  # white top half
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: the white half belongs at the bottom
    pixels = load_image(_encode(tall, "JPEG", exif=exif.tobytes()), Preprocess(size=32))
    assert pixels[:8].mean() < 50 and pixels[-8:].mean() > 200


def test_gif_first_frame_is_used() -> None:
    frames = [Image.new("RGB", (40, 40), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    pixels = load_image(buffer.getvalue(), Preprocess(size=16))
    assert pixels[..., 0].mean() > 200 and pixels[..., 2].mean() < 50


def test_large_jpeg_decodes_at_reduced_size_the_same_way_every_time(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    _painting((3000, 2000)).save(path, quality=90)
    first = load_image(path)
    assert first.shape == (224, 224, 3)
    assert np.array_equal(first, load_image(path.read_bytes(), name=str(path)))


def test_fits_other_than_stretch() -> None:
    wide = _painting((400, 100))
    for fit in ("crop", "pad"):
        assert load_image(wide, Preprocess(size=64, fit=fit)).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="fit must be one of"):
        Preprocess(fit="squash")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a painting", "not an image"),
        (_encode(_painting(), "JPEG")[:600], "truncated"),
        (_encode(Image.new("1", (12000, 11000)), "PNG"), "decompression bomb"),
    ],
    ids=["zero-bytes", "not-an-image", "truncated-jpeg", "decompression-bomb"],
)
def test_unusable_files_raise_one_error_naming_the_file_and_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as raised:
        load_image(path)
    assert raised.value.path == str(path)
    assert reason in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_large_museum_scan_is_read_though_pillow_would_warn() -> None:
    # 96 Mpx: over Pillow's 89 Mpx warning, under artistid's limit of 120 Mpx.
    scan = _encode(Image.new("1", (12000, 8000), 1), "PNG")
    assert load_image(scan, Preprocess(size=32)).shape == (32, 32, 3)


def test_a_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read file"):
        load_image(tmp_path / "nowhere.jpg")
