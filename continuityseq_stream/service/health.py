"""/healthz: is the stream alive and making chunks?

A pure function of what the service observed, so that the rule is tested without processes:

    unhealthy  the stream ended (the run returned), or the producer process is gone, or no chunk
               arrived for longer than the limit while not paused;
    healthy    otherwise ("starting" before the first chunk: loading a model may take minutes).

The limit is `--health-timeout` when given, else automatic: 4 x the last interval between chunks,
at least `AUTO_MIN_SECONDS` (a pause, a slow prompt switch or a busy machine are no reason to call
the service dead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["Health", "evaluate_health", "AUTO_MIN_SECONDS", "AUTO_FACTOR"]

AUTO_MIN_SECONDS = 30.0
AUTO_FACTOR = 4.0


@dataclass(frozen=True)
class Health:
    healthy: bool
    status: str       # "starting" | "ok" | "ended" | "producer-dead" | "stalled"
    reason: str       # one line for people

    def as_dict(self) -> dict:
        return {"healthy": self.healthy, "status": self.status, "reason": self.reason}


def stale_limit(timeout: Optional[float], last_interval: Optional[float]) -> float:
    """Seconds without a chunk that still count as healthy."""
    if timeout is not None:
        return float(timeout)
    return max(AUTO_MIN_SECONDS, AUTO_FACTOR * (last_interval or 0.0))


def evaluate_health(*, ended: bool, exit_status: Optional[int], producer_seen: bool, producer_alive: bool,
                    chunk_age: Optional[float], last_interval: Optional[float], paused: bool,
                    timeout: Optional[float]) -> Health:
    """The health verdict (see the module docstring). chunk_age: seconds since the last chunk arrived,
    None before the first one."""
    if ended:
        return Health(False, "ended", f"the stream ended (exit status {exit_status})")
    if producer_seen and not producer_alive:
        return Health(False, "producer-dead", "the producer process is gone")
    if chunk_age is None:
        return Health(True, "starting", "waiting for the first chunk (loading the model)")
    limit = stale_limit(timeout, last_interval)
    if not paused and chunk_age > limit:
        return Health(False, "stalled", f"no chunk for {chunk_age:.1f} s (limit {limit:.1f} s)")
    return Health(True, "ok", "paused" if paused else f"last chunk {chunk_age:.1f} s ago")
