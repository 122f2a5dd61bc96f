"""What makes the service safe to expose: API keys, load shedding, time limits, an access log and metrics.

- API keys (`--api-key-file`, one per line, or `ARTISTID_API_KEY`): every `/v1` endpoint and `/metrics` answer 401
  without `Authorization: Bearer <key>`; keys are compared in constant time and never logged. `/healthz`, the page
  and the API docs stay open.
- Load shedding: at most `max_queue` requests are decoded or wait for the model at once; one more is answered 503
  with `Retry-After` instead of queueing without bound. Requests are counted once their upload has arrived, so a
  client that uploads slowly holds no place that others need.
- Time limits: a request that has not been answered within `request_seconds` is answered 408 (its upload had not
  arrived) or 503.
- One JSON access-log line per request (logger `artistid.access`: method, path, status, images, ms; never headers
  or image data), and `GET /metrics` in Prometheus text format.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from artistid.answers import REFUSALS
from artistid.errors import ArtistIdError

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_REQUEST_SECONDS",
    "GuardMiddleware",
    "ServiceGuard",
    "check_exposure",
    "load_api_keys",
]

access_log = logging.getLogger("artistid.access")

API_KEY_ENV = "ARTISTID_API_KEY"
# Enough to keep the model busy under any load, few enough that the last one waits seconds, not minutes.
DEFAULT_MAX_QUEUE = 32
DEFAULT_REQUEST_SECONDS = 60.0
RETRY_AFTER_SECONDS = 1
# Paths reported by name in the metrics; anything else is "other", so that scanners cannot add label values.
_ENDPOINTS = ("/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/metrics", "/", "/docs", "/openapi.json")


def load_api_keys(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The keys from `path` (one per line; blank lines and lines starting with # skipped) and $ARTISTID_API_KEY."""
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ArtistIdError(f"{path}: cannot read the API key file ({reason})") from None
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ArtistIdError(f"{path}: the API key file has no keys (one key per line)")
    from_environment = environ.get(API_KEY_ENV, "").strip()
    if from_environment:
        keys.append(from_environment)
    return keys


def _is_loopback(host: str) -> bool:
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_exposure(host: str, keys: Sequence[str], no_auth: bool) -> None:
    """Refuses to serve anyone who can reach `host` unless that is asked for in so many words."""
    if keys and no_auth:
        raise ArtistIdError("--no-auth and API keys contradict each other: give one or the other")
    if not keys and not no_auth and not _is_loopback(host):
        raise ArtistIdError(
            f"listening on {host} would let anyone who can reach it use the service: give API keys "
            f"(--api-key-file FILE or ${API_KEY_ENV}), or --no-auth to serve without them"
        )


def _endpoint(path: str) -> str:
    if path in _ENDPOINTS:
        return path
    return "/static" if path.startswith(("/static/", "/docs-assets/")) else "other"


class ServiceGuard:
    """The keys, the admission count and the metrics of one app."""

    def __init__(
        self,
        *,
        api_keys: Sequence[str] = (),
        max_queue: int = DEFAULT_MAX_QUEUE,
        request_seconds: float = DEFAULT_REQUEST_SECONDS,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1; got {max_queue}")
        if request_seconds <= 0:
            raise ValueError(f"the request time limit must be positive; got {request_seconds}")
        self._keys = [key.encode() for key in api_keys]
        self.max_queue = max_queue
        self.request_seconds = request_seconds
        self.admitted = 0
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "artistid_requests", "HTTP requests answered.", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "artistid_request_seconds",
            "Time from a request's arrival to its answer.",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.batch_images = Histogram(
            "artistid_batch_images",
            "Images per model call (micro-batching).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "artistid_queue_depth", "Requests being decoded or waiting for the model.", registry=self.registry
        )
        self.rejected = Counter(
            "artistid_rejected_requests",
            "Requests turned away: unauthorized, queue_full, timeout.",
            ["reason"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "artistid_refusals",
            "Images answered with a refusal instead of an artist.",
            ["kind"],
            registry=self.registry,
        )
        for kind in REFUSALS:
            self.refusals.labels(kind=kind)
        for reason in ("unauthorized", "queue_full", "timeout"):
            self.rejected.labels(reason=reason)

    def authorized(self, header: bytes) -> bool:
        """Whether an Authorization header carries one of the keys; every key is compared, in constant time."""
        if not self._keys:
            return True
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(given.strip(), key)
        return found

    async def admit(self, request: Request) -> AsyncIterator[None]:
        """A FastAPI dependency: holds one of `max_queue` places while the request is decoded and predicted.

        FastAPI has read the whole upload before its dependencies run, so only requests ready to work count.
        """
        form = await request.form()  # already parsed: Starlette keeps it on the request
        request.state.images = sum(isinstance(value, UploadFile) for _, value in form.multi_items())
        if self.admitted >= self.max_queue:
            self.rejected.labels(reason="queue_full").inc()
            raise HTTPException(
                503,
                f"the service is busy: {self.max_queue} requests are already waiting (its --max-queue); "
                f"retry in {RETRY_AFTER_SECONDS} s",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.admitted += 1  # one event loop runs every dependency: no lock needed
        self.queue_depth.set(self.admitted)
        try:
            yield
        finally:
            self.admitted -= 1
            self.queue_depth.set(self.admitted)

    def observe_batch(self, images: int) -> None:
        self.batch_images.observe(images)

    def count_answers(self, artists: Iterable[str]) -> None:
        for artist in artists:
            if artist in REFUSALS:
                self.refusals.labels(kind=artist).inc()

    def metrics(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class GuardMiddleware:
    """Keys, the per-request time limit, the access log and the request metrics, around the whole app."""

    def __init__(self, app: ASGIApp, guard: ServiceGuard) -> None:
        self.app = app
        self.guard = guard

    @staticmethod
    def _protected(path: str) -> bool:
        return path.startswith("/v1/") or path == "/metrics"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope.setdefault("state", {})  # where the endpoint leaves the number of images, for the log
        status = 500
        responded = False
        body_done = False

        async def sending(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
            await send(message)

        async def receiving() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        try:
            headers = dict(scope["headers"])
            if self._protected(scope["path"]) and not self.guard.authorized(headers.get(b"authorization", b"")):
                self.guard.rejected.labels(reason="unauthorized").inc()
                answer = JSONResponse(
                    {"detail": "this service needs an API key: send the header 'Authorization: Bearer <key>'"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await answer(scope, receive, sending)
                return
            try:
                async with asyncio.timeout(self.guard.request_seconds):
                    await self.app(scope, receiving, sending)
            except TimeoutError:
                if responded:
                    raise
                self.guard.rejected.labels(reason="timeout").inc()
                limit = f"{self.guard.request_seconds:g} s (the server's --request-timeout)"
                if body_done:
                    answer = JSONResponse(
                        {"detail": f"the request was not answered within {limit}; retry later"},
                        status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                    )
                else:
                    answer = JSONResponse({"detail": f"the upload did not arrive within {limit}"}, status_code=408)
                await answer(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            endpoint = _endpoint(scope["path"])
            self.guard.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.guard.latency.labels(endpoint=endpoint).observe(seconds)
            images = scope.get("state", {}).get("images", 0)
            line = {"method": scope["method"], "path": scope["path"], "status": status, "images": images}
            access_log.info(json.dumps({**line, "ms": round(seconds * 1000, 1)}))
