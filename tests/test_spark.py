"""The Spark engine on local[2] with real paintings: the same features and artists as the local engine.

Needs Java (installed by `make test` through scripts/install-test-deps.sh); one SparkSession serves every test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest_storage import FaultyHTTPServer
from typer.testing import CliRunner

from artistid import spark as spark_module
from artistid import storage
from artistid.backbones import create_backbone
from artistid.cli import app
from artistid.datasets import load_dataset
from artistid.features import FeatureExtractor, FeatureSet, featurize
from artistid.model import Model

# PySpark 4 warns about pandas 3 on every Arrow job; the engine hands it Arrow batches, not pandas.
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

PER_ARTIST = 8
BAD_FILES = {"Rembrandt/truncated.jpg", "Rembrandt/notes.png"}


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local[2] session for the module: the JVM and the executors' Python start once."""
    if shutil.which("java") is None:
        pytest.fail("Java is missing: run `make test-deps` (scripts/install-test-deps.sh installs it)")
    session = spark_module.spark_session(
        "local[2]",
        app_name="artistid-tests",
        conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def paintings(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 real paintings in artist folders, one loose (unknown artist), plus a truncated JPEG and a non-image."""
    root = tmp_path_factory.mktemp("spark-paintings")
    for artist in sorted(p for p in (demo_data / "Test").iterdir() if p.is_dir()):
        (root / artist.name).mkdir()
        for image in sorted(artist.glob("*.jpg"))[:PER_ARTIST]:
            shutil.copy(image, root / artist.name / image.name)
    loose = sorted((demo_data / "Test" / "Claude_Monet").glob("*.jpg"))[PER_ARTIST]
    shutil.copy(loose, root / "unknown-painter.jpg")
    whole = (root / "Rembrandt" / sorted(p.name for p in (root / "Rembrandt").iterdir())[0]).read_bytes()
    (root / "Rembrandt" / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (root / "Rembrandt" / "notes.png").write_bytes(b"not a picture at all")
    return root


def _bad(paintings: Path) -> set[str]:
    return {str(paintings / name) for name in BAD_FILES}


@pytest.fixture(scope="session")
def fp32_extractor() -> FeatureExtractor:
    return FeatureExtractor(create_backbone("efficientnet_lite0"), precision="fp32")


@pytest.fixture(scope="session")
def spark_features(spark: object, paintings: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`artistid featurize --engine spark` on `paintings`, in fp32, in three partitions."""
    output = tmp_path_factory.mktemp("spark-out") / "features.parquet"
    arguments = ["featurize", str(paintings), "-o", str(output), "--precision", "fp32", "--engine", "spark"]
    result = CliRunner().invoke(app, [*arguments, "--partitions", "3", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["partitions"] == 3
    assert summary["images"] == 3 * PER_ARTIST + 1  # the loose painting too
    assert {s["path"] for s in summary["skipped_files"]} == _bad(paintings)
    return output


def test_spark_features_equal_the_local_engine_within_1e5(
    spark_features: Path, paintings: Path, fp32_extractor: FeatureExtractor
) -> None:
    local = featurize(load_dataset(str(paintings)).samples, fp32_extractor, workers=0, progress=False)
    distributed = FeatureSet.from_parquet(spark_features)

    assert distributed.identity == fp32_extractor.identity()
    assert sorted(distributed.paths) == sorted(local.paths)
    by_path = dict(zip(distributed.paths, zip(distributed.labels, distributed.features, strict=True), strict=True))
    for path, label, vector in zip(local.paths, local.labels, local.features, strict=True):
        assert by_path[path][0] == label
        np.testing.assert_allclose(by_path[path][1], vector, rtol=0, atol=1e-5, err_msg=path)
    assert None in distributed.labels  # the loose painting: artist unknown
    # A bad image is a row with the local engine's reason, not a failed task.
    assert sorted(distributed.errors) == sorted(local.errors)


def test_spark_output_is_a_parquet_folder_with_the_documented_columns(spark_features: Path, paintings: Path) -> None:
    table = pq.read_table(spark_features)
    assert [str(f.type) for f in table.schema] == ["string", "string", "list<element: float>", "string"]
    assert table.column_names == ["path", "label", "features", "error"]
    failed = table.filter(table["error"].is_valid())
    assert set(failed["path"].to_pylist()) == _bad(paintings)
    assert failed["features"].null_count == len(BAD_FILES)
    assert "truncated or corrupt" in " ".join(failed["error"].to_pylist())
    sidecar = json.loads((spark_features / spark_module.SIDECAR).read_text())
    assert sidecar["kind"] == "features"


def test_train_accepts_spark_features_and_checks_their_identity(spark_features: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    model_path = tmp_path / "from-spark.safetensors"
    result = runner.invoke(
        app, ["train", str(spark_features), "-o", str(model_path), "--preset", "reference", "--json", "-q"]
    )
    assert result.exit_code == 0, result.output
    model = Model.load(model_path)
    assert list(model.classes_) == ["Claude_Monet", "Rembrandt", "Vincent_van_Gogh"]
    assert model.card.training is not None
    assert model.card.training.n_train == 3 * PER_ARTIST  # bad files skipped, the loose one unlabelled

    mismatch = runner.invoke(
        app,
        ["train", str(spark_features), "-o", str(tmp_path / "x.safetensors")],  # the standard preset's style nodes
    )
    assert mismatch.exit_code == 1
    assert "the features were computed with" in mismatch.output


def test_a_second_run_replaces_the_output_whole(spark: object, paintings: Path, tmp_path: Path) -> None:
    output = tmp_path / "features.parquet"
    output.write_text("an old file in the way")
    extractor = FeatureExtractor(create_backbone("efficientnet_lite0"), precision="fp32")
    samples = load_dataset(str(paintings)).samples[:4]
    run = spark_module.featurize(samples, extractor, str(output), spark=spark)
    assert run.images == 4 and not run.errors
    assert len(FeatureSet.from_parquet(output)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.parquet"]  # no staging folder left behind


def test_predict_cli_names_the_same_artists_as_the_local_engine(
    spark: object, paintings: Path, demo_model_path: Path, tmp_path: Path
) -> None:
    output = tmp_path / "predictions.parquet"
    result = CliRunner().invoke(
        app,
        ["predict", str(demo_model_path), str(paintings), "--engine", "spark", "-o", str(output), "--json"],
    )
    assert result.exit_code == 1, result.output  # the bad files fail the command, as with the local engine
    assert "could not be used" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["skipped"] == len(BAD_FILES)

    table = pq.read_table(output).to_pylist()
    predicted = {row["path"]: row for row in table}
    model = Model.load(demo_model_path)  # the default precision, as the model file says
    local = model.features_for(load_dataset(str(paintings)).samples, workers=0, progress=False)
    probabilities = model.probabilities(local.features)
    answers = model.answers_for(local.features)
    for path, row, answer in zip(local.paths, probabilities, answers, strict=True):
        assert predicted[path]["artist"] == answer.artist, path
        assert predicted[path]["error"] is None
        assert len(predicted[path]["probabilities"]) == len(model.classes_)
        np.testing.assert_allclose(predicted[path]["probabilities"], row, atol=0.02)
    for path in _bad(paintings):
        assert predicted[path]["artist"] is None and predicted[path]["error"]
    sidecar = json.loads((output / spark_module.SIDECAR).read_text())
    assert sidecar["classes"] == [str(c) for c in model.classes_]


def test_evaluate_cli_gives_the_local_engines_report(spark: object, paintings: Path, demo_model_path: Path) -> None:
    runner = CliRunner()
    local = runner.invoke(app, ["evaluate", str(demo_model_path), str(paintings), "--no-cache", "--json", "-q"])
    distributed = runner.invoke(
        app, ["evaluate", str(demo_model_path), str(paintings), "--engine", "spark", "--json", "-q"]
    )
    assert local.exit_code == 0 and distributed.exit_code == 0, distributed.output
    expected, got = json.loads(local.stdout), json.loads(distributed.stdout)
    for key in ("accuracy", "top2_accuracy", "n", "confusion_matrix", "unknown"):
        assert got[key] == expected[key], key
    assert sorted(s["path"] for s in got["skipped"]) == sorted(_bad(paintings))


def test_predictor_transformer_reads_http_uris_inside_the_executors(
    spark: object, paintings: Path, demo_model_path: Path
) -> None:
    images = sorted((paintings / "Claude_Monet").glob("*.jpg"))[:3]
    with FaultyHTTPServer() as server:
        for image in images:
            server.files[image.name] = image.read_bytes()
        server.faults[images[0].name] = ["500"]  # a transient failure the executor's read retries
        uris = [server.url(image.name) for image in images] + [server.url("missing.jpg")]
        frame = spark.createDataFrame([(n, u) for n, u in enumerate(uris)], "id long, uri string")  # type: ignore[attr-defined]
        predictor = spark_module.ArtistPredictor(modelPath=str(demo_model_path), imageCol="uri", predictionCol="who")
        rows = {row["uri"]: row for row in predictor.transform(frame).collect()}

    model = Model.load(demo_model_path)
    expected = model.predict([str(image) for image in images])
    assert [rows[u]["who"] for u in uris[:3]] == list(expected)
    assert all(rows[u]["error"] is None for u in uris[:3])
    assert rows[uris[3]]["who"] is None and "missing.jpg" in rows[uris[3]]["error"]
    assert [rows[u]["id"] for u in uris] == [0, 1, 2, 3]  # other columns pass through
    assert predictor.classes() == [str(c) for c in model.classes_]


def test_predict_cli_reads_images_and_model_from_azure_blob_inside_the_executors(
    spark: object, azurite, paintings: Path, demo_model_path: Path, tmp_path: Path
) -> None:
    container = f"spark-{uuid.uuid4().hex[:8]}"
    images = [*sorted((paintings / "Vincent_van_Gogh").glob("*.jpg"))[:4], paintings / "Rembrandt" / "truncated.jpg"]
    for image in images:
        storage.write_bytes_atomic(f"az://{container}/new/{image.name}", image.read_bytes(), azurite.storage_options)
    model_uri = f"az://{container}/models/demo.safetensors"
    storage.write_bytes_atomic(model_uri, demo_model_path.read_bytes(), azurite.storage_options)

    output = tmp_path / "predictions.parquet"
    option = ["--storage-option", f"connection_string={azurite.connection_string}"]
    result = CliRunner().invoke(
        app,
        ["predict", model_uri, f"az://{container}/new", "--engine", "spark", "-o", str(output), "--json", "--no-strict",
         *option],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {row["path"].rsplit("/", 1)[1]: row for row in pq.read_table(output).to_pylist()}
    assert all(f"://{container}/new/" in row["path"] for row in rows.values())  # URIs, read by the executors
    expected = Model.load(demo_model_path).predict([str(image) for image in images[:4]])
    assert [rows[image.name]["artist"] for image in images[:4]] == list(expected)
    assert rows["truncated.jpg"]["artist"] is None and "truncated" in rows["truncated.jpg"]["error"]


def test_the_rest_of_artistid_does_not_import_pyspark() -> None:
    code = (
        "import sys, artistid, artistid.cli, artistid.model, artistid.train, artistid.evaluate, artistid.features;"
        "sys.exit('pyspark' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_engine_option_is_checked() -> None:
    result = CliRunner().invoke(app, ["predict", "model.safetensors", "x.jpg", "--engine", "dask"])
    assert result.exit_code == 1
    assert "--engine must be local or spark" in result.output
