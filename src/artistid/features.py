"""Feature vectors for many images, fast and once: parallel decoding, a frozen backbone, a persistent cache.

`featurize` decodes images in worker processes while the main process runs the backbone, and stores every
vector in a `FeatureCache` keyed by the image's content and everything else the vector depends on, so a second run
over the same images does no decoding and no forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from artistid import storage
from artistid.datasets import Sample
from artistid.decoding import Decoded, DecodePool, decode_in_process, read_and_decode
from artistid.errors import ArtistIdError, UsageError
from artistid.images import Preprocess
from artistid.runtimes import (
    PRECISIONS,
    Engine,
    choose_engine,
    create_engine,
    default_cache_dir,
    features_identity,
    int8_identity,
    machine,
    node_widths,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from artistid.backbones import Backbone
    from artistid.feature_store import FeatureStore

__all__ = [
    "Decoded",
    "FeatureCache",
    "FeatureExtractor",
    "FeatureSet",
    "decode_workers",
    "default_cache_dir",
    "featurize",
    "pinned_runtime",
    "read_and_decode",
]

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "int8"]  # asked for; the extractor resolves "auto" per machine
LARGE_FILE_BYTES = 512_000  # a median file above this is a large scan: decoding dominates
STORE_PART_ROWS = 2048  # vectors per feature-store part: few files, and little lost when a run is killed


# --- the extractor: pixels in, vectors out ---------------------------------------------------------------------


def pinned_runtime(runtime: str) -> str:
    """`runtime`, with "auto" as ARTISTID_RUNTIME pins it (ARTISTID_PRECISION pins the precision alike).

    A deployment (or a test suite) pins what "auto" means, so that every run computes the same vectors.
    """
    return (os.environ.get("ARTISTID_RUNTIME") or "auto") if runtime == "auto" else runtime


class FeatureExtractor:
    """Runs a frozen backbone on batches of decoded images (uint8, NHWC) on a runtime, in a precision.

    `runtime`: auto (the fastest installed runtime, measured on this machine: `artistid.runtimes.choose_engine`;
    the environment variables ARTISTID_RUNTIME and ARTISTID_PRECISION pin what auto means), torch, onnx (ONNX
    Runtime) or openvino. `precision`: auto (bf16 only where the hardware has it natively, else
    fp32), fp32, bf16 or int8 (the quantized graph of `artistid.runtimes.int8_onnx`, on the CPU with ONNX Runtime or
    OpenVINO; never chosen by auto). The runtime and precision (for int8, with its calibration) are part of
    `identity()`, so vectors of one never stand in for another's in the cache. Nothing is built before the first
    batch: a run whose every vector is cached builds no network and need not import torch.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        runtime: str = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        runtime = pinned_runtime(runtime)
        if precision == "auto":
            precision = cast(Precision, os.environ.get("ARTISTID_PRECISION") or "auto")
        if precision not in PRECISIONS:
            raise UsageError(f"precision must be auto, fp32, bf16 or int8; got {precision!r}")
        self.backbone = backbone
        self.preprocess: Preprocess = backbone.preprocess
        self.cache_dir = cache_dir or default_cache_dir()
        # int8 runs on the CPU runtimes: on a CUDA machine, "auto" means the CPU for it.
        on_cuda = device == "cuda" or (device == "auto" and machine().cuda and precision != "int8")
        self._device = "cuda" if on_cuda else ("cpu" if device == "auto" else device)
        # ONNX Runtime and OpenVINO run on the CPU here; another device means PyTorch.
        self.runtime, self.precision = choose_engine(
            "torch" if self._device != "cpu" else runtime, precision, backbone, cache_dir=self.cache_dir
        )
        # Set before the first batch: the runtime's threads [default: its own choice], and whether to answer one
        # image at a time as fast as possible (a service) rather than to get through batches (the default).
        self.threads: int | None = None
        self.latency = False
        self._engine: Engine | None = None

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device(self._device)

    def identity(self) -> str:
        """Everything a vector depends on besides the image's content: part of the cache key."""
        arithmetic: str = self.precision
        if arithmetic == "int8":  # the quantized graph is as much the vectors' source as the weights
            arithmetic = f"int8-{int8_identity(self.preprocess)}"
        return f"{self.features_identity()}/{self.runtime}/{arithmetic}"

    def features_identity(self) -> str:
        """What the vectors are, whichever runtime computes them: backbone, cut, pooling and preprocessing."""
        return features_identity(self.backbone)

    def last_layer_columns(self) -> tuple[int, int]:
        """The columns of a vector that the last feature node gives (in the whole painting's part): what the network
        makes of an image's content rather than of its brushwork."""
        widths = node_widths(self.backbone, self.cache_dir)
        return sum(widths[:-1]), sum(widths)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(
                self.runtime,
                self.backbone,
                self.precision,
                device=self._device,
                cache_dir=self.cache_dir,
                threads=self.threads,
                latency=self.latency,
            )
        return self._engine

    def pixels(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 NHWC pixels as a tensor on the extractor's device."""
        import torch

        return torch.from_numpy(np.require(pixels, requirements=["C", "W"])).to(self.device)

    def to_input(self, pixels: np.ndarray) -> torch.Tensor:
        """Normalized NCHW float batch from uint8 NHWC pixels, for code that runs the PyTorch network itself."""
        from artistid.forward import Normalize

        return Normalize(self.preprocess).to(self.device)(self.pixels(pixels))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        return self.engine(pixels)


def _absolute(path: str) -> str:
    return os.path.abspath(storage.local_name(path))


# --- the persistent cache --------------------------------------------------------------------------------------


class FeatureCache:
    """Vectors by content hash + extractor identity, in one SQLite file.

    SQLite transactions make it safe when two runs share it and when a run is killed midway: a vector is either
    wholly committed or absent, never half written. A second table remembers the content hash of each local file
    by (path, size, mtime), so a warm run need not even read the images.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.path = self.directory / "features-v1.sqlite"
        self._unwritable = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, dim INTEGER, vector BLOB)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha TEXT)"
            )
        except (OSError, sqlite3.Error) as exc:
            raise ArtistIdError(f"{self.path}: unusable feature cache ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def key(content_sha: str, identity: str) -> str:
        return hashlib.sha256(f"{content_sha}\0{identity}".encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for key, dim, blob in self._db.execute(
                f"SELECT key, dim, vector FROM features WHERE key IN ({marks})", chunk
            ):
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape == (dim,):  # a row of the wrong length is never served
                    found[key] = vector
        return found

    def _write(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        """One transaction. A cache that cannot be written (a full disk) is said so once, then only read: it saves
        time, and the run's own output matters more. A failed transaction leaves no part of itself behind."""
        if self._unwritable or not rows:
            return
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(statement, rows)
        except sqlite3.Error as exc:
            self._unwritable = True
            logger.warning("%s: cannot write to the feature cache (%s); going on without saving to it", self.path, exc)

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        rows = [(k, int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items.items()]
        self._write("INSERT OR REPLACE INTO features VALUES (?, ?, ?)", rows)

    def known_hashes(self, paths: Sequence[str]) -> dict[str, str]:
        """Content hashes of local files unchanged since they were last hashed."""
        stats: dict[str, tuple[str, int, int]] = {}
        for path in paths:
            if storage.is_local(path):
                try:
                    st = os.stat(storage.local_name(path))
                except OSError:
                    continue
                stats[_absolute(path)] = (path, st.st_size, st.st_mtime_ns)
        known: dict[str, str] = {}
        names = list(stats)
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for absolute, size, mtime_ns, sha in self._db.execute(
                f"SELECT path, size, mtime_ns, sha FROM files WHERE path IN ({marks})", chunk
            ):
                path, *stat = stats[absolute]
                if stat == [size, mtime_ns]:
                    known[path] = sha
        return known

    def remember_hashes(self, hashes: dict[str, tuple[int, int, str]]) -> None:
        rows = [(_absolute(p), *v) for p, v in hashes.items()]
        self._write("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", rows)


# --- the result ------------------------------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """Vectors for the images that could be used, and the reason for each that could not."""

    paths: list[str]
    labels: list[str | None]
    features: np.ndarray
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    identity: str = ""
    reused: int = 0  # vectors taken from the cache or the feature store, not computed

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def featurized(self) -> int:
        """Vectors computed by this run."""
        return len(self.paths) - self.reused

    def to_parquet(self, path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        """Writes path, label and features columns atomically (a storage URI works too)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        dim = self.features.shape[1] if len(self) else 0
        values = np.ascontiguousarray(self.features, dtype=np.float32).reshape(-1)
        vectors = pa.FixedSizeListArray.from_arrays(
            pa.Array.from_buffers(pa.float32(), len(values), [None, pa.py_buffer(values)]), dim
        )
        table = pa.table(
            {"path": _arrow_strings(self.paths), "label": _arrow_strings(self.labels), "features": vectors},
            metadata={"artistid.identity": self.identity},
        )
        # Float vectors neither repeat (a dictionary would hold nearly every value once) nor compress much.
        compression = {"path": "snappy", "label": "snappy", "features": "none"}
        storage.write_atomic(
            path,
            lambda handle: pq.write_table(table, handle, use_dictionary=["path", "label"], compression=compression),
            storage_options,
        )

    @classmethod
    def from_parquet(cls, path: str | Path) -> FeatureSet:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise ArtistIdError(f"{path}: not a readable Parquet file ({exc})") from None
        missing = {"path", "label", "features"} - set(table.column_names)
        if missing:
            raise ArtistIdError(f"{path}: not a features file, it lacks the columns {', '.join(sorted(missing))}")
        if "error" in table.column_names:  # written by the Spark engine: rows with an error carry no vector
            errors = table.filter(table["error"].is_valid())
            table = table.filter(table["error"].is_null())
            error_list = list(zip(errors["path"].to_pylist(), errors["error"].to_pylist(), strict=True))
        else:
            error_list = []
        vectors = table["features"].to_pylist()
        features = np.asarray(vectors, dtype=np.float32) if vectors else np.zeros((0, 0), np.float32)
        metadata = table.schema.metadata or {}
        return cls(
            paths=table["path"].to_pylist(),
            labels=table["label"].to_pylist(),
            features=features,
            errors=error_list,
            identity=metadata.get(b"artistid.identity", b"").decode() or _sidecar_identity(path),
        )


def _arrow_strings(values: Sequence[str | None]) -> pa.Array:
    """An Arrow string column made from its buffers, since `pa.array` imports pandas (most of a warm run)."""
    import pyarrow as pa

    encoded = [b"" if value is None else value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(item) for item in encoded], out=offsets[1:])
    valid = np.array([value is not None for value in values], dtype=bool)
    nulls = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    wide = offsets[-1] > np.iinfo(np.int32).max  # 32-bit offsets, as `pa.array` writes, where the text fits
    buffers = [nulls, pa.py_buffer(offsets if wide else offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.large_string() if wide else pa.string(), len(encoded), buffers)


def _sidecar_identity(path: str | Path) -> str:
    """The identity of a Parquet folder written by Spark, which keeps it in a `_artistid.json` beside the parts."""
    try:
        sidecar = json.loads(storage.read_bytes(storage.join(str(path), "_artistid.json")))
    except (OSError, ValueError):  # a single file, or a folder without one
        return ""
    return str(sidecar.get("artistid.identity", ""))


# --- the pipeline ----------------------------------------------------------------------------------------------


def _decoded_batches(
    jobs: list[tuple[int, str]],
    preprocess: Preprocess,
    workers: int,
    batch_size: int,
    storage_options: dict[str, Any] | None,
) -> Iterator[list[Decoded]]:
    if not workers:
        yield from decode_in_process(jobs, preprocess, storage_options, batch_size)
        return
    with DecodePool(preprocess, workers=workers, storage_options=storage_options) as pool:
        yield from pool.batches(jobs, batch_size)


def decode_workers() -> int:
    """Decoding processes for ordinary files: one per two cores, at most four.

    Pillow's reduced-size JPEG decoding costs a fraction of the forward pass for ordinary files, so one decoder per
    two cores keeps the model fed while it uses every core.
    """
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _default_workers(paths: Sequence[str]) -> int:
    """Decoding processes for these files: `decode_workers()`, or one per core for large scans.

    Multi-megabyte scans make decoding the bottleneck, and then every core decodes (bench/featurize.py measures it on
    large JPEGs).
    """
    sizes = []
    for path in paths[:: max(1, len(paths) // 64)]:
        if storage.is_local(path):
            with contextlib.suppress(OSError):
                sizes.append(os.stat(storage.local_path(path)).st_size)
    if sizes and statistics.median(sizes) > LARGE_FILE_BYTES:
        return os.cpu_count() or 2
    return decode_workers()


def featurize(
    samples: Sequence[Sample],
    extractor: FeatureExtractor,
    *,
    cache: FeatureCache | None = None,
    workers: int | None = None,
    batch_size: int = 16,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    store: FeatureStore | None = None,
) -> FeatureSet:
    """Feature vectors for `samples`, in their order; unusable images are left out and listed in `errors`.

    With a `store`, vectors it holds are reused and the computed ones are added to it.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    identity = extractor.identity()
    paths = [s.path for s in samples]
    vectors: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    stored = store.vectors(identity) if store is not None else {}
    computed_total = 0

    # Warm path: files whose content hash is known and whose vector is cached need no reading at all.
    pending = list(range(len(samples)))
    if cache is not None:
        known = cache.known_hashes(paths)
        keys = {i: FeatureCache.key(known[p], identity) for i, p in enumerate(paths) if p in known}
        hits = cache.get_many(list(keys.values()))
        vectors.update({i: hits[k] for i, k in keys.items() if k in hits})
        vectors.update({i: stored[known[paths[i]]] for i in keys if i not in vectors and known[paths[i]] in stored})
        pending = [i for i in range(len(samples)) if i not in vectors]

    if workers is None:
        # Even a few files decode in a worker: a crash or hang in a codec must cost only its file.
        workers = _default_workers([paths[i] for i in pending]) if len(pending) > 32 else 1
    bar = tqdm(
        total=len(samples),
        initial=len(vectors),
        unit="img",
        desc="featurize",
        disable=not progress or None,
        dynamic_ncols=True,
    )
    unsaved: dict[str, np.ndarray] = {}
    try:
        jobs = [(i, paths[i]) for i in pending]
        # Nothing to decode (every vector cached): no DataLoader, so a warm run never imports torch.
        for batch in (
            [] if not jobs else _decoded_batches(jobs, extractor.preprocess, workers, batch_size, storage_options)
        ):
            hashes = {d.index: (*d.stat, d.sha) for d in batch if d.stat is not None and d.sha}
            usable = [d for d in batch if d.pixels is not None]
            for d in batch:
                if d.pixels is None:
                    errors[d.index] = d.error
            keys = {d.index: FeatureCache.key(d.sha, identity) for d in usable}
            hits = cache.get_many(list(keys.values())) if cache is not None else {}
            vectors.update({d.index: hits[keys[d.index]] for d in usable if keys[d.index] in hits})
            vectors.update({d.index: stored[d.sha] for d in usable if d.index not in vectors and d.sha in stored})
            todo = [d for d in usable if d.index not in vectors]
            if todo:
                computed = extractor(np.stack([d.pixels for d in todo]))  # type: ignore[misc]
                vectors.update({d.index: computed[n] for n, d in enumerate(todo)})
                computed_total += len(todo)
                if cache is not None:
                    cache.put_many({keys[d.index]: computed[n] for n, d in enumerate(todo)})
                if store is not None:
                    unsaved.update({d.sha: computed[n] for n, d in enumerate(todo)})
                    if len(unsaved) >= STORE_PART_ROWS:
                        store.append(identity, unsaved)
                        unsaved = {}
            if cache is not None and hashes:
                cache.remember_hashes({paths[i]: v for i, v in hashes.items()})
            bar.update(len(batch))
    finally:
        bar.close()
        if store is not None:  # what was computed is kept, even when the run stops midway
            store.append(identity, unsaved)

    kept = sorted(vectors)
    # Stacked straight into float32: the matrix is the run's largest allocation, made once.
    features = np.stack([vectors[i] for i in kept], dtype=np.float32) if kept else np.zeros((0, 0), np.float32)
    for i in sorted(errors):
        logger.warning("skipped %s", errors[i])
    return FeatureSet(
        paths=[paths[i] for i in kept],
        labels=[samples[i].label for i in kept],
        features=features,
        errors=[(paths[i], errors[i]) for i in sorted(errors)],
        seconds=time.perf_counter() - started,
        identity=identity,
        reused=len(kept) - computed_total,
    )
