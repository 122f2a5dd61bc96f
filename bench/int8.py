"""Does post-training int8 quantization of the backbone keep the default recipe's accuracy? Cross-validated on Train.

The default recipe's feature graph (the cached ONNX export of `artistid.runtimes`) is quantized statically by ONNX
Runtime (QDQ, per-channel int8 weights, activations calibrated on Train images), then Train is featurized with
the fp32 and the int8 graph and each is scored by the default head (standardized L2 logistic regression, L-BFGS),
5-fold cross-validated on Train with the same splits. int8 is offered only if it loses at most 0.5 points.
Test/ is never read.

    .venv/bin/python bench/int8.py [--dataset ../shared/datasets/paintings3] [--calibration 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from artistid.backbones import create_backbone
from artistid.datasets import load_dataset
from artistid.features import default_cache_dir, read_and_decode
from artistid.runtimes import FEATURES_INPUT, OnnxRuntimeEngine, feature_onnx, machine
from artistid.train import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets" / "paintings3")
    parser.add_argument("--calibration", type=int, default=64, help="Train images that calibrate the activations")
    args = parser.parse_args()
    print(f"machine: {machine().describe()}", flush=True)
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    settings = PRESETS["standard"]
    backbone = create_backbone(settings.backbone, feature_nodes=settings.feature_nodes, pooling=settings.pooling)
    samples = [s for s in load_dataset(str(args.dataset)).train if s.label is not None]
    decoded = [read_and_decode(i, s.path, backbone.preprocess, None) for i, s in enumerate(samples)]
    usable = [d for d in decoded if d.pixels is not None]
    labels = np.array([samples[d.index].label for d in usable])
    pixels = np.stack([d.pixels for d in usable])  # type: ignore[misc]

    fp32_path = feature_onnx(backbone, default_cache_dir())
    int8_path = fp32_path.with_name(fp32_path.stem + "-int8.onnx")
    calibration = pixels[np.random.default_rng(0).permutation(len(pixels))[: args.calibration]]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{FEATURES_INPUT: calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    started = time.perf_counter()
    quantize_static(
        str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
    )  # fmt: skip
    print(f"quantized in {time.perf_counter() - started:.0f} s", flush=True)
    head = make_pipeline(StandardScaler(), LogisticRegression(C=1 / (settings.l2 * len(labels)), max_iter=3000))
    scores = {}
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        engine = OnnxRuntimeEngine(path, None)
        started = time.perf_counter()
        features = np.concatenate([engine(pixels[i : i + 16]) for i in range(0, len(pixels), 16)])
        rate = len(pixels) / (time.perf_counter() - started)
        cv = [
            cross_val_score(head, features, labels, cv=StratifiedKFold(5, shuffle=True, random_state=s)).mean()
            for s in SEEDS
        ]
        scores[name] = float(np.mean(cv))
        print(f"{name}: {rate:.1f} images/s, CV accuracy {' '.join(f'{c:.1%}' for c in cv)} (mean {np.mean(cv):.1%})")
    drop = (scores["fp32"] - scores["int8"]) * 100
    verdict = "offer it" if drop <= 0.5 else "do not offer it"
    print(f"int8 loses {drop:.2f} points of cross-validated accuracy on {args.dataset.name}/Train: {verdict}")


if __name__ == "__main__":
    main()
