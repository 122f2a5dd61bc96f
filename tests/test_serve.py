"""The web service, through real `artistid serve` processes on loopback: predictions, model info, bad uploads,
micro-batching, and the ONNX runtime in a process that cannot import torch."""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest_serve import Server

from artistid.card import to_dict

pytestmark = pytest.mark.timeout(300)


def paintings(demo_data: Path, per_artist: int = 2) -> list[Path]:
    chosen: list[Path] = []
    for artist in sorted(p for p in (demo_data / "Test").iterdir() if p.is_dir()):
        chosen.extend(sorted(artist.iterdir())[:per_artist])
    return chosen


def post(server: Server, *files: tuple[str, bytes], top_k: int = 3) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/predict",
        params={"top_k": top_k},
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        timeout=60,
    )


def bomb_png(side: int = 20_000) -> bytes:
    """A real decompression bomb: a few hundred KB of PNG that inflates to side x side pixels (400 MB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + one grey row
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def scores(prediction: dict, classes: list[str]) -> np.ndarray:
    by_artist = {s["artist"]: s["probability"] for s in prediction["top_k"]}
    return np.array([by_artist[c] for c in classes])


# --- the command --------------------------------------------------------------------------------------------------
def test_serve_refuses_a_bad_model_file_in_one_line(tmp_path: Path, demo_onnx_path: Path) -> None:
    from typer.testing import CliRunner

    from artistid.cli import app

    missing = CliRunner().invoke(app, ["serve", str(tmp_path / "gone.safetensors")])
    assert missing.exit_code == 1
    assert missing.output.strip() == f"artistid: error: {tmp_path / 'gone.safetensors'}: model file not found"
    onnx_on_torch = CliRunner().invoke(app, ["serve", str(demo_onnx_path), "--runtime", "torch"])
    assert onnx_on_torch.exit_code == 1
    assert "runs on the onnx runtime, not torch" in onnx_on_torch.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk")
    assert "not a readable ONNX model" in CliRunner().invoke(app, ["serve", str(junk)]).output


# --- the API -----------------------------------------------------------------------------------------------------
def test_health_model_info_and_docs(torch_server: Server, demo_model) -> None:
    health = httpx.get(f"{torch_server.url}/healthz").json()
    assert health["status"] == "ok" and health["runtime"] == "torch"

    info = httpx.get(f"{torch_server.url}/v1/model").json()
    assert info["classes"] == [str(c) for c in demo_model.classes_]
    assert info["model"]["backbone"] == "efficientnet_lite0"
    assert info["model"]["runtime"] == "torch"
    assert len(info["model"]["sha256"]) == 64
    assert info["preprocess"]["size"] == 224
    card = demo_model.card
    assert info["metrics"] == to_dict(card.metrics)
    assert info["training"] == to_dict(card.training)
    assert info["calibration"]["temperature"] == pytest.approx(card.calibration.temperature)
    assert info["threshold"] == info["calibration"]["rules"]["threshold"] == pytest.approx(card.rules.threshold)
    assert info["backbone"]["weights_sha256"] == card.backbone.weights_sha256

    docs = httpx.get(f"{torch_server.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower() and "cdn" not in docs.text
    assert httpx.get(f"{torch_server.url}/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert httpx.head(f"{torch_server.url}/healthz").status_code == 200  # load balancers probe with HEAD
    schema = httpx.get(f"{torch_server.url}/openapi.json").json()
    assert "/v1/predict" in schema["paths"]
    assert {"413", "415", "422"} <= set(schema["paths"]["/v1/predict"]["post"]["responses"])


def test_predict_names_the_artist_as_the_model_does(torch_server: Server, demo_model, demo_data: Path) -> None:
    files = paintings(demo_data)
    response = post(torch_server, *[(f.name, f.read_bytes()) for f in files])
    assert response.status_code == 200, response.text
    body = response.json()
    classes = [str(c) for c in demo_model.classes_]
    assert body["model"]["name"] == "demo.safetensors"
    assert [p["filename"] for p in body["predictions"]] == [f.name for f in files]
    expected = demo_model.predict_proba(files)
    answers = demo_model.answer(files)
    for prediction, row, answer in zip(body["predictions"], expected, answers, strict=True):
        assert prediction["artist"] == answer.artist and prediction["refusal"] == answer.refusal
        assert prediction["closest"] == classes[int(row.argmax())]
        assert prediction["probability"] == pytest.approx(float(row.max()), abs=2e-3)
        assert np.allclose(scores(prediction, classes), row, atol=2e-3)
        ranked = [s["probability"] for s in prediction["top_k"]]
        assert ranked == sorted(ranked, reverse=True)


def test_top_k_lists_that_many_artists(torch_server: Server, demo_data: Path) -> None:
    painting = paintings(demo_data)[0]
    body = post(torch_server, (painting.name, painting.read_bytes()), top_k=2).json()
    assert len(body["predictions"][0]["top_k"]) == 2
    body = post(torch_server, (painting.name, painting.read_bytes()), top_k=5000).json()
    assert len(body["predictions"][0]["top_k"]) == 3  # no more than the model knows
    refused = httpx.post(f"{torch_server.url}/v1/predict", params={"top_k": 0}, files={"files": ("a", b"x")})
    assert refused.status_code == 422
    assert refused.json() == {"detail": "top_k: Input should be greater than or equal to 1"}


# --- bad uploads -------------------------------------------------------------------------------------------------
def _still_serving(server: Server, painting: Path) -> None:
    response = post(server, (painting.name, painting.read_bytes()))
    assert response.status_code == 200, response.text


@pytest.fixture
def painting(demo_data: Path) -> Path:
    return paintings(demo_data)[0]


def test_upload_over_the_limit_is_413(torch_server: Server, painting: Path) -> None:
    big = np.random.default_rng(0).bytes(3_000_000)  # the fixture's server accepts 2 MB
    response = post(torch_server, ("big.jpg", big))
    assert response.status_code == 413
    assert "over the limit of 2 MB" in response.json()["detail"]
    _still_serving(torch_server, painting)


def test_streamed_upload_over_the_limit_is_413(torch_server: Server, painting: Path) -> None:
    """No Content-Length to trust: the body is counted as it arrives."""
    boundary = "artistid-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(30):
            yield b"\xff" * 100_000
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{torch_server.url}/v1/predict",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    assert response.status_code == 413
    _still_serving(torch_server, painting)


def test_not_an_image_is_415_with_the_reason(torch_server: Server, painting: Path) -> None:
    response = post(torch_server, ("notes.jpg", b"a shopping list, not a painting\n" * 50))
    assert response.status_code == 415
    assert response.json()["detail"] == "notes.jpg: not an image Pillow can read"
    _still_serving(torch_server, painting)


def test_truncated_jpeg_is_422_with_the_reason(torch_server: Server, painting: Path) -> None:
    data = painting.read_bytes()
    response = post(torch_server, ("cut.jpg", data[: len(data) // 2]))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("cut.jpg: ") and "truncated" in detail
    _still_serving(torch_server, painting)


def test_decompression_bomb_is_422(torch_server: Server, painting: Path) -> None:
    bomb = bomb_png()
    assert len(bomb) < 2_000_000  # small on the wire, 400 MB once decoded
    response = post(torch_server, ("bomb.png", bomb))
    assert response.status_code == 422
    assert "decompression bomb" in response.json()["detail"]
    _still_serving(torch_server, painting)


def test_empty_file_and_missing_files_are_422(torch_server: Server, painting: Path) -> None:
    response = post(torch_server, ("empty.jpg", b""))
    assert response.status_code == 422
    assert response.json()["detail"] == "empty.jpg: empty file (0 bytes)"
    missing = httpx.post(f"{torch_server.url}/v1/predict", data={"other": "x"})
    assert missing.status_code == 422
    assert missing.json()["detail"].startswith("no 'files' field: send the images as multipart/form-data")
    raw = httpx.post(
        f"{torch_server.url}/v1/predict", content=painting.read_bytes(), headers={"content-type": "image/jpeg"}
    )
    assert raw.status_code == 422 and "(this request was image/jpeg)" in raw.json()["detail"]
    _still_serving(torch_server, painting)


def test_one_bad_file_among_good_ones_names_that_file(torch_server: Server, painting: Path) -> None:
    good = (painting.name, painting.read_bytes())
    response = post(torch_server, good, ("broken.png", b"\x89PNG\r\n\x1a\n garbage"), good)
    assert response.status_code in (415, 422)
    assert response.json()["detail"].startswith("broken.png: ")
    assert torch_server.alive()


# --- micro-batching and the ONNX runtime -------------------------------------------------------------------------
def test_onnx_server_runs_without_torch_and_matches_pytorch_fp32(
    onnx_server: Server,
    demo_model,
    demo_data: Path,
) -> None:
    import torch

    from artistid.export import pipeline_module
    from artistid.images import load_image

    health = httpx.get(f"{onnx_server.url}/healthz").json()
    assert health["runtime"] == "onnx"  # and the process could not have imported torch (see conftest_serve)
    info = httpx.get(f"{onnx_server.url}/v1/model").json()
    assert info["model"]["runtime"] == "onnx" and info["model"]["precision"] == "fp32"
    assert info["classes"] == [str(c) for c in demo_model.classes_]

    files = paintings(demo_data)
    body = post(onnx_server, *[(f.name, f.read_bytes()) for f in files]).json()
    pixels = np.stack([load_image(f, demo_model.preprocess) for f in files])
    with torch.inference_mode():
        expected = pipeline_module(demo_model)(torch.from_numpy(pixels))[0].numpy()
    classes = info["classes"]
    for prediction, row in zip(body["predictions"], expected, strict=True):
        # The closest artist, named even where the answer is a refusal (a painting the model is unsure of).
        assert prediction["closest"] == classes[int(row.argmax())]
        assert np.allclose(scores(prediction, classes), row, atol=1e-4)


def test_a_model_file_serves_on_every_runtime_alike(demo_model_path: Path, demo_data: Path) -> None:
    """The backbone of a model file on ONNX Runtime or OpenVINO gives PyTorch's artists and probabilities."""
    from artistid.images import load_image
    from artistid.refusals import split_scores
    from artistid.serve import load_served_model

    served = {runtime: load_served_model(demo_model_path, runtime) for runtime in ("torch", "onnx", "openvino")}
    pixels = np.stack([load_image(f, served["torch"].card.preprocess) for f in paintings(demo_data)])
    expected, expected_painting, _ = split_scores(served["torch"].predict(pixels))
    for runtime, model in served.items():
        assert model.info.model.runtime == runtime
        probabilities, painting, _ = split_scores(model.predict(pixels))
        assert (probabilities.argmax(1) == expected.argmax(1)).all(), runtime
        # fp32 runtimes agree to 1e-3; bf16 (where it is native and measured faster) keeps 8 bits of mantissa.
        tolerance = 1e-3 if model.info.model.precision == "fp32" == served["torch"].info.model.precision else 0.05
        assert np.abs(probabilities - expected).max() <= tolerance, runtime
        assert painting is not None and expected_painting is not None
        assert np.abs(painting - expected_painting).max() <= tolerance, runtime


