"""Honest evaluation of a model on a test set: accuracy over known artists, what it said for unknown ones.

`evaluate` returns an `Evaluation`; `write_report` writes predictions.csv, metrics.json, confusion.png and
coverage.png (accuracy versus the share of paintings answered). Each image's answer is `artistid.answers.decide`'s
with the model card's refusal rules, as `predict` and the service give it; with refusal rules, the metrics also say
how many known-artist paintings it wrongly refuses (`false_rejection_rate`) and how many paintings of other artists
it rightly does (`unknown_rejection_rate`).
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from artistid import storage
from artistid.answers import NOT_A_PAINTING, REFUSALS, UNKNOWN, Answer, RefusalRules
from artistid.calibration import coverage_curve, expected_calibration_error
from artistid.card import Metrics, from_dict
from artistid.datasets import Sample
from artistid.features import FeatureCache
from artistid.model import Model

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from artistid.feature_store import FeatureStore

__all__ = ["Evaluation", "coverage_png", "evaluate", "format_report", "score_predictions", "write_report"]


@dataclass
class Evaluation:
    classes: list[str]
    paths: list[str]
    truths: list[str | None]
    probabilities: np.ndarray
    answers: list[Answer]  # what `predict` and the service answer for each image
    metrics: dict[str, Any]
    rules: RefusalRules = field(default_factory=RefusalRules)

    @property
    def predictions(self) -> list[str]:
        """The most likely artist of each image, refused or not."""
        return [answer.closest for answer in self.answers]

    @property
    def threshold(self) -> float | None:
        return self.rules.threshold

    def card_metrics(self) -> Metrics:
        """The headline metrics, as the model card records them."""
        return from_dict(Metrics, self.metrics)


def _rejection_metrics(
    known: np.ndarray, true_index: np.ndarray, probabilities: np.ndarray, answers: list[Answer], rules: RefusalRules
) -> dict[str, Any]:
    """Calibration error on known artists, the accuracy-coverage trade-off, and what the refusals reject."""
    confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    known_confidence = confidence[known]
    correct = probabilities[known].argmax(axis=1) == true_index if len(true_index) else np.zeros(0, bool)
    coverage, accuracy, _ = coverage_curve(known_confidence, correct)
    curve = (
        [
            {"coverage": float(coverage[i]), "accuracy": float(accuracy[i])}
            for i in sorted({max(0, int(np.ceil(c * len(coverage))) - 1) for c in np.linspace(0.5, 1.0, 11)})
        ]
        if len(coverage)
        else []
    )
    result: dict[str, Any] = {
        "ece": expected_calibration_error(probabilities[known], true_index) if len(true_index) else None,
        "threshold": rules.threshold,
        "false_rejection_rate": None,
        "unknown_rejection_rate": None,
        "accuracy_answered": None,
        "coverage_curve": curve,
    }
    if rules != RefusalRules():
        refused = np.array([answer.refused for answer in answers], dtype=bool)
        known_refused, unknown_refused = refused[known], refused[~known]
        result["false_rejection_rate"] = float(np.mean(known_refused)) if len(known_refused) else None
        result["unknown_rejection_rate"] = float(np.mean(unknown_refused)) if len(unknown_refused) else None
        answered = ~known_refused
        result["accuracy_answered"] = float(np.mean(correct[answered])) if answered.any() else None
        kinds = np.array([answer.refusal or "" for answer in answers], dtype=object)
        result["refusals"] = {
            "known": {kind: int(np.sum(kinds[known] == kind)) for kind in REFUSALS},
            "unknown": {kind: int(np.sum(kinds[~known] == kind)) for kind in REFUSALS},
        }
    return result


def _top_k_accuracy(true_index: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """The share of images whose artist is among the `k` most likely (scikit-learn's top-k accuracy)."""
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import top_k_accuracy_score

    labels = np.arange(probabilities.shape[1])
    # scikit-learn scores two classes from the second one's column; with k >= the number of artists it warns that
    # every image counts, which is what top-k then means.
    scores = probabilities[:, 1] if len(labels) == 2 else probabilities
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return float(top_k_accuracy_score(true_index, scores, k=k, labels=labels))


def _metrics(
    classes: list[str],
    truths: list[str | None],
    probabilities: np.ndarray,
    answers: list[Answer],
    skipped: list[tuple[str, str]],
    rules: RefusalRules,
) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    known = np.array([t is not None for t in truths], dtype=bool)
    index = {name: i for i, name in enumerate(classes)}
    true_index = np.array([index.get(t, -1) for t in truths if t is not None], dtype=int)
    known_probabilities = probabilities[known]
    predicted = known_probabilities.argmax(axis=1) if len(true_index) else np.zeros(0, int)
    if len(true_index):
        precision, recall, f1, support = precision_recall_fscore_support(
            true_index, predicted, labels=range(len(classes)), zero_division=0
        )
        confusion = confusion_matrix(true_index, predicted, labels=range(len(classes))).tolist()
    else:  # only other artists' paintings: nothing to score per artist, only what was rejected
        precision = recall = f1 = support = np.zeros(len(classes))
        confusion = np.zeros((len(classes), len(classes)), int).tolist()
    unknown_predictions = [classes[i] for i in probabilities[~known].argmax(axis=1)] if (~known).any() else []
    return {
        "accuracy": float(np.mean(predicted == true_index)) if len(true_index) else None,
        "top2_accuracy": _top_k_accuracy(true_index, known_probabilities, 2) if len(true_index) else None,
        "n": len(true_index),
        "classes": classes,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion,
        "unknown": {"n": len(unknown_predictions), "predicted": dict(Counter(unknown_predictions))},
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
        **_rejection_metrics(known, true_index, probabilities, answers, rules),
    }


def evaluate(
    model: Model,
    samples: Sequence[Sample],
    *,
    cache: FeatureCache | None = None,
    workers: int | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    store: FeatureStore | None = None,
) -> Evaluation:
    """Scores every usable image; labels outside the model's artists count as unknown artists."""
    features = model.features_for(
        samples, cache=cache, workers=workers, storage_options=storage_options, progress=progress, store=store
    )
    probabilities = model.probabilities(features.features)
    answers = model.answers_for(features.features)
    return score_predictions(model, features.paths, features.labels, probabilities, features.errors, answers)


def score_predictions(
    model: Model,
    paths: list[str],
    labels: list[str | None],
    probabilities: np.ndarray,
    skipped: list[tuple[str, str]],
    answers: list[Answer] | None = None,
) -> Evaluation:
    """The evaluation of probabilities computed anywhere (here, or on Spark's executors) against the true labels.

    `answers`: as decided where the refusal scores were known (`Model.answers_for`); without them, the
    probabilities alone decide (no "not a painting", no --others).
    """
    classes = list(model.card.classes)
    truths = [label if label in classes else None for label in labels]
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(paths), len(classes))
    if answers is None:
        answers = model.card.decide(probabilities)
    metrics = _metrics(classes, truths, probabilities, answers, skipped, model.card.rules)
    return Evaluation(classes, paths, truths, probabilities, answers, metrics, model.card.rules)


