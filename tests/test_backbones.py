"""Backbones: the offline default carries real ImageNet weights; downloads are checked; layers are picked by name."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import cbook
from typer.testing import CliRunner

from artistid.backbones import (
    _package_weights_file,
    build_network,
    create_backbone,
    download_weights,
    get_spec,
    list_backbones,
    load_pretrained,
)
from artistid.cli import app
from artistid.errors import WeightsError
from artistid.images import load_image

MILITARY_UNIFORM = 652  # ImageNet class of the well-known photograph of Grace Hopper in uniform


def _normalized(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


def test_packaged_weights_are_named_by_the_sha256_of_their_file() -> None:
    """The fingerprint of installed weights comes from the package's RECORD: the file's own sha256, unread."""
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        package = get_spec(name).weights_package
        assert package is not None
        origin = create_backbone(name).weights
        weights = _package_weights_file(get_spec(name))
        assert weights is not None
        assert origin.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest(), name
        assert origin.source == f"package:{package.replace('_', '-')}" and origin.revision == version(origin.source[8:])


def test_default_backbone_has_the_pretrained_imagenet_weights() -> None:
    spec = get_spec("efficientnet_lite0")
    network = build_network(spec).eval()
    load_pretrained(network, spec)
    photo = load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), spec.preprocess)
    with torch.no_grad():
        top5 = network(_normalized(photo, spec.mean, spec.std)).topk(5).indices[0].tolist()
    assert top5[0] == MILITARY_UNIFORM


def test_registry_lists_the_reference_and_offline_backbones() -> None:
    names = list_backbones()
    assert {"efficientnet_lite0", "resnet18"} <= set(names)
    assert list_backbones("efficientnet_*") == [n for n in names if n.startswith("efficientnet_")]
    result = CliRunner().invoke(app, ["backbones", "--json"])
    assert result.exit_code == 0
    assert '"name": "efficientnet_lite0"' in result.output and '"offline": true' in result.output


def test_cut_at_a_named_node_with_style_statistics() -> None:
    backbone = create_backbone("efficientnet_lite0", feature_nodes=("blocks.3",), pooling="meanstd")
    features = backbone(torch.zeros(2, 3, 224, 224))
    assert features.shape == (2, 2 * 80)  # channel means and standard deviations of an 80-channel block
    # The network is built on first use (a warm run never builds it): a wrong name is reported then.
    wrong = create_backbone("efficientnet_lite0", feature_nodes=("no.such.layer",))
    with pytest.raises(WeightsError, match="artistid backbones --nodes"):
        wrong(torch.zeros(1, 3, 224, 224))


def test_unknown_name_and_missing_weights_say_what_to_do() -> None:
    with pytest.raises(WeightsError, match="unknown backbone"):
        create_backbone("no_such_network")
    with pytest.raises(WeightsError, match="--weights FILE"):
        create_backbone("resnet10t")  # a timm model with no weights published offline


def test_any_timm_model_with_a_local_weights_file(tmp_path: Path) -> None:
    import timm

    weights = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), weights)
    backbone = create_backbone("resnet10t", weights=weights)
    assert backbone(torch.zeros(1, 3, 224, 224)).shape == (1, 512)


def test_unregistered_timm_model_takes_its_pretrained_config() -> None:
    import timm

    config = timm.get_pretrained_cfg("inception_v3")  # not registered; mean, std and size differ from the defaults
    spec = get_spec("inception_v3")
    assert spec.architecture == "timm:inception_v3" and spec.tiles == 1
    assert (spec.input_size, spec.mean, spec.std) == (299, tuple(config.mean), tuple(config.std))
    assert spec.preprocess.side == 299


@pytest.fixture
def weights_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serves a folder over HTTP on loopback, as a weights host would."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()


def test_download_checks_the_published_hash(weights_server: tuple[str, Path], tmp_path: Path) -> None:
    import torchvision

    base, served = weights_server
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, served / "resnet18-test.pth")
    sha = hashlib.sha256((served / "resnet18-test.pth").read_bytes()).hexdigest()

    cache = tmp_path / "cache"
    with pytest.raises(WeightsError, match="do not match their published hash"):
        download_weights(f"{base}/resnet18-test.pth", "0badc0de", cache)
    assert not list(cache.glob("*")), "a file that failed its hash check must not stay in the cache"

    path = download_weights(f"{base}/resnet18-test.pth", sha[:8], cache)
    assert path.read_bytes() == (served / "resnet18-test.pth").read_bytes()
    backbone = create_backbone("resnet18", weights=path)
    assert backbone(torch.zeros(1, 3, 224, 224)).shape == (1, 512)


def test_download_failure_explains_how_to_work_offline(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="--weights FILE"):
        download_weights("http://127.0.0.1:9/resnet18-f37072fd.pth", "f37072fd", tmp_path)
