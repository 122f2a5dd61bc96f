"""Presets and the head's solvers: "standard" is the default, "reference" the reference recipe, "best" the richest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from typer.testing import CliRunner

from artistid.cli import app
from artistid.errors import ArtistIdError
from artistid.head import ArtistHead
from artistid.model import Model
from artistid.model_file import read_card
from artistid.train import PRESETS, STANDARD_FEATURE_NODES, TrainSettings, preset


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Features on very different scales, as style statistics of several layers are.
    X = np.vstack([rng.normal(3 * c, 1.0, size=(40, 6)) * [1, 10, 100, 0.01, 1, 5] for c in range(3)])
    return X.astype(np.float32), np.repeat(np.array(["Monet", "Picasso", "Van Gogh"]), 40)


@parametrize_with_checks([ArtistHead(solver="lbfgs", standardize=True), ArtistHead(standardize=True)])
def test_other_solvers_keep_the_estimator_contract(estimator, check) -> None:
    check(estimator)


def test_standard_preset_is_the_defaults_reference_is_unchanged_and_unknown_presets_are_refused() -> None:
    assert preset("standard") == TrainSettings()
    standard = TrainSettings()
    assert (standard.solver, standard.standardize, standard.pooling, standard.l2) == ("lbfgs", True, "meanstd", 0.01)
    assert standard.feature_nodes == STANDARD_FEATURE_NODES and standard.image_size is None and standard.tiles == 1
    # The reference design's recipe: pooled 224 px features, SGD for 7 epochs, minibatch 50, lr 0.2 x 10 then 0.1,
    # momentum 0.9, L2 0.0005.
    head = preset("reference").head()
    assert (head.solver, head.standardize, head.epochs, head.batch_size) == ("sgd", False, 7, 50)
    assert (head.lr, head.momentum, head.l2) == ("0.2x10,0.1", 0.9, 0.0005)
    assert preset("reference").feature_nodes is None and preset("reference").pooling == "avg"
    best = preset("best", image_size=320)
    assert best.image_size == 320 and best.solver == PRESETS["best"].solver == "lbfgs"
    assert PRESETS["best"].image_size != 320  # a copy was changed, not the preset
    with pytest.raises(ArtistIdError, match="unknown preset 'fast'"):
        preset("fast")


def test_lbfgs_head_matches_standardized_logistic_regression() -> None:
    X, y = _blobs()
    head = ArtistHead(solver="lbfgs", standardize=True, l2=0.05).fit(X, y)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=1 / (0.05 * len(y)), max_iter=1000)).fit(X, y)
    # The standardization is folded into one linear layer on raw features: the model file stays a linear head.
    assert head.coef_.shape == (3, 6) and head.intercept_.shape == (3,)
    assert np.allclose(head.predict_proba(X), reference.predict_proba(X), atol=1e-3)
    assert head.history_[0]["iterations"] >= 1 and head.history_[0]["train_error"] < 0.05


def test_standardized_sgd_and_two_class_lbfgs_heads() -> None:
    X, y = _blobs(1)
    raw = ArtistHead().fit(X, y)
    standardized = ArtistHead(standardize=True, lr="0.05").fit(X, y)
    assert np.mean(standardized.predict(X) == y) >= np.mean(raw.predict(X) == y)
    two = ArtistHead(solver="lbfgs", standardize=True).fit(X[:80], y[:80])
    assert two.coef_.shape == (2, 6)
    assert np.allclose(two.predict_proba(X[:80]).sum(axis=1), 1)
    assert np.mean(two.predict(X[:80]) == y[:80]) > 0.9
    with pytest.raises(ValueError, match="solver must be one of"):
        ArtistHead(solver="adam").fit(X, y)
    with pytest.raises(ValueError, match="lbfgs solver needs l2 > 0"):
        ArtistHead(solver="lbfgs", l2=0).fit(X, y)


def test_best_preset_trains_from_the_command_line(demo_data: Path, tmp_path: Path, cache_dir: Path) -> None:
    """The best recipe end to end on a small part of the demo set; options typed on the command line override it."""
    train = tmp_path / "Train"
    for artist in ("Claude_Monet", "Rembrandt", "Vincent_van_Gogh"):
        (train / artist).mkdir(parents=True)
        for image in sorted((demo_data / "Train" / artist).glob("*.jpg"))[:12]:
            (train / artist / image.name).write_bytes(image.read_bytes())
    output = tmp_path / "best.safetensors"
    command = ["train", str(train), "-o", str(output), "--preset", "best", "--image-size", "256", "--json"]
    typed = ["--calibration-folds", "3", "--false-rejection", "0.1", "--cache-dir", str(cache_dir)]
    result = CliRunner().invoke(app, [*command, *typed])
    assert result.exit_code == 0, result.output
    training = read_card(output).training
    assert training is not None
    settings = training.settings
    assert settings["image_size"] == 256 and settings["calibration_folds"] == 3  # typed: overrides
    assert settings["solver"] == "lbfgs" and settings["pooling"] == "meanstd"  # not typed: from the preset
    model = Model.load(output)
    assert model.preprocess.size == 256
    assert model.head.n_features_in_ > 1280  # pooled features plus the style statistics of every block
    assert model.card.calibration.method.startswith("3-fold")
    assert model.card.calibration.target_false_rejection == 0.1
    painting = next((demo_data / "Test" / "Rembrandt").glob("*.jpg"))
    assert model.predict_proba(painting).shape == (1, 3)
    assert json.loads(result.output)["history"][0]["iterations"] >= 1

    # The same features made by `featurize` (e.g. on Spark) train the same recipe.
    nodes = [f"--feature-node={node}" for node in PRESETS["best"].feature_nodes or ()]
    features = tmp_path / "features.parquet"
    made = CliRunner().invoke(
        app, ["featurize", str(train), "-o", str(features), *nodes, "--pooling", "meanstd", "--image-size", "256",
              "--tiles", "2", "--cache-dir", str(cache_dir), "--json"],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    again = CliRunner().invoke(app, ["train", str(features), "-o", str(tmp_path / "again.safetensors"), "--preset",
                                     "best", "--image-size", "256", "--json"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert Model.load(tmp_path / "again.safetensors").head.n_features_in_ == model.head.n_features_in_
