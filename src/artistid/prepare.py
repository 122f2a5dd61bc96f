"""De-duplicates a scrape of paintings, splits it into Train/Test without leaks, checks datasets for leaks.

Two images are near-duplicates when both perceptual hashes are within a few bits: pHash survives rescaling
and recompression, dHash tells apart different paintings of one motif. Copies of one painting form a group;
`prepare` keeps the largest image of each group and splits by group, stratified per artist, so no painting
lands on both sides. `check` finds the pairs that cross Train and Test of any dataset.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from artistid import storage
from artistid.datasets import Sample, load_dataset, load_split
from artistid.errors import ImageError, SourceError, UsageError
from artistid.images import decode_image

__all__ = [
    "COMBINED_DISTANCE",
    "DHASH_DISTANCE",
    "PHASH_DISTANCE",
    "HashedImage",
    "LeakReport",
    "PrepareReport",
    "check_leaks",
    "hash_images",
    "near_duplicate_pairs",
    "prepare",
]

logger = logging.getLogger(__name__)

# Largest Hamming distances (of 64 bits) at which two images count as copies, each and summed. Chosen on
# paintings3/raw: re-scans, crops and recolourings of one painting stay within all three; different paintings of one
# motif (Monet's haystacks) pass pHash but not dHash; pale drawings on white paper come close to the limits, and
# unrelated pairs lie beyond them (docs/storage.md).
PHASH_DISTANCE = 14
DHASH_DISTANCE = 16
COMBINED_DISTANCE = 28
# pHash works on 32x32 pixels and dHash on 9x8, so a JPEG decoded at 1/8 scale down to >= 64 px is plenty.
_DRAFT_SIZE = 64
REPORT_NAME = "prepare-report.json"


@dataclass(frozen=True)
class HashedImage:
    path: str
    label: str | None
    phash: int
    dhash: int
    pixels: int  # width x height of the stored file, to keep the largest copy
    size: int  # bytes


@dataclass
class PrepareReport:
    source: str
    destination: str
    images: int = 0
    kept: int = 0
    duplicates_removed: int = 0
    groups_with_duplicates: int = 0
    unreadable: list[dict[str, str]] = field(default_factory=list)
    cross_artist_copies: list[dict[str, Any]] = field(default_factory=list)
    per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        classes = ", ".join(f"{name} {c['train']}/{c['test']}" for name, c in self.per_class.items())
        return (
            f"{self.images} images, {self.kept} kept, {self.duplicates_removed} duplicates removed in "
            f"{self.groups_with_duplicates} groups, {len(self.unreadable)} unreadable; Train/Test: {classes}"
        )


@dataclass
class LeakReport:
    source: str
    train: int
    test: int
    pairs: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)

    @property
    def leaks(self) -> int:
        return len(self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return {"leaks": self.leaks, **asdict(self)}


# ---------------------------------------------------------------------------------------------- hashing


def _bits(hash_bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(hash_bits.ravel()).tobytes(), "big")


def _hash_one(sample: Sample, storage_options: dict[str, Any] | None) -> HashedImage:
    import imagehash  # part of the `storage` extra

    try:
        data = storage.read_bytes(sample.path, storage_options)
    except OSError as exc:
        raise ImageError(sample.path, f"cannot read file: {storage.describe_error(exc)}") from None
    image = decode_image(data, sample.path, draft_size=_DRAFT_SIZE)
    with Image.open(io.BytesIO(data)) as header:
        pixels = header.width * header.height
    return HashedImage(
        path=sample.path,
        label=sample.label,
        phash=_bits(imagehash.phash(image).hash),
        dhash=_bits(imagehash.dhash(image).hash),
        pixels=pixels,
        size=len(data),
    )


def hash_images(
    samples: list[Sample], storage_options: dict[str, Any] | None = None, *, workers: int | None = None
) -> tuple[list[HashedImage], list[ImageError]]:
    """pHash and dHash of every image, in input order; images that cannot be read are returned apart."""
    workers = workers or min(8, os.cpu_count() or 1)

    def attempt(sample: Sample) -> HashedImage | ImageError:
        try:
            return _hash_one(sample, storage_options)
        except ImageError as exc:
            return exc

    # Decoding and the hash transforms release the GIL, so threads use all cores without pickling images.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash") as pool:
        results = list(pool.map(attempt, samples))
    hashed = [r for r in results if isinstance(r, HashedImage)]
    failed = [r for r in results if isinstance(r, ImageError)]
    for error in failed:
        logger.warning("skipped: %s", error)
    return hashed, failed


def _as_array(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def near_duplicate_pairs(a: list[HashedImage], b: list[HashedImage] | None = None) -> list[tuple[int, int, int, int]]:
    """(i, j, pHash distance, dHash distance) for every near-duplicate pair: within `a` (i < j), or a x b."""
    if not a or (b is not None and not b):
        return []
    pa, da = _as_array([h.phash for h in a]), _as_array([h.dhash for h in a])
    pb, db = (pa, da) if b is None else (_as_array([h.phash for h in b]), _as_array([h.dhash for h in b]))
    pairs: list[tuple[int, int, int, int]] = []
    rows = max(1, 4_000_000 // len(pb))  # bounds the distance matrices to a few tens of MB
    for start in range(0, len(pa), rows):
        stop = min(start + rows, len(pa))
        p = np.bitwise_count(pa[start:stop, None] ^ pb[None, :])
        d = np.bitwise_count(da[start:stop, None] ^ db[None, :])
        close = (p <= PHASH_DISTANCE) & (d <= DHASH_DISTANCE) & (p + d <= COMBINED_DISTANCE)
        if b is None:
            close &= np.arange(start, stop)[:, None] < np.arange(len(pb))[None, :]
        for i, j in np.argwhere(close):
            pairs.append((start + int(i), int(j), int(p[i, j]), int(d[i, j])))
    return pairs


def _groups(images: list[HashedImage]) -> list[list[int]]:
    """Indices of images grouped by near-duplicate links (transitively), each group sorted."""
    pairs = near_duplicate_pairs(images)
    rows = [i for i, _, _, _ in pairs]
    cols = [j for _, j, _, _ in pairs]
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(images), len(images)))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(int(label), []).append(index)
    return list(groups.values())


# ---------------------------------------------------------------------------------------------- prepare


def _split(count: int, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of which of `count` items go to Test: at least one on each side when count >= 2."""
    n_test = round(count * test_fraction)
    if count >= 2 and 0 < test_fraction < 1:
        n_test = min(max(n_test, 1), count - 1)
    mask = np.zeros(count, dtype=bool)
    mask[rng.permutation(count)[:n_test]] = True
    return mask


