"""Storage benchmarks: fetch throughput with 1 vs 8 workers from Azure Blob (Azurite on loopback) and from an
HTTP server on loopback that adds 50 ms before each answer (a distant store), and the perceptual-hashing
throughput of `prepare` with reduced-size JPEG decoding against a full decode.

    make bench-storage            # or: .venv/bin/python bench/storage.py [--files 300] [--repeat 2]

Uses ../shared/datasets/paintings3 (original files, up to ~3000 px) where present, synthetic JPEGs otherwise.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Azurite launcher the tests use

from azurite import Azurite  # noqa: E402
from conftest_storage import FaultyHTTPServer  # noqa: E402

from artistid import storage  # noqa: E402
from artistid.datasets import Sample  # noqa: E402
from artistid.fetch import fetch  # noqa: E402
from artistid.images import decode_image  # noqa: E402
from artistid.prepare import hash_images  # noqa: E402
from artistid.runtimes import machine  # noqa: E402

PAINTINGS3 = ROOT.parent / "shared" / "datasets" / "paintings3"


def _images(count: int) -> list[tuple[str, bytes]]:
    # Every third file, so all artists and sizes (224 px WikiArt to ~3000 px scans) are in the sample.
    files = sorted((PAINTINGS3 / "Train").rglob("*.jpg"))[::3][:count] if PAINTINGS3.is_dir() else []
    if files:
        return [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in files]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((1600, 1200), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        out.append((f"Synthetic/{i}.jpg", buffer.getvalue()))
    return out


def _time_fetch(source: str, count: int, workers: int, repeat: int, options: dict | None) -> float:
    best = float("inf")
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as destination:
            start = time.perf_counter()
            report = fetch(source, destination, workers=workers, storage_options=options, progress=False)
            best = min(best, time.perf_counter() - start)
            if report.failed or len(report.fetched) != count:
                raise SystemExit(f"fetch failed: {report.summary()}")
    return best


def _row(what: str, count: int, total: int, seconds: float) -> str:
    rate = f"{count / seconds:.0f} files/s, {total / 1e6 / seconds:.1f} MB/s"
    return f"| {what} | {count} files, {total / 1e6:.1f} MB | {seconds:.2f} s | {rate} |"


def bench_fetch(files: list[tuple[str, bytes]], repeat: int) -> list[str]:
    total = sum(len(data) for _, data in files)
    rows = []
    with Azurite() as azurite:
        container = f"bench-{uuid.uuid4().hex[:8]}"
        for name, data in files:
            storage.write_bytes_atomic(f"az://{container}/Train/{name}", data, azurite.storage_options)
        for workers in (1, 8):
            seconds = _time_fetch(f"az://{container}", len(files), workers, repeat, azurite.storage_options)
            rows.append(_row(f"fetch a prefix from Azurite, {workers} workers", len(files), total, seconds))
    with FaultyHTTPServer() as server, tempfile.TemporaryDirectory() as folder:
        server.latency = 0.05
        lines = []
        for name, data in files:
            server.files[name] = data
            lines.append(f"{server.url(name)} Train/{os.path.dirname(name)} {os.path.basename(name)}")
        manifest = Path(folder) / "manifest.txt"
        manifest.write_text("\n".join(lines) + "\n")
        for workers in (1, 8):
            seconds = _time_fetch(str(manifest), len(files), workers, 1, None)
            rows.append(_row(f"fetch a manifest over HTTP, 50 ms latency, {workers} workers", len(files), total,
                             seconds))  # fmt: skip
    return rows


def _hash_full(data: bytes, name: str) -> None:
    image = decode_image(data, name)
    imagehash.phash(image)
    imagehash.dhash(image)


def bench_hashing(repeat: int) -> list[str]:
    rows = []
    sets = [("paintings3/raw (<= 384 px)", PAINTINGS3 / "raw"), ("paintings3/Train (originals)", PAINTINGS3 / "Train")]
    for label, folder in sets:
        if not folder.is_dir():
            continue
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        samples = [Sample(str(p), p.parent.name) for p in paths]
        for workers in (1, os.cpu_count() or 1):
            best = float("inf")
            for _ in range(repeat):
                start = time.perf_counter()
                hashed, _ = hash_images(samples, workers=workers)
                best = min(best, time.perf_counter() - start)
            rows.append(f"| hash for prepare, draft decode, {workers} thread(s) | {label}, {len(hashed)} images | "
                        f"{best:.2f} s | {len(hashed) / best:.0f} images/s |")  # fmt: skip
        start = time.perf_counter()
        for p in paths:
            _hash_full(p.read_bytes(), str(p))
        seconds = time.perf_counter() - start
        rows.append(f"| hash after a full decode, 1 thread | {label}, {len(paths)} images | {seconds:.2f} s | "
                    f"{len(paths) / seconds:.0f} images/s |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300, help="images to upload and fetch")
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting; the best is reported")
    args = parser.parse_args()
    print(f"machine: {machine().describe()}", flush=True)
    logging.basicConfig(level=logging.ERROR)
    print(f"# bench/storage.py on {os.cpu_count()} cores")
    print("| what | data | time | throughput |\n|---|---|---|---|")
    for row in bench_fetch(_images(args.files), args.repeat) + bench_hashing(args.repeat):
        print(row, flush=True)


if __name__ == "__main__":
    main()
