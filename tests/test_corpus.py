"""Pillow's own corpus of odd and hostile image files (every format, odd modes, files that once crashed, hung or
exhausted decoders), through `artistid predict` and through the service: every file is used or reported with its
reason, with no traceback, no 5xx, and bounded time and memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import ROOT
from conftest_serve import Server

CORPUS = Path(os.environ.get("ARTISTID_CORPUS", ROOT.parent / "shared" / "corpora" / "pillow-test-images"))
CORPUS_FILES = 1067
# Generous bounds for a loaded two-core machine; a hang or a decompression bomb blows through both.
SECONDS = 300
PEAK_RSS_BYTES = 3 << 30

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def corpus() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.skip(f"Pillow's test images not found at {CORPUS} (set ARTISTID_CORPUS, or clone beside ../shared)")
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file())
    assert len(files) == CORPUS_FILES
    return files


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the peak resident size
            return int(line.split()[1]) * 1024
    return 0


def test_predict_uses_or_reports_every_corpus_file(corpus: list[Path], demo_model_path: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    command = [sys.executable, "-m", "artistid.cli", "predict", str(demo_model_path), *map(str, corpus)]
    run = subprocess.run(
        [*command, "--json", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=SECONDS,
    )
    seconds = time.monotonic() - started
    # Every file Pillow cannot read fails the command (exit status 1) after the rest are answered, in one line.
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().endswith("images could not be used (each is listed with its reason)")
    records = json.loads(run.stdout)
    assert [r["path"] for r in records] == [str(p) for p in corpus]  # every file, once, in order
    answered = [r for r in records if "artist" in r]
    reported = [r for r in records if "error" in r]
    assert len(answered) + len(reported) == CORPUS_FILES
    assert all(r["error"].strip() and "\n" not in r["error"] for r in reported)
    assert len(answered) >= 800  # the files Pillow can read are used, not thrown out with the bad ones
    crashers = [r for r in records if Path(r["path"]).name.startswith(("crash-2020-10-test", "unimplemented_"))]
    assert crashers and all("error" in r for r in crashers)
    assert seconds < SECONDS
    # The largest resident size of any child this test waited for: the CLI (workers are its own children).
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 < PEAK_RSS_BYTES


def test_every_corpus_upload_gets_200_or_a_4xx_naming_the_reason(corpus: list[Path], onnx_server: Server) -> None:
    def upload(path: Path) -> tuple[Path, httpx.Response]:
        with httpx.Client(timeout=120) as client:
            return path, client.post(f"{onnx_server.url}/v1/predict", files={"files": (path.name, path.read_bytes())})

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(upload, corpus))
    seconds = time.monotonic() - started

    statuses = {}
    for path, response in answers:
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (200, 413, 415, 422), f"{path.name}: {response.status_code} {response.text}"
        if response.status_code == 200:
            assert response.json()["predictions"][0]["filename"] == path.name
        else:
            detail = response.json()["detail"]
            assert detail.startswith(f"{path.name}: ") or "upload" in detail, detail
    assert statuses[200] >= 800, statuses
    assert onnx_server.alive()
    assert seconds < SECONDS
    assert _rss(onnx_server.process.pid) < PEAK_RSS_BYTES
