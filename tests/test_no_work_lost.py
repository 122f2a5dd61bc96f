"""No work lost: a run killed with SIGKILL leaves no decoder behind and keeps the features it cached for the rerun; a
full disk gives one line naming the path, no half-written file and no corrupt cache entry.

Real processes, real signals, and a real full filesystem: a small tmpfs mounted for the test.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from artistid.storage import write_bytes_atomic

pytestmark = pytest.mark.timeout(600)

CLI = [sys.executable, "-m", "artistid.cli"]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _cached_vectors(database: Path) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
            return db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def _wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.1)


def test_a_killed_train_leaves_no_decoder_and_the_rerun_starts_from_its_cache(demo_data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    database = cache / "features-v1.sqlite"
    model = tmp_path / "model.safetensors"
    run = subprocess.Popen(
        [
            *CLI,
            "train",
            str(demo_data),
            "-o",
            str(model),
            "--preset",
            "reference",
            "--cache-dir",
            str(cache),
            "--workers",
            "2",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_until(lambda: _cached_vectors(database) >= 32, 300, "32 vectors cached")
    decoders = _children(run.pid)
    assert len(decoders) >= 2
    run.send_signal(signal.SIGKILL)  # as the out-of-memory killer or a scheduler does
    run.wait()
    _wait_until(lambda: not any(_alive(pid) for pid in decoders), 5, "every decode worker gone")
    assert not model.exists() and not list(tmp_path.glob(".*"))  # no model, and no half of one
    kept = _cached_vectors(database)

    again = [*CLI, "featurize", str(demo_data / "Train"), "-o", str(tmp_path / "train.parquet")]
    rerun = subprocess.run(
        [*again, "--cache-dir", str(cache), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["reused"] >= kept >= 32  # what the killed run had computed is not computed again
    assert summary["images"] + summary["skipped"] == len(list((demo_data / "Train").glob("*/*")))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real filesystem that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full filesystem) needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(disk: Path, leave: int) -> Path:
    """Fills `disk` with a file until about `leave` bytes are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    filler.write_bytes(bytes(max(0, free - leave)))
    return filler


def test_a_full_disk_is_one_line_naming_the_path_and_leaves_no_half_file(small_disk: Path) -> None:
    filler = _fill(small_disk, 0)
    target = small_disk / "model.safetensors"
    with pytest.raises(OSError) as caught:
        write_bytes_atomic(target, bytes(100_000))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no temporary file left over
    filler.unlink()


def test_featurize_on_a_full_disk_keeps_a_sound_cache(demo_data: Path, small_disk: Path) -> None:
    filler = _fill(small_disk, 160_000)
    cache, output = small_disk / "cache", small_disk / "features.parquet"
    command = [*CLI, "featurize", str(demo_data / "Test"), "-o", str(output), "--cache-dir", str(cache), "-q"]
    full = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert full.returncode == 1
    assert "Traceback" not in full.stderr
    assert full.stderr.strip().splitlines()[-1] == f"artistid: error: {output}: No space left on device"
    assert not output.exists() and not list(small_disk.glob(".*.tmp"))

    with sqlite3.connect(cache / "features-v1.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT dim, length(vector) FROM features").fetchall()
    assert all(length == 4 * dim for dim, length in rows)  # every entry whole

    filler.unlink()  # room again: the rerun finishes, from what the cache kept
    rerun = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["reused"] >= len(rows) and summary["images"] == 60


def test_a_cache_that_fills_up_is_said_once_and_the_run_goes_on(
    demo_data: Path, small_disk: Path, tmp_path: Path
) -> None:
    _fill(small_disk, 300_000)  # room for the first batch or two of vectors, not for all 60
    cache, output = small_disk / "cache", tmp_path / "features.parquet"
    run = subprocess.run(
        [*CLI, "featurize", str(demo_data / "Test"), "-o", str(output), "--cache-dir", str(cache), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["images"] == 60 and output.exists()
    assert run.stderr.strip().splitlines() == [
        f"{cache / 'features-v1.sqlite'}: cannot write to the feature cache (database or disk is full); "
        "going on without saving to it"
    ]
    with sqlite3.connect(cache / "features-v1.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT dim, length(vector) FROM features").fetchall()
    assert len(rows) >= 16 and all(length == 4 * dim for dim, length in rows)  # the batches before are kept whole


def test_evaluate_on_a_full_disk_still_shows_its_metrics(
    demo_model_path: Path, demo_data: Path, small_disk: Path
) -> None:
    _fill(small_disk, 6_000)
    report = small_disk / "report"
    run = subprocess.run(
        [*CLI, "evaluate", str(demo_model_path), str(demo_data), "--report", str(report), "--json", "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 1
    assert json.loads(run.stdout)["accuracy"] > 0.5  # the work is shown, not lost
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(f"artistid: error: {report}/") and line.endswith(": No space left on device")
    written = {p.name: p for p in report.iterdir()} if report.exists() else {}
    assert not [name for name in written if name.endswith(".tmp")]
    if "metrics.json" in written:  # whatever was written is whole
        json.loads(written["metrics.json"].read_text())
    if "predictions.csv" in written:
        assert written["predictions.csv"].read_text().count("\n") == 61
