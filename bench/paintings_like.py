"""A generated collection of paintings-like JPEGs for scale benchmarks: smooth colour fields with brush-like texture,
512-2000 px on each side, made once and cached outside the repository.

    .venv/bin/python bench/paintings_like.py --count 20000 [--folder ~/.cache/artistid-bench/paintings-like]
"""

from __future__ import annotations

import argparse
import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_FOLDER = Path(os.environ.get("ARTISTID_BENCH_DATA", Path.home() / ".cache" / "artistid-bench")) / "paintings"
ARTISTS = ("Painter_A", "Painter_B", "Painter_C", "Painter_D")


def paintings_like_jpeg(seed: int) -> bytes:
    """One JPEG: a few blended colour fields, texture at a quarter of the size (brushwork), quality 80."""
    rng = np.random.default_rng(seed)
    width, height = (int(side) for side in rng.integers(512, 2001, size=2))
    fields = rng.integers(0, 256, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    base = Image.fromarray(fields, "RGB").resize((width // 4, height // 4), Image.Resampling.BICUBIC)
    strokes = rng.integers(-40, 40, size=(height // 4, width // 4, 1), dtype=np.int16)
    textured = np.clip(np.asarray(base, np.int16) + strokes, 0, 255).astype(np.uint8)
    image = Image.fromarray(textured, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def image_path(folder: Path, seed: int) -> Path:
    """Where image `seed` lives: one folder per (made-up) artist, so the collection reads as a dataset."""
    return folder / ARTISTS[seed % len(ARTISTS)] / f"painting-{seed:06d}.jpg"


def _write(args: tuple[Path, int]) -> None:
    folder, seed = args
    target = image_path(folder, seed)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_bytes(paintings_like_jpeg(seed))
    temporary.replace(target)  # a killed run leaves no half-written JPEG behind


def ensure_collection(folder: Path, seeds: range, workers: int | None = None) -> list[Path]:
    """The images for `seeds`, generating only those not on disk yet."""
    for artist in ARTISTS:
        (folder / artist).mkdir(parents=True, exist_ok=True)
    missing = [(folder, seed) for seed in seeds if not image_path(folder, seed).exists()]
    if missing:
        with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
            for _ in pool.map(_write, missing, chunksize=64):
                pass
    return [image_path(folder, seed) for seed in seeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    paths = ensure_collection(args.folder, range(args.count), args.workers)
    total = sum(path.stat().st_size for path in paths)
    print(f"{len(paths)} images, {total / 1e9:.2f} GB in {args.folder}")


if __name__ == "__main__":
    main()
