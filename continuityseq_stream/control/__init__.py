"""Live control of a running stream: JSON commands over a ZeroMQ REP socket, and its client.

Modules: protocol.py (address check, request parsing, answers), server.py (`ControlServer`,
`LiveController`), client.py (`ControlClient`, the `control` command). Every public name is
importable from this package.

Protocol (one JSON object per request, one per answer, UTF-8, at most 64 KiB):

    {"command": "set_prompt", "prompt": "...", "transition": 4, "negative_prompt": "..."}
    {"command": "set_negative_prompt", "negative_prompt": "..."}
    {"command": "set_guidance", "guidance_scale": 12.5}
    {"command": "set_conditioning", "min": 2, "max": 6}
    {"command": "set_seed", "seed": 42}
    {"command": "pause"} / {"command": "resume"} / {"command": "stop"} / {"command": "status"}

Answers are `{"ok": true, "command": ..., ...}` — changes carry `"applies_at_chunk": k` — or
`{"ok": false, "error": "<one line>", "field": "<field or null>"}`. Every request gets an answer: a bad
one (malformed, nested too deeply, absurd values, too large, a failing handler...) gets an error answer,
never leaves the server loop and never reaches the run. Limits (prompts/updates.py, docs/reliability-control.md):
prompts of at most `MAX_PROMPT_CHARS` characters, at most `MAX_QUEUED_UPDATES` changes waiting for the
next chunk, requests of at most `MAX_REQUEST_BYTES` (larger ones up to `DROP_REQUEST_BYTES` get an error
answer; beyond that ZeroMQ drops the connection unread, so memory stays bounded).

The server binds to loopback only (`tcp://127.0.0.1:PORT`, `tcp://localhost:PORT`, `tcp://[::1]:PORT`,
or `ipc://`); anything else is refused unless `allow_remote=True` (`--control-allow-remote`), because
whoever reaches the socket can steer and stop the stream.

Seams for the runtime: `ControlServer(address, on_update=..., on_status=..., on_stop=...)` — see its
docstring — and `LiveController`, a ready-made `on_update` / status provider that forwards changes
to the producer through an `UpdateChannel` and mirrors them in a `LiveSettings` for status.
"""


from __future__ import annotations

from ..errors import ControlError
from .client import ControlClient, control_command, format_error
from .protocol import (DEFAULT_CONTROL_ADDRESS, DROP_REQUEST_BYTES, MAX_REQUEST_BYTES, check_control_address,
                       encode_answer, error_response, parse_request)
from .server import ControlServer, LiveController

__all__ = ["ControlClient", "ControlError", "ControlServer", "DEFAULT_CONTROL_ADDRESS", "DROP_REQUEST_BYTES",
           "LiveController", "MAX_REQUEST_BYTES", "check_control_address", "control_command", "encode_answer",
           "error_response", "format_error", "parse_request"]
