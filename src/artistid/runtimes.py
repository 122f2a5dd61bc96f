"""Where the frozen backbone runs: PyTorch, ONNX Runtime or OpenVINO, in the precision the machine has natively.

- `machine()` names the CPU and what it has (AVX2, AVX-512, AMX, native bf16), read without importing torch.
- bf16 is considered only where the hardware computes it natively (AVX512-BF16 / AMX on a CPU, or CUDA);
  elsewhere everything runs in fp32, because emulated bf16 is many times slower than fp32.
- `feature_onnx` exports the backbone (uint8 pixels -> normalization -> the network cut at its feature nodes ->
  pooling and style statistics) to ONNX once per backbone identity and keeps it in the cache folder; ONNX Runtime
  and OpenVINO both read that file, so every runtime computes the same graph.
- `int8_onnx` quantizes that export once per backbone (ONNX Runtime's post-training static quantization: QDQ,
  per-channel int8 weights, activations calibrated on a fixed, seeded choice of the shipped demo paintings), for
  `--precision int8` on ONNX Runtime and OpenVINO. The calibration set ships with artistid, so a model trained on
  int8 features gets the same graph on any machine, without its training images.
- `choose_engine("auto", "auto", backbone)` times a short probe of each installed runtime (and of bf16 where it is
  native) on this machine and keeps the answer per machine and backbone identity, so later runs (and warm runs,
  which never build the network) just read it: native bf16 is not always faster (PyTorch's bf16 on a CPU without
  AMX can be slower than its fp32), so it is measured, not assumed. `auto` never picks int8: int8 only when asked.
- `create_engine` returns the `Engine` that maps uint8 NHWC pixels to feature vectors.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from artistid import storage
from artistid.errors import ArtistIdError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from artistid.backbones import Backbone
    from artistid.images import Preprocess

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "Engine",
    "Machine",
    "available_runtimes",
    "backbone_state",
    "candidates",
    "choose_engine",
    "computes_int8",
    "create_engine",
    "cuda_present",
    "default_cache_dir",
    "feature_module",
    "feature_onnx",
    "features_identity",
    "int8_identity",
    "int8_onnx",
    "machine",
    "trace_to_onnx",
]

logger = logging.getLogger(__name__)

Runtime = Literal["torch", "onnx", "openvino"]
Precision = Literal["fp32", "bf16", "int8"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx", "openvino")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "int8")
# Which runtime computes which precision here: ONNX Runtime's CPU kernels have no bf16; int8 is the quantized ONNX
# graph, which PyTorch does not run.
_PRECISIONS_OF: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16"),
    "onnx": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
_MODULE_OF = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino"}
FEATURES_INPUT, FEATURES_OUTPUT = "pixels", "features"
OPSET = 17
PROBE_SECONDS = 0.6  # per runtime, after a warm-up call
PROBE_BATCH = 16  # images of 224 px a probe call runs, as featurize batches them (fewer, of larger sides)
PROBE_LEAST = 4  # ...but never so few that a throughput engine's streams stand idle
PROBE_ROUNDS = 3
BF16_MARGIN = 1.25  # bf16 is chosen over fp32 only when its probe is at least this much faster
INT8_CALIBRATION_IMAGES = 64  # demo paintings that calibrate the int8 activations
INT8_CALIBRATION_SEED = 0


# --- the machine -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """The CPU and what it computes natively; benchmarks print it beside every figure."""

    cpu: str
    cores: int
    avx2: bool
    avx512: bool
    amx: bool
    bf16: bool  # native bf16 arithmetic: AVX512-BF16 or AMX-BF16
    cuda: bool

    def describe(self) -> str:
        has = [name for name in ("avx2", "avx512", "amx", "bf16") if getattr(self, name)]
        lacks = [name for name in ("avx2", "avx512", "amx", "bf16") if not getattr(self, name)]
        text = f"{self.cpu}, {self.cores} cores; has {', '.join(has) or 'none of avx2/avx512/amx/bf16'}"
        text += f"; lacks {', '.join(lacks)}" if lacks else ""
        return text + ("; CUDA" if self.cuda else "")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the model name only, and no flags
        return platform.processor() or platform.machine(), set()
    name, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    return name, flags


def cuda_present() -> bool:
    """Whether a CUDA device can be used; asks torch only where an NVIDIA driver is loaded."""
    if not Path("/proc/driver/nvidia/version").exists():
        return False
    import torch

    return bool(torch.cuda.is_available())


@functools.lru_cache(maxsize=1)
def machine() -> Machine:
    name, flags = _cpuinfo()
    return Machine(
        cpu=name,
        cores=os.cpu_count() or 1,
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        amx="amx_tile" in flags,
        bf16=bool({"avx512_bf16", "amx_bf16"} & flags),
        cuda=cuda_present(),
    )


def available_runtimes() -> list[str]:
    """The runtimes whose package is installed, in the order of RUNTIMES."""
    return [name for name in RUNTIMES if importlib.util.find_spec(_MODULE_OF[name]) is not None]


def computes_int8(runtime: str) -> bool:
    """Whether `runtime` ("auto": any installed) runs the int8 graph here; ONNX Runtime makes that graph."""
    if "onnx" not in available_runtimes():
        return False
    return runtime == "auto" or "int8" in _PRECISIONS_OF.get(runtime, ())


# --- one forward pass for features, for PyTorch and for the ONNX export ------------------------------------------


def feature_module(backbone: Backbone) -> nn.Module:
    """The model's forward pass without its head (`artistid.forward.ArtistForward`): uint8 NHWC pixels -> features."""
    from torch import nn

    from artistid.forward import ArtistForward

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.forward_pass = ArtistForward(backbone)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.forward_pass.features(pixels)

    return Features().eval()