def format_report(evaluation: Evaluation) -> str:
    m, classes = evaluation.metrics, evaluation.classes
    lines = []
    if m["n"]:
        lines.append(
            f"accuracy {m['accuracy']:.1%} on {m['n']} images of known artists (top-2 {m['top2_accuracy']:.1%})"
        )
        width = max(len(c) for c in classes)
        lines.append(f"{'artist':<{width}}  precision  recall     f1  support")
        for name in classes:
            row = m["per_class"][name]
            lines.append(
                f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}"
            )
        lines.append("confusion matrix (rows: true artist, columns: predicted)")
        column = min(width, 16)  # ten artists still fit a wide terminal
        lines.append(" " * (width + 2) + "  ".join(f"{c[:column]:>{column}}" for c in classes))
        for name, row in zip(classes, m["confusion_matrix"], strict=True):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>{column}d}" for v in row))
    else:
        lines.append("no images of known artists to measure accuracy on")
    if m["unknown"]["n"]:
        said = ", ".join(f"{k} {v}" for k, v in sorted(m["unknown"]["predicted"].items()))
        lines.append(f"{m['unknown']['n']} images of other artists; the model's top guess: {said}")
    if m.get("ece") is not None:
        lines.append(f"expected calibration error {m['ece']:.1%}")
    if m.get("threshold") is not None:
        rates = []
        if m["false_rejection_rate"] is not None:
            rates.append(f"{m['false_rejection_rate']:.1%} of known-artist images rejected")
            if m["accuracy_answered"] is not None:
                rates[-1] += f" (accuracy on the rest {m['accuracy_answered']:.1%})"
        if m["unknown_rejection_rate"] is not None:
            rates.append(f"{m['unknown_rejection_rate']:.1%} of other artists' images rejected")
        lines.append(f"'unknown' below probability {m['threshold']:.2f}: " + ", ".join(rates))
    if m.get("refusals"):
        counts = m["refusals"]
        lines.append(
            "refused as not a painting / unknown: "
            f"known artists {counts['known'][NOT_A_PAINTING]} / {counts['known'][UNKNOWN]}, "
            f"other artists {counts['unknown'][NOT_A_PAINTING]} / {counts['unknown'][UNKNOWN]}"
        )
    if m["skipped"]:
        lines.append(f"skipped {len(m['skipped'])} unusable files:")
        lines.extend(f"  {s['reason']}" for s in m["skipped"])
    return "\n".join(lines)


