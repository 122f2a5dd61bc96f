"""ONNX export: the whole pipeline in one graph, metadata to use it, and a parity check that cannot pass silently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from artistid.card import card_from_dict
from artistid.cli import app
from artistid.errors import ExportError, ModelFileError
from artistid.export import export_onnx, pipeline_module
from artistid.images import load_image
from artistid.onnx_model import OnnxModel

pytestmark = pytest.mark.timeout(300)


def test_exported_model_matches_pytorch_fp32_on_other_paintings(demo_onnx_path: Path, demo_model, demo_data: Path):
    import torch

    onnx_model = OnnxModel.load(demo_onnx_path)
    # Train paintings: not the Test ones the export checked itself on.
    files = sorted(p for p in (demo_data / "Train").rglob("*.jpg"))[::7]
    pixels = np.stack([load_image(f, demo_model.preprocess) for f in files])
    with torch.inference_mode():
        expected = pipeline_module(demo_model)(torch.from_numpy(pixels))[0].numpy()
    actual = onnx_model.predict_pixels(pixels)
    assert actual.shape == (len(files), 3)
    assert np.abs(actual - expected).max() <= 1e-4
    assert (actual.argmax(1) == expected.argmax(1)).all()
    # The model as PyTorch runs it (bf16 where the CPU has it) names the same artists, up to bf16 rounding.
    served = demo_model.predict_proba(files)
    assert np.abs(served - actual).max() < 0.02


def test_metadata_says_how_to_use_the_graph(demo_onnx_path: Path, demo_model, demo_model_path: Path) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(demo_onnx_path).metadata_props}
    meta = json.loads(props["artistid"])
    card = card_from_dict(meta["card"])
    assert card.classes == demo_model.card.classes
    assert card.preprocess == demo_model.preprocess
    assert card.rules == demo_model.card.rules and card.rules.threshold is not None
    assert card.calibration.temperature == demo_model.card.calibration.temperature
    assert card.precision == "fp32"  # the graph's arithmetic
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["layout"] == "NHWC"
    side = demo_model.preprocess.side  # the default recipe sees the whole painting and its central square
    assert meta["input"]["shape"] == ["batch", side, side, 3]
    assert meta["source_model"]["name"] == demo_model_path.name
    assert 0 <= meta["parity"]["max_abs_diff"] <= 1e-4 and meta["parity"]["images"] == 16
    graph = onnx.load(demo_onnx_path).graph
    # The "not a painting" gate travels as a second output (a model trained with --others adds "other_score").
    outputs = [o.name for o in graph.output]
    assert [i.name for i in graph.input] == ["pixels"] and outputs == ["probabilities", "painting_score"]
    assert card.refusals["not_a_painting"]["threshold"] == demo_model.card.rules.painting_threshold


def test_export_refuses_a_graph_that_disagrees_with_pytorch(demo_model_path: Path, tmp_path: Path, monkeypatch) -> None:
    from artistid import export
    from artistid.model import Model

    model = Model.load(demo_model_path)  # a copy: the traced graph gets other weights than the check expects
    trace = export.trace_to_onnx

    import torch

    def trace_other_weights(module, example: np.ndarray, path: str, *names: str) -> None:
        weight = module.model.head.weight  # the pipeline's ArtistForward head
        noise = np.random.default_rng(0).normal(0, 0.05, tuple(weight.shape)).astype(np.float32)
        with torch.no_grad():
            weight += torch.from_numpy(noise)
        trace(module, example, path, *names)

    monkeypatch.setattr(export, "trace_to_onnx", trace_other_weights)
    output = tmp_path / "wrong.onnx"
    with pytest.raises(
        ExportError,
        match=r"wrong.onnx: ONNX Runtime disagrees with PyTorch \(fp32\) on 16 sample images: "
        r"max probability difference [0-9.e-]+ \(tolerance 0.0001\)",
    ):
        export_onnx(model, output)
    assert list(tmp_path.iterdir()) == []


def test_export_that_fails_its_check_writes_nothing(demo_model, tmp_path: Path) -> None:
    output = tmp_path / "strict.onnx"
    with pytest.raises(ExportError, match=r"disagrees with .* difference [0-9.e-]+ \(tolerance 1e-12\)"):
        export_onnx(demo_model, output, tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []


def test_export_command(demo_model_path: Path, demo_data: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "model.onnx"
    check = demo_data / "Train" / "Rembrandt"
    result = CliRunner().invoke(
        app, ["export", str(demo_model_path), "--onnx", str(output), "--check-images", str(check), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["path"] == str(output) and output.is_file()
    assert report["images"] == 16 and report["max_abs_diff"] <= 1e-4
    assert OnnxModel.load(output).classes_.tolist() == ["Claude_Monet", "Rembrandt", "Vincent_van_Gogh"]

    missing = CliRunner().invoke(app, ["export", str(tmp_path / "nope.safetensors"), "--onnx", str(output)])
    assert missing.exit_code == 1
    assert missing.output.strip() == f"artistid: error: {tmp_path / 'nope.safetensors'}: model file not found"


def test_onnx_files_not_from_artistid_are_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    plain = tmp_path / "plain.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), plain)
    with pytest.raises(ModelFileError, match="not exported by `artistid export`"):
        OnnxModel.load(plain)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx" * 10)
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        OnnxModel.load(garbage)
    with pytest.raises(ModelFileError, match="not found"):
        OnnxModel.load(tmp_path / "missing.onnx")
