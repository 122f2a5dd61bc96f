"""Images made on purpose: paintings photographed in their frames, and things that are not paintings.

`photograph` turns a painting into a visitor's photo of it: framed, slightly turned, under other light, on a wall
or in a given scene (training gives another of its paintings `out_of_focus`: a museum's room), filling half the
picture or more. Training adds such photos of its paintings to what the "not a painting" gate knows, so a
photographed painting is still answered. `non_paintings` makes what must be
refused as not a painting (noise, flat colours, gradients, scanned letters, screenshots, tiny images), for the
tests and `bench/refusals.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["NON_PAINTING_KINDS", "non_paintings", "out_of_focus", "photograph", "wall"]

_PHOTO_SIZE = (400, 300)  # small: the backbone sees 224 pixels, and training makes hundreds
_FRAME_COLOURS = ((120, 80, 40), (190, 150, 70), (30, 25, 20), (230, 225, 215))
_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have "
    "an they you were her she all we one said there each what so up out if about who get go me when make can like time"
)


def wall(rng: np.random.Generator, size: tuple[int, int] = _PHOTO_SIZE) -> Image.Image:
    """A plain wall above a floor, softly lit from above: where paintings hang."""
    # Made at half the size and enlarged: the enlargement softens the grain as a blur would, at a quarter the cost.
    width, height = max(1, size[0] // 2), max(1, size[1] // 2)
    shade = 1 - 0.3 * np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    pixels = rng.integers(40, 230, 3).astype(np.float32) * shade + _grain(rng, (height, width, 3), rng.uniform(2, 12))
    floor = int(height * rng.uniform(0.8, 1.0))
    pixels[floor:] = rng.integers(30, 160, 3) + _grain(rng, (height - floor, width, 3), 8)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)


def out_of_focus(image: Image.Image, size: tuple[int, int] = _PHOTO_SIZE) -> Image.Image:
    """`image` as the room behind a photographed painting, out of focus: a museum's other paintings."""
    half = (max(1, size[0] // 2), max(1, size[1] // 2))
    blurred = image.convert("RGB").resize(half, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(2))
    return blurred.resize(size, Image.Resampling.BILINEAR)


def _grain(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _perspective(source: list[tuple[float, float]], target: list[tuple[float, float]]) -> tuple[float, ...]:
    """Pillow's PERSPECTIVE coefficients: the map from each `target` point of the output to its `source` point."""
    equations, values = [], []
    for (x, y), (u, v) in zip(target, source, strict=True):
        equations += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        values += [u, v]
    return tuple(float(c) for c in np.linalg.solve(np.asarray(equations), np.asarray(values)))


def photograph(
    painting: Image.Image,
    rng: np.random.Generator,
    *,
    background: Image.Image | None = None,
    fill: tuple[float, float] = (0.5, 0.85),
    size: tuple[int, int] = _PHOTO_SIZE,
) -> Image.Image:
    """A photo of `painting` in a frame, slightly turned and tilted, filling a share `fill` of the picture.

    The photo is `size` pixels (width, height); a `background` is resized to it.
    """
    width, height = size
    scene = (background.convert("RGB").resize(size) if background is not None else wall(rng, size)).copy()
    border = max(painting.size) * rng.uniform(0.03, 0.08)
    tint = np.array(_FRAME_COLOURS[rng.integers(len(_FRAME_COLOURS))]) + rng.integers(-15, 15, 3)
    red, green, blue = (int(c) for c in np.clip(tint, 0, 255))
    framed_w, framed_h = painting.width + 2 * border, painting.height + 2 * border
    scale = (rng.uniform(*fill) * width * height / (framed_w * framed_h)) ** 0.5
    scale *= min(1.0, (width - 10) / (framed_w * scale), (height - 10) / (framed_h * scale))
    side_w, side_h = max(2, int(framed_w * scale)), max(2, int(framed_h * scale))
    edge = max(1, int(border * scale))
    # The painting is resized once, straight to its size in the photo, and framed there.
    canvas = painting.convert("RGB").resize(
        (max(1, side_w - 2 * edge), max(1, side_h - 2 * edge)), Image.Resampling.BILINEAR, reducing_gap=2.0
    )
    framed = Image.new("RGBA", (side_w, side_h), (red, green, blue, 255))
    framed.paste(canvas, (edge, edge))
    # Seen from a little to one side (the far edge of the frame is shorter) and tilted: one perspective warp.
    skew, w, h = float(rng.uniform(0.0, 0.08) * side_h), float(side_w), float(side_h)
    corners = [(0.0, 0.0), (0.0, h), (w, h - skew), (w, skew)]
    if rng.random() < 0.5:
        corners = [(0.0, skew), (0.0, h - skew), (w, h), (w, 0.0)]
    angle = np.deg2rad(rng.uniform(-3, 3))
    turned = [(x * np.cos(angle) + y * np.sin(angle), y * np.cos(angle) - x * np.sin(angle)) for x, y in corners]
    left, top = min(x for x, _ in turned), min(y for _, y in turned)
    turned = [(x - left, y - top) for x, y in turned]
    size = (int(np.ceil(max(x for x, _ in turned))), int(np.ceil(max(y for _, y in turned))))
    flat = [(0.0, 0.0), (0.0, h), (w, h), (w, 0.0)]
    warped = framed.transform(size, Image.Transform.PERSPECTIVE, _perspective(flat, turned), Image.Resampling.BILINEAR)
    x = int(rng.integers(0, max(1, width - warped.width)))
    y = int(rng.integers(0, max(1, height - warped.height)))
    scene.paste(warped, (x, y), warped)
    lit = np.asarray(scene, dtype=np.float32) * np.float32(rng.uniform(0.8, 1.1)) + np.float32(rng.uniform(-15, 15))
    lit += _grain(rng, lit.shape, 3)
    photo = Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8))
    return photo.filter(ImageFilter.BoxBlur(rng.uniform(0, 0.4)))


NON_PAINTING_KINDS = ("noise", "flat", "gradient", "letter", "screenshot", "tiny")


def _noise(rng: np.random.Generator) -> Image.Image:
    if rng.random() < 0.5:
        pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    else:
        pixels = np.clip(rng.normal(128, rng.uniform(20, 120), (480, 640, 3)), 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        pixels = np.repeat(pixels[..., :1], 3, axis=2)
    return Image.fromarray(pixels)


def _flat(rng: np.random.Generator) -> Image.Image:
    blank = ((255, 255, 255), (0, 0, 0), (128, 128, 128), (250, 248, 240))
    colour = blank[rng.integers(len(blank))] if rng.random() < 0.3 else tuple(int(c) for c in rng.integers(0, 256, 3))
    return Image.new("RGB", (640, 480), colour)


def _gradient(rng: np.random.Generator) -> Image.Image:
    along = np.linspace(0, 1, 640)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, 480)[:, None, None]
    start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    pixels = (start * (1 - along) + end * along) * np.ones((480, 640, 1))
    return Image.fromarray(pixels.astype(np.uint8))


def _sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(str(w) for w in rng.choice(_TEXT.split(), words)).capitalize()


def _letter(rng: np.random.Generator) -> Image.Image:
    page = Image.new("L", (850, 1100), int(rng.integers(225, 256)))
    draw = ImageDraw.Draw(page)
    size = int(rng.integers(14, 30))
    font = ImageFont.load_default(size=size)
    y = 80
    while y < 1020:
        draw.text((70, y), _sentence(rng, int(rng.integers(6, 14))) + ".", fill=int(rng.integers(0, 60)), font=font)
        y += int(size * 1.6) + (30 if rng.random() < 0.1 else 0)
    if rng.random() < 0.4:  # a scan: slightly turned and soft
        page = page.rotate(float(rng.uniform(-2, 2)), fillcolor=240).filter(ImageFilter.GaussianBlur(0.6))
    grain = np.asarray(page, dtype=np.float32) + rng.normal(0, 4, (page.height, page.width))
    return Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8)).convert("RGB")


