"""The tutorial-style peer: a plain PyTorch loop doing what the reference design did, as a whole process.

ImageFolder-style dataset, a DataLoader with 2 decoding workers, the frozen backbone run on every minibatch of
every epoch, a dense layer trained by SGD (7 epochs, minibatch 50, lr 0.2, momentum 0.9, L2 0.0005), in fp32
on PyTorch as a tutorial would. bench/train.py and bench/featurize.py time it, whole process, in the same run as
artistid.

    .venv/bin/python bench/peer.py [--data ../shared/datasets/paintings3] [--epochs 7]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(data: str, epochs: int, limit: int | None = None) -> dict[str, float]:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from artistid.backbones import create_backbone
    from artistid.datasets import Sample, load_dataset
    from artistid.images import load_image
    from artistid.runtimes import feature_module

    dataset = load_dataset(data)
    samples = [s for s in dataset.train if s.label is not None]
    if limit:
        samples = samples[:: max(1, len(samples) // limit)][:limit]
    backbone = create_backbone("efficientnet_lite0")
    features = feature_module(backbone)  # uint8 pixels -> normalized -> pooled features, in fp32
    index = {c: i for i, c in enumerate(dataset.classes)}

    class Paintings(Dataset):
        def __init__(self, items: list[Sample]) -> None:
            self.items = items

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            sample = self.items[i]
            return torch.from_numpy(load_image(sample.path, backbone.preprocess).copy()), index[sample.label]

    layer = torch.nn.Linear(1280, len(dataset.classes))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.2, momentum=0.9, weight_decay=0.0005)
    loader = DataLoader(Paintings(samples), batch_size=50, shuffle=True, num_workers=2)
    started = time.perf_counter()
    for _ in range(epochs):
        for pixels, labels in loader:
            with torch.no_grad():
                vectors = features(pixels)
            loss = torch.nn.functional.cross_entropy(layer(vectors), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    return {
        "images": len(samples),
        "epochs": epochs,
        "loop_s": seconds,
        "images_per_s": len(samples) * epochs / seconds,
    }


def whole_process(data: str, epochs: int, limit: int | None = None) -> dict[str, float]:
    """Runs the peer in a fresh Python process; `process_s` is its wall time, imports included."""
    import subprocess

    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--data",
            data,
            "--epochs",
            str(epochs),
            *(["--limit", str(limit)] if limit else []),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    result["process_images_per_s"] = result["images"] * epochs / result["process_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/datasets/paintings3"))
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--limit", type=int, help="only this many Train images (spread evenly)")
    args = parser.parse_args()
    print(json.dumps(run(args.data, args.epochs, args.limit)))


if __name__ == "__main__":
    main()
