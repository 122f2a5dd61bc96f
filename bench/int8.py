"""Does post-training int8 quantization of the backbone keep the default recipe's accuracy? Cross-validated on Train.

The default recipe's feature graph is quantized as `--precision int8` quantizes it (`artistid.runtimes.int8_onnx`:
ONNX Runtime static quantization, QDQ, per-channel int8 weights, activations calibrated on a fixed, seeded choice of
the shipped demo paintings), then Train is featurized with the fp32 and the int8 graph and each is scored by the
default head (standardized L2 logistic regression, L-BFGS), 5-fold cross-validated on Train with the same splits.
int8 is offered only if it loses at most 0.5 points. Test/ is never read.

    .venv/bin/python bench/int8.py [--dataset ../shared/datasets/paintings3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from recipes import cross_validated

from artistid.backbones import create_backbone
from artistid.datasets import load_dataset
from artistid.features import default_cache_dir, read_and_decode
from artistid.runtimes import OnnxRuntimeEngine, feature_onnx, int8_onnx, machine
from artistid.train import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SPLITS = 2  # of recipes.SEEDS: two 5-fold splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets" / "paintings3")
    args = parser.parse_args()
    print(f"machine: {machine().describe()}", flush=True)
    settings = PRESETS["standard"]
    backbone = create_backbone(settings.backbone, feature_nodes=settings.feature_nodes, pooling=settings.pooling)
    samples = [s for s in load_dataset(str(args.dataset)).train if s.label is not None]
    decoded = [read_and_decode(i, s.path, backbone.preprocess, None) for i, s in enumerate(samples)]
    usable = [d for d in decoded if d.pixels is not None]
    labels = np.array([samples[d.index].label for d in usable])
    pixels = np.stack([d.pixels for d in usable])  # type: ignore[misc]

    started = time.perf_counter()
    engines = (
        OnnxRuntimeEngine(feature_onnx(backbone, default_cache_dir()), "fp32", None),
        OnnxRuntimeEngine(int8_onnx(backbone, default_cache_dir()), "int8", None),
    )
    print(f"exported and quantized (or found in the cache) in {time.perf_counter() - started:.0f} s", flush=True)
    scores = {}
    for engine in engines:
        name = engine.precision
        started = time.perf_counter()
        features = np.concatenate([engine(pixels[i : i + 16]) for i in range(0, len(pixels), 16)])
        rate = len(pixels) / (time.perf_counter() - started)
        cv = cross_validated(features, labels, settings.l2, splits=SPLITS)
        scores[name] = float(np.mean(cv))
        print(f"{name}: {rate:.1f} images/s, CV accuracy {' '.join(f'{c:.1%}' for c in cv)} (mean {np.mean(cv):.1%})")
    drop = (scores["fp32"] - scores["int8"]) * 100
    verdict = "offer it" if drop <= 0.5 else "do not offer it"
    print(f"int8 loses {drop:.2f} points of cross-validated accuracy on {args.dataset.name}/Train: {verdict}")


if __name__ == "__main__":
    main()
