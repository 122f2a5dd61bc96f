"""Micro-batching: requests from many threads share one model call, so throughput grows with load.

One worker thread owns the model. Each time it is free it takes every request already waiting (up to `max_batch`
images) and runs them as one batch. It never waits for a batch to fill: one request alone is served at once, and
under load the queue that builds up while the model runs becomes the next batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from artistid.errors import UsageError

__all__ = ["BatchStats", "MicroBatcher"]

logger = logging.getLogger(__name__)


@dataclass
class BatchStats:
    requests: int = 0
    images: int = 0
    batches: int = 0
    largest_batch: int = 0


class MicroBatcher:
    """Calls `predict` (n images -> n rows) on batches gathered from concurrent `submit` calls."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise UsageError(f"max_batch must be at least 1; got {max_batch}")
        self.predict = predict
        self.max_batch = max_batch
        self.on_batch = on_batch  # told the number of images of every model call
        self.stats = BatchStats()
        self._queue: queue.Queue[tuple[np.ndarray, Future[np.ndarray]] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="artistid-batcher", daemon=True)
        self._worker.start()

    def submit(self, images: np.ndarray) -> Future[np.ndarray]:
        """Queues a request's images; the future gives their rows of `predict`, or its exception."""
        future: Future[np.ndarray] = Future()
        if not self._worker.is_alive():
            future.set_exception(RuntimeError("the batching worker has stopped"))
        else:
            self._queue.put((images, future))
        return future

    def close(self) -> None:
        """Finishes the requests already queued, then stops the worker."""
        self._queue.put(None)
        self._worker.join()

    def _run(self) -> None:
        carried: tuple[np.ndarray, Future[np.ndarray]] | None = None
        while True:
            first = carried or self._queue.get()
            carried = None
            if first is None:  # close(): everything queued before it is done
                return
            batch, size, stop = [first], len(first[0]), False
            while size < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                if size + len(item[0]) > self.max_batch:
                    carried = item  # it starts the next batch
                    break
                batch.append(item)
                size += len(item[0])
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[tuple[np.ndarray, Future[np.ndarray]]]) -> None:
        # A request that gave up (its time limit passed) while it waited is not computed.
        batch = [(images, future) for images, future in batch if future.set_running_or_notify_cancel()]
        if not batch:
            return
        sizes = [len(images) for images, _ in batch]
        if self.on_batch is not None:
            self.on_batch(sum(sizes))
        try:
            rows = self.predict(np.concatenate([images for images, _ in batch]))
        except Exception as exc:  # the callers get the error; the worker keeps serving
            logger.exception("batch of %d images failed", sum(sizes))
            for _, future in batch:
                future.set_exception(exc)
            return
        self.stats.requests += len(batch)
        self.stats.images += sum(sizes)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, sum(sizes))
        start = 0
        for (_, future), size in zip(batch, sizes, strict=True):
            future.set_result(rows[start : start + size])
            start += size
