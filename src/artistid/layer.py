"""The trained head as prediction needs it: a linear layer over the feature vector, in NumPy alone.

`ArtistHead` (artistid.head) is the scikit-learn estimator that learns it; answering from a model file needs only
this, and so never imports scikit-learn (SciPy and pandas with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LinearLayer", "softmax"]


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities from a layer's scores, divided by `temperature` first (the model card's calibration)."""
    scaled = np.asarray(scores, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class LinearLayer:
    """`scores = features @ coef.T + intercept`: one row per image, one column per class, in the order of
    `classes`. `params` are the estimator's parameters that learned it (the model card records them)."""

    classes: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", np.asarray(self.classes, dtype=object))
        object.__setattr__(self, "coef", np.asarray(self.coef, dtype=np.float32))
        object.__setattr__(self, "intercept", np.asarray(self.intercept, dtype=np.float32))
        rows = len(self.classes)
        if self.coef.ndim != 2 or self.coef.shape[0] != rows or self.intercept.shape != (rows,):
            raise ValueError(f"{rows} classes, but a layer of shape {self.coef.shape} + {self.intercept.shape}")

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[1])

    def scores(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(f"expected vectors of {self.n_features} features, got an array of shape {features.shape}")
        return features @ self.coef.T + self.intercept
