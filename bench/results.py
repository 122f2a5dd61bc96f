"""The results table: accuracy, calibration error, rejection rates and training time per preset and dataset.

Each preset trains on the dataset's Train/ from a cold feature cache (the time includes featurizing and
calibration) and is evaluated on its Test/. Nothing is tuned on Test: the presets were chosen by cross-validation
on paintings3/Train. Loose images at the root of paintings3/Test are other artists ("unknown").

    make bench-results   # or: .venv/bin/python bench/results.py [--presets standard,reference,best]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from artistid.calibration import expected_calibration_error
from artistid.datasets import load_dataset
from artistid.evaluate import evaluate
from artistid.features import FeatureCache
from artistid.layer import softmax
from artistid.runtimes import machine
from artistid.train import preset, train

ROOT = Path(__file__).resolve().parents[1]


def measure(root: Path, name: str, cache_dir: Path) -> dict[str, object]:
    dataset = load_dataset(str(root))
    with FeatureCache(cache_dir) as cache:
        started = time.perf_counter()
        result = train(dataset.train, preset(name), cache=cache, progress=False)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        evaluation = evaluate(result.model, dataset.test, cache=cache, progress=False)
        test_seconds = time.perf_counter() - started
    metrics, calibration = evaluation.metrics, result.model.card.calibration
    known = np.array([t is not None for t in evaluation.truths])
    index = {c: i for i, c in enumerate(evaluation.classes)}
    truth = np.array([index[t] for t in evaluation.truths if t is not None])
    # The probabilities before temperature scaling: softmax(T * log p) = softmax(scores).
    temperature = calibration.temperature
    raw = softmax(np.log(np.maximum(evaluation.probabilities[known], 1e-300)) * temperature)
    return {
        "dataset": root.name,
        "preset": name,
        "accuracy": metrics["accuracy"],
        "n_test": metrics["n"],
        "ece_test_before": expected_calibration_error(raw, truth),
        "ece_test_after": metrics["ece"],
        "temperature": temperature,
        "threshold": metrics["threshold"],
        "false_rejection_rate": metrics["false_rejection_rate"],
        "unknown_rejection_rate": metrics["unknown_rejection_rate"],
        "n_unknown": metrics["unknown"]["n"],
        "validation_accuracy": calibration.validation_accuracy,
        "train_seconds": train_seconds,
        "featurize_seconds": result.featurize_seconds,
        "test_seconds": test_seconds,
    }


def _pct(value: object) -> str:
    return "-" if value is None else f"{float(value):.1%}"  # type: ignore[arg-type]


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| dataset | preset | Test accuracy | CV accuracy (Train) | ECE before -> after | known rejected | "
        "unknown rejected | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['preset']} | {_pct(r['accuracy'])} (n={r['n_test']}) | "
            f"{_pct(r['validation_accuracy'])} | {_pct(r['ece_test_before'])} -> {_pct(r['ece_test_after'])} | "
            f"{_pct(r['false_rejection_rate'])} | "
            + (f"{_pct(r['unknown_rejection_rate'])} (n={r['n_unknown']})" if r["n_unknown"] else "-")
            + f" | {float(r['train_seconds']) / 60:.1f} min |"  # type: ignore[arg-type]
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--names", default="paintings3,paintings10", help="Datasets to measure, comma-separated.")
    parser.add_argument("--presets", default="standard,reference", help="Presets to measure, comma-separated.")
    parser.add_argument("--cache-dir", type=Path, help="Feature cache [default: a new, empty one: cold timings].")
    parser.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    args = parser.parse_args()
    print(f"machine: {machine().describe()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="artistid-results-") as scratch:
        for dataset in args.names.split(","):
            for name in args.presets.split(","):
                row = measure(args.datasets / dataset, name, args.cache_dir or Path(scratch) / f"{dataset}-{name}")
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
