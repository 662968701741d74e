"""Prompt files and time stamps: one prompt per line, an optional negative after `|`, optional
`mm:ss` / `h:mm:ss` stamps (the format: `parse_prompt_text`, docs/prompts.md).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import ConfigError

#: separator between a prompt and its negative prompt on one line of a prompt file
NEGATIVE_SEPARATOR = "|"
#: escapes understood in prompt files: `\|` `\#` `\:` `\\`
_ESCAPES = {"|": "|", "#": "#", ":": ":", "\\": "\\"}
#: tolerance when comparing an output time (first_frame / fps) with a stamp
_TIME_EPS = 1e-6
#: a time stamp at the start of a line: digits and colons, then whitespace or the end of the line
_STAMP_RE = re.compile(r"^(\d+(?::\d+){1,2}(?:\.\d+)?)(?=\s|$)")


# ------------------------------------------------------------------------------------------------
# time stamps
# ------------------------------------------------------------------------------------------------
def parse_timestamp(text: str) -> float:
    """Seconds of a `mm:ss`, `h:mm:ss` stamp (seconds may have a fraction: `1:02.5`).

    Minutes may exceed 59 in the two-part form (`90:00`); with hours, minutes and seconds must be
    below 60. Raises ValueError with what would work; callers add the file and line.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"time stamp {text!r} is not mm:ss or h:mm:ss")
    try:
        seconds = float(parts[-1])
        whole = [int(p) for p in parts[:-1]]
    except ValueError:
        raise ValueError(f"time stamp {text!r} is not mm:ss or h:mm:ss") from None
    if not 0 <= seconds < 60:
        raise ValueError(f"time stamp {text!r} has {parts[-1]} seconds; seconds must be below 60")
    if len(whole) == 2:
        hours, minutes = whole
        if minutes >= 60:
            raise ValueError(f"time stamp {text!r} has {minutes} minutes; with hours, minutes must be below 60")
    else:
        hours, minutes = 0, whole[0]
    return hours * 3600.0 + minutes * 60.0 + seconds


def format_timestamp(seconds: float) -> str:
    """`h:mm:ss` or `mm:ss` (with a fraction when needed) — the inverse of `parse_timestamp`."""
    whole = int(seconds)
    frac = seconds - whole
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    sec = f"{s:02d}" if frac < _TIME_EPS else f"{s + frac:06.3f}".rstrip("0")
    return f"{h}:{m:02d}:{sec}" if h else f"{m:02d}:{sec}"


# ------------------------------------------------------------------------------------------------
# prompt files
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptEntry:
    """One line of a prompt file.

    negative: the line's negative prompt, or None to use the run's negative prompt.
    time: output time in seconds from which this prompt shows (timed files), else None.
    line: 1-based line number in the file (0 when built in code), for messages.
    """

    prompt: str
    negative: Optional[str] = None
    time: Optional[float] = None
    line: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ConfigError(f"prompt entry: got {self.prompt!r}; give a non-empty prompt")
        if self.negative is not None and not isinstance(self.negative, str):
            raise ConfigError(f"prompt entry {self.prompt!r}: negative {self.negative!r} must be text or None")
        if self.time is not None and not (isinstance(self.time, (int, float)) and self.time >= 0):
            raise ConfigError(f"prompt entry {self.prompt!r}: time {self.time!r} must be seconds >= 0 or None")


@dataclass(frozen=True)
class ParsedPrompts:
    """What a prompt file says: its entries and, for timed files, an optional loop end time."""

    entries: Tuple[PromptEntry, ...]
    end_time: Optional[float] = None

    @property
    def timed(self) -> bool:
        return self.entries[0].time is not None


