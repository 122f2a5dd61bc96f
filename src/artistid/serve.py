"""`artistid serve MODEL`: a web service and a page that name the artist of a painting.

    POST /v1/predict   multipart `files` (one or more images) -> artist, probability and top-k per image
    POST /v1/explain   one image (multipart `file`) -> PNG: where the model looked (Grad-CAM; model files, not .onnx)
    GET  /v1/model     the model card: classes, backbone, preprocessing, calibration, training, metrics
    GET  /healthz      liveness, and how requests were batched (open without an API key, for probes)
    GET  /metrics      Prometheus metrics (`artistid.service_guard`)
    GET  /             the page: drop a painting, see the artist and the probabilities
    GET  /docs         OpenAPI

A model file (.safetensors) runs its backbone on the runtime asked for (auto: the fastest measured on this machine;
`artistid.runtimes`) and explains with PyTorch; an .onnx file from `artistid export` runs on ONNX Runtime, and that
path never imports torch. Requests are decoded in the thread pool and then micro-batched for the model
(`artistid.batching`). Bad input is a 4xx naming the file and the reason: 413 over the upload limit, 415 for a file
that is not an image, 422 for one that cannot be decoded (truncated, decompression bomb, empty, or one that crashes
or hangs its decoder: uploads are decoded in worker processes, `artistid.decoding`). API keys, load shedding, the
request time limit, the access log and the metrics are `artistid.service_guard`'s.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files as package_files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from artistid.answers import Refusal
from artistid.batching import MicroBatcher
from artistid.card import (
    BackboneCard,
    CalibrationCard,
    HeadCard,
    LibraryVersions,
    Metrics,
    ModelCard,
    TrainingCard,
)
from artistid.decoding import DecodePool
from artistid.errors import ArtistIdError, ImageError, ModelFileError, NotAnImageError, UsageError
from artistid.features import decode_workers
from artistid.images import Preprocess
from artistid.onnx_model import OnnxModel
from artistid.refusals import split_scores, stack_scores
from artistid.runtimes import RUNTIMES, Runtime
from artistid.service_guard import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_REQUEST_SECONDS,
    GuardMiddleware,
    ServiceGuard,
    check_exposure,
)
from artistid.storage import file_sha256

if TYPE_CHECKING:
    from artistid.explain import Explanation

__all__ = [
    "DEFAULT_MAX_UPLOAD_MB",
    "ServedModel",
    "check_model_file",
    "create_app",
    "load_served_model",
    "runtime_for",
    "serve",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 20.0
MAX_FILES = 64
# Small batches: batching saves per-call overhead and keeps the model busy, but on a few cores a larger batch costs
# more per image and adds latency (docs/serve.md, "Micro-batching").
DEFAULT_MAX_BATCH = 4
STATIC = package_files("artistid") / "static"


# --- the model behind the service ------------------------------------------------------------------------------
class ModelIdentity(BaseModel):
    name: str = Field(description="File name of the model being served.")
    sha256: str = Field(description="sha256 of that file: which model answered.")
    backbone: str
    runtime: Runtime
    precision: str = Field(description="Arithmetic of the forward pass: fp32, bf16 or int8.")


class ModelInfo(BaseModel):
    """The model card (`artistid.card.ModelCard`) of the model being served, and which file it is."""

    model: ModelIdentity
    classes: list[str] = Field(description="The artists, in the order of the probabilities.")
    threshold: float | None = Field(
        description='Below this top probability the artist is "unknown" (the same as calibration.rules.threshold).'
    )
    backbone: BackboneCard
    preprocess: Preprocess
    head: HeadCard
    precision: str = Field(description="Arithmetic the model's features were computed with when it was trained.")
    calibration: CalibrationCard = Field(description="The temperature and the refusal rules, and how they were fitted.")
    training: TrainingCard | None
    metrics: Metrics | None = Field(description="Test-set metrics recorded at training time.")
    versions: LibraryVersions
    refusals: dict[str, Any] = Field(
        default_factory=dict, description='How "not a painting" and "unknown" (from --others) are decided.'
    )

    @classmethod
    def of(cls, identity: ModelIdentity, card: ModelCard) -> ModelInfo:
        return cls(
            model=identity,
            classes=list(card.classes),
            threshold=card.rules.threshold,
            backbone=card.backbone,
            preprocess=card.preprocess,
            head=card.head,
            precision=card.precision,
            calibration=card.calibration,
            training=card.training,
            metrics=card.metrics,
            versions=card.versions,
            refusals=card.refusals,
        )


@dataclass
class ServedModel:
    """What the service needs from a model, whichever runtime computes it."""

    # uint8 (n, size, size, 3) -> probabilities (n, classes) and the refusal scores (`refusals.stack_scores`)
    predict: Callable[[np.ndarray], np.ndarray]
    card: ModelCard  # decides the answers
    info: ModelInfo
    # (image bytes, name, artist or None) -> the Grad-CAM heat map; needs gradients, so PyTorch only.
    explain: Callable[[bytes, str, str | None], Explanation] | None = None


def _is_onnx_file(path: str | Path) -> bool:
    return str(path).lower().endswith(".onnx")


def runtime_for(path: str | Path, runtime: str | None = None) -> str:
    """The runtime asked for: onnx for an exported .onnx file; for a model file auto (the default) or one named."""
    if runtime is None:
        return "onnx" if _is_onnx_file(path) else "auto"
    if runtime not in ("auto", *RUNTIMES):
        raise UsageError(f"runtime must be auto, torch, onnx or openvino; got {runtime!r}")
    return runtime


def _load_onnx(path: Path) -> ServedModel:
    model = OnnxModel.load(path)
    identity = ModelIdentity(
        name=path.name,
        sha256=model.sha256,
        backbone=model.card.backbone.name,
        runtime="onnx",
        precision=model.card.precision,
    )
    return ServedModel(model.scores_pixels, model.card, ModelInfo.of(identity, model.card))


def _load_model_file(path: Path, runtime: str) -> ServedModel:
    from artistid.model import Model

    model = Model.load(path, runtime=runtime)
    model.extractor.latency = True  # a visitor waits for one painting's answer: every core on each request
    if model.extractor.runtime == "torch":
        import torch

        # One intra-op thread: waking a second OpenMP thread from the batcher thread on every call costs more than
        # it gives at these batch sizes, and the other core decodes.
        torch.set_num_threads(1)
    identity = ModelIdentity(
        name=path.name,
        sha256=file_sha256(path),
        backbone=model.card.backbone.name,
        runtime=model.extractor.runtime,  # type: ignore[arg-type]
        precision=model.extractor.precision,
    )

    # Grad-CAM hooks the network that the batcher thread runs: the two must not use it at the same time.
    network_lock = threading.Lock()

    def predict(pixels: np.ndarray) -> np.ndarray:
        with network_lock:
            features = model.extractor(pixels)
        return stack_scores(model.probabilities(features), *model.gates.scores(features))

    def explain(data: bytes, name: str, artist: str | None) -> Explanation:
        from artistid.explain import grad_cam

        with network_lock:
            return grad_cam(model, data, artist, name=name)

    return ServedModel(predict, model.card, ModelInfo.of(identity, model.card), explain)


def check_model_file(path: str | Path, runtime: str | None = None) -> None:
    """Fails in one line on a file the chosen runtime cannot serve, before a server starts (quicker than loading)."""
    path = Path(path)
    chosen = runtime_for(path, runtime)
    if _is_onnx_file(path):
        if chosen != "onnx":
            raise ModelFileError(f"{path}: an ONNX file runs on the onnx runtime, not {chosen}")
        OnnxModel.load(path)
        return
    from artistid.model_file import read_card

    read_card(path)


def load_served_model(path: str | Path, runtime: str | None = None) -> ServedModel:
    """A model file with its backbone on `runtime`, or an exported .onnx file on ONNX Runtime (without torch)."""
    path = Path(path)
    check_model_file(path, runtime)
    if _is_onnx_file(path):
        return _load_onnx(path)
    return _load_model_file(path, runtime_for(path, runtime))


# --- responses -------------------------------------------------------------------------------------------------
class ArtistScore(BaseModel):
    artist: str
    probability: float


class Prediction(BaseModel):
    filename: str
    artist: str = Field(description='The artist named, or the refusal: "unknown" or "not_a_painting".')
    refusal: Refusal | None = Field(description='Why no artist is named ("unknown", "not_a_painting"), or null.')
    closest: str = Field(description="The most likely of the artists the model knows, named even when refused.")
    probability: float = Field(description="Probability of the most likely artist.")
    top_k: list[ArtistScore]


class PredictResponse(BaseModel):
    model: ModelIdentity
    predictions: list[Prediction]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    runtime: Runtime
    requests: int = Field(description="Requests the model has answered.")
    images: int
    batches: int = Field(description="Model calls; fewer than requests when concurrent requests were batched.")
    largest_batch: int


class ErrorDetail(BaseModel):
    detail: str


def _validation_message(exc: RequestValidationError, content_type: str) -> str:
    """One line, as for every other bad input, instead of FastAPI's list of error objects."""
    problems = []
    body_missing = False
    for error in exc.errors():
        field = str(error["loc"][-1]) if error.get("loc") else "request"
        if error.get("type") == "missing" and error.get("loc", ("",))[0] == "body":
            body_missing = True
            problems.append(f"no {field!r} field: send the images as multipart/form-data, field {field!r}")
        else:
            problems.append(f"{field}: {error['msg']}")
    if body_missing and not content_type.startswith("multipart/form-data"):
        problems.append(f"(this request was {content_type or 'without a content type'})")
    return "; ".join(problems)


