"""Fixtures for the storage tests: a real Azurite, and an HTTP server on loopback that injects faults.

Loaded by tests/conftest.py (`pytest_plugins`), so one Azurite serves the whole session.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlparse

import numpy as np
import pytest
from azurite import Azurite
from PIL import Image


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A running Azurite; fails (never skips) where it is not installed: `make test` installs it."""
    with Azurite() as emulator:
        yield emulator


def make_jpeg(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """A small, real JPEG with smooth random content: distinct seeds give perceptually distinct pictures."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class FaultyHTTPServer:
    """Serves `files` over HTTP/1.1; `faults[path]` is a queue of faults, one consumed per GET of that path.

    Faults: "500" (an error response), "reset" (half the body, then a TCP reset), "stall" (headers, then
    silence for `stall_seconds`), "slow" (the body in small pieces with pauses, but whole), "hang" (half the
    body, then silence for a minute; for interrupting a client), "HEAD:500" (a HEAD answered with 500).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: Counter[tuple[str, str]] = Counter()
        self.stall_seconds = 3.0
        self.latency = 0.0  # seconds before every answer, to stand in for a distant server
        self.send_length = True  # False: no Content-Length, the body ends when the connection closes
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{quote(path)}"

    def _next_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests[(method, path)] += 1
            queue = self.faults.get(path, [])
            if method == "HEAD":
                if queue and queue[0] == "HEAD:500":
                    return queue.pop(0)[len("HEAD:") :]
                return None
            while queue and queue[0].startswith("HEAD:"):
                queue.pop(0)
            return queue.pop(0) if queue else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self, method: str) -> None:
                path = unquote(urlparse(self.path).path).lstrip("/")
                time.sleep(owner.latency)
                fault = owner._next_fault(method, path)
                body = owner.files.get(path)
                if fault == "500" or body is None:
                    self.send_response(500 if fault == "500" else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if owner.send_length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.close_connection = True
                self.end_headers()
                if method == "HEAD":
                    return
                if fault == "stall":
                    time.sleep(owner.stall_seconds)
                if fault in ("reset", "hang"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if fault == "hang":
                        time.sleep(60)
                    # SO_LINGER 0 makes close() send a TCP RST: the client sees a reset mid-body.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if fault == "slow":
                    for start in range(0, len(body), 1024):
                        self.wfile.write(body[start : start + 1024])
                        self.wfile.flush()
                        time.sleep(0.01)
                    return
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_HEAD(self) -> None:
                self._answer("HEAD")

        return Handler

    def __enter__(self) -> FaultyHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def http_server() -> Iterator[FaultyHTTPServer]:
    with FaultyHTTPServer() as server:
        yield server
