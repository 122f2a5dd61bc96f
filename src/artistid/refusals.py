"""The scores behind the two refusals, computed from the same feature vector the head sees.

- `PaintingGate` ("is this a painting at all?"): the painting score of an image is its mean cosine similarity to
  its nearest neighbours among the model's own training paintings and photos of them in their frames
  (`artistid.synthetic.photograph`), in the columns of the backbone's last feature node: what the network makes of
  the image's content (a layer's style statistics say more about brushwork than about what is shown, and would let
  photos pass). Everyday photos, scanned letters, screenshots, noise and tiny images lie far from every painting; a
  photographed painting lies near the photos of paintings. Every trained model has one: it needs no data beyond
  the training set, works for any backbone and costs one small matrix product per image.
- `OtherGate` ("is this painting by someone else?", from `train --others`): a logistic regression over the known
  artists and the other painters, fitted apart from the artist head; the other score is the probability it gives
  to the other painters together. The artist head never sees the others, so its calibrated probabilities over the
  known artists are unchanged.

Each gate's threshold is chosen on the training set alone (leave-one-out or cross-fitted scores of the known
artists' paintings) to refuse a chosen share of them; `artistid.answers.decide` compares the scores with the
thresholds. Needs numpy and scikit-learn only (no torch), so every runtime can score.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from artistid.calibration import choose_threshold
from artistid.layer import softmax

__all__ = [
    "DEFAULT_OTHER_FALSE_REJECTION",
    "DEFAULT_PAINTING_FALSE_REJECTION",
    "PAINTING_NEIGHBOURS",
    "OtherGate",
    "PaintingGate",
    "RefusalGates",
    "fit_other_gate",
    "fit_painting_gate",
    "painting_similarity",
    "split_scores",
    "stack_scores",
]

logger = logging.getLogger(__name__)

PAINTING_NEIGHBOURS = 10  # more neighbours: a smoother score that a lone look-alike cannot lift
# Shares of the known artists' own paintings each gate may refuse; with the 'unknown' threshold's share they stay
# within the 3% users accept.
DEFAULT_PAINTING_FALSE_REJECTION = 0.01
DEFAULT_OTHER_FALSE_REJECTION = 0.01
_CHUNK = 512  # rows scored at once: bounds the similarity matrix held in memory


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def painting_similarity(
    features: np.ndarray, reference: np.ndarray, neighbours: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Mean cosine similarity of each row to its `neighbours` most similar reference rows (unit vectors).

    `exclude[i]`, a boolean row over the reference, leaves out what row i must not be compared with (itself).
    """
    unit = _unit(features)
    k = max(1, min(int(neighbours), len(reference)))
    scores = np.empty(len(unit), dtype=np.float32)
    for start in range(0, len(unit), _CHUNK):
        similarity = unit[start : start + _CHUNK] @ reference.T
        if exclude is not None:
            similarity[exclude[start : start + _CHUNK]] = -np.inf
        nearest = np.partition(similarity, similarity.shape[1] - k, axis=1)[:, -k:]
        scores[start : start + _CHUNK] = nearest.mean(axis=1)
    return scores


@dataclass
class PaintingGate:
    """Below `threshold`, an image's painting score says: not a painting."""

    reference: np.ndarray  # (n, d) unit vectors: the training paintings, then the photos of some of them
    columns: tuple[int, int]  # the feature columns [start, stop) compared: the last feature node's
    neighbours: int
    threshold: float
    false_rejection: float  # the share of training paintings (left out one at a time) below the threshold
    n_paintings: int
    n_photographed: int

    def scores(self, features: np.ndarray) -> np.ndarray:
        start, stop = self.columns
        return painting_similarity(np.asarray(features)[:, start:stop], self.reference, self.neighbours)

    def describe(self) -> dict[str, Any]:
        return {
            "score": "mean cosine similarity to the nearest training paintings and photos of them",
            "columns": list(self.columns),
            "neighbours": self.neighbours,
            "threshold": self.threshold,
            "false_rejection": self.false_rejection,
            "n_paintings": self.n_paintings,
            "n_photographed": self.n_photographed,
            "method": "leave-one-out on the training paintings",
        }