# --- bad input -------------------------------------------------------------------------------------------------
def _status_for(exc: ArtistIdError) -> int:
    if isinstance(exc, NotAnImageError):  # the media type is wrong, not the image's data
        return 415
    return 422 if isinstance(exc, ImageError) else 400


class UploadLimit:
    """Refuses request bodies over `max_bytes` with 413, whether they declare their length or stream it.

    The rest of a refused body is read and dropped (up to a bound) so that the client sees the 413 rather than a
    connection reset while it is still sending.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = max(4 * max_bytes, 64 << 20)

    def _message(self) -> str:
        return f"upload is over the limit of {self.max_bytes / 1e6:g} MB (the server's --max-upload-mb)"

    async def _drain(self, receive: Receive) -> None:
        dropped = 0
        while dropped <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            dropped += len(message.get("body", b""))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive)
            await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await self._drain(receive)
                    # FastAPI passes an HTTPException raised while reading the form on to its handler.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)


# --- the app ---------------------------------------------------------------------------------------------------
async def _decode_all(pool: DecodePool, uploads: list[tuple[str, bytes]]) -> np.ndarray:
    futures = [asyncio.wrap_future(pool.submit_bytes(i, name, data)) for i, (name, data) in enumerate(uploads)]
    decoded = await asyncio.gather(*futures)
    return np.stack([result.pixels_or_raise() for result in decoded])


def create_app(
    model_path: str | Path,
    *,
    runtime: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_batch: int = DEFAULT_MAX_BATCH,
    api_keys: Sequence[str] = (),
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_seconds: float = DEFAULT_REQUEST_SECONDS,
) -> FastAPI:
    """The service for one model file; the model is loaded when the app starts (lifespan), not here."""
    guard = ServiceGuard(api_keys=api_keys, max_queue=max_queue, request_seconds=request_seconds)
    admitted = [Depends(guard.admit, scope="function")]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model = load_served_model(model_path, runtime)
        app.state.model = model
        app.state.decoder = DecodePool(model.card.preprocess, workers=max(2, decode_workers()))
        app.state.batcher = MicroBatcher(model.predict, max_batch=max_batch, on_batch=guard.observe_batch)
        logger.info("serving %s on %s", model.info.model.name, model.info.model.runtime)
        try:
            yield
        finally:
            app.state.batcher.close()
            app.state.decoder.close()

    app = FastAPI(
        title="artistid",
        summary="Names the artist of a painting.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # served below from the installed Swagger UI: the default page loads it from a CDN
        redoc_url=None,  # ReDoc comes only from a CDN, which offline machines cannot reach
    )
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 1e6))
    app.add_middleware(GuardMiddleware, guard=guard)  # outermost: keys are checked before an upload is read
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="artistid - API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    @app.exception_handler(ArtistIdError)
    async def artistid_error(request: Request, exc: ArtistIdError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = _validation_message(exc, request.headers.get("content-type", ""))
        return JSONResponse({"detail": message}, status_code=422)

    bad_input: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorDetail, "description": "A malformed request (a form with over 1,000 parts...)."},
        413: {"model": ErrorDetail, "description": "Upload over the size limit, or too many files."},
        415: {"model": ErrorDetail, "description": "A file is not an image."},
        422: {
            "model": ErrorDetail,
            "description": "An image cannot be decoded (truncated, decompression bomb...), no file was sent, "
            "or a parameter is out of range.",
        },
    }

    @app.post("/v1/predict", response_model=PredictResponse, responses=bad_input, dependencies=admitted)
    async def predict(
        request: Request,
        files: Annotated[list[UploadFile], File(description="One or more images of paintings.")],
        top_k: Annotated[int, Query(ge=1, description="How many artists to list per image (at most all).")] = 3,
    ) -> PredictResponse:
        """Names the artist of each uploaded painting."""
        if len(files) > MAX_FILES:
            raise HTTPException(413, f"{len(files)} files in one request; at most {MAX_FILES}")
        model: ServedModel = request.app.state.model
        uploads = [(upload.filename or f"file {i + 1}", await upload.read()) for i, upload in enumerate(files)]
        pixels = await _decode_all(request.app.state.decoder, uploads)
        rows = await asyncio.wrap_future(request.app.state.batcher.submit(pixels))
        probabilities, painting_scores, other_scores = split_scores(rows)
        answers = model.card.decide(
            probabilities, top_k=top_k, painting_scores=painting_scores, other_scores=other_scores
        )
        predictions = [
            Prediction(
                filename=name,
                artist=answer.artist,
                refusal=answer.refusal,
                closest=answer.closest,
                probability=answer.probability,
                top_k=[ArtistScore(artist=artist, probability=p) for artist, p in answer.top_k],
            )
            for (name, _), answer in zip(uploads, answers, strict=True)
        ]
        guard.count_answers(p.artist for p in predictions)
        return PredictResponse(model=model.info.model, predictions=predictions)

    @app.post(
        "/v1/explain",
        response_class=Response,
        responses={
            200: {
                "content": {"image/png": {}},
                "description": "The painting with its heat map. The `X-Artist` header names the artist explained "
                "(percent-encoded), "
                "`X-Probability` gives its probability.",
            },
            400: {"model": ErrorDetail, "description": "An artist the model does not know."},
            501: {"model": ErrorDetail, "description": "An .onnx export cannot explain."},
            **{status: bad_input[status] for status in (413, 415, 422)},
        },
        dependencies=admitted,
    )
    async def explain(
        request: Request,
        file: Annotated[UploadFile, File(description="One image of a painting.")],
        artist: Annotated[
            str | None, Query(description="Explain this artist's score, named as in `classes` (default: the top one).")
        ] = None,
    ) -> Response:
        """Where the model looked: a Grad-CAM heat map over the painting, as PNG."""
        model: ServedModel = request.app.state.model
        if model.explain is None:
            raise HTTPException(501, "explanations need gradients: serve the model file, not its .onnx export")
        name = file.filename or "file"
        data = await file.read()
        await _decode_all(request.app.state.decoder, [(name, data)])  # a file that crashes a decoder stops here
        explanation = await run_in_threadpool(model.explain, data, name, artist)
        # Percent-encoded: HTTP headers are Latin-1 and an artist's folder name may not be.
        headers = {"X-Artist": quote(explanation.artist), "X-Probability": f"{explanation.probability:.6f}"}
        return Response(await run_in_threadpool(explanation.png), media_type="image/png", headers=headers)

    @app.get("/v1/model", response_model=ModelInfo)
    def model_info(request: Request) -> ModelInfo:
        """The model being served: its model card (classes, backbone, preprocessing, calibration, training, metrics)."""
        return request.app.state.model.info

    @app.api_route("/healthz", methods=["GET", "HEAD"], response_model=Health)
    def healthz(request: Request) -> Health:
        stats = request.app.state.batcher.stats
        return Health(
            runtime=request.app.state.model.info.model.runtime,
            requests=stats.requests,
            images=stats.images,
            batches=stats.batches,
            largest_batch=stats.largest_batch,
        )

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return guard.metrics()

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("artistid")
    except PackageNotFoundError:
        return "0"


def _check_port_free(host: str, port: int) -> None:
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ArtistIdError(f"cannot listen on {host}: {exc.strerror or exc}; choose another --host") from None
    try:
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        raise ArtistIdError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port") from None


def serve(
    model_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    runtime: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_batch: int = DEFAULT_MAX_BATCH,
    log_level: str = "info",
    api_keys: Sequence[str] = (),
    no_auth: bool = False,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_seconds: float = DEFAULT_REQUEST_SECONDS,
) -> None:
    """Runs the service on uvicorn until interrupted."""
    import uvicorn

    check_exposure(host, api_keys, no_auth)
    _check_port_free(host, port)  # before the model loads, which can take seconds
    app = create_app(
        model_path,
        runtime=runtime,
        max_upload_mb=max_upload_mb,
        max_batch=max_batch,
        api_keys=api_keys,
        max_queue=max_queue,
        request_seconds=request_seconds,
    )
    # The guard writes the access log (one JSON line per request, artistid.access), so uvicorn's is off.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5, access_log=False)
