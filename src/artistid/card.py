"""The model card: the one typed description of a model, and the one place it becomes JSON and back.

A `ModelCard` says what a model is (backbone, preprocessing, head, classes), how it answers (calibration: the
temperature and the `RefusalRules`), how it was made (training) and how well it did (metrics). The model file,
the ONNX export's metadata, the Spark shipment and the service's `GET /v1/model` all carry it; `card_to_dict` /
`card_from_dict` (and their JSON twins) are the only code that converts it, and `card_from_dict` also reads the
version-1 layout of files written before the card existed.

Every section is a frozen dataclass whose fields have defaults where a file may lack them, so a new field (a
refusal gate's parameters, a runtime) is one line here and old files still load. This module needs no torch: the
ONNX runtime reads cards too.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from artistid.answers import Answer, RefusalRules, decide
from artistid.images import Preprocess

__all__ = [
    "CARD_VERSION",
    "BackboneCard",
    "CalibrationCard",
    "ExtractorCard",
    "HeadCard",
    "LibraryVersions",
    "Metrics",
    "ModelCard",
    "Pooling",
    "TrainingCard",
    "card_from_dict",
    "card_from_json",
    "card_to_dict",
    "card_to_json",
    "from_dict",
    "to_dict",
]

# The layout of the card in a model file; version 1 was the untyped metadata written before it.
CARD_VERSION = 2

Pooling = Literal["avg", "meanstd"]  # "meanstd": channel means and standard deviations (a painting's style)


@dataclass(frozen=True)
class BackboneCard:
    """The pretrained network and where it is cut: enough, with the weights, to rebuild it."""

    name: str
    architecture: str  # "timm:<model>" or "torchvision:<model>"
    feature_nodes: tuple[str, ...] = ("pooled",)
    pooling: Pooling = "avg"
    weights_sha256: str = ""  # of the pretrained weights it started from (or of fine-tuned weights)
    source: str = ""  # where those weights came from: a package, a URL, a file name
    revision: str | None = None  # the hub revision, for weights from a model hub
    model_args: dict[str, Any] = field(default_factory=dict)  # for timm.create_model: a Hub repository's num_classes


@dataclass(frozen=True)
class HeadCard:
    """The dense layer on the features; its weights are the model file's `head.weight` and `head.bias`."""

    n_features: int
    type: Literal["linear"] = "linear"
    params: dict[str, Any] = field(default_factory=dict)  # the recipe it was trained with (ArtistHead's parameters)


@dataclass(frozen=True)
class CalibrationCard:
    """How scores become the answer: the temperature, the refusal rules, and how they were chosen."""

    temperature: float = 1.0  # scores are divided by it before the softmax
    rules: RefusalRules = field(default_factory=RefusalRules)
    method: str = ""  # what they were fitted on; empty when the model is not calibrated
    n: int = 0  # predictions they were fitted on
    target_false_rejection: float | None = None  # share of known-artist paintings the threshold may refuse
    ece_before: float | None = None
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    validation_accuracy: float | None = None  # of the predictions they were fitted on


@dataclass(frozen=True)
class TrainingCard:
    """How the model was made."""

    method: Literal["train", "finetune"] = "train"
    settings: dict[str, Any] = field(default_factory=dict)  # TrainSettings or FinetuneSettings, as a dict
    fingerprint: str | None = None  # the training data and settings: the same one means the same model
    n_train: int = 0
    n_val: int = 0
    history: tuple[dict[str, float], ...] = ()  # per epoch (or per solver run)
    skipped: int = 0  # unusable training images


@dataclass(frozen=True)
class Metrics:
    """Test-set metrics recorded when the model was trained (`artistid.evaluate`'s, the headline ones)."""

    n: int = 0  # images of known artists
    accuracy: float | None = None
    top2_accuracy: float | None = None
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion_matrix: tuple[tuple[int, ...], ...] = ()
    unknown: dict[str, Any] = field(default_factory=dict)  # other artists' paintings: n, and the top guesses
    ece: float | None = None
    threshold: float | None = None
    false_rejection_rate: float | None = None
    unknown_rejection_rate: float | None = None
    accuracy_answered: float | None = None


@dataclass(frozen=True)
class LibraryVersions:
    """The versions of what wrote the file."""

    artistid: str = ""
    python: str = ""
    torch: str = ""
    timm: str = ""


@dataclass(frozen=True)
class ExtractorCard:
    """What turns an image into features (the Spark engine ships it with a backbone's weights)."""

    backbone: BackboneCard
    preprocess: Preprocess
    precision: str = "fp32"