def _png(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _confusion_png(evaluation: Evaluation) -> bytes:
    # A bare Figure needs no pyplot backend: the caller's matplotlib state (e.g. a notebook's) stays untouched.
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    matrix = np.asarray(evaluation.metrics["confusion_matrix"])
    size = 2.5 + 0.7 * len(evaluation.classes)
    figure = Figure(figsize=(size, size))
    axes = figure.add_subplot()
    ConfusionMatrixDisplay(matrix, display_labels=evaluation.classes).plot(
        ax=axes, cmap="Blues", colorbar=False, xticks_rotation=45
    )
    accuracy = evaluation.metrics["accuracy"]
    axes.set_title(f"accuracy {accuracy:.1%}" if accuracy is not None else "confusion matrix")
    return _png(figure)


def coverage_png(confidence: np.ndarray, correct: np.ndarray, threshold: float | None = None, title: str = "") -> bytes:
    """The accuracy-versus-coverage curve as a PNG, the model's threshold marked."""
    from matplotlib.figure import Figure  # bare, as for the confusion matrix

    coverage, accuracy, thresholds = coverage_curve(confidence, correct)
    figure = Figure(figsize=(5, 4))
    axes = figure.add_subplot()
    axes.plot(coverage, accuracy, color="tab:blue")
    if threshold is not None and len(coverage):
        answered = int(np.sum(thresholds >= threshold))
        if answered:
            axes.scatter(
                [coverage[answered - 1]],
                [accuracy[answered - 1]],
                color="tab:red",
                zorder=3,
                label=f"threshold {threshold:.2f}: {coverage[answered - 1]:.0%} answered",
            )
            axes.legend(loc="lower left")
    axes.set_xlabel("coverage (share of known-artist paintings answered)")
    axes.set_ylabel("accuracy of the answered ones")
    axes.set_xlim(0, 1.02)
    axes.set_ylim(max(0.0, float(accuracy.min()) - 0.05) if len(accuracy) else 0, 1.005)
    axes.grid(alpha=0.3)
    axes.set_title(title or "accuracy versus coverage")
    return _png(figure)


def _coverage_png(evaluation: Evaluation) -> bytes:
    known = np.array([t is not None for t in evaluation.truths], dtype=bool)
    probabilities = evaluation.probabilities[known] if len(known) else np.zeros((0, len(evaluation.classes)))
    index = {name: i for i, name in enumerate(evaluation.classes)}
    truth = np.array([index[t] for t in evaluation.truths if t is not None], dtype=int)
    correct = probabilities.argmax(axis=1) == truth if len(truth) else np.zeros(0, bool)
    return coverage_png(probabilities.max(axis=1) if len(truth) else np.zeros(0), correct, evaluation.threshold)


def write_report(evaluation: Evaluation, directory: str | Path) -> dict[str, str]:
    """Writes predictions.csv, metrics.json, confusion.png and coverage.png into `directory`; returns their paths."""
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "true", "predicted", "answer", *evaluation.classes])
    for path, truth, answer, probabilities in zip(
        evaluation.paths, evaluation.truths, evaluation.answers, evaluation.probabilities, strict=True
    ):
        writer.writerow(
            [
                path,
                truth if truth is not None else "unknown",
                answer.closest,
                answer.artist,
                *(f"{p:.6f}" for p in probabilities),
            ]
        )
    files = {
        "predictions": (storage.join(str(directory), "predictions.csv"), rows.getvalue().encode()),
        "metrics": (storage.join(str(directory), "metrics.json"), json.dumps(evaluation.metrics, indent=2).encode()),
        "confusion": (storage.join(str(directory), "confusion.png"), _confusion_png(evaluation)),
        "coverage": (storage.join(str(directory), "coverage.png"), _coverage_png(evaluation)),
    }
    for path, data in files.values():
        storage.write_bytes_atomic(path, data)
    return {name: path for name, (path, _) in files.items()}
