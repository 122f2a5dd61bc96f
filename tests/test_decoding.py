"""The decode pool: a file that raises, crashes its worker, hangs or asks for too much memory costs only itself,
and workers never outlive the process that started them. Real processes and real signals throughout."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artistid.decoding import DecodeLimits, DecodePool
from artistid.errors import ImageError, NotAnImageError
from artistid.images import Preprocess, load_image


@pytest.fixture(scope="module")
def slow_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small file that takes a while to decode: 100 million pixels of one grey."""
    path = tmp_path_factory.mktemp("slow") / "huge-grey.png"
    Image.new("L", (10_000, 10_000), 128).save(path)
    return path


@pytest.fixture(scope="module")
def painting(demo_data: Path) -> Path:
    return sorted((demo_data / "Test" / "Claude_Monet").glob("*.jpg"))[0]


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.05)


def test_an_unexpected_exception_from_a_codec_is_an_image_error_naming_the_file() -> None:
    # A DDS file with pixel-format flags Pillow does not implement: it raises NotImplementedError, not OSError.
    header = struct.pack("<4s7I44s", b"DDS ", 124, 0x1007, 8, 8, 0, 0, 0, bytes(44))
    pixel_format = struct.pack("<8I", 32, 8, 0, 0, 0, 0, 0, 0)
    data = header + pixel_format + bytes(24 + 256)
    with pytest.raises(ImageError) as caught:
        load_image(data, name="odd.dds")
    assert str(caught.value) == "odd.dds: cannot open image: NotImplementedError: Unknown pixel format flags 8"


def test_results_and_errors_of_ordinary_files(painting: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not a painting")
    with DecodePool(Preprocess(), workers=2) as pool:
        good = pool.submit_path(0, str(painting)).result(timeout=60)
        text = pool.submit_bytes(1, "notes.jpg", b"not a painting").result(timeout=60)
        missing = pool.submit_path(2, str(tmp_path / "missing.jpg")).result(timeout=60)
    assert good.pixels is not None and good.pixels.shape == (224, 224, 3)
    assert np.array_equal(good.pixels, load_image(painting))  # the same pixels as decoding here
    assert text.pixels is None and text.not_an_image and text.error == "notes.jpg: not an image Pillow can read"
    with pytest.raises(NotAnImageError):
        text.pixels_or_raise()
    assert missing.error == f"{tmp_path / 'missing.jpg'}: file not found"


def test_a_worker_killed_mid_file_costs_only_that_file(slow_png: Path, painting: Path) -> None:
    with DecodePool(Preprocess(), workers=1) as pool:
        slow = pool.submit_path(0, str(slow_png))
        after = [pool.submit_path(n, str(painting)) for n in range(1, 4)]
        _wait_until(slow.running, 60, "decoding the slow file")
        (victim,) = pool.worker_pids()
        os.kill(victim, signal.SIGKILL)  # as the out-of-memory killer would
        result = slow.result(timeout=60)
        assert result.pixels is None
        assert result.error == f"{slow_png}: the decoder crashed on this file (killed by SIGKILL)"
        assert all(f.result(timeout=60).pixels is not None for f in after)
        assert pool.worker_pids() != [victim]


def test_a_file_over_the_time_limit_is_stopped_and_reported(slow_png: Path, painting: Path) -> None:
    with DecodePool(Preprocess(), workers=1, limits=DecodeLimits(seconds=0.2)) as pool:
        hung = pool.submit_path(0, str(slow_png))
        next_one = pool.submit_path(1, str(painting))
        assert hung.result(timeout=60).error == f"{slow_png}: decoding took longer than 0.2 s (stopped)"
        assert next_one.result(timeout=60).pixels is not None


def test_a_file_over_the_memory_limit_fails_alone(slow_png: Path, painting: Path) -> None:
    with DecodePool(Preprocess(), workers=1, limits=DecodeLimits(memory_bytes=32 << 20)) as pool:
        big = pool.submit_path(0, str(slow_png)).result(timeout=60)
        small = pool.submit_path(1, str(painting)).result(timeout=60)
    assert big.pixels is None and "out of memory while decoding" in big.error, big.error
    assert small.pixels is not None


_PARENT = """
import sys
from artistid.decoding import DecodePool
from artistid.images import Preprocess
pool = DecodePool(Preprocess(), workers=2)
futures = [pool.submit_path(0, sys.argv[1])]
print(*pool.worker_pids(), flush=True)
sys.stdin.read()  # holds on until killed
"""


def test_workers_exit_when_their_parent_is_killed(slow_png: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(slow_png)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    _wait_until(lambda: not any(_alive(pid) for pid in workers), 5, "every worker gone")
