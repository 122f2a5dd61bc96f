"""`artistid export MODEL --onnx OUT.onnx`: the whole model as one ONNX graph, checked against PyTorch.

The graph maps uint8 pixels (batch, size, size, 3), RGB, as `artistid.images.load_image` returns them, to class
probabilities: normalization, the backbone cut at its feature layer, the head, temperature and softmax. The model
card (class names, preprocessing, refusal rules...) travels in the file's `metadata_props` (see
`artistid.onnx_model`).

Export and check run in fp32. A model that featurizes in bf16 (the default where the CPU has it) is exported with
fp32 arithmetic, and ONNX Runtime is compared with the PyTorch fp32 forward of the same pipeline: the same artist
for every sample image and every probability within `tolerance`, else the export fails saying by how much and no
file is written. The bf16 difference is reported beside it, for information.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from artistid.card import card_to_dict
from artistid.datasets import demo_data, is_image_name
from artistid.errors import ExportError, ImageError
from artistid.images import load_image
from artistid.onnx_model import (
    INPUT_NAME,
    METADATA_KEY,
    ONNX_FORMAT,
    ONNX_FORMAT_VERSION,
    OTHER_SCORE_NAME,
    OUTPUT_NAME,
    PAINTING_SCORE_NAME,
    OnnxModel,
)
from artistid.runtimes import trace_to_onnx
from artistid.storage import file_sha256, write_bytes_atomic

if TYPE_CHECKING:
    from torch import nn

    from artistid.model import Model

__all__ = ["ExportReport", "export_onnx", "pipeline_module", "sample_pixels"]

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4
SAMPLE_IMAGES = 16


@dataclass
class ExportReport:
    """What the export wrote and how closely ONNX Runtime reproduces PyTorch on the sample images."""

    path: str
    images: int
    max_abs_diff: float  # ONNX Runtime vs the PyTorch fp32 pipeline
    head_max_abs_diff: float  # the PyTorch pipeline vs the model's own head on fp32 features
    bf16_max_abs_diff: float | None  # ONNX Runtime vs the model as it runs in bf16 (information only)
    tolerance: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pipeline_module(model: Model) -> nn.Module:
    """The model's forward module (fp32) with the graph's outputs: uint8 NHWC pixels -> probabilities, then the
    refusal gates' scores."""
    import torch
    from torch import nn

    class Pipeline(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.torch_module()
            # The refusal gates travel inside the graph as extra outputs (artistid.refusals scores the same way).
            painting, other = model.gates.painting, model.gates.other
            self.reference: torch.Tensor
            self.other_weight: torch.Tensor
            self.other_bias: torch.Tensor
            self.other_mask: torch.Tensor
            self.neighbours = 0 if painting is None else max(1, min(painting.neighbours, len(painting.reference)))
            self.columns = (0, 0) if painting is None else painting.columns
            if painting is not None:
                self.register_buffer("reference", torch.as_tensor(painting.reference, dtype=torch.float32))
            self.has_other = other is not None
            if other is not None:
                self.register_buffer("other_weight", torch.as_tensor(other.weight, dtype=torch.float32))
                self.register_buffer("other_bias", torch.as_tensor(other.bias, dtype=torch.float32))
                self.register_buffer("other_mask", torch.as_tensor(other.other, dtype=torch.float32))

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outputs = self.model(pixels)
            features = outputs.features.float()
            found = [outputs.probabilities]
            if self.neighbours:
                compared = features[:, self.columns[0] : self.columns[1]]
                unit = compared / compared.norm(dim=1, keepdim=True).clamp_min(1e-12)
                found.append(torch.topk(unit @ self.reference.T, self.neighbours, dim=1).values.mean(dim=1))
            if self.has_other:
                others = torch.softmax(features @ self.other_weight.T + self.other_bias, dim=1)
                found.append((others * self.other_mask).sum(dim=1))
            return tuple(found)

    return Pipeline().eval()


def _demo_images() -> list[str]:
    with demo_data() as root:
        return sorted(str(p) for p in (root / "Test").rglob("*") if p.is_file() and is_image_name(p.name))


def sample_pixels(model: Model, images: Sequence[str] | None = None, limit: int = SAMPLE_IMAGES) -> np.ndarray:
    """Decoded sample images for the check: the given files, or paintings from the shipped demo set."""
    paths = list(images) if images else _demo_images()
    if len(paths) > limit:  # an even spread over the (sorted, so by artist) list
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    pixels = []
    for path in paths:
        try:
            pixels.append(load_image(path, model.preprocess))
        except ImageError as exc:
            logger.warning("parity check skips %s", exc)
    if not pixels:
        advice = "pass other images with --check-images" if images else "pass some with --check-images"
        raise ExportError(f"no usable image to check the export with (tried {len(paths)}): {advice}")
    return np.stack(pixels)


def _fp32_reference(model: Model, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's probabilities, and the model's own head on fp32 features of the same pixels."""
    import torch

    pipeline = pipeline_module(model)
    with torch.inference_mode():
        probabilities = pipeline(torch.from_numpy(pixels))[0].numpy()
        features = model.backbone(model.extractor.to_input(pixels)).float().cpu().numpy()
    return probabilities, model.probabilities(features)


def _compare(actual: np.ndarray, expected: np.ndarray, tolerance: float, disagreement: str) -> float:
    """The largest difference; raises ExportError starting with `disagreement` if an artist differs or it is over."""
    if actual.shape != expected.shape:
        raise ExportError(f"{disagreement}: probabilities of shape {actual.shape} instead of {expected.shape}")
    diff = float(np.abs(actual - expected).max())
    differ = int((actual.argmax(axis=1) != expected.argmax(axis=1)).sum())
    if differ or not diff <= tolerance:  # `not <=` also catches NaN
        raise ExportError(
            f"{disagreement}: max probability difference {diff:.3g} (tolerance {tolerance:g}), "
            f"{differ} with a different artist"
        )
    return diff


def _metadata(model: Model, source: str | None, pixels_checked: int) -> dict[str, Any]:
    """The file's metadata; the parity check's result, `max_abs_diff`, is filled in once it is known."""
    return {
        "format": ONNX_FORMAT,
        "version": ONNX_FORMAT_VERSION,
        # The graph computes in fp32, whatever the model file's features were computed with.
        "card": card_to_dict(replace(model.card, precision="fp32")),
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "layout": "NHWC",
            "shape": ["batch", model.preprocess.side, model.preprocess.side, 3],
            "channels": "RGB",
            "note": "pixels as artistid.images.load_image returns them; normalization is inside the graph",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(model.card.classes)],
            "what": "softmax probabilities (calibrated: the card's temperature is inside the graph)",
        },
        "source_model": {
            "name": Path(source).name if source else None,
            "sha256": file_sha256(source) if source and Path(source).is_file() else None,
            "precision": model.extractor.precision,
        },
        "parity": {"images": pixels_checked, "max_abs_diff": None, "reference": "PyTorch fp32"},
        "exported": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _output_names(model: Model) -> list[str]:
    names = [OUTPUT_NAME]
    if model.gates.painting is not None:
        names.append(PAINTING_SCORE_NAME)
    if model.gates.other is not None:
        names.append(OTHER_SCORE_NAME)
    return names


def export_onnx(
    model: Model,
    output: str | Path,
    *,
    check_images: Sequence[str] | None = None,
    tolerance: float = TOLERANCE,
    source: str | None = None,
) -> ExportReport:
    """Writes `output` (atomically) once ONNX Runtime reproduces the PyTorch fp32 pipeline on sample images."""
    import onnx

    started = time.perf_counter()
    output = Path(output)
    pixels = sample_pixels(model, check_images)
    expected, head_expected = _fp32_reference(model, pixels)
    head_diff = _compare(
        expected,
        head_expected,
        tolerance,
        f"{source or 'model'}: the export pipeline disagrees with the model's own head on {len(pixels)} sample images",
    )
    metadata = _metadata(model, source, len(pixels))
    with tempfile.TemporaryDirectory(prefix="artistid-export-") as scratch:
        traced = Path(scratch) / output.name
        trace_to_onnx(pipeline_module(model), pixels[:2], str(traced), INPUT_NAME, _output_names(model))
        graph = onnx.load(traced)
        onnx.checker.check_model(graph)
        onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps(metadata)})
        onnx.save(graph, traced)
        diff = _compare(
            OnnxModel.load(traced).predict_pixels(pixels),  # read back as `artistid serve` will
            expected,
            tolerance,
            f"{output}: ONNX Runtime disagrees with PyTorch (fp32) on {len(pixels)} sample images",
        )
    metadata["parity"]["max_abs_diff"] = diff
    onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps(metadata)})
    write_bytes_atomic(output, graph.SerializeToString())
    bf16_diff = None
    if model.extractor.precision == "bf16":
        bf16_diff = float(np.abs(model.probabilities(model.extractor(pixels)) - expected).max())
    report = ExportReport(
        path=str(output),
        images=len(pixels),
        max_abs_diff=diff,
        head_max_abs_diff=head_diff,
        bf16_max_abs_diff=bf16_diff,
        tolerance=tolerance,
        seconds=time.perf_counter() - started,
    )
    logger.info("exported %s: max probability difference %.3g on %d images", output, diff, len(pixels))
    return report
