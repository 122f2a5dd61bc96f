"""One answer on every surface: for the same images, `artistid predict`, the Python API, the service on PyTorch, the
service on the ONNX export and Spark name the same artist, or refuse the same way.

The images are paintings of the artists the demo model knows, paintings by other artists (loose in
paintings3/Test) and photos, which are not paintings at all. The model is the demo model computing in fp32, the
arithmetic of the ONNX export: a model that computes in bf16 under PyTorch can differ from its fp32 export by a
few hundredths of probability, enough to flip an answer that sits on the threshold.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from conftest_serve import Server
from typer.testing import CliRunner

from artistid.cli import app
from artistid.export import export_onnx
from artistid.model import Model
from artistid.model_file import read_model_file, write_model_file

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

Verdict = tuple[str, str | None, str]  # artist (or the refusal), refusal, closest artist


@pytest.fixture(scope="module")
def images(demo_data: Path, paintings3: Path) -> list[Path]:
    photos = paintings3.parent / "photos"
    if not photos.is_dir():
        pytest.skip(f"photos not found at {photos} (set ARTISTID_DATASETS)")
    known = [p for artist in sorted((demo_data / "Test").iterdir()) for p in sorted(artist.glob("*.jpg"))[:2]]
    others = sorted(p for p in (paintings3 / "Test").iterdir() if p.is_file())
    return [*known, *others, *sorted(photos.glob("*.jpg"))[:8]]


@pytest.fixture(scope="module")
def fp32_model_path(demo_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tensors, card = read_model_file(demo_model_path)
    path = tmp_path_factory.mktemp("fp32") / "demo-fp32.safetensors"
    write_model_file(path, tensors, replace(card, precision="fp32"))
    return path


@pytest.fixture(scope="module")
def servers(fp32_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """The fp32 model on PyTorch, and its ONNX export on ONNX Runtime in a process that cannot import torch."""
    logs = tmp_path_factory.mktemp("one-answer-logs")
    onnx_path = fp32_model_path.with_suffix(".onnx")
    export_onnx(Model.load(fp32_model_path), onnx_path)
    torch_server = Server(fp32_model_path, log=logs / "torch.log")
    try:
        onnx_server = Server(onnx_path, without_torch=True, log=logs / "onnx.log")
    except Exception:
        torch_server.stop()
        raise
    yield torch_server, onnx_server
    torch_server.stop()
    onnx_server.stop()


def _served(server: Server, images: list[Path]) -> list[Verdict]:
    verdicts: list[Verdict] = []
    for start in range(0, len(images), 16):
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in images[start : start + 16]]
        response = httpx.post(f"{server.url}/v1/predict", files=files, timeout=120)
        assert response.status_code == 200, response.text
        verdicts += [(p["artist"], p["refusal"], p["closest"]) for p in response.json()["predictions"]]
    return verdicts


def test_every_surface_gives_the_same_answers(
    images: list[Path], fp32_model_path: Path, servers: tuple[Server, Server], tmp_path: Path
) -> None:
    paths = [str(p) for p in images]
    api = [(a.artist, a.refusal, a.closest) for a in Model.load(fp32_model_path).answer(paths)]

    result = CliRunner().invoke(app, ["predict", str(fp32_model_path), *paths, "--json", "--no-cache"])
    assert result.exit_code == 0, result.output
    cli = [(r["artist"], r["refusal"], r["closest"]) for r in json.loads(result.stdout)]

    output = tmp_path / "predictions.parquet"
    spark_run = ["predict", str(fp32_model_path), *paths, "--engine", "spark", "--master", "local[1]"]
    result = CliRunner().invoke(app, [*spark_run, "-o", str(output), "--json"])
    assert result.exit_code == 0, result.output
    spark_artists = {row["path"]: row["artist"] for row in pq.read_table(output).to_pylist()}

    torch_server, onnx_server = servers
    assert cli == api
    assert _served(torch_server, images) == api
    assert _served(onnx_server, images) == api
    assert [spark_artists[p] for p in paths] == [artist for artist, _, _ in api]
    # The comparison covers both kinds of answer: artists named, and refusals.
    refused = [path for path, (_, refusal, _) in zip(paths, api, strict=True) if refusal is not None]
    assert refused and len(refused) < len(paths)
