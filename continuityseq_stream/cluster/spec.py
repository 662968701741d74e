"""`StreamSpec`: what one stream of a multi-stream service is (its id and its `serve` flags).

A stream is created from JSON such as

    {"id": "venue-a", "flags": {"model": "demo", "prompt": "a red ball", "sink": ["file:a.mp4"]}}

`flags` are the `serve` command's own long flags, written without the dashes (`num-frames` and
`num_frames` both work): a string or number is `--flag VALUE`, `true` is `--flag`, `false`/`null`
leave it out, a list repeats the flag (`--sink A --sink B`). The values are checked where they are
for a single stream, by the `serve` command the stream runs: a bad one fails the create request with
that command's one-line message. Flags that say where and how the stream listens and saves belong to
the service (it chooses them for every stream) and are refused here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..errors import ConfigError

__all__ = ["StreamSpec", "RESERVED_FLAGS", "STREAM_ID"]

#: a stream id: lower-case letters, digits, '-' and '_', up to 48 characters, starting with a letter or digit
STREAM_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}\Z")
_FLAG = re.compile(r"[a-z0-9][a-z0-9-]{0,40}\Z")
#: set by the service for every stream: where it listens, its token, where it saves and resumes
RESERVED_FLAGS = frozenset({"host", "port", "token", "state-dir", "resume", "control", "control-allow-remote",
                            "osc", "osc-telemetry", "osc-allow-remote", "linger", "help"})
_KEYS = ("id", "flags")
_MAX_VALUE_CHARS = 4096


def _flag_name(name: Any) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"flags: the name {name!r} is not a string; use serve's long flag names, e.g. \"prompt\"")
    flag = name.lstrip("-").replace("_", "-")
    if not _FLAG.match(flag):
        raise ConfigError(f"flags: {name!r} is not a flag name; use serve's long flag names without dashes, "
                          f"e.g. \"prompt\", \"num-frames\" (see continuityseq-stream serve --help)")
    if flag in RESERVED_FLAGS:
        raise ConfigError(f"flags: {flag!r} is set by the service for every stream (it chooses where each "
                          f"stream listens and saves); leave it out")
    return flag


def _flag_values(flag: str, value: Any) -> list[str]:
    """The command-line words for one flag and its JSON value."""
    if value is None or value is False:
        return []
    if value is True:
        return [f"--{flag}"]
    items = value if isinstance(value, list) else [value]
    words: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ConfigError(f"flags: {flag!r} has the value {item!r}; use a string, a number, true, "
                              f"or a list of strings/numbers (a repeated flag)")
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"flags: {flag!r} has the value {item!r}; use a finite number")
        text = str(item)
        if len(text) > _MAX_VALUE_CHARS or "\x00" in text:
            raise ConfigError(f"flags: the value of {flag!r} is longer than {_MAX_VALUE_CHARS} characters "
                              f"or holds a NUL; send a shorter one")
        words += [f"--{flag}", text]
    return words


@dataclass(frozen=True)
class StreamSpec:
    """id: the stream's id (its URL path /streams/ID and its metrics label); flags: (flag, value)
    pairs in the order given (see the module docstring)."""

    id: str
    flags: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not STREAM_ID.match(self.id):
            raise ConfigError(f"id: got {self.id!r}; use 1-48 lower-case letters, digits, '-' or '_', "
                              f"starting with a letter or digit, e.g. \"venue-a\"")
        flags = tuple((_flag_name(name), value) for name, value in self.flags)
        for flag, value in flags:
            _flag_values(flag, value)  # checks the value's type
        object.__setattr__(self, "flags", flags)

    @classmethod
    def from_json(cls, body: Any, default_id: Optional[str] = None) -> "StreamSpec":
        """From a create request's JSON object; unknown keys are an error."""
        if not isinstance(body, Mapping):
            raise ConfigError('send a JSON object like {"id": "venue-a", "flags": {"model": "demo", "prompt": "..."}}')
        unknown = sorted(set(body) - set(_KEYS))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))}; a stream has {', '.join(_KEYS)}")
        flags = body.get("flags", {})
        if not isinstance(flags, Mapping):
            raise ConfigError('flags: use an object of serve flags, e.g. {"model": "demo", "prompt": "a red ball"}')
        stream_id = body.get("id", default_id)
        return cls(stream_id, tuple(flags.items()))

    def argv(self) -> list[str]:
        """The `serve` command-line words of the flags (without the service's own)."""
        words: list[str] = []
        for flag, value in self.flags:
            words += _flag_values(flag, value)
        return words

    def as_json(self) -> dict:
        return {"id": self.id, "flags": dict(self.flags)}

    def dumps(self) -> str:
        return json.dumps(self.as_json())
