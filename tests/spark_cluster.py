"""A Spark standalone cluster and a Spark Connect server on loopback, from the pyspark distribution itself.

    with StandaloneCluster(workers=2) as cluster:     # a master and two workers, each its own JVM with one core
        subprocess.run(["artistid", "featurize", ..., "--master", cluster.url], env=cluster.client_env())
    with ConnectServer() as server:                   # start-connect-server.sh --wait
        ... "--remote", server.url

Used by tests/test_spark_cluster.py (session fixtures) and bench/spark.py. Executors get small memory settings:
the development machine has 2 cores and 24 GiB shared with other work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
# Small enough for a shared 2-core machine, large enough for a JVM that only moves Arrow batches to Python.
EXECUTOR_MEMORY = "512m"
WORKER_MEMORY = "768m"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(check: Any, what: str, processes: list[subprocess.Popen[bytes]], logs: Path, timeout: float) -> Any:
    """Polls `check()` until it returns something true; fails with the logs if a process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{what}: a process exited with {process.returncode}\n{_tail(logs)}")
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not ready within {timeout:.0f} s\n{_tail(logs)}")


def _tail(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(logs.glob("*.log")))


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


class _Processes:
    def __init__(self, prefix: str) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workspace = Path(tempfile.mkdtemp(prefix=prefix))
        self.logs = self.workspace / "logs"
        self.logs.mkdir()

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SPARK_HOME": str(SPARK_HOME),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(self.logs),
            "SPARK_PID_DIR": str(self.workspace),
            "PYSPARK_PYTHON": sys.executable,
        }

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            self.processes.append(
                # A session of its own: stopping it stops the JVM that a launcher script started as its child.
                subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env or self.env(),
                    cwd=self.workspace,
                    start_new_session=True,
                )
            )

    def stop(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.workspace, ignore_errors=True)


class StandaloneCluster(_Processes):
    """`spark-class ...Master` and `workers` x `spark-class ...Worker --cores 1`, on free loopback ports."""

    def __init__(self, workers: int = 2, cores: int = 1) -> None:
        super().__init__("artistid-spark-cluster-")
        self.workers, self.cores = workers, cores
        self.port, self.web_port = free_port(), free_port()
        self.event_log = self.workspace / "events"
        self.conf_dir = self.workspace / "conf"

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def state(self) -> dict[str, Any]:
        """The master's JSON view: workers (alive, cores used), running and completed applications."""
        return dict(_get_json(f"http://127.0.0.1:{self.web_port}/json/"))

    def start(self, timeout: float = 120.0) -> StandaloneCluster:
        spark_class = str(SPARK_HOME / "bin" / "spark-class")
        self.event_log.mkdir()
        self.conf_dir.mkdir()
        # What every driver started with SPARK_CONF_DIR=conf_dir uses: small executors, and an event log that
        # records which executor ran each task (how the tests see that both workers worked).
        (self.conf_dir / "spark-defaults.conf").write_text(
            f"spark.executor.memory {EXECUTOR_MEMORY}\n"
            f"spark.driver.memory 1g\n"
            f"spark.eventLog.enabled true\n"
            f"spark.eventLog.dir {self.event_log.as_uri()}\n"
            "spark.eventLog.compress false\n"
            # Tasks start once both executors are up, so neither worker is left idle by a quick first stage.
            f"spark.cores.max {self.workers * self.cores}\n"
            "spark.scheduler.minRegisteredResourcesRatio 1.0\n"
            "spark.scheduler.maxRegisteredResourcesWaitingTime 120s\n"
            "spark.ui.enabled false\n"
            "spark.ui.showConsoleProgress false\n"
        )
        self.spawn(
            "master",
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(self.port), "--webui-port", str(self.web_port)],
        )  # fmt: skip
        _wait_for(lambda: self.state().get("status") == "ALIVE", "Spark master", self.processes, self.logs, timeout)
        for n in range(self.workers):
            work = self.workspace / f"worker-{n}"
            work.mkdir()
            self.spawn(
                f"worker-{n}",
                [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                 "--cores", str(self.cores), "--memory", WORKER_MEMORY, "--work-dir", str(work),
                 "--webui-port", str(free_port()), self.url],
            )  # fmt: skip
        _wait_for(
            lambda: len([w for w in self.state()["workers"] if w["state"] == "ALIVE"]) == self.workers,
            "Spark workers",
            self.processes,
            self.logs,
            timeout,
        )
        return self

    def client_env(self) -> dict[str, str]:
        """The environment for a driver on this cluster (an `artistid ... --master` subprocess)."""
        return {**self.env(), "SPARK_CONF_DIR": str(self.conf_dir)}

    def task_executors(self) -> dict[str, dict[str, int]]:
        """Per finished application (by name of its event log): tasks run by each executor id, from the event log."""
        runs: dict[str, dict[str, int]] = {}
        for log in sorted(self.event_log.iterdir()):
            counts: dict[str, int] = {}
            workers: dict[str, str] = {}
            # Spark 4 writes a folder per application (rolling event log: events_1_..., events_2_...).
            files = sorted(log.glob("events_*")) if log.is_dir() else [log]
            for line in (line for file in files for line in file.read_text().splitlines()):
                event = json.loads(line)
                if event["Event"] == "SparkListenerTaskEnd":
                    executor = event["Task Info"]["Executor ID"]
                    counts[executor] = counts.get(executor, 0) + 1
                elif event["Event"] == "SparkListenerExecutorAdded":
                    # The executor's log address names the worker that launched it (its web UI port).
                    urls = event["Executor Info"].get("Log Urls", {})
                    workers[event["Executor ID"]] = next(iter(urls.values()), "").split("/logPage")[0]
            runs[log.name] = {f"{workers.get(e, '?')} executor {e}": n for e, n in counts.items()}
        return runs

    def __enter__(self) -> StandaloneCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


class ConnectServer(_Processes):
    """The Spark Connect server of the pyspark distribution (`sbin/start-connect-server.sh --wait`)."""

    def __init__(self, master: str = "local[2]") -> None:
        super().__init__("artistid-spark-connect-")
        self.master = master
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ConnectServer:
        self.spawn(
            "connect",
            [str(SPARK_HOME / "sbin" / "start-connect-server.sh"), "--wait", "--master", self.master,
             "--conf", f"spark.connect.grpc.binding.port={self.port}",
             "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
             "--conf", f"spark.executor.memory={EXECUTOR_MEMORY}", "--conf", "spark.ui.enabled=false",
             "--driver-memory", "1g"],
        )  # fmt: skip

        def listening() -> bool:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True

        _wait_for(listening, "Spark Connect server", self.processes, self.logs, timeout)
        return self

    def __enter__(self) -> ConnectServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
