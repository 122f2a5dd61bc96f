"""Serving latency and throughput on loopback: N clients x M requests against `artistid serve`, per runtime.

The same model file is served with its backbone on PyTorch, ONNX Runtime and OpenVINO (`--runtime`), and as its
`artistid export` .onnx file; beside each, the in-process model's own throughput (the same runtime, batches of 4,
no HTTP) measured in the same run.

make bench-serve      # or: .venv/bin/python bench/serve.py [--model M.safetensors] [--clients 1,8] [--requests 200]

Each request uploads one 224x224 JPEG painting (from the shipped demo set) to POST /v1/predict. Every scenario is
bounded in count (--requests per client) and time (--max-seconds). Without --model, a model is trained on the demo
set (the default backbone) into .cache/bench-serve/ and exported to ONNX beside it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from artistid.runtimes import machine

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench-serve"
DEMO = ROOT / "src" / "artistid" / "demo_data"


def artistid(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "artistid.cli", *args], check=True)


def prepare_models(model: str | None) -> tuple[Path, Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    source = Path(model) if model else WORK / "demo.safetensors"
    if model is None:
        artistid("train", str(DEMO), "-o", str(source), "--cache-dir", str(WORK / "cache"), "-q")
    onnx = WORK / (source.stem + ".onnx")
    if not onnx.exists() or onnx.stat().st_mtime < source.stat().st_mtime:
        artistid("export", str(source), "--onnx", str(onnx))
    return source, onnx


def in_process(source: Path, onnx: Path, runtime: str, images: list[tuple[str, bytes]], seconds: float = 5.0) -> float:
    """Images/s of the model itself, batches of 4 decoded paintings, no HTTP: what the service can at best reach."""
    from artistid.images import load_image

    if runtime == "onnx-export":
        from artistid.onnx_model import OnnxModel

        exported = OnnxModel.load(onnx)
        pixels = np.stack([load_image(data, exported.preprocess) for _, data in images[:4]])
        predict = exported.predict_pixels
    else:
        from artistid.model import Model

        model = Model.load(source, runtime=runtime)
        pixels = np.stack([load_image(data, model.preprocess) for _, data in images[:4]])

        def predict(batch: np.ndarray) -> np.ndarray:
            return model.head.predict_proba(model.extractor(batch))

    predict(pixels)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predict(pixels)
        done += len(pixels)
    return done / (time.perf_counter() - started)


def paintings(limit: int = 64) -> list[tuple[str, bytes]]:
    """224x224 JPEG paintings, as a phone or a web page would send them."""
    found = []
    for path in sorted(DEMO.rglob("*.jpg")):
        with Image.open(path) as image:
            if image.size == (224, 224):
                found.append((path.name, path.read_bytes()))
        if len(found) == limit:
            break
    return found


START_SECONDS = 600  # a loaded machine can take minutes to import and load a model


class Server:
    def __init__(self, model: Path, *options: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "artistid.cli", "serve", str(model), "--port", str(port)]
        self.process = subprocess.Popen([*command, *options, "--log-level", "warning"], env={**os.environ})
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.process.kill()
        raise SystemExit(f"server did not start within {START_SECONDS} s")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/healthz").json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def load(server: Server, images: list[tuple[str, bytes]], clients: int, requests: int, max_seconds: float) -> dict:
    """`clients` threads, each sending up to `requests` one-image requests one after another."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    # A lean client (http.client, multipart bodies built once) so that the clients, which share the machine
    # with the server here, take as little of its CPU as they can.
    boundary = "artistid-bench"
    bodies = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
        for name, data in images
    ]
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    host, port = server.url.removeprefix("http://").split(":")

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        for step in range(requests):
            if time.monotonic() > deadline:
                break
            body = bodies[(index * 7 + step) % len(bodies)]
            started = time.perf_counter()
            try:
                connection.request("POST", "/v1/predict", body=body, headers=headers)
                response = connection.getresponse()
                text = response.read()
                ok = response.status == 200
                problem = "" if ok else f"{response.status} {text[:100]!r}"
            except (OSError, http.client.HTTPException) as exc:
                ok, problem = False, repr(exc)
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                (latencies.append(elapsed) if ok else errors.append(problem))
        connection.close()

    before = server.health()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    after = server.health()
    ms = np.array(latencies) * 1000
    batches = after["batches"] - before["batches"]
    return {
        "clients": clients,
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "images_per_s": len(latencies) / wall,
        "mean_batch": (after["images"] - before["images"]) / batches if batches else None,
        "seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file [default: train one on the demo set]")
    parser.add_argument("--runtimes", default="torch,onnx,openvino,onnx-export")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts, one scenario each")
    parser.add_argument("--requests", type=int, default=200, help="requests per scenario (split over clients)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time bound per scenario")
    parser.add_argument("--server-options", default="", help="extra `artistid serve` options, e.g. '--max-batch 4'")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    print(f"machine: {machine().describe()}", flush=True)
    source, onnx = prepare_models(args.model)
    images = paintings()
    results = []
    for runtime in args.runtimes.split(","):
        if runtime == "onnx-export":
            server = Server(onnx, *args.server_options.split())
        else:
            server = Server(source, "--runtime", runtime, *args.server_options.split())
        try:
            load(server, images, clients=2, requests=10, max_seconds=30)  # warm-up: first calls allocate
            label = f"{runtime} ({server_precision(server)})"
            for clients in (int(c) for c in args.clients.split(",")):
                row = load(server, images, clients, max(1, args.requests // clients), args.max_seconds)
                row["runtime"] = label
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.stop()
        # The model alone, while no server runs: the figure the service is compared with.
        results.append(
            {"runtime": label, "clients": "in-process", "images_per_s": in_process(source, onnx, runtime, images)}
        )
        print(json.dumps(results[-1]), flush=True)

    print(f"\nmachine: {machine().describe()}; {len(images)} distinct 224x224 JPEG paintings, one per request\n")
    print("| runtime | clients | requests | errors | p50 (ms) | p99 (ms) | images/s | mean batch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["clients"] == "in-process":
            print(f"| {r['runtime']} | model in-process, batch 4 | - | - | - | - | {r['images_per_s']:.1f} | 4 |")
            continue
        batch = f"{r['mean_batch']:.1f}" if r["mean_batch"] else "-"
        print(
            f"| {r['runtime']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['images_per_s']:.1f} | {batch} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def server_precision(server: Server) -> str:
    return httpx.get(f"{server.url}/v1/model").json()["model"]["precision"]


if __name__ == "__main__":
    main()
