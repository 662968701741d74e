"""Helpers shared by the bench scripts: argument handling, medians, the machine load, busy loops beside
a run, a demo-model CLI command line.

Nothing here changes global state at import. The scripts run each measurement in fresh
subprocesses where the figure depends on process start-up or thread settings.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def make_parser(doc: str, *, quick: str | None = "a tiny run (smoke test)", threads: int | None = None,
                threads_help: str = "intra-op threads of the measured processes") -> argparse.ArgumentParser:
    """The argument parser every bench starts from: its module docstring's first line as the
    description, `--quick` (when `quick` is its help) and `--threads` (when `threads` is its default)."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    if threads is not None:
        p.add_argument("--threads", type=int, default=threads, help=threads_help)
    return p


def median(values) -> float:
    return float(statistics.median(values))


def load() -> str:
    """The 1-minute load average, to print beside every figure (the machine is shared)."""
    try:
        return f"load {os.getloadavg()[0]:.2f}/{os.cpu_count()} cpus"
    except OSError:
        return "load n/a"


#: what a busy loop runs (`pgrep -f` finds a leftover one by it)
BUSY_LOOP = "while 1: pass"


def start_busy_loops(count: int) -> list[subprocess.Popen]:
    """`count` CPU-burning processes, each in a session of its own like someone else's job: with the
    kernel's autogroup scheduling (on by default) loops in the bench's own session would only split
    the bench's share of the CPU instead of competing with it. They hold none of the bench's pipes:
    a caller reading the bench's output to its end does not wait for them."""
    return [subprocess.Popen([PYTHON, "-c", BUSY_LOOP], start_new_session=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]


def stop_busy_loops(loops: list[subprocess.Popen]) -> None:
    """Kill the loops `start_busy_loops` made (SIGKILL to each one's session) and reap them."""
    for proc in loops:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def bench_env(threads: int, cache: str | None = None) -> dict:
    """Environment for a measured subprocess: offline, `threads` intra-op threads (OpenMP/MKL), and
    optionally a private demo-model cache (`XDG_CACHE_HOME`)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    if cache:
        env["XDG_CACHE_HOME"] = cache
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_command(*, width: int, height: int, frames: int, steps: int, times: int, seed: int = 7,
                guidance: float = 7.5, extra=()) -> list[str]:
    """The real CLI (`python -m continuityseq_stream.cli`) on the tiny demo model."""
    return [PYTHON, "-m", "continuityseq_stream.cli", "--model", "demo-random", "--model-2d", "demo",
            "--prompt", "a red ball bouncing", "-T", str(frames), "-WI", str(width), "-HI", str(height),
            "-s", str(steps), "-g", str(guidance), "-r", str(seed), "-t", str(times), "-f", "16", *extra]


def warm_demo_cache(env: dict) -> None:
    """Build the demo model folders once, so no measured run pays for it."""
    code = ("from continuityseq_stream.demo import tiny; tiny.demo_model_path(); tiny.demo_2d_model_path()")
    subprocess.run([PYTHON, "-c", code], env=env, check=True, capture_output=True)
