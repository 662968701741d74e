"""The CLI through the streaming runtime with the real tiny demo model: several sinks, --forever +
SIGINT, --duration. Slow-ish (each run loads torch and builds the demo model in the producer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import av
import numpy as np
import pytest

W, H, F = 64, 48, 4
BASE = ["--model", "demo-random", "--model-2d", "demo", "--prompt", "a test", "-T", str(F), "-WI", str(W), "-HI", str(H),
        "-s", "2", "-r", "7", "-f", "8"]


def start_cli(args, tmp_path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path.parent / "xdg-cache-runtime"))
    return subprocess.Popen([sys.executable, "-m", "continuityseq_stream.cli", *BASE, *args, "-o", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)


def read_raw(proc, n, timeout=120.0):
    size, out = W * H * 3, []
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        while len(out) < n:
            data = proc.stdout.read(size)
            if len(data) < size:
                break
            out.append(np.frombuffer(data, np.uint8).reshape(H, W, 3))
    finally:
        watchdog.cancel()
    return out


def decode(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.slow
def test_cli_demo_model_to_stdout_and_file(tmp_path):
    path = tmp_path / "v.mp4"
    proc = start_cli(["--times", "3", "--sink", "-", "--sink", f"file:{path}"], tmp_path)
    try:
        raw = read_raw(proc, 10**6)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    err = err.decode()
    assert proc.returncode == 0, err
    assert len(raw) == 3 * F  # stdout carried only the frames (no path, no logs)
    assert "random weights" in err.lower()  # the producer's log reached stderr
    video = decode(path)
    assert len(video) == 3 * F
    # the same frames, through lossy H.264 (random-weight output is noisy): each decoded frame is
    # closest to the raw frame with its own index
    v, r = np.stack(video).astype(int), np.stack(raw).astype(int)
    dist = np.abs(v[:, None] - r[None, :]).mean(axis=(2, 3, 4))
    assert list(dist.argmin(axis=1)) == list(range(len(raw))), dist


@pytest.mark.slow
def test_cli_forever_stops_on_sigint_with_status_0(tmp_path):
    path = tmp_path / "v.mp4"
    proc = start_cli(["--forever", "--sink", "-", "--sink", f"file:{path}"], tmp_path)
    try:
        first = read_raw(proc, 3 * F)
        assert len(first) == 3 * F
        proc.send_signal(signal.SIGINT)
        rest = read_raw(proc, 10**6)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    err = err.decode()
    assert proc.returncode == 0, err
    assert len(decode(path)) == len(first) + len(rest)


@pytest.mark.slow
def test_cli_bad_input_is_still_one_line_and_status_2(tmp_path):
    proc = start_cli(["--times", "1", "--init-image", str(tmp_path / "missing.png")], tmp_path)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, err
    assert not list(tmp_path.glob("*.mp4"))
