"""The main process's reading of the producer's events (the protocol is in producer.py).

Why a module of its own: the run loop only asks "what did the producer say?"; what each event means
is here. The first frame's size and the segment's attachment go on to the run (they start the
sinks and unlink the ring's name), the child's log records are re-emitted through `logging`, and how
the producer ended is kept: `finished` (its source ended) or `error` (it failed, or its process died
without saying why).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from .producer import Producer

__all__ = ["ProducerEvents"]


class ProducerEvents:
    """How the producer's events reach the run, and how the producer ended.

    on_shape(height, width): a ("shape", h, w) event (sent once, after the first decoded chunk).
    on_attached(): the child has mapped the ring's data segment.
    error: (class name, message, unexpected, template, names) of the producer's error, or None.
    """

    def __init__(self, log: Callable[[str], None], on_shape: Callable[[int, int], None],
                 on_attached: Callable[[], None]) -> None:
        self.log, self.on_shape, self.on_attached = log, on_shape, on_attached
        self.error: Optional[tuple[str, str, bool, str, tuple]] = None
        self.finished = False

    def handle(self, event: tuple) -> None:
        """Act on one event of the child."""
        kind = event[0]
        if kind == "shape":
            _, height, width = event
            self.on_shape(height, width)
        elif kind == "attached":
            self.on_attached()
        elif kind == "done":
            self.finished = True
        elif kind == "log":
            _, name, level, message = event
            logging.getLogger(name).log(level, "%s", message)
        elif kind == "error":
            _, name, message, unexpected, template, names = event
            self.error = (name, message, bool(unexpected), template, tuple(names))
            if unexpected:  # a ContinuitySeqError is raised by `run` after teardown instead
                self.log(f"producer failed: {name}: {' '.join(message.split())}")

    def on_exit(self, producer: Producer) -> None:
        """The producer's process is gone before it said "done" or "error": read what it still sent,
        else record that it died (with its exit code)."""
        # the child puts its last message before it exits: collect it before concluding it died
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not (self.finished or self.error):
            event = producer.next_event(0.1)
            if event is not None:
                self.handle(event)
        if not (self.finished or self.error):
            code = producer.exitcode
            self.error = ("ProducerDied", f"exit code {code}", True, f"exit code {code}", ())
            self.log(f"producer process died unexpectedly (exit code {code})")
