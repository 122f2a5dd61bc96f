"""Calibration: temperature scaling, expected calibration error, the rejection threshold and "unknown"."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from artistid.answers import RefusalRules
from artistid.calibration import (
    calibrate,
    choose_threshold,
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    out_of_fold_scores,
    softmax,
)
from artistid.cli import app
from artistid.evaluate import coverage_png
from artistid.head import ArtistHead
from artistid.model import UNKNOWN, Model


def _synthetic(n: int = 4000, classes: int = 3, temperature: float = 3.0, seed: int = 0):
    """Scores whose labels are drawn from softmax(scores / temperature): that temperature calibrates them."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 4, size=(n, classes))
    probabilities = softmax(scores, temperature)
    targets = np.array([rng.choice(classes, p=row) for row in probabilities])
    return scores, targets


def test_temperature_scaling_recovers_the_temperature_and_lowers_ece() -> None:
    scores, targets = _synthetic(temperature=3.0)
    temperature = fit_temperature(scores, targets)
    assert temperature == pytest.approx(3.0, rel=0.15)
    found = calibrate(scores, targets)
    assert found.ece_after < 0.03 < found.ece_before
    assert found.nll_after < found.nll_before
    assert found.temperature == pytest.approx(temperature)


def test_expected_calibration_error_of_perfect_and_overconfident_predictions() -> None:
    certain_and_right = np.eye(3)[[0, 1, 2, 0]]
    assert expected_calibration_error(certain_and_right, np.array([0, 1, 2, 0])) == 0.0
    # Always 100% sure, right half the time: off by 50 points.
    assert expected_calibration_error(certain_and_right, np.array([0, 1, 0, 1])) == pytest.approx(0.5)
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)) == 0.0


def test_threshold_rejects_at_most_the_chosen_share_of_known_paintings() -> None:
    confidence = np.linspace(0.3, 1.0, 200)
    for share in (0.0, 0.02, 0.1):
        threshold = choose_threshold(confidence, share)
        assert np.mean(confidence < threshold) <= share
    with pytest.raises(ValueError, match="false_rejection"):
        choose_threshold(confidence, 1.5)


def test_coverage_curve_answers_the_most_confident_first() -> None:
    confidence = np.array([0.9, 0.5, 0.99, 0.6])
    correct = np.array([True, False, True, False])
    coverage, accuracy, thresholds = coverage_curve(confidence, correct)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert accuracy.tolist() == [1.0, 1.0, pytest.approx(2 / 3), 0.5]
    assert thresholds.tolist() == [0.99, 0.9, 0.6, 0.5]
    with Image.open(io.BytesIO(coverage_png(confidence, correct, threshold=0.7))) as plot:
        assert plot.format == "PNG" and plot.width > 200


def test_out_of_fold_scores_come_from_heads_that_did_not_see_the_row() -> None:
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(c, 1.0, size=(30, 5)) for c in range(3)]).astype(np.float32)
    y = np.repeat(np.array(["a", "b", "c"]), 30)
    scores = out_of_fold_scores(ArtistHead(solver="lbfgs", standardize=True, l2=0.01), X, y, folds=5)
    assert scores.shape == (90, 3) and np.isfinite(scores).all()
    assert np.mean(scores.argmax(axis=1) == np.repeat([0, 1, 2], 30)) > 0.8
    # A memorizing head would score its own rows perfectly; held-out rows are scored less confidently.
    full = ArtistHead(solver="lbfgs", standardize=True, l2=0.01).fit(X, y)
    assert softmax(scores).max(axis=1).mean() < full.predict_proba(X).max(axis=1).mean()


def test_folds_fitted_side_by_side_score_as_one_at_a_time_and_leave_blas_threads_as_they_were() -> None:
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(c, 2.0, size=(20, 40)) for c in range(3)]).astype(np.float32)
    y = np.repeat(np.array(["a", "b", "c"]), 20)
    head = ArtistHead(solver="lbfgs", standardize=True, l2=0.01)
    threads_before = [pool["num_threads"] for pool in threadpool_info()]
    scores = out_of_fold_scores(head, X, y, folds=4, seed=5)
    assert [pool["num_threads"] for pool in threadpool_info()] == threads_before
    one_at_a_time = np.zeros_like(scores)
    for train_rows, held_rows in StratifiedKFold(4, shuffle=True, random_state=5).split(X, y):
        one_at_a_time[held_rows] = clone(head).fit(X[train_rows], y[train_rows]).decision_function(X[held_rows])
    assert np.allclose(scores, one_at_a_time, atol=1e-4)


def test_a_photo_of_a_held_out_painting_never_teaches_the_fold_that_scores_it() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(0, 1.0, size=(60, 80)).astype(np.float32)
    y = rng.permutation(np.repeat(np.array(["a", "b"]), 30))  # no signal: only memorizing can score above chance
    photos = X + rng.normal(0, 0.05, X.shape).astype(np.float32)  # a near copy of each row, under its label
    head = ArtistHead(solver="lbfgs", standardize=True, l2=0.001)
    scored = out_of_fold_scores(head, X, y, folds=5, extra=(photos, y, np.arange(60)))
    taught, photos_scored = scored[:60], scored[60:]
    # Had a held-out row's photo taught its fold, that fold would have memorized the row.
    leaked = out_of_fold_scores(head, np.vstack([X, photos]), np.concatenate([y, y]), folds=5)[:60]
    truth = (y == "b").astype(int)
    assert np.mean(leaked.argmax(axis=1) == truth) >= 0.78
    assert np.mean(taught.argmax(axis=1) == truth) <= 0.7
    # Each photo is scored by the fold that held out its painting, so it is no easier than the painting.
    assert np.mean(photos_scored.argmax(axis=1) == truth) <= 0.7


