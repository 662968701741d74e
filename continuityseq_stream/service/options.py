"""`ServiceOptions`: how `serve` exposes the stream (where it listens, who may steer it, limits).

Frozen and validated on construction, like `RuntimeOptions`; unknown keys are an error in
`from_dict`. The rule that matters most: the HTTP server binds 127.0.0.1 by default, and any other
bind address needs a `token` (bearer token for every control endpoint and the WebRTC data channel),
because whoever reaches the port could steer and stop the stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..config import build_from_mapping, is_loopback_host
from ..errors import ConfigError

__all__ = ["ServiceOptions", "parse_hostport", "is_loopback_host", "weak_token", "MIN_TOKEN_CHARS"]

#: a bearer token shorter than this is refused: it could be guessed
MIN_TOKEN_CHARS = 16


def weak_token(token) -> bool:
    """Whether a bearer token could be guessed or breaks a header: too short, not printable, spaces."""
    return (not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or not token.isprintable()
            or any(c.isspace() for c in token))


def parse_hostport(text: str, flag: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'HOST:PORT' or 'PORT' -> (host, port); ConfigError naming `flag` otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{flag}: got {text!r}; use HOST:PORT, e.g. 127.0.0.1:9000")
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = default_host, text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ConfigError(f"{flag}: got {text!r}; give a host before the colon, e.g. 127.0.0.1:9000")
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(f"{flag}: port {port!r} in {text!r}; use a port in 1..65535")
    return host, int(port)


def _positive(name: str, value: Any, what: str) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}: got {value!r}; use {what}")


@dataclass(frozen=True)
class ServiceOptions:
    """Server side of `serve` (what it generates is `GenerationConfig`, how it runs `RuntimeOptions`).

    host, port: the HTTP bind address (port 0: a free port, printed at start).
    token: bearer token for control endpoints, /metrics, /api/* and WHEP; None on loopback only.
    osc: (host, port) of the OSC UDP server, or None; osc_telemetry: (host, port) that receives
        per-chunk and fps messages, or None. osc_allow_remote: accept a non-loopback OSC bind
        (UDP has no authentication).
    max_body: bytes a request body may have (larger ones get 413).
    rate, burst: requests per second per client (token bucket) on the API, WHEP and OSC.
    health_timeout: seconds without a new chunk after which /healthz turns unhealthy; None: automatic
        (see health.py).
    linger: seconds the API stays up after the stream ended (health and status tell why), 0: exit.
    lead: seconds of video the served stream may hold ahead of the viewers' clock (see hub.py).
    max_viewers: WebRTC viewers at once.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    token: Optional[str] = None
    osc: Optional[tuple[str, int]] = None
    osc_telemetry: Optional[tuple[str, int]] = None
    osc_allow_remote: bool = False
    max_body: int = 64 * 1024
    rate: float = 20.0
    burst: int = 40
    health_timeout: Optional[float] = None
    linger: float = 0.0
    lead: float = 1.0
    max_viewers: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"--host: got {self.host!r}; use an address to bind, e.g. 127.0.0.1")
        if not (isinstance(self.port, int) and not isinstance(self.port, bool) and 0 <= self.port <= 65535):
            raise ConfigError(f"--port: got {self.port!r}; use a port in 0..65535 (0: any free port)")
        if self.token is not None:
            if weak_token(self.token):
                raise ConfigError(f"--token: use at least {MIN_TOKEN_CHARS} printable characters without spaces "
                                  f"(e.g. the output of: python -c 'import secrets; print(secrets.token_urlsafe())')")
        if not is_loopback_host(self.host) and self.token is None:
            raise ConfigError(f"--host: {self.host!r} is not a loopback address, so anyone who can reach it could "
                              f"steer and stop the stream; give --token (or CONTINUITYSEQ_TOKEN), or bind 127.0.0.1")
        for name in ("osc", "osc_telemetry"):
            value = getattr(self, name)
            if value is not None:
                flag = "--" + name.replace("_", "-")
                if not (isinstance(value, tuple) and len(value) == 2):
                    raise ConfigError(f"{flag}: got {value!r}; use HOST:PORT")
                object.__setattr__(self, name, parse_hostport(f"{value[0]}:{value[1]}", flag))
        if not isinstance(self.osc_allow_remote, bool):
            raise ConfigError(f"--osc-allow-remote: got {self.osc_allow_remote!r}; use True or False")
        if self.osc is not None and not is_loopback_host(self.osc[0]) and not self.osc_allow_remote:
            raise ConfigError(f"--osc: {self.osc[0]!r} is not a loopback address, and OSC has no authentication "
                              f"(--token does not cover it); bind 127.0.0.1, or pass --osc-allow-remote")
        if not (isinstance(self.max_body, int) and 1024 <= self.max_body <= 16 * 1024 * 1024):
            raise ConfigError(f"max_body: got {self.max_body!r}; use bytes in 1024..16777216")
        _positive("--rate", self.rate, "requests per second > 0")
        if not (isinstance(self.burst, int) and not isinstance(self.burst, bool) and self.burst >= 1):
            raise ConfigError(f"--burst: got {self.burst!r}; use a whole number of requests >= 1")
        if self.health_timeout is not None:
            _positive("--health-timeout", self.health_timeout, "seconds > 0, or leave it out (automatic)")
        if not (isinstance(self.linger, (int, float)) and math.isfinite(self.linger) and self.linger >= 0):
            raise ConfigError(f"--linger: got {self.linger!r}; use seconds >= 0")
        _positive("--lead", self.lead, "seconds > 0, e.g. 2")
        if not (isinstance(self.max_viewers, int) and not isinstance(self.max_viewers, bool)
                and 1 <= self.max_viewers <= 256):
            raise ConfigError(f"--max-viewers: got {self.max_viewers!r}; use 1..256")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ServiceOptions":
        """Build from a mapping; unknown keys are an error."""
        return build_from_mapping(cls, values, "service option(s)")
