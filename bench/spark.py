"""Spark engine benchmark: featurize throughput on local[1] vs local[2] (the speedup from a second core), and the
overhead against the local engine on the same images.

    make bench-spark     # or: .venv/bin/python bench/spark.py [--limit 400] [--repeat 2] [--masters local[1] local[2]]

Uses ../shared/datasets/paintings3 (Train and Test, original files up to ~3000 px). Each Spark run first does a small
warm-up job, so executor start and backbone loading (a fixed cost per executor, reported as "startup") are apart
from the steady throughput that decides how a large job scales.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from artistid import spark as engine
from artistid.backbones import create_backbone
from artistid.datasets import load_dataset
from artistid.features import FeatureExtractor, featurize
from artistid.runtimes import machine

ROOT = Path(__file__).resolve().parents[1]
PAINTINGS3 = ROOT.parent / "shared" / "datasets" / "paintings3"


def _spark_run(master: str, samples: list, extractor: FeatureExtractor, folder: Path, repeat: int) -> dict[str, float]:
    started = time.perf_counter()
    spark = engine.spark_session(
        master, app_name="artistid-bench", conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        cores = spark.sparkContext.defaultParallelism
        # One small partition per core: every executor Python process starts and loads the backbone.
        engine.featurize(samples[: 2 * cores], extractor, str(folder / "warm.parquet"), spark=spark, partitions=cores)
        startup = time.perf_counter() - started
        runs = [
            engine.featurize(samples, extractor, str(folder / "features.parquet"), spark=spark) for _ in range(repeat)
        ]
        run = min(runs, key=lambda r: r.seconds)
    finally:
        spark.stop()
    return {
        "images": run.images,
        "seconds": run.seconds,
        "images_per_s": run.images / run.seconds,
        "startup_s": startup,
        "partitions": run.partitions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="use every n-th image so that about this many remain")
    parser.add_argument("--masters", nargs="+", default=["local[1]", "local[2]"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per engine; the best counts")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    print(f"machine: {machine().describe()}", flush=True)
    if not PAINTINGS3.is_dir():
        sys.exit(f"bench/spark.py needs the real paintings at {PAINTINGS3}")
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)

    samples = load_dataset(str(PAINTINGS3)).samples
    if args.limit and args.limit < len(samples):
        samples = samples[:: len(samples) // args.limit][: args.limit]  # every n-th: all artists and sizes
    extractor = FeatureExtractor(create_backbone("efficientnet_lite0"), precision=args.precision)
    print(f"{len(samples)} images of {PAINTINGS3}; precision {extractor.precision}; {os.cpu_count()} cores")
    print(f"load average before: {os.getloadavg()[0]:.2f}")

    results: dict[str, dict[str, float]] = {}
    local = min((featurize(samples, extractor, progress=False) for _ in range(args.repeat)), key=lambda f: f.seconds)
    results["local engine"] = {
        "images": len(local),
        "seconds": local.seconds,
        "images_per_s": len(local) / local.seconds,
        "startup_s": 0.0,
    }
    with tempfile.TemporaryDirectory() as folder:
        for master in args.masters:
            results[master] = _spark_run(master, samples, extractor, Path(folder), args.repeat)

    print("\n| engine | images | seconds | images/s | startup (s) |\n|---|---|---|---|---|")
    for name, row in results.items():
        print(
            f"| {name} | {row['images']:.0f} | {row['seconds']:.1f} | {row['images_per_s']:.1f} "
            f"| {row['startup_s']:.1f} |"
        )
    if "local[1]" in results and "local[2]" in results:
        speedup = results["local[2]"]["images_per_s"] / results["local[1]"]["images_per_s"]
        print(f"\nspeedup local[2] / local[1]: {speedup:.2f}x (target >= 1.6x)")
        results["speedup"] = {"local[2]/local[1]": speedup}
    best = max((r for k, r in results.items() if k.startswith("local[")), key=lambda r: r["images_per_s"])
    overhead = results["local engine"]["images_per_s"] / best["images_per_s"]
    print(f"local engine / best Spark throughput: {overhead:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
