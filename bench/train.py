"""`artistid train` against the tutorial-style peer (bench/peer.py), every contestant a whole process, one run.

The peer runs the frozen backbone on every minibatch of every epoch (7 epochs). artistid featurizes once: cold is
an empty feature cache (decoding and featurizing every image, the head and the 5-fold calibration, evaluation on
Test), warm the same command again with every vector cached (`--force`: the head is trained again; the median of
three runs). The package's bytecode is written first, as an install writes it. Both presets run: the default
("standard") and `--preset reference`, the reference design's recipe. Then the default model names the artist of
one painting whose vector is not cached (`artistid predict MODEL PAINTING --no-cache`, the median of five).

    make bench-train      # or: .venv/bin/python bench/train.py [--data ../shared/datasets/paintings3] [--epochs 7]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peer import whole_process
from processes import compile_package, median_seconds

from artistid.runtimes import machine

ROOT = Path(__file__).resolve().parents[1]


def artistid_train(data: str, output: Path, cache: Path, *options: str) -> dict[str, object]:
    command = [sys.executable, "-m", "artistid.cli", "train", data, "-o", str(output), "--cache-dir", str(cache)]
    started = time.perf_counter()
    done = subprocess.run([*command, *options, "--json", "-q"], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "accuracy": json.loads(done.stdout)["metrics"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/paintings3"))
    parser.add_argument("--epochs", type=int, default=7, help="the peer's epochs")
    parser.add_argument("--warm", type=int, default=3, help="warm runs per preset (their median is reported)")
    args = parser.parse_args()
    print(f"machine: {machine().describe()}", flush=True)
    compile_package()
    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for preset in ("standard", "reference"):
            cache = work / f"cache-{preset}"
            model = work / f"{preset}.safetensors"
            rows[f"{preset} cold"] = artistid_train(args.data, model, cache, "--preset", preset)
            print(json.dumps({f"{preset} cold": rows[f"{preset} cold"]}), flush=True)
            # A warm run takes seconds, so the machine's moment shows in it: the median of a few.
            warm = [artistid_train(args.data, model, cache, "--preset", preset, "--force") for _ in range(args.warm)]
            print(json.dumps({f"{preset} warm": warm}), flush=True)
            rows[f"{preset} warm"] = sorted(warm, key=lambda run: float(run["seconds"]))[len(warm) // 2]  # type: ignore[arg-type]
        # Then using the default model: one painting whose vector is not cached (its feature graph is, since training).
        painting = str(min(Path(args.data, "Test").rglob("*.jpg")))
        command = [sys.executable, "-m", "artistid.cli", "predict", str(work / "standard.safetensors"), painting]
        predict_seconds = median_seconds([*command, "--no-cache"])
        print(json.dumps({"predict one painting": predict_seconds}), flush=True)
    peer = whole_process(args.data, args.epochs)
    print(json.dumps({"peer": peer}), flush=True)
    print("\n| contestant (whole process, paintings3) | seconds | Test accuracy | peer's time / this |")
    print("|---|---|---|---|")
    print(f"| tutorial peer, {args.epochs} epochs | {peer['process_s']:.1f} | - | 1.0x |")
    for name, row in rows.items():
        seconds = float(row["seconds"])  # type: ignore[arg-type]
        ratio = float(peer["process_s"]) / seconds
        print(f"| artistid train, {name} | {seconds:.1f} | {float(row['accuracy']):.1%} | {ratio:.1f}x |")  # type: ignore[arg-type]
    print(f"\nartistid predict MODEL one-painting.jpg --no-cache (whole process, median of 5): {predict_seconds:.2f} s")


if __name__ == "__main__":
    main()