def prepare(
    raw: str,
    to: str | Path,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    storage_options: dict[str, Any] | None = None,
    workers: int | None = None,
) -> PrepareReport:
    """Writes `to/Train/<artist>/...` and `to/Test/<artist>/...` from RAW (a folder of artist folders).

    Keeps the largest image of each near-duplicate group within an artist; a painting that also appears under
    another artist goes to Train, never Test, so no copy crosses the split. Writes `prepare-report.json`.
    """
    if not 0 <= test_fraction < 1:
        raise UsageError(f"test fraction must be in [0, 1); got {test_fraction}")
    destination = Path(to)
    for split in ("Train", "Test"):
        if (destination / split).exists() and any((destination / split).iterdir()):
            raise SourceError(f"{destination / split}: already holds files; give an empty or new folder")
    fs, root = storage.url_to_fs(raw, storage_options)
    if fs.isfile(root):
        raise SourceError(f"{raw}: a file; prepare takes a folder of artist folders, as scraped")
    if any(fs.isdir(f"{root.rstrip('/')}/{split}") for split in ("Train", "Test", "train", "test")):
        raise SourceError(f"{raw}: already split into Train/ and Test/ (`artistid check` looks for leaks in it)")
    samples, classes = load_split(raw, storage_options)
    unlabelled = [s for s in samples if s.label is None]
    if unlabelled:
        logger.warning("%s: %d images outside artist folders are left out", raw, len(unlabelled))
    samples = [s for s in samples if s.label is not None]
    if not classes:
        raise SourceError(f"{raw}: no artist folders with images found")
    hashed, failed = hash_images(samples, storage_options, workers=workers)
    report = PrepareReport(source=raw, destination=str(destination), images=len(samples))
    report.unreadable = [{"path": e.path, "reason": e.reason} for e in failed]

    kept: list[HashedImage] = []
    for name in classes:
        members = [h for h in hashed if h.label == name]
        for group in _groups(members):
            copies = sorted((members[i] for i in group), key=lambda h: (-h.pixels, -h.size, h.path))
            kept.append(copies[0])
            if len(copies) > 1:
                report.groups_with_duplicates += 1
                report.duplicates_removed += len(copies) - 1
                report.groups.append({"artist": name, "kept": copies[0].path, "removed": [h.path for h in copies[1:]]})

    # Copies under two artists are label conflicts, not duplicates to drop: both stay, both in Train.
    train_only: set[str] = set()
    for i, j, p, d in near_duplicate_pairs(kept):
        if kept[i].label != kept[j].label:
            train_only.update((kept[i].path, kept[j].path))
            report.cross_artist_copies.append({"a": kept[i].path, "b": kept[j].path, "phash": p, "dhash": d})

    # Built beside the destination and moved in at the end: an interrupted run leaves no dataset that looks whole.
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=storage.existing_parent(destination)))
    try:
        rng = np.random.default_rng(seed)
        for name in classes:
            members = sorted((h for h in kept if h.label == name), key=lambda h: h.path)
            free = [h for h in members if h.path not in train_only]
            to_test = _split(len(free), test_fraction, rng)
            test_paths = {h.path for h, is_test in zip(free, to_test, strict=True) if is_test}
            counts = Counter("test" if h.path in test_paths else "train" for h in members)
            report.per_class[name] = {"train": counts["train"], "test": counts["test"]}
            for image in members:
                split = "Test" if image.path in test_paths else "Train"
                relative = fs._strip_protocol(image.path)[len(root.rstrip("/")) :].lstrip("/")
                target = staging / split / relative
                storage.write_bytes_atomic(target, storage.read_bytes(image.path, storage_options))
        destination.mkdir(parents=True, exist_ok=True)
        for split in ("Train", "Test"):
            if (staging / split).exists():
                os.replace(staging / split, destination / split)  # over an empty folder, if any
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.kept = len(kept)
    report.groups.sort(key=lambda g: (g["artist"], g["kept"]))
    storage.write_bytes_atomic(destination / REPORT_NAME, json.dumps(asdict(report), indent=2).encode())
    logger.info("prepare %s -> %s: %s", raw, destination, report.summary())
    return report


# ---------------------------------------------------------------------------------------------- check


def check_leaks(data: str, storage_options: dict[str, Any] | None = None, *, workers: int | None = None) -> LeakReport:
    """Near-duplicate pairs with one image in Train and the other in Test, of any artists, closest first."""
    dataset = load_dataset(data, storage_options)
    if not dataset.test:
        raise SourceError(f"{data}: no Test folder, so nothing can leak into it")
    train, failed_train = hash_images(dataset.train, storage_options, workers=workers)
    test, failed_test = hash_images(dataset.test, storage_options, workers=workers)
    pairs = sorted(near_duplicate_pairs(train, test), key=lambda t: (t[2] + t[3], train[t[0]].path))
    return LeakReport(
        source=data,
        train=len(dataset.train),
        test=len(dataset.test),
        pairs=[{"train": train[i].path, "test": test[j].path, "phash": p, "dhash": d} for i, j, p, d in pairs],
        unreadable=[{"path": e.path, "reason": e.reason} for e in failed_train + failed_test],
    )
