"""The Spark engine on a real standalone cluster: a master and two one-core workers, each its own JVM, and drivers
started as `artistid ... --master spark://...` processes, as a user runs them.

Proves what `local[2]` cannot: that the model and backbone travel to other JVMs, that executors read images from
files and from Azure Blob (Azurite) themselves, that both workers run tasks (their executors' task counts in the
event log), and that the answers equal the local engine's.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest_spark import CLUSTER_BAD_FILES, run_artistid
from spark_cluster import StandaloneCluster
from typer.testing import CliRunner

from artistid import storage
from artistid.backbones import create_backbone
from artistid.cli import app
from artistid.datasets import load_dataset
from artistid.feature_store import FeatureStore
from artistid.features import FeatureExtractor, FeatureSet, featurize

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")


def _bad(paintings: Path) -> set[str]:
    return {str(paintings / name) for name in CLUSTER_BAD_FILES}


def _local_answers(model: Path, paths: list[str]) -> dict[str, str]:
    """The local engine's artist for each path (`artistid predict --json`)."""
    result = CliRunner().invoke(app, ["predict", str(model), *paths, "--json", "--no-cache", "--no-strict"])
    assert result.exit_code == 0, result.output
    return {row["path"]: row["artist"] for row in json.loads(result.stdout) if "artist" in row}


def _workers_of_new_app(cluster: StandaloneCluster, before: set[str]) -> dict[str, int]:
    """Tasks per worker (by its address) in the one application that ran since `before`."""
    new = {name: tasks for name, tasks in cluster.task_executors().items() if name not in before}
    assert len(new) == 1, sorted(new)
    per_worker: dict[str, int] = {}
    for executor, tasks in next(iter(new.values())).items():
        worker = executor.split(" executor")[0]
        per_worker[worker] = per_worker.get(worker, 0) + tasks
    return per_worker


def test_featurize_on_the_cluster_runs_on_both_workers_reuses_the_store_and_equals_the_local_engine(
    spark_cluster: StandaloneCluster, cluster_paintings: Path, tmp_path: Path
) -> None:
    samples = load_dataset(str(cluster_paintings)).samples
    extractor = FeatureExtractor(create_backbone("efficientnet_lite0"), precision="fp32")
    usable = [s for s in samples if s.path not in _bad(cluster_paintings)]
    store = FeatureStore(str(tmp_path / "store"))
    # The local engine fills the store with half the vectors: the cluster computes only the others.
    first = featurize(usable[: len(usable) // 2], extractor, workers=0, progress=False, store=store)
    assert (first.featurized, first.reused) == (len(usable) // 2, 0)

    before = set(spark_cluster.task_executors())
    output = tmp_path / "features.parquet"
    summary = run_artistid(
        ["featurize", str(cluster_paintings), "-o", str(output), "--precision", "fp32", "--engine", "spark",
         "--master", spark_cluster.url, "--partitions", "4", "--feature-store", store.uri],
        spark_cluster.client_env(),
    )  # fmt: skip
    assert summary["reused"] == len(usable) // 2
    assert summary["featurized"] == len(usable) - len(usable) // 2
    assert {s["path"] for s in summary["skipped_files"]} == _bad(cluster_paintings)

    per_worker = _workers_of_new_app(spark_cluster, before)
    assert len(per_worker) == 2 and all(tasks > 0 for tasks in per_worker.values()), per_worker

    local = featurize(samples, extractor, workers=0, progress=False)
    distributed = FeatureSet.from_parquet(output)
    assert sorted(distributed.paths) == sorted(local.paths)
    by_path = dict(zip(distributed.paths, distributed.features, strict=True))
    for path, vector in zip(local.paths, local.features, strict=True):
        np.testing.assert_allclose(by_path[path], vector, rtol=0, atol=1e-5, err_msg=path)
    assert sorted(distributed.errors) == sorted(local.errors)  # bad files are rows with the local engine's reason

    # The executors added what they computed: now the store has every vector, for either engine.
    again = featurize(samples, extractor, workers=0, progress=False, store=store)
    assert (again.featurized, again.reused) == (0, len(usable))


def test_predict_on_the_cluster_reads_images_and_model_from_azure_blob_in_the_executors(
    spark_cluster: StandaloneCluster, azurite, cluster_paintings: Path, demo_model_path: Path, tmp_path: Path
) -> None:
    container = f"cluster-{uuid.uuid4().hex[:8]}"
    images = [*sorted(cluster_paintings.glob("*/*.jpg")), cluster_paintings / "unknown-painter.jpg"]
    for image in images:
        uri = f"az://{container}/new/{image.parent.name}-{image.name}"
        storage.write_bytes_atomic(uri, image.read_bytes(), azurite.storage_options)
    model_uri = f"az://{container}/models/demo.safetensors"
    storage.write_bytes_atomic(model_uri, demo_model_path.read_bytes(), azurite.storage_options)

    output = tmp_path / "predictions.parquet"
    summary = run_artistid(
        ["predict", model_uri, f"az://{container}/new", "--engine", "spark", "--master", spark_cluster.url,
         "-o", str(output), "--no-strict", "--storage-option", f"connection_string={azurite.connection_string}"],
        spark_cluster.client_env(),
    )  # fmt: skip
    assert summary["images"] == len(images) - 1 and summary["skipped"] == 1  # the truncated JPEG

    rows = {row["path"].rsplit("/", 1)[1]: row for row in pq.read_table(output).to_pylist()}
    assert all(f"://{container}/new/" in row["path"] for row in rows.values())  # URIs, read by the executors
    expected = _local_answers(demo_model_path, [str(image) for image in images])
    for image in images:
        row = rows[f"{image.parent.name}-{image.name}"]
        if str(image) in expected:
            assert row["artist"] == expected[str(image)] and row["error"] is None, image
        else:
            assert row["artist"] is None and "truncated" in row["error"], image


def test_evaluate_on_the_cluster_with_a_feature_store_gives_the_local_engines_report(
    spark_cluster: StandaloneCluster, cluster_paintings: Path, demo_model_path: Path, tmp_path: Path
) -> None:
    local = CliRunner().invoke(
        app, ["evaluate", str(demo_model_path), str(cluster_paintings), "--no-cache", "--json", "-q"]
    )
    assert local.exit_code == 0, local.output
    expected = json.loads(local.stdout)
    store = tmp_path / "store"
    got = run_artistid(
        ["evaluate", str(demo_model_path), str(cluster_paintings), "--engine", "spark", "--master", spark_cluster.url,
         "--feature-store", str(store), "-q"],
        spark_cluster.client_env(),
    )  # fmt: skip
    for key in ("accuracy", "top2_accuracy", "n", "confusion_matrix", "unknown"):
        assert got[key] == expected[key], key
    assert sorted(s["path"] for s in got["skipped"]) == sorted(_bad(cluster_paintings))
    # The vectors it computed are in the store, under the model's extractor.
    assert len(list((store / "v1").glob("*/part-*.parquet"))) >= 1
