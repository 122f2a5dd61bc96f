"""The `artistid` command: featurize, train, evaluate, predict, and the commands each part adds."""

from __future__ import annotations

import enum
import functools
import gc
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer

from artistid.errors import ArtistIdError, UsageError

app = typer.Typer(
    name="artistid",
    help="Learn which painter made a painting (transfer learning on a frozen ImageNet backbone), and use it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(command: F) -> F:
    """Bad input ends the command with one line naming the file and the reason: exit status 2 for a setting out of
    range (a usage error, as click's are), 1 for anything else. Any other exception is a bug and keeps its
    traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UsageError as exc:
            typer.echo(f"artistid: error: {exc}", err=True)
            raise typer.Exit(2) from None
        except ArtistIdError as exc:
            typer.echo(f"artistid: error: {exc}", err=True)
            raise typer.Exit(1) from None
        except OSError as exc:  # what the early checks of _check_output cannot foresee (a full disk, say)
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"artistid: error: {where}{exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _check_output(target: str | Path, kind: Literal["file", "folder", "any"] = "file") -> None:
    """Fails at once, rather than after the long work, on a local output that cannot be written."""
    from artistid import storage

    if not storage.is_local(str(target)):
        return
    path = storage.local_path(str(target))
    if kind == "file" and path.is_dir():
        raise ArtistIdError(f"{target}: is a folder; give a file name")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ArtistIdError(f"{target}: is a file; give a folder")
    parent = storage.existing_parent(path)
    if not parent.is_dir():
        raise ArtistIdError(f"{target}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise ArtistIdError(f"{target}: cannot write in {parent}")


class LogLevel(enum.StrEnum):  # uvicorn's levels
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


# --- shared options --------------------------------------------------------------------------------------------
CacheDir = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Feature cache folder (default: $ARTISTID_CACHE or the user cache folder)."),
]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the feature cache.")]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Decoding processes (default: one per two cores, one per core for large scans; 0: decode in this "
        "process, where a crashing or hanging codec takes the run down).",
    ),
]
StorageOption = Annotated[
    list[str] | None,
    typer.Option("--storage-option", help="key=value passed to the storage backend (repeatable)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars and no warnings (errors still show).")]
Backbone = Annotated[str, typer.Option("--backbone", help="Backbone name (see `artistid backbones`).")]
Weights = Annotated[
    Path | None, typer.Option("--weights", help="Weights file for the backbone instead of its published ones.")
]
FeatureNode = Annotated[
    list[str] | None,
    typer.Option("--feature-node", help="Layer to cut at (repeatable; default: the pooled penultimate layer)."),
]
Pooling = Annotated[str, typer.Option("--pooling", help="avg, or meanstd: channel means and stds (style).")]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto, fp32, bf16 or int8 (auto: bf16 only where native, if faster here; never int8, which runs on "
        "onnx and openvino only when asked for).",
    ),
]
TorchPrecision = Annotated[
    str, typer.Option("--precision", help="auto, fp32 or bf16 (auto: bf16 only where native, if faster here).")
]
Runtime = Annotated[
    str,
    typer.Option(
        "--runtime", help="Where the backbone runs: auto (the fastest measured on this machine), torch, onnx, openvino."
    ),
]
Tiles = Annotated[
    int,
    typer.Option(
        "--tiles", help="Also see each painting as N x N squares of the input size (brushwork of large scans)."
    ),
]
Centre = Annotated[
    bool,
    typer.Option(
        "--centre/--no-centre",
        help="Also see each painting's central square of half the side (a photographed painting without its wall).",
    ),
]
Engine = Annotated[str, typer.Option("--engine", help="local, or spark: run on Apache Spark (the spark extra).")]
Master = Annotated[
    str | None, typer.Option("--master", help="Spark master, e.g. local[2]; default: spark-submit's, else local[*].")
]
Partitions = Annotated[int | None, typer.Option("--partitions", help="Spark partitions; default: 4 per core.")]
Mlflow = Annotated[
    bool, typer.Option("--mlflow", help="Log the run (recipe, metrics, reports) and the model to MLflow.")
]
MlflowUri = Annotated[
    str | None,
    typer.Option("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)."),
]
Remote = Annotated[
    str | None,
    typer.Option("--remote", help="Spark Connect server, e.g. sc://host:15002 (instead of --master; --engine spark)."),
]
FeatureStoreUri = Annotated[
    str | None,
    typer.Option(
        "--feature-store",
        help="Folder or storage URI keeping vectors for every run and engine: only new images are computed.",
    ),
]


def _options(items: list[str] | None) -> dict[str, Any] | None:
    if not items:
        return None
    from artistid.storage import parse_storage_options

    return parse_storage_options(items)


def _cache(cache_dir: Path | None, no_cache: bool) -> Any:
    from artistid.features import FeatureCache

    if no_cache:
        return None
    try:
        return FeatureCache(cache_dir)
    except ArtistIdError as exc:  # the cache only saves time: a broken one must not stop the work
        typer.echo(f"artistid: warning: {exc}; going on without it", err=True)
        return None


def _store(uri: str | None, options: dict[str, Any] | None) -> Any:
    if uri is None:
        return None
    from artistid.feature_store import FeatureStore

    return FeatureStore(uri, options)


def _spark(engine: str, master: str | None = None, remote: str | None = None) -> Any:
    """artistid.spark for --engine spark, None for local; a one-line error for anything else."""
    if engine not in ("local", "spark"):
        raise ArtistIdError(f"--engine must be local or spark; got {engine!r}")
    if master and remote:
        raise ArtistIdError("--master and --remote name two different clusters: give one")
    if engine == "local":
        if master or remote:
            raise ArtistIdError("--master and --remote are for --engine spark")
        return None
    try:
        from artistid import spark
    except ImportError as exc:
        raise ArtistIdError(f"--engine spark needs PySpark ({exc}): pip install 'artistid[spark]'") from None
    return spark


def _echo_spark_run(run: Any, done: str, as_json: bool) -> None:
    from artistid.report import run_line, run_record, skipped_lines

    if as_json:
        _print_json(run_record(run, run.images, run.output, run.partitions))
        return
    typer.echo(run_line(run, run.images, run.output, done, run.partitions))
    for line in skipped_lines(run.errors):
        typer.echo(line, err=True)


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="%(message)s")


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _log_to_mlflow(
    uri: str | None, model: Any, recipe: dict[str, Any], evaluation: Any, *, quiet: bool, as_json: bool, **extra: Any
) -> dict[str, Any]:
    """Logs the run to MLflow (`artistid.tracking`); returns its --json fields."""
    from artistid import tracking

    progress = not quiet and not as_json
    run = tracking.log_training(model, recipe=recipe, evaluation=evaluation, uri=uri, progress=progress, **extra)
    if not as_json:
        typer.echo(f"MLflow run {run.run_id} in {run.tracking_uri}; model {run.model_uri}")
    return {"mlflow": {"tracking_uri": run.tracking_uri, "run_id": run.run_id, "model_uri": run.model_uri}}


# --- backbones -------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def backbones(
    nodes: Annotated[str | None, typer.Option("--nodes", help="List the layer names of this backbone.")] = None,
    as_json: Json = False,
) -> None:
    """List the registered backbones and whether their weights are available offline; any Hub one works too."""
    from artistid.backbones import get_spec, list_backbones, list_feature_nodes, weights_available

    if nodes:
        for node in list_feature_nodes(nodes):
            typer.echo(node)
        return
    rows = []
    for name in list_backbones():
        spec = get_spec(name)
        rows.append(
            {
                "name": name,
                "architecture": spec.architecture,
                "input_size": spec.input_size,
                "offline": weights_available(spec),
                "license": spec.license,
                "description": spec.description,
            }
        )
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        state = "offline" if row["offline"] else "download on first use"
        typer.echo(f"{row['name']:<20} {row['input_size']:>4}px  {state:<22} {row['description']}")
    typer.echo(
        "\nAny timm pretrained name (e.g. vit_small_patch14_dinov2.lvd142m, convnext_tiny.fb_in22k_ft_in1k) or "
        "hf-hub:ORG/REPO works too:\nits weights come from the Hugging Face Hub once, into its cache (HF_HOME; "
        "HF_HUB_OFFLINE=1: the cache only). List them with\n"
        "python -c \"import timm; print(timm.list_pretrained('convnext*'))\"; offline, pass --weights FILE."
    )


# --- featurize -------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def featurize(
    data: Annotated[str, typer.Argument(help="Dataset folder, folder of artist folders, map file, or storage URI.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Features Parquet to write.")],
    backbone: Backbone = "efficientnet_lite0",
    weights: Weights = None,
    feature_node: FeatureNode = None,
    pooling: Pooling = "avg",
    precision: Precision = "auto",
    runtime: Runtime = "auto",
    image_size: Annotated[
        int | None, typer.Option(help="Backbone input side in pixels (default: the backbone's own).")
    ] = None,
    tiles: Tiles = 1,
    centre: Centre = False,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    workers: Workers = None,
    storage_option: StorageOption = None,
    engine: Engine = "local",
    master: Master = None,
    remote: Remote = None,
    partitions: Partitions = None,
    feature_store: FeatureStoreUri = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Compute feature vectors (path, label, features) for every image of DATA into a Parquet file.

    With --engine spark, OUTPUT is a Parquet folder (path, label, features, error) that `train` reads too.
    """
    from artistid import report
    from artistid.backbones import create_backbone
    from artistid.datasets import load_dataset
    from artistid.features import FeatureExtractor
    from artistid.features import featurize as run_featurize

    _configure_logging(quiet)
    spark = _spark(engine, master, remote)
    options = _options(storage_option)
    store = _store(feature_store, options)
    _check_output(output, "any")  # a Parquet file, or a folder from Spark
    dataset = load_dataset(data, options)
    network = create_backbone(
        backbone,
        weights=weights,
        feature_nodes=tuple(feature_node) if feature_node else None,
        pooling=pooling,  # type: ignore[arg-type]
        input_size=image_size,
        tiles=tiles,
        centre=centre,
    )
    extractor = FeatureExtractor(network, precision=precision, runtime=runtime)  # type: ignore[arg-type]
    if spark is not None:
        with spark.session(master, remote=remote) as session:
            run = spark.featurize(
                dataset.samples,
                extractor,
                output,
                spark=session,
                storage_options=options,
                partitions=partitions,
                store=store,
            )
        _echo_spark_run(run, "featurized", as_json)
        return
    features = run_featurize(
        dataset.samples,
        extractor,
        cache=_cache(cache_dir, no_cache),
        workers=workers,
        storage_options=options,
        progress=not quiet and not as_json,
        store=store,
    )
    features.to_parquet(output, options)
    if as_json:
        _print_json(report.run_record(features, len(features), output))
        return
    typer.echo(report.run_line(features, len(features), output, "featurized"))
    for line in report.skipped_lines(features.errors):
        typer.echo(line, err=True)


# --- train -----------------------------------------------------------------------------------------------------
# Recipe options default to None: "not given", so the preset's value stands (artistid.train.preset).
@app.command()
@handle_errors
def train(
    data: Annotated[
        str,
        typer.Argument(
            help="Dataset folder (Train/, Test/), folder of artist folders, map file, "
            "storage URI, or a features Parquet from `featurize`."
        ),
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Model file to write (a storage URI works too).")],
    others: Annotated[
        str | None,
        typer.Option(
            "--others",
            help="Paintings by painters who are none of the artists (artist folders or loose files, a map file, "
            "a storage URI): the model learns to answer 'unknown' for paintings that look like theirs.",
        ),
    ] = None,
    preset: Annotated[
        str,
        typer.Option(
            help="Recipe: standard (the default: style statistics at 224 px, L-BFGS), reference (the reference "
            "design's SGD recipe) or best (style statistics at 512 px, whole and 2 x 2 tiles); the recipe options "
            "below change it."
        ),
    ] = "standard",
    backbone: Annotated[
        str | None, typer.Option("--backbone", help="Backbone name (see `artistid backbones`).")
    ] = None,
    weights: Weights = None,
    feature_node: Annotated[
        list[str] | None,
        typer.Option(
            "--feature-node",
            help="Layer to cut at (repeatable; standard: blocks.2-5 and global_pool.flatten, reference: the pooled "
            "penultimate layer).",
        ),
    ] = None,
    pooling: Annotated[
        str | None, typer.Option("--pooling", help="avg, or meanstd: channel means and stds (style).")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            help="auto, fp32, bf16 or int8 (auto: bf16 only where native, if faster; never int8, which runs on onnx "
            "and openvino only when asked for; a model trained in int8 predicts in int8 there).",
        ),
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option("--runtime", help="Where the backbone runs: auto (fastest measured here), torch, onnx, openvino."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training set (reference: 7).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Minibatch size (reference: 50).")] = None,
    lr: Annotated[
        str | None,
        typer.Option(
            help="Learning rate per epoch: '0.2x10,0.1' = 0.2 for 10 epochs, then 0.1 (reference: 0.2x10,0.1)."
        ),
    ] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum (reference: 0.9).")] = None,
    l2: Annotated[float | None, typer.Option(help="L2 weight (standard: 0.01, reference: 0.0005).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed: the same seed gives the same model [123].")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Hold out this fraction of Train for validation.")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after N epochs without validation gain.")] = None,
    balance: Annotated[bool | None, typer.Option(help="Weight artists by inverse frequency.")] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Backbone input side in pixels (default: the backbone's own).")
    ] = None,
    tiles: Annotated[
        int | None,
        typer.Option(help="Also see each painting as N x N squares of the input size (brushwork of large scans)."),
    ] = None,
    centre: Annotated[
        bool | None,
        typer.Option(
            "--centre/--no-centre",
            help="Also see each painting's central square of half the side (a photo of a painting, without its wall).",
        ),
    ] = None,
    learn_from_photos: Annotated[
        bool | None,
        typer.Option(
            "--learn-from-photos/--no-learn-from-photos",
            help="The head learns from the photos of training paintings in their frames too (see --photographed).",
        ),
    ] = None,
    solver: Annotated[str | None, typer.Option(help="Head solver: sgd (the reference recipe) or lbfgs.")] = None,
    standardize: Annotated[bool | None, typer.Option(help="Standardize the features before the head.")] = None,
    calibration_folds: Annotated[
        int | None, typer.Option(help="Folds of Train for the temperature and rejection threshold (0: none) [5].")
    ] = None,
    false_rejection: Annotated[
        float | None,
        typer.Option(
            help="Share of known-artist paintings that may be answered 'unknown' (cross-fitted on Train): by the "
            "threshold, and with --others by it and the 'someone else' gate together [0.02]."
        ),
    ] = None,
    painting_false_rejection: Annotated[
        float | None,
        typer.Option(min=0.0, max=0.5, help="Share of training paintings the 'not a painting' gate may refuse [0.01]."),
    ] = None,
    other_false_rejection: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=0.5,
            help="Of --false-rejection, the share of known-artist paintings --others may refuse [0.01].",
        ),
    ] = None,
    photographed: Annotated[
        int | None,
        typer.Option(min=0, help="Training paintings photographed in frames for the 'not a painting' gate [300]."),
    ] = None,
    min_accuracy: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Exit with status 3 if test accuracy is below (0-1).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Retrain even if OUTPUT was trained from the same data and settings.")
    ] = False,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    workers: Workers = None,
    storage_option: StorageOption = None,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    feature_store: FeatureStoreUri = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Train a model: features from the frozen backbone (cached), a dense layer on top, evaluation on Test."""
    from artistid import report
    from artistid import train as training
    from artistid.card import to_dict
    from artistid.datasets import Dataset, load_dataset, load_split
    from artistid.evaluate import evaluate, format_report
    from artistid.features import FeatureSet

    _configure_logging(quiet)
    options = _options(storage_option)
    settings = training.preset(
        preset,
        backbone=backbone,
        weights=str(weights) if weights else None,
        feature_nodes=tuple(feature_node) if feature_node else None,
        pooling=pooling,
        precision=precision,
        runtime=runtime,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        l2=l2,
        balance=balance,
        patience=patience,
        val_fraction=val_fraction,
        seed=seed,
        image_size=image_size,
        tiles=tiles,
        centre=centre,
        learn_from_photos=learn_from_photos,
        solver=solver,
        standardize=standardize,
        calibration_folds=calibration_folds,
        false_rejection=false_rejection,
        painting_false_rejection=painting_false_rejection,
        other_false_rejection=other_false_rejection,
        photographed=photographed,
    )
    settings.check()
    _check_output(output)
    say = (lambda _: None) if as_json else typer.echo
    cache = _cache(cache_dir, no_cache)
    store = _store(feature_store, options)
    from_features = data.endswith(".parquet")
    if from_features and others:
        raise ArtistIdError("--others needs the images: train from the dataset folder, not a features Parquet")
    dataset = Dataset(root=data, train=[]) if from_features else load_dataset(data, options)
    other_samples = load_split(others, options)[0] if others else []
    if others and not other_samples:
        raise ArtistIdError(f"{others}: no images found for --others")

    model = None
    if not force and not from_features:
        fingerprint = training.training_fingerprint(dataset.train, other_samples, settings)
        model = training.reusable_model(output, fingerprint, options)
        if model is not None:
            say(f"reusing {output}: it was trained from the same Train/ and settings (--force retrains)")
    result = None
    if model is None:
        if from_features:
            result = training.train_from_features(FeatureSet.from_parquet(data), settings)
        else:
            progress = not quiet and not as_json
            result = training.train(
                dataset.train,
                settings,
                others=other_samples,
                cache=cache,
                workers=workers,
                storage_options=options,
                progress=progress,
                store=store,
            )
        model = result.model
        for line in report.skipped_lines(result.skipped):
            typer.echo(line, err=True)
        for line in report.training_lines(result, settings.epochs):
            say(line)

    evaluation = None
    if dataset.test:  # a reused model too: Test/ may have changed since it was trained
        progress = not quiet and not as_json
        evaluation = evaluate(
            model,
            dataset.test,
            cache=cache,
            workers=workers,
            storage_options=options,
            progress=progress,
            store=store,
        )
        model.card = replace(model.card, metrics=evaluation.card_metrics())
        say(format_report(evaluation))
    elif model.metrics is not None and model.metrics.accuracy is not None:
        say(f"accuracy {model.metrics.accuracy:.1%} on {model.metrics.n} test images (from the model file)")
    if result is not None:
        model.save(output, options)
        say(f"model written to {output}")
    metrics = to_dict(model.metrics) if model.metrics is not None else {}
    tracked = {}
    if mlflow:
        timings = {"featurize": result.featurize_seconds, "fit": result.fit_seconds} if result else {}
        history = result.history if result else None
        tracked = _log_to_mlflow(
            mlflow_uri,
            model,
            settings.to_dict(),
            evaluation,
            quiet=quiet,
            as_json=as_json,
            timings=timings,
            history=history,
        )
    if as_json:
        training_card = model.card.training
        _print_json(
            {
                "output": output,
                "reused": result is None,
                "featurized": result.n_train + result.n_val - result.reused_features if result else 0,
                "reused_features": result.reused_features if result else 0,
                "metrics": metrics,
                "history": to_dict(training_card.history) if training_card else [],
                "skipped": [{"path": p, "reason": r} for p, r in (result.skipped if result else [])],
                **tracked,
            }
        )
    accuracy = metrics.get("accuracy")
    if min_accuracy is not None and (accuracy is None or accuracy < min_accuracy):
        typer.echo(f"artistid: accuracy {accuracy} is below --min-accuracy {min_accuracy}", err=True)
        raise typer.Exit(3)


# --- evaluate --------------------------------------------------------------------------------------------------
@app.command("evaluate")
@handle_errors
def evaluate_command(
    model_path: Annotated[str, typer.Argument(metavar="MODEL", help="Model file.")],
    test: Annotated[str, typer.Argument(help="Dataset folder (its Test/), folder of artist folders, or map file.")],
    report: Annotated[
        str | None,
        typer.Option("--report", help="Folder for predictions.csv, metrics.json, confusion.png and coverage.png."),
    ] = None,
    runtime: Runtime = "auto",
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    workers: Workers = None,
    storage_option: StorageOption = None,
    engine: Engine = "local",
    master: Master = None,
    remote: Remote = None,
    partitions: Partitions = None,
    feature_store: FeatureStoreUri = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Measure a model on a test set: accuracy, top-2, per-artist scores, confusion matrix, unknown artists."""
    from artistid.datasets import load_test_set
    from artistid.evaluate import evaluate, format_report, write_report
    from artistid.model import Model

    _configure_logging(quiet)
    spark = _spark(engine, master, remote)
    options = _options(storage_option)
    store = _store(feature_store, options)
    model = Model.load(model_path, options, runtime=runtime)
    if report:
        _check_output(report, "folder")
    samples = load_test_set(test, options)
    if spark is not None:
        with spark.session(master, remote=remote) as session:
            evaluation = spark.evaluate(
                model_path, samples, spark=session, storage_options=options, partitions=partitions, store=store
            )
    else:
        evaluation = evaluate(
            model,
            samples,
            cache=_cache(cache_dir, no_cache),
            workers=workers,
            storage_options=options,
            progress=not quiet and not as_json,
            store=store,
        )
    files: dict[str, str] = {}
    failure = None
    try:
        files = write_report(evaluation, report) if report else {}
    except OSError as exc:  # a full disk, say: the metrics are shown all the same, then the error
        failure = exc
    if as_json:
        _print_json({**evaluation.metrics, "report": files})
    else:
        typer.echo(format_report(evaluation))
        for name, path in files.items():
            typer.echo(f"{name}: {path}")
    if failure is not None:
        raise failure


