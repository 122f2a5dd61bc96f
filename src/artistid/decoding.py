"""Decoding in worker processes that no file can take down with it, and that never outlive their parent.

Image codecs are large C libraries fed with files from anywhere; some files crash them, hang them or make them
allocate without bound. `DecodePool` runs `read_and_decode` / `decode_bytes` in child processes, one file at a time
each, under `DecodeLimits`:

- any exception becomes that file's error (`artistid.images` turns decoder exceptions into `ImageError`);
- a worker that dies (a segfault in a codec, a kill by the out-of-memory killer) costs only the file it was on:
  that file is reported, the worker is replaced and the other files go on;
- a file that takes longer than `seconds` gets its worker killed and is reported as a hang;
- each worker's address space is capped `memory_bytes` above what it needs at rest, so a decompression bomb that
  the pixel limit cannot see ends in a MemoryError for that file instead of swapping the machine;
- workers ask the kernel to kill them when their parent dies (Linux `PR_SET_PDEATHSIG`; elsewhere a thread watches
  the parent), so a run killed with SIGKILL leaves no decoder behind.

Workers are fresh interpreters (`python -m artistid.decoding`), not forks: they carry neither the parent's model nor
its threads, and start in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import Any

import numpy as np

from artistid import storage
from artistid.errors import ImageError, NotAnImageError
from artistid.images import MAX_PIXELS, Preprocess, load_image

__all__ = [
    "DEFAULT_LIMITS",
    "DecodeLimits",
    "DecodePool",
    "Decoded",
    "decode_bytes",
    "decode_in_process",
    "exit_with_parent",
    "read_and_decode",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeLimits:
    """What one file may cost a decode worker: wall-clock seconds, and memory beyond the worker's own."""

    # Far above what an ordinary scan needs (well under a second) and below what a user would wait for one file.
    seconds: float = 30.0
    # Room for the largest image the pixel limit lets through, decoded and converted, with copies.
    memory_bytes: int = 4 << 30
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError(f"the decode time limit must be positive; got {self.seconds}")
        if self.memory_bytes < 1 << 20:
            raise ValueError(f"the decode memory limit must be at least 1 MiB; got {self.memory_bytes}")


DEFAULT_LIMITS = DecodeLimits()


@dataclass(slots=True)
class Decoded:
    """What decoding one image gives: its content hash and pixels, or the reason it failed.

    `error` is one line naming the file; `not_an_image` tells a wrong media type from damaged image data.
    """

    index: int
    sha: str = ""
    pixels: np.ndarray | None = None
    error: str = ""
    stat: tuple[int, int] | None = None
    not_an_image: bool = False

    def pixels_or_raise(self) -> np.ndarray:
        """The pixels, or the `ImageError` this result stands for."""
        if self.pixels is not None:
            return self.pixels
        name, _, reason = self.error.partition(": ")
        raise (NotAnImageError if self.not_an_image else ImageError)(name, reason)


def _decoded(index: int, data: bytes, name: str, preprocess: Preprocess, limits: DecodeLimits) -> Decoded:
    sha = hashlib.sha256(data).hexdigest()
    try:
        pixels = load_image(data, preprocess, name=name, max_pixels=limits.max_pixels)
    except ImageError as exc:
        return Decoded(index, sha, error=str(exc), not_an_image=isinstance(exc, NotAnImageError))
    except MemoryError:
        limit = f" (the decoder's limit is {limits.memory_bytes / 2**30:g} GiB)"
        return Decoded(index, sha, error=f"{name}: out of memory while decoding{limit}")
    return Decoded(index, sha, pixels)


def read_and_decode(
    index: int,
    path: str,
    preprocess: Preprocess,
    storage_options: dict[str, Any] | None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> Decoded:
    """Reads, hashes and decodes one image; every engine's workers call this, so all decode alike."""
    try:
        stat = None
        if storage.is_local(path):
            st = os.stat(storage.local_path(path))
            stat = (st.st_size, st.st_mtime_ns)
        data = storage.read_bytes(path, storage_options)
    except FileNotFoundError:
        return Decoded(index, error=f"{path}: file not found")
    except Exception as exc:
        return Decoded(index, error=f"{path}: cannot read file ({exc})")
    decoded = _decoded(index, data, path, preprocess, limits)
    decoded.stat = stat
    return decoded


def decode_bytes(
    index: int, data: bytes, name: str, preprocess: Preprocess, limits: DecodeLimits = DEFAULT_LIMITS
) -> Decoded:
    """Hashes and decodes one uploaded image."""
    return _decoded(index, data, name, preprocess, limits)


def decode_in_process(
    jobs: Iterable[tuple[int, str]], preprocess: Preprocess, storage_options: dict[str, Any] | None, batch_size: int
) -> Iterator[list[Decoded]]:
    """`read_and_decode` in this process, in batches: for a few files, where starting a worker costs more.

    An exception is still the file's error, but a crash or hang in a codec is the caller's.
    """
    batch: list[Decoded] = []
    for index, path in jobs:
        batch.append(read_and_decode(index, path, preprocess, storage_options))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- the worker process ----------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Makes the kernel (or, off Linux, a watching thread) end this process when `parent` ends."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before the request took effect
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="artistid-parent-watch", daemon=True).start()


