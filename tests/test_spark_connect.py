"""The Spark engine through Spark Connect (`--remote sc://...`): the pyspark distribution's Connect server, running
its jobs on the standalone cluster, and `artistid` as a thin client process (no JVM of its own).

Connect has no SparkContext: the engine ships the backbone and the model as session artifacts (`addArtifacts`),
builds its frames from local relations instead of `parallelize`, and writes the sidecar with fsspec.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest_spark import CLUSTER_BAD_FILES, run_artistid
from spark_cluster import ConnectServer
from typer.testing import CliRunner

from artistid.backbones import create_backbone
from artistid.cli import app
from artistid.datasets import load_dataset
from artistid.features import FeatureExtractor, FeatureSet, featurize
from artistid.model import Model

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")


@pytest.fixture(scope="module")
def connect_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("connect-store") / "store"


def test_featurize_through_spark_connect_equals_the_local_engine_and_fills_the_store(
    connect_server: ConnectServer, cluster_paintings: Path, demo_model_path: Path, connect_store: Path, tmp_path: Path
) -> None:
    model = Model.load(demo_model_path)  # featurized as the model does, so that predict reuses the vectors
    precision, backbone = model.extractor.precision, model.card.backbone
    cut = [argument for node in backbone.feature_nodes for argument in ("--feature-node", node)]
    centre = model.preprocess.centre
    cut += ["--centre"] if centre else []
    output = tmp_path / "features.parquet"
    summary = run_artistid(
        ["featurize", str(cluster_paintings), "-o", str(output), "--precision", precision, "--engine", "spark",
         "--remote", connect_server.url, "--partitions", "3", "--feature-store", str(connect_store),
         *cut, "--pooling", backbone.pooling],
        connect_server.env(),
    )  # fmt: skip
    bad = {str(cluster_paintings / name) for name in CLUSTER_BAD_FILES}
    assert {s["path"] for s in summary["skipped_files"]} == bad
    assert summary["reused"] == 0 and summary["featurized"] == summary["images"]

    extractor = FeatureExtractor(
        create_backbone(
            "efficientnet_lite0", feature_nodes=backbone.feature_nodes, pooling=backbone.pooling, centre=centre
        ),
        precision=precision,  # type: ignore[arg-type]
    )
    local = featurize(load_dataset(str(cluster_paintings)).samples, extractor, workers=0, progress=False)
    distributed = FeatureSet.from_parquet(output)
    assert distributed.identity == extractor.identity()
    by_path = dict(zip(distributed.paths, distributed.features, strict=True))
    assert sorted(by_path) == sorted(local.paths)
    for path, vector in zip(local.paths, local.features, strict=True):
        np.testing.assert_allclose(by_path[path], vector, rtol=0, atol=1e-3, err_msg=path)
    assert sorted(distributed.errors) == sorted(local.errors)


def test_predict_through_spark_connect_reuses_the_store_and_names_the_local_engines_artists(
    connect_server: ConnectServer, cluster_paintings: Path, demo_model_path: Path, connect_store: Path, tmp_path: Path
) -> None:
    output = tmp_path / "predictions.parquet"
    summary = run_artistid(
        ["predict", str(demo_model_path), str(cluster_paintings), "--engine", "spark", "--remote", connect_server.url,
         "-o", str(output), "--feature-store", str(connect_store), "--no-strict"],
        connect_server.env(),
    )  # fmt: skip
    assert summary["featurized"] == 0 and summary["reused"] == summary["images"]  # the vectors of the test above

    local = CliRunner().invoke(
        app, ["predict", str(demo_model_path), str(cluster_paintings), "--json", "--no-cache", "--no-strict"]
    )
    assert local.exit_code == 0, local.output
    rows = {row["path"]: row for row in pq.read_table(output).to_pylist()}
    for record in json.loads(local.stdout):
        if "error" in record:
            assert rows[record["path"]]["artist"] is None and rows[record["path"]]["error"]
        else:
            assert rows[record["path"]]["artist"] == record["artist"], record["path"]
    sidecar = json.loads((output / "_artistid.json").read_text())
    assert sidecar["classes"] == [str(c) for c in Model.load(demo_model_path).classes_]


def test_remote_and_master_together_are_refused() -> None:
    result = CliRunner().invoke(
        app, ["predict", "m.safetensors", "x.jpg", "--engine", "spark", "--master", "local[1]", "--remote", "sc://h:1"]
    )
    assert result.exit_code == 1
    assert "--master and --remote" in result.output
