"""`Model`: a trained artist classifier (frozen backbone + head) with scikit-learn's prediction habits.

model = artistid.Model.load("paintings.safetensors")
model.predict(["starry.jpg", "photo.jpg"])   # -> array(['Vincent_van_Gogh', 'unknown'], dtype=object)
model.answer(["starry.jpg"], top_k=3)        # -> [Answer(artist='Vincent_van_Gogh', refusal=None, ...)]
model.predict_proba([pil_image, raw_bytes])  # calibrated probabilities, columns in the order of classes_
model.card                                   # what the model file says about it (artistid.card.ModelCard)

As in scikit-learn, `predict` is the decision: the artist, or a refusal ("unknown", "not_a_painting"), decided by
`artistid.answers.decide` with the card's refusal rules, exactly as the CLI, the service and Spark decide it.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from artistid.answers import NOT_A_PAINTING, UNKNOWN, Answer, RefusalRules
from artistid.backbones import Backbone, rebuild_backbone
from artistid.card import CalibrationCard, HeadCard, LibraryVersions, Metrics, ModelCard, TrainingCard
from artistid.datasets import Sample
from artistid.errors import ModelFileError
from artistid.features import FeatureCache, FeatureExtractor, FeatureSet, featurize, pinned_runtime
from artistid.images import Preprocess, load_image
from artistid.layer import LinearLayer, softmax
from artistid.model_file import read_model_file, write_model_file
from artistid.refusals import RefusalGates
from artistid.runtimes import backbone_state, computes_int8

if TYPE_CHECKING:
    from artistid.feature_store import FeatureStore
    from artistid.forward import ArtistForward
    from artistid.head import ArtistHead

__all__ = ["NOT_A_PAINTING", "UNKNOWN", "ImageInput", "Model", "library_versions"]

logger = logging.getLogger(__name__)

ImageInput = str | Path | bytes | Image.Image


def library_versions() -> LibraryVersions:
    from importlib.metadata import version

    # From the installed packages' metadata: saving a model must not import torch for its version string.
    return LibraryVersions(
        artistid=version("artistid"),
        python=platform.python_version(),
        torch=version("torch"),
        timm=version("timm"),
    )


class Model:
    """A backbone cut at its feature layer and the head trained on it, described by its model card."""

    def __init__(
        self,
        backbone: Backbone,
        head: ArtistHead | LinearLayer,
        *,
        precision: str = "auto",
        runtime: str = "auto",
        extractor: FeatureExtractor | None = None,
        calibration: CalibrationCard | None = None,
        training: TrainingCard | None = None,
        metrics: Metrics | None = None,
        versions: LibraryVersions | None = None,
        gates: RefusalGates | None = None,
    ) -> None:
        self.backbone = backbone
        # What answering needs (NumPy alone); the estimator that learned it is built only when asked for (`head`).
        self._head: ArtistHead | None
        if isinstance(head, LinearLayer):
            self.layer, self._head = head, None
        else:
            self.layer, self._head = head.layer(), head
        self.gates = gates or RefusalGates()
        # The runtime and precision of this process: chosen for this machine, whatever the model was trained with.
        self.extractor = extractor or FeatureExtractor(backbone, precision=precision, runtime=runtime)  # type: ignore[arg-type]
        self.card = ModelCard(
            classes=tuple(str(c) for c in self.layer.classes),
            backbone=backbone.card,
            preprocess=backbone.preprocess,
            head=HeadCard(n_features=self.layer.n_features, params=self.layer.params),
            precision=self.extractor.precision,
            calibration=calibration or CalibrationCard(),
            training=training,
            metrics=metrics,
            versions=versions or library_versions(),
            refusals=self.gates.describe(),
        )

    # --- what it knows -----------------------------------------------------------------------------------------
    @property
    def classes_(self) -> np.ndarray:
        return self.layer.classes

    @property
    def head(self) -> ArtistHead:
        """The head as the scikit-learn classifier that learned it (`artistid.head.ArtistHead`)."""
        if self._head is None:
            from artistid.head import ArtistHead

            layer = self.layer
            self._head = ArtistHead.from_layer(list(layer.classes), layer.coef, layer.intercept, **layer.params)
        return self._head

    @property
    def preprocess(self) -> Preprocess:
        return self.extractor.preprocess

    @property
    def metrics(self) -> Metrics | None:
        return self.card.metrics

    @property
    def threshold(self) -> float | None:
        """Below this top probability a painting is "unknown": none of the artists the model knows."""
        return self.card.rules.threshold

    # --- predicting ----------------------------------------------------------------------------------------------
    def features(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Feature vectors of in-memory images or paths; raises ImageError naming the first unusable one."""
        pixels = [load_image(image, self.preprocess) for image in images]
        return self.extractor(np.stack(pixels)) if pixels else np.zeros((0, self.layer.n_features), np.float32)

    def features_for(
        self,
        samples: Sequence[Sample],
        *,
        cache: FeatureCache | None = None,
        workers: int | None = None,
        storage_options: dict[str, Any] | None = None,
        progress: bool = True,
        store: FeatureStore | None = None,
    ) -> FeatureSet:
        """Feature vectors for many files, in parallel and cached; unusable files are listed, not raised."""
        return featurize(
            samples,
            self.extractor,
            cache=cache,
            workers=workers,
            storage_options=storage_options,
            progress=progress,
            store=store,
        )

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for feature vectors: the head's scores over the card's temperature."""
        if len(features) == 0:
            return np.zeros((0, len(self.card.classes)), np.float64)
        return softmax(self.layer.scores(features), self.card.calibration.temperature)

    def predict_proba(self, images: Sequence[ImageInput] | ImageInput) -> np.ndarray:
        """One row per image, one column per artist in the order of `classes_`."""
        return self.probabilities(self.features(_as_list(images)))

    def answer(self, images: Sequence[ImageInput] | ImageInput, *, top_k: int = 1) -> list[Answer]:
        """What artistid says about each image: the artist or a refusal, the closest artist and the top-k."""
        return self.answers_for(self.features(_as_list(images)), top_k=top_k)

    def answers_for(self, features: np.ndarray, *, top_k: int = 1, rules: RefusalRules | None = None) -> list[Answer]:
        """What the model answers for feature vectors: the artist, or a refusal with its own score behind it.

        `rules` replaces the card's refusal rules (to move a threshold) for this call.
        """
        painting_scores, other_scores = self.gates.scores(features)
        card = (
            self.card if rules is None else replace(self.card, calibration=replace(self.card.calibration, rules=rules))
        )
        return card.decide(
            self.probabilities(features), top_k=top_k, painting_scores=painting_scores, other_scores=other_scores
        )

    def predict(self, images: Sequence[ImageInput] | ImageInput) -> np.ndarray:
        """The answer for each image: an artist's name, or "unknown" / "not_a_painting" (an object array)."""
        return np.array([answer.artist for answer in self.answer(images)], dtype=object)

    def torch_module(self) -> ArtistForward:
        """The whole model as one torch module (`artistid.forward.ArtistForward`): pixels -> probabilities."""
        from artistid.forward import ArtistForward, linear_head

        head = linear_head(self.layer.coef, self.layer.intercept).requires_grad_(False)
        module = ArtistForward(self.backbone, head, self.card.calibration.temperature)
        return module.to(self.extractor.device).eval()

    # --- the model file ------------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, np.ndarray]:
        """What the model file stores: the backbone's weights (kept in the cache folder, so a run that never built
        the network need not build it to save) and the head's."""
        state = {f"backbone.{k}": v for k, v in backbone_state(self.backbone, self.extractor.cache_dir).items()}
        state["head.weight"] = self.layer.coef
        state["head.bias"] = self.layer.intercept
        state.update(self.gates.tensors())
        return state

    def save(self, uri: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        """Writes one self-contained model file (atomically; a storage URI works too)."""
        write_model_file(uri, self.tensors(), replace(self.card, versions=library_versions()), storage_options)

    @classmethod
    def load(
        cls,
        uri: str | Path,
        storage_options: dict[str, Any] | None = None,
        *,
        runtime: str = "auto",
        precision: str = "auto",
    ) -> Model:
        """Reads a model file; its backbone runs on `runtime` in `precision`, by default the fastest for this machine.

        The card records the precision the model was trained with, but bf16 is used only where the hardware has it
        natively (and measured faster): a model trained in bf16 runs in fp32 elsewhere. A model trained on int8
        features runs in int8 (by default) wherever the runtime computes it (ONNX Runtime, OpenVINO), and in fp32,
        with a warning, on PyTorch.
        """
        tensors, card = read_model_file(uri, storage_options)
        if precision == "auto" and card.precision == "int8":
            # Its head learned from int8 vectors: it gets them wherever they can be computed.
            if computes_int8(pinned_runtime(runtime)):
                precision = "int8"
            else:
                logger.warning(
                    "%s was trained on int8 features, which the %s runtime does not compute: running it in fp32",
                    uri,
                    pinned_runtime(runtime),
                )
                precision = "fp32"
        try:
            state = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
            backbone = rebuild_backbone(card.backbone, card.preprocess, state, source=str(uri))
            classes = np.asarray(card.classes, dtype=object)
            head = LinearLayer(classes, tensors["head.weight"], tensors["head.bias"], dict(card.head.params))
            if head.n_features != card.head.n_features:
                raise ValueError(f"a head of {head.n_features} features, but the card says {card.head.n_features}")
            gated = {k: v.astype(np.float32) for k, v in tensors.items() if k.startswith("refusals.")}
            gates = RefusalGates.from_parts(card.refusals, gated)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{uri}: model file is inconsistent ({type(exc).__name__}: {exc})") from None
        model = cls(
            backbone,
            head,
            precision=precision,
            runtime=runtime,
            calibration=card.calibration,
            training=card.training,
            metrics=card.metrics,
            versions=card.versions,
            gates=gates,
        )
        model.card = replace(model.card, precision=card.precision)  # what it was trained with, not what runs here
        return model


def _as_list(images: Sequence[ImageInput] | ImageInput) -> list[ImageInput]:
    if isinstance(images, str | Path | bytes | Image.Image):
        return [images]
    return list(images)
