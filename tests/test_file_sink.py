"""FileSink: H.264 frames read back with PyAV, constant-fps pts, crash safety, segments, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import av
import numpy as np
import pytest

from continuityseq_stream.chunk import FrameMeta
from continuityseq_stream.errors import ConfigError, SinkError
from continuityseq_stream.sinks import sink_from_uri
from continuityseq_stream.sinks.base import StreamInfo
from continuityseq_stream.sinks.file import FileSink, from_uri


def _frame(i: int, w: int = 64, h: int = 48) -> np.ndarray:
    f = np.zeros((h, w, 3), np.uint8)
    f[..., 0] = (i * 20) % 256
    f[..., 1] = 128
    f[: h // 2, : w // 2, 2] = 255
    return f


def _read(path):
    with av.open(str(path)) as c:
        frames = [(f.pts, f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        codec = c.streams.video[0].codec_context.name
    return frames, codec


def _write(sink, n, fps=8.0, w=64, h=48):
    with sink:
        sink.open(StreamInfo(w, h, fps))
        for i in range(n):
            sink.write(_frame(i, w, h), FrameMeta(i, i // 4, i / fps, "p"))


@pytest.mark.parametrize("name", ["out.mp4", "out.mkv"])
def test_frames_round_trip(tmp_path, name):
    path = tmp_path / name
    _write(FileSink(path), 12)
    frames, codec = _read(path)
    assert codec == "h264"
    assert len(frames) == 12
    times = [t for _, t, _ in frames]
    assert times == pytest.approx([i / 8 for i in range(12)], abs=1e-3)
    # colour survives the yuv420p round trip roughly
    assert np.abs(frames[5][2].astype(int) - _frame(5).astype(int)).mean() < 6


def test_uri_and_registry(tmp_path):
    s = sink_from_uri(f"file:{tmp_path}/a.mp4?crf=23&preset=ultrafast&keyint=4")
    assert isinstance(s, FileSink) and s.crf == 23 and s.preset == "ultrafast" and s.keyint == 4
    assert s.policy == "block"
    assert isinstance(sink_from_uri(str(tmp_path / "b.mkv")), FileSink)


@pytest.mark.parametrize(
    "uri, error",
    [("file:/nonexistent_dir_xyz/out.mp4", SinkError),  # a failing target: that sink is left out
     ("file:{tmp}/a.mp4?bogus=1", ConfigError),  # bad input: the run does not start
     ("file:{tmp}/a.mp4?crf=x", ConfigError), ("file:{tmp}/a.mp4?crf=99", ConfigError),
     ("file:{tmp}/a.mp4?segment=10", ConfigError), ("file:", ConfigError)],
)
def test_bad_uris_raise_one_line(tmp_path, uri, error):
    with pytest.raises(error) as e:
        from_uri(uri.format(tmp=tmp_path))
    assert "\n" not in str(e.value)


def test_unwritable_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("directory permissions not enforced for this user")
        with pytest.raises(SinkError, match="not writable"):
            FileSink(ro / "out.mp4")
    finally:
        ro.chmod(0o700)


def test_segments(tmp_path):
    sink = FileSink(tmp_path / "seg_%03d.mp4", segment_seconds=1.0)
    _write(sink, 20, fps=8.0)
    assert [os.path.basename(p) for p in sink.paths] == ["seg_000.mp4", "seg_001.mp4", "seg_002.mp4"]
    counts = [len(_read(p)[0]) for p in sink.paths]
    assert counts == [8, 8, 4]
    # each segment starts at time 0
    assert _read(sink.paths[1])[0][0][1] == pytest.approx(0.0)


@pytest.mark.slow
def test_survives_kill_9(tmp_path):
    """A writer killed with SIGKILL leaves a file that plays up to its last flushed fragment."""
    path = tmp_path / "crash.mp4"
    script = textwrap.dedent(
        f"""
        import sys, time, numpy as np
        from continuityseq_stream.sinks.file import FileSink
        from continuityseq_stream.sinks.base import StreamInfo
        from continuityseq_stream.chunk import FrameMeta
        s = FileSink({str(path)!r}, keyint=4, preset="ultrafast")
        s.open(StreamInfo(64, 48, 8.0))
        for i in range(10**6):
            s.write(np.full((48, 64, 3), i % 256, np.uint8), FrameMeta(i, 0, i / 8, "p"))
            if i == 40:
                print("ready", flush=True)
            if i >= 40:
                time.sleep(0.01)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    frames, codec = _read(path)
    assert codec == "h264"
    assert len(frames) >= 36  # everything up to the last completed fragment (keyint 4)
