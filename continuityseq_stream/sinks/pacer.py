"""The ffmpeg sink's clock: one frame every 1/fps seconds to ffmpeg, whatever generation does
(the behaviour is described in ffmpeg.py's docstring), and the queue it shares with `write()`."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Optional

import numpy as np

from .ffmpeg_process import FfmpegProcess

log = logging.getLogger(__name__.rsplit(".", 1)[0] + ".ffmpeg")  # one logger name for the whole sink

__all__ = ["FrameQueue", "Pacer"]


class FrameQueue:
    """The frames between the sink's `write()` and the clock: bounded (`capacity`), with the counters
    and the events both sides wait on. Its lock guards the frames and the counters."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.frames: collections.deque[np.ndarray] = collections.deque()
        self.counters = {"sent": 0, "repeated": 0, "held": 0, "dropped": 0, "reconnects": 0}
        self.wake = threading.Event()  # nudges the clock (new frame, close)
        self.space = threading.Event()  # nudges a blocked write()
        self.closing = threading.Event()
        self.paused = threading.Event()
        self.abort = threading.Event()  # the sink was interrupted: end now, drop what is queued

    def __len__(self) -> int:
        with self.lock:
            return len(self.frames)

    def put(self, frame: np.ndarray, check: Callable[[], None]) -> None:
        """Queue `frame`, waiting while the queue is full; `check()` raises when waiting is pointless."""
        while True:
            check()
            with self.lock:
                if len(self.frames) < self.capacity:
                    self.frames.append(frame)
                    self.space.clear()
                    break
            self.space.wait(0.1)
        self.wake.set()

    def take(self) -> tuple[np.ndarray | None, bool]:
        """For the clock: (next frame, or None while paused or empty; whether the sink is closing)."""
        with self.lock:
            closing = self.closing.is_set()
            frame = None if self.paused.is_set() and not closing else (self.frames.popleft() if self.frames else None)
            if frame is not None:
                self.space.set()
            return frame, closing

    def count(self, key: str) -> None:
        with self.lock:
            self.counters[key] += 1

    def drop_all(self) -> None:
        """Drop every queued frame at once (counted): a closing sink whose ffmpeg is down."""
        with self.lock:
            self.counters["dropped"] += len(self.frames)
            self.frames.clear()

    def stats(self) -> dict:
        with self.lock:
            return dict(self.counters, queued=len(self.frames))


class _Backoff:
    """Exponential backoff between restarts: 0.5 s, 1 s, 2 s ... up to `cap`; reset after a stable run."""

    def __init__(self, first: float = 0.5, cap: float = 10.0, stable: float = 5.0) -> None:
        self.first, self.cap, self.stable = first, cap, stable
        self.delay = first
        self.failures = 0  # restarts in a row that did not stay up for `stable` seconds

    def failed(self, uptime: float) -> float:
        """Record an exit after `uptime` seconds; return how long to wait before the next start."""
        if uptime >= self.stable:
            self.delay, self.failures = self.first, 0
        delay = self.delay
        self.failures += 1
        self.delay = min(self.cap, self.delay * 2)
        return delay