def trace_to_onnx(
    module: nn.Module, example: np.ndarray, path: str, input_name: str, output_names: Sequence[str]
) -> None:
    """Exports a module of one uint8 batch to ONNX (its outputs named in order), any batch size."""
    import torch

    with warnings.catch_warnings():
        # The TorchScript exporter is exact for these feed-forward graphs and needs no onnxscript; torch only
        # warns that it is no longer the default.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (torch.from_numpy(example),),
            path,
            dynamo=False,
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in [input_name, *output_names]},
            opset_version=OPSET,
        )


def features_identity(backbone: Backbone) -> str:
    """What a backbone's vectors are, whichever runtime computes them: weights, cut, pooling, preprocessing."""
    return f"{backbone.identity()}/{backbone.preprocess.key()}"


def _engine_path(backbone: Backbone, cache_dir: Path, suffix: str) -> Path:
    digest = hashlib.sha256(features_identity(backbone).encode()).hexdigest()[:32]
    return cache_dir / "engines" / f"features-{digest}{suffix}"


def node_widths(backbone: Backbone, cache_dir: Path) -> tuple[int, ...]:
    """`Backbone.node_widths`, remembered beside the feature graph: a run with a cached graph builds no network."""
    path = _engine_path(backbone, cache_dir, ".widths.json")
    try:
        return tuple(int(width) for width in json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    widths = backbone.node_widths()
    try:
        storage.write_bytes_atomic(path, json.dumps(widths).encode())
    except OSError as exc:
        logger.warning("cannot remember the feature widths in %s (%s)", path, exc)
    return widths


def feature_onnx(backbone: Backbone, cache_dir: Path) -> Path:
    """The backbone's feature graph as ONNX, exported once per backbone identity into `cache_dir`/engines."""
    path = _engine_path(backbone, cache_dir, ".onnx")
    if path.exists():
        return path
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    side = backbone.preprocess.side
    example = np.zeros((2, side, side, 3), dtype=np.uint8)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="artistid-engine-", dir=path.parent) as scratch:
        traced = Path(scratch) / path.name
        trace_to_onnx(feature_module(backbone), example, str(traced), FEATURES_INPUT, [FEATURES_OUTPUT])
        storage.write_bytes_atomic(path, traced.read_bytes())
    node_widths(backbone, cache_dir)  # while the network is built
    logger.info(
        "exported the feature graph of %s to %s in %.1f s", backbone.spec.name, path, time.perf_counter() - started
    )
    return path


