"""Both refusals, measured: what the default model and a model trained with --others refuse, and how often.

For a model trained on paintings3/Train (and one trained with paintings10/Train's seven other painters as
--others), the share refused of: everyday photos (../shared/datasets/photos), synthetic non-paintings (noise, flat
colours, gradients, scanned letters, screenshots, tiny images), the paintings of paintings3/Test photographed in
their frames inside those photos (at 400 x 300, the size training makes its photos, and at each photo's own size),
the loose paintings of other artists in paintings3/Test, and the known artists' paintings of paintings3/Test; with
accuracy and the expected calibration error on the known ones. Everything the models choose is chosen on Train; Test
is only measured.

    make bench-refusals            # or: python bench/refusals.py [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from artistid.answers import NOT_A_PAINTING, UNKNOWN, Answer
from artistid.calibration import expected_calibration_error
from artistid.datasets import load_dataset, load_split
from artistid.features import FeatureCache, default_cache_dir
from artistid.images import decode_image
from artistid.model import Model
from artistid.runtimes import machine
from artistid.synthetic import non_paintings, photograph
from artistid.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _row(answers: list[Answer], truths: list[str] | None = None) -> dict[str, Any]:
    refusals = [a.refusal for a in answers]
    row: dict[str, Any] = {
        "n": len(answers),
        "refused": float(np.mean([r is not None for r in refusals])),
        NOT_A_PAINTING: sum(r == NOT_A_PAINTING for r in refusals),
        UNKNOWN: sum(r == UNKNOWN for r in refusals),
    }
    if truths is not None:
        row["accuracy"] = float(np.mean([a.closest == t for a, t in zip(answers, truths, strict=True)]))
    return row


def _features(model: Model, images: list[Image.Image]) -> np.ndarray:
    return np.vstack([model.features(images[i : i + 32]) for i in range(0, len(images), 32)])


def measure(model: Model, sets: dict[str, Any], cache: FeatureCache) -> dict[str, Any]:
    found: dict[str, Any] = {}
    known = model.features_for(sets["known"], cache=cache, progress=False)
    answers = model.answers_for(known.features)
    found["known artists (paintings3/Test)"] = _row(answers, [str(y) for y in known.labels])
    classes = [str(c) for c in model.classes_]
    targets = np.array([classes.index(str(y)) for y in known.labels])
    found["known artists (paintings3/Test)"]["ece"] = expected_calibration_error(
        model.probabilities(known.features), targets
    )
    loose = model.features_for(sets["loose"], cache=cache, progress=False)
    found["other artists (paintings3/Test loose)"] = _row(model.answers_for(loose.features))
    photos = model.features_for(sets["photos"], cache=cache, progress=False)
    found["photos (../shared photos)"] = _row(model.answers_for(photos.features))
    found["synthetic non-paintings"] = _row(model.answers_for(_features(model, sets["synthetic"])))
    photographed = model.answers_for(_features(model, sets["photographed"]))
    found["photographed known paintings"] = _row(photographed, sets["photographed_truths"])
    large = model.answers_for(_features(model, sets["photographed_large"]))
    found["photographed known paintings, at the photos' own size"] = _row(large, sets["photographed_truths"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--per-kind", type=int, default=20, help="synthetic non-paintings of each kind")
    args = parser.parse_args()
    paintings3 = load_dataset(str(SHARED / "paintings3"))
    others, _ = load_split(str(SHARED / "paintings10" / "Train"))
    photo_paths = sorted(glob.glob(str(SHARED / "photos" / "*.jpg")))
    known = [s for s in paintings3.test if s.label is not None]
    rng, rng_large = np.random.default_rng(7), np.random.default_rng(8)
    backgrounds = [Image.open(p).convert("RGB") for p in photo_paths]
    photographed, photographed_large = [], []
    for i, sample in enumerate(known):
        painting = decode_image(Path(sample.path).read_bytes(), sample.path, draft_size=600)
        background = backgrounds[i % len(backgrounds)]
        photographed.append(photograph(painting, rng, background=background))
        photographed_large.append(photograph(painting, rng_large, background=background, size=background.size))
    sets = {
        "known": known,
        "loose": [s for s in paintings3.test if s.label is None],
        "photos": load_split(str(SHARED / "photos"))[0],
        "synthetic": [image for _, image in non_paintings(args.per_kind, seed=11)],
        "photographed": photographed,
        "photographed_large": photographed_large,
        "photographed_truths": [str(s.label) for s in known],
    }
    cache = FeatureCache(default_cache_dir())
    print(f"machine: {machine().describe()}; paintings3/Train, default recipe; Test only measured\n")
    results: dict[str, Any] = {}
    for name, extra in (("default model", []), ("--others paintings10/Train", others)):
        started = time.perf_counter()
        model = train(paintings3.train, others=extra, cache=cache, progress=False).model
        results[name] = {"rules": vars(model.card.rules), "figures": measure(model, sets, cache)}
        results[name]["seconds"] = time.perf_counter() - started
    print("| model | images | n | refused | not a painting | unknown | accuracy | ECE |")
    print("|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        for kind, row in result["figures"].items():
            accuracy = f"{row['accuracy']:.1%}" if "accuracy" in row else ""
            ece = f"{row['ece']:.1%}" if "ece" in row else ""
            print(
                f"| {name} | {kind} | {row['n']} | {row['refused']:.1%} | {row[NOT_A_PAINTING]} | {row[UNKNOWN]} "
                f"| {accuracy} | {ece} |"
            )
    for name, result in results.items():
        print(f"{name}: {result['rules']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