# --- predict ---------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def predict(
    model_path: Annotated[str, typer.Argument(metavar="MODEL", help="Model file.")],
    paths: Annotated[list[str], typer.Argument(metavar="PATH", help="Image files or folders (URIs work too).")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many artists to list per image.")] = 1,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict/--no-strict",
            help="Exit with status 1 if any file could not be used (the others are answered all the same).",
        ),
    ] = True,
    runtime: Runtime = "auto",
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    workers: Workers = None,
    storage_option: StorageOption = None,
    engine: Engine = "local",
    master: Master = None,
    remote: Remote = None,
    partitions: Partitions = None,
    feature_store: FeatureStoreUri = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Predictions Parquet folder to write (--engine spark).")
    ] = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Name the artist of each painting."""
    from artistid import report
    from artistid.datasets import list_images
    from artistid.model import Model

    _configure_logging(True)
    spark = _spark(engine, master, remote)
    options = _options(storage_option)
    store = _store(feature_store, options)
    if spark is not None:
        if output is None:
            raise ArtistIdError("--engine spark writes a Parquet folder: pass --output predictions.parquet")
        with spark.session(master, remote=remote) as session:
            samples = list_images(paths, options)
            run = spark.predict(
                model_path,
                samples,
                output,
                spark=session,
                storage_options=options,
                partitions=partitions,
                store=store,
            )
        _echo_spark_run(run, "scored", as_json)
        _fail_if_unusable(run.errors, run.images, strict)
        return
    if output is not None:
        raise ArtistIdError("--output is for --engine spark; the local engine prints its predictions")
    model = Model.load(model_path, options, runtime=runtime)
    samples = list_images(paths, options)
    if not samples:
        raise ArtistIdError(f"{' '.join(paths)}: no images found")
    features = model.features_for(
        samples,
        cache=_cache(cache_dir, no_cache),
        workers=workers,
        storage_options=options,
        progress=not quiet and not as_json and len(samples) > 50,
        store=store,
    )
    if store is not None:  # --json prints the predictions themselves: the counts go to stderr
        typer.echo(f"{features.featurized} featurized, {features.reused} reused (feature store)", err=True)
    answers = model.answers_for(features.features, top_k=top_k)
    records = report.predict_records(samples, features.paths, answers, features.errors)
    if as_json:
        _print_json(records)
    else:
        for line in report.predict_lines(records):
            typer.echo(line)
    _fail_if_unusable(features.errors, len(samples), strict)


def _fail_if_unusable(errors: list[tuple[str, str]], images: int, strict: bool) -> None:
    """A file that could not be answered is bad input: said in one line, exit status 1, after every other answer."""
    from artistid.report import unusable_line

    if errors and strict:
        typer.echo(f"artistid: error: {unusable_line(errors, images)}", err=True)
        raise typer.Exit(1)


# --- finetune --------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def finetune(
    data: Annotated[str, typer.Argument(help="Dataset folder (Train/, Test/), folder of artist folders, or map file.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Model file to write (a storage URI works too).")],
    unfreeze: Annotated[str, typer.Option(help="What learns besides the head: last-N (blocks) or all.")] = "last-2",
    epochs: Annotated[int, typer.Option(help="Passes over the training set.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Minibatch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the head (cosine schedule).")] = 1e-3,
    backbone_lr_scale: Annotated[float, typer.Option(help="The backbone's learning rate, relative to lr.")] = 0.1,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd.")] = "adamw",
    image_size: Annotated[int | None, typer.Option(help="Input side in pixels (default: the backbone's own).")] = None,
    backbone: Backbone = "efficientnet_lite0",
    weights: Weights = None,
    precision: TorchPrecision = "auto",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 123,
    checkpoint_dir: Annotated[
        Path | None, typer.Option("--checkpoint-dir", help="Write a checkpoint here after every epoch.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --checkpoint-dir.")] = False,
    val_fraction: Annotated[
        float, typer.Option(help="Hold out this share of Train to fit the temperature and 'unknown' threshold.")
    ] = 0.1,
    workers: Workers = None,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune the backbone's last blocks (or all) with the head, on augmented crops; evaluate on Test."""
    from artistid.card import to_dict
    from artistid.datasets import load_dataset
    from artistid.evaluate import evaluate, format_report
    from artistid.finetune import FinetuneSettings
    from artistid.finetune import finetune as run_finetune

    _configure_logging(quiet)
    logging.getLogger("artistid.finetune").setLevel(logging.ERROR if quiet or as_json else logging.INFO)
    _check_output(output)
    dataset = load_dataset(data)
    settings = FinetuneSettings(
        backbone=backbone,
        weights=str(weights) if weights else None,
        unfreeze=unfreeze,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        backbone_lr_scale=backbone_lr_scale,
        optimizer=optimizer,
        image_size=image_size,
        precision=precision,
        seed=seed,
        val_fraction=val_fraction,
    )
    result = run_finetune(dataset.train, settings, checkpoint_dir=checkpoint_dir, resume=resume, workers=workers)
    model = result.model
    metrics: dict[str, Any] = {}
    evaluation = None
    if dataset.test:
        evaluation = evaluate(model, dataset.test, cache=_cache(cache_dir, no_cache), workers=workers, progress=False)
        model.card = replace(model.card, metrics=evaluation.card_metrics())
        metrics = to_dict(model.card.metrics)
        if not as_json:
            typer.echo(format_report(evaluation))
    model.save(output)
    tracked = {}
    if mlflow:
        timings, history = {"finetune": result.seconds}, result.history
        tracked = _log_to_mlflow(
            mlflow_uri,
            model,
            settings.to_dict(),
            evaluation,
            quiet=quiet,
            as_json=as_json,
            timings=timings,
            history=history,
        )
    if as_json:
        _print_json(
            {
                "output": output,
                "metrics": metrics,
                "history": result.history,
                "resumed_from": result.resumed_from,
                **tracked,
            }
        )
        return
    typer.echo(f"fine-tuned in {result.seconds:.0f} s; model written to {output}")


