"""What the commands say: the lines and JSON records people read, in one place (the CLI prints them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from artistid.answers import Answer
    from artistid.card import CalibrationCard
    from artistid.datasets import Sample
    from artistid.train import TrainResult

__all__ = [
    "calibration_line",
    "epoch_line",
    "predict_lines",
    "predict_records",
    "run_line",
    "run_record",
    "skipped_lines",
    "training_lines",
    "unusable_line",
]

# How `predict` says each refusal in its table.
REFUSAL_WORDS = {"unknown": "unknown", "not_a_painting": "not a painting"}


def _reason(path: str, reason: str) -> str:
    """The reason alone: decoding errors name their file first, and every line here names it already."""
    return reason.removeprefix(path + ": ")


def skipped_lines(errors: Sequence[tuple[str, str]]) -> list[str]:
    return [f"skipped {path}: {_reason(path, reason)}" for path, reason in errors]


def unusable_line(errors: Sequence[tuple[str, str]], images: int) -> str:
    """Why a run that answered the rest failed: the one file and its reason, or how many (each listed above)."""
    if len(errors) == 1:
        path, reason = errors[0]
        return f"{path}: {_reason(path, reason)}"
    return f"{len(errors)} of {images} images could not be used (each is listed with its reason)"


class Run(Protocol):
    """What a featurizing run did, locally (`FeatureSet`) or on Spark (`SparkRun`)."""

    @property
    def featurized(self) -> int: ...
    @property
    def reused(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def errors(self) -> list[tuple[str, str]]: ...


def run_record(run: Run, images: int, output: str, partitions: int | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "images": images,
        "featurized": run.featurized,
        "reused": run.reused,
        "skipped": len(run.errors),
        "seconds": round(run.seconds, 3),
    }
    if partitions is not None:
        record["partitions"] = partitions
    return record | {"output": output, "skipped_files": [{"path": p, "reason": r} for p, r in run.errors]}


def run_line(run: Run, images: int, output: str, done: str, partitions: int | None = None) -> str:
    rate = images / max(run.seconds, 1e-9)
    where = f", {partitions} partitions" if partitions is not None else ""
    return (
        f"{images} images {done} in {run.seconds:.1f} s ({rate:.0f} img/s{where}; {run.featurized} featurized, "
        f"{run.reused} reused) -> {output}"
    )


def epoch_line(record: dict[str, float], epochs: int) -> str:
    if "iterations" in record:  # the lbfgs solver: one fit to convergence, no epochs
        line = f"L-BFGS: {int(record['iterations'])} iterations  loss {record['loss']:.4f}  "
        line += f"train error {record['train_error']:.1%}"
        return line + (f"  val accuracy {record['val_accuracy']:.1%}" if "val_accuracy" in record else "")
    line = (
        f"epoch {int(record['epoch'])}/{epochs}  lr {record['lr']:g}  loss {record['loss']:.4f}  "
        f"train error {record['train_error']:.1%}"
    )
    if "val_accuracy" in record:
        line += f"  val accuracy {record['val_accuracy']:.1%}"
    return line


def calibration_line(calibration: CalibrationCard) -> str | None:
    if not calibration.method or calibration.ece_before is None or calibration.ece_after is None:
        return None
    threshold = calibration.rules.threshold
    return (
        f"calibrated on {calibration.n} held-out predictions: temperature {calibration.temperature:.2f}, "
        f"ECE {calibration.ece_before:.1%} -> {calibration.ece_after:.1%}"
        + (f"; 'unknown' below probability {threshold:.2f}" if threshold is not None else "")
    )


def training_lines(result: TrainResult, epochs: int) -> list[str]:
    """What `train` says about a model it trained: the features, each epoch, the calibration."""
    validated = f", validated on {result.n_val}" if result.n_val else ""
    lines = [
        f"features for {result.n_train + result.n_val} images in {result.featurize_seconds:.1f} s; "
        f"head trained on {result.n_train}{validated}",
        *(epoch_line(record, epochs) for record in result.history),
    ]
    calibrated = calibration_line(result.model.card.calibration)
    return [*lines, calibrated] if calibrated else lines


def predict_records(
    samples: Sequence[Sample], paths: Sequence[str], answers: Sequence[Answer], errors: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """One record per sample, in their order: its answer, or why it could not be used."""
    records: dict[str, dict[str, Any]] = {}
    for path, answer in zip(paths, answers, strict=True):
        records[path] = {
            "path": path,
            "artist": answer.artist,  # or the refusal: "unknown", "not_a_painting"
            "refusal": answer.refusal,
            "closest": answer.closest,
            "probability": answer.probability,
            "top_k": [{"artist": artist, "probability": p} for artist, p in answer.top_k],
        }
    for path, reason in errors:
        records[path] = {"path": path, "error": _reason(path, reason)}
    return [records[s.path] for s in samples if s.path in records]


def predict_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """The table `predict` prints: each image, then its artists (or its refusal and the best guesses)."""
    width = max((len(r["path"]) for r in records), default=4)
    lines = []
    for record in records:
        if "error" in record:
            lines.append(f"{record['path']:<{width}}  error: {record['error']}")
            continue
        ranked = "  ".join(f"{t['artist']} {t['probability']:.3f}" for t in record["top_k"])
        verdict = f"{REFUSAL_WORDS[record['refusal']]} (best guess: {ranked})" if record["refusal"] else ranked
        lines.append(f"{record['path']:<{width}}  {verdict}")
    return lines