def _screenshot(rng: np.random.Generator) -> Image.Image:
    def colour(low: int, high: int) -> tuple[int, int, int]:
        r, g, b = (int(c) for c in rng.integers(low, high, 3))
        return r, g, b

    screen = Image.new("RGB", (1280, 800), colour(200, 256))
    draw = ImageDraw.Draw(screen)
    font = ImageFont.load_default(size=18)
    draw.rectangle((0, 0, 1280, 60), fill=colour(0, 120))
    draw.rectangle((0, 60, 250, 800), fill=colour(150, 240))
    for row in range(12):
        draw.text((20, 80 + 50 * row), _sentence(rng, 2), fill=(30, 30, 30), font=font)
    for _ in range(int(rng.integers(3, 9))):
        x, y = int(rng.integers(280, 1000)), int(rng.integers(90, 700))
        box = (x, y, x + int(rng.integers(80, 280)), y + int(rng.integers(30, 90)))
        draw.rounded_rectangle(box, 8, fill=colour(0, 256))
    for row in range(15):
        draw.text((300, 100 + 40 * row), _sentence(rng, 8), fill=(20, 20, 20), font=font)
    return screen


def _tiny(rng: np.random.Generator) -> Image.Image:
    side = int(rng.choice([1, 2, 3, 4, 8, 12, 16]))
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


_MAKERS = {
    "noise": _noise,
    "flat": _flat,
    "gradient": _gradient,
    "letter": _letter,
    "screenshot": _screenshot,
    "tiny": _tiny,
}


def non_paintings(per_kind: int, seed: int = 0) -> Iterator[tuple[str, Image.Image]]:
    """`per_kind` images of each kind in NON_PAINTING_KINDS, as (kind, image)."""
    rng = np.random.default_rng(seed)
    for kind in NON_PAINTING_KINDS:
        for _ in range(per_kind):
            yield kind, _MAKERS[kind](rng)
