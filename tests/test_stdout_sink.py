"""StdoutSink: exact raw rgb24 bytes, stray prints go to stderr, EPIPE ends the sink with SinkEnded."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from continuityseq_stream.chunk import FrameMeta
from continuityseq_stream.errors import SinkEnded, SinkError
from continuityseq_stream.sinks import sink_from_uri
from continuityseq_stream.sinks.base import StreamInfo
from continuityseq_stream.sinks.stdout import StdoutSink


def frame(i, w=16, h=8):
    return (np.arange(h * w * 3, dtype=np.uint32).reshape(h, w, 3) * (i + 1) % 256).astype(np.uint8)


def test_uris():
    assert isinstance(sink_from_uri("-"), StdoutSink)
    assert isinstance(sink_from_uri("stdout"), StdoutSink)
    assert sink_from_uri("-").policy == "block"


def test_raw_frames_to_an_explicit_fd():
    r, w = os.pipe()
    try:
        sink = StdoutSink(fd=w)
        with sink:
            sink.open(StreamInfo(16, 8, 8.0))
            for i in range(3):
                sink.write(frame(i), FrameMeta(i, 0, i / 8, "p"))
        os.close(w)
        data = b""
        while chunk := os.read(r, 1 << 16):
            data += chunk
    finally:
        os.close(r)
    assert data == b"".join(frame(i).tobytes() for i in range(3))
    assert sink.frames_written == 3


CHILD = """
import sys
import numpy as np
from continuityseq_stream.chunk import FrameMeta
from continuityseq_stream.sinks.base import StreamInfo
from continuityseq_stream.sinks.stdout import StdoutSink
sink = StdoutSink()
sink.prepare()
print("a stray print")                     # must not reach stdout
import os; os.write(1, b"a stray C-level write\\n")
with sink:
    sink.open(StreamInfo(4, 2, 8.0))
    sink.write(np.full((2, 4, 3), 7, np.uint8), FrameMeta(0, 0, 0.0, "p"))
print("after close", flush=True)           # stdout is back after close
"""


@pytest.mark.slow
def test_prepare_moves_stray_output_to_stderr_and_close_restores_stdout():
    p = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == bytes([7]) * 24 + b"after close\n"
    assert b"a stray print" in p.stderr and b"a stray C-level write" in p.stderr


def test_closed_pipe_raises_sink_ended_once():
    r, w = os.pipe()
    os.close(r)
    sink = StdoutSink(fd=w)
    try:
        sink.open(StreamInfo(16, 8, 8.0))
        with pytest.raises(SinkEnded, match="EPIPE"):
            sink.write(frame(0), FrameMeta(0, 0, 0.0, "p"))
        assert issubclass(SinkEnded, SinkError)
    finally:
        sink.close()
        os.close(w)