def exit_with_parent(worker_id: int | None = None) -> None:
    """For a process started by someone else's pool (torch's DataLoader `worker_init_fn`): it ends when its parent
    does, instead of lingering after a SIGKILL of the run."""
    _die_with_parent(os.getppid())


def _limit_memory(budget: int) -> None:
    """Caps this process's address space at what it maps now plus `budget` bytes."""
    try:
        import resource

        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (mapped + budget, resource.RLIM_INFINITY))
    except (ImportError, OSError, ValueError) as exc:  # not Linux: the pixel limit alone guards
        logger.debug("no memory limit for decode workers: %s", exc)


def _worker_main() -> None:
    """A worker's loop: jobs in on stdin, results out on a private copy of stdout, until stdin closes."""
    import pickle
    import warnings

    # Results go on a copy of stdout, so that nothing a codec prints can corrupt them.
    results = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    jobs = Connection(0, writable=False)
    parent, preprocess, storage_options, limits = pickle.loads(jobs.recv_bytes())
    _die_with_parent(parent)
    _limit_memory(limits.memory_bytes)
    # Odd files make codecs warn and C libraries (libtiff) print: each file's error is reported on its own.
    warnings.simplefilter("ignore")
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    results.send(None)  # ready: the time limit starts with the first job, not with the interpreter
    while True:
        try:
            index, kind, payload = jobs.recv()
        except EOFError:  # the pool closed
            return
        if kind == "path":
            decoded = read_and_decode(index, payload, preprocess, storage_options, limits)
        else:
            name, data = payload
            decoded = decode_bytes(index, data, name, preprocess, limits)
        results.send(decoded)


# --- the pool --------------------------------------------------------------------------------------------------


@dataclass
class _Job:
    index: int
    kind: str  # "path" or "bytes"
    payload: Any
    name: str
    future: Future[Decoded] = field(default_factory=Future)
    dispatched: bool = False


class _Worker:
    """One decode process and the jobs sent to it, oldest (the one being decoded) first."""

    def __init__(self, setup: bytes) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
            # One decode per process: a thread pool in numpy's BLAS would only compete with the other workers.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from artistid.decoding import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.jobs = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.results = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        self.jobs.send_bytes(setup)
        self.ready = False  # until it says so, having imported everything
        self.sent: deque[_Job] = deque()
        self.started = time.monotonic()  # when the oldest job in `sent` began decoding

    def can_take(self, job: _Job) -> bool:
        # A second job waits in the pipe while the first decodes, but only a small one: a large upload would fill
        # the pipe, and this thread would block writing it while the worker blocks writing its result.
        if not self.ready:
            return False
        return not self.sent or (len(self.sent) < DecodePool._DEPTH and job.kind == "path")

    def send(self, job: _Job) -> None:
        self.jobs.send((job.index, job.kind, job.payload))
        if not self.sent:
            self.started = time.monotonic()
        self.sent.append(job)

    def stop(self, kill: bool = False) -> None:
        with contextlib.suppress(OSError):
            self.jobs.close()
        if kill:
            with contextlib.suppress(OSError):
                self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.results.close()


