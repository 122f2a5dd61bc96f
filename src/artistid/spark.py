"""The Spark engine: featurize, predict and evaluate on Apache Spark, from `local[*]` on a laptop to a cluster.

    spark = spark_session("local[2]")
    run = featurize(load_dataset("paintings").samples, extractor, "features.parquet", spark=spark)
    run = predict("model.safetensors", list_images(["az://paintings/new"]), "predictions.parquet", spark=spark)

The driver lists the images (any folder, map file or storage URI `artistid.datasets` understands) into a
DataFrame of URIs; the executors read each file with fsspec, so az://, s3://, gs:// and https:// need no Hadoop
jars. The backbone or model travels with the job as one file (`SparkContext.addFile`), is loaded once per executor
Python process, and runs on batches of decoded images in `mapInArrow`. An image that cannot be used becomes a row
with an `error`, never a failed task. Results equal the local engine's: both decode with `artistid.images` and run
the same extractor at the precision the driver resolved.

This is the only module that imports pyspark (`pip install artistid[spark]`).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pyspark import SparkFiles, TaskContext, keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from artistid import storage
from artistid.answers import REFUSALS, Refusal
from artistid.backbones import rebuild_backbone
from artistid.card import ExtractorCard, from_dict, to_dict
from artistid.datasets import Sample
from artistid.errors import ArtistIdError
from artistid.evaluate import Evaluation, score_predictions
from artistid.features import FeatureExtractor, read_and_decode
from artistid.model import Model

__all__ = [
    "SIDECAR",
    "ArtistFeaturizer",
    "ArtistPredictor",
    "SparkRun",
    "default_partitions",
    "evaluate",
    "featurize",
    "predict",
    "samples_frame",
    "session",
    "spark_session",
]

logger = logging.getLogger(__name__)

# Written beside the part files of every output folder: what made them (feature identity, artist names).
SIDECAR = "_artistid.json"
Kind = Literal["features", "predictions"]


# --- the session -----------------------------------------------------------------------------------------------


def spark_session(
    master: str | None = None, *, app_name: str = "artistid", conf: dict[str, str] | None = None
) -> SparkSession:
    """The active session, or a new one on `master` (default: what spark-submit set, else local[*]).

    Local executors started from here run this Python, so they see the same artistid, torch and weights packages
    (on a cluster, spark-submit's --archives and spark.pyspark.python say which Python runs: see docs/spark.md).
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


@contextmanager
def session(master: str | None = None) -> Iterator[SparkSession]:
    """A session for one command: quiet, and stopped at the end only if this call started it."""
    existing = SparkSession.getActiveSession()
    with warnings.catch_warnings():
        # PySpark 4 warns about pandas 3 on every Arrow job, though this engine hands it Arrow, not pandas.
        warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
        spark = spark_session(master)
        if existing is None:
            spark.sparkContext.setLogLevel("ERROR")
        try:
            yield spark
        finally:
            if existing is None:
                spark.stop()


# --- what travels with the job -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """Everything a task needs, small enough to pickle with the function: the shipped file and the columns."""

    kind: Kind
    file_name: str
    identity: str
    image_col: str = "path"
    output_col: str = "features"  # features, or the predicted artist
    probability_col: str = "probabilities"
    error_col: str = "error"
    batch_size: int = 16
    storage_options: dict[str, Any] | None = None


@functools.cache
def _staging_dir() -> Path:
    """Where the driver keeps the files it ships, for as long as this process lives (executors may fetch late)."""
    directory = Path(tempfile.mkdtemp(prefix="artistid-spark-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def _stage(data: bytes, prefix: str) -> Path:
    """Writes `data` under a name made of its hash, so one session can ship several versions of a file."""
    target = _staging_dir() / f"{prefix}-{hashlib.sha256(data).hexdigest()[:32]}.safetensors"
    if not target.exists():
        storage.write_bytes_atomic(target, data)
    return target


def _extractor_file(extractor: FeatureExtractor) -> Path:
    """The backbone as shipped to executors: its (already renamed) weights and how to rebuild it."""
    from safetensors.torch import save

    backbone = extractor.backbone
    card = ExtractorCard(backbone.card, backbone.preprocess, extractor.precision)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.network.state_dict().items()}
    return _stage(save(state, metadata={"artistid.extractor": json.dumps(to_dict(card))}), "backbone")


def _load_extractor(path: str) -> FeatureExtractor:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as handle:
        card = from_dict(ExtractorCard, json.loads(handle.metadata()["artistid.extractor"]))
    backbone = rebuild_backbone(card.backbone, card.preprocess, load_file(path))
    return FeatureExtractor(backbone, precision=card.precision)  # type: ignore[arg-type]


# Per executor Python process (Spark reuses them across tasks): the backbone or model of each shipped file.
_LOADED: dict[str, FeatureExtractor | Model] = {}


def _loaded(job: _Job) -> FeatureExtractor | Model:
    found = _LOADED.get(job.file_name)
    if found is None:
        import torch

        # A task owns spark.task.cpus cores; more torch threads would fight the other tasks of the executor.
        context = TaskContext.get()
        torch.set_num_threads(max(1, context.cpus() if context is not None else 1))
        path = SparkFiles.get(job.file_name)
        found = Model.load(path) if job.kind == "predictions" else _load_extractor(path)
        extractor = found.extractor if isinstance(found, Model) else found
        if extractor.identity() != job.identity:
            raise ArtistIdError(
                f"{job.file_name}: the executor rebuilt {extractor.identity()!r} but the driver has {job.identity!r}; "
                "executors need the same artistid, torch and timm versions as the driver"
            )
        _LOADED[job.file_name] = found
    return found


# --- the per-partition work ------------------------------------------------------------------------------------

# Files read at once per task from a storage URI; enough to hide a store's latency behind a core's decoding.
_REMOTE_READS = 8


def _decode(index: int, path: str | None, job: _Job, extractor: FeatureExtractor) -> tuple[np.ndarray | None, str]:
    """Pixels, or the reason why not: any failure on one file is that file's error, not the task's."""
    if not path:
        return None, "no image path in this row"
    try:
        decoded = read_and_decode(index, path, extractor.preprocess, job.storage_options)
    except Exception as exc:
        return None, f"{path}: cannot decode image ({storage.describe_error(exc)})"
    return decoded.pixels, decoded.error


def _vectors(rows: np.ndarray, usable: list[int], n: int, value_type: pa.DataType) -> pa.Array:
    """A list column with one vector per usable row and nulls elsewhere."""
    width = rows.shape[1] if len(usable) else 0
    lengths = np.zeros(n, dtype=np.int32)
    lengths[usable] = width
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    mask = np.ones(n, dtype=bool)
    mask[usable] = False
    values = pa.array(rows.reshape(-1).astype(value_type.to_pandas_dtype()), value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(mask))


def _score_chunk(job: _Job, engine: FeatureExtractor | Model, chunk: pa.RecordBatch) -> pa.RecordBatch:
    extractor = engine.extractor if isinstance(engine, Model) else engine
    paths = chunk.column(job.image_col).to_pylist()
    if all(storage.is_local(p) for p in paths if p):
        decoded = [_decode(i, p, job, extractor) for i, p in enumerate(paths)]
    else:  # reads from a store wait on the network, not the CPU: overlap them
        with ThreadPoolExecutor(max_workers=_REMOTE_READS) as pool:
            decoded = list(pool.map(lambda item: _decode(item[0], item[1], job, extractor), enumerate(paths)))
    usable = [i for i, (pixels, _) in enumerate(decoded) if pixels is not None]
    errors = pa.array([None if pixels is not None else error for pixels, error in decoded], pa.string())
    pixels = [image for image, _ in decoded if image is not None]  # the usable rows, in order
    features = extractor(np.stack(pixels)) if pixels else np.zeros((0, 0), np.float32)
    columns = dict(zip(chunk.schema.names, chunk.columns, strict=True))
    if isinstance(engine, Model):
        probabilities = engine.probabilities(features)
        artists: list[str | None] = [None] * len(paths)
        for i, answer in zip(usable, engine.answers_for(features), strict=True):
            artists[i] = answer.artist
        columns[job.output_col] = pa.array(artists, pa.string())
        columns[job.probability_col] = _vectors(probabilities, usable, len(paths), pa.float64())
    else:
        columns[job.output_col] = _vectors(features, usable, len(paths), pa.float32())
    columns[job.error_col] = errors
    return pa.RecordBatch.from_pydict(columns)


def _score_partition(job: _Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    engine = _loaded(job)
    for batch in batches:
        for start in range(0, batch.num_rows, job.batch_size):
            yield _score_chunk(job, engine, batch.slice(start, job.batch_size))


def _output_schema(job: _Job, input_schema: T.StructType) -> T.StructType:
    if job.kind == "features":
        added = [T.StructField(job.output_col, T.ArrayType(T.FloatType()))]
    else:
        added = [
            T.StructField(job.output_col, T.StringType()),
            T.StructField(job.probability_col, T.ArrayType(T.DoubleType())),
        ]
    kept = [f for f in input_schema.fields if f.name not in {job.output_col, job.probability_col, job.error_col}]
    return T.StructType([*kept, *added, T.StructField(job.error_col, T.StringType())])


def _score(frame: DataFrame, job: _Job) -> DataFrame:
    """`frame` with the job's columns added, computed where the data is."""
    kept = [c for c in frame.columns if c not in {job.output_col, job.probability_col, job.error_col}]
    frame = frame.select(*kept)
    return frame.mapInArrow(functools.partial(_score_partition, job), _output_schema(job, frame.schema))


# --- the driver --------------------------------------------------------------------------------------------------


@dataclass
class SparkRun:
    """What a Spark command wrote: rows with a result, and the files that could not be used."""

    output: str
    images: int
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    partitions: int = 0

    def summary(self, done: str) -> str:
        """One line for people: `30 images featurized in 4.2 s (7 img/s, 2 partitions) -> out.parquet`."""
        rate = self.images / max(self.seconds, 1e-9)
        return (
            f"{self.images} images {done} in {self.seconds:.1f} s ({rate:.1f} img/s, {self.partitions} partitions)"
            f" -> {self.output}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "skipped": len(self.errors),
            "seconds": round(self.seconds, 3),
            "partitions": self.partitions,
            "output": self.output,
            "skipped_files": [{"path": p, "reason": r} for p, r in self.errors],
        }


def default_partitions(spark: SparkSession, n_images: int) -> int:
    """Several partitions per core, so a slow partition (large scans) does not hold the others back."""
    per_core = max(1, spark.sparkContext.defaultParallelism) * 4
    return max(1, min(math.ceil(n_images / 16), max(per_core, math.ceil(n_images / 512))))


def samples_frame(spark: SparkSession, samples: Sequence[Sample], partitions: int | None = None) -> DataFrame:
    """A DataFrame (path, label) in the samples' order, cut into contiguous partitions."""
    if not samples:
        raise ArtistIdError("no images to process")
    slices = partitions or default_partitions(spark, len(samples))
    rows = spark.sparkContext.parallelize([(s.path, s.label) for s in samples], slices)
    schema = T.StructType([T.StructField("path", T.StringType(), False), T.StructField("label", T.StringType())])
    return spark.createDataFrame(rows, schema)


def _ship(spark: SparkSession, file: Path, kind: Kind, identity: str, **options: Any) -> _Job:
    context = spark.sparkContext
    if not any(shipped.endswith(f"/{file.name}") for shipped in context.listFiles):
        context.addFile(str(file))
    return _Job(kind=kind, file_name=file.name, identity=identity, **options)


def _hadoop_write(spark: SparkSession, uri: str, data: bytes) -> None:
    """Writes a small file through Spark's own Hadoop file system, which can reach wherever Spark writes."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)  # type: ignore[union-attr]
    stream = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).create(path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def _write(frame: DataFrame, output: str, info: dict[str, Any]) -> None:
    """Writes the Parquet folder and its sidecar; a local one replaces any old one only once complete."""
    sidecar = json.dumps(info, indent=2).encode()
    if not storage.is_local(output):  # hdfs://, abfss://, s3a://: Spark's committer publishes the job at its end
        frame.write.mode("overwrite").parquet(output)
        _hadoop_write(frame.sparkSession, f"{output.rstrip('/')}/{SIDECAR}", sidecar)
        return
    target = storage.local_path(output).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        frame.write.parquet(str(staging))
        (staging / SIDECAR).write_bytes(sidecar)
        if target.exists():
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run_summary(spark: SparkSession, output: str, error_col: str, started: float, partitions: int) -> SparkRun:
    # Readers treat a path as a Hadoop glob; the output is one folder, whatever characters its name has.
    written = spark.read.parquet(re.sub(r"([\[\]{}*?\\])", r"\\\1", output))
    failed = written.where(F.col(error_col).isNotNull()).select("path", error_col).collect()
    total = written.count()
    errors = sorted((row["path"], row[error_col]) for row in failed)
    for path, reason in errors:
        logger.warning("skipped %s", reason if reason.startswith(path) else f"{path}: {reason}")
    return SparkRun(output, total - len(errors), errors, time.perf_counter() - started, partitions)


def featurize(
    samples: Sequence[Sample],
    extractor: FeatureExtractor,
    output: str,
    *,
    spark: SparkSession,
    storage_options: dict[str, Any] | None = None,
    partitions: int | None = None,
    batch_size: int = 16,
) -> SparkRun:
    """Writes a features Parquet folder (path, label, features, error) that `FeatureSet.from_parquet` reads."""
    started = time.perf_counter()
    identity = extractor.identity()
    job = _ship(
        spark,
        _extractor_file(extractor),
        "features",
        identity,
        batch_size=batch_size,
        storage_options=storage_options,
    )
    frame = samples_frame(spark, samples, partitions)
    info = {"kind": "features", "artistid.identity": identity}
    _write(_score(frame, job), output, info)
    return _run_summary(spark, output, job.error_col, started, frame.rdd.getNumPartitions())


def _model_job(
    spark: SparkSession, model_uri: str, storage_options: dict[str, Any] | None, **options: Any
) -> tuple[Model, _Job]:
    model = Model.load(model_uri, storage_options)  # checks the file and gives the artists' names
    staged = _stage(storage.read_bytes(model_uri, storage_options), "model")
    options.setdefault("output_col", "artist")
    job = _ship(spark, staged, "predictions", model.extractor.identity(), storage_options=storage_options, **options)
    return model, job


def predict(
    model_uri: str,
    samples: Sequence[Sample],
    output: str,
    *,
    spark: SparkSession,
    storage_options: dict[str, Any] | None = None,
    partitions: int | None = None,
    batch_size: int = 16,
) -> SparkRun:
    """Writes a predictions Parquet folder: path, label, artist, probabilities (order of `classes`), error."""
    started = time.perf_counter()
    model, job = _model_job(spark, model_uri, storage_options, batch_size=batch_size)
    frame = samples_frame(spark, samples, partitions)
    info = {"kind": "predictions", "model": str(model_uri), "classes": list(model.card.classes)}
    _write(_score(frame, job), output, info)
    return _run_summary(spark, output, job.error_col, started, frame.rdd.getNumPartitions())


def evaluate(
    model_uri: str,
    samples: Sequence[Sample],
    *,
    spark: SparkSession,
    storage_options: dict[str, Any] | None = None,
    partitions: int | None = None,
    batch_size: int = 16,
) -> Evaluation:
    """The local engine's `Evaluation`, with the images scored on the executors (only probabilities come back)."""
    model, job = _model_job(spark, model_uri, storage_options, batch_size=batch_size)
    scored = _score(samples_frame(spark, samples, partitions), job)
    rows = scored.select("path", "label", job.output_col, job.probability_col, job.error_col).collect()
    ok = [r for r in rows if r[job.error_col] is None]
    skipped = [(r["path"], r[job.error_col]) for r in rows if r[job.error_col] is not None]
    probabilities = np.asarray([r[job.probability_col] for r in ok], dtype=np.float64).reshape(len(ok), -1)
    # The executors decided each answer with the refusal scores; the refusals come back in the artist column.
    decided = model.card.decide(probabilities)
    answers = [
        replace(answer, artist=r[job.output_col], refusal=_refusal(r[job.output_col]))
        for r, answer in zip(ok, decided, strict=True)
    ]
    paths, labels = [r["path"] for r in ok], [r["label"] for r in ok]
    return score_predictions(model, paths, labels, probabilities, skipped, answers)


def _refusal(artist: str) -> Refusal | None:
    return next((refusal for refusal in REFUSALS if refusal == artist), None)


# --- Spark ML wrappers ------------------------------------------------------------------------------------------


class _ImageParams(Params):
    """The parameters both wrappers share: where the image URIs are, and where errors go.

    Parameter names are camelCase, as everywhere in Spark ML, so they read the same from Scala and Python.
    """

    imageCol: Param[str] = Param(Params._dummy(), "imageCol", "column of image paths or URIs", TypeConverters.toString)
    errorCol: Param[str] = Param(
        Params._dummy(), "errorCol", "column for the reason an image could not be used", TypeConverters.toString
    )
    batchSize: Param[int] = Param(Params._dummy(), "batchSize", "images per forward pass", TypeConverters.toInt)
    storageOptions: Param[dict[str, Any]] = Param(
        Params._dummy(), "storageOptions", "fsspec options for reading the images (e.g. account_name)"
    )

    def _storage_options(self) -> dict[str, Any] | None:
        return self.getOrDefault(self.storageOptions) or None


class ArtistFeaturizer(Transformer, _ImageParams):
    """Adds a feature-vector column for the image URIs in `imageCol` (SynapseML's ImageFeaturizer, for artistid).

    ArtistFeaturizer(extractor=FeatureExtractor(create_backbone("efficientnet_lite0")), imageCol="uri")
    """

    outputCol: Param[str] = Param(
        Params._dummy(), "outputCol", "column for the feature vectors", TypeConverters.toString
    )

    @keyword_only
    def __init__(
        self,
        *,
        extractor: FeatureExtractor | None = None,
        imageCol: str = "path",
        outputCol: str = "features",
        errorCol: str = "error",
        batchSize: int = 16,
        storageOptions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self._setDefault(imageCol="path", outputCol="features", errorCol="error", batchSize=16, storageOptions={})
        kwargs = {k: v for k, v in self._input_kwargs.items() if k != "extractor"}  # type: ignore[attr-defined]
        self._set(**kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        if self.extractor is None:
            raise ArtistIdError("ArtistFeaturizer needs an extractor: ArtistFeaturizer(extractor=...)")
        job = _ship(
            dataset.sparkSession,
            _extractor_file(self.extractor),
            "features",
            self.extractor.identity(),
            image_col=self.getOrDefault(self.imageCol),
            output_col=self.getOrDefault(self.outputCol),
            error_col=self.getOrDefault(self.errorCol),
            batch_size=self.getOrDefault(self.batchSize),
            storage_options=self._storage_options(),
        )
        return _score(dataset, job)


class ArtistPredictor(Transformer, _ImageParams):
    """Adds the predicted artist and the probabilities (order of `classes`) for the image URIs in `imageCol`.

    ArtistPredictor(modelPath="model.safetensors", imageCol="uri").transform(frame)
    """

    modelPath: Param[str] = Param(
        Params._dummy(), "modelPath", "model file (a storage URI works too)", TypeConverters.toString
    )
    predictionCol: Param[str] = Param(
        Params._dummy(), "predictionCol", "column for the predicted artist", TypeConverters.toString
    )
    probabilityCol: Param[str] = Param(
        Params._dummy(), "probabilityCol", "column for the probability of each artist", TypeConverters.toString
    )

    @keyword_only
    def __init__(
        self,
        *,
        modelPath: str | None = None,
        imageCol: str = "path",
        predictionCol: str = "artist",
        probabilityCol: str = "probabilities",
        errorCol: str = "error",
        batchSize: int = 16,
        storageOptions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._setDefault(
            imageCol="path",
            predictionCol="artist",
            probabilityCol="probabilities",
            errorCol="error",
            batchSize=16,
            storageOptions={},
        )
        self._set(**self._input_kwargs)  # type: ignore[attr-defined]

    def classes(self) -> list[str]:
        """The artists, in the order of the probability column."""
        model = Model.load(self.getOrDefault(self.modelPath), self._storage_options())
        return [str(c) for c in model.classes_]

    def _transform(self, dataset: DataFrame) -> DataFrame:
        if not self.isDefined(self.modelPath):
            raise ArtistIdError("ArtistPredictor needs a model file: ArtistPredictor(modelPath=...)")
        _, job = _model_job(
            dataset.sparkSession,
            self.getOrDefault(self.modelPath),
            self._storage_options(),
            image_col=self.getOrDefault(self.imageCol),
            output_col=self.getOrDefault(self.predictionCol),
            probability_col=self.getOrDefault(self.probabilityCol),
            error_col=self.getOrDefault(self.errorCol),
            batch_size=self.getOrDefault(self.batchSize),
        )
        return _score(dataset, job)
