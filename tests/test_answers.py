"""The one rule that turns scores into an answer: artist, "unknown" or "not a painting"."""

from __future__ import annotations

import numpy as np
import pytest

from artistid.answers import NOT_A_PAINTING, UNKNOWN, RefusalRules, decide

CLASSES = ["Claude_Monet", "Pablo_Picasso", "Vincent_van_Gogh"]
PROBABILITIES = np.array([[0.1, 0.2, 0.7], [0.4, 0.35, 0.25]])


def test_names_the_most_likely_artist_with_its_top_k() -> None:
    first, second = decide(PROBABILITIES, CLASSES, RefusalRules(), top_k=2)
    assert (first.artist, first.refusal, first.probability) == ("Vincent_van_Gogh", None, 0.7)
    assert first.top_k == (("Vincent_van_Gogh", 0.7), ("Pablo_Picasso", 0.2))
    assert second.artist == "Claude_Monet"


def test_below_the_threshold_is_unknown_with_the_closest_artist_as_a_hint() -> None:
    first, second = decide(PROBABILITIES, CLASSES, RefusalRules(threshold=0.5))
    assert first.artist == "Vincent_van_Gogh"
    assert (second.artist, second.refusal, second.closest) == (UNKNOWN, UNKNOWN, "Claude_Monet")


def test_not_a_painting_comes_before_unknown() -> None:
    rules = RefusalRules(threshold=0.5, painting_threshold=0.3, other_threshold=0.6)
    answers = decide(
        PROBABILITIES, CLASSES, rules, painting_scores=np.array([0.9, 0.1]), other_scores=np.array([0.7, 0])
    )
    assert [a.artist for a in answers] == [UNKNOWN, NOT_A_PAINTING]
    assert all(a.refused for a in answers)


def test_a_rule_without_its_scores_is_not_applied() -> None:
    answers = decide(PROBABILITIES, CLASSES, RefusalRules(painting_threshold=0.9))
    assert [a.refusal for a in answers] == [None, None]


def test_top_k_is_capped_at_the_number_of_artists_and_shapes_are_checked() -> None:
    assert len(decide(PROBABILITIES, CLASSES, RefusalRules(), top_k=10)[0].top_k) == 3
    with pytest.raises(ValueError, match="shape"):
        decide(PROBABILITIES[:, :2], CLASSES, RefusalRules())
