"""Fine-tuning: what learns, checkpoints every epoch, resuming after an interruption, and the model it makes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from artistid import finetune as finetune_module
from artistid.backbones import create_backbone
from artistid.datasets import Sample
from artistid.errors import ArtistIdError
from artistid.finetune import CHECKPOINT_NAME, FinetuneSettings, finetune, trainable_parameters
from artistid.model import Model

# Small enough for two cores: 64-pixel crops, a few paintings per artist, the last block only.
TINY = FinetuneSettings(unfreeze="last-1", epochs=2, batch_size=8, image_size=64, precision="fp32", val_fraction=0.34)


@pytest.fixture(scope="module")
def few_paintings(demo_data: Path) -> list[Sample]:
    return [
        Sample(str(path), artist)
        for artist in ("Claude_Monet", "Rembrandt", "Vincent_van_Gogh")
        for path in sorted((demo_data / "Train" / artist).glob("*.jpg"))[:6]
    ]


def test_unfreeze_chooses_the_last_blocks() -> None:
    network = create_backbone("efficientnet_lite0", pretrained=False).network
    trainable_parameters(network, "last-2")
    assert not any(p.requires_grad for p in network.blocks[4].parameters())
    assert all(p.requires_grad for p in network.blocks[5].parameters())
    assert all(p.requires_grad for p in network.conv_head.parameters())
    trainable_parameters(network, "all")
    assert all(p.requires_grad for p in network.parameters())
    with pytest.raises(ArtistIdError, match="--unfreeze must be"):
        FinetuneSettings(unfreeze="some").check()


def test_finetune_checkpoints_resumes_and_makes_a_model(
    few_paintings: list[Sample], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save = finetune_module._save_checkpoint
    saved: list[int] = []

    def interrupted(path: Path, state: dict) -> None:
        save(path, state)
        saved.append(state["epoch"])
        raise KeyboardInterrupt  # the run dies right after its first checkpoint

    monkeypatch.setattr(finetune_module, "_save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(few_paintings, TINY, checkpoint_dir=tmp_path, workers=0)
    assert saved == [1] and (tmp_path / CHECKPOINT_NAME).is_file()
    monkeypatch.setattr(finetune_module, "_save_checkpoint", save)

    result = finetune(few_paintings, TINY, checkpoint_dir=tmp_path, resume=True, workers=0)
    assert result.resumed_from == 1
    assert [r["epoch"] for r in result.history] == [1, 2]
    with pytest.raises(ArtistIdError, match="other settings"):
        finetune(few_paintings, FinetuneSettings(epochs=3, image_size=64), checkpoint_dir=tmp_path, resume=True)

    model = result.model
    pretrained = create_backbone("efficientnet_lite0")
    # The unfrozen block learned; the frozen ones kept their ImageNet weights; the features' identity changed.
    tuned, original = model.backbone.network.state_dict(), pretrained.network.state_dict()
    assert not torch.equal(tuned["blocks.6.0.conv_pw.weight"], original["blocks.6.0.conv_pw.weight"])
    assert torch.equal(tuned["blocks.2.0.conv_pw.weight"], original["blocks.2.0.conv_pw.weight"])
    assert model.backbone.weights_sha256 != pretrained.weights_sha256
    model.save(tmp_path / "tuned.safetensors")
    loaded = Model.load(tmp_path / "tuned.safetensors")
    assert loaded.preprocess.size == 64
    # Calibrated on the six paintings held out of training (two per artist).
    assert model.card.calibration.n == 6
    assert model.card.training is not None and model.card.training.n_train == 12
    assert model.card.training.method == "finetune"
    assert loaded.card == model.card
    probabilities = loaded.predict_proba(few_paintings[0].path)
    assert probabilities.shape == (1, 3)
    assert torch.allclose(torch.from_numpy(probabilities), torch.from_numpy(model.predict_proba(few_paintings[0].path)))


def test_resume_without_a_checkpoint_is_refused(few_paintings: list[Sample], tmp_path: Path) -> None:
    with pytest.raises(ArtistIdError, match="nothing to resume"):
        finetune(few_paintings, TINY, checkpoint_dir=tmp_path, resume=True)
