"""The model card: one typed description, one JSON round trip, and model files of version 1 still read."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from artistid.answers import UNKNOWN, RefusalRules
from artistid.card import (
    BackboneCard,
    CalibrationCard,
    HeadCard,
    Metrics,
    ModelCard,
    TrainingCard,
    card_from_dict,
    card_from_json,
    card_to_dict,
    card_to_json,
    from_dict,
    to_dict,
)
from artistid.errors import ModelFileError
from artistid.images import Preprocess
from artistid.model import Model
from artistid.model_file import read_card


def _card() -> ModelCard:
    return ModelCard(
        classes=("Claude_Monet", "Rembrandt"),
        backbone=BackboneCard("resnet18", "torchvision:resnet18", ("layer3", "layer4"), "meanstd", "ab" * 32, "x.pth"),
        preprocess=Preprocess(size=96, tiles=2, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        head=HeadCard(n_features=1024, params={"epochs": 3, "lr": "0.2x10,0.1"}),
        precision="bf16",
        calibration=CalibrationCard(temperature=2.5, rules=RefusalRules(threshold=0.6), method="5-fold", n=40),
        training=TrainingCard(settings={"tiles": 2}, fingerprint="f" * 64, n_train=40, history=({"epoch": 1.0},)),
        metrics=Metrics(n=10, accuracy=0.9, confusion_matrix=((5, 0), (1, 4))),
    )


def test_the_card_survives_its_json_round_trip() -> None:
    card = _card()
    assert card_from_json(card_to_json(card)) == card
    document = card_to_dict(card)
    assert document["calibration"]["rules"] == {"threshold": 0.6, "painting_threshold": None, "other_threshold": None}
    assert document["backbone"]["feature_nodes"] == ["layer3", "layer4"]
    assert json.loads(json.dumps(document)) == document  # plain JSON values only


def test_missing_fields_default_and_wrong_shapes_are_refused() -> None:
    document = card_to_dict(_card())
    del document["training"], document["metrics"], document["calibration"]
    card = card_from_dict(document)
    assert card.training is None and card.metrics is None
    assert card.calibration == CalibrationCard() and card.rules == RefusalRules()
    with pytest.raises(TypeError):
        card_from_dict({**document, "backbone": "resnet18"})
    with pytest.raises(ValueError):
        from_dict(HeadCard, {"n_features": 1.5})


def test_the_card_decides_with_its_own_rules() -> None:
    first, second = _card().decide(np.array([[0.55, 0.45], [0.1, 0.9]]), top_k=2)
    assert (first.artist, first.refusal, first.closest) == (UNKNOWN, UNKNOWN, "Claude_Monet")
    assert (second.artist, second.refusal) == ("Rembrandt", None)
    assert [artist for artist, _ in second.top_k] == ["Rembrandt", "Claude_Monet"]


def _write_v1(model: Model, path: Path, *, finetuned: bool = False, calibrated: bool = True) -> None:
    """A model file as artistid wrote it before the card (format version 1)."""
    card = model.card
    training = card.training
    assert training is not None
    calibration = card.calibration
    document = {
        "format": "artistid-model",
        "version": 1,
        "classes": list(card.classes),
        "backbone": {
            "name": card.backbone.name,
            "architecture": card.backbone.architecture,
            "feature_nodes": list(card.backbone.feature_nodes),
            "pooling": card.backbone.pooling,
            "weights_sha256": card.backbone.weights_sha256,
        },
        "preprocess": to_dict(card.preprocess),  # the same layout in both versions
        "precision": card.precision,
        "head": {"type": "linear", "n_features": card.head.n_features, "params": card.head.params},
        "versions": {"artistid": "0.1.0", "torch": "2.14.1", "timm": "1.0.0", "python": "3.11.0"},
        "training": (
            {"finetune": training.settings, "history": list(training.history), "n_train": training.n_train}
            if finetuned
            else {
                "settings": training.settings,
                "fingerprint": training.fingerprint,
                "n_train": training.n_train,
                "n_val": training.n_val,
                "history": list(training.history),
                "skipped": training.skipped,
            }
        ),
    }
    if calibrated:
        document["calibration"] = {
            "temperature": calibration.temperature,
            "threshold": calibration.rules.threshold,
            "ece_before": calibration.ece_before,
            "ece_after": calibration.ece_after,
            "nll_before": calibration.nll_before,
            "nll_after": calibration.nll_after,
            "target_false_rejection": calibration.target_false_rejection,
            "n": calibration.n,
            "method": calibration.method,
            "validation_accuracy": calibration.validation_accuracy,
        }
    tensors = {name: np.ascontiguousarray(array) for name, array in model.tensors().items()}
    path.write_bytes(save(tensors, metadata={"format": "pt", "artistid": json.dumps(document)}))


def test_version_1_model_files_still_load_and_answer_the_same(
    demo_model: Model, demo_data: Path, tmp_path: Path
) -> None:
    old = tmp_path / "v1.safetensors"
    _write_v1(demo_model, old)
    loaded = Model.load(old)
    card = demo_model.card
    # A version-1 file knows no weights' source or revision and no refusal gates: its rules have none of theirs.
    expected = replace(
        card,
        backbone=replace(card.backbone, source="", revision=None),
        calibration=replace(
            card.calibration, rules=replace(card.calibration.rules, painting_threshold=None, other_threshold=None)
        ),
        refusals={"not_a_painting": None, "unknown_by_others": None},
    )
    assert replace(loaded.card, versions=expected.versions) == expected
    assert loaded.card.versions.torch == "2.14.1"
    paintings = sorted((demo_data / "Test" / "Rembrandt").glob("*.jpg"))[:3]
    assert loaded.answer(paintings, top_k=3) == demo_model.answer(paintings, top_k=3)

    finetuned = tmp_path / "v1-finetuned.safetensors"
    _write_v1(demo_model, finetuned, finetuned=True, calibrated=False)
    card = read_card(finetuned)
    assert card.training is not None and card.training.method == "finetune"
    assert card.training.settings == demo_model.card.training.settings  # type: ignore[union-attr]
    assert card.calibration.temperature == 1.0 and card.rules.threshold is None

    resaved = tmp_path / "v2.safetensors"
    loaded.save(resaved)
    header = json.loads(resaved.read_bytes()[8 : 8 + int.from_bytes(resaved.read_bytes()[:8], "little")])
    assert json.loads(header["__metadata__"]["artistid"])["version"] == 2


def test_unknown_versions_are_refused_in_one_line(demo_model: Model, tmp_path: Path) -> None:
    future = tmp_path / "v9.safetensors"
    document = {"format": "artistid-model", "version": 9, **card_to_dict(demo_model.card)}
    tensors = {"head.bias": demo_model.tensors()["head.bias"]}
    future.write_bytes(save(tensors, metadata={"artistid": json.dumps(document)}))
    with pytest.raises(ModelFileError, match=r"format version 9 is not supported .* reads versions 1, 2"):
        read_card(future)