def fit_painting_gate(
    paintings: np.ndarray,
    photographs: np.ndarray,
    photographed_from: Sequence[int] | np.ndarray,
    *,
    columns: tuple[int, int] | None = None,
    neighbours: int = PAINTING_NEIGHBOURS,
    false_rejection: float = DEFAULT_PAINTING_FALSE_REJECTION,
) -> PaintingGate:
    """The gate for these training paintings and photos of them (`photographed_from[j]`: the painting of photo j).

    Each painting is scored without itself and without the photos of it, as a new painting would be. `columns`:
    the feature columns [start, stop) compared [default: all].
    """
    paintings = np.asarray(paintings, dtype=np.float32)
    start, stop = columns if columns is not None else (0, paintings.shape[1])
    photographs = np.asarray(photographs, dtype=np.float32).reshape(-1, paintings.shape[1])[:, start:stop]
    paintings = paintings[:, start:stop]
    reference = _unit(np.vstack([paintings, photographs]))
    source = np.concatenate([np.arange(len(paintings)), np.asarray(photographed_from, dtype=np.int64)])
    exclude = source[None, :] == np.arange(len(paintings))[:, None]
    left_out = painting_similarity(paintings, reference, neighbours, exclude)
    threshold = choose_threshold(left_out, false_rejection)
    gate = PaintingGate(
        reference=reference,
        columns=(int(start), int(stop)),
        neighbours=int(neighbours),
        threshold=float(threshold),
        false_rejection=float(np.mean(left_out < threshold)),
        n_paintings=len(paintings),
        n_photographed=len(photographs),
    )
    logger.info("painting gate: %s", gate.describe())
    return gate


@dataclass
class OtherGate:
    """At or above `threshold`, an image's other score (the probability of the other painters) says: unknown."""

    weight: np.ndarray  # (c, d): one linear layer on the raw features, over `groups`
    bias: np.ndarray  # (c,)
    groups: tuple[str, ...]  # the known artists and the other painters, in the order of the weight's rows
    other: tuple[bool, ...]  # which groups are other painters
    threshold: float
    false_rejection: float  # the share of known artists' paintings (cross-fitted) at or above the threshold
    n_known: int
    n_others: int
    folds: int

    def scores(self, features: np.ndarray) -> np.ndarray:
        probabilities = softmax(np.asarray(features, dtype=np.float64) @ self.weight.T + self.bias)
        return probabilities[:, np.asarray(self.other, dtype=bool)].sum(axis=1)

    def describe(self) -> dict[str, Any]:
        return {
            "score": "probability of the other painters, from a logistic regression over known and other painters",
            "groups": list(self.groups),
            "other": list(self.other),
            "threshold": self.threshold,
            "false_rejection": self.false_rejection,
            "n_known": self.n_known,
            "n_others": self.n_others,
            "folds": self.folds,
            "method": f"{self.folds}-fold cross-fitting on the training set",
        }


OTHER_GROUP = "(other)"  # the group of other painters' images that came without an artist folder


def _logistic_regression(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))


