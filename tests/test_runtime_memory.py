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
