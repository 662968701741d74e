"""Per-client request rate limits (token buckets), shared by HTTP and OSC.

Each client (an IP address for HTTP, a host for OSC) gets `burst` requests at once and `rate` more per
second; past that a request is refused (HTTP 429 with Retry-After, OSC an /error reply). Memory stays
bounded: at most `max_clients` buckets are kept, the least recently used ones are forgotten first.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, rate: float, burst: int, max_clients: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_clients, self._clock = float(rate), int(burst), max_clients, clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.refused = 0

    def allow(self, client: str) -> float:
        """0.0 when the request may go ahead (and is counted), else the seconds until it could."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                wait, tokens = 0.0, tokens - 1.0
            else:
                wait = (1.0 - tokens) / self.rate
                self.refused += 1
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait
