"""Training: features from the frozen backbone (computed once, cached), then the head on top.

Stages a reader can follow: `featurize_training_set` -> `split_validation` -> `fit_head` -> `calibrate_head`
-> `Model`. `train` runs them in order; `train_from_features` starts from a features Parquet (e.g. made on Spark).
`PRESETS` name whole recipes: "standard" is the defaults, "reference" the reference design's recipe, "best" the most
accurate one measured (docs/results.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from artistid import storage
from artistid.backbones import POOLINGS, Backbone, create_backbone
from artistid.calibration import DEFAULT_FALSE_REJECTION, calibrate, out_of_fold_scores
from artistid.card import CalibrationCard, Pooling, TrainingCard
from artistid.datasets import Sample
from artistid.errors import ArtistIdError, ModelFileError, UsageError
from artistid.features import FeatureCache, FeatureExtractor, FeatureSet, Precision, featurize
from artistid.head import ArtistHead
from artistid.images import Preprocess, decode_image, load_image
from artistid.model import Model
from artistid.model_file import read_card
from artistid.refusals import (
    DEFAULT_OTHER_FALSE_REJECTION,
    DEFAULT_PAINTING_FALSE_REJECTION,
    RefusalGates,
    fit_other_gate,
    fit_painting_gate,
)
from artistid.runtimes import PRECISIONS
from artistid.synthetic import out_of_focus, photograph

if TYPE_CHECKING:
    from artistid.feature_store import FeatureStore

__all__ = [
    "PRESETS",
    "TrainResult",
    "TrainSettings",
    "backbone_for",
    "calibrate_head",
    "data_fingerprint",
    "fit_gates",
    "fit_head",
    "preset",
    "reusable_model",
    "train",
    "train_from_features",
    "training_fingerprint",
]

logger = logging.getLogger(__name__)


# Style statistics: the channel means and standard deviations of intermediate blocks, beside the pooled features.
# They cost no extra network pass and were the largest gain cross-validated on Train (docs/results.md): at 224 px
# blocks 2-5 and blocks 1-6 are within noise of each other on paintings3 and paintings10, blocks 2-5 a little ahead
# on both, with fewer features; at 512 px ("best") blocks 1-6.
STANDARD_FEATURE_NODES = ("blocks.2", "blocks.3", "blocks.4", "blocks.5", "global_pool.flatten")
BEST_FEATURE_NODES = ("blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6", "global_pool.flatten")


@dataclass
class TrainSettings:
    """The recipe; the defaults are the "standard" preset: one 224 px pass, pooled features + the style statistics
    of blocks 2-5, a standardized L2 logistic regression fitted by L-BFGS (chosen by cross-validation on Train,
    docs/results.md).

    The SGD settings (epochs, batch size, lr, momentum) are those of the reference design; they apply with
    solver="sgd" (the "reference" preset).
    """

    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    feature_nodes: tuple[str, ...] | None = STANDARD_FEATURE_NODES
    pooling: Pooling = "meanstd"
    precision: Precision = "auto"
    runtime: str = "auto"  # where the backbone runs: auto (the fastest measured here), torch, onnx or openvino
    epochs: int = 7
    batch_size: int = 50
    lr: str = "0.2x10,0.1"
    momentum: float = 0.9
    l2: float = 0.01
    balance: bool = False
    patience: int | None = None
    val_fraction: float = 0.0
    seed: int = 123
    image_size: int | None = None  # the backbone's input side in pixels [default: the backbone's own]
    tiles: int = 1  # > 1: features of the whole painting and the mean of its tiles x tiles squares of image_size px
    centre: bool = True  # and of its central square of half the side: a photographed painting without its wall
    solver: str = "lbfgs"  # "sgd": minibatch SGD with momentum (the reference design's)
    standardize: bool = True
    # Temperature and rejection threshold from out-of-fold scores of this many folds of Train; 0 or 1: none.
    calibration_folds: int = 5
    false_rejection: float = DEFAULT_FALSE_REJECTION  # share of known-artist paintings any rule may answer 'unknown'
    # The "not a painting" gate knows the training paintings and photos of this many of them, in their frames.
    photographed: int = 300
    learn_from_photos: bool = True  # the head learns from those photos too, under their painting's artist
    painting_false_rejection: float = DEFAULT_PAINTING_FALSE_REJECTION  # of the training paintings
    other_false_rejection: float = DEFAULT_OTHER_FALSE_REJECTION  # of that share, what --others may refuse

    def check(self) -> None:
        """Raises UsageError, naming the setting, for a recipe that cannot be trained."""
        if self.patience is not None and not self.val_fraction:
            raise UsageError("patience stops on the validation loss: set val_fraction (--val-fraction) too")
        if not 0 <= self.val_fraction < 1:
            raise UsageError(f"val_fraction (--val-fraction) must be in [0, 1); got {self.val_fraction}")
        if not 0 <= self.false_rejection < 1:
            raise UsageError(f"false_rejection (--false-rejection) must be in [0, 1); got {self.false_rejection}")
        if self.pooling not in POOLINGS:
            raise UsageError(f"pooling must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        Preprocess(size=self.image_size or 224, tiles=self.tiles, centre=self.centre)  # the input size and views
        self.head()._check_params()

    def threshold_false_rejection(self, with_others: bool) -> float:
        """The share of known paintings the 'unknown' threshold may refuse: false_rejection is the share that may be
        answered 'unknown' by any rule, so a --others gate's share comes out of it."""
        if not with_others:
            return self.false_rejection
        if self.other_false_rejection > self.false_rejection:
            raise UsageError(
                f"--other-false-rejection ({self.other_false_rejection}) is part of --false-rejection "
                f"({self.false_rejection}), the share of known paintings answered 'unknown' by any rule: "
                "it cannot be larger"
            )
        return self.false_rejection - self.other_false_rejection

    def head(self) -> ArtistHead:
        return ArtistHead(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            l2=self.l2,
            balance=self.balance,
            patience=self.patience,
            seed=self.seed,
            solver=self.solver,
            standardize=self.standardize,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["feature_nodes"] = list(self.feature_nodes) if self.feature_nodes else None
        return data


# The "best" recipe, chosen by 5-fold cross-validation on paintings3/Train (docs/results.md has the figures):
# EfficientNet-Lite0 at 512 px, where brushstrokes survive (smaller and larger inputs did worse), seen whole and as
# 2 x 2 squares of 512 px (either view alone does worse, 3 x 3 squares no better), the pooled features plus the
# channel means and standard deviations of every block ("style statistics"), and a standardized L2 logistic
# regression fitted by L-BFGS (L2 0.01 beat 0.05 on every split of paintings3 and paintings10). Adding Lite2
# features or another scale of the whole painting did not raise the cross-validated accuracy.
PRESETS: dict[str, TrainSettings] = {
    "standard": TrainSettings(),
    # The reference design's recipe, unchanged: pooled 224 px features, a dense layer trained by SGD for 7 epochs.
    "reference": TrainSettings(
        feature_nodes=None,
        pooling="avg",
        solver="sgd",
        standardize=False,
        l2=0.0005,
        lr="0.2x10,0.1",
        centre=False,
        learn_from_photos=False,
    ),
    "best": TrainSettings(
        image_size=512, tiles=2, feature_nodes=BEST_FEATURE_NODES, centre=False, learn_from_photos=False
    ),
}


_SGD_LOOP = ("epochs", "batch_size", "lr", "momentum")


def preset(name: str, **overrides: Any) -> TrainSettings:
    """The named recipe, with the settings given changed; a setting given as None keeps the preset's."""
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    settings = replace(PRESETS[name], **{key: value for key, value in overrides.items() if value is not None})
    loop = [key for key in _SGD_LOOP if overrides.get(key) is not None]
    if loop and settings.solver != "sgd":  # L-BFGS fits to convergence: these would be silently ignored
        given = ", ".join(f"{key} (--{key.replace('_', '-')})" for key in loop)
        raise UsageError(
            f"{given} set the SGD solver's loop, and this recipe fits its head by L-BFGS: "
            "add --solver sgd, or use --preset reference"
        )
    # A preset's feature nodes are named for its own backbone: another backbone is cut where its spec says.
    if settings.backbone != PRESETS[name].backbone and overrides.get("feature_nodes") is None:
        settings = replace(settings, feature_nodes=None)
    return settings


def reusable_model(output: str, fingerprint: str, storage_options: dict[str, Any] | None = None) -> Model | None:
    """The model already at `output` when it was trained from the same data and settings, else None."""
    try:
        previous = read_card(output, storage_options)
    except ModelFileError:  # no model there yet, or not one of ours: train
        return None
    if previous.training is None or previous.training.fingerprint != fingerprint:
        return None
    return Model.load(output, storage_options)


@dataclass
class TrainResult:
    model: Model
    history: list[dict[str, float]]
    n_train: int
    n_val: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    featurize_seconds: float = 0.0
    fit_seconds: float = 0.0
    reused_features: int = 0  # vectors taken from the cache or the feature store


def data_fingerprint(samples: Sequence[Sample], settings: TrainSettings) -> str:
    """Names the training data and recipe: the same fingerprint means the same model would be trained."""
    digest = hashlib.sha256(json.dumps(settings.to_dict(), sort_keys=True).encode())
    for sample in sorted(samples, key=lambda s: s.path):
        stamp = ""
        if storage.is_local(sample.path):
            try:
                st = os.stat(storage.local_path(sample.path))
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
        digest.update(f"{sample.path}\0{sample.label}\0{stamp}\n".encode())
    return digest.hexdigest()


def split_validation(features: FeatureSet, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation rows, stratified by artist."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(features))
    if fraction <= 0:
        return everything, everything[:0]
    if not 0 < fraction < 1:
        raise ArtistIdError(f"--val-fraction must be between 0 and 1; got {fraction}")
    labels = np.asarray(features.labels, dtype=object)
    train_rows, val_rows = train_test_split(everything, test_size=fraction, random_state=seed, stratify=labels)
    return np.sort(train_rows), np.sort(val_rows)


def _taught_photos(
    features: FeatureSet, settings: TrainSettings, photographs: Photographs | None, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the head learns from besides the paintings at `rows`: the photos of those paintings (with
    `learn_from_photos`), their artists, and the position in `rows` of each one's painting."""
    width = features.features.shape[1]
    if photographs is None or not settings.learn_from_photos:
        return np.zeros((0, width), np.float32), np.zeros(0, dtype=object), np.zeros(0, np.int64)
    vectors, positions = photographs.of(rows)
    labels = np.asarray(features.labels, dtype=object)[rows][positions]
    return vectors, labels, positions


def fit_head(
    features: FeatureSet, settings: TrainSettings, photographs: Photographs | None = None
) -> tuple[ArtistHead, int, int]:
    labels = np.asarray(features.labels, dtype=object)
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        found = f"{len(classes)} ({', '.join(map(str, classes))})" if classes else "none"
        raise ArtistIdError(f"training needs images of at least two artists; found {found}")
    train_rows, val_rows = split_validation(features, settings.val_fraction, settings.seed)
    photo_vectors, photo_labels, _ = _taught_photos(features, settings, photographs, train_rows)
    head = settings.head().fit(
        np.vstack([features.features[train_rows], photo_vectors]),
        np.concatenate([labels[train_rows], photo_labels]),
        X_val=features.features[val_rows] if len(val_rows) else None,
        y_val=labels[val_rows] if len(val_rows) else None,
    )
    return head, len(train_rows), len(val_rows)


def calibrate_head(
    features: FeatureSet,
    settings: TrainSettings,
    photographs: Photographs | None = None,
    *,
    with_others: bool = False,
) -> CalibrationCard | None:
    """Fits the temperature and the rejection threshold on out-of-fold scores of the training rows.

    `with_others`: a "someone else" gate refuses some known paintings as 'unknown' too; the threshold gets the rest
    of the share they may have between them (`TrainSettings.threshold_false_rejection`).

    Each fold's head learns from the photos of its own paintings only, as the final head learns from all of them.
    Returns the model card's calibration section, or None when calibration is off or the data is too small (fewer
    images of some artist than folds).
    """
    if settings.calibration_folds < 2:
        return None
    labels = np.asarray(features.labels, dtype=object)
    train_rows, _ = split_validation(features, settings.val_fraction, settings.seed)
    _, counts = np.unique(labels[train_rows], return_counts=True)
    if counts.min() < settings.calibration_folds:
        logger.warning(
            "not calibrating: an artist has %d training images, fewer than %d folds",
            counts.min(),
            settings.calibration_folds,
        )
        return None
    y = labels[train_rows].astype(str)
    photo_vectors, photo_labels, photo_of = _taught_photos(features, settings, photographs, train_rows)
    fold_head, rows = settings.head().fold_copy(np.vstack([features.features[train_rows], photo_vectors]))
    scores = out_of_fold_scores(
        fold_head,
        rows[: len(y)],
        y,
        settings.calibration_folds,
        settings.seed,
        extra=(rows[len(y) :], photo_labels.astype(str), photo_of),
    )
    targets = np.searchsorted(np.unique(y), y)
    # A photo of a painting is still a painting: the 'unknown' threshold answers the photos as it does the scans.
    return calibrate(
        scores[: len(y)],
        targets,
        false_rejection=settings.threshold_false_rejection(with_others),
        method=f"{settings.calibration_folds}-fold cross-fitting on the training set",
        photographed=scores[len(y) :],
    )


def backbone_for(settings: TrainSettings) -> Backbone:
    """The backbone a recipe featurizes with: its network, cut, pooling, input size and views."""
    return create_backbone(
        settings.backbone,
        weights=settings.weights,
        feature_nodes=settings.feature_nodes,
        pooling=settings.pooling,
        input_size=settings.image_size,
        tiles=settings.tiles,
        centre=settings.centre,
    )


PHOTOGRAPH_RECIPE = "photograph-v5"  # names how the training photos are made: a new recipe, new cache keys


@dataclass
class Photographs:
    """Features of photos of some training paintings in their frames, and the row of the painting each shows."""

    features: np.ndarray
    rows: np.ndarray

    @classmethod
    def none(cls, width: int) -> Photographs:
        return cls(np.zeros((0, width), np.float32), np.zeros(0, np.int64))

    def of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The photos of these rows' paintings: their features, and the position in `rows` of each one's painting."""
        position = {int(row): n for n, row in enumerate(rows)}
        kept = [n for n, row in enumerate(self.rows.tolist()) if row in position]
        return self.features[kept], np.asarray([position[int(self.rows[n])] for n in kept], dtype=np.int64)


def photograph_features(
    features: FeatureSet,
    extractor: FeatureExtractor,
    count: int,
    seed: int,
    storage_options: dict[str, Any] | None = None,
    cache: FeatureCache | None = None,
) -> Photographs:
    """Features of photos of `count` of the training paintings (spread over the set), framed, in a room whose
    walls are another of the training paintings out of focus.

    Each photo is drawn from its painting's content, the room's and `seed` alone, so its vector is kept in `cache`
    like a painting's: a warm run makes no photo.
    """
    chosen = np.unique(np.linspace(0, len(features) - 1, min(count, len(features))).round().astype(int))
    chosen = chosen if count > 0 else chosen[:0]
    hashes = cache.known_hashes(features.paths) if cache is not None else {}

    def plan(row: int) -> tuple[np.random.Generator, int]:
        """The photo's generator, and the painting it draws first: the one out of focus behind."""
        path = features.paths[row]
        digest = hashes.get(path) or hashlib.sha256(path.encode()).hexdigest()
        rng = np.random.default_rng([seed, int(digest[:16], 16)])
        return rng, int(rng.integers(len(features)))

    keys: dict[int, str] = {}
    for row in chosen.tolist():
        painting, room = features.paths[row], features.paths[plan(row)[1]]
        if painting in hashes and room in hashes:
            recipe = f"{PHOTOGRAPH_RECIPE}/{seed}/{hashes[painting]}/{hashes[room]}"
            keys[row] = FeatureCache.key(recipe, extractor.identity())
    cached = cache.get_many(list(keys.values())) if cache is not None else {}
    found: dict[int, np.ndarray] = {row: cached[key] for row, key in keys.items() if key in cached}

    def made(row: int) -> np.ndarray | None:
        rng, room = plan(row)
        path, room_path = features.paths[row], features.paths[room]
        try:
            painting = decode_image(storage.read_bytes(path, storage_options), path, draft_size=600)
            behind = decode_image(storage.read_bytes(room_path, storage_options), room_path, draft_size=200)
        except (ArtistIdError, OSError) as exc:  # it was read once already; a file gone since is left out
            logger.warning("not photographing %s: %s", path, exc)
            return None
        photo = photograph(painting, rng, background=out_of_focus(behind), fill=(0.45, 0.85))
        return load_image(photo, extractor.preprocess)

    # Photos are made on every core (Pillow and NumPy's generators release the GIL), a batch ahead of the network.
    missing = [row for row in chosen.tolist() if row not in found]
    batches = [missing[start : start + 16] for start in range(0, len(missing), 16)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        ahead = [pool.submit(made, row) for row in batches[0]] if batches else []
        for number, batch in enumerate(batches):
            photos = [(row, future.result()) for row, future in zip(batch, ahead, strict=True)]
            following = batches[number + 1] if number + 1 < len(batches) else []
            ahead = [pool.submit(made, row) for row in following]
            todo = [(row, pixels) for row, pixels in photos if pixels is not None]
            if not todo:
                continue
            vectors = extractor(np.stack([pixels for _, pixels in todo]))
            found.update({row: vectors[n] for n, (row, _) in enumerate(todo)})
            if cache is not None:
                cache.put_many({keys[row]: vectors[n] for n, (row, _) in enumerate(todo) if row in keys})
    rows = sorted(found)
    if not rows:
        return Photographs.none(features.features.shape[1])
    return Photographs(np.vstack([found[row] for row in rows]), np.asarray(rows, dtype=np.int64))


def fit_gates(
    features: FeatureSet,
    settings: TrainSettings,
    photographs: Photographs,
    others: FeatureSet | None = None,
    columns: tuple[int, int] | None = None,
) -> RefusalGates:
    """The "not a painting" gate from the training paintings (and photos of them), in `columns` (the last feature
    node's); the "someone else" gate from --others. Both are chosen on the training set alone."""
    painting = fit_painting_gate(
        features.features,
        photographs.features,
        photographs.rows,
        columns=columns,
        false_rejection=settings.painting_false_rejection,
    )
    other = None
    if others is not None and len(others):
        other = fit_other_gate(
            features.features,
            [str(label) for label in features.labels],
            others.features,
            [None if label is None else str(label) for label in others.labels],
            false_rejection=settings.other_false_rejection,
            folds=max(2, settings.calibration_folds),
            seed=settings.seed,
        )
    return RefusalGates(painting, other)


def _result(
    backbone: Backbone,
    extractor: FeatureExtractor,
    features: FeatureSet,
    settings: TrainSettings,
    fingerprint: str,
    featurize_seconds: float,
    gates: RefusalGates,
    photographs: Photographs | None = None,
) -> TrainResult:
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    # The final head is fitted beside the calibration's fold heads; one BLAS thread each, set once for all threads.
    # It is fitted here, so that what it finds wrong with the data (one artist only) is what the user is told.
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(1) as pool:
        with_others = gates.other is not None
        calibrating = pool.submit(calibrate_head, features, settings, photographs, with_others=with_others)
        head, n_train, n_val = fit_head(features, settings, photographs)
        calibration = calibrating.result() or CalibrationCard()
    training = TrainingCard(
        settings=settings.to_dict(),
        fingerprint=fingerprint,
        n_train=n_train,
        n_val=n_val,
        history=tuple(head.history_),
        skipped=len(features.errors),
    )
    # The gates' thresholds join the refusal rules that every surface decides with.
    rules = replace(
        calibration.rules,
        painting_threshold=gates.painting.threshold if gates.painting is not None else None,
        other_threshold=gates.other.threshold if gates.other is not None else None,
    )
    model = Model(
        backbone,
        head,
        extractor=extractor,
        calibration=replace(calibration, rules=rules),
        training=training,
        gates=gates,
    )
    return TrainResult(
        model,
        head.history_,
        n_train,
        n_val,
        features.errors,
        featurize_seconds,
        time.perf_counter() - started,
        features.reused,
    )


def _without_known(others: Sequence[Sample], labelled: Sequence[Sample]) -> list[Sample]:
    """--others images, less any under a known artist's folder (a whole paintings10/Train may be given)."""
    artists = {str(s.label) for s in labelled}
    kept = [s for s in others if s.label is None or str(s.label) not in artists]
    if len(kept) < len(others):
        logger.info("--others: left out %d images of known artists", len(others) - len(kept))
    return kept


def training_fingerprint(samples: Sequence[Sample], others: Sequence[Sample], settings: TrainSettings) -> str:
    """The fingerprint `train` records for these samples, --others images and settings."""
    labelled = [s for s in samples if s.label is not None]
    return data_fingerprint([*labelled, *_without_known(others, labelled)], settings)


def train(
    samples: Sequence[Sample],
    settings: TrainSettings | None = None,
    *,
    others: Sequence[Sample] = (),
    cache: FeatureCache | None = None,
    workers: int | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    store: FeatureStore | None = None,
) -> TrainResult:
    """Trains a model on labelled samples (unlabelled ones are ignored).

    `others`: paintings by painters who are none of the artists (labelled by their artist folder or not): the
    model learns to answer "unknown" for paintings that look like theirs.
    """
    settings = settings or TrainSettings()
    settings.check()
    if others:
        settings.threshold_false_rejection(with_others=True)  # shares that cannot add up are refused before any work
    labelled = [s for s in samples if s.label is not None]
    backbone = backbone_for(settings)
    extractor = FeatureExtractor(backbone, precision=settings.precision, runtime=settings.runtime)
    features = featurize(
        labelled,
        extractor,
        cache=cache,
        workers=workers,
        storage_options=storage_options,
        progress=progress,
        store=store,
    )
    _check_every_artist_kept(labelled, features)
    started = time.perf_counter()
    fingerprint = training_fingerprint(labelled, others, settings)
    others = _without_known(others, labelled)
    other_features = None
    if others:
        other_features = featurize(
            others, extractor, cache=cache, workers=workers, storage_options=storage_options, progress=progress
        )
        if not len(other_features):
            raise ArtistIdError(f"--others: none of its {len(others)} images could be used")
    photographs = photograph_features(features, extractor, settings.photographed, settings.seed, storage_options, cache)
    columns = extractor.last_layer_columns()
    gates = fit_gates(features, settings, photographs, other_features, columns)
    seconds = features.seconds + time.perf_counter() - started
    return _result(backbone, extractor, features, settings, fingerprint, seconds, gates, photographs)


def _check_every_artist_kept(labelled: Sequence[Sample], features: FeatureSet) -> None:
    """A model that silently leaves out an artist whose every file was unusable would answer for the others."""
    lost = sorted({str(s.label) for s in labelled} - {str(label) for label in features.labels})
    if lost:
        artist = lost[0]
        files = [s.path for s in labelled if s.label == artist]
        reasons = dict(features.errors)
        raise ArtistIdError(
            f"{artist}: none of its {len(files)} images could be used (first: {reasons.get(files[0], 'unreadable')})"
        )


def train_from_features(features: FeatureSet, settings: TrainSettings | None = None) -> TrainResult:
    """Trains the head on vectors computed elsewhere; they must come from the same backbone and settings."""
    settings = settings or TrainSettings()
    settings.check()
    backbone = backbone_for(settings)
    extractor = FeatureExtractor(backbone, precision=settings.precision, runtime=settings.runtime)
    # Any runtime and precision will do (their vectors agree within the stated tolerance); the backbone must match.
    if features.identity and features.identity.rpartition("/")[0].rpartition("/")[0] != extractor.features_identity():
        raise ArtistIdError(
            f"the features were computed with {features.identity!r}, but these settings give "
            f"{extractor.features_identity()!r}: pass the same --backbone, --feature-node, --pooling and --image-size"
        )
    labelled = FeatureSet(
        paths=[p for p, y in zip(features.paths, features.labels, strict=True) if y is not None],
        labels=[y for y in features.labels if y is not None],
        features=features.features[[i for i, y in enumerate(features.labels) if y is not None]],
        errors=features.errors,
        identity=features.identity,
    )
    fingerprint = data_fingerprint(
        [Sample(p, y) for p, y in zip(labelled.paths, labelled.labels, strict=True)], settings
    )
    # No images here to photograph: the gate knows the training paintings alone.
    no_photographs = Photographs.none(labelled.features.shape[1])
    gates = fit_gates(labelled, settings, no_photographs, columns=extractor.last_layer_columns())
    return _result(backbone, extractor, labelled, settings, fingerprint, 0.0, gates)
