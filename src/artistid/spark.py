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
from pyspark import SparkFiles, StorageLevel, TaskContext, keyword_only
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
from artistid.feature_store import FeatureStore, part_bytes
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
    "is_connect",
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
    master: str | None = None,
    *,
    remote: str | None = None,
    app_name: str = "artistid",
    conf: dict[str, str] | None = None,
) -> SparkSession:
    """The active session, or a new one on `master` (default: what spark-submit set, else local[*]).

    With `remote` (sc://host:port), a Spark Connect session instead: the jobs run on that server's cluster.
    Local executors started from here run this Python, so they see the same artistid, torch and weights packages
    (on a cluster, spark-submit's --archives and spark.pyspark.python say which Python runs: see docs/spark.md).
    """
    if remote:
        return SparkSession.builder.remote(remote).getOrCreate()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def is_connect(spark: SparkSession) -> bool:
    """Whether `spark` is a Spark Connect session: no SparkContext, no RDDs, files travel as artifacts."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


@contextmanager
def session(master: str | None = None, *, remote: str | None = None) -> Iterator[SparkSession]:
    """A session for one command: quiet, and stopped at the end only if this call started it."""
    existing = None if remote else SparkSession.getActiveSession()
    with warnings.catch_warnings():
        # PySpark 4 warns about pandas 3 on every Arrow job, though this engine hands it Arrow, not pandas.
        warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
        spark = spark_session(master, remote=remote)
        if existing is None and not is_connect(spark):
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
    # The driver's runtime and precision: executors compute the vectors the driver's identity names.
    runtime: str = "torch"
    precision: str = "fp32"


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


def _load_extractor(path: str, runtime: str) -> FeatureExtractor:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(path, framework="np") as handle:
        card = from_dict(ExtractorCard, json.loads(handle.metadata()["artistid.extractor"]))
    backbone = rebuild_backbone(card.backbone, card.preprocess, load_file(path), source=path)
    return FeatureExtractor(backbone, precision=card.precision, runtime=runtime)  # type: ignore[arg-type]


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
        if job.kind == "predictions":
            found = Model.load(path, runtime=job.runtime, precision=job.precision)
        else:
            found = _load_extractor(path, job.runtime)
        extractor = found.extractor if isinstance(found, Model) else found
        extractor.threads = max(1, context.cpus() if context is not None else 1)
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
        columns.update(_answer_columns(job, engine, features, usable, len(paths)))
    else:
        columns[job.output_col] = _vectors(features, usable, len(paths), pa.float32())
    columns[job.error_col] = errors
    return pa.RecordBatch.from_pydict(columns)


def _answer_columns(job: _Job, model: Model, features: np.ndarray, usable: list[int], n: int) -> dict[str, pa.Array]:
    """The artist and the probabilities for the `usable` rows of `n` (nulls elsewhere), from their vectors."""
    probabilities = model.probabilities(features)
    artists: list[str | None] = [None] * n
    for i, answer in zip(usable, model.answers_for(features), strict=True):
        artists[i] = answer.artist
    return {
        job.output_col: pa.array(artists, pa.string()),
        job.probability_col: _vectors(probabilities, usable, n, pa.float64()),
    }


def _score_partition(job: _Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    engine = _loaded(job)
    for batch in batches:
        for start in range(0, batch.num_rows, job.batch_size):
            yield _score_chunk(job, engine, batch.slice(start, job.batch_size))


def _answer_partition(job: _Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Predictions from a `features` column (vectors from the feature store): the head only, no images read."""
    model = _loaded(job)
    if not isinstance(model, Model):
        raise ArtistIdError(f"{job.file_name}: a predictions job needs a model file")
    for batch in batches:
        vectors = batch.column("features")
        usable = [i for i, valid in enumerate(vectors.is_valid().to_pylist()) if valid]
        rows = vectors.take(pa.array(usable, pa.int64())).to_pylist()
        features = np.asarray(rows, dtype=np.float32) if rows else np.zeros((0, 0), np.float32)
        columns = {name: batch.column(name) for name in batch.schema.names if name != "features"}
        columns.update(_answer_columns(job, model, features, usable, batch.num_rows))
        columns[job.error_col] = columns.pop(job.error_col)  # last, as in every output
        yield pa.RecordBatch.from_pydict(columns)


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


# --- the feature store on the executors ---------------------------------------------------------------------------


def _content_sha(path: str | None, storage_options: dict[str, Any] | None) -> str | None:
    """The sha256 of a file's bytes; None for one that cannot be read (its scoring task will say why)."""
    if not path:
        return None
    try:
        return hashlib.sha256(storage.read_bytes(path, storage_options)).hexdigest()
    except Exception:
        return None


