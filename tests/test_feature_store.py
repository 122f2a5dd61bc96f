"""The feature store on the local engine: only new images are computed, the counts are reported, two runs writing
at once corrupt nothing, a damaged or deleted store only costs time, and a storage URI (Azurite) works as a folder.

The Spark engine's use of the same store is tested on the cluster (tests/test_spark_cluster.py) and through Spark
Connect (tests/test_spark_connect.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from artistid.backbones import create_backbone
from artistid.cli import app
from artistid.datasets import Sample, load_dataset
from artistid.feature_store import FeatureStore
from artistid.features import FeatureExtractor, featurize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(create_backbone("efficientnet_lite0"), precision="fp32")


@pytest.fixture(scope="module")
def samples(demo_data: Path) -> list[Sample]:
    return load_dataset(str(demo_data)).test[:12]


@pytest.fixture(scope="module")
def small_set(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three paintings each of two artists, as a folder of artist folders."""
    root = tmp_path_factory.mktemp("small-set")
    for artist in ("Claude_Monet", "Rembrandt"):
        (root / artist).mkdir()
        for image in sorted((demo_data / "Test" / artist).glob("*.jpg"))[:3]:
            shutil.copy(image, root / artist / image.name)
    return root


@pytest.fixture(scope="module")
def reference(samples: list[Sample], extractor: FeatureExtractor) -> dict[str, np.ndarray]:
    plain = featurize(samples, extractor, workers=0, progress=False)
    return dict(zip(plain.paths, plain.features, strict=True))


def _same_vectors(features, reference: dict[str, np.ndarray]) -> None:
    for path, vector in zip(features.paths, features.features, strict=True):
        np.testing.assert_allclose(vector, reference[path], rtol=0, atol=1e-6, err_msg=path)


def test_a_grown_collection_computes_only_its_new_images(
    samples: list[Sample], extractor: FeatureExtractor, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    store = FeatureStore(str(tmp_path / "store"))
    first = featurize(samples[:8], extractor, workers=0, progress=False, store=store)
    assert (first.featurized, first.reused) == (8, 0)
    grown = featurize(samples, extractor, workers=0, progress=False, store=store)
    assert (grown.featurized, grown.reused) == (4, 8)
    _same_vectors(grown, reference)
    assert len(store.part_uris(extractor.identity())) == 2  # each run added one part

    other = FeatureExtractor(create_backbone("efficientnet_lite0", pooling="meanstd"), precision="fp32")
    assert store.folder(other.identity()) != store.folder(extractor.identity())
    assert store.vectors(other.identity()) == {}  # a vector is found only by what made it


def test_a_damaged_or_deleted_store_only_costs_time(
    samples: list[Sample],
    extractor: FeatureExtractor,
    reference: dict[str, np.ndarray],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FeatureStore(str(tmp_path / "store"))
    featurize(samples[:4], extractor, workers=0, progress=False, store=store)
    folder = Path(store.folder(extractor.identity()))
    (folder / "part-garbage.parquet").write_bytes(b"not parquet at all")
    (folder / ".part-unfinished.parquet.1234.tmp").write_bytes(b"half a write")
    shutil.copy(next(folder.glob("part-2*.parquet")), folder / "part-copied-from-another-identity.parquet")
    Path(store.folder("another identity")).mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="artistid.feature_store"):
        again = featurize(samples[:6], extractor, workers=0, progress=False, store=store)
    assert (again.featurized, again.reused) == (2, 4)
    assert "part-garbage.parquet: skipped, not a readable Parquet part" in caplog.text
    _same_vectors(again, reference)

    shutil.rmtree(tmp_path / "store")
    rebuilt = featurize(samples[:6], extractor, workers=0, progress=False, store=store)
    assert (rebuilt.featurized, rebuilt.reused) == (6, 0)
    _same_vectors(rebuilt, reference)


def test_two_runs_writing_at_once_corrupt_nothing(small_set: Path, extractor: FeatureExtractor, tmp_path: Path) -> None:
    store = tmp_path / "store"
    command = [sys.executable, "-m", "artistid.cli", "featurize", str(small_set), "--precision", "fp32",
               "--feature-store", str(store), "--no-cache", "--workers", "0", "--json", "-q"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    runs = [
        subprocess.Popen([*command, "-o", str(tmp_path / f"run-{n}.parquet")], env=env, stdout=subprocess.PIPE)
        for n in range(2)
    ]
    summaries = [json.loads(run.communicate(timeout=600)[0]) for run in runs]
    assert all(run.returncode == 0 for run in runs)
    images = summaries[0]["images"]
    assert all(s["featurized"] + s["reused"] == images for s in summaries)

    # Every part is whole and the store serves every image: a third run computes nothing.
    stored = FeatureStore(str(store))
    parts = stored.part_uris(extractor.identity())
    assert parts and all(stored.read_part(uri, extractor.identity()) is not None for uri in parts)
    plain = featurize(load_dataset(str(small_set)).samples, extractor, workers=0, progress=False)
    third = featurize(load_dataset(str(small_set)).samples, extractor, workers=0, progress=False, store=stored)
    assert (third.featurized, third.reused) == (0, images)
    _same_vectors(third, dict(zip(plain.paths, plain.features, strict=True)))


def test_cli_reports_featurized_and_reused(small_set: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    store = str(tmp_path / "store")
    images = str(small_set)
    featurize_command = ["featurize", images, "--precision", "fp32", "--feature-store", store, "--no-cache", "--json"]
    first = runner.invoke(app, [*featurize_command, "-o", str(tmp_path / "a.parquet")])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["featurized"] == summary["images"] > 0 and summary["reused"] == 0
    second = json.loads(runner.invoke(app, [*featurize_command, "-o", str(tmp_path / "b.parquet")]).stdout)
    assert (second["featurized"], second["reused"]) == (0, summary["images"])

    model = tmp_path / "model.safetensors"
    trained = runner.invoke(
        app,
        ["train", images, "-o", str(model), "--preset", "reference", "--precision", "fp32", "--calibration-folds", "0",
         "--feature-store", store, "--no-cache", "--json", "-q"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    report = json.loads(trained.stdout)
    assert (report["featurized"], report["reused_features"]) == (0, summary["images"])

    predicted = runner.invoke(app, ["predict", str(model), images, "--feature-store", store, "--no-cache", "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert f"0 featurized, {summary['images']} reused (feature store)" in predicted.stderr


def test_a_store_in_azure_blob_is_shared_like_a_folder(
    azurite, samples: list[Sample], extractor: FeatureExtractor, reference: dict[str, np.ndarray]
) -> None:
    store = FeatureStore(f"az://store-{uuid.uuid4().hex[:8]}/features", azurite.storage_options)
    first = featurize(samples[:5], extractor, workers=0, progress=False, store=store)
    assert (first.featurized, first.reused) == (5, 0)
    assert all(uri.startswith("az://") for uri in store.part_uris(extractor.identity()))
    reopened = FeatureStore(store.uri, azurite.storage_options)
    again = featurize(samples[:5], extractor, workers=0, progress=False, store=reopened)
    assert (again.featurized, again.reused) == (0, 5)
    _same_vectors(again, reference)
