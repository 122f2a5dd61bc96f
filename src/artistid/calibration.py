"""Probabilities a user can trust, and an honest "none of these artists".

Out-of-fold scores on the training set (`out_of_fold_scores`) stand in for unseen paintings: a temperature fitted
on them (`fit_temperature`) makes the top probability match how often the model is right, measured as the expected
calibration error (`expected_calibration_error`). The rejection threshold (`choose_threshold`) is the top
probability below which only a small, chosen share of known-artist paintings falls; paintings of other artists,
which the model has never seen, tend to fall below it. `coverage_curve` shows accuracy against the share answered.
`calibrate` returns them as the model card's calibration section; `artistid.answers.decide` applies them.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from artistid.answers import RefusalRules
from artistid.card import CalibrationCard
from artistid.errors import UsageError
from artistid.layer import softmax

__all__ = [
    "DEFAULT_FALSE_REJECTION",
    "calibrate",
    "choose_threshold",
    "coverage_curve",
    "expected_calibration_error",
    "fit_temperature",
    "out_of_fold_scores",
]

logger = logging.getLogger(__name__)

DEFAULT_FALSE_REJECTION = 0.02  # below the 3% users accept, leaving room for the noise of a small validation set


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """Mean |accuracy - confidence| of the top prediction over equal-width confidence bins, weighted by count."""
    probabilities = np.asarray(probabilities)
    targets = np.asarray(targets)
    if len(targets) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        members = bins == b
        error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def _nll(scores: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    probabilities = softmax(scores, temperature)
    return float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(targets)), targets], 1e-300))))


def fit_temperature(scores: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T minimizing the negative log-likelihood of softmax(scores / T) (Guo et al., 2017)."""
    from scipy.optimize import minimize_scalar

    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    # Searched on log T: T stays positive and the search is as fine near 0.1 as near 10.
    result = minimize_scalar(
        lambda log_t: _nll(scores, targets, float(np.exp(log_t))), bounds=(-5.0, 5.0), method="bounded"
    )
    return float(np.exp(result.x))


def choose_threshold(confidence: np.ndarray, false_rejection: float = DEFAULT_FALSE_REJECTION) -> float:
    """The top probability below which a share `false_rejection` of these (known-artist) paintings falls."""
    if not 0 <= false_rejection < 1:
        raise UsageError(f"false_rejection must be in [0, 1); got {false_rejection!r}")
    confidence = np.sort(np.asarray(confidence, dtype=np.float64))
    if len(confidence) == 0 or false_rejection == 0:
        return 0.0
    # The largest value that rejects at most `false_rejection` of them (ties at the threshold are accepted).
    allowed = int(np.floor(false_rejection * len(confidence)))
    return float(confidence[allowed]) if allowed < len(confidence) else float(confidence[-1])


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage, accuracy and threshold when answering only the most confident predictions, in falling order."""
    confidence = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    hits = np.asarray(correct, dtype=np.float64)[order]
    answered = np.arange(1, len(order) + 1)
    return answered / max(len(order), 1), np.cumsum(hits) / answered, confidence[order]


def calibrate(
    scores: np.ndarray,
    targets: np.ndarray,
    *,
    false_rejection: float = DEFAULT_FALSE_REJECTION,
    method: str = "validation",
    photographed: np.ndarray | None = None,
) -> CalibrationCard:
    """Temperature and rejection threshold from scores of paintings the head was not trained on.

    `photographed`: scores of photos of such paintings, which must be answered as well: the threshold refuses a
    share `false_rejection` of the paintings and their photos together (the temperature is the paintings').
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    temperature = fit_temperature(scores, targets)
    before, after = softmax(scores), softmax(scores, temperature)
    confidence = after.max(axis=1)
    if photographed is not None and len(photographed):
        photo_confidence = softmax(np.asarray(photographed, dtype=np.float64), temperature).max(axis=1)
        confidence = np.concatenate([confidence, photo_confidence])
    calibration = CalibrationCard(
        temperature=temperature,
        rules=RefusalRules(threshold=choose_threshold(confidence, false_rejection)),
        ece_before=expected_calibration_error(before, targets),
        ece_after=expected_calibration_error(after, targets),
        nll_before=_nll(scores, targets, 1.0),
        nll_after=_nll(scores, targets, temperature),
        target_false_rejection=false_rejection,
        n=len(targets),
        method=method,
        validation_accuracy=float(np.mean(scores.argmax(axis=1) == targets)) if len(targets) else None,
    )
    logger.info("calibration %s", calibration)
    return calibration


def out_of_fold_scores(
    head: Any,
    X: np.ndarray,
    y: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    *,
    extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Scores of every training row from a copy of `head` fitted without it (stratified k-fold cross-fitting).

    Columns follow `np.unique(y)`, as the head's `classes_` do. `extra` = (rows, labels, of): more training rows,
    each derived from row `of[i]` of X (a photo of that painting); a fold learns from those of its own rows only,
    and scores those of the rows it holds out. The result has the rows of X, then the extra rows.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    y = np.asarray(y)
    classes = np.unique(y)
    n_extra = len(extra[0]) if extra is not None else 0
    scores = np.zeros((len(y) + n_extra, len(classes)), dtype=np.float64)

    def fold(train_rows: np.ndarray, held_rows: np.ndarray) -> tuple[np.ndarray, Any, np.ndarray]:
        X_fit, y_fit = X[train_rows], y[train_rows]
        rows, X_held = held_rows, X[held_rows]
        if extra is not None and n_extra:
            taught = np.isin(extra[2], train_rows)
            X_fit, y_fit = np.vstack([X_fit, extra[0][taught]]), np.concatenate([y_fit, extra[1][taught]])
            held_extra = np.flatnonzero(~taught)
            rows, X_held = np.concatenate([held_rows, len(y) + held_extra]), np.vstack([X_held, extra[0][held_extra]])
        fold_head = clone(head).fit(X_fit, y_fit)
        return rows, fold_head, X_held

    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y))
    # The folds are fitted side by side, one per core, each with one BLAS thread (set here, once for all threads).
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(min(folds, os.cpu_count() or 1)) as pool:
        fitted = list(pool.map(lambda split: fold(*split), splits))
    for rows, fold_head, X_held in fitted:
        columns = np.searchsorted(classes, fold_head.classes_)
        # A class missing from a fold's training part gets no score: it can never win there.
        scores[rows] = -np.inf if len(columns) < len(classes) else 0.0
        scores[np.ix_(rows, columns)] = fold_head._scores(X_held)
    return scores
