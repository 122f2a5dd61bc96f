"""The MLflow pyfunc model: a model file behind MLflow's `predict`, answering as `artistid predict` does.

`predict` takes a DataFrame with a `path` column (files or storage URIs) or an `image` column (the files' bytes) and
returns one row per input row: artist (the name, or the refusal: unknown, not_a_painting), refusal, closest,
probability, top_k (a list of {artist, probability}) and error (why that row's image could not be used; its other
columns are then empty). The answers come from the model card's `decide` (`artistid.answers.decide`). The `top_k`
param (default 1) says how many artists to list. `artistid.tracking` logs it; MLflow imports this module to load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from artistid.datasets import Sample
from artistid.errors import ArtistIdError, ImageError
from artistid.images import load_image

if TYPE_CHECKING:
    from artistid.model import Model

__all__ = ["ANSWER_COLUMNS", "ArtistIdPyfunc", "answer_frame"]

ANSWER_COLUMNS = ["artist", "refusal", "closest", "probability", "top_k", "error"]


class ArtistIdPyfunc(PythonModel):
    """Loads the logged model file once; each `predict` answers a DataFrame of images."""

    def load_context(self, context: Any) -> None:
        from artistid.model import Model

        self.model = Model.load(context.artifacts["model_file"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return answer_frame(self.model, model_input, int((params or {}).get("top_k", 1)))


def _features(model: Model, frame: pd.DataFrame) -> tuple[list[str], dict[str, int], np.ndarray, dict[str, str]]:
    """Each row's key, which feature row it got, the features, and why the others got none."""
    if "path" in frame.columns:
        # The route `artistid predict` takes: the same decoding, so the same features.
        samples = [Sample(str(path), None) for path in frame["path"]]
        found = model.features_for(samples, progress=False)
        rows = {path: n for n, path in enumerate(found.paths)}
        return [s.path for s in samples], rows, found.features, dict(found.errors)
    if "image" in frame.columns:
        keys, rows, pixels, errors = [], {}, [], {}
        for n, data in enumerate(frame["image"]):
            key = f"row {n}"
            keys.append(key)
            try:
                pixels.append(load_image(bytes(data), model.preprocess, name=key))
            except ImageError as exc:
                errors[key] = str(exc)
            else:
                rows[key] = len(pixels) - 1
        features = model.extractor(np.stack(pixels)) if pixels else np.zeros((0, model.layer.n_features))
        return keys, rows, features, errors
    raise ArtistIdError(f"expected a 'path' or an 'image' column; got {', '.join(map(str, frame.columns))}")


def answer_frame(model: Model, frame: pd.DataFrame, top_k: int = 1) -> pd.DataFrame:
    """One answer row per input row, in order (see the module's docstring)."""
    keys, rows, features, errors = _features(model, frame)
    answers = model.answers_for(features, top_k=top_k)
    records: list[dict[str, Any]] = []
    for key in keys:
        if key not in rows:
            records.append({**dict.fromkeys(ANSWER_COLUMNS), "error": errors.get(key, "").removeprefix(f"{key}: ")})
            continue
        answer = answers[rows[key]]
        records.append(
            {
                "artist": answer.artist,
                "refusal": answer.refusal,
                "closest": answer.closest,
                "probability": answer.probability,
                "top_k": [{"artist": artist, "probability": p} for artist, p in answer.top_k],
                "error": None,
            }
        )
    # Object columns keep None as None (JSON null when served), where inferred dtypes would turn it into NaN.
    return pd.DataFrame({name: pd.Series([r[name] for r in records], dtype=object) for name in ANSWER_COLUMNS})
