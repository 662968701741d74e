"""The control protocol: one JSON object per request and per answer, on a loopback-only address.

The requests, answers and limits are described in control/__init__.py; this module holds what the
server and every client share: the address check, request parsing and answer encoding.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Optional

from ..config import is_loopback_host
from ..errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONTROL_ADDRESS = "tcp://127.0.0.1:5557"
#: requests larger than this get an error answer (the largest valid request is far smaller)
MAX_REQUEST_BYTES = 64 * 1024
#: requests larger than this are dropped by ZeroMQ without being read (the client times out)
DROP_REQUEST_BYTES = 1024 * 1024


# ------------------------------------------------------------------------------------------------
# addresses
# ------------------------------------------------------------------------------------------------
def check_control_address(address: str, allow_remote: bool = False) -> str:
    """Validate a `--control` bind address; non-loopback TCP needs `allow_remote`.

    Accepts `tcp://HOST:PORT` (PORT 1..65535, or `*` for a free port) and `ipc://PATH`.
    """
    if not isinstance(address, str) or "://" not in address:
        raise _address_error(f"got {address!r}; use tcp://127.0.0.1:PORT")
    scheme = address.split("://", 1)[0]
    if scheme == "ipc":
        if len(address) <= len("ipc://"):
            raise _address_error(f"got {address!r}; give a socket path, e.g. ipc:///tmp/continuityseq.sock")
        return address
    if scheme != "tcp":
        raise _address_error(f"got {address!r}; use tcp://127.0.0.1:PORT (or ipc://PATH)")
    rest = address[len("tcp://"):]
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        raise _address_error(f"got {address!r}; use tcp://HOST:PORT, e.g. tcp://127.0.0.1:5557")
    if port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise _address_error(f"port {port!r} in {address!r}; use a port in 1..65535")
    if not is_loopback_host(host) and not allow_remote:
        raise ConfigError(
            f"{{control}}: {address!r} is not a loopback address, so anyone who can reach it could steer and stop "
            f"the stream; use tcp://127.0.0.1:PORT, or pass {{control_allow_remote}} to accept it",
            names=("control", "control_allow_remote"))
    return address


def _address_error(problem: str) -> ConfigError:
    """ConfigError "`{control}`: problem" (the CLI spells it --control)."""
    return ConfigError("{control}: " + problem, names=("control",))


# ------------------------------------------------------------------------------------------------
# server
# ------------------------------------------------------------------------------------------------
def error_response(message: str, field: Optional[str] = None) -> dict:
    return {"ok": False, "error": message, "field": field}


def _jsonable(value: Any) -> Any:
    """Fallback for json.dumps: numpy scalars/arrays and tensors by value, anything else as text."""
    for attr in ("item", "tolist"):
        fn = getattr(value, attr, None)
        if callable(fn):
            try:
                return fn()
            except (TypeError, ValueError):
                pass
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def encode_answer(answer: Mapping[str, Any]) -> bytes:
    """The answer as UTF-8 JSON; values JSON cannot hold (numpy numbers, ...) are converted, and an
    answer that still cannot be encoded becomes an error answer instead of killing the server."""
    try:
        return json.dumps(answer, default=_jsonable, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        log.warning("control: answer could not be encoded: %s", exc)
        return json.dumps(error_response(f"internal error: the answer could not be encoded as JSON: {exc}")).encode("utf-8")


_EXAMPLE = 'send an object like {"command": "status"}'


def short_text(text: str, limit: int = 120) -> str:
    """`text` cut to `limit` characters for a one-line answer."""
    return text if len(text) <= limit else text[:limit] + "..."


def parse_request(payload: bytes) -> tuple[Any, Optional[str]]:
    """(decoded JSON, None), or (None, the one-line problem) for bytes that are not one JSON value.

    Besides ValueError, Python's decoder raises RecursionError on deeply nested input (2 KB of
    `[[[...]]]` are enough); that is a malformed request too, not a reason to stop serving.
    """
    try:
        return json.loads(payload.decode("utf-8")), None
    except UnicodeDecodeError as exc:
        return None, f"malformed JSON: not UTF-8 ({exc.reason} at byte {exc.start}); {_EXAMPLE}"
    except RecursionError:
        return None, f"malformed JSON: nested too deeply; {_EXAMPLE}"
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's limit on digits of an int
            return None, f"malformed JSON: a number has too many digits; {_EXAMPLE}"
        return None, f"malformed JSON: {short_text(str(exc))}; {_EXAMPLE}"
