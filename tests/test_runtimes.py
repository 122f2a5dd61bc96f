"""Runtimes and precision: which engine runs the backbone, in which arithmetic, and what the cache keys say.

The features of PyTorch, ONNX Runtime and OpenVINO agree within a stated tolerance (fp32: cosine >= 0.9999 and a
largest difference under 1e-3 of the largest feature; OpenVINO bf16: cosine >= 0.999); bf16 is used only where the
hardware has it; `--runtime auto` is a measured choice, remembered per machine; a warm run builds no network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from artistid import runtimes
from artistid.backbones import create_backbone
from artistid.datasets import Sample, load_split
from artistid.errors import ArtistIdError
from artistid.features import FeatureCache, FeatureExtractor, FeatureSet, featurize
from artistid.model import Model
from artistid.model_file import read_card
from artistid.runtimes import Machine, candidates, choose_engine
from artistid.train import STANDARD_FEATURE_NODES, TrainSettings, train

ROOT = Path(__file__).resolve().parents[1]


REAL_MACHINE = runtimes.machine()


def _machine(**flags: bool) -> Machine:
    return replace(REAL_MACHINE, **{"bf16": False, "amx": False, "cuda": False, **flags})


@pytest.fixture
def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "machine", lambda: _machine())


@pytest.fixture(scope="module")
def style_backbone():
    return create_backbone("efficientnet_lite0", feature_nodes=STANDARD_FEATURE_NODES, pooling="meanstd")


@pytest.fixture(scope="module")
def few_paintings(demo_data: Path) -> list[Sample]:
    samples, _ = load_split(str(demo_data / "Test"))
    return samples[::10]  # six paintings, two per artist


def test_machine_reads_the_cpu_flags_without_torch() -> None:
    code = "import sys; sys.modules['torch'] = None; from artistid.runtimes import machine; print(machine().describe())"
    described = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].splitlines()[0].split()
    assert ("avx2" in described.split("lacks")[0]) == ("avx2" in flags)
    assert ("bf16" in described.split("lacks")[0]) == bool({"avx512_bf16", "amx_bf16"} & set(flags))


def test_bf16_is_a_candidate_only_where_the_hardware_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "machine", lambda: _machine())
    assert {p for _, p in candidates("auto", "auto")} == {"fp32"}
    assert candidates("torch", "auto") == [("torch", "fp32")]
    monkeypatch.setattr(runtimes, "machine", lambda: _machine(bf16=True, amx=True))
    pairs = candidates("auto", "auto")
    assert ("openvino", "bf16") in pairs and ("torch", "bf16") in pairs
    assert ("onnx", "bf16") not in pairs  # ONNX Runtime's CPU kernels are fp32 only
    assert candidates("auto", "fp32") == [(r, "fp32") for r in runtimes.available_runtimes()]
    assert candidates("onnx", "bf16") == [("onnx", "fp32")]
    with pytest.raises(ValueError, match="runtime must be one of"):
        candidates("tensorrt", "auto")


def test_auto_runtime_is_measured_once_per_machine_and_remembered(
    style_backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtimes, "machine", lambda: _machine())
    speeds = {"torch": 40.0, "onnx": 90.0, "openvino": 120.0}
    measured: list[str] = []

    def measure(runtime: str, precision: str, give_up_below: float) -> float:
        measured.append(runtime)
        return speeds[runtime]

    assert choose_engine("auto", "auto", style_backbone, cache_dir=tmp_path, measure=measure) == ("openvino", "fp32")
    assert set(measured) == {"torch", "onnx", "openvino"}
    record = next(iter(json.loads((tmp_path / "runtimes.json").read_text()).values()))
    assert record["images_per_second"] == {"onnx/fp32": 90.0, "openvino/fp32": 120.0, "torch/fp32": 40.0}

    measured.clear()  # the same machine and backbone: read back, not measured again
    assert choose_engine("auto", "auto", style_backbone, cache_dir=tmp_path, measure=measure) == ("openvino", "fp32")
    assert measured == []
    # Another machine (here: one with native bf16) measures afresh, and bf16 may win where it is faster.
    monkeypatch.setattr(runtimes, "machine", lambda: _machine(bf16=True, amx=True))
    speeds_bf16 = {("openvino", "bf16"): 300.0, ("torch", "bf16"): 150.0}
    choice = choose_engine(
        "auto", "auto", style_backbone, cache_dir=tmp_path, measure=lambda r, p, _: speeds_bf16.get((r, p), speeds[r])
    )
    assert choice == ("openvino", "bf16")
    # bf16 rounds the features: a probe barely faster than fp32 (noise on a busy machine) does not choose it.
    monkeypatch.setattr(runtimes, "machine", lambda: _machine(bf16=True))
    barely = {("openvino", "bf16"): 130.0, ("torch", "bf16"): 10.0}
    choice = choose_engine(
        "auto", "auto", style_backbone, cache_dir=tmp_path, measure=lambda r, p, _: barely.get((r, p), speeds[r])
    )
    assert choice == ("openvino", "fp32")
    # A runtime named is used as named, with no probe.
    assert choose_engine("onnx", "auto", style_backbone, cache_dir=tmp_path, measure=measure) == ("onnx", "fp32")
    assert measured == []


def test_a_probe_where_no_runtime_ran_is_an_error_and_not_remembered(style_backbone, tmp_path: Path) -> None:
    def broken(runtime: str, precision: str, give_up_below: float) -> float:
        raise RuntimeError(f"{runtime} cannot run this graph")

    with pytest.raises(ArtistIdError, match="no runtime could run"):
        choose_engine("auto", "fp32", style_backbone, cache_dir=tmp_path, measure=broken)
    assert not (tmp_path / "runtimes.json").exists()


def test_runtimes_give_the_same_features_within_tolerance(style_backbone, few_paintings: list[Sample]) -> None:
    features = {}
    for runtime, precision in (("torch", "fp32"), ("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")):
        extractor = FeatureExtractor(style_backbone, runtime=runtime, precision=precision)  # type: ignore[arg-type]
        assert (extractor.runtime, extractor.precision) == (runtime, precision)
        features[runtime, precision] = featurize(few_paintings, extractor, workers=0, progress=False).features
    reference = features["torch", "fp32"]
    scale = np.abs(reference).max()
    for (runtime, precision), vectors in features.items():
        cosine = (reference * vectors).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(vectors, axis=1)
        if precision == "fp32":
            assert cosine.min() >= 0.9999 and np.abs(vectors - reference).max() <= 1e-3 * scale, runtime
        else:
            assert cosine.min() >= 0.999, runtime


def test_openvino_splits_a_batch_over_its_streams_and_gives_one_image_at_a_time_vectors(
    style_backbone, few_paintings: list[Sample]
) -> None:
    """Batches run on the throughput engine, a service's single images on the latency one: the vectors agree."""
    from artistid.images import load_image

    pixels = np.stack([load_image(s.path, style_backbone.preprocess) for s in few_paintings])
    batches = runtimes.create_engine("openvino", style_backbone, "fp32")
    single = runtimes.create_engine("openvino", style_backbone, "fp32", latency=True)
    batched = batches(pixels)
    assert batched.shape[0] == len(pixels) and batches(pixels[:1]).shape == (1, batched.shape[1])
    one_by_one = np.vstack([single(pixels[n : n + 1]) for n in range(len(pixels))])
    assert np.abs(batched - one_by_one).max() <= 1e-4 * np.abs(one_by_one).max()


