"""Grad-CAM explanations: the heat map, the PNG and the `explain` command."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from artistid.cli import app
from artistid.errors import ArtistIdError, ImageError
from artistid.explain import grad_cam
from artistid.model import Model


@pytest.fixture(scope="module")
def painting(demo_data: Path) -> Path:
    return sorted((demo_data / "Test" / "Vincent_van_Gogh").glob("*.jpg"))[0]


def test_heat_map_covers_the_painting_and_names_the_top_artist(demo_model: Model, painting: Path) -> None:
    explanation = grad_cam(demo_model, painting)
    with Image.open(painting) as original:
        width, height = original.size
    assert explanation.heat.shape == explanation.picture.shape[:2]
    # The painting's own shape (scaled down for display), not the network's square input.
    assert explanation.heat.shape[1] / explanation.heat.shape[0] == pytest.approx(width / height, rel=0.02)
    # A map that points somewhere: some regions are far hotter than others.
    assert np.quantile(explanation.heat, 0.95) - np.quantile(explanation.heat, 0.05) > 0.5
    probabilities = demo_model.predict_proba(painting)[0]
    assert explanation.artist == demo_model.classes_[probabilities.argmax()]
    assert explanation.probability == pytest.approx(probabilities.max(), abs=1e-3)


def test_maps_differ_between_artists_and_in_memory_inputs_work(demo_model: Model, painting: Path) -> None:
    first, second = (grad_cam(demo_model, painting.read_bytes(), artist) for artist in demo_model.classes_[:2])
    assert first.artist != second.artist
    assert not np.allclose(first.heat, second.heat)
    with Image.open(painting) as image:
        png = grad_cam(demo_model, image.copy()).png()
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
    with pytest.raises(ArtistIdError, match="unknown artist 'Picasso'"):
        grad_cam(demo_model, painting, "Picasso")
    with pytest.raises(ImageError):
        grad_cam(demo_model, b"not an image")


def test_explain_command_writes_a_png(demo_model_path: Path, painting: Path, tmp_path: Path) -> None:
    output = tmp_path / "heat.png"
    result = CliRunner().invoke(app, ["explain", str(demo_model_path), str(painting), "-o", str(output), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["output"] == str(output) and record["artist"] in Model.load(demo_model_path).classes_
    with Image.open(output) as picture:
        assert picture.format == "PNG" and picture.width > 100
    missing = CliRunner().invoke(app, ["explain", str(demo_model_path), str(tmp_path / "none.jpg"), "-o", str(output)])
    assert missing.exit_code == 1 and "none.jpg" in missing.output
