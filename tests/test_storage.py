"""storage: options, retries, atomic writes, and reading and writing a real Azure Blob store (Azurite)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest_storage import make_jpeg

from artistid import storage
from artistid.datasets import load_dataset
from artistid.errors import SourceError
from artistid.images import decode_image

FAST = storage.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)


def test_storage_options_are_parsed_and_typed() -> None:
    options = storage.parse_storage_options(
        ["account_name=acct", "anon=true", "connection_string=A=1;B=2;", "timeout=30"]
    )
    assert options == {"account_name": "acct", "anon": True, "connection_string": "A=1;B=2;", "timeout": 30}
    with pytest.raises(SourceError, match="expected key=value"):
        storage.parse_storage_options(["no-equals-sign"])


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def test_transient_failures_are_told_from_permanent_ones() -> None:
    assert storage.is_transient(ConnectionResetError("reset by peer"))
    assert storage.is_transient(TimeoutError())
    assert storage.is_transient(storage.TruncatedDownload("got 10 of 20 bytes"))
    assert storage.is_transient(_Status(503))
    assert storage.is_transient(_Status(429))
    assert not storage.is_transient(_Status(404))
    assert not storage.is_transient(FileNotFoundError("gone"))
    assert not storage.is_transient(PermissionError("denied"))
    # fsspec's HTTP backend reports a 500 on HEAD as FileNotFoundError raised from the response error.
    try:
        try:
            raise _Status(500)
        except _Status as inner:
            raise FileNotFoundError("http://host/file") from inner
    except FileNotFoundError as wrapped:
        assert storage.is_transient(wrapped)


def test_retries_until_success_and_not_on_permanent_errors() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert storage.with_retries(flaky, uri="x", policy=FAST) == "ok"
    assert len(calls) == 3

    calls.clear()

    def always_down() -> None:
        calls.append(1)
        raise _Status(503)

    with pytest.raises(_Status):
        storage.with_retries(always_down, uri="x", policy=FAST)
    assert len(calls) == FAST.attempts

    calls.clear()

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("nope")

    with pytest.raises(FileNotFoundError):
        storage.with_retries(missing, uri="x", policy=FAST)
    assert len(calls) == 1


def test_backoff_grows_and_is_jittered() -> None:
    policy = storage.RetryPolicy(attempts=6, base_delay=1.0, max_delay=8.0)
    wait = policy.wait()
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0)]:
        delays = {wait(SimpleNamespace(attempt_number=failures)) for _ in range(20)}  # type: ignore[arg-type]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1


def test_backends_that_retry_themselves_are_not_retried_again() -> None:
    """azure-core, botocore and gcsfs retry connection failures already: a second layer would multiply them."""
    calls: list[str] = []

    def reset() -> None:
        calls.append("reset")
        raise ConnectionResetError("reset")

    for uri in ("az://container/a.jpg", "s3://bucket/a.jpg", "gs://bucket/a.jpg"):
        calls.clear()
        with pytest.raises(ConnectionResetError):
            storage.with_retries(reset, uri=uri, policy=FAST)
        assert calls == ["reset"]
    calls.clear()
    with pytest.raises(ConnectionResetError):
        storage.with_retries(reset, uri="http://host/a.jpg", policy=FAST)  # fsspec's HTTP backend does not retry
    assert len(calls) == FAST.attempts

    calls.clear()

    def short_body() -> None:  # our own size check, which no backend sees: retried everywhere
        calls.append("short")
        raise storage.TruncatedDownload("got 10 of 20 bytes")

    with pytest.raises(storage.TruncatedDownload):
        storage.with_retries(short_body, uri="az://container/a.jpg", policy=FAST)
    assert len(calls) == FAST.attempts


def test_local_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "models" / "paintings.safetensors"
    storage.write_bytes_atomic(target, b"first version")
    storage.write_bytes_atomic(f"file://{target}", b"second")
    assert target.read_bytes() == b"second"
    umask = os.umask(0o027)
    try:
        storage.write_bytes_atomic(target, b"second")
    finally:
        os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o640  # an ordinary file, as the umask says, not a private temporary

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes_atomic(target, b"third, never seen")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["paintings.safetensors"]


def test_azure_blob_write_read_roundtrip(azurite) -> None:
    container = f"models-{uuid.uuid4().hex[:8]}"
    uri = f"az://{container}/runs/paintings.safetensors"
    storage.write_bytes_atomic(uri, b"\x00model bytes\xff", azurite.storage_options)
    assert storage.read_bytes(uri, azurite.storage_options) == b"\x00model bytes\xff"
    storage.write_bytes_atomic(uri, b"replaced", azurite.storage_options)
    assert storage.read_bytes(f"abfs://{container}/runs/paintings.safetensors", azurite.storage_options) == (
        b"replaced"
    )
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"az://{container}/runs/missing.bin", azurite.storage_options)


def test_azure_credentials_from_the_environment(azurite, monkeypatch) -> None:
    """AZURE_STORAGE_CONNECTION_STRING alone is enough, as for the Azure CLI and SDKs."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    container = f"env-{uuid.uuid4().hex[:8]}"
    # A storage option nobody else uses keeps fsspec from handing back a cached client made without the variable.
    options = {"max_concurrency": 3}
    storage.write_bytes_atomic(f"az://{container}/a.txt", b"via env", options)
    assert storage.read_bytes(f"az://{container}/a.txt", options) == b"via env"


