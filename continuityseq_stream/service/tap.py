"""The service's own sink: feeds the frame hub, follows chunks, measures seams.

One `TapSink` per `serve` run, a `block` reader of the runtime's frame ring that never waits for
anything but the stream clock (see hub.py): every frame is copied into the `FrameHub` that the
viewers read. On the way it notices chunk boundaries and publishes per-chunk events on the
`EventBus`:

    {"event": "chunk", "chunk": n, "prompt": ..., "first_frame": i, "interval": s, "time": t}
        when chunk n's first frame arrives; `interval`: seconds since chunk n-1's first frame arrived
        (the time one chunk takes at the current pace; None for the first chunk).
    {"event": "seam", "chunk": n, "seam_score": r, "boundary_diff": b, "inside_diff": d}
        when chunk n is complete and chunk n-1 was seen whole: `metrics.frame_difference_stats` over
        both chunks, r = mean |frame difference| across the boundary / inside them (about 1 = no
        visible seam). Computed on every second pixel in each direction (a quarter of the work; the
        ratio of means barely moves).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import numpy as np

from ..chunk import FrameMeta
from ..demo.metrics import frame_difference_stats
from ..sinks.base import Sink, StreamInfo
from .events import EventBus
from .hub import FrameHub

__all__ = ["TapSink"]


class TapSink(Sink):
    """Copies frames into `hub`, publishes chunk and seam events on `bus` (see the module docstring).

    chunk_frames: frames per chunk (config.num_frames): a chunk with this many frames is complete.
    """

    policy = "block"

    def __init__(self, hub: FrameHub, bus: EventBus, chunk_frames: int, clock: Callable[[], float] = time.time) -> None:
        super().__init__("service")
        self.hub, self.bus, self.chunk_frames, self._clock = hub, bus, int(chunk_frames), clock
        self._stop = threading.Event()
        self._chunk: Optional[int] = None
        self._frames: list[np.ndarray] = []   # the chunk arriving now (the hub's copies, not new ones)
        self._previous: Optional[list[np.ndarray]] = None  # the last complete chunk
        self._previous_index: Optional[int] = None
        self._chunk_started: Optional[float] = None
        self.chunks = 0
        self.last_chunk_time: Optional[float] = None  # wall-clock time the last chunk began to arrive
        self.last_interval: Optional[float] = None
        self.last_seam: Optional[dict] = None

    def _open(self, info: StreamInfo) -> None:
        pass

    def _write(self, frame: np.ndarray, meta: FrameMeta) -> None:
        copy = np.array(frame, copy=True)  # the ring's slot is reused after this call
        if meta.chunk != self._chunk:
            self._start_chunk(meta)
        self._frames.append(copy)
        if len(self._frames) == self.chunk_frames:
            self._finish_chunk()
        self.hub.push(copy, meta, self._stop)

    def _start_chunk(self, meta: FrameMeta) -> None:
        if self._frames and len(self._frames) != self.chunk_frames:  # incomplete (skipped frames): no seam
            self._previous, self._previous_index = None, None
        now = self._clock()
        interval = None if self._chunk_started is None else now - self._chunk_started
        self._chunk, self._chunk_started, self._frames = meta.chunk, now, []
        self.chunks += 1
        self.last_chunk_time, self.last_interval = now, interval
        self.bus.publish({"event": "chunk", "chunk": meta.chunk, "prompt": meta.prompt, "first_frame": meta.index,
                          "interval": None if interval is None else round(interval, 4), "time": round(now, 3)})

    def _finish_chunk(self) -> None:
        if self._previous is not None and self._previous_index == self._chunk - 1:
            self._publish_seam(self._previous + self._frames)
        self._previous, self._previous_index = self._frames, self._chunk

    def _publish_seam(self, frames: list[np.ndarray]) -> None:
        stats = frame_difference_stats(np.stack([f[::2, ::2] for f in frames]), self.chunk_frames)
        ratio = stats["frame_diff_ratio"]
        self.last_seam = {"event": "seam", "chunk": self._chunk,
                          "seam_score": None if ratio != ratio else round(ratio, 4),
                          "boundary_diff": round(stats["boundary_frame_diff"], 4),
                          "inside_diff": round(stats["inside_frame_diff"], 4)}
        self.bus.publish(dict(self.last_seam))

    def _close(self) -> None:
        self._stop.set()
        self.hub.close()

    def stats(self) -> dict:
        """For the status line: seconds the tap waited for the stream clock."""
        return {"paced_s": round(self.hub.waited, 1)}
