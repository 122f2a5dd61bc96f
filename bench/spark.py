"""Spark engine at scale, on a real standalone cluster on this machine: featurize throughput on one and two
one-core workers, the driver's peak memory, and a rerun from the feature store after the collection grows by 1%.

    make bench-spark     # or: .venv/bin/python bench/spark.py [--count 20000] [--subset 400] [--json out.json]

The collection is generated once (bench/paintings_like.py: paintings-like JPEGs, 512-2000 px) and cached outside the
repository. Phases, each on a fresh cluster from tests/spark_cluster.py (executors of 512 MiB):
  1. one worker, the first `--subset` images, no store: throughput of one core;
  2. two workers, the same images: throughput of two cores;
  3. two workers, all `--count` images, an empty feature store: throughput at scale, and the store is filled;
  4. two workers, the collection grown by `--grow` (1%): what a rerun from the store costs.
The driver's memory (its Python and its JVM, sampled every 0.2 s) is reported per phase: flat, because vectors go
from the executors to Parquet and the store, never through the driver.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from paintings_like import ARTISTS, DEFAULT_FOLDER, ensure_collection  # noqa: E402
from spark_cluster import EXECUTOR_MEMORY, StandaloneCluster  # noqa: E402

from artistid import spark as engine  # noqa: E402
from artistid.backbones import create_backbone  # noqa: E402
from artistid.datasets import Sample  # noqa: E402
from artistid.feature_store import FeatureStore  # noqa: E402
from artistid.features import FeatureExtractor  # noqa: E402
from artistid.runtimes import machine  # noqa: E402


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakMemory:
    """Samples the resident memory of some processes until stopped; keeps each one's peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids, self.peaks = pids, dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for name, pid in self.pids.items():
                self.peaks[name] = max(self.peaks[name], _rss_mib(pid))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _phase(
    name: str, cluster: StandaloneCluster, samples: list[Sample], extractor: FeatureExtractor, folder: Path,
    store: FeatureStore | None,
) -> dict[str, Any]:  # fmt: skip
    spark = engine.spark_session(
        cluster.url,
        app_name=f"artistid-bench {name}",
        conf={
            "spark.executor.memory": EXECUTOR_MEMORY,
            "spark.cores.max": str(cluster.workers),
            "spark.scheduler.minRegisteredResourcesRatio": "1.0",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
        },
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        # A small warm-up job: executors start and load the backbone before the clock runs.
        engine.featurize(samples[: 4 * cluster.workers], extractor, str(folder / "warm.parquet"), spark=spark)
        jvm = spark.sparkContext._gateway.proc.pid  # type: ignore[attr-defined]
        with PeakMemory({"driver_python": os.getpid(), "driver_jvm": jvm}) as memory:
            run = engine.featurize(samples, extractor, str(folder / f"{name}.parquet"), spark=spark, store=store)
    finally:
        spark.stop()
        shutil.rmtree(folder / f"{name}.parquet", ignore_errors=True)
    row = {
        "workers": cluster.workers,
        "images": run.images,
        "featurized": run.featurized,
        "reused": run.reused,
        "skipped": len(run.errors),
        "seconds": round(run.seconds, 1),
        "images_per_s": round(run.images / run.seconds, 2),
        "partitions": run.partitions,
        "driver_python_peak_mib": round(memory.peaks["driver_python"]),
        "driver_jvm_peak_mib": round(memory.peaks["driver_jvm"]),
    }
    print(json.dumps({name: row}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="images in the collection")
    parser.add_argument("--subset", type=int, default=400, help="images for the one- vs two-worker comparison")
    parser.add_argument("--grow", type=float, default=0.01, help="share of new images before the rerun")
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="where the generated collection is cached")
    # fp32 by default: the figures compare across machines, whether or not they have native bf16.
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)

    grown = args.count + round(args.count * args.grow)
    paths = ensure_collection(args.folder, range(grown))
    samples = [Sample(str(path), path.parent.name) for path in paths]
    assert {s.label for s in samples} <= set(ARTISTS)
    extractor = FeatureExtractor(create_backbone("efficientnet_lite0"), precision=args.precision)
    print(f"machine: {machine().describe()}; precision {extractor.precision}; {len(samples)} images in {args.folder}")
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)

    results: dict[str, Any] = {"machine": machine().describe(), "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="artistid-bench-spark-") as scratch:
        folder = Path(scratch)
        store = FeatureStore(str(folder / "store"))

        def record(name: str, row: dict[str, Any]) -> None:
            results[name] = row
            if args.json:  # after every phase: a long run that is stopped keeps what it measured
                args.json.write_text(json.dumps(results, indent=2))

        with StandaloneCluster(workers=1) as cluster:
            record("1 worker", _phase("one-worker", cluster, samples[: args.subset], extractor, folder, None))
        with StandaloneCluster(workers=2) as cluster:
            record("2 workers", _phase("two-workers", cluster, samples[: args.subset], extractor, folder, None))
            record(
                "2 workers, all, empty store",
                _phase("all", cluster, samples[: args.count], extractor, folder, store),
            )
            record("2 workers, +1%, from the store", _phase("rerun", cluster, samples, extractor, folder, store))
    speedup = results["2 workers"]["images_per_s"] / results["1 worker"]["images_per_s"]
    results["speedup_2_over_1"] = round(speedup, 2)
    record("load_after", os.getloadavg()[0])  # type: ignore[arg-type]

    print("\n| run | images | featurized | reused | seconds | images/s | driver peak (Python / JVM) |")
    print("|---|---|---|---|---|---|---|")
    for name, row in results.items():
        if isinstance(row, dict):
            print(
                f"| {name} | {row['images']} | {row['featurized']} | {row['reused']} | {row['seconds']} "
                f"| {row['images_per_s']} | {row['driver_python_peak_mib']} / {row['driver_jvm_peak_mib']} MiB |"
            )
    print(f"\nspeedup two workers / one worker: {speedup:.2f}x; load average after: {results['load_after']:.2f}")


if __name__ == "__main__":
    main()
