"""The head honours scikit-learn's estimator contract and the reference recipe's options."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from artistid.head import ArtistHead, parse_lr_schedule


@parametrize_with_checks([ArtistHead()])
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


def test_lr_schedule_parsing() -> None:
    assert parse_lr_schedule("0.2x10,0.1") == [(0.2, 10), (0.1, None)]
    assert parse_lr_schedule("0.05") == [(0.05, None)]
    for bad in ("", "fast", "0.1,0.2x3", "0x2,0.1", "-1"):
        with pytest.raises(ValueError, match="schedule"):
            parse_lr_schedule(bad)


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 32)) * 3
    labels = rng.integers(0, 3, 300)
    return (centers[labels] + rng.normal(size=(300, 32))).astype(np.float32), np.array(["a", "b", "c"])[labels]


def test_same_seed_same_model_and_history_per_epoch() -> None:
    X, y = _blobs()
    first, second = ArtistHead(seed=5).fit(X, y), ArtistHead(seed=5).fit(X, y)
    assert np.array_equal(first.coef_, second.coef_)
    assert [r["epoch"] for r in first.history_] == list(range(1, 8))
    assert {"loss", "train_error", "lr"} <= set(first.history_[0])
    assert not np.array_equal(first.coef_, ArtistHead(seed=6).fit(X, y).coef_)


def test_validation_and_early_stopping() -> None:
    X, y = _blobs()
    head = ArtistHead(epochs=50, patience=2).fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:])
    assert len(head.history_) < 50
    assert all("val_accuracy" in r for r in head.history_)
    assert head.score(X[200:], y[200:]) > 0.9


def test_balance_weights_rare_artists_up() -> None:
    X, y = _blobs(1)
    keep = (y != "c") | (np.arange(len(y)) % 10 == 0)  # "c" is rare
    plain = ArtistHead().fit(X[keep], y[keep])
    balanced = ArtistHead(balance=True).fit(X[keep], y[keep])
    rare = y == "c"
    assert balanced.predict_proba(X[rare])[:, 2].mean() >= plain.predict_proba(X[rare])[:, 2].mean()
