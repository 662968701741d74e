"""The real CLI (tiny demo model, producer process, ring buffer) into real network consumers:
an nginx-rtmp server read back by a PyAV client, and a ZeroMQ PULL subscriber in another process
(`continuityseq-stream subscribe`). Everything on 127.0.0.1, free ports, bounded timeouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

from servers import NginxRtmp, RtmpReader, assert_no_children, free_port

W, H, F, FPS = 64, 48, 4, 8
BASE = ["--model", "demo-random", "--model-2d", "demo", "--prompt", "a red circle", "-T", str(F), "-WI", str(W), "-HI", str(H),
        "-s", "2", "-r", "3", "-f", str(FPS)]


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path.parent / "xdg-cache-cli-sinks"))


def run_cli(args, tmp_path, timeout=240):
    return subprocess.run([sys.executable, "-m", "continuityseq_stream.cli", *BASE, *args, "-o", str(tmp_path)],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=timeout)


def count_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.slow
def test_cli_streams_to_nginx_rtmp_and_file(tmp_path):
    times = 3
    with NginxRtmp(tmp_path / "nginx") as server:
        # the reader joins before the publisher and must see the stream from its first keyframe: the
        # whole run (12 frames) is shorter than one GOP (16), so a reader that comes in later gets the
        # stream's metadata and not one picture. So it waits in one open for as long as the run may
        # take: one that gave up after 10 s and reconnected missed the first keyframe whenever the
        # publisher came in during the reconnect (twice in four suite runs beside two busy loops)
        wait = 300
        reader = RtmpReader(server.url, frames=times * F, deadline=wait, reconnect=True, open_timeout=wait,
                            read_timeout=5)
        video = tmp_path / "copy.mp4"
        proc = run_cli(["--times", str(times), "--sink", server.url, "--sink", f"file:{video}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        got = reader.result()
    assert_no_children("ffmpeg", "nginx")
    seen = {k: got[k] for k in ("segments", "errors", "rate", "first_frame_s")}
    assert (got["width"], got["height"]) == (W, H), json.dumps(seen)
    assert got["rate"] == pytest.approx(FPS, rel=0.01), got
    # paced at constant fps: every generated frame went out (plus repeats while generation lagged)
    assert got["frames"] >= times * F, got
    assert count_frames(video) == times * F


@pytest.mark.slow
def test_cli_push_to_subscriber_process_every_frame_in_order(tmp_path):
    times, port = 2, free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    sub = subprocess.Popen([sys.executable, "-m", "continuityseq_stream.cli", "subscribe", endpoint, "--pull",
                            "--timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_env(tmp_path))
    try:
        proc = run_cli(["--times", str(times), "--sink", f"zmq+push://127.0.0.1:{port}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        out, err = sub.communicate(timeout=60)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    headers = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [h["index"] for h in headers] == list(range(times * F))
    assert [h["chunk"] for h in headers] == [i // F for i in range(times * F)]
    assert all(h["shape"] == [H, W, 3] and h["format"] == "rgb24" and h["prompt"] == "a red circle" for h in headers)
    assert [h["pts"] for h in headers] == pytest.approx([i / FPS for i in range(times * F)])
    assert "end-of-stream" in err