def test_the_threshold_answers_photos_of_paintings_as_it_does_the_paintings() -> None:
    rng = np.random.default_rng(4)
    targets = rng.integers(0, 3, 400)
    scores = rng.normal(0, 1, (400, 3)) + 4 * np.eye(3)[targets]
    photos = rng.normal(0, 1, (200, 3)) + 1.5 * np.eye(3)[targets[:200]]  # photos: less sure of their artist
    alone = calibrate(scores, targets, false_rejection=0.05)
    together = calibrate(scores, targets, false_rejection=0.05, photographed=photos)
    assert together.temperature == alone.temperature  # the paintings' temperature
    confidence = np.concatenate(
        [softmax(scores, alone.temperature).max(axis=1), softmax(photos, alone.temperature).max(axis=1)]
    )
    assert together.rules.threshold < alone.rules.threshold
    assert np.mean(confidence < together.rules.threshold) <= 0.05


# --- the model file and the commands ------------------------------------------------------------------------------


def test_training_stores_the_calibration_in_the_model_file(demo_model: Model, demo_data: Path) -> None:
    calibration = demo_model.card.calibration
    assert calibration.n == 240 and calibration.method.startswith("5-fold")
    assert calibration.ece_after is not None and calibration.ece_before is not None
    # The temperature minimizes the held-out negative log-likelihood; the calibration error stays small.
    assert calibration.nll_after is not None and calibration.nll_before is not None
    assert calibration.nll_after <= calibration.nll_before + 1e-9
    assert calibration.ece_after <= 0.05
    assert calibration.temperature != 1.0
    assert demo_model.threshold == calibration.rules.threshold
    assert 0 < demo_model.threshold < 1
    # The temperature is applied once, by the model: its probabilities are the head's scores over it.
    painting = sorted((demo_data / "Test" / "Rembrandt").glob("*.jpg"))[0]
    scores = demo_model.head._scores(demo_model.features([painting]))
    assert np.allclose(demo_model.predict_proba(painting), softmax(scores, calibration.temperature))
    unsure, sure = demo_model.card.decide(np.array([[0.34, 0.33, 0.33], [0.0, 1.0, 0.0]]))
    assert (unsure.artist, unsure.refusal, unsure.closest) == (UNKNOWN, UNKNOWN, demo_model.classes_[0])
    assert (sure.artist, sure.refusal) == (demo_model.classes_[1], None)


def test_evaluate_reports_rejection_rates_and_the_coverage_curve(
    demo_model_path: Path, demo_data: Path, tmp_path: Path, cache_dir: Path
) -> None:
    test = tmp_path / "Test"
    for artist in ("Claude_Monet", "Vincent_van_Gogh", "Rembrandt"):
        (test / artist).mkdir(parents=True)
        for image in sorted((demo_data / "Test" / artist).glob("*.jpg"))[:4]:
            (test / artist / image.name).write_bytes(image.read_bytes())
    # A flat grey image stands for a painting by nobody the model knows.
    Image.new("RGB", (300, 200), (128, 128, 128)).save(test / "grey.jpg")
    report = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        ["evaluate", str(demo_model_path), str(test), "--json", "--report", str(report), "--cache-dir", str(cache_dir)],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["n"] == 12 and metrics["unknown"]["n"] == 1
    assert metrics["threshold"] == pytest.approx(Model.load(demo_model_path).threshold)
    with open(report / "predictions.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["true"] != "unknown"]
    classes = ["Claude_Monet", "Rembrandt", "Vincent_van_Gogh"]
    # The rates are the shares of answers that refuse, as predict gives them (predictions.csv's "answer").
    assert metrics["false_rejection_rate"] == pytest.approx(sum(r["answer"] == UNKNOWN for r in rows) / 12)
    assert metrics["unknown_rejection_rate"] in (0.0, 1.0)
    probabilities = np.array([[float(r[c]) for c in classes] for r in rows])
    truth = np.array([classes.index(r["true"]) for r in rows])
    assert metrics["ece"] == pytest.approx(expected_calibration_error(probabilities, truth), abs=1e-5)
    assert metrics["coverage_curve"][-1]["coverage"] == 1.0
    assert metrics["coverage_curve"][-1]["accuracy"] == pytest.approx(metrics["accuracy"])
    with Image.open(report / "coverage.png") as plot:
        assert plot.format == "PNG"
    text = CliRunner().invoke(app, ["evaluate", str(demo_model_path), str(test), "--cache-dir", str(cache_dir)])
    assert "of known-artist images rejected" in text.output and "of other artists' images rejected" in text.output


def test_predict_says_unknown_below_the_threshold(demo_model_path: Path, demo_data: Path, tmp_path: Path) -> None:
    from artistid.model_file import read_model_file, write_model_file

    tensors, card = read_model_file(demo_model_path)
    # Nothing is that sure: every painting is "unknown".
    card = replace(card, calibration=replace(card.calibration, rules=RefusalRules(threshold=1.01)))
    strict = tmp_path / "strict.safetensors"
    write_model_file(strict, tensors, card)
    painting = next((demo_data / "Test" / "Claude_Monet").glob("*.jpg"))
    for model_path, expected in ((strict, UNKNOWN), (demo_model_path, None)):
        result = CliRunner().invoke(app, ["predict", str(model_path), str(painting), "--json", "--no-cache"])
        assert result.exit_code == 0, result.output
        record = json.loads(result.output)[0]
        if expected:
            assert record["artist"] == UNKNOWN and record["top_k"][0]["artist"] != UNKNOWN
        else:
            assert record["artist"] in Model.load(model_path).classes_
