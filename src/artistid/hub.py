"""Pretrained backbones from the Hugging Face Hub: timm's pretrained configs and weights through `huggingface_hub`.

Two kinds of name reach the Hub:
- a timm pretrained name with its tag, `vit_small_patch14_dinov2.lvd142m`, `convnext_tiny.fb_in22k_ft_in1k`: timm's
  own pretrained config (in the timm package) says the architecture, the Hub repository and the preprocessing;
- `hf-hub:ORG/REPO[@REVISION]`: the repository's `config.json`, read by timm, says them.

The files come through `huggingface_hub`, so its cache and settings apply as they do for every Hub user: `HF_HOME`
(or `HF_HUB_CACHE`) for where, `HF_ENDPOINT` for which server, `HF_HUB_OFFLINE=1` for cache only, and its progress
bar. A weights file the Hub names by its sha256 (every LFS file) is checked against it on each use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artistid.errors import WeightsError
from artistid.storage import file_sha256

__all__ = ["HUB_PREFIX", "WEIGHTS_FILES", "HubBackbone", "HubWeights", "download_weights", "is_hub_name", "resolve"]

logger = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
# What timm looks for in a repository without a filename of its own, safest first.
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HubBackbone:
    """What a pretrained config says about a Hub backbone: how to build it, where its weights are, its input."""

    name: str  # as the user wrote it
    model_name: str  # timm's name for the architecture (with its tag where the name had one)
    repo_id: str  # the Hub repository of the weights
    revision: str | None  # a branch, tag or commit; None: the default branch
    filename: str | None  # the weights file, where the config names one
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # timm's name: bilinear, bicubic, ...
    model_args: dict[str, Any] = field(default_factory=dict)
    license: str = ""
    fixed_input_size: bool = False  # a ViT's position embeddings fit one input size only


@dataclass(frozen=True)
class HubWeights:
    path: Path  # in huggingface_hub's cache
    source: str  # hf-hub:ORG/REPO/FILENAME
    revision: str  # the commit the file was taken from
    sha256: str


def is_hub_name(name: str) -> bool:
    return name.startswith(HUB_PREFIX)


def _offline_hint(name: str) -> str:
    architecture = " and its timm architecture as --backbone" if is_hub_name(name) else ""
    return (
        f"fetch it once with a network (or copy a Hugging Face cache into HF_HOME), or pass the weights file with "
        f"--weights FILE{architecture}"
    )


def _unreachable(name: str, what: str, exc: BaseException) -> WeightsError:
    from huggingface_hub import constants

    where = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{constants.ENDPOINT} did not answer"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return WeightsError(
        f"backbone {name!r}: cannot get {what}: {where} and it is not in the cache {constants.HF_HUB_CACHE} "
        f"({type(exc).__name__}: {reason}); {_offline_hint(name)}"
    )


@contextlib.contextmanager
def _hub_errors(name: str, what: str) -> Iterator[None]:
    """huggingface_hub's failures as one-line WeightsErrors; a file the repository lacks stays as it is."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        yield
    except RemoteEntryNotFoundError:
        raise
    except LocalEntryNotFoundError as exc:  # neither the Hub nor the cache has it
        raise _unreachable(name, what, exc) from None
    except HfHubHTTPError as exc:
        raise WeightsError(f"backbone {name!r}: the Hub refused {what}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:  # a download cut short (huggingface_hub checks the size), a full disk
        raise WeightsError(f"backbone {name!r}: downloading {what} failed: {exc}") from None


def _download(name: str, repo_id: str, filename: str, revision: str | None) -> Path:
    """One file through huggingface_hub (cache, offline mode, endpoint, progress bar all its own)."""
    from huggingface_hub import hf_hub_download

    with _hub_errors(name, f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")):
        path = hf_hub_download(repo_id, filename, revision=revision, library_name="artistid")
    return Path(path)


def resolve(name: str) -> HubBackbone | None:
    """The Hub backbone `name` stands for, or None where it names no Hub weights.

    `hf-hub:` names read the repository's config.json (downloaded once, like the weights); timm names read the
    pretrained config timm ships.
    """
    import timm
    from timm.models import get_pretrained_cfg

    if is_hub_name(name):
        from huggingface_hub.errors import RemoteEntryNotFoundError
        from timm.models import load_model_config_from_hf

        hub_id = name.removeprefix(HUB_PREFIX)
        repo_id, _, revision = hub_id.partition("@")
        try:
            with _hub_errors(name, f"{repo_id}/config.json"):
                # timm's own reading of a Hub config: the pretrained config, the architecture and its arguments.
                config, model_name, model_args = load_model_config_from_hf(hub_id)
        except RemoteEntryNotFoundError:
            raise WeightsError(f"backbone {name!r}: {repo_id} has no config.json, so it is no timm model") from None
        if not timm.is_model(model_name):
            raise WeightsError(f"backbone {name!r}: its config names {model_name!r}, which this timm does not know")
        model_args = {"num_classes": config.get("num_classes", 1000), **model_args}
        return _from_config(name, model_name, repo_id, revision or None, config, model_args)
    if not timm.is_model(name):
        return None
    try:
        pretrained = get_pretrained_cfg(name)
    except RuntimeError:  # a tag this architecture has no weights for
        tags = ", ".join(timm.list_pretrained(f"{name.split('.')[0]}.*")) or "none"
        raise WeightsError(f"unknown backbone {name!r}: that architecture's pretrained weights are {tags}") from None
    if pretrained is None or not pretrained.hf_hub_id:
        return None
    repo_id, _, revision = pretrained.hf_hub_id.partition("@")
    return _from_config(name, name, repo_id, revision or None, pretrained.to_dict(), {})


def _from_config(
    name: str, model_name: str, repo_id: str, revision: str | None, config: dict[str, Any], model_args: dict[str, Any]
) -> HubBackbone:
    input_size = config.get("input_size") or (3, 224, 224)
    return HubBackbone(
        name=name,
        model_name=model_name,
        repo_id=repo_id,
        revision=revision,
        filename=config.get("hf_hub_filename"),
        input_size=int(input_size[-1]),
        mean=tuple(float(v) for v in config.get("mean", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
        std=tuple(float(v) for v in config.get("std", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
        interpolation=str(config.get("interpolation") or "bilinear"),
        model_args=model_args,
        license=str(config.get("license") or ""),
        fixed_input_size=bool(config.get("fixed_input_size", False)),
    )


def _commit_of(path: Path) -> str:
    """The commit a cached file belongs to: huggingface_hub keeps it at snapshots/<commit>/<filename>."""
    for parent in path.parents:
        if parent.parent.name == "snapshots":
            return parent.name
    return ""


def download_weights(hub: HubBackbone) -> HubWeights:
    """The backbone's weights file, from the cache or the Hub; refused (and dropped from the cache) if its sha256
    differs from the one the Hub names it by."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    candidates = (hub.filename,) if hub.filename else WEIGHTS_FILES
    for filename in candidates:
        try:
            path = _download(hub.name, hub.repo_id, filename, hub.revision)
        except RemoteEntryNotFoundError:
            continue
        break
    else:
        raise WeightsError(
            f"backbone {hub.name!r}: {hub.repo_id} has none of {', '.join(candidates)}; pass the weights with "
            "--weights FILE"
        )
    sha256 = file_sha256(path)
    # The cache stores a file under its ETag, which for the Hub's LFS files is the content's sha256.
    blob = Path(os.path.realpath(path))
    if _SHA256.fullmatch(blob.name) and blob.name != sha256:
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise WeightsError(
            f"backbone {hub.name!r}: {hub.repo_id}/{filename} arrived corrupted (sha256 {sha256[:12]}..., the Hub "
            f"says {blob.name[:12]}...); it was removed from the cache: run again to download it anew"
        )
    revision = _commit_of(path)
    logger.info("%s: weights %s@%s (sha256 %s)", hub.name, filename, revision[:12], sha256[:12])
    return HubWeights(path, f"{HUB_PREFIX}{hub.repo_id}/{filename}", revision, sha256)
