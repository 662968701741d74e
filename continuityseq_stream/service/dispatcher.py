"""The one command dispatcher behind every control surface (HTTP, OSC, the WebRTC data channel).

Every surface turns what it received into the ZeroMQ control protocol's command dict (control.py:
`{"command": "set_prompt", "prompt": ..., ...}`) and calls `Dispatcher.dispatch`, which

1. checks it with `prompts.validate_update` (the same rules and one-line messages the ZeroMQ socket
   gives: a bad command is answered at once, also while the stream is still starting), then
2. forwards it to the run's own `ControlServer` through a `ControlClient`, so that the runtime's
   `LiveController` is the only place where a change is applied and the ZeroMQ socket is just one
   more surface of the same dispatcher.

The answer is always the control protocol's dict: `{"ok": true, "command": ..., ...}` or
`{"ok": false, "error": "<one line>", "field": ...}`; `"unavailable": true` marks an error because the
stream is not answering (still loading, or ended), which HTTP turns into 503 instead of 400.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

from ..control import ControlClient, ControlError, error_response
from ..errors import ContinuitySeqError
from ..prompts import UpdateError, validate_update

__all__ = ["Dispatcher", "command_from"]


def command_from(name: str, fields: Any = None) -> dict:
    """A command dict for `name` with `fields` (a surface's arguments, a JSON object). Raises
    UpdateError when `fields` is not an object or names another command (the surface already
    chose the command: a second one in the body would be ambiguous)."""
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        raise UpdateError(f"{name}: the body must be a JSON object of fields, got {type(fields).__name__}", None)
    if "command" in fields and fields["command"] != name:
        raise UpdateError(f"{name}: the body names another command ({str(fields['command'])[:40]!r}); "
                          f"leave 'command' out, the address already says {name}", "command")
    return {**fields, "command": name}


class Dispatcher:
    """Validates a command and has the running stream's control server apply it (thread-safe).

    address: the run's --control address (serve gives the runtime a private ipc:// socket when the
    user gives none). timeout: seconds to wait for the runtime's answer.
    """

    def __init__(self, address: str, timeout: float = 3.0) -> None:
        self.address = address
        self._client = ControlClient(address, timeout)
        self._lock = threading.Lock()  # one REQ socket: one request at a time
        self.commands = 0
        self.errors = 0

    def dispatch(self, message: Any) -> dict:
        """Answer one command (a dict as the ZeroMQ protocol's); never raises."""
        self.commands += 1
        try:
            update = validate_update(message)
        except UpdateError as exc:
            return self._error(str(exc), exc.field)
        if self.address.startswith("ipc://") and not os.path.exists(self.address[len("ipc://"):]):
            # the runtime binds its socket just before the producer starts: not there = not yet (or no more)
            return self._error("the stream is not answering (still starting, or ended)", None, unavailable=True)
        try:
            with self._lock:
                answer = self._client.request(update)
        except ControlError as exc:
            return self._error(f"the stream is not answering (still starting, or ended): {exc}", None,
                               unavailable=True)
        except ContinuitySeqError as exc:
            return self._error(str(exc), None, unavailable=True)
        if not answer.get("ok"):
            self.errors += 1
        return answer

    def _error(self, message: str, field: Optional[str], unavailable: bool = False) -> dict:
        self.errors += 1
        answer = error_response(" ".join(message.split()), field)
        if unavailable:
            answer["unavailable"] = True
        return answer

    def close(self) -> None:
        with self._lock:
            self._client.close()
