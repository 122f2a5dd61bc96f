"""evaluate's metrics on probabilities made by hand, where every figure can be checked on paper."""

from __future__ import annotations

import numpy as np
import pytest

from artistid.answers import RefusalRules, decide
from artistid.evaluate import _metrics


def _scored(classes: list[str], truths: list[str | None], probabilities: np.ndarray) -> dict:
    rules = RefusalRules()
    return _metrics(classes, truths, probabilities, decide(probabilities, classes, rules), [], rules)


def test_accuracy_top2_and_per_artist_scores() -> None:
    classes = ["Claude_Monet", "Pablo_Picasso", "Vincent_van_Gogh"]
    probabilities = np.array(
        [
            [0.7, 0.2, 0.1],  # Monet, right
            [0.5, 0.3, 0.2],  # Picasso, second guess
            [0.1, 0.3, 0.6],  # van Gogh, right
            [0.6, 0.1, 0.3],  # van Gogh, second guess
            [0.2, 0.5, 0.3],  # Monet, third guess
            [0.4, 0.4, 0.2],  # an unknown artist's painting
        ]
    )
    truths = ["Claude_Monet", "Pablo_Picasso", "Vincent_van_Gogh", "Vincent_van_Gogh", "Claude_Monet", None]
    metrics = _scored(classes, truths, probabilities)
    assert metrics["n"] == 5
    assert metrics["accuracy"] == pytest.approx(2 / 5)
    assert metrics["top2_accuracy"] == pytest.approx(4 / 5)
    assert metrics["per_class"]["Vincent_van_Gogh"]["recall"] == pytest.approx(1 / 2)
    assert metrics["unknown"] == {"n": 1, "predicted": {"Claude_Monet": 1}}


def test_top2_of_two_artists_counts_every_image() -> None:
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    metrics = _scored(["A", "B"], ["A", "B", "B"], probabilities)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["top2_accuracy"] == 1.0
