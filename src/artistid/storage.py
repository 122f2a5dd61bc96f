"""Where images and model files live: local paths and storage URIs (az://, s3://, gs://, http(s)://, file://).

Everything goes through fsspec, so any backend it knows works with credentials given the standard ways
(for Azure: AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT_NAME/KEY, SAS token, or storage options).
Remote reads and writes are retried on transient failures (tenacity: exponential backoff with jitter), except
where the backend retries by itself (Azure, S3, GCS): there its own retry settings apply, so that the two do not
multiply; only what the backend cannot see (a body that fails our size or checksum check) is retried here.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from artistid.errors import SourceError

if TYPE_CHECKING:  # imported where used: a run on local files alone needs neither
    import tenacity
    from fsspec.spec import AbstractFileSystem

__all__ = [
    "DEFAULT_RETRY",
    "RetryPolicy",
    "TruncatedDownload",
    "describe_error",
    "file_sha256",
    "is_local",
    "is_transient",
    "join",
    "local_name",
    "local_path",
    "parse_storage_options",
    "read_bytes",
    "url_to_fs",
    "with_retries",
    "write_atomic",
    "write_bytes_atomic",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Status codes worth another try: timeouts, throttling and server-side failures.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Backends that retry transient failures themselves (azure-core's retry policy, botocore and s3fs, gcsfs).
_SELF_RETRYING = frozenset({"az", "abfs", "abfss", "adl", "s3", "s3a", "gs", "gcs"})
# Exception class names (anywhere in the MRO) of aiohttp, azure-core, botocore and fsspec that mean "the
# connection or the server failed, not the request": matched by name so none of them must be imported here.
_TRANSIENT_NAMES = frozenset(
    {
        "ClientConnectionError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ServiceRequestError",
        "ServiceResponseError",
        "IncompleteReadError",
        "FSTimeoutError",
        "EndpointConnectionError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
    }
)


class TruncatedDownload(ConnectionError):
    """A body that ended before its announced size, or whose checksum does not match: worth a retry."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried: `attempts` tries in all."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 10.0

    def wait(self) -> tenacity.wait.wait_base:
        """Equal jitter: half the exponential ceiling, plus up to the other half at random, so that parallel
        workers do not retry in lockstep."""
        import tenacity

        half = {"multiplier": self.base_delay / 2, "max": self.max_delay / 2}
        return tenacity.wait_exponential(**half) + tenacity.wait_random_exponential(**half)