# --- explain ---------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def explain(
    model_path: Annotated[str, typer.Argument(metavar="MODEL", help="Model file.")],
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="Image file.")],
    output: Annotated[str, typer.Option("--output", "-o", help="PNG file to write (a storage URI works too).")],
    artist: Annotated[
        str | None, typer.Option("--artist", help="Explain this artist's score (default: the top artist).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Draw a Grad-CAM heat map over the painting: the regions that made the model name the artist."""
    from artistid.explain import grad_cam
    from artistid.model import Model
    from artistid.storage import write_bytes_atomic

    _configure_logging(True)
    _check_output(output)
    model = Model.load(model_path)
    explanation = grad_cam(model, image, artist)
    write_bytes_atomic(output, explanation.png())
    if as_json:
        _print_json(
            {"image": image, "artist": explanation.artist, "probability": explanation.probability, "output": output}
        )
        return
    typer.echo(f"{image}: heat map for {explanation.artist} (probability {explanation.probability:.3f}) -> {output}")


# --- fetch, prepare, check -------------------------------------------------------------------------------------
@app.command()
@handle_errors
def fetch(
    source: Annotated[
        str, typer.Argument(help="Manifest file ('URI DIR FILENAME' lines) or storage prefix with Train/, Test/.")
    ],
    to: Annotated[Path, typer.Option("--to", help="Local folder to copy the images into.")],
    workers: Annotated[int, typer.Option("--workers", help="Parallel downloads.")] = 8,
    storage_option: StorageOption = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Copy a dataset's images from a manifest or storage URI (az://, s3://, gs://, https://) into a folder."""
    from artistid.fetch import fetch as run_fetch

    _configure_logging(quiet or as_json)
    _check_output(to, "folder")
    report = run_fetch(
        source, to, workers=workers, storage_options=_options(storage_option), progress=not quiet and not as_json
    )
    if as_json:
        _print_json(report.to_dict())
    else:
        typer.echo(f"{report.summary()} -> {to}")
        for name, reason in report.failed:
            typer.echo(f"failed {name}: {reason}", err=True)
    if report.failed:
        raise typer.Exit(1)


@app.command()
@handle_errors
def prepare(
    raw: Annotated[str, typer.Argument(help="Folder of artist folders straight from a scrape (or storage URI).")],
    to: Annotated[Path, typer.Option("--to", help="New dataset folder: Train/<artist>/..., Test/<artist>/...")],
    test_fraction: Annotated[float, typer.Option(help="Share of each artist's paintings that go to Test.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Random seed of the split.")] = 0,
    storage_option: StorageOption = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """De-duplicate (pHash + dHash), keep the largest copy, split Train/Test by painting; no copy on both sides."""
    from dataclasses import asdict

    from artistid.prepare import REPORT_NAME
    from artistid.prepare import prepare as run_prepare

    _configure_logging(quiet or as_json)
    _check_output(to, "folder")
    report = run_prepare(raw, to, test_fraction=test_fraction, seed=seed, storage_options=_options(storage_option))
    if as_json:
        _print_json(asdict(report))
        return
    typer.echo(report.summary())
    for copy in report.cross_artist_copies:
        typer.echo(f"same painting under two artists (kept in Train): {copy['a']}  {copy['b']}", err=True)
    typer.echo(f"dataset written to {to}; report: {to / REPORT_NAME}")


@app.command()
@handle_errors
def check(
    data: Annotated[str, typer.Argument(help="Dataset folder (or storage URI) with Train/ and Test/.")],
    storage_option: StorageOption = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Find near-duplicate images that cross Train and Test (they inflate accuracy); exit 1 if any."""
    from artistid.prepare import check_leaks

    _configure_logging(quiet or as_json)
    report = check_leaks(data, _options(storage_option))
    if as_json:
        _print_json(report.to_dict())
    else:
        for pair in report.pairs:
            typer.echo(f"leak (pHash {pair['phash']}, dHash {pair['dhash']}): {pair['train']}  {pair['test']}")
        typer.echo(f"{report.leaks} near-duplicate pairs across Train ({report.train}) and Test ({report.test})")
    if report.leaks:
        raise typer.Exit(1)


# --- serve, export ---------------------------------------------------------------------------------------------
# Defaults are typed out, not imported, so that no command loads FastAPI or torch to show its options;
# tests/test_cli_defaults.py keeps them the library's (fetch's and finetune's too).
@app.command()
@handle_errors
def serve(
    model_path: Annotated[str, typer.Argument(metavar="MODEL", help="Model file, or an .onnx file from `export`.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Largest request body accepted (413 above).")
    ] = 20.0,
    runtime: Annotated[
        str | None,
        typer.Option(
            "--runtime",
            help="auto, torch, onnx or openvino: where a model file's backbone runs (an .onnx file: onnx).",
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Most images per model call (micro-batching).")
    ] = 4,
    log_level: Annotated[
        LogLevel, typer.Option("--log-level", case_sensitive=False, help="uvicorn's log level.")
    ] = LogLevel.info,
    api_key_file: Annotated[
        Path | None,
        typer.Option("--api-key-file", help="File of API keys, one per line (also: $ARTISTID_API_KEY)."),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without API keys on a non-loopback address.")
    ] = False,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, help="Requests decoded or waiting for the model at once (503 above).")
    ] = 32,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", min=0.1, help="Seconds a request may take, upload included.")
    ] = 60.0,
) -> None:
    """Serve MODEL over HTTP: POST /v1/predict, GET /v1/model, a page at / and OpenAPI docs at /docs.

    An .onnx file runs on ONNX Runtime without PyTorch. A model file's backbone runs on --runtime (auto: the
    fastest measured on this machine) and its head in NumPy.
    With API keys every /v1 endpoint and /metrics need `Authorization: Bearer <key>`.
    """
    from artistid.serve import check_model_file, runtime_for
    from artistid.serve import serve as run_server
    from artistid.service_guard import check_exposure, load_api_keys

    logging.basicConfig(level=getattr(logging, log_level.value.upper(), logging.DEBUG), format="%(message)s")
    api_keys = load_api_keys(api_key_file)
    check_exposure(host, api_keys, no_auth)  # before the model loads
    chosen = runtime_for(model_path, runtime)
    check_model_file(model_path, chosen)  # a bad file fails here in one line, before the server starts
    run_server(
        model_path,
        host=host,
        port=port,
        runtime=chosen,
        max_upload_mb=max_upload_mb,
        max_batch=max_batch,
        log_level=log_level.value,
        api_keys=api_keys,
        no_auth=no_auth,
        max_queue=max_queue,
        request_seconds=request_timeout,
    )


@app.command()
@handle_errors
def export(
    model_path: Annotated[str, typer.Argument(metavar="MODEL", help="Model file.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX file to write.")],
    check_images: Annotated[
        list[str] | None,
        typer.Option("--check-images", help="Images or folders for the parity check (default: the demo set)."),
    ] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Largest probability difference allowed.")] = 1e-4,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Export MODEL to ONNX (uint8 NHWC pixels in, probabilities out), checked against PyTorch in fp32."""
    from artistid.datasets import list_images
    from artistid.export import export_onnx
    from artistid.model import Model

    _configure_logging(quiet)
    _check_output(onnx)
    model = Model.load(model_path)
    images = [s.path for s in list_images(check_images)] if check_images else None
    if check_images and not images:
        raise ArtistIdError(f"{' '.join(check_images)}: no images found for --check-images")
    report = export_onnx(model, onnx, check_images=images, tolerance=tolerance, source=model_path)
    if as_json:
        _print_json(report.to_dict())
        return
    typer.echo(
        f"exported {model_path} -> {onnx}: ONNX Runtime matches PyTorch (fp32) on {report.images} images, "
        f"max probability difference {report.max_abs_diff:.2g} (tolerance {report.tolerance:g})"
    )
    if report.bf16_max_abs_diff is not None:
        typer.echo(f"(the model runs in bf16 under PyTorch; that differs by up to {report.bf16_max_abs_diff:.2g})")


# --- demo ------------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def demo(
    output: Annotated[
        str, typer.Option("--output", "-o", help="Where to write the demo model.")
    ] = "artistid-demo.safetensors",
    quiet: Quiet = False,
) -> None:
    """Train and evaluate on the small public-domain demo set that ships with artistid (works offline)."""
    from artistid.datasets import demo_data

    with demo_data() as root:
        typer.echo(f"demo set: {root} (public-domain paintings; see PROVENANCE.tsv there)")
        train(data=str(root), output=output, quiet=quiet)


def main() -> None:
    try:
        sys.exit(app())
    finally:
        # The command is done and its outputs written. The interpreter's last collections would walk every object the
        # libraries made on import (SciPy's, pandas', scikit-learn's), which takes longer than the rest of a warm run.
        gc.freeze()


if __name__ == "__main__":
    main()