def _hash_partition(
    image_col: str, storage_options: dict[str, Any] | None, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        paths = batch.column(image_col).to_pylist()
        if all(storage.is_local(p) for p in paths if p):
            shas = [_content_sha(p, storage_options) for p in paths]
        else:
            with ThreadPoolExecutor(max_workers=_REMOTE_READS) as pool:
                shas = list(pool.map(lambda p: _content_sha(p, storage_options), paths))
        yield pa.RecordBatch.from_arrays([*batch.columns, pa.array(shas, pa.string())], [*batch.schema.names, "sha"])


def _read_parts(store: FeatureStore, identity: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for uri in batch.column("part").to_pylist():
            table = store.read_part(uri, identity)
            if table is not None:
                yield from table.to_batches()


def _append_partition(store: FeatureStore, job: _Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Passes the scored rows on, then adds their vectors to the store as one part (a retried task adds a copy)."""
    shas: list[str] = []
    vectors: list[pa.Array] = []
    for batch in batches:
        ok = batch.filter(batch.column(job.error_col).is_null())
        shas.extend(ok.column("sha").to_pylist())
        vectors.append(ok.column(job.output_col))
        yield batch.drop_columns(["sha"])
    if shas:
        data = part_bytes(job.identity, shas, pa.concat_arrays(vectors))
        storage.write_bytes_atomic(store.new_part_uri(job.identity), data, store.storage_options)


_PART_SCHEMA = T.StructType(
    [T.StructField("sha", T.StringType()), T.StructField("features", T.ArrayType(T.FloatType()))]
)


def _stored_features(frame: DataFrame, job: _Job, store: FeatureStore, partitions: int | None) -> tuple[DataFrame, int]:
    """(path, label, features, error) for `frame`, computing only the vectors `store` lacks; and how many it had.

    The executors hash every file, the stored vectors are joined in by hash, and only the rest is decoded and run
    through the backbone (those files are read twice); their vectors are added to the store as new parts. The
    driver sees part names and counts, never vectors.
    """
    spark = frame.sparkSession
    parts = store.part_uris(job.identity)
    hashed = frame.mapInArrow(
        functools.partial(_hash_partition, job.image_col, job.storage_options),
        T.StructType([*frame.schema.fields, T.StructField("sha", T.StringType())]),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    if parts:
        names = spark.createDataFrame([(uri,) for uri in parts], "part string")
        known = names.repartition(min(len(parts), _parallelism(spark))).mapInArrow(
            functools.partial(_read_parts, store, job.identity), _PART_SCHEMA
        )
        marks = known.select("sha").distinct().withColumn("stored", F.lit(True))
        flagged = hashed.join(marks, "sha", "left")
    else:
        known = None
        flagged = hashed.withColumn("stored", F.lit(None).cast("boolean"))
    counts = {row["stored"]: row["count"] for row in flagged.groupBy("stored").count().collect()}
    reused, todo_count = counts.get(True, 0), counts.get(None, 0)
    columns = list(frame.columns)
    pieces = []
    if todo_count:
        todo = flagged.where(F.col("stored").isNull()).select(*columns, "sha")
        todo = todo.repartition(partitions or default_partitions(spark, todo_count))
        scored = _score(todo, job)
        pieces.append(
            scored.mapInArrow(
                functools.partial(_append_partition, store, job),
                T.StructType([f for f in scored.schema.fields if f.name != "sha"]),
            )
        )
    if known is not None and reused:
        hits = flagged.where(F.col("stored")).select(*columns, "sha").join(known.dropDuplicates(["sha"]), "sha")
        pieces.append(hits.select(*columns, job.output_col, F.lit(None).cast("string").alias(job.error_col)))
    result = pieces[0]
    for piece in pieces[1:]:
        result = result.unionByName(piece)
    return result, int(reused)


# --- the driver --------------------------------------------------------------------------------------------------


@dataclass
class SparkRun:
    """What a Spark command wrote: rows with a result, and the files that could not be used."""

    output: str
    images: int
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    partitions: int = 0
    reused: int = 0  # vectors taken from the feature store, not computed

    @property
    def featurized(self) -> int:
        """Images whose vector this run computed."""
        return self.images - self.reused


# Cores assumed behind a Spark Connect server, which does not tell its client (--partitions overrides).
CONNECT_PARALLELISM = 8


def _parallelism(spark: SparkSession) -> int:
    if is_connect(spark):
        return int(spark.conf.get("spark.default.parallelism", None) or CONNECT_PARALLELISM)
    return int(spark.sparkContext.defaultParallelism)


def default_partitions(spark: SparkSession, n_images: int) -> int:
    """Several partitions per core, so a slow partition (large scans) does not hold the others back."""
    per_core = max(1, _parallelism(spark)) * 4
    return max(1, min(math.ceil(n_images / 16), max(per_core, math.ceil(n_images / 512))))


_SAMPLES_SCHEMA = T.StructType([T.StructField("path", T.StringType(), False), T.StructField("label", T.StringType())])


def samples_frame(spark: SparkSession, samples: Sequence[Sample], partitions: int | None = None) -> DataFrame:
    """A DataFrame (path, label) cut into `partitions` pieces (contiguous, in the samples' order, but on Connect)."""
    if not samples:
        raise ArtistIdError("no images to process")
    slices = partitions or default_partitions(spark, len(samples))
    rows = [(s.path, s.label) for s in samples]
    if is_connect(spark):  # no parallelize: the list travels to the server as one local relation
        return spark.createDataFrame(rows, _SAMPLES_SCHEMA).repartition(slices)
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, slices), _SAMPLES_SCHEMA)


def _ship(spark: SparkSession, file: Path, kind: Kind, identity: str, **options: Any) -> _Job:
    if is_connect(spark):  # no addFile: an artifact of the session, which tasks find with SparkFiles.get too
        spark.addArtifacts(str(file), file=True)
    else:
        context = spark.sparkContext
        if not any(shipped.endswith(f"/{file.name}") for shipped in context.listFiles):
            context.addFile(str(file))
    return _Job(kind=kind, file_name=file.name, identity=identity, **options)


def _hadoop_write(spark: SparkSession, uri: str, data: bytes) -> None:
    """Writes a small file through Spark's own Hadoop file system, which can reach wherever Spark writes."""
    if is_connect(spark):  # no JVM on this side: the client writes it with fsspec (abfss://, s3://, gs:// ...)
        storage.write_bytes_atomic(uri, data)
        return
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


def _features_job(
    spark: SparkSession, extractor: FeatureExtractor, storage_options: dict[str, Any] | None, batch_size: int
) -> _Job:
    file = _extractor_file(extractor)
    return _ship(
        spark,
        file,
        "features",
        extractor.identity(),
        batch_size=batch_size,
        storage_options=storage_options,
        runtime=extractor.runtime,
        precision=extractor.precision,
    )


def featurize(
    samples: Sequence[Sample],
    extractor: FeatureExtractor,
    output: str,
    *,
    spark: SparkSession,
    storage_options: dict[str, Any] | None = None,
    partitions: int | None = None,
    batch_size: int = 16,
    store: FeatureStore | None = None,
) -> SparkRun:
    """Writes a features Parquet folder (path, label, features, error) that `FeatureSet.from_parquet` reads.

    With a `store`, only the images it lacks are decoded and run through the backbone, and their vectors are added.
    """
    started = time.perf_counter()
    slices = partitions or default_partitions(spark, len(samples))
    job = _features_job(spark, extractor, storage_options, batch_size)
    frame = samples_frame(spark, samples, slices)
    info = {"kind": "features", "artistid.identity": job.identity}
    reused = 0
    if store is None:
        features = _score(frame, job)
    else:
        features, reused = _stored_features(frame, job, store, partitions)
    _write(features, output, info)
    return replace(_run_summary(spark, output, job.error_col, started, slices), reused=reused)


def _model_job(
    spark: SparkSession, model_uri: str, storage_options: dict[str, Any] | None, **options: Any
) -> tuple[Model, _Job]:
    model = Model.load(model_uri, storage_options)  # checks the file and gives the artists' names
    staged = _stage(storage.read_bytes(model_uri, storage_options), "model")
    options.setdefault("output_col", "artist")
    options.update(runtime=model.extractor.runtime, precision=model.extractor.precision)
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
    store: FeatureStore | None = None,
) -> SparkRun:
    """Writes a predictions Parquet folder: path, label, artist, probabilities (order of `classes`), error."""
    started = time.perf_counter()
    slices = partitions or default_partitions(spark, len(samples))
    model, job = _model_job(spark, model_uri, storage_options, batch_size=batch_size)
    info = {"kind": "predictions", "model": str(model_uri), "classes": list(model.card.classes)}
    scored, reused = _predictions(samples_frame(spark, samples, slices), model, job, store, partitions)
    _write(scored, output, info)
    return replace(_run_summary(spark, output, job.error_col, started, slices), reused=reused)


def _predictions(
    frame: DataFrame, model: Model, job: _Job, store: FeatureStore | None, partitions: int | None
) -> tuple[DataFrame, int]:
    """Predictions for the images of `frame`: from their pixels, or with a store from the vectors it keeps."""
    if store is None:
        return _score(frame, job), 0
    spark = frame.sparkSession
    features_job = _features_job(spark, model.extractor, job.storage_options, job.batch_size)
    features, reused = _stored_features(frame, features_job, store, partitions)
    answers = T.StructType([f for f in _output_schema(job, features.schema).fields if f.name != "features"])
    return features.mapInArrow(functools.partial(_answer_partition, job), answers), reused


def evaluate(
    model_uri: str,
    samples: Sequence[Sample],
    *,
    spark: SparkSession,
    storage_options: dict[str, Any] | None = None,
    partitions: int | None = None,
    batch_size: int = 16,
    store: FeatureStore | None = None,
) -> Evaluation:
    """The local engine's `Evaluation`, with the images scored on the executors (only probabilities come back)."""
    model, job = _model_job(spark, model_uri, storage_options, batch_size=batch_size)
    scored, _ = _predictions(samples_frame(spark, samples, partitions), model, job, store, partitions)
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
            runtime=self.extractor.runtime,
            precision=self.extractor.precision,
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