@dataclass(frozen=True)
class ModelCard:
    """Everything a model file says about its model besides the tensors."""

    classes: tuple[str, ...]  # artists, in the order of the head's outputs
    backbone: BackboneCard
    preprocess: Preprocess
    head: HeadCard
    precision: str = "fp32"  # arithmetic the features were computed with: fp32, bf16 or int8
    calibration: CalibrationCard = CalibrationCard()
    training: TrainingCard | None = None
    metrics: Metrics | None = None
    versions: LibraryVersions = LibraryVersions()
    # How each refusal's score is computed and its threshold chosen (`artistid.refusals.RefusalGates.describe`);
    # the thresholds in force are `calibration.rules`.
    refusals: dict[str, Any] = field(default_factory=dict)

    @property
    def rules(self) -> RefusalRules:
        return self.calibration.rules

    @property
    def extractor(self) -> ExtractorCard:
        return ExtractorCard(self.backbone, self.preprocess, self.precision)

    def decide(
        self,
        probabilities: np.ndarray,
        *,
        top_k: int = 1,
        painting_scores: np.ndarray | None = None,
        other_scores: np.ndarray | None = None,
    ) -> list[Answer]:
        """`artistid.answers.decide` with this model's classes and refusal rules."""
        return decide(
            probabilities,
            self.classes,
            self.rules,
            painting_scores=painting_scores,
            other_scores=other_scores,
            top_k=top_k,
        )


# --- the one conversion ----------------------------------------------------------------------------------------
T = TypeVar("T")


def to_dict(value: Any) -> Any:
    """A card (or any section of one) as plain JSON values: dataclasses become objects, tuples lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_dict(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_dict(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def from_dict(kind: type[T], data: Any) -> T:
    """The dataclass `kind` from what `to_dict` wrote; keys it does not know are left out, missing ones default.

    Raises TypeError or ValueError for data of the wrong shape.
    """
    parsed: T = _parse(kind, data)
    return parsed


def _parse(kind: Any, data: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any or origin is Literal:
        return data
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(inner, data)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(data, Mapping):
            raise TypeError(f"{kind.__name__}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(kind)
        known = {f.name for f in dataclasses.fields(kind) if f.init}
        return kind(**{name: _parse(hints[name], value) for name, value in data.items() if name in known})
    if origin is tuple:
        if not isinstance(data, list | tuple):
            raise TypeError(f"expected a list, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(args[0], v) for v in data)
        if len(args) != len(data):
            raise ValueError(f"expected {len(args)} values, got {len(data)}")
        return tuple(_parse(a, v) for a, v in zip(args, data, strict=True))
    if origin is list:
        return [_parse(args[0], v) for v in data]
    if origin is dict:
        if not isinstance(data, Mapping):
            raise TypeError(f"expected an object, got {type(data).__name__}")
        return {str(k): _parse(args[1], v) for k, v in data.items()}
    if kind is float:
        return float(data)
    if kind is int:
        if isinstance(data, bool) or int(data) != data:
            raise ValueError(f"expected an integer, got {data!r}")
        return int(data)
    if kind in (str, bool) and not isinstance(data, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(data).__name__}")
    return data


def card_to_dict(card: ModelCard) -> dict[str, Any]:
    """The card as the model file stores it (version `CARD_VERSION`)."""
    document: dict[str, Any] = to_dict(card)
    return document


def card_from_dict(document: Mapping[str, Any], version: int = CARD_VERSION) -> ModelCard:
    """The card a model file's document describes, in the layout of `version` (1 or 2)."""
    if version == 1:
        document = _upgrade_v1(document)
    return from_dict(ModelCard, document)


def card_to_json(card: ModelCard) -> str:
    return json.dumps(card_to_dict(card))


def card_from_json(text: str, version: int = CARD_VERSION) -> ModelCard:
    return card_from_dict(json.loads(text), version)


def _upgrade_v1(document: Mapping[str, Any]) -> dict[str, Any]:
    """Version 1 kept the threshold beside the temperature, and a fine-tune's settings under "finetune"."""
    upgraded = dict(document)
    calibration = dict(document.get("calibration") or {})
    threshold = calibration.pop("threshold", None)
    upgraded["calibration"] = {**calibration, "rules": {"threshold": threshold}}
    training = document.get("training")
    if training is not None:
        training = dict(training)
        if "finetune" in training:
            training["method"] = "finetune"
            training["settings"] = training.pop("finetune")
        upgraded["training"] = training
    return upgraded