DEFAULT_RETRY = RetryPolicy()


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may go away on retry: resets, timeouts, truncated bodies, 5xx/429 responses.

    Backends wrap errors (fsspec's HTTP `info` turns a 500 into FileNotFoundError), so the whole cause chain
    counts.
    """
    for error in _chain(exc):
        status = getattr(error, "status", None) or getattr(error, "status_code", None)
        if isinstance(status, int) and status in _TRANSIENT_STATUS:
            return True
        if isinstance(error, ConnectionError | TimeoutError):
            return True
        if _TRANSIENT_NAMES.intersection(cls.__name__ for cls in type(error).__mro__):
            return True
    return False


def _backend_retries(uri: str) -> bool:
    return str(uri).partition("://")[0].lower() in _SELF_RETRYING if "://" in str(uri) else False


def with_retries(call: Callable[[], T], *, uri: str, policy: RetryPolicy = DEFAULT_RETRY) -> T:
    """Runs `call` on `uri`, retrying transient failures per `policy`; the last error propagates unchanged.

    Where the backend of `uri` retries by itself, only `TruncatedDownload` (our own check) is retried here.
    """
    import tenacity

    def worth_retrying(exc: BaseException) -> bool:
        if _backend_retries(uri):
            return any(isinstance(error, TruncatedDownload) for error in _chain(exc))
        return is_transient(exc)

    def log(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        pause = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "%s: %s; retry %d of %d in %.1fs",
            uri,
            describe_error(error) if error else "failed",
            state.attempt_number,
            policy.attempts - 1,
            pause,
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=policy.wait(),
        retry=tenacity.retry_if_exception(worth_retrying),
        before_sleep=log,
        reraise=True,
    )
    return retrying(call)


def describe_error(exc: BaseException) -> str:
    """`Type: first line of the message`, for one-line reports."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def is_local(uri: str | Path) -> bool:
    text = str(uri)
    return "://" not in text or text.startswith("file://")


def local_name(uri: str | Path) -> str:
    """The local file a local URI names, as text (a Path costs more where thousands are looked up)."""
    text = str(uri)
    return text[len("file://") :] if text.startswith("file://") else text


def local_path(uri: str | Path) -> Path:
    return Path(local_name(uri))


def existing_parent(path: Path) -> Path:
    """The nearest folder above `path` that exists (where a new file or folder at `path` would be created)."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def url_to_fs(uri: str | Path, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise SourceError(f"{uri}: cannot open this storage location: {exc}") from None


def join(base: str, *parts: str) -> str:
    if is_local(base):
        return str(local_path(base).joinpath(*parts))
    return "/".join([base.rstrip("/"), *parts])


def parse_storage_options(items: Iterable[str]) -> dict[str, Any]:
    """`["account_name=x", "anon=true"]` -> `{"account_name": "x", "anon": True}`, for --storage-option.

    true/false become booleans and whole numbers ints (backends expect them typed); all else stays text.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SourceError(f"storage option {item!r}: expected key=value, e.g. account_name=myaccount")
        key = key.strip()
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
        elif value.isdigit():
            options[key] = int(value)
        else:
            options[key] = value
    return options


def file_sha256(path: str | Path) -> str:
    """The sha256 of a local file (weights and model files run to tens of MB: hashlib reads it in blocks)."""
    with open(local_path(path), "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_bytes(
    uri: str | Path, storage_options: dict[str, Any] | None = None, *, retry: RetryPolicy = DEFAULT_RETRY
) -> bytes:
    """The whole content of one file; raises OSError (or a backend's error) when it cannot be read."""
    if is_local(uri):
        return local_path(uri).read_bytes()
    fs, path = url_to_fs(uri, storage_options)
    return with_retries(lambda: fs.cat_file(path), uri=str(uri), policy=retry)


def write_atomic(
    uri: str | Path,
    write: Callable[[BinaryIO], object],
    storage_options: dict[str, Any] | None = None,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> None:
    """Writes a whole file through `write(handle)` so that readers see the old content or the new one, never a part.

    Locally: `write` fills a temporary file beside the target (a large file is never held in memory), which is
    flushed to disk, then renamed over it. In object stores a blob only appears once its upload is committed, so
    what `write` wrote goes up in one upload (retried on transient failures).
    """
    if not is_local(uri):
        buffer = io.BytesIO()
        write(buffer)
        _upload(uri, buffer.getvalue(), storage_options, retry)
        return
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp, whose file is private (0600): the result is an ordinary file, 0666 less the umask.
    temporary = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as exc:  # a full disk, say: named by the file the user asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror or str(exc), str(uri)) from None


def write_bytes_atomic(
    uri: str | Path,
    data: bytes,
    storage_options: dict[str, Any] | None = None,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> None:
    """Writes `data` as a whole file, atomically (`write_atomic`)."""
    write_atomic(uri, lambda handle: handle.write(data), storage_options, retry=retry)


def _upload(uri: str | Path, data: bytes, storage_options: dict[str, Any] | None, retry: RetryPolicy) -> None:
    fs, path = url_to_fs(uri, storage_options)

    def upload() -> None:
        try:
            fs.pipe_file(path, data)
        except Exception as exc:
            if not _is_missing(exc):
                raise
            # The container or bucket does not exist yet: create it (folders in object stores need none).
            fs.mkdir(fs._parent(path), create_parents=True)
            fs.pipe_file(path, data)

    with_retries(upload, uri=str(uri), policy=retry)


def _is_missing(exc: BaseException) -> bool:
    for error in _chain(exc):
        status = getattr(error, "status", None) or getattr(error, "status_code", None)
        if isinstance(error, FileNotFoundError) or status == 404:
            return True
    return False
