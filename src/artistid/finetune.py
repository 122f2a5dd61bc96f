"""Fine-tuning: the backbone's last blocks (or all of it) learn along with the head, on augmented paintings.

Stages: `trainable_parameters` unfreezes the chosen blocks, `PaintingCrops` decodes and augments (random crops
taken from a larger decode, so brushstrokes of large scans survive; flips; mild colour jitter), `finetune` runs
AdamW or SGD with a cosine schedule (bf16 autocast where the CPU has it, CUDA when present), writes a checkpoint
after every epoch and, with `resume=True`, continues from the last one. The result is an ordinary `Model`.

    result = finetune(dataset.train, FinetuneSettings(unfreeze="last-2", epochs=5), checkpoint_dir="ckpt")
    result.model.save("finetuned.safetensors")
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from artistid import storage
from artistid.backbones import Backbone, WeightsOrigin, create_backbone
from artistid.calibration import DEFAULT_FALSE_REJECTION, calibrate
from artistid.card import TrainingCard
from artistid.datasets import Sample
from artistid.decoding import exit_with_parent
from artistid.errors import ArtistIdError, ImageError
from artistid.head import ArtistHead
from artistid.images import Preprocess, decode_image
from artistid.model import Model

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

__all__ = ["FinetuneResult", "FinetuneSettings", "PaintingCrops", "finetune", "trainable_parameters"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "finetune-checkpoint.pt"
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class FinetuneSettings:
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    unfreeze: str = "last-2"  # "all", or "last-N": the last N blocks (stages) and the layers after them
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3  # the head's; unfrozen backbone layers get lr * backbone_lr_scale
    backbone_lr_scale: float = 0.1
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    image_size: int | None = None  # [default: the backbone's own]
    crop_scale: tuple[float, float] = (0.25, 1.0)  # share of the painting each random crop covers
    precision: str = "auto"  # auto (bf16 where native, or on CUDA), fp32 or bf16
    seed: int = 123
    # Held out of training for the temperature and the rejection threshold (0: no calibration).
    val_fraction: float = 0.1
    false_rejection: float = DEFAULT_FALSE_REJECTION

    def check(self) -> None:
        if self.unfreeze != "all" and re.fullmatch(r"last-[1-9]\d*", self.unfreeze) is None:
            raise ArtistIdError(f"--unfreeze must be 'all' or 'last-N' (e.g. last-2); got {self.unfreeze!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ArtistIdError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ArtistIdError("--epochs, --batch-size and --lr must be positive")
        if not 0 <= self.val_fraction < 1:
            raise ArtistIdError(f"--val-fraction must be in [0, 1); got {self.val_fraction}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ArtistIdError(f"--precision must be auto, fp32 or bf16; got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["crop_scale"] = list(self.crop_scale)
        return data


@dataclass
class FinetuneResult:
    model: Model
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0


# --- what learns -----------------------------------------------------------------------------------------------


def _blocks(network: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """The network's blocks in order, and the layers after them (timm EfficientNet, torchvision ResNet)."""
    layers = cast(Any, network)  # timm and torchvision name their blocks differently
    if hasattr(network, "blocks"):
        return list(layers.blocks), [getattr(network, n) for n in ("conv_head", "bn2") if hasattr(network, n)]
    if hasattr(network, "layer4"):
        return [layers.layer1, layers.layer2, layers.layer3, layers.layer4], []
    raise ArtistIdError(f"cannot find the blocks of {type(network).__name__} to unfreeze: use --unfreeze all")


def trainable_parameters(network: nn.Module, unfreeze: str) -> list[nn.Module]:
    """Unfreezes the chosen part of `network` (the rest stays frozen); returns the modules that learn."""
    network.requires_grad_(False)
    if unfreeze == "all":
        chosen = [network]
    else:
        blocks, after = _blocks(network)
        chosen = [*blocks[-int(unfreeze.removeprefix("last-")) :], *after]
    for module in chosen:
        module.requires_grad_(True)
    return chosen