@functools.lru_cache(maxsize=1)
def _calibration_paintings() -> tuple[tuple[str, bytes], ...]:
    """The shipped demo set's Train paintings that calibrate int8: a fixed, seeded choice, as (name, bytes)."""
    from artistid.datasets import demo_data

    with demo_data() as root:
        paths = sorted((root / "Train").glob("*/*.jpg"))
        if len(paths) < INT8_CALIBRATION_IMAGES:
            raise ArtistIdError(f"{root}: the demo paintings that calibrate int8 are missing from this installation")
        chosen = np.random.default_rng(INT8_CALIBRATION_SEED).permutation(len(paths))[:INT8_CALIBRATION_IMAGES]
        return tuple((paths[i].name, paths[i].read_bytes()) for i in sorted(chosen))


def int8_identity(preprocess: Preprocess) -> str:
    """What the int8 graph depends on besides its fp32 export: the calibration paintings, their preprocessing and
    the quantizer's version (part of the int8 graph's file name and of the int8 vectors' cache key)."""
    digest = hashlib.sha256(json.dumps([preprocess.key(), _versions().get("onnx", "")]).encode())
    for name, data in _calibration_paintings():
        digest.update(f"{name}\0{hashlib.sha256(data).hexdigest()}".encode())
    return digest.hexdigest()[:16]


def int8_onnx(backbone: Backbone, cache_dir: Path) -> Path:
    """The feature graph quantized to int8, made once per export and calibration beside it in `cache_dir`/engines.

    ONNX Runtime's static quantization in QDQ form (which OpenVINO reads too): per-channel int8 weights, uint8
    activations whose ranges are the extremes seen on the calibration paintings, one at a time.
    """
    fp32 = feature_onnx(backbone, cache_dir)
    path = fp32.with_name(f"{fp32.stem}-int8-{int8_identity(backbone.preprocess)}.onnx")
    if path.exists():
        return path
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from artistid.decoding import decode_bytes

    batches = iter(
        [
            {FEATURES_INPUT: decode_bytes(i, data, name, backbone.preprocess).pixels_or_raise()[None]}
            for i, (name, data) in enumerate(_calibration_paintings())
        ]
    )

    class Paintings(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="artistid-engine-", dir=path.parent) as scratch:
        quantized = Path(scratch) / path.name
        quantize_static(
            str(fp32), str(quantized), Paintings(), quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
        )  # fmt: skip
        storage.write_bytes_atomic(path, quantized.read_bytes())
    logger.info(
        "quantized the feature graph of %s to int8 in %s in %.1f s",
        backbone.spec.name,
        path,
        time.perf_counter() - started,
    )
    return path


# --- engines ---------------------------------------------------------------------------------------------------


