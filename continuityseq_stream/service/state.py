"""What the service knows about the run, gathered in one place for every surface.

`ServiceState` holds the tap, hub and event bus of the run, a cache of the runtime's `status`
answer (refreshed by `StatusPoller` every half second through the dispatcher, so that a page full of
viewers costs the runtime one request per poll, not one per viewer), the viewers' counters, and the
run's phase ("starting", "running", "ended" with its exit status). `producer()` finds the producer
process (a child of this one started by multiprocessing's spawn) for health and RSS.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Optional

import psutil

from .dispatcher import Dispatcher
from .events import EventBus
from .health import Health, evaluate_health
from .hub import FrameHub
from .options import ServiceOptions
from .tap import TapSink

log = logging.getLogger(__name__)

__all__ = ["ServiceState", "StatusPoller", "ViewerStats"]

STATUS_PERIOD = 0.5


class ViewerStats:
    """Counters of one viewer (a WebRTC peer): frames sent, frames skipped (due but never sent because
    the viewer was slow), frames repeated (the stream held a frame)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent = 0
        self.skipped = 0
        self.repeated = 0
        self.last_index: Optional[int] = None
        self.connected = True

    def count(self, index: int) -> None:
        if self.last_index is not None:
            if index == self.last_index:
                self.repeated += 1
            elif index > self.last_index + 1:
                self.skipped += index - self.last_index - 1
        self.last_index = index
        self.sent += 1


class ServiceState:
    def __init__(self, options: ServiceOptions, dispatcher: Dispatcher, hub: FrameHub, bus: EventBus,
                 tap: TapSink) -> None:
        self.options, self.dispatcher, self.hub, self.bus, self.tap = options, dispatcher, hub, bus, tap
        self.started = time.time()
        self.phase = "starting"
        self.exit_status: Optional[int] = None
        self._status: dict = {}
        self._status_time: Optional[float] = None
        self._lock = threading.Lock()
        self.viewers: dict[str, ViewerStats] = {}
        self._producer_pid: Optional[int] = None
        self.surface_counts: dict[tuple[str, bool], int] = {}

    # -- status cache -------------------------------------------------------------------------------
    def set_status(self, status: dict) -> None:
        with self._lock:
            self._status, self._status_time = status, time.time()
        if self.phase == "starting" and status.get("frames_made"):
            self.phase = "running"

    def status(self) -> dict:
        """The runtime's last status answer plus the service's own fields (never blocks on the runtime)."""
        with self._lock:
            status, when = dict(self._status), self._status_time
        status.pop("ok", None)
        status.pop("command", None)
        tap = self.tap
        status.update(
            phase=self.phase,
            exit_status=self.exit_status,
            status_age=None if when is None else round(time.time() - when, 3),
            viewers=len([v for v in self.viewers.values() if v.connected]),
            last_chunk=None if tap.last_chunk_time is None else {
                "age": round(time.time() - tap.last_chunk_time, 3), "interval": tap.last_interval},
            seam=tap.last_seam,
            health=self.health().as_dict(),
        )
        return status

    def count_command(self, surface: str, answer: dict) -> dict:
        key = (surface, bool(answer.get("ok")))
        with self._lock:
            self.surface_counts[key] = self.surface_counts.get(key, 0) + 1
        return answer

    # -- the producer process ------------------------------------------------------------------------
    def producer(self) -> Optional[psutil.Process]:
        """The producer process, once it exists (None before, and after it is gone)."""
        if self._producer_pid is None:
            try:
                for child in psutil.Process(os.getpid()).children():
                    cmdline = " ".join(child.cmdline())
                    if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
                        self._producer_pid = child.pid
                        break
            except psutil.Error:
                return None
            if self._producer_pid is None:
                return None
        try:
            proc = psutil.Process(self._producer_pid)
            return None if proc.status() == psutil.STATUS_ZOMBIE else proc
        except psutil.Error:
            return None

    # -- health -------------------------------------------------------------------------------------
    def health(self) -> Health:
        tap = self.tap
        producer_alive = self.producer() is not None
        with self._lock:
            paused = bool(self._status.get("paused"))
        return evaluate_health(
            ended=self.phase == "ended", exit_status=self.exit_status,
            producer_seen=self._producer_pid is not None, producer_alive=producer_alive,
            chunk_age=None if tap.last_chunk_time is None else time.time() - tap.last_chunk_time,
            last_interval=tap.last_interval, paused=paused, timeout=self.options.health_timeout)

    def ended(self, exit_status: int) -> None:
        self.exit_status = exit_status
        self.phase = "ended"


class StatusPoller:
    """Asks the runtime for `status` every `period` seconds (a daemon thread) into the state's cache."""

    def __init__(self, state: ServiceState, period: float = STATUS_PERIOD) -> None:
        self.state, self.period = state, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="service-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            if self.state.phase == "ended":
                continue
            answer = self.state.dispatcher.dispatch({"command": "status"})
            if answer.get("ok"):
                self.state.set_status(answer)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
