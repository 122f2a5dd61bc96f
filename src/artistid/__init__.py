"""artistid: tell which painter made a painting, by transfer learning on a frozen ImageNet backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from artistid.errors import ArtistIdError, ImageError, ModelFileError, SourceError, WeightsError

if TYPE_CHECKING:
    from artistid.model import Model

__all__ = ["ArtistIdError", "ImageError", "Model", "ModelFileError", "SourceError", "WeightsError"]


def __getattr__(name: str) -> Any:
    # `artistid.Model` pulls in the deep-learning stack only when asked for, so `import artistid` stays light.
    if name == "Model":
        from artistid.model import Model

        return Model
    raise AttributeError(f"module 'artistid' has no attribute {name!r}")