class Engine(Protocol):
    runtime: str
    precision: str

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Feature vectors (n, d), float32, of uint8 pixels (n, side, side, 3)."""
        ...


class TorchEngine:
    def __init__(self, backbone: Backbone, precision: Precision, device: str) -> None:
        import torch

        self.runtime: str = "torch"
        self.precision: str = precision
        self.device = torch.device(device)
        self.module = feature_module(backbone).to(self.device).to(memory_format=torch.channels_last)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        batch = torch.from_numpy(np.require(pixels, np.uint8, requirements=["C", "W"])).to(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            return self.module(batch).float().cpu().numpy()


class OnnxRuntimeEngine:
    def __init__(self, path: Path, precision: Precision, threads: int | None) -> None:
        import onnxruntime as ort

        self.runtime: str = "onnx"
        self.precision: str = precision  # what the graph at `path` computes: fp32, or int8 where it is quantized
        options = ort.SessionOptions()
        # Idle pool threads that spin would take the cores from the processes decoding the next images.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Errors only: fusing an int8 graph's QDQ pairs leaves constants behind, and ORT warns of each one it drops.
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        (features,) = self.session.run([FEATURES_OUTPUT], {FEATURES_INPUT: np.ascontiguousarray(pixels, np.uint8)})
        return np.asarray(features, dtype=np.float32)


class OpenVinoEngine:
    def __init__(self, path: Path, precision: Precision, threads: int | None, latency: bool = False) -> None:
        import openvino as ov

        self.runtime: str = "openvino"
        self.precision: str = precision
        config = {
            # OpenVINO would pick bf16 by itself on AMX machines: the precision is ours to choose. An int8 graph
            # carries its own quantization; what it leaves in floating point stays fp32.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            # Batches run fastest split over streams of a few cores each, one image alone on every core at once.
            "PERFORMANCE_HINT": "LATENCY" if latency else "THROUGHPUT",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        core = ov.Core()
        # Compiled once per machine, graph and settings beside the export: a later process loads it in a fraction.
        if os.access(path.parent, os.W_OK):
            core.set_property({"CACHE_DIR": str(path.parent / "openvino")})
        self.compiled = core.compile_model(str(path), "CPU", config)
        streams = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = [self.compiled.create_infer_request() for _ in range(max(1, streams))]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        parts = np.array_split(np.ascontiguousarray(pixels, np.uint8), max(1, min(len(self.requests), len(pixels))))
        running = self.requests[: len(parts)]
        for request, part in zip(running, parts, strict=True):
            request.start_async({0: part})
        for request in running:
            request.wait()
        return np.concatenate([np.array(r.get_output_tensor(0).data, dtype=np.float32) for r in running])


def create_engine(
    runtime: str,
    backbone: Backbone,
    precision: Precision,
    *,
    device: str = "cpu",
    cache_dir: Path | None = None,
    threads: int | None = None,
    latency: bool = False,
) -> Engine:
    """The engine that runs `backbone` on `runtime`; ONNX Runtime and OpenVINO read the cached ONNX export (in
    int8: its quantized form). `latency`: tuned for one image at a time (a service) rather than for batches."""
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime must be one of auto, {', '.join(RUNTIMES)}; got {runtime!r}")
    if precision == "int8" and "int8" not in _PRECISIONS_OF[runtime]:
        raise _int8_refused(runtime)
    if runtime == "torch":
        return TorchEngine(backbone, precision, device)
    if runtime not in available_runtimes():
        raise ArtistIdError(f"the {runtime} runtime is not installed: pip install {_MODULE_OF[runtime]}")
    cache_dir = cache_dir or default_cache_dir()
    path = int8_onnx(backbone, cache_dir) if precision == "int8" else feature_onnx(backbone, cache_dir)
    if runtime == "onnx":
        return OnnxRuntimeEngine(path, "int8" if precision == "int8" else "fp32", threads)
    return OpenVinoEngine(path, precision, threads, latency)


def _int8_refused(runtime: str) -> UsageError:
    return UsageError(f"int8 runs on the onnx and openvino runtimes, not {runtime}: pass --runtime onnx or openvino")


def default_cache_dir() -> Path:
    """Where artistid keeps what it can make again (feature vectors, exported graphs).

    $ARTISTID_CACHE, or else the user's cache folder.
    """
    import platformdirs

    return Path(os.environ.get("ARTISTID_CACHE") or platformdirs.user_cache_dir("artistid"))


# --- choosing the runtime: a timed probe, remembered per machine ---------------------------------------------------


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in RUNTIMES:
        try:
            found[name] = version(_MODULE_OF[name])
        except PackageNotFoundError:
            continue
    return found


def probe(engine: Engine, side: int, seconds: float = PROBE_SECONDS, give_up_below: float = 0.0) -> float:
    """Images per second of `engine` on random pixels of `side`, after one warm-up call.

    Where the warm-up call alone shows a speed below `give_up_below`, that estimate is the answer: a runtime far
    behind another needs no precise figure (emulated bf16 can be many times slower than fp32).
    """
    count = max(PROBE_LEAST, round(PROBE_BATCH * (224 / side) ** 2))
    pixels = np.random.default_rng(0).integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    started = time.perf_counter()
    engine(pixels)
    warm_up = count / (time.perf_counter() - started)
    if warm_up < give_up_below:
        return warm_up
    done, started = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - started < seconds:
        engine(pixels)
        done += count
    return done / (time.perf_counter() - started)


def candidates(runtime: str, precision: str) -> list[tuple[str, Precision]]:
    """The (runtime, precision) pairs that `runtime` and `precision` ("auto" or not) allow on this machine.

    bf16 is a candidate only where the hardware computes it natively (AVX512-BF16 or AMX-BF16, or CUDA). int8 is
    one only when asked for: it changes the features, so "auto" never trades them for speed.
    """
    if runtime != "auto" and runtime not in RUNTIMES:
        raise UsageError(f"runtime must be one of auto, {', '.join(RUNTIMES)}; got {runtime!r}")
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "int8" and runtime != "auto" and "int8" not in _PRECISIONS_OF[runtime]:
        raise _int8_refused(runtime)
    native = machine().bf16 or machine().cuda
    runtimes = available_runtimes() if runtime == "auto" else [runtime]
    pairs: list[tuple[str, Precision]] = []
    for name in runtimes:
        for arithmetic in ("fp32", "bf16", "int8"):
            allowed = precision == arithmetic or (
                precision == "auto" and (arithmetic == "fp32" or (arithmetic == "bf16" and native))
            )
            if allowed and arithmetic in _PRECISIONS_OF[name]:
                pairs.append((name, arithmetic))
    if not pairs and precision == "int8":
        raise UsageError("int8 needs ONNX Runtime, which quantizes the graph: pip install onnxruntime")
    if not pairs:  # ONNX Runtime asked for bf16: it computes fp32
        logger.warning("the %s runtime computes in fp32 only; %s was asked for", runtime, precision)
        pairs = [(runtime, "fp32")]
    if precision == "bf16" and not native:
        logger.warning("bf16 is emulated on this CPU (%s): many times slower than fp32", machine().cpu)
    return pairs


def choose_engine(
    runtime: str,
    precision: str,
    backbone: Backbone,
    *,
    cache_dir: Path | None = None,
    measure: Callable[[str, Precision, float], float] | None = None,
) -> tuple[str, Precision]:
    """The runtime and precision to run `backbone` with: as asked, and where "auto", the fastest measured here.

    On CUDA the answer is torch (the other two run on the CPU here), in bf16 unless fp32 was asked for; int8 stays on
    the CPU runtimes. Otherwise, where more than one pair of `candidates` remains, each is timed on a short probe (in
    rounds, so that a neighbour's load falls on all of them alike); the speeds are kept in `cache_dir`/runtimes.json
    under the machine, the libraries' versions, the backbone's identity and what was asked, and read back from then
    on.
    """
    pairs = candidates(runtime, precision)
    if machine().cuda and runtime in ("auto", "torch") and precision != "int8":
        return "torch", "fp32" if precision == "fp32" else "bf16"
    if len(pairs) == 1:
        return pairs[0]
    cache_dir = cache_dir or default_cache_dir()
    record_path = cache_dir / "runtimes.json"
    key = hashlib.sha256(
        json.dumps(
            [machine().key(), _versions(), features_identity(backbone), runtime, precision, BF16_MARGIN]
        ).encode()
    ).hexdigest()
    try:
        records = json.loads(record_path.read_text())
    except (OSError, ValueError):
        records = {}
    if key in records:
        found = records[key]
        return str(found["runtime"]), found["precision"]

    engines: dict[tuple[str, Precision], Engine] = {}

    def timed(name: str, arithmetic: Precision, give_up_below: float) -> float:
        if (name, arithmetic) not in engines:
            engines[name, arithmetic] = create_engine(name, backbone, arithmetic, cache_dir=cache_dir)
        return probe(engines[name, arithmetic], backbone.preprocess.side, give_up_below=give_up_below)

    measure = measure or timed
    speeds: dict[tuple[str, Precision], float] = {}
    # PyTorch last: it needs no export, and the others set the pace it is judged by.
    pairs.sort(key=lambda pair: (pair[0] == "torch", pair[1] == "bf16"))
    for round_ in range(PROBE_ROUNDS):
        for pair in pairs:
            fastest = max(speeds.values(), default=0.0)
            if round_ and speeds.get(pair, 0.0) < fastest / 3:
                continue  # far behind after the first round: not worth more probing
            try:
                speeds[pair] = max(speeds.get(pair, 0.0), measure(*pair, fastest / 3))
            except Exception as exc:  # a runtime that cannot run this graph is no candidate
                logger.warning("the %s runtime cannot run %s: %s", pair[0], backbone.spec.name, exc)
                speeds[pair] = 0.0
    if not any(speeds.values()):  # nothing ran: no choice to remember, and the reason is in the log
        raise ArtistIdError(
            f"no runtime could run {backbone.spec.name} here ({', '.join('/'.join(p) for p in speeds)})"
        )
    best = max(speeds, key=speeds.__getitem__)
    fp32 = {pair: speed for pair, speed in speeds.items() if pair[1] == "fp32"}
    if best[1] == "bf16" and fp32 and speeds[best] < BF16_MARGIN * max(fp32.values()):
        best = max(fp32, key=fp32.__getitem__)  # bf16 rounds the features: worth it only when clearly faster
    logger.info(
        "runtime %s, precision %s: %s on %s (%s images/s measured)",
        runtime,
        precision,
        "/".join(best),
        machine().cpu,
        ", ".join(f"{'/'.join(p)} {v:.1f}" for p, v in speeds.items()),
    )
    records[key] = {
        "runtime": best[0],
        "precision": best[1],
        "images_per_second": {"/".join(p): round(v, 2) for p, v in speeds.items()},
        "cpu": machine().describe(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        storage.write_bytes_atomic(record_path, json.dumps(records, indent=1).encode())
    except OSError as exc:
        logger.warning("cannot remember the runtime choice in %s (%s)", record_path, exc)
    return best


# --- the backbone's weights, for saving a model without building its network -------------------------------------


def backbone_state(backbone: Backbone, cache_dir: Path) -> dict[str, np.ndarray]:
    """The backbone's weights as a model file stores them (names and values of its cut network's state).

    A pretrained backbone's weights are kept in `cache_dir`/engines beside its ONNX export the first time they are
    read from the network, so a later run whose every vector is cached saves its model without building it.
    """
    digest = hashlib.sha256(backbone.identity().encode()).hexdigest()[:32]
    path = cache_dir / "engines" / f"state-{digest}.safetensors"
    if not backbone.built and path.exists():
        from safetensors.numpy import load

        return load(path.read_bytes())
    state = {k: v.detach().cpu().numpy() for k, v in backbone.network.state_dict().items()}
    if backbone.weights_sha256 and not path.exists():  # random weights (no fingerprint) are never kept
        from safetensors.numpy import save

        path.parent.mkdir(parents=True, exist_ok=True)
        storage.write_bytes_atomic(path, save({k: np.ascontiguousarray(v) for k, v in state.items()}))
    return state
