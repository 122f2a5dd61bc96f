"""The one rule that turns a model's scores into what artistid answers, on every surface.

The CLI, the Python API, `evaluate`, the service (PyTorch and ONNX runtimes) and Spark all call `decide`; nothing
else decides an answer. It needs numpy alone, so the ONNX runtime can use it without torch.

An answer is an artist's name, or one of two refusals:
- NOT_A_PAINTING: the image does not look like a painting at all (a photo, a scanned letter, noise);
- UNKNOWN: a painting, but by none of the artists the model knows.
Each refusal still carries the closest artist and the top-k, as a hint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

__all__ = ["NOT_A_PAINTING", "REFUSALS", "UNKNOWN", "Answer", "Refusal", "RefusalRules", "decide"]

UNKNOWN: Final = "unknown"
NOT_A_PAINTING: Final = "not_a_painting"
Refusal = Literal["unknown", "not_a_painting"]
REFUSALS: tuple[Refusal, ...] = (UNKNOWN, NOT_A_PAINTING)


@dataclass(frozen=True)
class RefusalRules:
    """Where each refusal starts; None switches that rule off.

    threshold: top calibrated probability below which a painting is UNKNOWN.
    painting_threshold: "is a painting" score below which the image is NOT_A_PAINTING.
    other_threshold: "by someone else" score at or above which a painting is UNKNOWN.
    """

    threshold: float | None = None
    painting_threshold: float | None = None
    other_threshold: float | None = None


@dataclass(frozen=True)
class Answer:
    """What artistid says about one image."""

    artist: str  # the artist named, or the refusal (UNKNOWN, NOT_A_PAINTING)
    refusal: Refusal | None
    closest: str  # the most likely of the known artists, named even when refused
    probability: float  # the calibrated probability of `closest`
    top_k: tuple[tuple[str, float], ...]

    @property
    def refused(self) -> bool:
        return self.refusal is not None


def decide(
    probabilities: np.ndarray,
    classes: Sequence[str],
    rules: RefusalRules,
    *,
    painting_scores: np.ndarray | None = None,
    other_scores: np.ndarray | None = None,
    top_k: int = 1,
) -> list[Answer]:
    """One answer per row of `probabilities` (columns in the order of `classes`).

    `painting_scores` and `other_scores` hold, per image, the scores the rules' painting and other thresholds are
    compared with; a rule whose threshold or scores are missing is not applied. Not-a-painting is decided first.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise ValueError(f"expected probabilities of shape (n, {len(classes)}), got {probabilities.shape}")
    k = max(1, min(int(top_k), len(classes)))
    answers = []
    for i, row in enumerate(probabilities):
        ranked = np.argsort(-row, kind="stable")[:k]
        best = int(ranked[0])
        refusal: Refusal | None = None
        if _below(painting_scores, i, rules.painting_threshold):
            refusal = NOT_A_PAINTING
        elif (rules.threshold is not None and float(row[best]) < rules.threshold) or _at_or_above(
            other_scores, i, rules.other_threshold
        ):
            refusal = UNKNOWN
        answers.append(
            Answer(
                artist=refusal or str(classes[best]),
                refusal=refusal,
                closest=str(classes[best]),
                probability=float(row[best]),
                top_k=tuple((str(classes[j]), float(row[j])) for j in ranked),
            )
        )
    return answers


def _below(scores: np.ndarray | None, i: int, threshold: float | None) -> bool:
    return scores is not None and threshold is not None and float(scores[i]) < threshold


def _at_or_above(scores: np.ndarray | None, i: int, threshold: float | None) -> bool:
    return scores is not None and threshold is not None and float(scores[i]) >= threshold