def _threshold_at_or_above(scores: np.ndarray, false_rejection: float) -> float:
    """The smallest threshold that at most a share `false_rejection` of these scores reach."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(false_rejection * len(ordered)))
    if allowed >= len(ordered):
        return float(ordered[-1])
    return float(np.nextafter(ordered[allowed], np.inf))


def fit_other_gate(
    known: np.ndarray,
    known_labels: Sequence[str],
    others: np.ndarray,
    other_labels: Sequence[str | None],
    *,
    false_rejection: float = DEFAULT_OTHER_FALSE_REJECTION,
    folds: int = 5,
    seed: int = 0,
    regularization: float = 0.01,
) -> OtherGate:
    """The known-versus-other decision: fitted on every image, its threshold on cross-fitted scores of the known.

    Other painters keep their own groups (their artist folders; loose files form one group), which separates them
    from the known artists better than one pooled "other" class.
    """
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    known_y = [f"known:{label}" for label in known_labels]
    other_y = [f"other:{label or OTHER_GROUP}" for label in other_labels]
    features = np.vstack([np.asarray(known, np.float32), np.asarray(others, np.float32)])
    labels = np.asarray(known_y + other_y)
    is_known = np.arange(len(labels)) < len(known_y)
    smallest = int(np.unique(labels, return_counts=True)[1].min())
    folds = max(2, min(folds, smallest))
    cross_fitted = np.zeros(len(labels))
    # As for the head's L-BFGS: its many small BLAS calls run faster on one thread.
    with threadpool_limits(1, user_api="blas"):
        for train_rows, held_rows in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
            fold = _logistic_regression(regularization).fit(features[train_rows], labels[train_rows])
            other_columns = np.char.startswith(fold.classes_.astype(str), "other:")
            cross_fitted[held_rows] = fold.predict_proba(features[held_rows])[:, other_columns].sum(axis=1)
        pipeline = _logistic_regression(regularization).fit(features, labels)
    threshold = _threshold_at_or_above(cross_fitted[is_known], false_rejection)
    scaler, regression = pipeline[0], pipeline[-1]
    # Folded into one layer on the raw features, as the head is: every runtime scores it with one matrix product.
    weight = regression.coef_ / scaler.scale_
    bias = regression.intercept_ - weight @ scaler.mean_
    if weight.shape[0] == 1:  # two groups: scikit-learn keeps one row, for the second group
        weight, bias = np.vstack([-weight / 2, weight / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    groups = tuple(str(g) for g in regression.classes_)
    gate = OtherGate(
        weight=weight.astype(np.float32),
        bias=bias.astype(np.float32),
        groups=tuple(g.split(":", 1)[1] for g in groups),
        other=tuple(g.startswith("other:") for g in groups),
        threshold=threshold,
        false_rejection=float(np.mean(cross_fitted[is_known] >= threshold)),
        n_known=len(known_y),
        n_others=len(other_y),
        folds=folds,
    )
    logger.info("other gate: %s", gate.describe())
    return gate


@dataclass
class RefusalGates:
    """A model's gates; either may be absent (an old model file, or no --others)."""

    painting: PaintingGate | None = None
    other: OtherGate | None = None

    def scores(self, features: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The painting scores and other scores of feature rows (None for a gate the model lacks)."""
        painting = self.painting.scores(features) if self.painting is not None else None
        other = self.other.scores(features) if self.other is not None else None
        return painting, other

    def describe(self) -> dict[str, Any]:
        """The model file's "refusals" section: how each refusal is decided."""
        return {
            "not_a_painting": self.painting.describe() if self.painting is not None else None,
            "unknown_by_others": self.other.describe() if self.other is not None else None,
        }

    def tensors(self) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        if self.painting is not None:
            # Half precision halves the file; similarities move by less than the thresholds' resolution.
            found["refusals.painting.reference"] = self.painting.reference.astype(np.float16)
        if self.other is not None:
            found["refusals.other.weight"] = self.other.weight
            found["refusals.other.bias"] = self.other.bias
        return found

    @classmethod
    def from_parts(cls, section: dict[str, Any] | None, tensors: dict[str, np.ndarray]) -> RefusalGates:
        """The gates from a model file's "refusals" section and its tensors (keys as `tensors()` names them)."""
        section = section or {}
        painting = other = None
        if section.get("not_a_painting"):
            meta = section["not_a_painting"]
            reference = np.asarray(tensors["refusals.painting.reference"], dtype=np.float32)
            # a model file from before the gate chose its columns compares whole vectors
            start, stop = meta.get("columns") or (0, reference.shape[1])
            painting = PaintingGate(
                reference=reference,
                columns=(int(start), int(stop)),
                neighbours=int(meta["neighbours"]),
                threshold=float(meta["threshold"]),
                false_rejection=float(meta["false_rejection"]),
                n_paintings=int(meta["n_paintings"]),
                n_photographed=int(meta["n_photographed"]),
            )
        if section.get("unknown_by_others"):
            meta = section["unknown_by_others"]
            other = OtherGate(
                weight=np.asarray(tensors["refusals.other.weight"], dtype=np.float32),
                bias=np.asarray(tensors["refusals.other.bias"], dtype=np.float32),
                groups=tuple(meta["groups"]),
                other=tuple(bool(v) for v in meta["other"]),
                threshold=float(meta["threshold"]),
                false_rejection=float(meta["false_rejection"]),
                n_known=int(meta["n_known"]),
                n_others=int(meta["n_others"]),
                folds=int(meta["folds"]),
            )
        return cls(painting, other)


def stack_scores(
    probabilities: np.ndarray, painting_scores: np.ndarray | None, other_scores: np.ndarray | None
) -> np.ndarray:
    """One array per image row: the probabilities, then the painting and other scores (NaN for a missing gate).

    So the scores travel together through code that moves one array per batch (the service's batcher).
    """
    n = len(probabilities)
    missing = np.full(n, np.nan, dtype=np.float64)
    columns = [
        painting_scores if painting_scores is not None else missing,
        other_scores if other_scores is not None else missing,
    ]
    return np.column_stack([np.asarray(probabilities, dtype=np.float64), *columns])


def split_scores(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The probabilities, painting scores and other scores that `stack_scores` stacked."""
    rows = np.asarray(rows, dtype=np.float64)
    painting, other = rows[:, -2], rows[:, -1]
    return (
        rows[:, :-2],
        None if np.isnan(painting).all() else painting,
        None if np.isnan(other).all() else other,
    )