def test_concurrent_requests_are_batched_and_answered_alike(onnx_server: Server, demo_data: Path) -> None:
    files = paintings(demo_data, per_artist=3)
    alone = {f.name: post(onnx_server, (f.name, f.read_bytes())).json()["predictions"][0] for f in files}
    before = httpx.get(f"{onnx_server.url}/healthz").json()
    answers: list[dict] = []
    failures: list[str] = []

    def client(offset: int) -> None:
        with httpx.Client(timeout=60) as session:
            for step in range(4):
                painting = files[(offset + step) % len(files)]
                response = session.post(
                    f"{onnx_server.url}/v1/predict", files={"files": (painting.name, painting.read_bytes())}
                )
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    answers.append(response.json()["predictions"][0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = httpx.get(f"{onnx_server.url}/healthz").json()

    assert not failures and len(answers) == 32
    for answer in answers:
        single = alone[answer["filename"]]
        assert answer["artist"] == single["artist"]
        assert answer["probability"] == pytest.approx(single["probability"], abs=1e-4)
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == 32
    assert batches < requests  # some model calls served several requests at once
    assert after["largest_batch"] >= 2


def test_explain_returns_the_heat_map_over_the_painting(torch_server: Server, demo_data: Path) -> None:
    import io

    from PIL import Image

    painting = paintings(demo_data)[0]
    response = httpx.post(f"{torch_server.url}/v1/explain", files={"file": (painting.name, painting.read_bytes())})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    top = post(torch_server, (painting.name, painting.read_bytes())).json()["predictions"][0]
    assert response.headers["x-artist"] == top["closest"]
    assert float(response.headers["x-probability"]) == pytest.approx(top["probability"], abs=2e-3)
    with Image.open(io.BytesIO(response.content)) as heat, Image.open(painting) as original:
        assert heat.width / heat.height == pytest.approx(original.width / original.height, rel=0.05)

    bad = httpx.post(f"{torch_server.url}/v1/explain", files={"file": ("notes.jpg", b"not a painting")})
    assert bad.status_code == 415 and "notes.jpg" in bad.json()["detail"]
    unknown = httpx.post(
        f"{torch_server.url}/v1/explain?artist=Picasso", files={"file": (painting.name, painting.read_bytes())}
    )
    assert unknown.status_code == 400 and "unknown artist" in unknown.json()["detail"]
    as_shown = httpx.post(  # the name as the page shows it
        f"{torch_server.url}/v1/explain",
        params={"artist": "Claude Monet"},
        files={"file": (painting.name, painting.read_bytes())},
    )
    assert as_shown.status_code == 200 and as_shown.headers["x-artist"] == "Claude_Monet"


def test_explain_needs_the_torch_runtime(onnx_server: Server, demo_data: Path) -> None:
    painting = paintings(demo_data)[0]
    response = httpx.post(f"{onnx_server.url}/v1/explain", files={"file": (painting.name, painting.read_bytes())})
    assert response.status_code == 501 and "serve the model file" in response.json()["detail"]
