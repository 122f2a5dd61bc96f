"""Featurizing: vectors in order, bad files reported not fatal, a cache that makes the second run free and safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from artistid import decoding
from artistid.backbones import create_backbone
from artistid.cli import app
from artistid.datasets import Sample, load_dataset
from artistid.features import FeatureCache, FeatureExtractor, FeatureSet, featurize


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(create_backbone("efficientnet_lite0"))


@pytest.fixture(scope="module")
def samples(demo_data: Path) -> list[Sample]:
    return load_dataset(str(demo_data)).test[:24]


def test_vectors_in_order_and_the_second_run_neither_decodes_nor_runs_the_model(
    samples: list[Sample], extractor: FeatureExtractor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FeatureCache(tmp_path) as cache:
        cold = featurize(samples, extractor, cache=cache, workers=0, progress=False)
        assert cold.paths == [s.path for s in samples] and cold.labels == [s.label for s in samples]
        assert cold.features.shape == (len(samples), 1280)

        def forbidden(*args: object, **kwargs: object) -> None:
            raise AssertionError("a warm run must not decode images or run the backbone")

        monkeypatch.setattr(decoding, "load_image", forbidden)
        monkeypatch.setattr(FeatureExtractor, "__call__", forbidden)
        warm = featurize(samples, extractor, cache=cache, workers=0, progress=False)
    assert np.array_equal(cold.features, warm.features)


def test_bad_files_are_skipped_and_reported_with_workers(
    samples: list[Sample], extractor: FeatureExtractor, tmp_path: Path
) -> None:
    (tmp_path / "notes.jpg").write_text("not a painting")
    (tmp_path / "empty.png").write_bytes(b"")
    broken = [Sample(str(tmp_path / "notes.jpg"), "x"), Sample(str(tmp_path / "missing.jpg"), "x"),
              Sample(str(tmp_path / "empty.png"), "x")]  # fmt: skip
    mixed = samples[:20] + broken + samples[20:]
    result = featurize(mixed, extractor, cache=None, workers=2, batch_size=4, progress=False)
    assert result.paths == [s.path for s in samples]
    reasons = dict(result.errors)
    assert set(reasons) == {s.path for s in broken}
    assert "not an image" in reasons[broken[0].path]
    assert "not found" in reasons[broken[1].path]
    assert "empty file" in reasons[broken[2].path]


def test_bf16_features_agree_with_fp32(samples: list[Sample]) -> None:
    backbone = create_backbone("efficientnet_lite0")
    fp32 = featurize(samples, FeatureExtractor(backbone, precision="fp32"), workers=0, progress=False).features
    bf16 = featurize(samples, FeatureExtractor(backbone, precision="bf16"), workers=0, progress=False).features
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() > 0.98


def test_parquet_round_trip(samples: list[Sample], extractor: FeatureExtractor, tmp_path: Path) -> None:
    result = featurize(samples[:5], extractor, workers=0, progress=False)
    result.to_parquet(tmp_path / "f.parquet")
    back = FeatureSet.from_parquet(tmp_path / "f.parquet")
    assert back.paths == result.paths and back.labels == result.labels and back.identity == extractor.identity()
    assert np.array_equal(back.features, result.features)


def test_parquet_keeps_unlabelled_rows_and_any_text_as_string_columns(tmp_path: Path) -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    written = FeatureSet(["Été/Öl.jpg", "b.jpg", "az://c/ü.png"], ["Claude_Monet", None, "Ärt"], vectors, identity="i")
    written.to_parquet(tmp_path / "f.parquet")
    back = FeatureSet.from_parquet(tmp_path / "f.parquet")
    assert (back.paths, back.labels, back.identity) == (written.paths, written.labels, "i")
    assert np.array_equal(back.features, vectors)
    schema = pq.read_schema(tmp_path / "f.parquet")  # what Spark and pandas read: text, and lists of floats
    assert schema.field("path").type == pa.string() and schema.field("label").type == pa.string()
    assert schema.field("features").type == pa.list_(pa.float32(), 4)


_WORKER = """
import sys
from artistid.backbones import create_backbone
from artistid.datasets import load_dataset
from artistid.features import FeatureCache, FeatureExtractor, featurize
samples = load_dataset(sys.argv[1]).test
with FeatureCache(sys.argv[2]) as cache:
    result = featurize(samples, FeatureExtractor(create_backbone("efficientnet_lite0")), cache=cache, workers=0,
                       batch_size=4, progress=False)
print(len(result))
"""


def test_cache_survives_a_killed_run_and_two_runs_sharing_it(demo_data: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "shared-cache"
    command = [sys.executable, "-c", _WORKER, str(demo_data), str(cache_dir)]
    victim = subprocess.Popen(command, stdout=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    database = cache_dir / "features-v1.sqlite"
    while time.monotonic() < deadline and not (database.exists() and database.stat().st_size > 100_000):
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()

    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert [int(o.strip()) for o in outputs] == [60, 60]

    test = load_dataset(str(demo_data)).test
    fresh = featurize(test, FeatureExtractor(create_backbone("efficientnet_lite0")), workers=0, progress=False)
    with FeatureCache(cache_dir) as cache:
        cached = featurize(test, FeatureExtractor(create_backbone("efficientnet_lite0")), cache=cache, workers=0,
                           progress=False)  # fmt: skip
    assert np.allclose(cached.features, fresh.features, atol=1e-6)


def test_featurize_command_json_summary(demo_data: Path, tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "data" / "Monet").mkdir(parents=True)
    for source in sorted((demo_data / "Test" / "Claude_Monet").glob("*.jpg"))[:3]:
        (tmp_path / "data" / "Monet" / source.name).write_bytes(source.read_bytes())
    (tmp_path / "data" / "Monet" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    output = tmp_path / "features.parquet"
    result = CliRunner().invoke(app, ["featurize", str(tmp_path / "data"), "-o", str(output), "--json",
                                      "--cache-dir", str(cache_dir)])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 3 and summary["skipped"] == 1 and summary["seconds"] > 0
    assert summary["skipped_files"][0]["path"].endswith("broken.jpg")
    assert len(FeatureSet.from_parquet(output)) == 3
