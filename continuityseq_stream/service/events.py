"""A small publish/subscribe bus for per-chunk events (tap sink -> data channels, OSC telemetry).

Events are JSON-able dicts with an "event" key. `publish` runs on the tap's thread and calls every
subscriber in turn; a subscriber must be quick and must not raise (one that raises is logged and
kept). Subscribers living on an asyncio loop hand the event over with `call_soon_threadsafe`.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)

Subscriber = Callable[[dict], None]


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add `fn`; returns a function that removes it again."""
        with self._lock:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    def publish(self, event: dict) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            try:
                fn(event)
            except Exception:  # noqa: BLE001 - one bad subscriber must not stop the others
                log.exception("event subscriber failed")
