"""`artistid train` with the defaults against a plain PyTorch loop doing what the reference design did.

The plain loop runs the frozen backbone on every minibatch of every epoch (7 epochs); artistid featurizes once
(cold: empty cache; warm: cached features) and trains the head on the vectors. Same backbone, data and decode.

    make bench-train      # or: .venv/bin/python bench/train.py [--data ../shared/datasets/paintings3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from artistid.backbones import create_backbone
from artistid.datasets import Sample, load_dataset
from artistid.features import FeatureCache, FeatureExtractor
from artistid.images import load_image
from artistid.train import TrainSettings, train

ROOT = Path(__file__).resolve().parents[1]


class Paintings(Dataset):
    def __init__(self, samples: list[Sample], classes: list[str], extractor: FeatureExtractor) -> None:
        self.samples, self.index, self.preprocess = samples, {c: i for i, c in enumerate(classes)}, extractor.preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[i]
        return torch.from_numpy(load_image(sample.path, self.preprocess).copy()), self.index[sample.label]


def plain_loop(samples: list[Sample], classes: list[str], settings: TrainSettings) -> float:
    """The reference design's loop: forward through the frozen backbone for every minibatch of every epoch."""
    extractor = FeatureExtractor(create_backbone(settings.backbone))
    layer = torch.nn.Linear(1280, len(classes))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.2, momentum=settings.momentum, weight_decay=settings.l2)
    loader = DataLoader(Paintings(samples, classes, extractor), batch_size=settings.batch_size, shuffle=True,
                        num_workers=2)  # fmt: skip
    started = time.perf_counter()
    for _ in range(settings.epochs):
        for pixels, labels in loader:
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=extractor.precision == "bf16"):
                features = extractor.backbone(extractor.to_input(pixels.numpy())).float()
            loss = torch.nn.functional.cross_entropy(layer(features), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/paintings3"))
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    labelled = [s for s in dataset.train if s.label is not None]
    settings = TrainSettings()
    results: dict[str, float] = {}
    # Both contestants build the same backbone: build it once untimed, so that neither is charged the seconds that
    # importing timm and torchvision take in a fresh process.
    create_backbone(settings.backbone)
    with tempfile.TemporaryDirectory() as scratch, FeatureCache(scratch) as cache:
        for run in ("cold", "warm"):
            started = time.perf_counter()
            result = train(labelled, settings, cache=cache, progress=False)
            results[f"artistid_{run}_s"] = time.perf_counter() - started
        model = result.model
    known = [s for s in dataset.test if s.label is not None]
    predicted = model.head.predict(model.features_for(known, progress=False).features)
    results["artistid_test_accuracy"] = float(np.mean(predicted == np.array([s.label for s in known])))
    results["plain_loop_s"] = plain_loop(labelled, dataset.classes, settings)
    results["speedup_cold"] = results["plain_loop_s"] / results["artistid_cold_s"]
    results["speedup_warm"] = results["plain_loop_s"] / results["artistid_warm_s"]
    for key, value in results.items():
        print(f"{key:<24} {value:>10.3f}")
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))


if __name__ == "__main__":
    main()
