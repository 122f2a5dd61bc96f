"""MLflow: a training run's recipe, metrics and reports, and the model as an MLflow pyfunc model.

`log_training` records one run (`artistid train/finetune --mlflow`): the recipe as params; accuracy, top-2, per-artist
F1, ECE, refusal rates, timings and the cross-validated accuracy as metrics; the model file, the confusion matrix and
coverage PNGs and the predictions CSV as artifacts; and the model as a pyfunc model (`artistid.pyfunc`), so that
`mlflow models serve` and the model registry work with it.

The tracking URI is `--mlflow-uri`, else MLFLOW_TRACKING_URI, else a file store in ./mlruns. MLflow keeps its file
store only on request (MLFLOW_ALLOW_FILE_STORE), so naming a file store here makes that request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artistid.card import to_dict
from artistid.errors import ArtistIdError

if TYPE_CHECKING:
    from artistid.evaluate import Evaluation
    from artistid.model import Model

__all__ = ["TrackedRun", "log_training", "run_metrics", "tracking_uri"]

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "artistid"
MODEL_FILE = "model.safetensors"
# MLflow runs this file to rebuild the pyfunc model ("models from code"): nothing is pickled.
_MODEL_CODE = """\
import mlflow

from artistid.pyfunc import ArtistIdPyfunc

mlflow.models.set_model(ArtistIdPyfunc())
"""


@dataclass(frozen=True)
class TrackedRun:
    tracking_uri: str
    experiment: str
    run_id: str
    model_uri: str  # models:/<id>, for mlflow.pyfunc.load_model and `mlflow models serve -m`


def _mlflow() -> Any:
    try:
        import mlflow
        import mlflow.exceptions
    except ImportError as exc:
        raise ArtistIdError(f"--mlflow needs MLflow ({exc}): pip install 'artistid[mlflow]'") from None
    return mlflow


def tracking_uri(explicit: str | None = None) -> str:
    """`explicit`, else MLFLOW_TRACKING_URI, else the file store ./mlruns."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").absolute().as_uri()
    if "://" not in uri or uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's opt-in for its file store
    return uri


# --- logging a run -----------------------------------------------------------------------------------------------


def _flat(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, into)
    else:
        into[prefix] = json.dumps(value) if isinstance(value, list | tuple) else value


def _metric_name(text: str) -> str:
    """MLflow allows letters, digits, and _ - . space / in metric names."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in text)


def run_metrics(metrics: Mapping[str, Any], model: Model, timings: Mapping[str, float]) -> dict[str, float]:
    """The numbers worth charting across runs, under MLflow-safe names."""
    found: dict[str, float] = {}
    for key in (
        "accuracy",
        "top2_accuracy",
        "ece",
        "false_rejection_rate",
        "unknown_rejection_rate",
        "accuracy_answered",
        "threshold",
    ):
        if isinstance(metrics.get(key), int | float):
            found[key] = float(metrics[key])
    for artist, scores in (metrics.get("per_class") or {}).items():
        for score in ("f1", "precision", "recall"):
            found[_metric_name(f"{score}.{artist}")] = float(scores[score])
    if metrics.get("n") is not None:
        found["n_test"] = float(metrics["n"])
    calibration = model.card.calibration
    if calibration.validation_accuracy is not None:  # out-of-fold on Train: cross-validated
        found["cv_accuracy"] = float(calibration.validation_accuracy)
    for key in ("temperature", "ece_before", "ece_after"):
        if getattr(calibration, key) is not None:
            found[f"calibration.{key}"] = float(getattr(calibration, key))
    found.update({f"seconds.{name}": float(value) for name, value in timings.items()})
    return found


def log_training(
    model: Model,
    *,
    recipe: Mapping[str, Any],
    evaluation: Evaluation | None = None,
    timings: Mapping[str, float] | None = None,
    history: list[dict[str, float]] | None = None,
    uri: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    progress: bool = True,
) -> TrackedRun:
    """Logs one training run and its model to MLflow; returns where they are.

    Raises ArtistIdError naming the tracking URI when MLflow cannot take the run (a server that does not answer, a
    store that cannot be written); the caller's model file is written before, and stays.
    """
    mlflow = _mlflow()
    try:
        return _log(mlflow, model, recipe, evaluation, timings, history, uri, experiment, run_name, progress)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise ArtistIdError(f"MLflow at {tracking_uri(uri)}: cannot log the run: {reason}") from None


def _log(
    mlflow: Any,
    model: Model,
    recipe: Mapping[str, Any],
    evaluation: Evaluation | None,
    timings: Mapping[str, float] | None,
    history: list[dict[str, float]] | None,
    uri: str | None,
    experiment: str | None,
    run_name: str | None,
    progress: bool,
) -> TrackedRun:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from artistid.evaluate import write_report

    where = tracking_uri(uri)
    mlflow.set_tracking_uri(where)
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    mlflow.set_experiment(name)
    params: dict[str, Any] = {}
    _flat("", {"recipe": dict(recipe), "backbone": to_dict(model.card.backbone)}, params)
    params["classes"] = json.dumps([str(c) for c in model.classes_])
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "path", required=False), ColSpec("binary", "image", required=False)]),
        params=ParamSchema([ParamSpec("top_k", "long", 1)]),
    )
    with (
        _progress_bars(progress),
        tempfile.TemporaryDirectory(prefix="artistid-mlflow-") as scratch,
        mlflow.start_run(run_name=run_name) as run,
    ):
        folder = Path(scratch)
        mlflow.log_params(params)
        mlflow.set_tags({"artistid.backbone": model.backbone.spec.name, "artistid.classes": len(model.classes_)})
        metrics = evaluation.metrics if evaluation is not None else to_dict(model.metrics) or {}
        mlflow.log_metrics(run_metrics(metrics, model, timings or {}))
        for step, record in enumerate(history or []):
            mlflow.log_metrics({_metric_name(k): float(v) for k, v in record.items()}, step=step)
        model_file = folder / MODEL_FILE
        model.save(model_file)
        mlflow.log_artifact(str(model_file))
        if evaluation is not None:
            write_report(evaluation, folder / "report")
            mlflow.log_artifacts(str(folder / "report"), artifact_path="report")
        code = folder / "artistid_pyfunc.py"
        code.write_text(_MODEL_CODE)
        with warnings.catch_warnings():
            # The signature says what goes in; an example would have to be a painting on the logging machine.
            warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
            logged = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(code),
                artifacts={"model_file": str(model_file)},
                signature=signature,
                pip_requirements=_requirements(),
            )
    logger.info("MLflow run %s in %s: model %s", run.info.run_id, where, logged.model_uri)
    return TrackedRun(where, name, run.info.run_id, logged.model_uri)


@contextlib.contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """MLflow's artifact progress bars, off while this logs when `shown` is false (MLflow reads its setting here)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    if not shown:
        os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _requirements() -> list[str]:
    """What a fresh environment needs to serve the model: artistid and the libraries its model file was made with."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("artistid", "torch", "torchvision", "timm", "safetensors", "scikit-learn", "pillow", "pandas"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins
