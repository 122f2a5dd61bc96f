"""Timing a command as a user meets it: a whole process, started as an installed package starts."""

from __future__ import annotations

import compileall
import statistics
import subprocess
import time
from pathlib import Path

import artistid


def compile_package() -> None:
    """Writes artistid's bytecode, as pip does when it installs a wheel. An editable install leaves that to the first
    run, which never writes it where PYTHONDONTWRITEBYTECODE is set: every process would compile the sources again."""
    compileall.compile_dir(Path(artistid.__file__).parent, quiet=1)


def median_seconds(command: list[str], runs: int = 5) -> float:
    """A warm run takes under a second, so the machine's moment shows in it: the median of `runs`, after one run
    that is not counted (the first process after other work starts slower, as hyperfine's --warmup allows for)."""
    subprocess.run(command, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)
