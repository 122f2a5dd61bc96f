"""Serving latency and throughput on loopback: N clients x M requests against `artistid serve`, per runtime.

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

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench-serve"
DEMO = ROOT / "src" / "artistid" / "demo_data"


def artistid(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "artistid.cli", *args], check=True)


def prepare_models(model: str | None) -> dict[str, Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    source = Path(model) if model else WORK / "demo.safetensors"
    if model is None:
        artistid("train", str(DEMO), "-o", str(source), "--cache-dir", str(WORK / "cache"), "-q")
    onnx = WORK / (source.stem + ".onnx")
    if not onnx.exists() or onnx.stat().st_mtime < source.stat().st_mtime:
        artistid("export", str(source), "--onnx", str(onnx))
    return {"torch": source, "onnx": onnx}


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


class Server:
    def __init__(self, model: Path, *options: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "artistid.cli", "serve", str(model), "--port", str(port)]
        self.process = subprocess.Popen([*command, *options, "--log-level", "warning"], env={**os.environ})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise SystemExit("server did not start within 120 s")

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
    parser.add_argument("--runtimes", default="torch,onnx")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts, one scenario each")
    parser.add_argument("--requests", type=int, default=200, help="requests per scenario (split over clients)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time bound per scenario")
    parser.add_argument("--server-options", default="", help="extra `artistid serve` options, e.g. '--max-batch 4'")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    models = prepare_models(args.model)
    images = paintings()
    results = []
    for runtime in args.runtimes.split(","):
        server = Server(models[runtime], *args.server_options.split())
        try:
            load(server, images, clients=2, requests=10, max_seconds=30)  # warm-up: first calls allocate
            for clients in (int(c) for c in args.clients.split(",")):
                row = load(server, images, clients, max(1, args.requests // clients), args.max_seconds)
                row["runtime"] = runtime + (f" ({server_precision(server)})" if runtime == "torch" else " (fp32)")
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.stop()

    print(f"\n{os.cpu_count()} CPUs, {len(images)} distinct 224x224 JPEG paintings, one image per request\n")
    print("| runtime | clients | requests | errors | p50 (ms) | p99 (ms) | images/s | mean batch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
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
