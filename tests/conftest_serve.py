"""Fixtures for the service: an exported ONNX model, and real `artistid serve` processes on loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# Runs the CLI with `import torch` made impossible: the ONNX server must work without it.
WITHOUT_TORCH = (
    "import sys; sys.modules['torch'] = None; from artistid.cli import main; sys.argv[0] = 'artistid'; main()"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`artistid serve` in a child process, on a free loopback port, until `stop()`."""

    def __init__(self, model: Path, *args: str, without_torch: bool = False, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        entry = ["-c", WITHOUT_TORCH] if without_torch else ["-m", "artistid.cli"]
        command = [sys.executable, *entry, "serve", str(model), "--port", str(self.port), "--log-level", "warning"]
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                [*command, *args], stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        self._wait_ready(timeout=120)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log.read_text()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def demo_onnx_path(demo_model, demo_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from artistid.export import export_onnx

    output = tmp_path_factory.mktemp("onnx") / "demo.onnx"
    export_onnx(demo_model, output, source=str(demo_model_path))
    return output


@pytest.fixture(scope="session")
def torch_server(demo_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo model on PyTorch, with a 2 MB upload limit so that oversize uploads stay cheap to send."""
    server = Server(
        demo_model_path, "--runtime", "torch", "--max-upload-mb", "2", log=tmp_path_factory.mktemp("logs") / "torch.log"
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def onnx_server(demo_onnx_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The exported demo model on ONNX Runtime, in a process where `import torch` fails."""
    server = Server(demo_onnx_path, without_torch=True, log=tmp_path_factory.mktemp("logs") / "onnx.log")
    yield server
    server.stop()
