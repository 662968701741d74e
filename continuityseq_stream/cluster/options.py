"""`ClusterOptions`: how the multi-stream service listens, where streams save, which back end.

Frozen and validated like `ServiceOptions`; the same rule: 127.0.0.1 by default, any other bind
address needs a `token`. `ray` is None (the local back end: streams are processes on this machine,
at most `max_streams`), "auto" (the Ray cluster running on this machine, else a local one with
`ray_cpus` CPUs) or a Ray address.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..config import build_from_mapping, is_loopback_host
from ..errors import ConfigError
from ..service.options import MIN_TOKEN_CHARS, weak_token

__all__ = ["ClusterOptions"]


def _number(flag: str, value: Any, low: float, what: str, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value) or value < low:
        raise ConfigError(f"{flag}: got {value!r}; use {what}")


@dataclass(frozen=True)
class ClusterOptions:
    """host, port: the ingress's bind address; token: bearer token (needed off loopback);
    state_root: the folder every stream saves in (shared storage on a multi-node Ray cluster);
    max_streams: streams at once on the local back end; ray: None, "auto" or an address;
    ray_cpus: CPUs of a local Ray this command starts (None: all); stream_cpus: CPUs one stream asks
    Ray for when the cluster has no GPU; max_restarts: Ray restarts of a stream's actor (-1: always);
    stop_streams_on_exit: stop the streams when the service stops (default: they go on);
    start_timeout: seconds a new stream may take to serve; max_body, rate, burst: as for serve."""

    host: str = "127.0.0.1"
    port: int = 8090
    token: Optional[str] = None
    state_root: str = "continuityseq-streams"
    max_streams: int = 4
    ray: Optional[str] = None
    ray_cpus: Optional[float] = None
    stream_cpus: float = 1.0
    max_restarts: int = -1
    stop_streams_on_exit: bool = False
    start_timeout: float = 300.0
    max_body: int = 64 * 1024
    rate: float = 20.0
    burst: int = 40

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"--host: got {self.host!r}; use an address to bind, e.g. 127.0.0.1")
        if not (isinstance(self.port, int) and not isinstance(self.port, bool) and 1 <= self.port <= 65535):
            raise ConfigError(f"--port: got {self.port!r}; use a port in 1..65535")
        if self.token is not None and weak_token(self.token):
            raise ConfigError(f"--token: use at least {MIN_TOKEN_CHARS} printable characters without spaces")
        if not is_loopback_host(self.host) and self.token is None:
            raise ConfigError(f"--host: {self.host!r} is not a loopback address, so anyone who can reach it could "
                              f"create, steer and stop streams; give --token (or CONTINUITYSEQ_TOKEN), or bind 127.0.0.1")
        if not isinstance(self.state_root, str) or not self.state_root.strip():
            raise ConfigError(f"--state-root: got {self.state_root!r}; use a folder, e.g. ./streams")
        _number("--max-streams", self.max_streams, 1, "a whole number of streams >= 1", integer=True)
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            raise ConfigError(f"--ray: got {self.ray!r}; use auto, or the head's address (HOST:6379)")
        if self.ray_cpus is not None:
            _number("--ray-cpus", self.ray_cpus, 1, "a number of CPUs >= 1")
        _number("--stream-cpus", self.stream_cpus, 0.01, "CPUs > 0 per stream, e.g. 1 or 0.5")
        _number("--max-restarts", self.max_restarts, -1, "restarts >= 0, or -1 (always)", integer=True)
        _number("--start-timeout", self.start_timeout, 1, "seconds >= 1")
        _number("max_body", self.max_body, 1024, "bytes >= 1024", integer=True)
        _number("--rate", self.rate, 0.001, "requests per second > 0")
        _number("--burst", self.burst, 1, "a whole number of requests >= 1", integer=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ClusterOptions":
        """Build from a mapping; unknown keys are an error."""
        return build_from_mapping(cls, values, "cluster option(s)")
