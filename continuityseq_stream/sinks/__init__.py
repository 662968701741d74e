"""Sinks: where frames go. `sink_from_uri` turns a `--sink` URI into a Sink.

| URI                         | module      | policy |
|-----------------------------|-------------|--------|
| file:PATH (or a .mp4/.mkv path) | file.py | block  |
| rtmp://..., rtmps://..., ffmpeg:URL | ffmpeg.py | block (its clock sends at a constant rate, repeating the last frame when generation lags) |
| zmq+pub://HOST:PORT         | zeromq.py   | latest |
| zmq+push://HOST:PORT        | zeromq.py   | block  |
| preview                     | preview.py  | latest |
| - or stdout                 | stdout.py   | block  |

Each module exposes `from_uri(uri: str) -> Sink`; modules are imported only when used.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import POLICIES, Sink, StreamInfo

__all__ = ["Sink", "StreamInfo", "POLICIES", "sink_from_uri", "SINK_SCHEMES"]

# scheme prefix -> module name inside this package
SINK_SCHEMES = {
    "file:": "file",
    "rtmp://": "ffmpeg",
    "rtmps://": "ffmpeg",
    "ffmpeg:": "ffmpeg",
    "zmq+pub://": "zeromq",
    "zmq+push://": "zeromq",
    "preview": "preview",
    "stdout": "stdout",
    "-": "stdout",
}

_EXAMPLES = "file:out.mp4, rtmp://127.0.0.1/live/key, ffmpeg:URL, zmq+pub://127.0.0.1:5555, zmq+push://127.0.0.1:5556, preview, - (stdout)"


def sink_from_uri(uri: str) -> Sink:
    """Parse one `--sink` value. Raises ConfigError for an unknown kind."""
    uri = uri.strip()
    module = None
    if uri in ("-", "stdout", "preview"):
        module = SINK_SCHEMES[uri]
    else:
        for prefix, mod in SINK_SCHEMES.items():
            if prefix not in ("-", "stdout", "preview") and uri.startswith(prefix):
                module = mod
                break
        if module is None and uri.lower().endswith((".mp4", ".mkv", ".mov")) and "://" not in uri:
            uri, module = "file:" + uri, "file"
    if module is None:
        raise ConfigError(f"{{sinks}}: unknown sink {uri!r}; use one of {_EXAMPLES}", names=("sinks",))
    mod = importlib.import_module(f"{__name__}.{module}")
    return mod.from_uri(uri)
