"""How a run stops: the stop state machine, and the SIGINT/SIGTERM handlers that feed it.

A stop is requested by a signal, `--duration`, a sink (`wants_stop`) or the control `stop`. The
first request starts the graceful stop (the producer is told; a finishing stop lets the chunk in
progress finish, like the end of `--times`); a second signal forces a fast exit.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Callable, Optional

__all__ = ["SignalFlag", "StopState", "signal_handlers"]


class SignalFlag:
    """A flag that a signal handler may set. `threading.Event.set` takes a lock: a handler that
    interrupts the main thread while it holds that lock (in `wait`) would deadlock on it."""

    def __init__(self) -> None:
        self._value = False

    def set(self) -> None:
        self._value = True

    def is_set(self) -> bool:
        return self._value


class StopState:
    """Why and since when a run is stopping, and whether the chunk in progress is abandoned.

    `channel` and `producer` are set once they exist, so that a stop reaches them; `log` writes the
    one-line notices. The signal handler only records (it may interrupt a thread holding a lock);
    `take_signal`, called by the loop, acts on it.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.reason: Optional[str] = None
        self.at: Optional[float] = None
        self.force = SignalFlag()
        self.force_logged = False
        self.pending_signal: Optional[str] = None  # set by the handler, acted on by the loop
        self.abandon = False  # the producer was told to stop now (not only at the next chunk boundary)
        self.channel = None
        self.producer = None

    def request(self, reason: str, finish_chunk: bool = False) -> None:
        """Start the graceful stop. `finish_chunk` (the control `stop`): no chunk starts any more, but
        the one being computed is finished and written, like the end of `--times`. Otherwise (signals,
        --duration, a sink) that chunk is abandoned; a later plain request upgrades a finishing stop."""
        if self.channel is not None:
            self.channel.stop()
        if self.reason is None:
            self.reason = reason
            self.at = time.monotonic()
        if not finish_chunk and not self.abandon:
            self.abandon = True
            self.at = time.monotonic()
            if self.producer is not None:
                self.producer.stop()

    def on_signal(self, signum: int, _frame) -> None:
        # Runs between two bytecodes of the main thread, which may be holding the log's lock or the
        # update channel's: take no lock here. Only record; the loop (or teardown) acts on it.
        if self.pending_signal is None and not self.abandon:
            self.pending_signal = signal.Signals(signum).name
        else:
            self.force.set()

    def take_signal(self) -> None:
        """Act on a signal the handler recorded (main thread, outside the handler)."""
        name, self.pending_signal = self.pending_signal, None
        if name is not None and not self.abandon:
            self.request(name)
            self.log(f"{name}: stopping, the sinks drain what the ring holds (again to force)")
        if self.force.is_set() and not self.force_logged:
            self.force_logged = True
            self.log("forcing the exit")


class signal_handlers:
    """Install SIGINT/SIGTERM handlers for the duration of a run (main thread only), then restore."""

    def __init__(self, handler) -> None:
        self.handler, self.saved = handler, {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self.handler)

    def __exit__(self, *exc) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
