"""Decoding images into the fixed-size RGB arrays a backbone takes.

Every path that turns a file into pixels (featurizing, training, evaluating, serving, Spark) goes through
`load_image`, so the same file always gives the same pixels and therefore the same features.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from artistid.errors import ImageError, NotAnImageError, UsageError

__all__ = [
    "MAX_PIXELS",
    "Preprocess",
    "decode_image",
    "load_image",
]

# Larger than any museum scan we expect (e.g. 12000 x 8000), smaller than a decompression bomb.
MAX_PIXELS = 120_000_000

Fit = Literal["stretch", "crop", "pad"]
Interpolation = Literal["bilinear", "bicubic", "nearest", "lanczos"]
_RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    """How a file becomes the backbone's input: the size, how the painting is fitted and resampled, normalization.

    With `tiles` > 1 the painting is fitted to a square `tiles` times larger, and the backbone sees it both whole
    (averaged down to `size`) and as a grid of `tiles` x `tiles` squares of `size` pixels (see
    `artistid.backbones.Backbone`): the brushwork of a large scan survives while each view keeps the scale the network
    was trained at.

    With `centre`, the backbone also sees the central square of half the side at `size` pixels: in a photo of a
    painting on a wall that square is the painting's own surface, without its frame and the room around it.
    """

    size: int = 224
    fit: Fit = "stretch"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    tiles: int = 1
    interpolation: Interpolation = "bilinear"  # as the network was trained (timm's pretrained config says which)
    centre: bool = False

    def __post_init__(self) -> None:
        if self.fit not in ("stretch", "crop", "pad"):
            raise UsageError(f"fit must be one of stretch, crop, pad; got {self.fit!r}")
        if self.interpolation not in _RESAMPLING:
            raise UsageError(f"interpolation must be one of {', '.join(_RESAMPLING)}; got {self.interpolation!r}")
        if not 16 <= self.size <= 2048:
            raise UsageError(f"size must be between 16 and 2048 pixels; got {self.size}")
        if not 1 <= self.tiles <= 8 or self.side > 4096:
            raise UsageError(f"tiles must be between 1 and 8, and tiles x size at most 4096 pixels; got {self.tiles}")
        if self.centre and self.tiles > 2:
            raise UsageError(f"the centre view takes 1 or 2 tiles (its square is half the side); got {self.tiles}")

    @property
    def side(self) -> int:
        """The side of the square the painting is fitted to, in pixels."""
        return self.size * max(self.tiles, 2 if self.centre else 1)

    def key(self) -> str:
        """A short string naming everything that changes the pixels; part of the feature cache key."""
        key = f"decode-v1/{self.size}/{self.fit}/{self.mean}/{self.std}"
        if self.tiles != 1:
            key += f"/tiles{self.tiles}"
        if self.centre:
            key += "/centre"
        return key if self.interpolation == "bilinear" else f"{key}/{self.interpolation}"


def _explain(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "out of memory while decoding (the image needs more memory than this process may use)"
    reason = str(exc) or type(exc).__name__
    if not isinstance(exc, OSError | ValueError | SyntaxError | EOFError):  # unexpected here: name its kind
        reason = f"{type(exc).__name__}: {reason}"
    return f"truncated or corrupt image data ({reason})" if "truncat" in reason.lower() else reason


def _open_checked(data: bytes, name: str, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 Mpx, below large museum scans: `max_pixels` below is the limit that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NotAnImageError(name, "not an image Pillow can read") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageError(name, f"over Pillow's limit of {limit} pixels (possible decompression bomb)") from None
    except Exception as exc:  # a codec may raise anything on a hostile file: it is that file's error
        raise ImageError(name, f"cannot open image: {_explain(exc)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            name, f"{width}x{height} pixels is over the limit of {max_pixels} (possible decompression bomb)"
        )
    if width < 1 or height < 1:
        raise ImageError(name, f"image has no pixels ({width}x{height})")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Pillow's own conversion clips 16-bit values at 255; scale the range instead.
        pixels = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        image = Image.fromarray(np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        # Transparent areas are painted white, as the reference design did for PNG paintings.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _fit(image: Image.Image, size: int, fit: Fit, interpolation: Interpolation = "bilinear") -> Image.Image:
    resampling = _RESAMPLING[interpolation]
    if fit == "stretch":
        return image.resize((size, size), resampling)
    if fit == "crop":
        return ImageOps.fit(image, (size, size), resampling)
    return ImageOps.pad(image, (size, size), resampling, color=(255, 255, 255))


def decode_image(data: bytes, name: str, *, max_pixels: int = MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decodes bytes into an upright RGB image; raises `ImageError` naming `name` and the reason.

    `draft_size` lets a JPEG decode at a reduced scale (DCT scaling) whose sides stay at least that large,
    several times faster than a full decode of a large scan.
    """
    image = _open_checked(data, name, max_pixels)
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        if draft_size is not None and image.format == "JPEG":
            image.draft(image.mode if image.mode in ("RGB", "L", "CMYK") else "RGB", (draft_size, draft_size))
        image = ImageOps.exif_transpose(image)
        image.load()
        return _to_rgb(image)
    except ImageError:
        raise
    except Exception as exc:  # a codec may raise anything on a hostile file: it is that file's error
        raise ImageError(name, f"cannot decode image: {_explain(exc)}") from None


def load_image(
    source: bytes | str | Path | Image.Image,
    preprocess: Preprocess | None = None,
    *,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Returns the backbone's input for one image: a uint8 array of shape (side, side, 3).

    `source` is the file's bytes, a local path, or an already opened PIL image.
    """
    preprocess = preprocess or Preprocess()
    if isinstance(source, Image.Image):
        image = _to_rgb(ImageOps.exif_transpose(source))
    else:
        if isinstance(source, str | Path):
            name = name or str(source)
            try:
                data = Path(source).read_bytes()
            except OSError as exc:
                raise ImageError(name, f"cannot read file: {exc.strerror or exc}") from None
        else:
            data = source
        image = decode_image(data, name or "<bytes>", max_pixels=max_pixels, draft_size=preprocess.side)
    try:
        return np.asarray(_fit(image, preprocess.side, preprocess.fit, preprocess.interpolation), dtype=np.uint8)
    except Exception as exc:
        raise ImageError(name or "<image>", f"cannot resize image: {_explain(exc)}") from None
