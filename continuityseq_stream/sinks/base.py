"""The one interface every sink implements.

A sink is opened on the first frame (when the size is known), receives frames in order with the
metadata the producer assigned, and is closed exactly once. It is a context manager whose teardown
always runs, also after an error in `write`.

`policy` tells the ring buffer how this sink reads: "block" (lossless: the producer waits for it when
it is a full ring behind; files, ZeroMQ PUSH, stdout) or "latest" (a slow reader skips to the newest
frame and the skips are counted; preview, ZeroMQ PUB).

The runtime watches every sink (its `--sink-timeout` watchdog): a sink that spends that long in one
`open`/`write`/`close` call without a `heartbeat()` is stuck. Three optional hooks shape what happens:
`restart_target()` (a sink that can reconnect, like ffmpeg/RTMP, restarts its target and goes on),
`interrupt()` (make the stuck call return soon, from another thread) and `clocked` (a sink with its own
clock thread heartbeats on every tick, so its silence counts even between frames).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..chunk import FrameMeta

POLICIES = ("block", "latest")


@dataclass(frozen=True)
class StreamInfo:
    """What a sink needs to know before the first frame: frame size and output frame rate."""

    width: int
    height: int
    fps: float


class Sink(ABC):
    """Base class of all sinks. Subclasses implement `_open`, `_write` and `_close`."""

    #: how the ring buffer feeds this sink ("block" or "latest")
    policy: str = "block"
    #: True for a sink whose own clock thread calls `heartbeat()` on every tick (ffmpeg's pacer): the
    #: watchdog then treats a silence as stuck even while no frame is being written
    clocked: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.info: StreamInfo | None = None
        self.frames_written = 0
        self._closed = False
        #: set by a sink when its user asked to end the whole run (q/Esc or closing the preview
        #: window); the runtime watches it and stops gracefully.
        self.wants_stop = threading.Event()
        #: monotonic time of the last `heartbeat()` (0.0: none yet); read by the runtime's watchdog
        self.last_heartbeat = 0.0
        self._close_lock = threading.Lock()

    # -- public interface -----------------------------------------------------------------------
    def open(self, info: StreamInfo) -> None:
        self.info = info
        self._open(info)

    def write(self, frame: np.ndarray, meta: FrameMeta) -> None:
        """Write one uint8 RGB frame [H, W, 3]. The frame may be a read-only view of the runtime's
        shared-memory ring, valid during this call only: a sink copies what it keeps."""
        self._write(frame, meta)
        self.frames_written += 1

    def close(self) -> None:
        """Finish the output (flush, finalize, end-of-stream). Safe to call more than once, also from
        two threads at once (the second call returns at once)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    def heartbeat(self) -> None:
        """Tell the runtime's watchdog that this sink is making progress (any thread). A sink calls it
        during a long call that is not stuck, or on every tick of its own clock (`clocked`)."""
        self.last_heartbeat = time.monotonic()

    def restart_target(self) -> bool:
        """Called by the watchdog (another thread) when this sink made no progress for the sink
        timeout. A sink that can reconnect restarts its target (without blocking) and returns True:
        it gets another timeout to make progress. The default, False, has the sink detached."""
        return False

    def interrupt(self) -> None:
        """Called by the watchdog (another thread) when it detaches this sink: make a stuck
        `open`/`write` return soon (raising is fine) so that the sink's own thread can close it.
        Must not block. The default does nothing: the stuck thread is then left behind."""

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # -- for subclasses -------------------------------------------------------------------------
    @abstractmethod
    def _open(self, info: StreamInfo) -> None: ...

    @abstractmethod
    def _write(self, frame: np.ndarray, meta: FrameMeta) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...
