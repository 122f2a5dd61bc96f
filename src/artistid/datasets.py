"""Which images a dataset holds and who painted them: folder layouts and map files, local or in storage.

Three layouts are understood:
- a dataset folder with `Train/<artist>/...` and `Test/<artist>/...` (the reference layout);
- a folder of class folders, `<artist>/...`; images loose at its root are paintings by unknown artists;
- a map file, one image a line: `path<TAB>label` (CNTK style; label -1 means unknown, paths relative to the file).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path, PurePosixPath
from typing import Any

from artistid import storage
from artistid.errors import SourceError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Dataset",
    "Sample",
    "demo_data",
    "is_image_name",
    "list_images",
    "load_dataset",
    "load_split",
    "load_test_set",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

UNKNOWN = -1
_TRAIN_NAMES = ("Train", "train")
_TEST_NAMES = ("Test", "test")


@contextlib.contextmanager
def demo_data() -> Iterator[Path]:
    """The folder of the public-domain demo set that ships with artistid: Train/ and Test/, a folder per artist."""
    with as_file(files("artistid") / "demo_data") as root:
        if not (Path(root) / "Train").is_dir() or not (Path(root) / "Test").is_dir():
            raise SourceError(f"{root}: the demo set is missing from this installation")
        yield Path(root)


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Sample:
    """One image: where it is, and its artist (None where the artist is unknown)."""

    path: str
    label: str | None


@dataclass
class Dataset:
    """Training and test images with the artist names, sorted; `test` is empty where DATA has no test set."""

    root: str
    train: list[Sample]
    test: list[Sample] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    @property
    def samples(self) -> list[Sample]:
        return self.train + self.test


def _strip(fs: Any, path: str, original: str) -> str:
    """A path a user can read back: plain for local files, a full URI for storage."""
    return path if storage.is_local(original) else fs.unstrip_protocol(path)


def _class_folder(fs: Any, root: str, original: str) -> tuple[list[Sample], list[str]]:
    """Images of a folder of class folders; class names are its top-level folder names only."""
    root = root.rstrip("/")
    classes: set[str] = set()
    samples: list[Sample] = []
    for path in sorted(fs.find(root, detail=False)):
        relative = PurePosixPath(path[len(root) :].lstrip("/"))
        if not is_image_name(relative.name) or any(part.startswith(".") for part in relative.parts):
            continue
        label = relative.parts[0] if len(relative.parts) > 1 else None
        if label is not None:
            classes.add(label)
        samples.append(Sample(_strip(fs, path, original), label))
    return samples, sorted(classes)


def _map_file(fs: Any, path: str, original: str) -> tuple[list[Sample], list[str]]:
    if is_image_name(path):
        raise SourceError(f"{original}: an image, not a dataset folder or map file")
    base = path.rsplit("/", 1)[0] if "/" in path else ""
    samples: list[Sample] = []
    with fs.open(path, "rt", encoding="utf-8-sig") as handle:  # -sig: Windows editors start with a byte-order mark
        try:
            lines = list(handle)
        except UnicodeDecodeError:
            raise SourceError(f"{original}: not a map file ('path<TAB>label' lines of UTF-8 text)") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise SourceError(f"{original}:{number}: expected 'path<TAB>label', got {line.strip()!r}")
            image, label = parts[0].strip(), parts[1].strip()
            if not storage.is_local(image) or image.startswith("/"):
                location = image
            else:
                location = _strip(fs, f"{base}/{image}" if base else image, original)
            samples.append(Sample(location, None if label == str(UNKNOWN) else label))
    classes = sorted({s.label for s in samples if s.label is not None})
    return samples, classes


def load_split(source: str, storage_options: dict[str, Any] | None = None) -> tuple[list[Sample], list[str]]:
    """The images of one folder of class folders or one map file, and the artist names found in it."""
    fs, path = storage.url_to_fs(source, storage_options)
    if not fs.exists(path):
        raise SourceError(f"{source}: no such file or folder")
    if fs.isdir(path):
        return _class_folder(fs, path, source)
    return _map_file(fs, path, source)


def _child(fs: Any, path: str, names: Iterable[str]) -> str | None:
    for name in names:
        candidate = f"{path.rstrip('/')}/{name}"
        if fs.isdir(candidate):
            return candidate
    return None


def load_dataset(source: str, storage_options: dict[str, Any] | None = None) -> Dataset:
    """Lists the images of DATA in any of the three layouts, local or at a storage URI."""
    fs, path = storage.url_to_fs(source, storage_options)
    if not fs.exists(path):
        raise SourceError(f"{source}: no such file or folder")
    train_dir = _child(fs, path, _TRAIN_NAMES) if fs.isdir(path) else None
    if train_dir is None:
        samples, classes = load_split(source, storage_options)
        if not classes:
            raise SourceError(f"{source}: no artist folders or labelled images found")
        return Dataset(root=source, train=samples, classes=classes)
    train, classes = load_split(_strip(fs, train_dir, source), storage_options)
    test_dir = _child(fs, path, _TEST_NAMES)
    test: list[Sample] = []
    if test_dir is not None:
        test, test_classes = load_split(_strip(fs, test_dir, source), storage_options)
        extra = sorted(set(test_classes) - set(classes))
        if extra:
            raise SourceError(f"{source}: Test has artists that Train lacks: {', '.join(extra)}")
    if not classes:
        raise SourceError(f"{source}: Train holds no artist folders")
    return Dataset(root=source, train=train, test=test, classes=classes)


def load_test_set(source: str, storage_options: dict[str, Any] | None = None) -> list[Sample]:
    """The images to evaluate on: a dataset folder's Test/, or a class folder (loose images: unknown) or map file."""
    fs, path = storage.url_to_fs(source, storage_options)
    if not fs.exists(path):
        raise SourceError(f"{source}: no such file or folder")
    test_dir = _child(fs, path, _TEST_NAMES) if fs.isdir(path) else None
    if test_dir is None and fs.isdir(path) and _child(fs, path, _TRAIN_NAMES) is not None:
        raise SourceError(f"{source}: has a Train/ folder but no Test/ folder to evaluate on")
    samples, _ = load_split(_strip(fs, test_dir, source) if test_dir else source, storage_options)
    if not samples:
        raise SourceError(f"{source}: no images found")
    return samples


def list_images(sources: Iterable[str], storage_options: dict[str, Any] | None = None) -> list[Sample]:
    """Files named directly, and every image under folders named; none of them labelled."""
    samples: list[Sample] = []
    for source in sources:
        fs, path = storage.url_to_fs(source, storage_options)
        if fs.isdir(path):
            found = sorted(p for p in fs.find(path, detail=False) if is_image_name(p))
            samples.extend(Sample(_strip(fs, p, source), None) for p in found)
        else:
            samples.append(Sample(source, None))
    return samples
