"""Bounded memory: a `--times 0` run over hundreds of chunks keeps a flat RSS in both processes."""

from __future__ import annotations

import signal

import psutil
import pytest

from test_runtime import F, end_frames, free_port, read_frames, start_run

WARMUP_CHUNKS, TOTAL_CHUNKS = 60, 300
MAX_GROWTH = 10 * 2**20


def rss(proc: psutil.Process) -> tuple[int, int]:
    """(runtime process, producer process) resident set sizes."""
    children = [c for c in proc.children() if "resource_tracker" not in " ".join(c.cmdline())]
    assert len(children) == 1, children
    return proc.memory_info().rss, children[0].memory_info().rss


@pytest.mark.slow
def test_forever_run_has_flat_rss_in_both_processes(tmp_path):
    # lossless stdout and file, lossy PUB without subscribers (the `latest` path)
    sinks = ["-", f"file:{tmp_path / 'out.mp4'}", f"zmq+pub://127.0.0.1:{free_port()}"]
    proc = start_run(sinks, cfg={"times": 0}, opts={"ring_frames": 32})
    try:
        ps = psutil.Process(proc.pid)
        assert len(read_frames(proc, WARMUP_CHUNKS * F, timeout=120)) == WARMUP_CHUNKS * F
        before = rss(ps)
        assert len(read_frames(proc, (TOTAL_CHUNKS - WARMUP_CHUNKS) * F, timeout=240)) == (TOTAL_CHUNKS - WARMUP_CHUNKS) * F
        after = rss(ps)
        proc.send_signal(signal.SIGINT)
        read_frames(proc, 10**6, timeout=60)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert end_frames(err.decode()) >= TOTAL_CHUNKS * F
    growth = [a - b for a, b in zip(after, before)]
    print(f"RSS runtime {before[0] >> 20} -> {after[0] >> 20} MiB, producer {before[1] >> 20} -> {after[1] >> 20} MiB")
    assert growth[0] < MAX_GROWTH and growth[1] < MAX_GROWTH, (before, after)


@pytest.mark.slow
def test_cli_forever_on_the_demo_model_has_flat_rss_in_both_processes(tmp_path):
    """The same over 200 chunks of the real (tiny, random-weight) demo model through the CLI."""
    import os
    import subprocess
    import sys
    import threading

    import numpy as np

    w = h = 32
    frames_per_chunk, warmup, measured = 2, 30, 200
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               XDG_CACHE_HOME=str(tmp_path.parent / "xdg-cache-memory"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "continuityseq_stream.cli", "--model", "demo-random", "-p", "memory", "-WI", str(w),
         "-HI", str(h), "-T", str(frames_per_chunk), "-s", "1", "-r", "0", "--forever",
         "--sink", "-", "--sink", f"file:{tmp_path / 'out.mp4'}", "-o", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)

    def read(n: int) -> int:
        got = 0
        while got < n:
            data = proc.stdout.read(w * h * 3)
            if len(data) < w * h * 3:
                break
            np.frombuffer(data, np.uint8)
            got += 1
        return got

    watchdog = threading.Timer(300, proc.kill)  # a hung run fails the test instead of hanging it
    watchdog.start()
    try:
        ps = psutil.Process(proc.pid)
        assert read(warmup * frames_per_chunk) == warmup * frames_per_chunk
        before = rss(ps)
        assert read(measured * frames_per_chunk) == measured * frames_per_chunk
        after = rss(ps)
        proc.send_signal(signal.SIGINT)
        read(10**6)
        _, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 0, err.decode()
    growth = [a - b for a, b in zip(after, before)]
    print(f"demo model RSS runtime {before[0] >> 20} -> {after[0] >> 20} MiB, "
          f"producer {before[1] >> 20} -> {after[1] >> 20} MiB")
    assert growth[0] < MAX_GROWTH and growth[1] < MAX_GROWTH, (before, after)
