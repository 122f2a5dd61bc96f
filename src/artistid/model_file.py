"""The model file: one safetensors file holding the backbone's weights, the head, and JSON metadata.

Layout (readable without artistid, see docs/model-file.md): the standard safetensors header, whose
`__metadata__["artistid"]` is a JSON document: the format name and version, and the model card
(`artistid.card.ModelCard`: classes, backbone, preprocessing, head, calibration, training, metrics, versions).
Tensors are named `backbone.<key>` and `head.<key>`. safetensors holds no code, so loading a model file never runs
any. Files of version 1 (before the card) are read too.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from artistid import storage
from artistid.card import CARD_VERSION, ModelCard, card_from_dict, card_to_dict
from artistid.errors import ModelFileError

if TYPE_CHECKING:
    import torch

__all__ = ["FORMAT", "FORMAT_VERSION", "read_card", "read_model_file", "write_model_file"]

FORMAT = "artistid-model"
FORMAT_VERSION = CARD_VERSION
READABLE_VERSIONS = (1, 2)
_MAX_HEADER = 100 * 1024 * 1024


def write_model_file(
    uri: str | Path,
    tensors: dict[str, torch.Tensor] | dict[str, np.ndarray],
    card: ModelCard,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Writes the model file atomically, locally or to a storage URI; NumPy arrays need no torch."""
    document = {"format": FORMAT, "version": FORMAT_VERSION, **card_to_dict(card)}
    header = {"format": "pt", "artistid": json.dumps(document)}
    if all(isinstance(tensor, np.ndarray) for tensor in tensors.values()):
        from safetensors.numpy import save as save_arrays

        data = save_arrays({name: np.ascontiguousarray(array) for name, array in tensors.items()}, metadata=header)
    else:
        from safetensors.torch import save

        contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}  # type: ignore[union-attr]
        data = save(contiguous, metadata=header)
    storage.write_bytes_atomic(uri, data, storage_options)


def _card(data: bytes, uri: str) -> ModelCard:
    if len(data) < 8:
        raise ModelFileError(f"{uri}: not an artistid model file (only {len(data)} bytes)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > _MAX_HEADER or 8 + size > len(data):
        raise ModelFileError(f"{uri}: not an artistid model file, or truncated (bad safetensors header)")
    try:
        header = json.loads(data[8 : 8 + size])
        document = json.loads(header["__metadata__"]["artistid"])
    except (ValueError, KeyError, TypeError):
        raise ModelFileError(f"{uri}: not an artistid model file (no artistid metadata)") from None
    if document.get("format") != FORMAT:
        raise ModelFileError(f"{uri}: not an artistid model file (format {document.get('format')!r})")
    version = document.get("version")
    if version not in READABLE_VERSIONS:
        raise ModelFileError(
            f"{uri}: model file format version {version} is not supported by this artistid "
            f"(it reads versions {', '.join(map(str, READABLE_VERSIONS))}); retrain the model or use the artistid "
            "that wrote it"
        )
    try:
        return card_from_dict(document, version)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{uri}: model file is inconsistent ({type(exc).__name__}: {exc})") from None


def _read(uri: str | Path, storage_options: dict[str, Any] | None) -> bytes:
    try:
        return storage.read_bytes(uri, storage_options)
    except FileNotFoundError:
        raise ModelFileError(f"{uri}: model file not found") from None
    except IsADirectoryError:
        raise ModelFileError(f"{uri}: is a folder, not a model file") from None
    except OSError as exc:
        raise ModelFileError(f"{uri}: cannot read model file ({exc})") from None


def read_card(uri: str | Path, storage_options: dict[str, Any] | None = None) -> ModelCard:
    """The card of a model file, checked for format and version (quicker than loading the model)."""
    return _card(_read(uri, storage_options), str(uri))


def read_model_file(
    uri: str | Path, storage_options: dict[str, Any] | None = None
) -> tuple[dict[str, np.ndarray], ModelCard]:
    """The arrays and card of a model file; raises ModelFileError for anything that is not a whole one.

    As NumPy arrays: a model whose backbone runs from its cached ONNX export never imports torch."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    data = _read(uri, storage_options)
    card = _card(data, str(uri))
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        raise ModelFileError(f"{uri}: model file is truncated or corrupt ({exc})") from None
    return tensors, card
