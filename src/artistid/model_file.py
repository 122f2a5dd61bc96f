"""The model file: one safetensors file holding the backbone's weights, the head, and JSON metadata.

Layout (readable without artistid, see docs/model-file.md): the standard safetensors header, whose
`__metadata__["artistid"]` is a JSON document with the format name and version, class names, backbone and
preprocessing, training settings, metrics and library versions. Tensors are named `backbone.<key>` and `head.<key>`.
safetensors holds no code, so loading a model file never runs any.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artistid import storage
from artistid.errors import ModelFileError

if TYPE_CHECKING:
    import torch

__all__ = ["FORMAT", "FORMAT_VERSION", "read_metadata", "read_model_file", "write_model_file"]

FORMAT = "artistid-model"
FORMAT_VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024


def write_model_file(
    uri: str | Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, Any],
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Writes the model file atomically, locally or to a storage URI."""
    from safetensors.torch import save

    document = {"format": FORMAT, "version": FORMAT_VERSION, **metadata}
    contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    data = save(contiguous, metadata={"format": "pt", "artistid": json.dumps(document)})
    storage.write_bytes_atomic(uri, data, storage_options)


def _header(data: bytes, uri: str) -> dict[str, Any]:
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
    if document.get("version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{uri}: model file format version {document.get('version')} is not supported by this artistid "
            f"(it reads version {FORMAT_VERSION}); retrain the model or use the artistid that wrote it"
        )
    return document


def _read(uri: str | Path, storage_options: dict[str, Any] | None) -> bytes:
    try:
        return storage.read_bytes(uri, storage_options)
    except FileNotFoundError:
        raise ModelFileError(f"{uri}: model file not found") from None
    except IsADirectoryError:
        raise ModelFileError(f"{uri}: is a folder, not a model file") from None
    except OSError as exc:
        raise ModelFileError(f"{uri}: cannot read model file ({exc})") from None


def read_metadata(uri: str | Path, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON metadata of a model file, checked for format and version."""
    return _header(_read(uri, storage_options), str(uri))


def read_model_file(
    uri: str | Path, storage_options: dict[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of a model file; raises ModelFileError for anything that is not a whole one."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = _read(uri, storage_options)
    document = _header(data, str(uri))
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        raise ModelFileError(f"{uri}: model file is truncated or corrupt ({exc})") from None
    return tensors, document
