"""The ffmpeg/RTMP sink against a real nginx-rtmp server, read back with PyAV in a subprocess.

nginx never ends a stream for its readers, so every read has a timeout and a deadline, and the reader
runs under `timeout -s KILL`.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from continuityseq_stream.chunk import FrameMeta
from continuityseq_stream.sinks import sink_from_uri
from continuityseq_stream.sinks.base import StreamInfo
from servers import NginxRtmp, RtmpReader, assert_no_children

pytestmark = pytest.mark.slow

W, H, FPS = 64, 48, 10.0
COLOUR = (200, 60, 30)


def _solid(colour=COLOUR) -> np.ndarray:
    f = np.empty((H, W, 3), np.uint8)
    f[...] = colour
    return f


@pytest.fixture
def nginx(tmp_path):
    try:
        server = NginxRtmp(tmp_path / "nginx")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with server:
        yield server
    assert_no_children("ffmpeg", "nginx")


def test_stream_reads_back_with_size_rate_count_and_colour(nginx, tmp_path):
    n = 60
    reader = RtmpReader(nginx.url, frames=n, deadline=15)
    sink = sink_from_uri(nginx.url + f"?log={tmp_path}/ffmpeg.log")
    assert sink.policy == "block"
    with sink:
        sink.open(StreamInfo(W, H, FPS))
        start = time.monotonic()
        for i in range(n):
            sink.write(_solid(), FrameMeta(i, i // 8, i / FPS, "p"))
    elapsed = time.monotonic() - start  # close() drains at the output rate
    got = reader.result()
    assert got["frames"] >= n, got["errors"]
    assert (got["width"], got["height"]) == (W, H)
    assert got["rate"] == pytest.approx(FPS)
    for mean in got["means"]:
        assert np.allclose(mean, COLOUR, atol=6), mean  # x264 yuv420p round trip of a solid colour
    stats = sink.stats()
    assert stats["sent"] == n and stats["dropped"] == 0 and stats["reconnects"] == 0
    # paced in real time by the sink's clock (frames written much faster than 10 fps), and a
    # constant frame rate in the stream
    assert n / elapsed == pytest.approx(FPS, rel=0.15), elapsed
    _assert_constant_rate(got["pts"])
    print(f"pacing: {n} frames in {elapsed:.2f} s at {FPS:g} fps")
    assert "libx264" in (tmp_path / "ffmpeg.log").read_text()


def _assert_constant_rate(pts: list) -> None:
    """Constant frame rate in the stream itself: consecutive timestamps 1/fps apart. (Arrival times
    at the reader are not used: on a busy 2-core machine the reader process falls behind and then
    decodes its backlog in a burst.)"""
    assert len(pts) > 10, pts
    steps = np.diff(np.asarray(pts))
    assert np.allclose(steps, 1 / FPS, atol=0.002), steps


def test_slow_writer_gets_repeated_frames_at_constant_rate(nginx):
    reader = RtmpReader(nginx.url, frames=10_000, deadline=12, read_timeout=2)
    sink = sink_from_uri(nginx.url)
    slowest = 0.0
    with sink:
        sink.open(StreamInfo(W, H, FPS))
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < 4.0:  # 4 frames per second for a 10 fps stream
            t = time.monotonic()
            sink.write(_solid(), FrameMeta(i, 0, i / FPS, "p"))
            slowest = max(slowest, time.monotonic() - t)
            i += 1
            time.sleep(0.25)
        stats = sink.stats()
    got = reader.result()
    assert stats["repeated"] >= 15, stats  # about 6 of every 10 ticks had no new frame
    assert 35 <= stats["sent"] <= 45 and slowest < 0.5  # 10 fps for 4 s
    assert got["frames"] >= 35, got  # though only 16 frames were written
    _assert_constant_rate(got["pts"])


def test_server_restart_mid_run_resumes_and_never_blocks_writes(nginx):
    reader = RtmpReader(nginx.url, frames=10_000, deadline=12, reconnect=True, read_timeout=2)
    sink = sink_from_uri(nginx.url)
    timing = {"slowest": 0.0, "written": 0}
    errors = []

    def generate():  # the generation side: writes for 9 s
        start = time.monotonic()
        try:
            while time.monotonic() - start < 9.0:
                t = time.monotonic()
                sink.write(_solid(), FrameMeta(timing["written"], 0, timing["written"] / FPS, "p"))
                timing["slowest"] = max(timing["slowest"], time.monotonic() - t)
                timing["written"] += 1
        except Exception as exc:  # the test fails below; the sink still closes
            errors.append(exc)

    with sink:
        sink.open(StreamInfo(W, H, FPS))
        writer = threading.Thread(target=generate)
        writer.start()
        time.sleep(3.0)
        nginx.restart()  # SIGKILL, then a fresh nginx on the same port (from this thread: the server
        writer.join(20)  # dies with the thread that started it)
        stats = sink.stats()
    got = reader.result()
    assert not errors and not writer.is_alive()
    assert timing["slowest"] < 1.0, timing  # writes kept going during the outage (back-pressure only)
    assert timing["written"] >= 0.8 * 9 * FPS  # generation went on at about real time
    assert stats["reconnects"] >= 1, stats
    assert len(got["segments"]) >= 2, got  # the reader got frames before and after the restart
    assert got["segments"][-1] >= 10, got
    gap = max(b - a for a, b in zip(got["times"], got["times"][1:]))
    print(f"restart: longest gap at the reader {gap:.2f} s, slowest write {timing['slowest'] * 1000:.0f} ms, {stats}")


def test_close_drains_queue_and_leaves_no_ffmpeg(nginx):
    sink = sink_from_uri(nginx.url + "?preroll=1")
    with sink:
        sink.open(StreamInfo(W, H, FPS))
        for i in range(5):  # fewer than the pre-roll: nothing live yet
            sink.write(_solid(), FrameMeta(i, 0, i / FPS, "p"))
        time.sleep(0.3)
        assert sink.stats()["sent"] == 0 and sink.stats()["queued"] == 5
        start = time.monotonic()
    assert sink.stats()["sent"] == 5 and sink.stats()["queued"] == 0
    assert time.monotonic() - start < 6.0
    sink.close()  # idempotent


def test_pause_holds_the_last_frame(nginx):
    sink = sink_from_uri(nginx.url)
    with sink:
        sink.open(StreamInfo(W, H, FPS))
        for i in range(3):
            sink.write(_solid(), FrameMeta(i, 0, i / FPS, "p"))
        time.sleep(0.5)
        sink.pause()
        assert sink.paused
        blocked = threading.Event()
        done = threading.Event()

        def writer():
            for i in range(3, 12):  # more than the queue holds: write() must wait for resume()
                sink.write(_solid(), FrameMeta(i, 0, i / FPS, "p"))
            done.set()

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(1.0)
        blocked.set()
        held = sink.stats()["held"]
        assert held >= 7 and not done.is_set()
        sink.resume()
        assert done.wait(5)
        t.join(5)
    assert sink.stats()["sent"] >= 12 + held - 1
