"""The model's forward pass as one torch module: pixels -> normalization -> backbone -> head -> temperature -> softmax.

Feature extraction runs its first two stages (`ArtistForward.features`), `artistid export` traces it whole, `explain`
takes gradients through it, and `finetune` trains its backbone and head; nothing else writes the normalization or
rebuilds the head as a torch module.

    module = ArtistForward(backbone, head=linear_layer, temperature=card.calibration.temperature)
    outputs = module(pixels)        # uint8 (n, size, size, 3) RGB, as artistid.images.load_image gives them
    outputs.probabilities           # (n, classes), calibrated; outputs.logits, outputs.features

`Outputs` is a named tuple, so that per-image scores beside the artists' (a "painting" score, say) can be added as
fields without changing what the callers read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import nn

from artistid.images import Preprocess

if TYPE_CHECKING:
    from artistid.backbones import Backbone

__all__ = ["ArtistForward", "Normalize", "Outputs", "linear_head"]


class Outputs(NamedTuple):
    """What the forward pass gives for a batch of images."""

    probabilities: torch.Tensor  # (n, classes): softmax(logits / temperature)
    logits: torch.Tensor  # (n, classes): the head's scores
    features: torch.Tensor  # (n, features): the backbone's


class Normalize(nn.Module):
    """uint8 NHWC pixels -> the normalized float NCHW batch the backbone takes (the preprocessing's mean and std)."""

    def __init__(self, preprocess: Preprocess) -> None:
        super().__init__()

        def per_channel(values: tuple[float, float, float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1) * 255

        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", per_channel(preprocess.mean))
        self.register_buffer("std", per_channel(preprocess.std))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return batch.contiguous(memory_format=torch.channels_last)


def linear_head(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    """A trained linear layer, (classes, features) weights and (classes,) bias, as a torch module."""
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
        layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))
    return layer


class ArtistForward(nn.Module):
    """The backbone's network, the normalization of its preprocessing, and (optionally) the head and temperature."""

    def __init__(self, backbone: Backbone, head: nn.Linear | None = None, temperature: float = 1.0) -> None:
        super().__init__()
        self.backbone = backbone  # not a module: its network is registered below, so its parameters are ours
        self.network = backbone.network
        self.normalize = Normalize(backbone.preprocess)
        self.head = head
        self.temperature = float(temperature)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The backbone's features of uint8 NHWC pixels."""
        return self.backbone(self.normalize(pixels))

    def logits(self, features: torch.Tensor, columns: slice = slice(None)) -> torch.Tensor:
        """The head's scores of features; `columns` picks the part of the features (and of the head) to score."""
        if self.head is None:
            raise ValueError("this forward module has no head: build it with head=...")
        return features.float() @ self.head.weight[:, columns].T + self.head.bias

    def forward(self, pixels: torch.Tensor) -> Outputs:
        features = self.features(pixels)
        logits = self.logits(features)
        return Outputs(torch.softmax(logits / self.temperature, dim=1), logits, features)
