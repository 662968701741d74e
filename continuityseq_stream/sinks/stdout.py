"""Stdout sink: raw rgb24 frames on standard output, for pipes into other tools.

    continuityseq-stream ... --sink - | ffplay -f rawvideo -pixel_format rgb24 -video_size WxH -framerate FPS -i -

Every frame is exactly W*H*3 bytes, rows top to bottom, no header. Lossless (`policy = "block"`): a
slow reader slows the producer through the ring, never memory.

Stdout belongs to the frames alone: `prepare()` (called by the runtime before the producer process
starts, or by `open` otherwise) keeps a private copy of file descriptor 1 for the frames and points
fd 1 at stderr, so stray prints, from Python or C libraries, in this process or in the producer it
spawns, land on stderr and can never corrupt the video. `close` puts stdout back.

When the reader goes away (EPIPE: ffplay closed, `| head -c`), the sink ends cleanly: it raises
`SinkEnded` with one line, and the run goes on for the other sinks (or ends with status 0 if it was
the only one).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np

from ..chunk import FrameMeta
from ..errors import SinkEnded, SinkError
from .base import Sink, StreamInfo

__all__ = ["StdoutSink", "from_uri"]


class StdoutSink(Sink):
    """Raw rgb24 frames to standard output (see the module docstring). fd: where to write instead of
    fd 1 (tests, or another pipe); with an explicit fd nothing is redirected."""

    policy = "block"

    def __init__(self, fd: Optional[int] = None) -> None:
        super().__init__("stdout")
        self._explicit_fd = fd
        self._fd: Optional[int] = None  # where the frames go
        self._saved_stdout: Optional[int] = None  # fd 1 as it was, restored by close
        self._broken = False

    def prepare(self) -> None:
        """Take stdout for the frames and send everything else written to fd 1 to stderr."""
        if self._fd is not None:
            return
        if self._explicit_fd is not None:
            self._fd = self._explicit_fd
            return
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        try:
            self._fd = os.dup(1)
            self._saved_stdout = os.dup(1)
            os.dup2(2, 1)
        except OSError as e:
            raise SinkError(f"stdout sink: standard output is not usable ({e})") from None

    def _open(self, info: StreamInfo) -> None:
        self.prepare()

    def _write(self, frame: np.ndarray, meta: FrameMeta) -> None:
        if self._broken:
            raise SinkEnded("stdout: the reader closed the pipe")
        view = memoryview(np.ascontiguousarray(frame)).cast("B")
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except BrokenPipeError:
            self._broken = True
            raise SinkEnded("stdout: the reader closed the pipe (EPIPE); frames to stdout end here") from None
        except OSError as e:
            raise SinkError(f"stdout sink: write failed ({e})") from None

    def _close(self) -> None:
        fd, saved = self._fd, self._saved_stdout
        self._fd = self._saved_stdout = None
        if self._explicit_fd is not None or fd is None:
            return
        os.close(fd)
        if saved is not None:
            if not self._broken:
                os.dup2(saved, 1)  # a broken pipe stays pointed at stderr: later prints cannot fail
            os.close(saved)


def from_uri(uri: str) -> StdoutSink:
    """`-` or `stdout` -> StdoutSink."""
    if uri.strip() not in ("-", "stdout"):
        raise SinkError(f"stdout sink: got {uri!r}; use - or stdout")
    return StdoutSink()
