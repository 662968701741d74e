"""Every bench script runs in its tiny `--quick` mode and prints its figure line.

The model-free and in-process ones are quick; the ones that start the real CLI (time to first
frame, streaming overhead, memory, threads under load) take 10-60 s each on 2 cores and are marked slow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(name: str, *args: str, timeout: float = 180) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", f"bench.bench_{name}", "--quick", *args],  # as the docs say
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_bench_transport_quick():
    out = run_bench("transport")
    assert out.startswith("transport fps")
    row = [c.split() for c in out.strip().splitlines()[2].split("|")]
    assert row[0] == ["576x320"]
    assert all(float(v) > 0 for v in row[1][:2] + row[2][:2] + row[3])  # ring and Queue, both ways; ring copy
    assert "CPU/frame" in out


@pytest.mark.slow
def test_bench_model_quick():
    out = run_bench("model")
    assert "tiny 64x64x8" in out and "forward" in out and "max|diff| 0.0e+00" in out


@pytest.mark.slow
def test_bench_overlap_quick():
    out = run_bench("overlap")
    assert out.startswith("overlap (1 thread(s))") and "identical" in out


@pytest.mark.slow
def test_bench_ttff_quick():
    out = run_bench("ttff")
    assert out.startswith("ttff: --times 1 ")
    assert "\nstart-up: CLI --times 1 first frame " in out and "CLI / bare whole " in out


@pytest.mark.slow
def test_bench_overhead_quick():
    assert run_bench("overhead").startswith("overhead: chunks 1..2 bare ")


@pytest.mark.slow
def test_bench_memory_quick():
    out = run_bench("memory")
    assert out.startswith("memory: RSS main ") and "exit status 0" in out


@pytest.mark.slow
def test_bench_suite_load_quick():
    before = _busy_loops()
    out = run_bench("suite_load")
    lines = out.strip().splitlines()
    assert lines[0] == f"suite beside 2 busy loop(s), 1 run(s), {os.cpu_count()} cpus"
    assert lines[1].startswith("run 1: passed in ") and " passed in " in lines[1].split("): ", 1)[1]
    assert _busy_loops() - before == set(), "the busy loops outlived the bench"


@pytest.mark.slow
def test_bench_threads_quick():
    before = _busy_loops()  # someone else's (e.g. a suite run under load) may be running: not ours
    out = run_bench("threads", timeout=600)
    lines = out.strip().splitlines()
    assert lines[0].startswith("threads: --model demo -s 4 --times 1, whole CLI run, idle vs 2 busy loops")
    assert len(lines) == 2, out  # --quick: one setting, one pair
    figures = re.fullmatch(r"--threads default \(producer: (\d+) thread\(s\)\): idle ([\d.]+)s \(load [\d.]+/\d+ cpus\), "
                           r"loaded ([\d.]+)s \(load [\d.]+/\d+ cpus\): x([\d.]+)", lines[1])
    assert figures, lines[1]
    threads, idle, loaded, ratio = int(figures[1]), *map(float, figures.group(2, 3, 4))
    assert threads >= 1 and 0 < idle < 600 and 0 < loaded < 600
    # the printed ratio is of the times printed to 0.1 s
    assert (loaded - 0.05) / (idle + 0.05) - 0.005 <= ratio <= (loaded + 0.05) / (idle - 0.05) + 0.005
    assert _busy_loops() - before == set(), "the busy loops outlived the bench"


def _busy_loops() -> set:
    """PIDs of the busy loops running now (`python -c 'while 1: pass'`)."""
    return set(subprocess.run(["pgrep", "-f", "while 1: pass"], capture_output=True, text=True).stdout.split())


@pytest.mark.slow
def test_bench_capacity_quick():
    out = run_bench("capacity", timeout=600)
    lines = out.strip().splitlines()
    measured = next(line for line in lines if line.startswith("  1 stream(s): "))
    rate = float(measured.split(": ", 1)[1].split()[0])
    assert rate > 0, measured  # one demo stream made frames through the real cluster
    counted = next(line for line in lines if line.startswith("  counted: UNet "))
    unet_tflop = float(counted.split("UNet ")[1].split()[0])
    assert 15 < unet_tflop < 30, counted  # 2.4 B parameters over 8 frames of 72x40 latents, twice (CFG)
    assert any(line.startswith("  25 steps: ") and "frames/s per GPU" in line for line in lines)
