"""Where the model looked: a Grad-CAM heat map over the painting (Selvaraju et al., 2017; package `grad-cam`).

The class score of the trained head is traced back to the backbone's last convolution; the heat map shows which
regions raised the score of the named artist. With multi-layer "style statistics" features (the best preset) the
map follows the pooled, last-layer part of the features, which is the part with spatial meaning.

    explanation = grad_cam(model, "starry.jpg")       # .heat: the map, values in [0, 1]; .artist, .probability
    png = explanation.png()                           # the painting with its heat map, as PNG bytes
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from artistid.errors import ArtistIdError
from artistid.images import decode_image, load_image
from artistid.model import ImageInput, Model

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

    from artistid.forward import ArtistForward

    View = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["Explanation", "grad_cam"]

logger = logging.getLogger(__name__)

DISPLAY_SIZE = 768  # long side of the picture the map is drawn over: enough to see, small enough to send


@dataclass
class Explanation:
    """The heat map (the painting's aspect ratio, values in [0, 1]) for one artist, and that artist's probability."""

    heat: np.ndarray
    artist: str
    probability: float
    picture: np.ndarray  # the painting, RGB uint8, the same size as `heat`

    def png(self) -> bytes:
        """The painting with the heat map laid over it, as PNG bytes."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        overlay = show_cam_on_image(self.picture.astype(np.float32) / 255, self.heat, use_rgb=True, image_weight=0.55)
        buffer = io.BytesIO()
        Image.fromarray(overlay).save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()


def _last_convolution(network: nn.Module) -> nn.Module:
    from torch import nn

    convolutions = [module for module in network.modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ArtistIdError(f"cannot explain a {type(network).__name__}: it has no convolution to take a map from")
    return convolutions[-1]


def _scorer(module: ArtistForward, view: View, columns: slice) -> nn.Module:
    """One view of the model as a differentiable module: normalized image in, that view's class scores out."""
    from torch import nn

    class Scorer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module  # registered, so Grad-CAM can clear its gradients

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            # The backbone's weights are frozen; the input must carry a gradient for the activations to have one.
            return self.model.logits(view(batch.requires_grad_(True)), columns)

    return Scorer().eval()


def _views(model: Model) -> list[tuple[View, slice, View | None]]:
    """The passes whose features the head reads: (view, its columns of the head, how to put its map together)."""
    backbone = model.backbone
    if backbone.spec.tiles == 1 and not backbone.spec.centre:
        return [(backbone.pooled, slice(None), None)]
    # The whole painting first, then its squares (run as a batch, their maps stitched back together), then its
    # central square (its map put back in the middle of the painting): each view has as many columns.
    views: list[tuple[View, View | None]] = [(backbone.whole, None)]
    if backbone.spec.tiles > 1:
        views.append((backbone.squares, backbone.stitch))
    if backbone.spec.centre:
        views.append((backbone.centre, _in_the_middle))
    width = model.layer.n_features // len(views)
    return [(view, slice(i * width, (i + 1) * width), reshape) for i, (view, reshape) in enumerate(views)]


def _in_the_middle(maps: torch.Tensor) -> torch.Tensor:
    """The central square's maps (N, C, h, w) in the middle of a map of the whole painting (N, C, 2h, 2w)."""
    import torch.nn.functional as F

    height, width = maps.shape[-2:]
    return F.pad(maps, (width // 2, width - width // 2, height // 2, height - height // 2))


def grad_cam(model: Model, image: ImageInput, artist: str | None = None, *, name: str | None = None) -> Explanation:
    """The Grad-CAM map of `image` for `artist` (default: the model's top artist); raises ImageError if unusable.

    `name` is what an error calls the image when it is given as bytes (an upload's file name, say).
    """
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = [str(c) for c in model.classes_]
    if artist is not None and artist not in classes:  # "Claude Monet", as shown, for the class Claude_Monet
        artist = {c.replace("_", " "): c for c in classes}.get(artist, artist)
    if artist is not None and artist not in classes:
        raise ArtistIdError(f"unknown artist {artist!r}: this model knows {', '.join(classes)}")
    pixels = np.array(load_image(image, model.preprocess, name=name))  # a writable copy, as torch wants
    module = model.torch_module()
    batch = module.normalize(torch.from_numpy(pixels[None]).to(model.extractor.device))
    with torch.no_grad():
        probabilities = model.probabilities(model.extractor(pixels[None]))[0]
    index = classes.index(artist) if artist is not None else int(np.argmax(probabilities))
    layers = [_last_convolution(model.backbone.network)]
    maps = []
    for view, columns, reshape in _views(model):
        with GradCAM(model=_scorer(module, view, columns), target_layers=layers,
                     reshape_transform=reshape) as cam:  # fmt: skip
            maps.append(cam(input_tensor=batch, targets=[ClassifierOutputTarget(index)])[0])
    heat = np.mean(maps, axis=0)
    heat = heat / heat.max() if heat.max() > 0 else heat
    picture = _display_picture(image, name)
    # The network saw a square (the painting stretched); stretch the map back onto the painting's own shape.
    resized = Image.fromarray(np.clip(heat * 255, 0, 255).astype(np.uint8)).resize(
        (picture.shape[1], picture.shape[0]), Image.Resampling.BILINEAR
    )
    return Explanation(np.asarray(resized, np.float32) / 255, classes[index], float(probabilities[index]), picture)


def _display_picture(image: ImageInput, name: str | None = None) -> np.ndarray:
    if isinstance(image, Image.Image):
        picture = ImageOps.exif_transpose(image).convert("RGB")
    elif isinstance(image, bytes):
        picture = decode_image(image, name or "<bytes>", draft_size=DISPLAY_SIZE)
    else:  # already read once by load_image, so it is readable
        picture = decode_image(Path(image).read_bytes(), str(image), draft_size=DISPLAY_SIZE)
    picture = picture.copy()
    picture.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(picture, dtype=np.uint8)
