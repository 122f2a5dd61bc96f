"""Tiles: a painting seen whole and as a grid of squares, each at the network's own scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from artistid.backbones import create_backbone
from artistid.card import from_dict, to_dict
from artistid.cli import app
from artistid.images import Preprocess, load_image
from artistid.model import Model

pytestmark = pytest.mark.timeout(300)


def test_a_tiled_painting_has_the_features_of_the_whole_and_the_mean_of_its_squares() -> None:
    cut = {"pooling": "meanstd", "feature_nodes": ("blocks.2",), "input_size": 64}
    tiled = create_backbone("efficientnet_lite0", tiles=2, **cut)  # type: ignore[arg-type]
    whole = create_backbone("efficientnet_lite0", **cut)  # type: ignore[arg-type]
    batch = torch.randn(3, 3, 128, 128)
    squares = [batch[:, :, r : r + 64, c : c + 64] for r in (0, 64) for c in (0, 64)]
    with torch.no_grad():
        mean_of_squares = torch.stack([whole(square) for square in squares]).mean(0)
        averaged_down = whole(torch.nn.functional.avg_pool2d(batch, 2))
        assert torch.allclose(tiled(batch), torch.cat([averaged_down, mean_of_squares], 1), atol=1e-5)
        # stitch undoes tile, so Grad-CAM can put the squares' maps back together.
        assert torch.equal(tiled.stitch(tiled.tile(batch)), batch)
    assert tiled.preprocess.tiles == 2 and tiled.preprocess.side == 128


def test_the_centre_view_adds_the_features_of_the_central_square_of_half_the_side() -> None:
    cut = {"pooling": "meanstd", "feature_nodes": ("blocks.2", "global_pool.flatten"), "input_size": 64}
    centred = create_backbone("efficientnet_lite0", centre=True, **cut)  # type: ignore[arg-type]
    whole = create_backbone("efficientnet_lite0", **cut)  # type: ignore[arg-type]
    assert centred.preprocess.side == 128 and centred.preprocess.key().endswith("/centre")
    batch = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = torch.cat([whole(torch.nn.functional.avg_pool2d(batch, 2)), whole(batch[:, :, 32:96, 32:96])], 1)
        assert torch.allclose(centred(batch), expected, atol=1e-4)
    # Per node, of the whole painting's part: blocks.2's channel means and deviations, then the pooled vector.
    assert centred.node_widths() == (2 * 40, 1280)
    with pytest.raises(ValueError, match="centre view takes 1 or 2 tiles"):
        Preprocess(size=64, tiles=3, centre=True)


def test_preprocess_decodes_the_whole_grid_and_keys_the_cache_by_it(tmp_path: Path) -> None:
    painting = tmp_path / "wide.png"
    Image.new("RGB", (300, 100), (200, 30, 30)).save(painting)
    tiled = Preprocess(size=96, tiles=3)
    assert load_image(painting, tiled).shape == (288, 288, 3)
    assert tiled.key() != Preprocess(size=96).key()
    assert Preprocess(size=96).key() == "decode-v1/96/stretch/(0.485, 0.456, 0.406)/(0.229, 0.224, 0.225)"
    assert from_dict(Preprocess, to_dict(tiled)) == tiled
    old_file = {k: v for k, v in to_dict(Preprocess(size=96)).items() if k != "tiles"}
    assert from_dict(Preprocess, old_file).tiles == 1  # model files written before tiles existed
    with pytest.raises(ValueError, match="tiles must be between 1 and 8"):
        Preprocess(size=512, tiles=9)


def test_tiled_model_trains_saves_explains_and_exports(demo_data: Path, tmp_path: Path, cache_dir: Path) -> None:
    train = tmp_path / "Train"
    for artist in ("Claude_Monet", "Rembrandt"):
        (train / artist).mkdir(parents=True)
        for image in sorted((demo_data / "Train" / artist).glob("*.jpg"))[:8]:
            (train / artist / image.name).write_bytes(image.read_bytes())
    output = tmp_path / "tiled.safetensors"
    command = ["train", str(train), "-o", str(output), "--tiles", "2", "--image-size", "96", "--cache-dir",
               str(cache_dir), "--calibration-folds", "0", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    model = Model.load(output)
    assert (model.preprocess.size, model.preprocess.tiles) == (96, 2)
    assert model.card.training is not None and model.card.training.settings["tiles"] == 2
    painting = next((demo_data / "Test" / "Rembrandt").glob("*.jpg"))
    pixels = load_image(painting, model.preprocess)
    assert pixels.shape == (192, 192, 3)
    assert np.allclose(model.predict_proba(painting), model.head.predict_proba(model.extractor(pixels[None])))

    pytest.importorskip("pytorch_grad_cam", reason="pip install artistid[explain] (the grad-cam package)")
    from artistid.explain import grad_cam

    explanation = grad_cam(model, painting)
    assert explanation.heat.shape == explanation.picture.shape[:2] and explanation.heat.max() > 0.5

    onnx_path = tmp_path / "tiled.onnx"
    exported = CliRunner().invoke(app, ["export", str(output), "--onnx", str(onnx_path), "--check-images", str(train)])
    assert exported.exit_code == 0, exported.output  # the export checked itself against PyTorch in fp32
    from artistid.onnx_model import OnnxModel

    onnx_model = OnnxModel.load(onnx_path)
    assert onnx_model.preprocess == model.preprocess
    assert np.allclose(onnx_model.predict_pixels(pixels[None]), model.predict_proba(painting), atol=0.02)