class Pacer(threading.Thread):
    """The clock: every 1/fps seconds take the next frame (or repeat the last) and hand it to ffmpeg.

    Owns the ffmpeg process and its restarts; nothing else touches it while running, except the
    sink's `restart_target`/`interrupt`, which only kill it (the clock then sees EPIPE). Every
    process is started from this thread, so the kernel kills it when this thread ends.

    Given what it needs, nothing more: the `queue` it shares with the sink's `write()`, `launch`
    (restart: bool -> (a started FfmpegProcess, its target)), `beat` (the sink's heartbeat, at a
    time or now), the output `fps`, `preroll` seconds, `retries` (0: forever), `stop_timeout`, and
    the sink's `name` and ffmpeg `log_path` for its messages.
    """

    def __init__(self, name: str, queue: FrameQueue, launch: Callable[[bool], tuple[FfmpegProcess, str]],
                 beat: Callable[[Optional[float]], None], *, fps: float, preroll: float, retries: int,
                 stop_timeout: float, log_path: str, local_file: bool) -> None:
        super().__init__(name=f"ffmpeg-pacer[{name}]", daemon=True)
        self.sink_name, self.queue, self.launch, self.beat = name, queue, launch, beat
        self.fps, self.preroll, self.retries, self.stop_timeout = fps, preroll, retries, stop_timeout
        self.log_path, self.local_file = log_path, local_file
        self.proc: FfmpegProcess | None = None
        self.backoff = _Backoff()
        self.restart_at = 0.0
        self.error: str | None = None
        self.starts = 0

    def run(self) -> None:
        q = self.queue
        period = 1.0 / self.fps
        try:
            if not self._wait_preroll():
                return
            last: np.ndarray | None = None
            next_tick = time.monotonic()
            while not q.abort.is_set():
                if q.closing.is_set() and self.proc is None and self.starts:
                    q.drop_all()  # closing during an outage: nothing more can be sent
                    break
                if not self._waiting_for_ffmpeg():
                    frame, finished = q.take()
                    if finished and frame is None:
                        break
                    if frame is not None:
                        last = frame
                    elif last is not None:
                        q.count("held" if q.paused.is_set() else "repeated")
                    if last is not None:
                        self._emit(last, fresh=frame is not None)
                self._beat()
                next_tick += period
                if next_tick - time.monotonic() < -1.0:  # more than a second late: resynchronise the clock
                    next_tick = time.monotonic()
                self._wait_until(next_tick)  # hands pending bytes to ffmpeg meanwhile
        except Exception as exc:  # never die silently: write() reports it
            self.error = f"ffmpeg sink clock failed: {exc!r}"
            log.exception("ffmpeg sink %s: clock failed", self.sink_name)
        finally:
            self._stop_process()
            q.space.set()

    def _waiting_for_ffmpeg(self) -> bool:
        """ffmpeg is still taking the last frame and is not stuck: skip this tick (back-pressure, like
        a blocking write). A dead or stuck ffmpeg is handled by `_emit` (frames dropped)."""
        proc = self.proc
        if proc is None or not proc.busy:
            return False
        if not proc.pump(0.0):
            self._lost()
            return False
        return proc.busy and not proc.stuck(time.monotonic())

    def _beat(self) -> None:
        """The sink's heartbeat for the runtime's watchdog: every tick, except while ffmpeg holds a
        frame it does not take (then the time it last took bytes)."""
        proc = self.proc
        self.beat(None if proc is None or not proc.busy else proc.progress_at)

    def _wait_until(self, when: float) -> None:
        """Sleep until `when`, handing the frame in flight to ffmpeg meanwhile. Not an Event wait: a
        new frame must not advance the clock."""
        while True:
            left = when - time.monotonic()
            if left <= 0:
                return
            proc = self.proc
            if proc is not None and proc.busy:
                if not proc.pump(left):
                    self._lost()
                continue
            time.sleep(left)
            return

    def _wait_preroll(self) -> bool:
        """Buffer `preroll` seconds of frames (or until close) before the first tick."""
        q = self.queue
        need = max(1, int(round(self.preroll * self.fps)))
        while not q.closing.is_set():
            self.beat(None)  # waiting for frames is not being stuck
            if len(q) >= need:
                return True
            q.wake.wait(0.05)
            q.wake.clear()
        return len(q) > 0 and not q.abort.is_set()

    def _emit(self, frame: np.ndarray, fresh: bool) -> None:
        """Hand one frame to ffmpeg; while ffmpeg is down or stuck, drop it (and restart ffmpeg when
        the backoff allows)."""
        q = self.queue
        now = time.monotonic()
        if self.proc is None or not self.proc.alive():
            if self.proc is not None:
                self._lost()
            # no restart for the last queued frames of a closing sink (a first start still happens)
            if now < self.restart_at or (self.starts and q.closing.is_set()) or not self._start():
                if fresh:
                    q.count("dropped")
                return
        if self.proc.busy:  # stuck (see _waiting_for_ffmpeg): an outage, generation goes on
            if fresh:
                q.count("dropped")
            return
        if self.proc.offer(memoryview(frame).cast("B")):
            q.count("sent")
        else:
            self._lost()
            if fresh:
                q.count("dropped")

    def _start(self) -> bool:
        limit = self.retries
        if limit and self.backoff.failures > limit:
            self.error = (f"ffmpeg sink {self.sink_name}: gave up after {self.backoff.failures - 1} restarts in a "
                          f"row; see {self.log_path}")
            self.queue.closing.set()
            return False
        self.proc, target = self.launch(self.starts > 0)
        self.starts += 1
        if self.starts > 1:
            self.queue.count("reconnects")
            where = f" into {target} (earlier files are kept)" if self.local_file else ""
            log.warning("ffmpeg sink %s: restarted ffmpeg (pid %d)%s", self.sink_name, self.proc.pid, where)
        return True

    def _lost(self) -> None:
        """ffmpeg died: reap it, log one line, schedule the next start."""
        proc, self.proc = self.proc, None
        code = proc.stop(timeout=1.0)
        delay = self.backoff.failed(time.monotonic() - proc.started_at)
        self.restart_at = time.monotonic() + delay
        log.warning("ffmpeg sink %s: ffmpeg exited (code %s), retrying in %.1f s; log: %s",
                    self.sink_name, code, delay, self.log_path)

    def _stop_process(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=0.0 if self.queue.abort.is_set() else self.stop_timeout)
            self.proc = None
