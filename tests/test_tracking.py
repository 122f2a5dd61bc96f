"""MLflow: `train --mlflow` logs the recipe, metrics, reports and a pyfunc model to a real MLflow file store; the
model loaded back with `mlflow.pyfunc.load_model` (and from the registry, and behind MLflow's scoring server)
answers as `artistid predict` does."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from artistid import tracking
from artistid.cli import app


@pytest.fixture(scope="module")
def logged(small_dataset: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One `artistid train --mlflow` run, the tracking URI given as MLFLOW_TRACKING_URI."""
    store = tmp_path_factory.mktemp("mlflow") / "mlruns"
    output = store.parent / "model.safetensors"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
        result = CliRunner().invoke(
            app,
            ["train", str(small_dataset), "-o", str(output), "--cache-dir", str(cache_dir), "--mlflow", "--json", "-q"],
        )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    return {"store": store, "output": output, "run": report["mlflow"], "metrics": report["metrics"]}


def test_the_tracking_uri_is_the_option_else_the_environment_else_mlruns(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri() == "http://mlflow.example:5000"
    assert tracking.tracking_uri("sqlite:///runs.db") == "sqlite:///runs.db"


def test_train_logs_the_recipe_metrics_and_reports(logged: dict) -> None:
    client = MlflowClient(tracking_uri=logged["store"].as_uri())
    run = client.get_run(logged["run"]["run_id"])
    params, metrics = run.data.params, run.data.metrics
    assert params["recipe.backbone"] == "efficientnet_lite0" and params["recipe.epochs"] == "7"
    assert params["recipe.lr"] == "0.2x10,0.1" and params["recipe.calibration_folds"] == "5"
    assert len(params["backbone.weights_sha256"]) == 64
    assert json.loads(params["classes"]) == ["Claude_Monet", "Rembrandt", "Vincent_van_Gogh"]
    assert metrics["accuracy"] == pytest.approx(logged["metrics"]["accuracy"])
    for name in ("top2_accuracy", "ece", "false_rejection_rate", "cv_accuracy", "seconds.featurize", "seconds.fit"):
        assert name in metrics, name
    assert metrics["f1.Rembrandt"] == pytest.approx(logged["metrics"]["per_class"]["Rembrandt"]["f1"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "model.safetensors" in artifacts
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/confusion.png", "report/coverage.png", "report/predictions.csv"} <= reports


def _cli_answers(model: Path, paths: list[str]) -> list[dict]:
    # A file that cannot be used is compared by its error, so the exit status is not the point here.
    command = ["predict", str(model), *paths, "--top-k", "2", "--json", "--no-cache", "--no-strict"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _same(pyfunc_rows: pd.DataFrame, cli: list[dict]) -> None:
    assert len(pyfunc_rows) == len(cli)
    for row, expected in zip(pyfunc_rows.to_dict("records"), cli, strict=True):
        if "error" in expected:
            assert row["artist"] is None and row["error"] == expected["error"]
            continue
        assert row["artist"] == expected["artist"] and row["error"] is None
        assert row["probability"] == pytest.approx(expected["probability"], abs=1e-6)
        assert [t["artist"] for t in row["top_k"]] == [t["artist"] for t in expected["top_k"]]


def test_the_logged_model_answers_as_artistid_predict(logged: dict, small_dataset: Path, tmp_path: Path) -> None:
    mlflow.set_tracking_uri(logged["store"].as_uri())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    paths = [str(p) for p in sorted((small_dataset / "Test").rglob("*.jpg"))] + [str(broken)]
    expected = _cli_answers(logged["output"], paths)

    loaded = mlflow.pyfunc.load_model(logged["run"]["model_uri"])
    _same(loaded.predict(pd.DataFrame({"path": paths}), params={"top_k": 2}), expected)
    images = pd.DataFrame({"image": [Path(p).read_bytes() for p in paths]})
    by_bytes = loaded.predict(images, params={"top_k": 2})
    _same(by_bytes.iloc[:-1], expected[:-1])
    assert by_bytes.iloc[-1]["artist"] is None and "not an image" in by_bytes.iloc[-1]["error"]


def test_the_logged_model_goes_into_the_registry_and_behind_mlflow_serving(logged: dict, small_dataset: Path) -> None:
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    mlflow.set_tracking_uri(logged["store"].as_uri())
    version = mlflow.register_model(logged["run"]["model_uri"], "paintings")
    registered = mlflow.pyfunc.load_model(f"models:/paintings/{version.version}")
    paths = [str(p) for p in sorted((small_dataset / "Test").rglob("*.jpg"))][:3]
    expected = _cli_answers(logged["output"], paths)

    # The app `mlflow models serve` runs, in this process.
    client = TestClient(scoring_server.init(registered))
    response = client.post(
        "/invocations", json={"dataframe_records": [{"path": p} for p in paths], "params": {"top_k": 2}}
    )
    assert response.status_code == 200, response.text
    _same(pd.DataFrame(response.json()["predictions"]), expected)


def test_an_mlflow_server_that_does_not_answer_is_one_line_and_the_model_file_stays(
    logged: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from artistid.errors import ArtistIdError
    from artistid.model import Model

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries, which would take minutes
    model = Model.load(logged["output"])
    with pytest.raises(ArtistIdError, match=f"MLflow at {dead}: cannot log the run") as failed:
        tracking.log_training(model, recipe={"backbone": "efficientnet_lite0"}, uri=dead)
    assert "\n" not in str(failed.value)
    assert logged["output"].is_file()
