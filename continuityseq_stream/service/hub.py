"""The served stream's clock and its latest frame: what every viewer shows now.

Why: chunks arrive in bursts (a whole chunk is decoded at once) and, on a fast GPU, faster than real
time; viewers must see a steady `fps`. The hub gives each frame a due time when it arrives,

    due(frame) = max(due(previous frame) + 1 / fps, arrival time)

so the stream plays at `fps` while frames are there and holds the last frame while generation is
behind (or paused), then picks up again without trying to catch up. A viewer asks `latest(now)` at
its own ticks and gets the newest frame that is due: a viewer is a `latest` reader, a slow one skips
frames (counted by the viewer), and no viewer ever waits for another or holds generation.

`push` is the only thing that waits: when the newest frame is due more than `lead` seconds from now
(generation ahead of real time), the caller (the tap sink, a `block` reader of the runtime's ring)
waits, so the producer is held by the frame ring, by the wall clock and never by a viewer.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..chunk import FrameMeta

__all__ = ["FrameHub", "HubFrame"]


@dataclass(frozen=True)
class HubFrame:
    """One frame of the served stream: pixels (uint8 [H, W, 3], never written again), its metadata
    and the monotonic time it is due on screen."""

    frame: np.ndarray
    meta: FrameMeta
    due: float


class FrameHub:
    """Frames waiting for their due time, and the one due now (thread-safe)."""

    def __init__(self, fps: float, lead: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not fps > 0:
            raise ValueError(f"fps: got {fps!r}; use frames per second > 0")
        self.period = 1.0 / float(fps)
        self.lead = float(lead)
        self._clock = clock
        self._cond = threading.Condition()
        self._frames: collections.deque[HubFrame] = collections.deque()
        self._last_due: Optional[float] = None
        self._closed = False
        self.frames_in = 0
        #: seconds `push` spent waiting for the clock (generation ahead of real time)
        self.waited = 0.0

    def push(self, frame: np.ndarray, meta: FrameMeta, stop: Optional[threading.Event] = None) -> bool:
        """Add a frame (the hub keeps this array: give it a copy). Waits while the stream is more than
        `lead` seconds ahead of the clock; False when closed or `stop` was set meanwhile (not added)."""
        with self._cond:
            now = self._clock()
            due = now if self._last_due is None else max(self._last_due + self.period, now)
            start = now
            while due - now > self.lead and not self._closed and not (stop is not None and stop.is_set()):
                self._cond.wait(min(0.05, due - now - self.lead))
                now = self._clock()
            self.waited += now - start
            if self._closed or (stop is not None and stop.is_set()):
                return False
            self._frames.append(HubFrame(frame, meta, due))
            self._last_due = due
            self.frames_in += 1
            return True

    def latest(self, now: Optional[float] = None) -> Optional[HubFrame]:
        """The newest frame due at `now` (default: the clock), or None before the first one. Frames
        older than it are dropped: they can never be shown any more."""
        with self._cond:
            now = self._clock() if now is None else now
            while len(self._frames) > 1 and self._frames[1].due <= now:
                self._frames.popleft()
            head = self._frames[0] if self._frames else None
            return head if head is not None and head.due <= now else None

    def backlog(self) -> int:
        """Frames held: the one due now and those waiting for their time."""
        with self._cond:
            return len(self._frames)

    def close(self) -> None:
        """Wake a waiting `push`; later pushes are refused. The last frame stays readable."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