def _death(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class DecodePool:
    """Decodes images in `workers` child processes under `limits`; thread-safe, results as futures.

    Each worker holds at most two jobs, so it never waits for the next while the time limit applies to the one it
    is decoding. Use as a context manager, or call `close()`.
    """

    _DEPTH = 2

    def __init__(
        self,
        preprocess: Preprocess,
        *,
        workers: int = 1,
        storage_options: dict[str, Any] | None = None,
        limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> None:
        import pickle

        if workers < 1:
            raise ValueError(f"a decode pool needs at least one worker; got {workers}")
        self.limits = limits
        self._setup = pickle.dumps((os.getpid(), preprocess, storage_options, limits))
        self._size = workers
        self._waiting: deque[_Job] = deque()
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._wake_reader, self._wake_writer = os.pipe()
        os.set_blocking(self._wake_writer, False)  # a full pipe already says "wake up"
        self._workers: list[_Worker] = []
        self._closing = False
        self._stopped = "the decode pool was closed"
        self._ready = threading.Event()
        # One thread starts, feeds, times and replaces the workers: the kernel's parent-death signal is tied to the
        # thread that started a process, and this one lives exactly as long as the pool.
        self._thread = threading.Thread(target=self._run, name="artistid-decode-pool", daemon=True)
        self._thread.start()
        self._ready.wait()

    # the caller's side
    def submit_path(self, index: int, path: str) -> Future[Decoded]:
        return self._submit(_Job(index, "path", path, path))

    def submit_bytes(self, index: int, name: str, data: bytes) -> Future[Decoded]:
        return self._submit(_Job(index, "bytes", (name, data), name))

    def _submit(self, job: _Job) -> Future[Decoded]:
        if self._closing or not self._thread.is_alive():
            raise RuntimeError(self._stopped)
        self._inbox.put(job)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_writer, b"\0")
        return job.future

    def batches(self, jobs: Iterable[tuple[int, str]], batch_size: int) -> Iterator[list[Decoded]]:
        """Decodes (index, path) jobs, yielding batches of results as they finish (not in job order).

        Only a bounded number of decoded images waits for the caller at any time.
        """
        todo = iter(jobs)
        window = max(2 * batch_size, self._size * self._DEPTH * 2)
        running: set[Future[Decoded]] = set()
        batch: list[Decoded] = []
        exhausted = False
        while running or not exhausted:
            while not exhausted and len(running) < window:
                job = next(todo, None)
                if job is None:
                    exhausted = True
                else:
                    running.add(self.submit_path(*job))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                batch.append(future.result())
                if len(batch) == batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def worker_pids(self) -> list[int]:
        return [worker.process.pid for worker in list(self._workers)]

    def close(self) -> None:
        """Stops the workers; jobs not finished yet fail with RuntimeError."""
        if self._closing:
            return
        self._closing = True
        self._inbox.put(None)
        with contextlib.suppress(OSError):
            os.write(self._wake_writer, b"\0")
        self._thread.join()
        os.close(self._wake_reader)
        os.close(self._wake_writer)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the pool thread's side
    def _run(self) -> None:
        try:
            self._workers = [_Worker(self._setup) for _ in range(self._size)]
            self._ready.set()
            self._loop()
        except Exception as exc:  # workers that cannot start: every job waiting is told why
            self._stopped = str(exc)
            logger.error("%s", exc)
        finally:
            self._ready.set()
            for worker in self._workers:
                worker.stop(kill=bool(worker.sent))
                self._fail(worker.sent)
            self._fail(self._waiting)
            while True:
                try:
                    job = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    self._fail([job])

    def _loop(self) -> None:
        while True:
            while True:
                try:
                    job = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    return
                self._waiting.append(job)
            self._dispatch()
            self._collect(self._wait())

    def _dispatch(self) -> None:
        for worker in sorted(self._workers, key=lambda w: len(w.sent)):
            while self._waiting and worker.can_take(self._waiting[0]):
                job = self._waiting.popleft()
                if not job.dispatched:
                    job.dispatched = True
                    if not job.future.set_running_or_notify_cancel():
                        continue
                try:
                    worker.send(job)
                except OSError:  # it died since: its closed pipe reports it, and this job goes to another
                    self._waiting.appendleft(job)
                    break

    def _wait(self) -> list[Any]:
        busy = [w for w in self._workers if w.sent]
        timeout = None
        if busy:
            deadline = min(w.started for w in busy) + self.limits.seconds
            timeout = max(0.0, deadline - time.monotonic())
        # A worker that dies is seen through its results pipe, whose far end then closes (EOF).
        return wait_ready([self._wake_reader, *(w.results for w in self._workers)], timeout)

    def _collect(self, ready: list[Any]) -> None:
        if self._wake_reader in ready:
            os.read(self._wake_reader, 4096)
        now = time.monotonic()
        for position, worker in enumerate(self._workers):
            if worker.results in ready:
                try:
                    decoded: Decoded | None = worker.results.recv()
                except (EOFError, OSError):
                    if not worker.ready:
                        raise RuntimeError(f"a decode worker could not start ({self._death_of(worker)})") from None
                    self._replace(position, f"the decoder crashed on this file ({self._death_of(worker)})")
                    continue
                if decoded is None:
                    worker.ready = True
                    continue
                job = worker.sent.popleft()
                worker.started = time.monotonic()
                job.future.set_result(decoded)
            elif worker.sent and now - worker.started >= self.limits.seconds:
                self._replace(position, f"decoding took longer than {self.limits.seconds:g} s (stopped)", kill=True)

    @staticmethod
    def _death_of(worker: _Worker) -> str:
        try:
            return _death(worker.process.wait(timeout=5))
        except subprocess.TimeoutExpired:
            return "no exit status"

    def _replace(self, position: int, reason: str, *, kill: bool = False) -> None:
        """Charges the worker's current file with `reason`, gives its other jobs to others, starts a new one."""
        worker = self._workers[position]
        worker.stop(kill=kill)
        culprit = worker.sent.popleft() if worker.sent else None
        if culprit is not None:
            logger.warning("%s: %s", culprit.name, reason)
            culprit.future.set_result(Decoded(culprit.index, error=f"{culprit.name}: {reason}"))
        self._waiting.extendleft(reversed(worker.sent))  # the files it had not started go to the others
        self._workers[position] = _Worker(self._setup)

    def _fail(self, jobs: Iterable[_Job]) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError(self._stopped))


if __name__ == "__main__":
    _worker_main()
