"""The one torch forward pass: pixels -> normalization -> backbone -> head -> temperature -> softmax."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from artistid.backbones import Backbone, build_network, get_spec
from artistid.features import FeatureExtractor
from artistid.forward import ArtistForward
from artistid.images import load_image
from artistid.model import Model


def test_the_forward_module_gives_the_models_probabilities(demo_model: Model, demo_data: Path) -> None:
    paintings = sorted((demo_data / "Test" / "Vincent_van_Gogh").glob("*.jpg"))[:3]
    pixels = np.stack([load_image(p, demo_model.preprocess) for p in paintings])
    module = demo_model.torch_module()
    with torch.no_grad():
        outputs = module(torch.from_numpy(pixels))
    assert outputs.probabilities.shape == (3, 3) and outputs.features.shape == (3, demo_model.head.n_features_in_)
    # The same numbers as the model's own path in fp32 (the module's arithmetic): features, then the head with the
    # card's temperature.
    expected = demo_model.probabilities(FeatureExtractor(demo_model.backbone, precision="fp32")(pixels))
    np.testing.assert_allclose(outputs.probabilities.numpy(), expected, atol=1e-5)
    temperature = demo_model.card.calibration.temperature
    assert temperature != 1.0
    recomputed = torch.softmax(outputs.logits / temperature, dim=1)
    np.testing.assert_allclose(outputs.probabilities.numpy(), recomputed.numpy(), atol=1e-6)


def test_a_module_without_head_gives_features_only(demo_model: Model) -> None:
    module = ArtistForward(demo_model.backbone)
    pixels = torch.zeros((1, 224, 224, 3), dtype=torch.uint8)
    assert module.features(pixels).shape == (1, demo_model.head.n_features_in_)
    with pytest.raises(ValueError, match="no head"):
        module(pixels)


def test_backbone_leaves_the_callers_network_as_it_was() -> None:
    spec = get_spec("efficientnet_lite0")
    network = build_network(spec).train()
    classifier = network.get_classifier()
    Backbone(spec, network)
    assert network.training and all(p.requires_grad for p in network.parameters())
    assert network.get_classifier() is classifier and classifier.out_features == 1000
