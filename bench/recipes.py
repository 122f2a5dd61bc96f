"""How "--preset best" was chosen: cross-validated accuracy of its views of a painting, averaged over fold splits.

One featurization with tiles gives every row: a tiled vector is the whole painting's features (averaged down to the
input size) followed by the mean of its squares', so its halves are the "whole" and "squares only" recipes. Each
row is a standardized L2 logistic regression (the best preset's head), 5-fold cross-validated on Train/ with four
different splits; Test/ is never read.

    make bench-recipes   # or: .venv/bin/python bench/recipes.py [--dataset ../shared/datasets/paintings3] [--tiles 2]
    .venv/bin/python bench/recipes.py --standard --splits 2 [--dataset ...]   # how the default was chosen
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from artistid.backbones import create_backbone
from artistid.datasets import load_dataset
from artistid.features import FeatureCache, FeatureExtractor, featurize
from artistid.runtimes import machine
from artistid.train import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2, 3)


def cross_validated(features: np.ndarray, labels: np.ndarray, l2: float, splits: int = len(SEEDS)) -> list[float]:
    head = make_pipeline(StandardScaler(), LogisticRegression(C=1 / (l2 * len(labels)), max_iter=3000))
    return [
        float(cross_val_score(head, features, labels, cv=StratifiedKFold(5, shuffle=True, random_state=seed)).mean())
        for seed in SEEDS[:splits]
    ]


# The default ("standard") recipe's candidates: one 224 px pass, style statistics of these blocks beside the pooled
# features, and the head's L2 weight. Channels of EfficientNet-Lite0's blocks 0-6, whose means and stds lead the
# vector in this order before the 1,280 pooled features.
BLOCK_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
STANDARD_CANDIDATES = (
    ("pooled", (), 0.01),
    ("pooled + blocks 2-5", (2, 3, 4, 5), 0.01),
    ("pooled + blocks 2-5", (2, 3, 4, 5), 0.05),
    ("pooled + blocks 1-6", (1, 2, 3, 4, 5, 6), 0.01),
    ("pooled + blocks 1-6", (1, 2, 3, 4, 5, 6), 0.05),
    ("pooled + blocks 0-6", (0, 1, 2, 3, 4, 5, 6), 0.01),
)


def standard_candidates(dataset: Path, cache_dir: Path | None, splits: int) -> None:
    """Cross-validated accuracy of the 224 px candidates, from one featurization with every block's statistics."""
    nodes = (*(f"blocks.{b}" for b in range(7)), "global_pool.flatten")
    backbone = create_backbone("efficientnet_lite0", feature_nodes=nodes, pooling="meanstd")
    samples = [s for s in load_dataset(str(dataset)).train if s.label is not None]
    with FeatureCache(cache_dir) as cache:
        features = featurize(samples, FeatureExtractor(backbone), cache=cache)
    labels = np.asarray(features.labels)
    offsets = np.cumsum([0, *(2 * c for c in BLOCK_CHANNELS)])
    pooled = np.arange(offsets[-1], features.features.shape[1])
    print(f"| features ({dataset.name}/Train, {len(labels)} images, 224 px) | L2 | CV accuracy per split | mean |")
    print("|---|---|---|---|")
    for name, blocks, l2 in STANDARD_CANDIDATES:
        columns = np.concatenate([*(np.arange(offsets[b], offsets[b + 1]) for b in blocks), pooled])
        scores = cross_validated(features.features[:, columns], labels, l2, splits)
        print(f"| {name} | {l2} | {' '.join(f'{s:.1%}' for s in scores)} | {np.mean(scores):.1%} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets" / "paintings3")
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, help="Feature cache [default: the user cache folder].")
    parser.add_argument("--standard", action="store_true", help="The default recipe's 224 px candidates instead.")
    parser.add_argument("--splits", type=int, default=len(SEEDS), help="fold splits per candidate (--standard)")
    args = parser.parse_args()
    print(f"machine: {machine().describe()}", flush=True)
    if args.standard:
        standard_candidates(args.dataset, args.cache_dir, args.splits)
        return
    best = PRESETS["best"]
    backbone = create_backbone(
        best.backbone,
        feature_nodes=best.feature_nodes,
        pooling=best.pooling,
        input_size=best.image_size,
        tiles=args.tiles,
    )
    samples = [s for s in load_dataset(str(args.dataset)).train if s.label is not None]
    with FeatureCache(args.cache_dir) as cache:
        features = featurize(samples, FeatureExtractor(backbone), cache=cache)
    labels = np.asarray(features.labels)
    half = features.features.shape[1] // 2
    views = {
        f"whole painting at {best.image_size} px": features.features[:, :half],
        f"{args.tiles} x {args.tiles} squares of {best.image_size} px only": features.features[:, half:],
        f"whole + {args.tiles} x {args.tiles} squares": features.features,
    }
    print(f"| features ({args.dataset.name}/Train, {len(labels)} images) | CV accuracy per split | mean |")
    print("|---|---|---|")
    for name, vectors in views.items():
        scores = cross_validated(vectors, labels, best.l2)
        print(f"| {name} | {' '.join(f'{s:.1%}' for s in scores)} | {np.mean(scores):.1%} |", flush=True)


if __name__ == "__main__":
    main()
