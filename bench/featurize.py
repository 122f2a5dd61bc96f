"""Featurizing speed, in one run on this machine: model only, cold, warm (cached), and large JPEGs.

make bench            # or: .venv/bin/python bench/featurize.py [--data ../shared/datasets/paintings3/Train]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from artistid.backbones import create_backbone
from artistid.datasets import Sample, load_split
from artistid.features import FeatureCache, FeatureExtractor, featurize

ROOT = Path(__file__).resolve().parents[1]


def model_only(extractor: FeatureExtractor, batch: int = 16, seconds: float = 8.0) -> float:
    pixels = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    extractor(pixels)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        extractor(pixels)
        done += batch
    return done / (time.perf_counter() - started)


def large_jpegs(folder: Path, size: tuple[int, int], count: int) -> list[Sample]:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    texture = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    samples = []
    for i in range(count):
        path = folder / f"large-{size[0]}x{size[1]}-{i}.jpg"
        texture.rotate(i * 3).save(path, quality=90)  # distinct content: no cache hits between files
        samples.append(Sample(str(path), None))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/paintings3/Train"))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--large", type=int, default=48, help="large JPEGs generated per size")
    args = parser.parse_args()

    results: dict[str, float | str] = {"backbone": args.backbone, "threads": torch.get_num_threads()}
    backbone = create_backbone(args.backbone)
    for precision in ("fp32", "bf16"):
        results[f"model_only_{precision}"] = model_only(FeatureExtractor(backbone, precision=precision))
    extractor = FeatureExtractor(backbone)
    results["precision"] = extractor.precision

    samples, _ = load_split(args.data)
    with tempfile.TemporaryDirectory() as scratch:
        with FeatureCache(Path(scratch) / "cache") as cache:
            cold = featurize(samples, extractor, cache=cache, progress=False)
            results["cold_img_s"] = len(cold) / cold.seconds
            warm = featurize(samples, extractor, cache=cache, progress=False)
            results["warm_img_s"] = len(warm) / warm.seconds
        for size in ((2000, 1600), (4000, 3000)):
            folder = Path(scratch) / f"{size[0]}x{size[1]}"
            folder.mkdir()
            large = large_jpegs(folder, size, args.large)
            result = featurize(large, extractor, cache=None, progress=False)
            results[f"large_{size[0]}x{size[1]}_img_s"] = len(result) / result.seconds
    results["images"] = len(samples)
    results["cold_vs_model_only"] = results["cold_img_s"] / results[f"model_only_{extractor.precision}"]

    print(f"{'measure':<28} {'value':>10}")
    for key, value in results.items():
        print(f"{key:<28} {value:>10.2f}" if isinstance(value, float) else f"{key:<28} {value!s:>10}")
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
    main()
