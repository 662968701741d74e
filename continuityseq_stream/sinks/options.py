"""Strict parsing of the options in a `--sink` URI's query: a bad value is a `ConfigError` naming the
sink, the option and what would work (unknown option names are checked by each sink).

Every check happens when the URI is parsed, before the producer starts: a value that would only fail
when ffmpeg or x264 first sees it (a bogus preset, a segment pattern that does not format) is refused
here. Messages start with the `{sinks}` placeholder (errors.py): Python callers read `sinks`, the CLI
`--sink`.
"""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import ConfigError

#: libx264's speed presets (x264 --fullhelp); anything else fails inside the encoder at the first frame
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")


def sink_error(uri: str, problem: str) -> ConfigError:
    """The ConfigError for a bad `--sink` value: "--sink 'URI': problem" (`sinks 'URI': ...` in Python)."""
    return ConfigError(f"{{sinks}} {uri!r}: {problem}", names=("sinks",))


def parse_bool(uri: str, name: str, value: str) -> bool:
    """'1'/'true'/'yes'/'on' or '0'/'false'/'no'/'off'/'' (any case)."""
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise sink_error(uri, f"option {name}={value!r} is not a boolean; use {name}=1 or {name}=0")


def parse_number(uri: str, name: str, value: str, kind, lo, hi):
    """`kind(value)` (int or float) within [lo, hi]; NaN and infinities are refused."""
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or not lo <= number <= hi:
        what = "an integer" if kind is int else "a number"
        raise sink_error(uri, f"option {name}={value!r} must be {what} in [{lo:g}, {hi:g}]")
    return number


def parse_choice(uri: str, name: str, value: str, choices: Sequence[str]) -> str:
    """`value` when it is one of `choices` (exact spelling)."""
    if value not in choices:
        raise sink_error(uri, f"option {name}={value!r} is not one of {', '.join(choices)}")
    return value
