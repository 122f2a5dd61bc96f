"""A stand-in for the Hugging Face Hub on loopback, and tiny timm backbones with locally made weights.

The server answers `HEAD`/`GET /<org>/<repo>/resolve/<revision>/<filename>` with the headers huggingface_hub reads:
`X-Repo-Commit`, `ETag` (for weights, as for the Hub's LFS files, `X-Linked-Etag` = the content's sha256) and
`Content-Length`. Point huggingface_hub at it with HF_ENDPOINT (`HubEnvironment.env` for subprocesses, or
`HubEnvironment.apply` in-process, since huggingface_hub reads its settings when it is imported).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    data: bytes
    lfs: bool  # weights are LFS files: the Hub names them by their sha256
    corrupt: bool = False  # serve flipped bytes under the true headers, as a broken proxy would


@dataclass
class StandInHub:
    files: dict[tuple[str, str], HubFile] = field(default_factory=dict)  # (repo_id, filename) -> file
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, "repo/filename")
    commit: str = COMMIT
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo_id: str, filename: str, data: bytes, *, lfs: bool = False) -> None:
        self.files[(repo_id, filename)] = HubFile(data, lfs)

    def start(self) -> StandInHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, body: bool) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                # <org>/<repo>/resolve/<revision>/<filename...>
                if len(parts) < 5 or parts[2] != "resolve":
                    self.send_error(404)
                    return
                repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
                hub.requests[(self.command, f"{repo_id}/{filename}")] += 1
                found = hub.files.get((repo_id, filename))
                if found is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Error-Message", "Entry not found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = found.data
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.commit)
                if found.lfs:
                    sha256 = hashlib.sha256(data).hexdigest()
                    self.send_header("X-Linked-Etag", f'"{sha256}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("ETag", f'"{sha256}"')
                else:
                    self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(bytes(b ^ 0xFF for b in data[:64]) + data[64:] if found.corrupt else data)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def tiny_weights(model_name: str, seed: int = 0) -> bytes:
    """Locally made weights for a timm architecture (as the Hub would hold them: a safetensors state dict)."""
    import timm
    import torch
    from safetensors.torch import save

    torch.manual_seed(seed)
    network = timm.create_model(model_name, pretrained=False)
    return save({k: v.contiguous() for k, v in network.state_dict().items()})


def hub_config(architecture: str, **pretrained: Any) -> bytes:
    """A timm config.json, as `timm.models.push_to_hf_hub` writes it."""
    config = {
        "architecture": architecture,
        "num_classes": 1000,
        "num_features": 0,
        "pretrained_cfg": {
            "input_size": [3, 160, 160],
            "interpolation": "bicubic",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "crop_pct": 0.95,
            "fixed_input_size": True,
            **pretrained,
        },
    }
    return json.dumps(config).encode()


@dataclass
class HubEnvironment:
    """Where huggingface_hub looks: the stand-in's URL, a private cache folder, online or not."""

    endpoint: str
    home: Path
    offline: bool = False

    @property
    def env(self) -> dict[str, str]:
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HOME": str(self.home),
            "HF_HUB_OFFLINE": "1" if self.offline else "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The same settings for this process, whose huggingface_hub read its environment at import."""
        from huggingface_hub import constants

        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(constants, "ENDPOINT", self.endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(self.home / "hub"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", self.offline)