def _split_unescaped(text: str, where: str) -> List[str]:
    """Split `text` at unescaped `|` and resolve the escapes `\\|`, `\\#`, `\\:`, `\\\\`."""
    parts: List[str] = []
    cur: List[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if nxt not in _ESCAPES:
                shown = "\\" + nxt if nxt else "\\ at the end of the line"
                raise ConfigError(
                    f"{where}: unknown escape {shown!r}; escapes are \\| (a literal |), \\# (a literal #), "
                    f"\\: (a literal :) and \\\\ (a backslash)"
                )
            cur.append(_ESCAPES[nxt])
            i += 2
            continue
        if ch == NEGATIVE_SEPARATOR:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def parse_prompt_text(text: str, source: str = "<prompts>") -> ParsedPrompts:
    """Parse the text of a prompt file.

    Format, line by line:

    * blank lines and lines whose first non-blank character is `#` are skipped;
    * `PROMPT` or `PROMPT | NEGATIVE` — the first unescaped `|` separates the negative prompt
      (a second one is an error; write `\\|` for a literal pipe). `PROMPT |` gives an explicitly
      empty negative prompt; without `|` the run's negative prompt is used;
    * optionally every line starts with a time stamp, `mm:ss` or `h:mm:ss` (`00:30 a prompt`,
      `1:02:03.5 ...`): then the prompts switch by output time instead of chunk count. Either every
      prompt line has a stamp or none does; stamps must increase. A last line with only a stamp marks
      where `--loop-prompts` starts over. A prompt that really starts with such a token is written
      with an escaped colon (`12\\:30 at night`).
    * escapes: `\\|`, `\\#` (a prompt starting with `#`), `\\:`, `\\\\`; any other backslash is an error.

    There is no `90s` stamp form on purpose: "90s cartoon" would be read as a time.
    Raises ConfigError naming `source:line` and what would work.
    """
    entries: List[PromptEntry] = []
    end_time: Optional[float] = None
    end_line = 0
    first_timed: Optional[Tuple[int, bool]] = None  # (line, timed) of the first prompt line
    for lineno, raw in enumerate(text.splitlines(), start=1):
        where = f"{source}:{lineno}"
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if end_time is not None:
            raise ConfigError(
                f"{where}: a line follows the bare time stamp on line {end_line}; a line with only a "
                f"time stamp marks the end of the file's loop and must be the last line"
            )
        stamp: Optional[float] = None
        rest = stripped
        m = _STAMP_RE.match(stripped)
        if m:
            try:
                stamp = parse_timestamp(m.group(1))
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}; e.g. 00:30 or 1:02:03") from None
            rest = stripped[m.end():].strip()
        timed = stamp is not None
        if first_timed is None:
            first_timed = (lineno, timed)
        elif first_timed[1] != timed:
            if timed:
                msg = f"this line has a time stamp but line {first_timed[0]} has none"
            else:
                msg = f"this line has no time stamp but line {first_timed[0]} has one"
            raise ConfigError(
                f"{where}: {msg}; stamp every prompt line (mm:ss PROMPT) or none "
                f"(write 12\\:30 for a prompt that starts with a time)"
            )
        if timed:
            previous = end_time if end_time is not None else (entries[-1].time if entries else None)
            if previous is not None and stamp <= previous + _TIME_EPS:
                raise ConfigError(
                    f"{where}: time stamp {m.group(1)} is not after the previous one "
                    f"({format_timestamp(previous)}); stamps must increase from line to line"
                )
            if not rest:
                if not entries:
                    raise ConfigError(f"{where}: a time stamp without a prompt; write `{m.group(1)} PROMPT`")
                end_time, end_line = stamp, lineno
                continue
        parts = _split_unescaped(rest, where)
        if len(parts) > 2:
            raise ConfigError(
                f"{where}: more than one '|' on the line; write PROMPT | NEGATIVE, and \\| for a literal pipe"
            )
        prompt = parts[0].strip()
        if not prompt:
            raise ConfigError(f"{where}: empty prompt; write PROMPT or PROMPT | NEGATIVE")
        negative = parts[1].strip() if len(parts) == 2 else None
        entries.append(PromptEntry(prompt=prompt, negative=negative, time=stamp, line=lineno))
    if not entries:
        raise ConfigError(f"{source}: no prompts in the file; write one prompt per line")
    return ParsedPrompts(entries=tuple(entries), end_time=end_time)


def read_prompt_file(path: str | Path) -> ParsedPrompts:
    """Read and parse a prompt file (UTF-8). Errors name `--prompts-file` or `file:line`."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{{prompts_file}}: cannot read {str(path)!r}: {exc.strerror or exc}; give a readable text file", names=("prompts_file",)) from None
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text; save the prompt file as UTF-8") from None
    return parse_prompt_text(text, source=str(path))