def test_cache_keys_name_the_runtime_and_precision_and_a_warm_run_builds_nothing(
    few_paintings: list[Sample], tmp_path: Path
) -> None:
    identities = set()
    with FeatureCache(tmp_path / "cache") as cache:
        for runtime in ("torch", "onnx"):
            extractor = FeatureExtractor(create_backbone("efficientnet_lite0"), runtime=runtime, precision="fp32")
            identities.add(extractor.identity())
            assert extractor.identity().endswith(f"/{runtime}/fp32")
            cold = featurize(few_paintings, extractor, cache=cache, workers=0, progress=False)
        # Each runtime's vectors were computed and stored under its own key, not served for the other.
        keys = [FeatureCache.key(sha, identity) for sha in _hashes(cache, few_paintings) for identity in identities]
        assert len(cache.get_many(keys)) == 2 * len(few_paintings)
        backbone = create_backbone("efficientnet_lite0")
        warm = featurize(few_paintings, FeatureExtractor(backbone, runtime="onnx", precision="fp32"), cache=cache)
    assert len(identities) == 2
    assert not backbone.built  # every vector came from the cache: no network was built
    np.testing.assert_array_equal(warm.features, cold.features)


def test_a_warm_train_makes_no_photo_and_builds_no_network(
    small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples, _ = load_split(str(small_dataset / "Train"))
    settings = TrainSettings(photographed=8, calibration_folds=2)
    with FeatureCache(tmp_path / "cache") as cache:
        cold = train(samples, settings, cache=cache, progress=False).model

        def no_photo(*args: object, **kwargs: object) -> None:
            raise AssertionError("a warm train photographed a painting")

        monkeypatch.setattr("artistid.train.photograph", no_photo)
        warm = train(samples, settings, cache=cache, progress=False).model
    assert not warm.backbone.built
    assert cold.gates.painting is not None and warm.gates.painting is not None
    assert warm.gates.painting.n_photographed == cold.gates.painting.n_photographed == 8
    # The photos' vectors came from the cache: the same photos, drawn from each painting's content and the seed.
    np.testing.assert_array_equal(warm.gates.painting.reference, cold.gates.painting.reference)


def _hashes(cache: FeatureCache, samples: list[Sample]) -> list[str]:
    known = cache.known_hashes([s.path for s in samples])
    return [known[s.path] for s in samples]


# Runs the CLI where importing any of the named packages fails. They stay findable, as installed ones are (the
# runtime list asks), and out of sys.modules (SciPy looks there for torch).
WITHOUT = """
import importlib.abc, importlib.machinery, sys
BLOCKED = set(sys.argv.pop(1).split(","))
class Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError(f"{spec.name} must not be imported here")
    def exec_module(self, module):
        pass
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, Refuse()) if name.split(".")[0] in BLOCKED else None
sys.meta_path.insert(0, Block())
from artistid.cli import main
main()
"""


def _cli_without(packages: tuple[str, ...], command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    run = [sys.executable, "-c", WITHOUT, ",".join(packages), *command]
    return subprocess.run(run, capture_output=True, text=True, env=env)


def test_warm_featurize_imports_neither_torch_nor_pandas_nor_pydantic(demo_data: Path, tmp_path: Path) -> None:
    """A warm run reads vectors and writes Parquet: no network, and none of the libraries a warm run had paid for
    without using them (pyarrow's `pa.array` imports pandas; typer 0.29 parses every option through pydantic)."""
    for artist in ("Claude_Monet", "Rembrandt"):
        (tmp_path / "data" / artist).mkdir(parents=True)
        for image in sorted((demo_data / "Train" / artist).glob("*.jpg"))[:3]:
            shutil.copy(image, tmp_path / "data" / artist)
    command = ["featurize", str(tmp_path / "data"), "-o", str(tmp_path / "f.parquet"), "--cache-dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cold = subprocess.run([sys.executable, "-m", "artistid.cli", *command, "--json"], capture_output=True, env=env)
    assert cold.returncode == 0, cold.stderr
    warm = _cli_without(("torch", "timm", "pandas", "pydantic"), [*command, "--json"], env)
    assert warm.returncode == 0, warm.stderr
    assert json.loads(warm.stdout)["images"] == 6
    written = FeatureSet.from_parquet(tmp_path / "f.parquet")
    assert sorted(set(written.labels)) == ["Claude_Monet", "Rembrandt"] and written.features.shape[0] == 6


def test_predict_from_a_cached_feature_graph_imports_neither_torch_nor_sklearn(
    demo_model_path: Path, few_paintings: list[Sample], tmp_path: Path
) -> None:
    """A model file's backbone is named by its weights' fingerprint, so once its feature graph is exported, a
    predict (no vector cached) runs it on ONNX Runtime without building the network or importing torch, scores its
    head in NumPy without scikit-learn, and answers as the run that exported it."""
    paintings = [sample.path for sample in few_paintings[:2]]
    command = ["predict", str(demo_model_path), *paintings, "--runtime", "onnx", "--no-cache", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ARTISTID_CACHE": str(tmp_path)}
    first = subprocess.run([sys.executable, "-m", "artistid.cli", *command], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    again = _cli_without(("torch", "timm", "torchvision", "sklearn"), command, env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)


def test_a_model_trained_in_bf16_runs_in_fp32_where_bf16_is_not_native(
    demo_model: Model, tmp_path: Path, no_native_bf16: None
) -> None:
    recorded = demo_model.card
    demo_model.card = replace(recorded, precision="bf16")  # as a machine with AMX writes it
    path = tmp_path / "bf16.safetensors"
    try:
        demo_model.save(path)
    finally:
        demo_model.card = recorded
    assert read_card(path).precision == "bf16"
    assert Model.load(path).extractor.precision == "fp32"
    assert Model.load(path, runtime="torch").extractor.precision == "fp32"


def test_int8_features_agree_with_fp32_within_tolerance(style_backbone, few_paintings: list[Sample]) -> None:
    """The stated tolerance of int8 (the standard recipe's graph): cosine >= 0.95 to PyTorch fp32 on ONNX Runtime
    and >= 0.98 on OpenVINO, for every painting, and >= 0.97 on average."""
    fp32 = FeatureExtractor(style_backbone, runtime="torch", precision="fp32")
    reference = featurize(few_paintings, fp32, workers=0, progress=False).features
    for runtime, least in (("onnx", 0.95), ("openvino", 0.98)):
        extractor = FeatureExtractor(style_backbone, runtime=runtime, precision="int8")
        assert (extractor.runtime, extractor.precision) == (runtime, "int8")
        vectors = featurize(few_paintings, extractor, workers=0, progress=False).features
        cosine = (reference * vectors).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(vectors, axis=1)
        assert cosine.min() >= least and cosine.mean() >= 0.97, (runtime, cosine)


def test_int8_is_made_once_beside_the_export_has_its_own_cache_key_and_is_never_auto(style_backbone) -> None:
    fp32 = FeatureExtractor(style_backbone, runtime="onnx", precision="fp32")
    int8 = FeatureExtractor(style_backbone, runtime="onnx", precision="int8")
    # The same backbone and runtime; the precision, with what calibrated it, tells the vectors apart.
    assert int8.identity().rpartition("/")[0] == fp32.identity().rpartition("/")[0]
    assert int8.identity().rpartition("/")[2] == f"int8-{runtimes.int8_identity(style_backbone.preprocess)}"
    quantized = runtimes.int8_onnx(style_backbone, int8.cache_dir)
    assert quantized.name.startswith(runtimes.feature_onnx(style_backbone, int8.cache_dir).stem + "-int8-")
    made = quantized.stat().st_mtime_ns
    assert runtimes.int8_onnx(style_backbone, int8.cache_dir).stat().st_mtime_ns == made  # read back, not remade
    assert all(precision != "int8" for _, precision in candidates("auto", "auto"))
    assert candidates("auto", "int8") == [(r, "int8") for r in runtimes.available_runtimes() if r != "torch"]


def test_int8_on_torch_is_a_one_line_usage_error(small_dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from artistid.cli import app

    featurize_command = ["featurize", str(small_dataset), "-o", str(tmp_path / "f.parquet")]
    for command in (featurize_command, ["train", str(small_dataset), "-o", str(tmp_path / "m.safetensors")]):
        result = CliRunner().invoke(app, [*command, "--runtime", "torch", "--precision", "int8", "-q"])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (
            "artistid: error: int8 runs on the onnx and openvino runtimes, not torch: pass --runtime onnx or openvino"
        )


def test_a_model_trained_in_int8_predicts_in_int8_and_in_fp32_on_torch(
    small_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from typer.testing import CliRunner

    from artistid.cli import app

    output = tmp_path / "int8.safetensors"
    command = ["train", str(small_dataset), "-o", str(output), "--precision", "int8", "--runtime", "onnx"]
    result = CliRunner().invoke(app, [*command, "--cache-dir", str(tmp_path), "--photographed", "0", "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["accuracy"] >= 0.5
    assert read_card(output).precision == "int8"
    model = Model.load(output)  # the precision it was trained with, where the runtime computes it
    assert (model.extractor.runtime, model.extractor.precision) == ("onnx", "int8")
    paintings = sorted((small_dataset / "Test").rglob("*.jpg"))
    answers = model.predict(paintings)
    assert np.mean([answer == path.parent.name for answer, path in zip(answers, paintings, strict=True)]) >= 0.5
    with caplog.at_level("WARNING", logger="artistid.model"):
        on_torch = Model.load(output, runtime="torch")
    assert (on_torch.extractor.precision, on_torch.card.precision) == ("fp32", "int8")
    assert "trained on int8 features" in caplog.text
