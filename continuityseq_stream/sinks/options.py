"""Strict parsing of the options in a `--sink` URI's query: a bad value is a `ConfigError` naming the
sink, the option and what would work (unknown option names are checked by each sink)."""

from __future__ import annotations

from ..errors import ConfigError


def parse_bool(uri: str, name: str, value: str) -> bool:
    """'1'/'true'/'yes'/'on' or '0'/'false'/'no'/'off'/'' (any case)."""
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"--sink {uri!r}: option {name}={value!r} is not a boolean; use {name}=1 or {name}=0")


def parse_number(uri: str, name: str, value: str, kind, lo, hi):
    """`kind(value)` (int or float) within [lo, hi]."""
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or not lo <= number <= hi:
        raise ConfigError(f"--sink {uri!r}: option {name}={value!r} must be a {kind.__name__} in [{lo}, {hi}]")
    return number
