"""MicroBatcher: concurrent requests share model calls, each gets its own rows back, errors reach the caller."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from artistid.batching import MicroBatcher


class SlowModel:
    """Doubles its input; the first call says it has started and blocks until released, so that later requests
    queue up behind it."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not self.calls:
            self.started.set()
            assert self.release.wait(10), "never released"
        self.calls.append(len(batch))
        return batch * 2


def test_requests_waiting_together_run_as_one_batch_in_order() -> None:
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch=32)
    first = batcher.submit(np.array([[1.0]]))
    assert model.started.wait(10)  # the worker is now inside the first call
    queued = [batcher.submit(np.full((size, 1), float(i))) for i, size in enumerate([1, 2, 3, 1], start=10)]
    model.release.set()
    assert first.result(10).tolist() == [[2.0]]
    for i, (future, size) in enumerate(zip(queued, [1, 2, 3, 1], strict=True), start=10):
        assert future.result(10).tolist() == [[2.0 * i]] * size
    assert model.calls == [1, 7]
    assert (batcher.stats.requests, batcher.stats.batches, batcher.stats.largest_batch) == (5, 2, 7)
    batcher.close()


def test_a_batch_never_exceeds_max_batch() -> None:
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch=4)
    blocker = batcher.submit(np.zeros((1, 1)))
    assert model.started.wait(10)
    futures = [batcher.submit(np.zeros((3, 1))) for _ in range(3)]
    model.release.set()
    blocker.result(10)
    for future in futures:
        assert future.result(10).shape == (3, 1)
    assert model.calls == [1, 3, 3, 3]
    batcher.close()


def test_an_error_reaches_its_callers_and_the_worker_keeps_going() -> None:
    def model(batch: np.ndarray) -> np.ndarray:
        if (batch < 0).any():
            raise ValueError("negative pixels")
        return batch

    batcher = MicroBatcher(model)
    with pytest.raises(ValueError, match="negative pixels"):
        batcher.submit(np.array([[-1.0]])).result(10)
    assert batcher.submit(np.array([[5.0]])).result(10).tolist() == [[5.0]]
    batcher.close()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit(np.array([[1.0]])).result(1)


def test_close_finishes_what_was_queued() -> None:
    model = SlowModel()
    batcher = MicroBatcher(model)
    futures = [batcher.submit(np.ones((1, 1))) for _ in range(3)]
    model.release.set()
    batcher.close()
    assert all(f.done() and f.result().tolist() == [[2.0]] for f in futures)


def test_a_request_that_gave_up_while_waiting_is_not_computed_and_batch_sizes_are_reported() -> None:
    model = SlowModel()
    sizes: list[int] = []
    batcher = MicroBatcher(model, max_batch=32, on_batch=sizes.append)
    first = batcher.submit(np.array([[1.0]]))
    assert model.started.wait(10)  # the worker is now inside the first call
    abandoned = batcher.submit(np.zeros((5, 1)))
    kept = batcher.submit(np.array([[3.0]]))
    assert abandoned.cancel()  # as the service does when a request runs out of time
    model.release.set()
    assert first.result(10).tolist() == [[2.0]] and kept.result(10).tolist() == [[6.0]]
    assert model.calls == [1, 1] and sizes == [1, 1]
    batcher.close()