# --- the data --------------------------------------------------------------------------------------------------


class PaintingCrops:
    """A map-style dataset of training samples as augmented crops (unusable images come back with label -1)."""

    def __init__(
        self, samples: Sequence[Sample], classes: list[str], preprocess: Preprocess, crop_scale: tuple[float, float]
    ) -> None:
        from torchvision.transforms import v2

        self.samples, self.preprocess = list(samples), preprocess
        self.index = {c: i for i, c in enumerate(classes)}
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(preprocess.size, scale=crop_scale, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
            ]
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, position: int) -> tuple[np.ndarray, int]:
        sample = self.samples[position]
        label = self.index[sample.label]  # type: ignore[index]
        try:
            # Decoded at twice the input size, so a crop of a quarter of the painting keeps full detail.
            image = decode_image(storage.read_bytes(sample.path), sample.path, draft_size=2 * self.preprocess.size)
        except (ImageError, OSError) as exc:
            logger.warning("skipped %s", exc)
            return np.zeros((0,)), -1
        return np.array(self.transform(image)), label


def _collate(items: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    usable = [(pixels, label) for pixels, label in items if label >= 0]
    if not usable:
        return np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int64)
    return np.stack([p for p, _ in usable]), np.array([label for _, label in usable])


def _split(samples: list[Sample], fraction: float, seed: int, classes: int) -> tuple[list[Sample], list[Sample]]:
    """Training and held-out samples, stratified by artist; no hold-out when too few images to spare one each."""
    from sklearn.model_selection import train_test_split

    held = max(classes, round(fraction * len(samples))) if fraction > 0 else 0
    if held == 0 or len(samples) - held < classes:
        return samples, []
    labels = [str(s.label) for s in samples]
    if min(labels.count(c) for c in set(labels)) < 2:
        return samples, []
    kept, spared = train_test_split(samples, test_size=held, random_state=seed, stratify=labels)
    return list(kept), list(spared)


# --- the loop --------------------------------------------------------------------------------------------------


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    try:
        torch.save(state, scratch)
        os.replace(scratch, path)  # a checkpoint is whole or absent, even if the run is killed while writing
    except BaseException:
        scratch.unlink(missing_ok=True)  # a full disk leaves no half checkpoint beside the last whole one
        raise


def _load_checkpoint(path: Path, settings: FinetuneSettings, classes: list[str]) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtistIdError(f"{path}: not a readable checkpoint ({exc})") from None
    if state.get("settings") != settings.to_dict() or state.get("classes") != classes:
        raise ArtistIdError(
            f"{path}: the checkpoint was written with other settings or artists; resume with the same ones, "
            "or start afresh without --resume"
        )
    return state


