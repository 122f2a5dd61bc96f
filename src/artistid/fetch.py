"""Copies a dataset's images from a manifest or a storage prefix into a local folder, robustly.

A manifest has one file a line, `URI DIR FILENAME` (the filename may contain spaces), as in the reference
design's `transferimages.txt`; a prefix is mirrored as it is (`Train/<artist>/...`, `Test/<artist>/...`).
Files are downloaded in parallel, transient failures are retried, each file is written under a temporary name
and renamed when complete and verified, and a re-run skips the files that are already complete.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from artistid import storage
from artistid.errors import SourceError, UsageError

__all__ = ["FetchItem", "FetchReport", "fetch", "parse_manifest", "plan_fetch", "safe_target"]

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = 8
# Seconds without a byte before an HTTP read counts as stalled and is retried (aiohttp's default: 5 min).
DEFAULT_TIMEOUT = 60.0
DEAD_STORE_FAILURES = 16  # transient failures in a row (at least two per worker) after which fetch stops trying
_PART_SUFFIX = ".part"


@dataclass(frozen=True)
class FetchItem:
    """One file to copy from `uri` to `target` (relative to the destination); size and MD5 where known."""

    uri: str
    target: str
    origin: str  # "manifest.txt:12" or the prefix's URI, for messages
    size: int | None = None
    md5: str | None = None


@dataclass
class FetchReport:
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes_fetched: int = 0

    def summary(self) -> str:
        return (
            f"{len(self.fetched)} fetched ({self.bytes_fetched / 1e6:.1f} MB), "
            f"{len(self.skipped)} skipped (already complete), {len(self.failed)} failed"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "fetched": len(self.fetched),
            "skipped": len(self.skipped),
            "failed": [{"file": name, "reason": reason} for name, reason in self.failed],
            "bytes_fetched": self.bytes_fetched,
        }


# ---------------------------------------------------------------------------------------------- targets


def safe_target(root: Path, relative: str, origin: str) -> Path:
    """`root/relative`, refused with a SourceError naming `origin` if it would land outside `root`.

    Refuses absolute paths, `..` parts and any symlink on the way (a symlink inside DIR could point anywhere).
    """

    def refuse(reason: str) -> SourceError:
        return SourceError(f"{origin}: refused target {relative!r}: {reason}; it must stay inside {root}")

    # Backslashes count as separators too: a manifest written on Windows must not smuggle `..\` through.
    text = relative.replace("\\", "/")
    if "\x00" in text:
        raise refuse("NUL character in path")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise refuse("absolute path")
    parts = [part for part in PurePosixPath(text).parts if part not in ("", ".")]
    if not parts:
        raise refuse("empty path")
    if ".." in parts:
        raise refuse("'..' in path")
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise refuse(f"symlink on the way ({current})")
    return current


# ---------------------------------------------------------------------------------------------- planning


def _with_http_timeout(uri: str, storage_options: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    options = dict(storage_options or {})
    if uri.startswith(("http://", "https://")) and "client_kwargs" not in options:
        import aiohttp  # fsspec's HTTP backend needs it anyway

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout)}
    return options


def _base_of(source: str) -> str:
    if storage.is_local(source):
        return str(storage.local_path(source).parent)
    return source.rsplit("/", 1)[0]


def parse_manifest(text: str, source: str) -> list[FetchItem]:
    """The files a manifest lists; raises SourceError naming the first bad line (and how many more there are).

    Lines are `URI DIR FILENAME`; blank lines and `#` comments are skipped. A relative URI is taken relative
    to the manifest's own location.
    """
    base = _base_of(source)
    items: list[FetchItem] = []
    problems: list[tuple[int, str]] = []  # (line number, what is wrong with it)
    claimed: dict[str, tuple[int, str]] = {}  # target, lower-cased -> (its line, the target as written)
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(maxsplit=2)
        if len(fields) != 3:
            problems.append((number, f"expected 'URI DIR FILENAME', got {stripped!r}"))
            continue
        uri, folder, filename = fields
        target = f"{folder.rstrip('/')}/{filename}"
        # Names that differ only in case are one file on macOS and Windows.
        key = str(PurePosixPath(target.replace("\\", "/"))).lower()
        if key in claimed:
            problems.append((number, f"same target {target!r} as line {claimed[key][0]}"))
            continue
        claimed[key] = (number, target)
        if "://" not in uri and not uri.startswith("/"):
            uri = storage.join(base, uri)
        items.append(FetchItem(uri=uri, target=target, origin=f"{source}:{number}"))
    for key, (number, _) in claimed.items():
        for parent in PurePosixPath(key).parents:
            if str(parent) in claimed:
                owner_number, owner = claimed[str(parent)]
                problems.append((number, f"its folder is line {owner_number}'s file {owner!r}"))
    if problems:
        number, problem = min(problems)
        more = f" (and {len(problems) - 1} more bad lines)" if len(problems) > 1 else ""
        raise SourceError(f"{source}:{number}: {problem}{more}")
    if not items:
        raise SourceError(f"{source}: the manifest lists no files")
    return items


def _md5_of(info: dict[str, Any], fs: Any) -> str | None:
    """The MD5 a store reports for a file, as hex, where it gives one (Azure, GCS, S3 single-part, HTTP)."""
    settings = info.get("content_settings")
    azure = settings.get("content_md5") if isinstance(settings, dict) else getattr(settings, "content_md5", None)
    if azure:
        return bytes(azure).hex()
    for key in ("md5Hash", "Content-MD5"):
        if info.get(key):
            try:
                return base64.b64decode(info[key]).hex()
            except ValueError:
                return None
    # An S3 ETag is the MD5 for single-part uploads; multipart ETags carry a "-N" suffix and are no MD5.
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    etag = str(info.get("ETag") or "").strip('"')
    if "s3" in protocols and re.fullmatch(r"[0-9a-f]{32}", etag):
        return etag
    return None


def _list_prefix(source: str, storage_options: dict[str, Any] | None) -> list[FetchItem]:
    fs, root = storage.url_to_fs(source, storage_options)
    root = root.rstrip("/")
    items: list[FetchItem] = []
    for path, info in sorted(fs.find(root, detail=True).items()):
        relative = path[len(root) :].lstrip("/")
        if not relative or any(part.startswith(".") for part in relative.split("/")) or info.get("type") == "directory":
            continue
        uri = path if storage.is_local(source) else fs.unstrip_protocol(path)
        items.append(FetchItem(uri, relative, source, size=info.get("size"), md5=_md5_of(info, fs)))
    if not items:
        raise SourceError(f"{source}: no files under this prefix")
    return items


def plan_fetch(
    source: str,
    storage_options: dict[str, Any] | None = None,
    *,
    retry: storage.RetryPolicy = storage.DEFAULT_RETRY,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[FetchItem]:
    """What `fetch` would copy: the lines of a manifest file, or every file under a prefix."""
    storage_options = _with_http_timeout(source, storage_options, timeout)
    fs, path = storage.url_to_fs(source, storage_options)
    try:
        is_file = storage.with_retries(lambda: fs.isfile(path), uri=source, policy=retry)
        is_dir = not is_file and storage.with_retries(lambda: fs.isdir(path), uri=source, policy=retry)
    except OSError as exc:
        raise SourceError(f"{source}: cannot reach it: {exc}") from None
    if is_dir:
        return _list_prefix(source, storage_options)
    if not is_file:
        raise SourceError(f"{source}: no such manifest file or storage prefix")
    try:
        raw = storage.read_bytes(source, storage_options, retry=retry)
    except OSError as exc:
        raise SourceError(f"{source}: cannot read the manifest: {exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(f"{source}: the manifest is not UTF-8 text") from None
    return parse_manifest(text, source)


# ---------------------------------------------------------------------------------------------- copying


def _file_md5(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _is_complete(target: Path, size: int | None, md5: str | None) -> bool:
    """A file already there counts as complete when it matches the store's size and, where known, MD5.

    With neither known (a server that sends no Content-Length) nothing can vouch for it: it is fetched again.
    """
    if not target.is_file() or (size is None and md5 is None):
        return False
    if size is not None and target.stat().st_size != size:
        return False
    return md5 is None or _file_md5(target) == md5


def _download(fs: Any, path: str, target: Path, size: int | None, md5: str | None) -> int:
    # A fixed hidden name: a re-run after a crash overwrites the leftover, and dataset listings skip it.
    part = target.with_name(f".{target.name}{_PART_SUFFIX}")
    try:
        fs.get_file(path, str(part))
        got = part.stat().st_size
        if size is not None and got != size:
            raise storage.TruncatedDownload(f"got {got} of {size} bytes")
        if md5 is not None and _file_md5(part) != md5:
            raise storage.TruncatedDownload(f"MD5 differs from the store's {md5}")
        os.replace(part, target)
        return got
    finally:
        part.unlink(missing_ok=True)


def _fetch_one(
    item: FetchItem,
    root: Path,
    storage_options: dict[str, Any] | None,
    retry: storage.RetryPolicy,
    timeout: float,
) -> int | None:
    """Copies one file; returns its size, or None where it was already complete."""
    target = safe_target(root, item.target, item.origin)
    fs, path = storage.url_to_fs(item.uri, _with_http_timeout(item.uri, storage_options, timeout))
    size, md5 = item.size, item.md5
    # Manifest lines carry no size: ask the store only where a local copy must be judged, saving a round trip
    # per new file. Backends check a body against its Content-Length themselves.
    if size is None and md5 is None and target.exists():
        info = storage.with_retries(lambda: fs.info(path), uri=item.uri, policy=retry)
        size, md5 = info.get("size"), _md5_of(info, fs)
    if _is_complete(target, size, md5):
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    # The symlink check again, now that folders exist: one may have appeared since planning.
    safe_target(root, item.target, item.origin)
    return storage.with_retries(lambda: _download(fs, path, target, size, md5), uri=item.uri, policy=retry)


def _record(report: FetchReport, item: FetchItem, future: Future[int | None]) -> None:
    try:
        got = future.result()
    except SourceError as exc:
        report.failed.append((item.target, str(exc)))
    except Exception as exc:
        reason = f"{item.uri}: {storage.describe_error(exc)}"
        logger.error("%s: failed: %s", item.origin, reason)
        report.failed.append((item.target, reason))
    else:
        if got is None:
            report.skipped.append(item.target)
        else:
            report.fetched.append(item.target)
            report.bytes_fetched += got


def _give_up(report: FetchReport, futures: dict[Future[int | None], FetchItem], why: str) -> None:
    """Cancels the downloads not yet started and reports each as failed, with the reason."""
    logger.error("fetch: %s: not trying the rest", why)
    for future, item in futures.items():
        if future.cancel():
            report.failed.append((item.target, f"{item.uri}: not tried: {why}"))


def fetch(
    source: str,
    to: str | Path,
    *,
    workers: int = DEFAULT_WORKERS,
    storage_options: dict[str, Any] | None = None,
    retry: storage.RetryPolicy = storage.DEFAULT_RETRY,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> FetchReport:
    """Copies every file of SOURCE (manifest or prefix) into `to`; failures are reported, not raised.

    Raises SourceError before copying anything when SOURCE cannot be read or a manifest line is bad or unsafe.
    """
    if workers < 1:
        raise UsageError(f"workers must be 1 or more; got {workers}")
    root = Path(to)
    items = plan_fetch(source, storage_options, retry=retry, timeout=timeout)
    for item in items:
        safe_target(root, item.target, item.origin)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SourceError(f"{root}: cannot create the destination folder: {exc.strerror or exc}") from None
    report = FetchReport()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
    # A store that is down fails every file only after all its retries: once this many in a row have, stop.
    give_up_after = max(DEAD_STORE_FAILURES, 2 * workers)
    failing = 0
    try:
        futures = {pool.submit(_fetch_one, item, root, storage_options, retry, timeout): item for item in items}
        with tqdm(total=len(items), unit="file", desc="fetch", disable=not progress) as bar:
            for future in as_completed(futures):
                bar.update()
                if future.cancelled():  # reported by _give_up
                    continue
                _record(report, futures[future], future)
                error = future.exception()
                failing = failing + 1 if error is not None and storage.is_transient(error) else 0
                if failing == give_up_after:
                    _give_up(report, futures, f"the last {failing} files failed in a row; the store looks down")
    finally:
        # On Ctrl-C, drop the queued downloads instead of running them all before exiting.
        pool.shutdown(wait=True, cancel_futures=True)
    report.failed.sort()
    logger.info("fetch %s -> %s: %s", source, root, report.summary())
    return report
