"""Fixtures for the Spark tests beyond one JVM: a standalone cluster, a Spark Connect server, and a CLI runner that
starts `artistid` as its own process (a driver of its own, as a user runs it).

Loaded by tests/conftest.py (`pytest_plugins`). The cluster starts once per session, the Connect server once per
module that asks for it; both stop afterwards. They need Java: `make test` installs it (scripts/install-test-deps.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spark_cluster import ConnectServer, StandaloneCluster

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_BAD_FILES = ("Rembrandt/truncated.jpg", "Rembrandt/notes.png")


def _java() -> None:
    if shutil.which("java") is None:
        pytest.fail("Java is missing: run `make test-deps` (scripts/install-test-deps.sh installs it)")


@pytest.fixture(scope="session")
def spark_cluster() -> Iterator[StandaloneCluster]:
    """A master and two one-core workers, each its own JVM, on loopback."""
    _java()
    with StandaloneCluster(workers=2, cores=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def connect_server(spark_cluster: StandaloneCluster) -> Iterator[ConnectServer]:
    """The pyspark distribution's Spark Connect server, running its jobs on the standalone cluster.

    Module-scoped: while it runs it holds the cluster's cores, so it stops when its module's tests are done.
    """
    with ConnectServer(master=spark_cluster.url) as server:
        yield server


@pytest.fixture(scope="session")
def cluster_paintings(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 real paintings in artist folders, one loose (unknown artist), a truncated JPEG and a non-image."""
    root = tmp_path_factory.mktemp("cluster-paintings")
    for artist in sorted(p for p in (demo_data / "Test").iterdir() if p.is_dir()):
        (root / artist.name).mkdir()
        for image in sorted(artist.glob("*.jpg"))[:6]:
            shutil.copy(image, root / artist.name / image.name)
    shutil.copy(sorted((demo_data / "Test" / "Claude_Monet").glob("*.jpg"))[6], root / "unknown-painter.jpg")
    whole = sorted((root / "Rembrandt").glob("*.jpg"))[0].read_bytes()
    (root / CLUSTER_BAD_FILES[0]).write_bytes(whole[: len(whole) // 3])
    (root / CLUSTER_BAD_FILES[1]).write_bytes(b"not a picture at all")
    return root


def run_artistid(arguments: list[str], env: dict[str, str], timeout: float = 600) -> Any:
    """Runs `artistid ARGUMENTS --json` as its own process and returns the parsed JSON it prints."""
    result = subprocess.run(
        [sys.executable, "-m", "artistid.cli", *arguments, "--json"],
        env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"artistid {' '.join(arguments)} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return json.loads(result.stdout)
