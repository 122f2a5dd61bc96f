"""Featurizing speed, in one run on this machine: every runtime side by side, cold, warm, the peer, large JPEGs.

- model only: images/s of each runtime and precision this machine offers (PyTorch, ONNX Runtime, OpenVINO; bf16
  only where native), for the default recipe's backbone (224 px, style statistics) and for `--preset best`'s
  (512 px, whole + 2 x 2 squares: five passes per painting).
- cold featurize (empty cache) of paintings3/Train with PyTorch and with the runtime `auto` picks.
- warm featurize as a whole process (`artistid featurize`, every vector cached, the package's bytecode written as an
  install writes it; the median of five after one uncounted run), against the tutorial-style peer's throughput
  (bench/peer.py, one epoch, whole process) measured in the same run, and against the floor of that work: a script
  that only imports NumPy and pyarrow, reads the same cached vectors from SQLite and writes them to Parquet.

    make bench            # or: .venv/bin/python bench/featurize.py [--data ../shared/datasets/paintings3/Train]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from peer import whole_process
from PIL import Image
from processes import compile_package, median_seconds

from artistid.datasets import Sample, load_split
from artistid.features import FeatureCache, FeatureExtractor, featurize
from artistid.runtimes import candidates, create_engine, machine, probe
from artistid.train import PRESETS, backbone_for

ROOT = Path(__file__).resolve().parents[1]


# What no warm featurize can skip: start Python, import NumPy and pyarrow, read the vectors, write Parquet, sync.
FLOOR = """
import os, sqlite3, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
rows = sqlite3.connect(sys.argv[1]).execute("SELECT vector FROM features").fetchall()
matrix = np.stack([np.frombuffer(blob, np.float32) for blob, in rows])
values = pa.Array.from_buffers(pa.float32(), matrix.size, [None, pa.py_buffer(matrix.reshape(-1))])
table = pa.table({"features": pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])})
pq.write_table(table, sys.argv[2], compression="none", use_dictionary=False)
descriptor = os.open(sys.argv[2], os.O_RDONLY)
os.fsync(descriptor)
print(len(rows))
"""


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


def model_only(preset: str, seconds: float) -> dict[str, float]:
    backbone = backbone_for(PRESETS[preset])
    speeds = {}
    for runtime, precision in candidates("auto", "auto"):
        engine = create_engine(runtime, backbone, precision)
        speeds[f"{runtime}/{precision}"] = probe(engine, backbone.preprocess.side, seconds)
        print(json.dumps({"model_only": preset, f"{runtime}/{precision}": round(speeds[f"{runtime}/{precision}"], 2)}))
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/paintings3/Train"))
    parser.add_argument("--seconds", type=float, default=5.0, help="per model-only measurement")
    parser.add_argument("--large", type=int, default=24, help="large JPEGs generated per size")
    parser.add_argument("--limit", type=int, help="featurize only this many images of DATA (spread evenly)")
    args = parser.parse_args()
    print(f"machine: {machine().describe()}", flush=True)

    results: dict[str, object] = {"machine": machine().describe()}
    for preset in ("standard", "best"):
        results[f"model_only_{preset}"] = model_only(preset, args.seconds)

    settings = PRESETS["standard"]
    samples, _ = load_split(args.data)
    if args.limit:
        samples = samples[:: max(1, len(samples) // args.limit)][: args.limit]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for runtime in ("torch", "auto"):
            extractor = FeatureExtractor(backbone_for(settings), runtime=runtime)
            with FeatureCache(work / f"cache-{runtime}") as cache:
                cold = featurize(samples, extractor, cache=cache, progress=False)
            name = f"cold_{extractor.runtime}_{extractor.precision}"
            results[name] = len(cold) / cold.seconds
            print(json.dumps({name: round(len(cold) / cold.seconds, 2), "images": len(cold)}), flush=True)
        # Warm, whole process: the command a user types, every vector cached by the run above.
        compile_package()
        command = [sys.executable, "-m", "artistid.cli", "featurize", args.data, "-o", str(work / "f.parquet")]
        listed = work / "images.map"  # the same images, as a map file the command reads
        listed.write_text("".join(f"{s.path}\t{s.label}\n" for s in samples))
        command[4] = str(listed)
        # The default recipe's cut, so that every vector is the cached one.
        cut = [option for node in settings.feature_nodes or () for option in ("--feature-node", node)]
        cut += ["--pooling", settings.pooling, "--centre" if settings.centre else "--no-centre"]
        warm = median_seconds([*command, *cut, "--cache-dir", str(work / "cache-auto"), "-q"])
        results["warm_process_img_s"] = len(samples) / warm
        with FeatureCache(work / "cache-auto") as cache:  # the cold run's vectors: these images' and no others
            floor = median_seconds([sys.executable, "-c", FLOOR, str(cache.path), str(work / "floor.parquet")])
        results["floor_process_img_s"] = len(samples) / floor
        print(json.dumps({k: round(float(results[k]), 1) for k in ("warm_process_img_s", "floor_process_img_s")}))
        for size in ((2000, 1600), (4000, 3000)):
            folder = work / f"{size[0]}x{size[1]}"
            folder.mkdir()
            large = large_jpegs(folder, size, args.large)
            result = featurize(large, extractor, cache=None, progress=False)
            results[f"large_{size[0]}x{size[1]}_img_s"] = len(result) / result.seconds
    peer = whole_process(str(Path(args.data).parent), 1, args.limit)
    results["peer_process_img_s"] = peer["process_images_per_s"]
    for key in ("warm", "floor"):
        results[f"{key}_vs_peer"] = float(results[f"{key}_process_img_s"]) / peer["process_images_per_s"]  # type: ignore[arg-type]

    print(f"\nmachine: {machine().describe()}\n")
    print("| model only (images/s) | " + " | ".join(results["model_only_standard"]) + " |")  # type: ignore[arg-type]
    print("|---|" + "---|" * len(results["model_only_standard"]))  # type: ignore[arg-type]
    for preset in ("standard", "best"):
        speeds = results[f"model_only_{preset}"]
        print(f"| {preset} | " + " | ".join(f"{v:.1f}" for v in speeds.values()) + " |")  # type: ignore[union-attr]
    for key, value in results.items():
        if not key.startswith("model_only") and key != "machine":
            print(f"{key:<28} {value:>10.2f}")  # type: ignore[str-format]
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
    main()
