"""The dense layer trained on top of frozen features, as a scikit-learn classifier.

`ArtistHead` follows the estimator contract: `__init__` only stores, `fit` learns `classes_`, `coef_`,
`intercept_`, and `predict` / `predict_proba` share one scorer. The training loop is
the reference design's: minibatch SGD with momentum and L2 weight decay, a learning rate per epoch.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["ArtistHead", "parse_lr_schedule"]

logger = logging.getLogger(__name__)


def parse_lr_schedule(text: str) -> list[tuple[float, int | None]]:
    """'0.2x10,0.1' -> [(0.2, 10), (0.1, None)]: a rate for a number of epochs, the last one for the rest."""
    schedule: list[tuple[float, int | None]] = []
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    for position, part in enumerate(parts):
        match = re.fullmatch(r"([0-9.eE+-]+)(?:x(\d+))?", part)
        if match is None:
            raise ValueError(f"learning-rate schedule {text!r}: expected e.g. '0.2x10,0.1', not {part!r}")
        rate = float(match[1])
        epochs = int(match[2]) if match[2] else None
        if rate <= 0 or (epochs is None and position < len(parts) - 1) or epochs == 0:
            raise ValueError(f"learning-rate schedule {text!r}: rates must be > 0 and only the last may omit 'xN'")
        schedule.append((rate, epochs))
    if not schedule:
        raise ValueError("learning-rate schedule is empty")
    return schedule


def _rate_for_epoch(schedule: list[tuple[float, int | None]], epoch: int) -> float:
    start = 0
    for rate, epochs in schedule:
        if epochs is None or epoch < start + epochs:
            return rate
        start += epochs
    return schedule[-1][0]


class ArtistHead(ClassifierMixin, BaseEstimator):
    """A softmax layer on frozen features, trained by SGD with momentum (the reference recipe)."""

    def __init__(
        self,
        *,
        epochs: int = 7,
        batch_size: int = 50,
        lr: str = "0.2x10,0.1",
        momentum: float = 0.9,
        l2: float = 0.0005,
        balance: bool = False,
        patience: int | None = None,
        seed: int = 123,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.l2 = l2
        self.balance = balance
        self.patience = patience
        self.seed = seed

    def _check_params(self) -> list[tuple[float, int | None]]:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"epochs must be a positive integer; got {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer; got {self.batch_size!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum!r}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0; got {self.l2!r}")
        return parse_lr_schedule(self.lr)

    def fit(self, X: Any, y: Any, *, X_val: Any = None, y_val: Any = None) -> ArtistHead:
        import torch

        schedule = self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, targets = np.unique(y, return_inverse=True)
        # Raw features, as the reference design fed them: at its learning rates this beats standardizing them.
        features = torch.from_numpy(X).float()
        labels = torch.from_numpy(targets).long()
        generator = torch.Generator().manual_seed(self.seed)
        layer = torch.nn.Linear(features.shape[1], len(self.classes_))
        with torch.no_grad():  # a seeded, zero start: the same seed and data always give the same model
            layer.weight.zero_()
            layer.bias.zero_()
        weights = None
        if self.balance:
            counts = np.bincount(targets, minlength=len(self.classes_)).astype(np.float32)
            weights = torch.from_numpy(counts.sum() / (len(counts) * np.maximum(counts, 1)))
        loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
        optimizer = torch.optim.SGD(
            layer.parameters(), lr=_rate_for_epoch(schedule, 0), momentum=self.momentum, weight_decay=self.l2
        )
        validate = X_val is not None and y_val is not None and len(y_val) > 0
        best_accuracy, best_state, waited = -1.0, None, 0
        self.history_: list[dict[str, float]] = []
        for epoch in range(self.epochs):
            for group in optimizer.param_groups:
                group["lr"] = _rate_for_epoch(schedule, epoch)
            order = torch.randperm(len(labels), generator=generator)
            total_loss, wrong = 0.0, 0
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                logits = layer(features[batch])
                loss = loss_fn(logits, labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(batch)
                wrong += int((logits.argmax(1) != labels[batch]).sum())
            record = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "loss": total_loss / len(labels),
                "train_error": wrong / len(labels),
            }
            self.coef_ = layer.weight.detach().numpy().copy()
            self.intercept_ = layer.bias.detach().numpy().copy()
            if validate:
                record["val_accuracy"] = float(np.mean(self.predict(X_val) == np.asarray(y_val)))
                if record["val_accuracy"] > best_accuracy:
                    best_accuracy, best_state, waited = record["val_accuracy"], (self.coef_, self.intercept_), 0
                else:
                    waited += 1
            self.history_.append(record)
            logger.info("epoch %s", record)
            if validate and self.patience is not None and waited >= self.patience:
                break
        if validate and best_state is not None:  # keep the epoch that validated best
            self.coef_, self.intercept_ = best_state
        return self

    def _scores(self, X: Any) -> np.ndarray:  # noqa: N803
        check_is_fitted(self, ("coef_", "intercept_"))
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return X @ self.coef_.T + self.intercept_

    def decision_function(self, X: Any) -> np.ndarray:  # noqa: N803
        scores = self._scores(X)
        # scikit-learn's convention: one column for two classes, the score of the second.
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803
        # A temperature fitted on validation data (calibration) softens or sharpens the scores; 1.0 leaves them.
        scores = self._scores(X) / getattr(self, "temperature_", 1.0)
        scores = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803
        scores = self._scores(X)
        return self.classes_[scores.argmax(axis=1)]
