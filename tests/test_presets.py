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
from artistid.head import ArtistHead, RowSpace
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
    with pytest.raises(ArtistIdError, match=r"lr \(--lr\), momentum \(--momentum\) set the SGD solver's loop"):
        preset("standard", lr="0.1", momentum=0.5)
    assert preset("standard", solver="sgd", epochs=3).epochs == 3


def test_lbfgs_head_matches_standardized_logistic_regression() -> None:
    X, y = _blobs()
    head = ArtistHead(solver="lbfgs", standardize=True, l2=0.05).fit(X, y)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=1 / (0.05 * len(y)), max_iter=1000)).fit(X, y)
    # The standardization is folded into one linear layer on raw features: the model file stays a linear head.
    assert head.coef_.shape == (3, 6) and head.intercept_.shape == (3,)
    assert np.allclose(head.predict_proba(X), reference.predict_proba(X), atol=1e-3)
    assert head.history_[0]["iterations"] >= 1 and head.history_[0]["train_error"] < 0.05


def _wide(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fewer paintings than features, as style statistics give, with two rows repeated (a rank-deficient span)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 300)) * rng.uniform(0.1, 10, size=300)
    labels = np.arange(90) % 3
    X = centers[labels] + rng.normal(size=(90, 300)) * rng.uniform(0.1, 10, size=300)
    X[1], X[2] = X[4], X[5]
    return X.astype(np.float32), np.array(["Monet", "Picasso", "Van Gogh"])[labels]


def test_row_space_coordinates_keep_every_inner_product_and_weights_score_as_they_do() -> None:
    rows, _ = _wide()
    space = RowSpace(rows)
    assert space.coordinates.shape == (90, 88)  # each repeated row spans nothing new
    assert np.allclose(space.coordinates @ space.coordinates.T, rows @ rows.T, rtol=1e-4, atol=1e-2)
    coefficients = np.random.default_rng(1).normal(size=(3, 88))
    assert np.allclose(rows @ space.weights(coefficients).T, space.coordinates @ coefficients.T, atol=1e-2)


def test_wide_lbfgs_heads_fit_in_the_row_space_and_find_the_same_model() -> None:
    X, y = _wide()
    new_rows = _wide(1)[0]  # scored by weights that must hold outside the training rows' span too
    for keep in (slice(None), np.isin(y, ["Monet", "Picasso"])):
        head = ArtistHead(solver="lbfgs", standardize=True, l2=0.05).fit(X[keep], y[keep])
        reference = make_pipeline(
            StandardScaler(), LogisticRegression(C=1 / (0.05 * len(y[keep])), tol=1e-8, max_iter=5000)
        ).fit(X[keep], y[keep])
        assert head.coef_.shape == (len(set(y[keep])), 300)
        assert np.allclose(head.predict_proba(X[keep]), reference.predict_proba(X[keep]), atol=1e-3)
        # Off the training rows the solver's tolerance shows more, as it does between any two stopping points.
        assert np.allclose(head.predict_proba(new_rows), reference.predict_proba(new_rows), atol=2e-2)


def test_fold_copies_learn_on_coordinates_what_they_would_learn_on_the_standardized_rows() -> None:
    X, y = _wide()
    fold_head, rows = ArtistHead(solver="lbfgs", standardize=True, l2=0.05).fold_copy(X)
    assert rows.shape == (90, 87) and not fold_head.standardize and not hasattr(fold_head, "coef_")  # centred: one less
    taught, held = np.arange(90) % 5 != 0, np.arange(90) % 5 == 0
    standardized = StandardScaler().fit(X).transform(X)  # all rows' statistics, as the folds share them
    reference = LogisticRegression(C=1 / (0.05 * taught.sum()), tol=1e-8, max_iter=5000)
    reference.fit(standardized[taught], y[taught])
    fold = fold_head.fit(rows[taught], y[taught])
    assert np.allclose(fold.predict_proba(rows[held]), reference.predict_proba(standardized[held]), atol=1e-3)
    narrow, _ = _blobs()  # more rows than features: nothing to rotate
    copy, same = ArtistHead(solver="lbfgs", standardize=True).fold_copy(narrow)
    assert copy.standardize and np.array_equal(same, narrow)


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