def _weights_digest(network: nn.Module) -> str:
    """Names the fine-tuned weights, so that cached features of other weights are never reused for them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def finetune(
    samples: Sequence[Sample],
    settings: FinetuneSettings | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    workers: int | None = None,
) -> FinetuneResult:
    """Fine-tunes the backbone and a new head on labelled samples; returns a `Model` (pooled features, linear head)."""
    import torch
    from torch.utils.data import DataLoader

    from artistid.features import FeatureExtractor, decode_workers
    from artistid.forward import ArtistForward

    settings = settings or FinetuneSettings()
    settings.check()
    labelled = [s for s in samples if s.label is not None]
    classes = sorted({str(s.label) for s in labelled})
    labelled, held_out = _split(labelled, settings.val_fraction, settings.seed, len(classes))
    if len(classes) < 2:
        found = f"{len(classes)} ({', '.join(classes)})" if classes else "none"
        raise ArtistIdError(f"fine-tuning needs images of at least two artists; found {found}")
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    backbone = create_backbone(settings.backbone, weights=settings.weights, input_size=settings.image_size)
    network = backbone.network
    extractor = FeatureExtractor(backbone, precision=settings.precision, runtime="torch")  # type: ignore[arg-type]
    device, bf16 = extractor.device, extractor.precision == "bf16"
    learning = trainable_parameters(network, settings.unfreeze)
    with torch.no_grad():
        dimension = int(network.eval()(torch.zeros(1, 3, 64, 64, device=device)).shape[1])
    head = torch.nn.Linear(dimension, len(classes)).to(device)
    learner = ArtistForward(backbone, head)  # what learns: the unfrozen part of the network, and the head
    learner.to(device)
    groups = [
        {"params": [p for m in learning for p in m.parameters()], "lr": settings.lr * settings.backbone_lr_scale},
        {"params": list(head.parameters()), "lr": settings.lr},
    ]
    optimizer: torch.optim.Optimizer = (
        torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
        if settings.optimizer == "adamw"
        else torch.optim.SGD(groups, momentum=0.9, weight_decay=settings.weight_decay)
    )
    loader: DataLoader[tuple[np.ndarray, int]] = DataLoader(
        cast(
            "Dataset[tuple[np.ndarray, int]]",
            PaintingCrops(labelled, classes, extractor.preprocess, settings.crop_scale),
        ),
        batch_size=settings.batch_size,
        shuffle=True,
        num_workers=decode_workers() if workers is None else workers,
        collate_fn=_collate,
        generator=torch.Generator().manual_seed(settings.seed),
        worker_init_fn=exit_with_parent,
    )
    total_steps = settings.epochs * max(1, len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    history: list[dict[str, float]] = []
    first_epoch = 0
    if resume:
        if checkpoint is None or not checkpoint.exists():
            raise ArtistIdError(f"nothing to resume: no checkpoint at {checkpoint or '(no --checkpoint-dir given)'}")
        state = _load_checkpoint(checkpoint, settings, classes)
        network.load_state_dict(state["network"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        first_epoch, history = int(state["epoch"]), list(state["history"])
        logger.info("resuming after epoch %d from %s", first_epoch, checkpoint)

    for epoch in range(first_epoch, settings.epochs):
        network.train()
        for module in network.modules():  # frozen layers keep their ImageNet batch-norm statistics
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()
            ):
                module.eval()
        total_loss, correct, seen = 0.0, 0, 0
        for pixels, labels in loader:
            if len(labels) == 0:
                continue
            targets = torch.from_numpy(labels).to(device)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                logits = learner(extractor.pixels(pixels)).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(labels)
        record = {"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1)}
        history.append(record)
        logger.info("epoch %s", record)
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                {
                    "epoch": epoch + 1,
                    "settings": settings.to_dict(),
                    "classes": classes,
                    "network": network.state_dict(),
                    "head": head.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "history": history,
                },
            )

    network.eval().cpu()
    origin = backbone.weights
    tuned = Backbone(
        backbone.spec,
        network,
        ("pooled",),
        "avg",
        WeightsOrigin(_weights_digest(network), f"fine-tuned from {origin.source}", origin.revision),
    )
    artist_head = ArtistHead.from_layer(
        classes, head.weight.detach().float().cpu().numpy(), head.bias.detach().float().cpu().numpy()
    )
    training = TrainingCard(
        method="finetune",
        settings=settings.to_dict(),
        n_train=len(labelled),
        n_val=len(held_out),
        history=tuple(history),
    )
    model = Model(tuned, artist_head, precision=extractor.precision, training=training)
    if held_out:
        # Scored by the finished model exactly as prediction will score them, fed nothing it trained on.
        features = model.features_for(held_out, workers=workers, progress=False)
        held_targets = np.searchsorted(np.asarray(classes), np.asarray(features.labels, dtype=str))
        calibration = calibrate(
            artist_head._scores(features.features),
            held_targets,
            false_rejection=settings.false_rejection,
            method=f"{len(features)} held-out training images",
        )
        model.card = replace(model.card, calibration=calibration)
    return FinetuneResult(model, history, resumed_from=first_epoch, seconds=time.perf_counter() - started)
