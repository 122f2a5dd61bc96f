"""`Model`: a trained artist classifier (frozen backbone + head) with scikit-learn's prediction habits.

model = artistid.Model.load("paintings.safetensors")
model.predict(["starry.jpg"])        # -> array(['Vincent_van_Gogh'])
model.predict_proba([pil_image, raw_bytes])
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from artistid.backbones import Backbone, rebuild_backbone
from artistid.calibration import UNKNOWN, name_artist
from artistid.datasets import Sample
from artistid.errors import ModelFileError
from artistid.features import FeatureCache, FeatureExtractor, FeatureSet, featurize
from artistid.head import ArtistHead
from artistid.images import Preprocess, load_image
from artistid.model_file import read_model_file, write_model_file

if TYPE_CHECKING:
    import torch

__all__ = ["UNKNOWN", "ImageInput", "Model"]

ImageInput = str | Path | bytes | Image.Image


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    import timm
    import torch

    return {
        "artistid": version("artistid"),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


class Model:
    """A backbone cut at its feature layer and the head trained on it, plus what the model file records."""

    def __init__(
        self, backbone: Backbone, head: ArtistHead, *, precision: str = "auto", info: dict[str, Any] | None = None
    ) -> None:
        self.backbone = backbone
        self.head = head
        self.info = dict(info or {})
        self.extractor = FeatureExtractor(backbone, precision=precision)  # type: ignore[arg-type]

    # --- what it knows -----------------------------------------------------------------------------------------
    @property
    def classes_(self) -> np.ndarray:
        return self.head.classes_

    @property
    def preprocess(self) -> Preprocess:
        return self.extractor.preprocess

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.info.get("metrics", {}))

    @property
    def threshold(self) -> float | None:
        """Below this top probability a painting is "unknown": none of the artists the model knows."""
        value = self.info.get("calibration", {}).get("threshold")
        return None if value is None else float(value)

    def label_for(self, probabilities: np.ndarray) -> str:
        """The artist named for one row of probabilities, or "unknown" below the rejection threshold."""
        return name_artist(probabilities, self.classes_, self.threshold)

    # --- predicting ----------------------------------------------------------------------------------------------
    def features(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Feature vectors of in-memory images or paths; raises ImageError naming the first unusable one."""
        pixels = [load_image(image, self.preprocess) for image in images]
        return self.extractor(np.stack(pixels)) if pixels else np.zeros((0, self.head.n_features_in_), np.float32)

    def features_for(
        self,
        samples: Sequence[Sample],
        *,
        cache: FeatureCache | None = None,
        workers: int | None = None,
        storage_options: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> FeatureSet:
        """Feature vectors for many files, in parallel and cached; unusable files are listed, not raised."""
        return featurize(
            samples, self.extractor, cache=cache, workers=workers, storage_options=storage_options, progress=progress
        )

    def predict_proba(self, images: Sequence[ImageInput] | ImageInput) -> np.ndarray:
        """One row per image, one column per artist in the order of `classes_`."""
        return self.head.predict_proba(self.features(_as_list(images)))

    def predict(self, images: Sequence[ImageInput] | ImageInput) -> np.ndarray:
        return self.classes_[self.predict_proba(images).argmax(axis=1)]

    # --- the model file ------------------------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, Any]:
        spec = self.backbone.spec
        return {
            **self.info,
            "classes": [str(c) for c in self.classes_],
            "backbone": {
                "name": spec.name,
                "architecture": spec.architecture,
                "feature_nodes": list(self.backbone.feature_nodes),
                "pooling": self.backbone.pooling,
                "weights_sha256": self.backbone.weights_sha256,
            },
            "preprocess": self.preprocess.to_dict(),
            "precision": self.extractor.precision,
            "head": {"type": "linear", "n_features": int(self.head.n_features_in_), "params": self.head.get_params()},
            "versions": library_versions(),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        import torch

        state = {f"backbone.{k}": v for k, v in self.backbone.network.state_dict().items()}
        state["head.weight"] = torch.from_numpy(np.asarray(self.head.coef_, dtype=np.float32))
        state["head.bias"] = torch.from_numpy(np.asarray(self.head.intercept_, dtype=np.float32))
        return state

    def save(self, uri: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        """Writes one self-contained model file (atomically; a storage URI works too)."""
        write_model_file(uri, self.tensors(), self.to_metadata(), storage_options)

    @classmethod
    def load(cls, uri: str | Path, storage_options: dict[str, Any] | None = None) -> Model:
        tensors, meta = read_model_file(uri, storage_options)
        try:
            state = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
            backbone = rebuild_backbone(meta["backbone"], Preprocess.from_dict(meta["preprocess"]), state)
            weight, bias = tensors["head.weight"].float().numpy(), tensors["head.bias"].float().numpy()
            if weight.shape != (len(meta["classes"]), meta["head"]["n_features"]) or bias.shape != weight.shape[:1]:
                raise ValueError(
                    f"{len(meta['classes'])} classes of {meta['head']['n_features']} features, but a head of shape "
                    f"{weight.shape} + {bias.shape}"
                )
            head = ArtistHead.from_layer(meta["classes"], weight, bias, **meta["head"]["params"])
            head.temperature_ = float(meta.get("calibration", {}).get("temperature", 1.0))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{uri}: model file is inconsistent ({type(exc).__name__}: {exc})") from None
        info = {k: v for k, v in meta.items() if k in ("training", "metrics", "calibration", "created")}
        return cls(backbone, head, precision=meta.get("precision", "auto"), info=info)


def _as_list(images: Sequence[ImageInput] | ImageInput) -> list[ImageInput]:
    if isinstance(images, str | Path | bytes | Image.Image):
        return [images]
    return list(images)
