"""A feature store: vectors kept as Parquet in a folder or a storage URI, shared by every engine and every machine.

    store = FeatureStore("az://features/paintings")      # or a local folder, file://, s3://, gs:// ...
    features = featurize(samples, extractor, store=store)  # computes only the images the store lacks

Layout: `URI/v1/<digest of the extractor's identity>/part-<time>-<uuid>.parquet`, each part two columns, `sha` (the
sha256 of the image file's bytes) and `features` (list<float32>), with the identity in the file's metadata. The
identity (`FeatureExtractor.identity()`) names everything a vector depends on besides the image: backbone weights,
layer, pooling, preprocessing, precision, runtime; so a vector is found again only by what made it.

Writers only ever add whole part files under names no other writer can pick, each written atomically (a local
temporary file renamed into place, or one committed blob upload), so two runs writing at once corrupt nothing and a
killed run leaves only complete parts. Readers skip names starting with `.` or `_` (temporaries, Spark's
`_temporary`). Nothing is lost by deleting the store but the time to compute the vectors again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from artistid import storage
from artistid.errors import ArtistIdError

__all__ = ["PART_SCHEMA", "FeatureStore", "parse_part", "part_bytes"]

logger = logging.getLogger(__name__)

LAYOUT = "v1"
PART_SCHEMA = pa.schema([pa.field("sha", pa.string(), nullable=False), pa.field("features", pa.list_(pa.float32()))])
_IDENTITY_KEY = b"artistid.identity"


def part_bytes(identity: str, shas: list[str], vectors: pa.Array | np.ndarray) -> bytes:
    """One part file: `shas[i]` -> `vectors[i]`, an (n, dim) float32 array or an Arrow list<float32> column."""
    if isinstance(vectors, np.ndarray):
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        offsets = pa.array(np.arange(len(rows) + 1, dtype=np.int32) * (rows.shape[1] if rows.ndim == 2 else 0))
        vectors = pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1), pa.float32()))
    table = pa.Table.from_arrays(
        [pa.array(shas, pa.string()), vectors.cast(pa.list_(pa.float32()))], schema=PART_SCHEMA
    )
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({_IDENTITY_KEY: identity.encode()}), buffer)
    return buffer.getvalue()


def parse_part(data: bytes, identity: str, name: str) -> pa.Table | None:
    """The (sha, features) rows of one part, or None (logged) for a file that is not one of this identity's parts."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:
        logger.warning("%s: skipped, not a readable Parquet part (%s)", name, storage.describe_error(exc))
        return None
    found = (table.schema.metadata or {}).get(_IDENTITY_KEY, b"").decode()
    if found != identity or not {"sha", "features"} <= set(table.column_names):
        logger.warning("%s: skipped, it holds vectors of %r, not %r", name, found, identity)
        return None
    return table.select(["sha", "features"]).cast(PART_SCHEMA)


class FeatureStore:
    """The vectors of every extractor identity under one folder or storage URI."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/") or uri
        self.storage_options = storage_options

    def __repr__(self) -> str:
        return f"FeatureStore({self.uri!r})"

    def folder(self, identity: str) -> str:
        """Where the parts of one identity live (named by its digest: identities hold slashes and spaces)."""
        return storage.join(self.uri, LAYOUT, hashlib.sha256(identity.encode()).hexdigest()[:32])

    def part_uris(self, identity: str) -> list[str]:
        """The complete part files of `identity`, oldest first; none when the store or the identity is new."""
        folder = self.folder(identity)
        fs, root = storage.url_to_fs(folder, self.storage_options)
        try:
            found = storage.with_retries(lambda: fs.find(root), uri=folder) if fs.exists(root) else []
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise ArtistIdError(f"{self.uri}: cannot list the feature store ({storage.describe_error(exc)})") from None
        parts = []
        for path in sorted(found):
            relative = path[len(root.rstrip("/")) + 1 :].split("/")
            if relative[-1].endswith(".parquet") and not any(p.startswith((".", "_")) for p in relative):
                parts.append(storage.join(folder, *relative))
        return parts

    def read_part(self, uri: str, identity: str) -> pa.Table | None:
        try:
            data = storage.read_bytes(uri, self.storage_options)
        except Exception as exc:  # gone since it was listed, or unreadable: only costs the time to recompute
            logger.warning("%s: skipped, cannot read it (%s)", uri, storage.describe_error(exc))
            return None
        return parse_part(data, identity, uri)

    def vectors(self, identity: str) -> dict[str, np.ndarray]:
        """Every stored vector of `identity`, by content hash."""
        found: dict[str, np.ndarray] = {}
        for uri in self.part_uris(identity):
            table = self.read_part(uri, identity)
            if table is None or table.num_rows == 0:
                continue
            features = table["features"].combine_chunks()
            lengths = np.diff(np.asarray(features.offsets))
            values = np.asarray(features.flatten(), dtype=np.float32)
            dim = int(lengths.max())
            if (lengths != dim).any():
                logger.warning("%s: skipped, its vectors are not all of one length", uri)
                continue
            for sha, vector in zip(table["sha"].to_pylist(), values.reshape(-1, dim), strict=True):
                found[sha] = vector
        return found

    def new_part_uri(self, identity: str) -> str:
        """A part name no other writer picks: the time (for people) and a random uuid (for uniqueness)."""
        return storage.join(self.folder(identity), f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex}.parquet")

    def append(self, identity: str, vectors: dict[str, np.ndarray]) -> str | None:
        """Adds `vectors` (by content hash) as one new part, written atomically; returns its URI."""
        if not vectors:
            return None
        uri = self.new_part_uri(identity)
        data = part_bytes(identity, list(vectors), np.stack(list(vectors.values())))
        try:
            storage.write_bytes_atomic(uri, data, self.storage_options)
        except Exception as exc:
            raise ArtistIdError(f"{uri}: cannot write to the feature store ({storage.describe_error(exc)})") from None
        return uri
