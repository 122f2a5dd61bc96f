"""Backbones from the Hugging Face Hub, against a stand-in Hub on loopback with tiny real timm architectures.

Download once into huggingface_hub's cache, the sha256 and revision recorded, an offline rerun from the cache, the
Hub down with nothing cached, a corrupted download, a ViT's tokens as features, and training end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest_hub import COMMIT, HubEnvironment, StandInHub, hub_config, tiny_weights
from typer.testing import CliRunner

from artistid.backbones import create_backbone, get_spec
from artistid.card import to_dict
from artistid.cli import app
from artistid.errors import WeightsError
from artistid.model import Model
from artistid.model_file import read_card

RESNET = "test_resnet.r160_in1k"  # a tagged timm name: timm's own pretrained config names the Hub repository
VIT = "hf-hub:artistid-test/tiny-vit"  # a Hub repository with a timm config.json


@pytest.fixture(scope="module")
def weights() -> dict[str, bytes]:
    return {"resnet": tiny_weights(RESNET), "vit": tiny_weights("test_vit")}


@pytest.fixture
def hub(weights: dict[str, bytes]) -> Iterator[StandInHub]:
    server = StandInHub().start()
    server.add(f"timm/{RESNET}", "model.safetensors", weights["resnet"], lfs=True)
    server.add("artistid-test/tiny-vit", "config.json", hub_config("test_vit"))
    server.add("artistid-test/tiny-vit", "model.safetensors", weights["vit"], lfs=True)
    yield server
    server.stop()


def _dead_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed once the probe is


def test_download_records_sha256_and_revision_and_a_rerun_offline_uses_the_cache(
    hub: StandInHub, weights: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    HubEnvironment(hub.url, tmp_path / "hf").apply(monkeypatch)
    backbone = create_backbone(RESNET)
    recipe = to_dict(backbone.card)
    assert recipe["weights_sha256"] == hashlib.sha256(weights["resnet"]).hexdigest()
    assert recipe["revision"] == COMMIT
    assert recipe["source"] == f"hf-hub:timm/{RESNET}/model.safetensors"
    assert hub.requests[("GET", f"timm/{RESNET}/model.safetensors")] == 1
    assert list((tmp_path / "hf" / "hub").glob(f"models--timm--{RESNET}/snapshots/{COMMIT}/model.safetensors"))
    # timm's pretrained config gives the input: 160 px, its mean and std
    assert backbone.preprocess.size == 160 and backbone.preprocess.mean == (0.5, 0.5, 0.5)

    hub.stop()
    HubEnvironment(hub.url, tmp_path / "hf", offline=True).apply(monkeypatch)
    again = create_backbone(RESNET)
    assert to_dict(again.card) == recipe
    HubEnvironment(_dead_endpoint(), tmp_path / "hf").apply(monkeypatch)  # online, but the Hub does not answer
    assert create_backbone(RESNET).weights_sha256 == recipe["weights_sha256"]


def test_offline_with_no_cached_copy_says_what_was_tried_and_how_to_give_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    HubEnvironment(_dead_endpoint(), tmp_path / "hf", offline=True).apply(monkeypatch)
    with pytest.raises(WeightsError) as offline:
        create_backbone(RESNET)
    message = str(offline.value)
    assert "\n" not in message
    assert RESNET in message and f"timm/{RESNET}/model.safetensors" in message and "HF_HUB_OFFLINE is set" in message
    assert "--weights FILE" in message


def test_the_weights_can_be_given_as_a_file_instead(tmp_path: Path, weights: dict[str, bytes], monkeypatch) -> None:
    HubEnvironment(_dead_endpoint(), tmp_path / "hf", offline=True).apply(monkeypatch)
    file = tmp_path / "resnet.safetensors"
    file.write_bytes(weights["resnet"])
    backbone = create_backbone(RESNET, weights=file)
    assert backbone.weights_sha256 == hashlib.sha256(weights["resnet"]).hexdigest()
    assert to_dict(backbone.card)["source"] == "file:resnet.safetensors"


def test_a_corrupted_download_is_refused_and_dropped_from_the_cache(
    hub: StandInHub, weights: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    HubEnvironment(hub.url, tmp_path / "hf").apply(monkeypatch)
    hub.files[(f"timm/{RESNET}", "model.safetensors")].corrupt = True
    with pytest.raises(WeightsError, match=r"arrived corrupted .*removed from the cache"):
        create_backbone(RESNET)
    assert not [p for p in (tmp_path / "hf" / "hub").rglob("*") if p.is_file() and p.stat().st_size > 1000]

    hub.files[(f"timm/{RESNET}", "model.safetensors")].corrupt = False  # the next try downloads it anew
    assert create_backbone(RESNET).weights_sha256 == hashlib.sha256(weights["resnet"]).hexdigest()


def test_a_hub_vit_is_cut_at_its_blocks_and_its_tokens_pooled(
    hub: StandInHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    HubEnvironment(hub.url, tmp_path / "hf").apply(monkeypatch)
    spec = get_spec(VIT)
    assert spec.architecture == "timm:test_vit" and spec.interpolation == "bicubic" and spec.input_size == 160
    pooled = create_backbone(VIT)
    width = pooled.network.num_features
    assert pooled(torch.zeros(2, 3, 160, 160)).shape == (2, width)
    # Each block's output is tokens (N, T, C): the class token, the patch tokens' mean and, for meanstd, their std.
    style = create_backbone(VIT, feature_nodes=("blocks.0", "blocks.1"), pooling="meanstd")
    batch = torch.rand(2, 3, 160, 160)
    features = style(batch)
    assert features.shape == (2, 2 * 3 * width)
    tokens = style.network.blocks[0](style.network._pos_embed(style.network.patch_embed(batch)))
    assert torch.allclose(features[:, :width], tokens[:, 0], atol=1e-5)
    assert torch.allclose(features[:, width : 2 * width], tokens[:, 1:].mean(1), atol=1e-5)
    with pytest.raises(WeightsError, match="takes 160 px inputs only"):
        create_backbone(VIT, input_size=224)


def test_train_on_a_hub_backbone_end_to_end_and_serve_without_the_hub(
    hub: StandInHub, weights: dict[str, bytes], small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`artistid train --backbone NAME` downloads through HF_ENDPOINT into HF_HOME; an offline rerun needs no Hub;
    the model file holds every weight, so loading and predicting never ask the Hub."""
    env = {**os.environ, **HubEnvironment(hub.url, tmp_path / "hf").env}
    common = ["--backbone", RESNET, "--cache-dir", str(tmp_path / "features"), "--json", "-q"]
    command = [sys.executable, "-c", "from artistid.cli import main; main()", "train", str(small_dataset)]
    first = subprocess.run(
        [*command, "-o", str(tmp_path / "a.safetensors"), *common], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    card = read_card(tmp_path / "a.safetensors")
    assert card.backbone.weights_sha256 == hashlib.sha256(weights["resnet"]).hexdigest()
    assert card.backbone.revision == COMMIT
    assert card.backbone.source == f"hf-hub:timm/{RESNET}/model.safetensors"
    assert card.preprocess.size == 160
    assert json.loads(first.stdout)["metrics"]["accuracy"] is not None

    hub.stop()
    HubEnvironment(hub.url, tmp_path / "hf", offline=True).apply(monkeypatch)  # as HF_HUB_OFFLINE=1 would
    second = CliRunner().invoke(app, ["train", str(small_dataset), "-o", str(tmp_path / "b.safetensors"), *common])
    assert second.exit_code == 0, second.output
    assert read_card(tmp_path / "b.safetensors").backbone == card.backbone

    requests = sum(hub.requests.values())
    model = Model.load(tmp_path / "a.safetensors")
    image = next((small_dataset / "Test").rglob("*.jpg"))
    assert np.isclose(model.predict_proba([image]).sum(), 1.0)
    assert sum(hub.requests.values()) == requests


def test_a_hub_that_is_down_with_nothing_cached_fails_the_cli_in_one_line(
    small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = _dead_endpoint()  # huggingface_hub retries the connection a few times first (its own backoff)
    HubEnvironment(endpoint, tmp_path / "hf").apply(monkeypatch)
    result = CliRunner().invoke(
        app, ["train", str(small_dataset), "-o", str(tmp_path / "m.safetensors"), "--backbone", VIT, "-q"]
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("artistid: error: backbone 'hf-hub:artistid-test/tiny-vit'")
    assert f"{endpoint} did not answer" in lines[0] and "artistid-test/tiny-vit/config.json" in lines[0]
    assert "--weights FILE" in lines[0]


def test_finetune_a_hub_backbone_and_log_it_to_mlflow(
    hub: StandInHub, small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    HubEnvironment(hub.url, tmp_path / "hf").apply(monkeypatch)
    store = (tmp_path / "mlruns").as_uri()
    output = tmp_path / "tuned.safetensors"
    result = CliRunner().invoke(
        app,
        ["finetune", str(small_dataset), "-o", str(output), "--backbone", RESNET, "--unfreeze", "all", "--epochs", "1",
         "--batch-size", "8", "--workers", "0", "--no-cache", "--mlflow", "--mlflow-uri", store, "--json", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tracked = json.loads(result.stdout)["mlflow"]
    run = MlflowClient(tracking_uri=store).get_run(tracked["run_id"])
    assert run.data.params["recipe.backbone"] == RESNET and run.data.params["recipe.unfreeze"] == "all"
    assert run.data.params["backbone.source"] == f"fine-tuned from hf-hub:timm/{RESNET}/model.safetensors"
    assert run.data.params["backbone.revision"] == COMMIT
    assert "seconds.finetune" in run.data.metrics and "accuracy" in run.data.metrics

    mlflow.set_tracking_uri(store)
    image = next((small_dataset / "Test").rglob("*.jpg"))
    answer = mlflow.pyfunc.load_model(tracked["model_uri"]).predict(pd.DataFrame({"path": [str(image)]}))
    expected = Model.load(output).predict_proba([image])[0]
    assert answer.iloc[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-6)


def test_the_backbones_command_says_how_to_use_any_hub_backbone() -> None:
    result = CliRunner().invoke(app, ["backbones"])
    assert result.exit_code == 0
    assert "efficientnet_lite0" in result.output and "hf-hub:ORG/REPO" in result.output
    assert "--weights FILE" in result.output and "HF_HUB_OFFLINE=1" in result.output
