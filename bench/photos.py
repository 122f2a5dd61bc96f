"""How the training photos were chosen: a plain wall, or another training painting out of focus behind them.

5-fold cross-validation on paintings3/Train with the default recipe's vectors. Each fold's head and gate learn
from the fold's paintings and the photos of them; measured on the held-out paintings, and on the same held-out
paintings photographed into the shared everyday photos (what a visitor's photo looks like): accuracy, the share the
'unknown' threshold refuses (chosen as training chooses it), and the share the "not a painting" gate refuses, with
the shared photos themselves (which the gate must refuse). Test is never read.

    make bench-photos      # or: .venv/bin/python bench/photos.py [--draws 3]
"""

from __future__ import annotations

import argparse
import glob
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from artistid.calibration import calibrate
from artistid.datasets import load_dataset, load_split
from artistid.features import FeatureCache, FeatureExtractor, default_cache_dir, featurize
from artistid.images import decode_image, load_image
from artistid.layer import softmax
from artistid.refusals import PAINTING_NEIGHBOURS, fit_painting_gate
from artistid.runtimes import machine
from artistid.synthetic import out_of_focus, photograph, wall
from artistid.train import TrainSettings, backbone_for

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
Room = Callable[[np.random.Generator], Image.Image]


def vectors(extractor: FeatureExtractor, images: list[Image.Image]) -> np.ndarray:
    batches = [images[start : start + 16] for start in range(0, len(images), 16)]
    return np.vstack([extractor(np.stack([load_image(i, extractor.preprocess) for i in b])) for b in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3, help="draws of the training photos per kind")
    args = parser.parse_args()
    settings = TrainSettings()
    extractor = FeatureExtractor(backbone_for(settings), precision=settings.precision, runtime=settings.runtime)
    paintings = [s for s in load_dataset(str(SHARED / "paintings3")).train if s.label is not None]
    known = featurize(paintings, extractor, cache=FeatureCache(default_cache_dir()), progress=False)
    X, y = known.features, np.asarray(known.labels, dtype=str)
    decoded = [decode_image(Path(p).read_bytes(), p, draft_size=600) for p in known.paths]
    backgrounds = [Image.open(p).convert("RGB") for p in sorted(glob.glob(str(SHARED / "photos" / "*.jpg")))]
    rng = np.random.default_rng(7)
    shot = vectors(
        extractor, [photograph(d, rng, background=backgrounds[i % len(backgrounds)]) for i, d in enumerate(decoded)]
    )
    photos = featurize(load_split(str(SHARED / "photos"))[0], extractor, progress=False).features
    start, stop = extractor.last_layer_columns()
    rows = np.unique(np.linspace(0, len(X) - 1, settings.photographed).round().astype(int))
    rooms: dict[str, Room] = {
        "on a plain wall": wall,
        "in front of another painting, out of focus": lambda r: out_of_focus(decoded[int(r.integers(len(decoded)))]),
    }
    print(f"machine: {machine().describe()}; paintings3/Train, 5-fold cross-validation\n")
    print(
        "| training photos | draw | scans: accuracy / refused | photographed: accuracy / refused 'unknown' / refused"
        " by the gate | photos refused by the gate |"
    )
    print("|---|---|---|---|---|")
    for name, room in rooms.items():
        for draw in range(args.draws):
            made = []
            for row in rows:
                generator = np.random.default_rng([draw, int(row)])
                made.append(photograph(decoded[row], generator, background=room(generator), fill=(0.45, 0.85)))
            taught = vectors(extractor, made)
            scans, photographed, gated, photos_gated = np.zeros((len(X), 3)), np.zeros((len(X), 3)), [], []
            held_photos = np.zeros((len(rows), 3))
            with threadpool_limits(1, user_api="blas"):
                for train_rows, held_rows in StratifiedKFold(5, shuffle=True, random_state=settings.seed).split(X, y):
                    own = np.isin(rows, train_rows)
                    head = clone(settings.head()).fit(
                        np.vstack([X[train_rows], taught[own]]), np.concatenate([y[train_rows], y[rows[own]]])
                    )
                    scans[held_rows], photographed[held_rows] = (
                        head._scores(X[held_rows]),
                        head._scores(shot[held_rows]),
                    )
                    held_photos[~own] = head._scores(taught[~own])
                    position = {int(r): n for n, r in enumerate(train_rows)}
                    gate = fit_painting_gate(
                        X[train_rows],
                        taught[own],
                        [position[int(r)] for r in rows[own]],
                        columns=(start, stop),
                        neighbours=PAINTING_NEIGHBOURS,
                        false_rejection=settings.painting_false_rejection,
                    )
                    gated.append(np.mean(gate.scores(shot[held_rows]) < gate.threshold))
                    photos_gated.append(np.mean(gate.scores(photos) < gate.threshold))
            targets = np.searchsorted(np.unique(y), y)
            card = calibrate(scans, targets, false_rejection=settings.false_rejection, photographed=held_photos)
            threshold, temperature = card.rules.threshold, card.temperature
            scanned, shots = softmax(scans, temperature), softmax(photographed, temperature)
            print(
                f"| {name} | {draw} | {np.mean(scanned.argmax(1) == targets):.1%} / "
                f"{np.mean(scanned.max(1) < threshold):.1%} | {np.mean(shots.argmax(1) == targets):.1%} / "
                f"{np.mean(shots.max(1) < threshold):.1%} / {np.mean(gated):.1%} | {np.mean(photos_gated):.1%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
