"""The exceptions artistid raises: one base class, so callers can catch everything of ours at once."""

from __future__ import annotations

__all__ = [
    "ArtistIdError",
    "ExportError",
    "ImageError",
    "ModelFileError",
    "NotAnImageError",
    "SourceError",
    "UsageError",
    "WeightsError",
]


class ArtistIdError(Exception):
    """Base class of every error artistid raises on bad input."""


class UsageError(ArtistIdError, ValueError):
    """A setting or option out of its range: a command exits 2 on it, as on any usage error.

    It is a ValueError too, as Python and scikit-learn expect of a bad parameter.
    """


class SourceError(ArtistIdError):
    """A dataset, manifest or storage location that cannot be used."""


class ImageError(ArtistIdError):
    """One image that cannot be used; names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NotAnImageError(ImageError):
    """A file whose format no image decoder recognises: a wrong media type rather than damaged image data."""


class WeightsError(ArtistIdError):
    """Pretrained weights that are missing, unreachable or do not match their published hash."""


class ModelFileError(ArtistIdError):
    """A model file that is truncated, not ours, or from an incompatible version."""


class ExportError(ArtistIdError):
    """An exported model that does not reproduce the trained one (or could not be written)."""
