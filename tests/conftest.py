"""Shared fixtures: the real painting datasets beside the project, and a model trained once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("ARTISTID_DATASETS", ROOT.parent / "shared" / "datasets"))
DEMO = ROOT / "src" / "artistid" / "demo_data"

# One runtime for the whole suite: "auto" times the runtimes on this machine, and a choice that differed between two
# processes of one test would compute other vectors. tests/test_runtimes.py tests the choice itself.
os.environ.setdefault("ARTISTID_RUNTIME", "onnx")
os.environ.setdefault("ARTISTID_PRECISION", "fp32")
# scikit-learn's estimator contract includes a check that array-API dispatch on NumPy inputs changes no result; it
# runs only when SciPy is imported with this set, and otherwise skips.
os.environ.setdefault("SCIPY_ARRAY_API", "1")


def _dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_dir():
        pytest.skip(f"real paintings not found at {path} (set ARTISTID_DATASETS, or clone beside ../shared)")
    return path


@pytest.fixture(scope="session")
def paintings3() -> Path:
    return _dataset("paintings3")


@pytest.fixture(scope="session")
def paintings10() -> Path:
    return _dataset("paintings10")


@pytest.fixture(scope="session")
def demo_data() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def small_dataset(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight Train and two Test paintings of each demo artist: enough to train on, quick to featurize."""
    root = tmp_path_factory.mktemp("small")
    for split, count in (("Train", 8), ("Test", 2)):
        for artist in sorted((demo_data / split).iterdir()):
            (root / split / artist.name).mkdir(parents=True)
            for image in sorted(artist.glob("*.jpg"))[:count]:
                (root / split / artist.name / image.name).write_bytes(image.read_bytes())
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for the whole session, so each image is featurized once across tests."""
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session")
def demo_model_path(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A model trained with the defaults on the shipped demo set (seconds on two cores)."""
    from artistid.datasets import load_dataset
    from artistid.features import FeatureCache
    from artistid.train import train

    output = tmp_path_factory.mktemp("models") / "demo.safetensors"
    with FeatureCache(cache_dir) as cache:
        result = train(load_dataset(str(DEMO)).train, cache=cache, progress=False)
    result.model.save(output)
    return output


@pytest.fixture(scope="session")
def demo_model(demo_model_path: Path):
    from artistid.model import Model

    return Model.load(demo_model_path)


pytest_plugins = ["conftest_storage", "conftest_serve", "conftest_spark"]
