"""The dense layer trained on top of frozen features, as a scikit-learn classifier.

`ArtistHead` follows the estimator contract: `__init__` only stores, `fit` learns `classes_`, `coef_`,
`intercept_`, and `predict` / `predict_proba` share one scorer. The default training loop is
the reference design's: minibatch SGD with momentum and L2 weight decay, a learning rate per epoch. `solver="lbfgs"`
fits the same L2-regularized softmax to convergence instead (better on wide features such as style statistics; on
far fewer rows than features it fits in their `RowSpace`, to the same optimum), and `standardize=True` trains on
standardized features; either way the result is folded into one linear layer on the raw features, so the model file
holds the same tensors. The head's probabilities are uncalibrated; the model card's
calibration (temperature and refusal rules) is applied by `artistid.model.Model`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from artistid.errors import UsageError
from artistid.layer import LinearLayer, softmax

__all__ = ["SOLVERS", "ArtistHead", "RowSpace", "parse_lr_schedule"]

logger = logging.getLogger(__name__)

SOLVERS: tuple[str, ...] = ("sgd", "lbfgs")


def parse_lr_schedule(text: str) -> list[tuple[float, int | None]]:
    """'0.2x10,0.1' -> [(0.2, 10), (0.1, None)]: a rate for a number of epochs, the last one for the rest."""
    schedule: list[tuple[float, int | None]] = []
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    for position, part in enumerate(parts):
        match = re.fullmatch(r"([0-9.eE+-]+)(?:x(\d+))?", part)
        if match is None:
            raise UsageError(f"learning-rate schedule {text!r}: expected e.g. '0.2x10,0.1', not {part!r}")
        rate = float(match[1])
        epochs = int(match[2]) if match[2] else None
        if rate <= 0 or (epochs is None and position < len(parts) - 1) or epochs == 0:
            raise UsageError(f"learning-rate schedule {text!r}: rates must be > 0 and only the last may omit 'xN'")
        schedule.append((rate, epochs))
    if not schedule:
        raise UsageError("learning-rate schedule is empty")
    return schedule


def _rate_for_epoch(schedule: list[tuple[float, int | None]], epoch: int) -> float:
    start = 0
    for rate, epochs in schedule:
        if epochs is None or epoch < start + epochs:
            return rate
        start += epochs
    return schedule[-1][0]


def _row_space(rows: np.ndarray) -> RowSpace | None:
    """The `RowSpace` to fit on, where it saves more than factorizing costs (rows much fewer than columns) and the
    rows span something."""
    if 2 * len(rows) > rows.shape[1]:
        return None
    space = RowSpace(rows)
    return space if space.coordinates.shape[1] else None


class RowSpace:
    """Rows of a wide matrix as coordinates in an orthonormal basis of the space they span.

    An L2-penalized linear model's weights lie in the span of its training rows, and the penalty and the scores are
    unchanged by a rotation: fitting on these `coordinates` (rows x rank) finds the same optimum as fitting on the
    rows, at a fraction of the cost of each step when there are fewer rows than columns. The basis comes from a
    pivoted Cholesky factorization of the rows' Gram matrix, which also drops the directions they do not span.
    """

    def __init__(self, rows: np.ndarray) -> None:
        from scipy.linalg import lapack

        self._rows = rows
        gram = (rows @ rows.T).astype(np.float64)
        # Directions no longer than the rounding of the rows' own precision are not in their span but in its noise.
        noise = 100 * np.finfo(rows.dtype).eps * float(gram.diagonal().max(initial=0.0))
        factor, pivots, rank, _ = lapack.dpstrf(gram, lower=1, tol=noise)
        self._order = pivots[:rank] - 1
        self._triangle = np.tril(factor[:rank, :rank])
        lower = np.tril(factor)[:, :rank]
        coordinates = np.empty_like(lower)
        coordinates[pivots - 1] = lower  # rows @ rows.T == coordinates @ coordinates.T
        self.coordinates = coordinates.astype(rows.dtype)

    def weights(self, coefficients: np.ndarray) -> np.ndarray:
        """Weights on the rows' columns that score every row as `coefficients` (outputs x rank) score its coordinates.

        They are rows.T @ a for any a with coordinates.T @ a = coefficients.T; one is zero outside the pivot rows.
        """
        from scipy.linalg import solve_triangular

        combination = np.zeros((len(self._rows), len(coefficients)))
        combination[self._order] = solve_triangular(self._triangle, coefficients.T, lower=True, trans="T")
        return combination.T @ self._rows


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
        solver: str = "sgd",
        standardize: bool = False,
        max_iter: int = 1000,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.l2 = l2
        self.balance = balance
        self.patience = patience
        self.seed = seed
        self.solver = solver
        self.standardize = standardize
        self.max_iter = max_iter

    @classmethod
    def from_layer(cls, classes: Sequence[str], coef: np.ndarray, intercept: np.ndarray, **params: Any) -> ArtistHead:
        """A fitted head from a trained linear layer: `coef` (classes, features) and `intercept` (classes,)."""
        head = cls(**params)
        head.classes_ = np.asarray(classes, dtype=object)
        head.coef_ = np.asarray(coef, dtype=np.float32)
        head.intercept_ = np.asarray(intercept, dtype=np.float32)
        head.n_features_in_ = int(head.coef_.shape[1])
        return head

    def _check_params(self) -> list[tuple[float, int | None]]:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise UsageError(f"epochs must be a positive integer; got {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise UsageError(f"batch_size must be a positive integer; got {self.batch_size!r}")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"momentum must be in [0, 1); got {self.momentum!r}")
        if self.l2 < 0:
            raise UsageError(f"l2 must be >= 0; got {self.l2!r}")
        if self.solver not in SOLVERS:
            raise UsageError(f"solver must be one of {', '.join(SOLVERS)}; got {self.solver!r}")
        if self.solver == "lbfgs" and self.l2 <= 0:
            raise UsageError(f"the lbfgs solver needs l2 > 0; got {self.l2!r}")
        if not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            raise UsageError(f"max_iter must be a positive integer; got {self.max_iter!r}")
        return parse_lr_schedule(self.lr)

    def fit(self, X: Any, y: Any, *, X_val: Any = None, y_val: Any = None) -> ArtistHead:
        schedule = self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, targets = np.unique(y, return_inverse=True)
        self._center, self._scale = self._standardization(X)
        inputs = (X - self._center) / self._scale
        validate = X_val is not None and y_val is not None and len(y_val) > 0
        self.history_: list[dict[str, float]] = []
        if self.solver == "lbfgs":
            self._fit_lbfgs(inputs, targets, X_val if validate else None, y_val if validate else None)
        else:
            self._fit_sgd(inputs, targets, schedule, X_val if validate else None, y_val if validate else None)
        del self._center, self._scale
        # Epochs run (sgd) or solver iterations (lbfgs), scikit-learn's name for it.
        self.n_iter_ = int(self.history_[-1].get("iterations", len(self.history_)))
        return self

    def _standardization(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The center and scale the head learns on. Raw features by default, as the reference design fed them: at
        its learning rates this beats standardizing them. Wide, mixed-scale features (style statistics) need it."""
        if not self.standardize:
            return np.zeros(X.shape[1], np.float32), np.ones(X.shape[1], np.float32)
        scale = X.std(axis=0)
        return X.mean(axis=0).astype(np.float32), np.where(scale > 1e-6, scale, 1.0).astype(np.float32)

    def fold_copy(self, X: Any) -> tuple[ArtistHead, np.ndarray]:
        """An unfitted copy of this head to cross-fit on subsets of the rows of X, and those rows as it learns them.

        An L-BFGS head on wide rows gets them once for all folds, standardized with the statistics of all of them
        (label-free, as the final head's are) and as coordinates of their `RowSpace`: each fold then finds the
        optimum it would find on its standardized rows, without factorizing them again.
        """
        from sklearn.base import clone

        X = np.asarray(X, dtype=np.float32)
        if self.solver != "lbfgs":
            return clone(self), X
        center, scale = self._standardization(X)
        space = _row_space((X - center) / scale)
        if space is None:
            return clone(self), X
        return clone(self).set_params(standardize=False), space.coordinates

    def _set_layer(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Folds the standardization into the layer, so that it applies to raw features."""
        self.coef_ = (weight / self._scale).astype(np.float32)
        self.intercept_ = (bias - self.coef_ @ self._center).astype(np.float32)

    def _class_weights(self, targets: np.ndarray) -> np.ndarray | None:
        if not self.balance:
            return None
        counts = np.bincount(targets, minlength=len(self.classes_)).astype(np.float32)
        return counts.sum() / (len(counts) * np.maximum(counts, 1))

    def _fit_lbfgs(self, inputs: np.ndarray, targets: np.ndarray, X_val: Any, y_val: Any) -> None:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        # The same objective as SGD's weight decay: mean cross-entropy + l2/2 * |W|^2, i.e. C = 1 / (l2 * n).
        weights = self._class_weights(targets)
        solver = LogisticRegression(
            C=1.0 / (self.l2 * len(targets)),
            max_iter=self.max_iter,
            class_weight=None if weights is None else dict(enumerate(weights.tolist())),
        )
        # L-BFGS makes many small BLAS calls on thin vectors: waking BLAS threads for each costs more than they gain.
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, user_api="blas"):
            warnings.simplefilter("always", ConvergenceWarning)
            space = _row_space(inputs)
            coordinates = inputs if space is None else space.coordinates
            solver.fit(coordinates, targets)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            logger.warning("the lbfgs head did not converge in %d iterations; raise max_iter", self.max_iter)
        weight, bias = solver.coef_ if space is None else space.weights(solver.coef_), solver.intercept_
        if len(self.classes_) == 2:  # scikit-learn keeps one row for two classes: make it a two-row softmax
            weight = np.vstack([-weight / 2, weight / 2])
            bias = np.array([-bias[0] / 2, bias[0] / 2])
        self._set_layer(weight, bias)
        probabilities = solver.predict_proba(coordinates)
        record = {
            "epoch": 1,
            "lr": 0.0,
            "loss": float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(targets)), targets], 1e-12)))),
            "train_error": float(np.mean(probabilities.argmax(axis=1) != targets)),
            "iterations": int(np.max(solver.n_iter_)),
        }
        if X_val is not None:
            record["val_accuracy"] = float(np.mean(self.predict(X_val) == np.asarray(y_val)))
        self.history_.append(record)
        logger.info("lbfgs %s", record)

    def _fit_sgd(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        schedule: list[tuple[float, int | None]],
        X_val: Any,
        y_val: Any,
    ) -> None:
        import torch

        features = torch.from_numpy(np.ascontiguousarray(inputs)).float()
        labels = torch.from_numpy(targets).long()
        generator = torch.Generator().manual_seed(self.seed)
        layer = torch.nn.Linear(features.shape[1], len(self.classes_))
        with torch.no_grad():  # a seeded, zero start: the same seed and data always give the same model
            layer.weight.zero_()
            layer.bias.zero_()
        weights = self._class_weights(targets)
        loss_fn = torch.nn.CrossEntropyLoss(weight=None if weights is None else torch.from_numpy(weights))
        optimizer = torch.optim.SGD(
            layer.parameters(), lr=_rate_for_epoch(schedule, 0), momentum=self.momentum, weight_decay=self.l2
        )
        best_accuracy, best_state, waited = -1.0, None, 0
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
            self._set_layer(layer.weight.detach().numpy(), layer.bias.detach().numpy())
            if X_val is not None:
                record["val_accuracy"] = float(np.mean(self.predict(X_val) == np.asarray(y_val)))
                if record["val_accuracy"] > best_accuracy:
                    best_accuracy, best_state, waited = record["val_accuracy"], (self.coef_, self.intercept_), 0
                else:
                    waited += 1
            self.history_.append(record)
            logger.info("epoch %s", record)
            if X_val is not None and self.patience is not None and waited >= self.patience:
                break
        if best_state is not None:  # keep the epoch that validated best
            self.coef_, self.intercept_ = best_state

    def layer(self) -> LinearLayer:
        """What prediction needs of this fitted head."""
        check_is_fitted(self, ("coef_", "intercept_"))
        return LinearLayer(self.classes_, self.coef_, self.intercept_, self.get_params())

    def _scores(self, X: Any) -> np.ndarray:
        return self.layer().scores(validate_data(self, X, dtype=np.float32, reset=False))

    def decision_function(self, X: Any) -> np.ndarray:
        scores = self._scores(X)
        # scikit-learn's convention: one column for two classes, the score of the second.
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def predict_proba(self, X: Any) -> np.ndarray:
        return softmax(self._scores(X))

    def predict(self, X: Any) -> np.ndarray:
        scores = self._scores(X)
        return self.classes_[scores.argmax(axis=1)]