def test_datasets_list_and_read_from_azure_blob(azurite) -> None:
    """The lead's loaders take an az:// prefix: classes, splits and image bytes come straight from the store."""
    container = f"paintings-{uuid.uuid4().hex[:8]}"
    layout = {"Train/Claude_Monet": 3, "Train/Vincent_van_Gogh": 2, "Test/Claude_Monet": 1, "Test/Vincent_van_Gogh": 1}
    seed = 0
    for folder, count in layout.items():
        for index in range(count):
            seed += 1
            name = f"az://{container}/{folder}/painting {index}.jpg"
            storage.write_bytes_atomic(name, make_jpeg(seed), azurite.storage_options)
    dataset = load_dataset(f"az://{container}", azurite.storage_options)
    assert dataset.classes == ["Claude_Monet", "Vincent_van_Gogh"]
    assert (len(dataset.train), len(dataset.test)) == (5, 2)
    first = dataset.train[0]
    image = decode_image(storage.read_bytes(first.path, azurite.storage_options), first.path)
    assert image.size == (160, 120)


@pytest.mark.slow
def test_train_and_predict_straight_from_azure_blob(
    azurite, demo_data: Path, cache_dir: Path, demo_model_path: Path
) -> None:
    """The reference flow on a blob store: images in az://, the model file out to az://, used from there.

    Asks for `demo_model_path` so the session's feature cache already holds these images' vectors.
    """
    from typer.testing import CliRunner

    from artistid.cli import app

    container = f"demo-{uuid.uuid4().hex[:8]}"
    for path in sorted(demo_data.rglob("*.jpg")):
        relative = path.relative_to(demo_data).as_posix()
        storage.write_bytes_atomic(f"az://{container}/{relative}", path.read_bytes(), azurite.storage_options)
    option = ["--storage-option", f"connection_string={azurite.connection_string}"]
    model = f"az://{container}-models/runs/paintings.safetensors"
    runner = CliRunner()
    trained = runner.invoke(
        app, ["train", f"az://{container}", "-o", model, "--cache-dir", str(cache_dir), "--json", *option]
    )
    assert trained.exit_code == 0, trained.output
    classes = sorted(p.name for p in demo_data.glob("Train/*"))
    assert json.loads(trained.stdout)["metrics"]["accuracy"] > 1.5 / len(classes)  # well above chance
    assert storage.read_bytes(model, azurite.storage_options)[:8]  # the model file is in the store

    test_image = next(p for p in sorted(demo_data.glob("Test/*/*.jpg")))
    predicted = runner.invoke(
        app, ["predict", model, f"az://{container}/Test/{test_image.parent.name}/{test_image.name}", "--json", *option]
    )
    assert predicted.exit_code == 0, predicted.output
    (record,) = json.loads(predicted.stdout)
    assert record["artist"] in classes
