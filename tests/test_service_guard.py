"""The service is safe to expose: API keys, load shedding, time limits, an access log and Prometheus metrics, on
real `artistid serve` processes over loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest_serve import Server

from artistid.answers import REFUSALS
from artistid.errors import ArtistIdError
from artistid.service_guard import ServiceGuard, check_exposure, load_api_keys

pytestmark = pytest.mark.timeout(600)

KEYS = ("first-key-0123456789", "second-key-abcdefghij")


@pytest.fixture(scope="module")
def paintings(demo_data: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((demo_data / "Test" / "Claude_Monet").glob("*.jpg"))[:4]]


@pytest.fixture(scope="module")
def keyed_server(demo_onnx_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("keyed")
    key_file = folder / "keys.txt"
    key_file.write_text(f"# the team's keys\n{KEYS[0]}\n\n{KEYS[1]}\n")
    server = Server(
        demo_onnx_path, "--api-key-file", str(key_file), "--log-level", "info", "--max-queue", "2",
        "--request-timeout", "10", log=folder / "server.log",
    )  # fmt: skip
    yield server
    server.stop()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_v1_and_metrics_need_a_key_and_healthz_does_not(keyed_server: Server, paintings: list[bytes]) -> None:
    url = keyed_server.url
    assert httpx.get(f"{url}/healthz").status_code == 200
    for path in ("/v1/model", "/metrics"):
        for headers in ({}, _bearer("wrong-key"), {"Authorization": KEYS[0]}, {"Authorization": f"Basic {KEYS[0]}"}):
            response = httpx.get(url + path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "Authorization: Bearer" in response.json()["detail"]
        assert all(httpx.get(url + path, headers=_bearer(key)).status_code == 200 for key in KEYS)
    files = {"files": ("monet.jpg", paintings[0])}
    assert httpx.post(f"{url}/v1/predict", files=files).status_code == 401
    answer = httpx.post(f"{url}/v1/predict", files=files, headers=_bearer(KEYS[1]))
    assert answer.status_code == 200 and answer.json()["predictions"][0]["filename"] == "monet.jpg"
    # The page and the API docs stay open: the page asks for the key itself.
    assert httpx.get(f"{url}/").status_code == 200 and httpx.get(f"{url}/docs").status_code == 200


def test_one_access_log_line_per_request_without_keys_or_image_data(
    keyed_server: Server, paintings: list[bytes]
) -> None:
    marker = f"/v1/model?probe={time.monotonic_ns()}"
    httpx.get(keyed_server.url + marker, headers=_bearer(KEYS[0]))
    files = [("files", (f"p{i}.jpg", data)) for i, data in enumerate(paintings[:3])]
    assert httpx.post(f"{keyed_server.url}/v1/predict", files=files, headers=_bearer(KEYS[0])).status_code == 200
    httpx.get(f"{keyed_server.url}/healthz")  # the line of the request before it is written by now
    lines = []
    for line in keyed_server.log.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    assert all(set(entry) == {"method", "path", "status", "images", "ms"} for entry in lines)
    predicts = [e for e in lines if e["path"] == "/v1/predict" and e["status"] == 200 and e["images"] == 3]
    assert predicts and predicts[-1]["method"] == "POST" and predicts[-1]["ms"] > 0
    assert any(e["path"] == "/v1/model" and e["status"] == 200 for e in lines)
    assert any(e["status"] == 401 for e in lines)
    text = keyed_server.log.read_text()
    assert not any(key in text for key in KEYS) and "wrong-key" not in text
    assert "probe=" not in text  # the path only: query strings can carry what no log should keep


def test_requests_beyond_the_queue_get_503_with_retry_after(keyed_server: Server, paintings: list[bytes]) -> None:
    files = [("files", (f"p{i}.jpg", data)) for i, data in enumerate(paintings)]

    def ask(_: int) -> httpx.Response:
        return httpx.post(f"{keyed_server.url}/v1/predict", files=files, headers=_bearer(KEYS[0]), timeout=120)

    started = time.monotonic()
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(ask, range(48)))
    slowest = time.monotonic() - started
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    refused = [a for a in answers if a.status_code == 503]
    assert refused and statuses.count(200) >= 2
    assert all(a.headers["Retry-After"] == "1" and "--max-queue" in a.json()["detail"] for a in refused)
    assert slowest < 60
    assert ask(0).status_code == 200  # and the service takes work again at once
    metrics = httpx.get(f"{keyed_server.url}/metrics", headers=_bearer(KEYS[0])).text
    assert f'artistid_rejected_requests_total{{reason="queue_full"}} {len(refused)}.0' in metrics


def test_a_slow_uploader_holds_up_no_one_and_runs_out_of_time(keyed_server: Server, paintings: list[bytes]) -> None:
    host, port = "127.0.0.1", keyed_server.port
    slow = [socket.create_connection((host, port)) for _ in range(3)]  # more than --max-queue
    for connection in slow:
        connection.sendall(
            f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEYS[0]}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n".encode()
        )
    answer = httpx.post(
        f"{keyed_server.url}/v1/predict", files={"files": ("monet.jpg", paintings[0])}, headers=_bearer(KEYS[0])
    )
    assert answer.status_code == 200
    for connection in slow:  # answered while the slow uploads were still waiting for their answer
        connection.setblocking(False)
        with pytest.raises(BlockingIOError):
            connection.recv(1)
    for connection in slow:
        connection.settimeout(60)
        reply = b""
        while b"}" not in reply:  # blocks until the server's time limit answers, headers and body
            chunk = connection.recv(4096)
            if not chunk:
                break
            reply += chunk
        connection.close()
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b"the upload did not arrive within 10 s" in reply


def test_metrics_in_prometheus_text_format(keyed_server: Server, paintings: list[bytes], tmp_path: Path) -> None:
    headers = _bearer(KEYS[0])
    httpx.post(f"{keyed_server.url}/v1/predict", files={"files": ("a.jpg", paintings[0])}, headers=headers)
    httpx.post(f"{keyed_server.url}/v1/predict", files={"files": ("notes.jpg", b"not an image")}, headers=headers)
    response = httpx.get(f"{keyed_server.url}/metrics", headers=headers)
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    assert 'artistid_requests_total{endpoint="/v1/predict",status="200"}' in text
    assert 'artistid_requests_total{endpoint="/v1/predict",status="415"}' in text
    assert 'artistid_request_seconds_bucket{endpoint="/v1/predict",le="0.5"}' in text
    assert "artistid_batch_images_count" in text and "artistid_queue_depth 0.0" in text
    assert all(f'artistid_refusals_total{{kind="{kind}"}}' in text for kind in REFUSALS)
    from prometheus_client.parser import text_string_to_metric_families

    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"artistid_requests", "artistid_request_seconds", "artistid_batch_images", "artistid_queue_depth"} <= names


def test_a_key_from_the_environment(demo_onnx_path: Path, tmp_path: Path) -> None:
    os.environ["ARTISTID_API_KEY"] = "from-the-environment"
    try:
        server = Server(demo_onnx_path, log=tmp_path / "env.log")
    finally:
        del os.environ["ARTISTID_API_KEY"]
    try:
        assert httpx.get(f"{server.url}/v1/model").status_code == 401
        assert httpx.get(f"{server.url}/v1/model", headers=_bearer("from-the-environment")).status_code == 200
    finally:
        server.stop()


def test_a_non_loopback_address_without_a_key_needs_no_auth(demo_onnx_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "artistid.cli", "serve", str(demo_onnx_path), "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "ARTISTID_API_KEY"},
        timeout=120,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "artistid: error: listening on 0.0.0.0 would let anyone who can reach it use the service: give API keys "
        "(--api-key-file FILE or $ARTISTID_API_KEY), or --no-auth to serve without them"
    ]
    check_exposure("0.0.0.0", (), no_auth=True)
    check_exposure("0.0.0.0", ["key"], no_auth=False)
    check_exposure("localhost", (), no_auth=False)
    with pytest.raises(ArtistIdError):
        check_exposure("::", (), no_auth=False)


def test_key_files_and_the_comparison(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("  alpha  \n# a comment\n\nbeta\n")
    assert load_api_keys(keys, environ={"ARTISTID_API_KEY": "gamma"}) == ["alpha", "beta", "gamma"]
    keys.write_text("# nothing but comments\n")
    with pytest.raises(ArtistIdError, match="has no keys"):
        load_api_keys(keys, environ={})
    with pytest.raises(ArtistIdError, match="cannot read the API key file"):
        load_api_keys(tmp_path / "missing", environ={})
    guard = ServiceGuard(api_keys=["alpha", "beta"])
    assert guard.authorized(b"Bearer beta") and guard.authorized(b"bearer alpha")
    assert not guard.authorized(b"Bearer alph") and not guard.authorized(b"") and not guard.authorized(b"alpha")
    assert ServiceGuard().authorized(b"")
