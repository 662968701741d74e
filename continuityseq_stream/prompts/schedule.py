"""Prompt schedules, embedding blends and the live settings a running stream re-reads per chunk.

Three layers, each usable on its own:

* **Prompt files** (`parse_prompt_text`, `PromptSchedule.from_file`): one prompt per line, blank lines
  and `#` comments skipped, an optional negative prompt after a `|`, optional time stamps
  (`mm:ss` / `h:mm:ss`) at the start of every line. The format is documented in the README
  (section "Prompt schedules and live control") and in `parse_prompt_text`.
* **Schedules and blends** (`PromptSchedule`, `PromptBlend`, `PromptBlender`): which prompts, with which
  weights, a chunk is generated with, and the text embeddings for that mix. Embeddings of a prompt are
  computed once and cached; a blend is the weighted sum of its prompts' embeddings.
* **Live settings** (`validate_update`, `LiveSettings`, `UpdateChannel`): the per-chunk parameters a
  running stream may change (prompt with a transition, negative prompt, guidance scale, CN/CX, seed)
  plus pause/stop. Updates are plain dicts so they cross process boundaries through a
  `multiprocessing` queue; each one takes effect at a chunk boundary, and whoever submits it learns
  which chunk that is.

Precedence, from weakest to strongest: the run's config (`-p`, `-n`, `-g`, `-CN/-CX`, `-r`) < the prompt
file schedule < live updates. A live `set_prompt` applied at chunk k replaces the file schedule from
chunk k on for the rest of the run (during its transition the picture cross-fades from what the
schedule would have shown). A live `set_negative_prompt` replaces every older negative, including
per-line negatives of the file. Among live updates, the newer one wins.

Nothing here imports torch: blends are computed with the tensors' own arithmetic.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..errors import ChannelError, ConfigError, ContinuitySeqError, UpdateError  # noqa: F401 (re-exported)
from ..ipc import PipeLock

#: separator between a prompt and its negative prompt on one line of a prompt file
NEGATIVE_SEPARATOR = "|"
#: chunks per prompt of an untimed prompt file when `--prompts-interval` is not given
DEFAULT_PROMPTS_INTERVAL = 4
#: escapes understood in prompt files: `\|` `\#` `\:` `\\`
_ESCAPES = {"|": "|", "#": "#", ":": ":", "\\": "\\"}
#: a time stamp at the start of a line: digits and colons, then whitespace or the end of the line
_STAMP_RE = re.compile(r"^(\d+(?::\d+){1,2}(?:\.\d+)?)(?=\s|$)")
#: tolerance when comparing an output time (first_frame / fps) with a stamp
_TIME_EPS = 1e-6
#: prompts weighing no more than this in a blend are left out of it
_MIN_WEIGHT = 1e-12


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
        raise ConfigError(f"--prompts-file: cannot read {str(path)!r}: {exc.strerror or exc}; give a readable text file") from None
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text; save the prompt file as UTF-8") from None
    return parse_prompt_text(text, source=str(path))


# ------------------------------------------------------------------------------------------------
# blends
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlendTerm:
    """One prompt of a blend with its weight; negative None means the run's negative prompt."""

    prompt: str
    negative: Optional[str]
    weight: float


@dataclass(frozen=True)
class PromptBlend:
    """A convex mix of prompts: the text embeddings of a chunk are sum(weight * E(prompt)).

    Terms keep their order (older prompt first), weights are > 0 and sum to 1; equal
    (prompt, negative) pairs are merged. Build with `single` or `pair`.
    """

    terms: Tuple[BlendTerm, ...]

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("PromptBlend needs at least one term")
        total = sum(t.weight for t in self.terms)
        if any(t.weight <= 0 for t in self.terms) or abs(total - 1.0) > 1e-6:
            raise ValueError(f"PromptBlend weights must be > 0 and sum to 1, got {[t.weight for t in self.terms]}")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def single(cls, prompt: str, negative: Optional[str] = None) -> "PromptBlend":
        return cls((BlendTerm(prompt, negative, 1.0),))

    @classmethod
    def pair(
        cls, a: str, b: str, weight: float, negative_a: Optional[str] = None, negative_b: Optional[str] = None
    ) -> "PromptBlend":
        """(1 - weight) * a + weight * b."""
        return cls.from_weighted([(a, negative_a, 1.0 - weight), (b, negative_b, weight)])

    @classmethod
    def from_weighted(cls, items: Iterable[Tuple[str, Optional[str], float]]) -> "PromptBlend":
        """Merge equal (prompt, negative) pairs, drop zero weights, keep first-seen order."""
        merged: "OrderedDict[Tuple[str, Optional[str]], float]" = OrderedDict()
        for prompt, negative, weight in items:
            if weight <= _MIN_WEIGHT:
                continue
            merged[(prompt, negative)] = merged.get((prompt, negative), 0.0) + float(weight)
        total = sum(merged.values())
        return cls(tuple(BlendTerm(p, n, w / total) for (p, n), w in merged.items()))

    # -- derived ------------------------------------------------------------------------------
    def mix_toward(self, target: BlendTerm, weight: float) -> "PromptBlend":
        """(1 - weight) * self + weight * target."""
        items = [(t.prompt, t.negative, t.weight * (1.0 - weight)) for t in self.terms]
        items.append((target.prompt, target.negative, weight))
        return PromptBlend.from_weighted(items)

    def with_negatives(self, resolve: Callable[[BlendTerm], str]) -> "PromptBlend":
        return PromptBlend.from_weighted((t.prompt, resolve(t), t.weight) for t in self.terms)

    @property
    def prompts(self) -> Tuple[str, ...]:
        return tuple(t.prompt for t in self.terms)

    @property
    def dominant(self) -> str:
        """The prompt with the largest weight (the newest one on a tie)."""
        best = self.terms[0]
        for t in self.terms[1:]:
            if t.weight >= best.weight - 1e-12:
                best = t
        return best.prompt

    @property
    def weight_by_prompt(self) -> dict:
        out: dict = {}
        for t in self.terms:
            out[t.prompt] = out.get(t.prompt, 0.0) + t.weight
        return out

    @property
    def description(self) -> str:
        """What `Chunk.prompt` records: the prompt, or `a (75%) + b (25%)` for a mix."""
        if len(self.terms) == 1:
            return self.terms[0].prompt
        return " + ".join(f"{t.prompt} ({t.weight:.0%})" for t in self.terms)


class PromptBlender:
    """Text embeddings of a blend, computing each prompt's embeddings only once.

    `encode(prompt) -> Tensor` is the pipeline's prompt encoder (e.g. CLIP last hidden state
    [1, 77, 1024]). Results are kept in an LRU cache of `cache_size` prompts so a never-ending run
    with many live prompts stays bounded. Negatives of None are encoded as `default_negative`.
    """

    def __init__(self, encode: Callable[[str], Any], cache_size: int = 64, default_negative: str = "") -> None:
        if not callable(encode):
            raise TypeError("PromptBlender needs a callable encode(prompt) -> Tensor")
        if not isinstance(cache_size, int) or cache_size < 2:
            raise ConfigError(f"PromptBlender cache_size: got {cache_size!r}; use at least 2 (a blend needs two prompts)")
        self._encode = encode
        self._cache: "OrderedDict[str, Any]" = OrderedDict()
        self._cache_size = cache_size
        self.default_negative = default_negative
        #: how many times `encode` ran (tests and status use it)
        self.encode_calls = 0

    def encode(self, prompt: str) -> Any:
        """Embeddings of one prompt, from the cache when possible."""
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        value = self._encode(prompt)
        self.encode_calls += 1
        self._cache[prompt] = value
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return value

    def mix(self, weighted: Sequence[Tuple[str, float]]) -> Any:
        """sum(weight * E(prompt)); a single prompt returns its cached tensor unchanged."""
        if len(weighted) == 1:
            return self.encode(weighted[0][0])
        tensors = [self.encode(p) for p, _ in weighted]
        shape = getattr(tensors[0], "shape", None)
        for (p, _), t in zip(weighted, tensors):
            if getattr(t, "shape", None) != shape:
                raise ContinuitySeqError(
                    f"cannot blend prompt {p!r}: its embeddings have shape {tuple(t.shape)}, others {tuple(shape)}; "
                    f"the encoder must pad every prompt to the same length"
                )
        out = tensors[0] * weighted[0][1]
        for t, (_, w) in zip(tensors[1:], weighted[1:]):
            out = out + t * w
        return out

    def __call__(self, blend: PromptBlend) -> Tuple[Any, Any]:
        """(conditional, unconditional) embeddings of a blend; the negatives mix with the same weights."""
        cond = self.mix([(t.prompt, t.weight) for t in blend.terms])
        neg: "OrderedDict[str, float]" = OrderedDict()
        for t in blend.terms:
            n = self.default_negative if t.negative is None else t.negative
            neg[n] = neg.get(n, 0.0) + t.weight
        uncond = self.mix(list(neg.items()))
        return cond, uncond


# ------------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptSchedule:
    """Which prompt(s) each chunk is generated with, from a prompt file.

    Untimed entries (chunk-count schedule), interval N = `--prompts-interval`:
        chunk c lies in segment i = c // N at phase r = c % N and is generated with
        (1 - w) * P[i] + w * P[i+1], w = r / N. So chunk i*N is exactly P[i], and the blend toward
        P[i+1] rises by 1/N per chunk. After the last prompt: it stays on P[n-1] (default) or, with
        `loop`, blends on to P[0] and starts over (indices mod n). N = 1 switches without blending.
    Timed entries (output-time schedule): the chunk whose first frame is shown at t = first_frame / fps
        uses the last entry with stamp <= t (the first entry also covers any time before its stamp).
        The switch is a hard cut at the first chunk starting at or after the stamp, unless
        `transition_seconds` > 0: then a chunk starting d seconds after the stamp is
        (1 - w) * previous + w * new, w = d / transition_seconds (until w reaches 1).
        With `loop`, the timeline repeats every `end_time` seconds (a last line with only a stamp);
        `interval` must be None for timed schedules.
    """

    entries: Tuple[PromptEntry, ...]
    interval: Optional[int] = None
    loop: bool = False
    end_time: Optional[float] = None
    transition_seconds: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        if not self.entries or not all(isinstance(e, PromptEntry) for e in self.entries):
            raise ConfigError("--prompts-file: give at least one prompt")
        timed = self.entries[0].time is not None
        if any((e.time is not None) != timed for e in self.entries):
            raise ConfigError("--prompts-file: either every prompt has a time stamp or none has")
        if not isinstance(self.loop, bool):
            raise ConfigError(f"--loop-prompts: got {self.loop!r}; use True or False")
        if not (isinstance(self.transition_seconds, (int, float)) and self.transition_seconds >= 0):
            raise ConfigError(f"prompt transition_seconds: got {self.transition_seconds!r}; use seconds >= 0")
        if timed:
            if self.interval is not None:
                raise ConfigError(
                    f"--prompts-interval: got {self.interval!r} but the prompt file has time stamps, which "
                    f"switch by output time; drop --prompts-interval or the stamps"
                )
            times = [e.time for e in self.entries]
            if any(b <= a for a, b in zip(times, times[1:])):
                raise ConfigError("--prompts-file: time stamps must increase from line to line")
            if self.end_time is not None and self.end_time <= times[-1]:
                raise ConfigError(
                    f"--prompts-file: the loop end {format_timestamp(self.end_time)} must come after the last "
                    f"stamp {format_timestamp(times[-1])}"
                )
            if self.loop and self.end_time is None:
                raise ConfigError(
                    "--loop-prompts: a time-stamped prompt file needs a last line with only a time stamp "
                    "(e.g. `03:00`) saying when the loop starts over"
                )
        else:
            if self.interval is not None and (
                isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1
            ):
                raise ConfigError(f"--prompts-interval: got {self.interval!r}; use a number of chunks >= 1")
            if self.end_time is not None:
                raise ConfigError("--prompts-file: a loop end time needs time-stamped prompts")
            if self.transition_seconds:
                raise ConfigError(
                    "prompt transition_seconds applies to time-stamped files; untimed files blend over "
                    "--prompts-interval chunks"
                )

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_parsed(cls, parsed: ParsedPrompts, **options: Any) -> "PromptSchedule":
        return cls(entries=parsed.entries, end_time=parsed.end_time, **options)

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> "PromptSchedule":
        """Read a prompt file; options: interval, loop, transition_seconds (unknown ones are errors)."""
        return cls.from_parsed(read_prompt_file(path), **options)

    @classmethod
    def from_text(cls, text: str, source: str = "<prompts>", **options: Any) -> "PromptSchedule":
        return cls.from_parsed(parse_prompt_text(text, source), **options)

    # -- queries ------------------------------------------------------------------------------
    @property
    def timed(self) -> bool:
        return self.entries[0].time is not None

    @property
    def effective_interval(self) -> int:
        return DEFAULT_PROMPTS_INTERVAL if self.interval is None else self.interval

    def blend_at(self, chunk: int, start_time: Optional[float] = None) -> PromptBlend:
        """The blend for chunk `chunk`; timed schedules need its output start time in seconds."""
        if not isinstance(chunk, int) or chunk < 0:
            raise ValueError(f"chunk index must be an int >= 0, got {chunk!r}")
        if self.timed:
            if start_time is None:
                raise ValueError("a time-stamped schedule needs the chunk's start_time (first_frame / fps)")
            return self._blend_timed(float(start_time))
        return self._blend_counted(chunk)

    def weights_at(self, chunk: int, start_time: Optional[float] = None) -> Tuple[str, str, float]:
        """(prompt_a, prompt_b, w): the chunk is (1 - w) * a + w * b (a == b and w == 0 when pure)."""
        terms = self.blend_at(chunk, start_time).terms
        if len(terms) == 1:
            return terms[0].prompt, terms[0].prompt, 0.0
        return terms[0].prompt, terms[1].prompt, terms[1].weight

    def _pair(self, a: PromptEntry, b: PromptEntry, w: float) -> PromptBlend:
        if w <= 0 or a == b:
            return PromptBlend.single(a.prompt, a.negative)
        return PromptBlend.pair(a.prompt, b.prompt, w, a.negative, b.negative)

    def _blend_counted(self, chunk: int) -> PromptBlend:
        n, N = len(self.entries), self.effective_interval
        i, r = divmod(chunk, N)
        if self.loop:
            return self._pair(self.entries[i % n], self.entries[(i + 1) % n], r / N)
        if i >= n - 1:
            return self._pair(self.entries[-1], self.entries[-1], 0.0)
        return self._pair(self.entries[i], self.entries[i + 1], r / N)

    def _locate(self, t: float) -> Tuple[int, int, float]:
        """(cycle, entry index, seconds since that entry's stamp) for output time t."""
        cycle = 0
        if self.loop:
            cycle = int(math.floor((t + _TIME_EPS) / self.end_time))
            t = t - cycle * self.end_time
        j = 0
        for idx, e in enumerate(self.entries):
            if e.time <= t + _TIME_EPS:
                j = idx
        if t + _TIME_EPS < self.entries[0].time and cycle > 0:
            # before the first stamp of a later cycle: the last prompt of the previous cycle goes on
            return cycle - 1, len(self.entries) - 1, t + self.end_time - self.entries[-1].time
        return cycle, j, max(0.0, t - self.entries[j].time)

    def _blend_timed(self, t: float) -> PromptBlend:
        cycle, j, since = self._locate(t)
        entry = self.entries[j]
        if self.transition_seconds <= 0 or since >= self.transition_seconds - _TIME_EPS:
            return PromptBlend.single(entry.prompt, entry.negative)
        if j > 0:
            prev = self.entries[j - 1]
        elif cycle > 0:
            prev = self.entries[-1]
        else:
            return PromptBlend.single(entry.prompt, entry.negative)
        return self._pair(prev, entry, since / self.transition_seconds)

    def upcoming(self, chunk: int, start_time: Optional[float] = None, count: int = 5) -> List[dict]:
        """The next `count` prompt switches after `chunk`, for status: untimed entries give the chunk
        where the prompt is reached in full, timed ones the output time of the stamp."""
        out: List[dict] = []
        n = len(self.entries)
        if self.timed:
            if start_time is None:
                return out
            cycle, j, _ = self._locate(float(start_time))
            while len(out) < count:
                j += 1
                if j >= n:
                    if not self.loop:
                        break
                    cycle, j = cycle + 1, 0
                e = self.entries[j]
                t = e.time + cycle * (self.end_time or 0.0)
                out.append({"prompt": e.prompt, "negative_prompt": e.negative, "at_seconds": t, "at": format_timestamp(t)})
            return out
        N = self.effective_interval
        i = chunk // N
        while len(out) < count:
            i += 1
            if i >= n and not self.loop:
                break
            e = self.entries[i % n]
            out.append({"prompt": e.prompt, "negative_prompt": e.negative, "at_chunk": i * N})
        return out


# ------------------------------------------------------------------------------------------------
# live updates
# ------------------------------------------------------------------------------------------------
#: commands that change per-chunk settings -> {field: required?}
SETTINGS_COMMANDS = {
    "set_prompt": {"prompt": True, "transition": False, "negative_prompt": False},
    "set_negative_prompt": {"negative_prompt": True},
    "set_guidance": {"guidance_scale": True},
    "set_conditioning": {"min": True, "max": True},
    "set_seed": {"seed": True},
}
#: commands about the run itself (handled by the channel / runtime, not by LiveSettings)
RUN_COMMANDS = {"pause": {}, "resume": {}, "stop": {}, "status": {}}
COMMANDS = {**SETTINGS_COMMANDS, **RUN_COMMANDS}
_MAX_SEED = 2**63 - 1

# Limits of live updates. They protect a running stream from its control clients: each update is kept
# until its chunk is made, and one absurd value would spoil the rest of the run (a guidance of 1e308
# overflows to NaN latents: on the tiny pipeline that chunk and every later one, conditioned on it, came
# out black even after the guidance was set back). The run's own config is not held to them
# (`validate_update(..., limits=False)`). docs/reliability-control.md lists them.
#: characters of a live prompt / negative prompt. CLIP reads 77 tokens (about 300 characters of
#: English) and ignores the rest; 1,000 leaves room for long words and punctuation.
MAX_PROMPT_CHARS = 1000
#: chunks a live `set_prompt` transition may take (hours of video at the usual chunk lengths)
MAX_TRANSITION_CHUNKS = 10_000
#: classifier-free guidance scale of a live `set_guidance` (the seed's default is 30)
MAX_GUIDANCE_SCALE = 100.0
#: conditioning frames of a live `set_conditioning` (k above a chunk's frame count means all of them)
MAX_CONDITIONING_FRAMES = 1000
#: changes the runtime may queue for the producer before it takes them at the next chunk boundary
MAX_QUEUED_UPDATES = 32
#: live prompts blending at once (transitions still fading in): each one is encoded for every chunk
MAX_BLEND_PROMPTS = 16
#: bytes of one queued update as UTF-8 JSON: two prompts of MAX_PROMPT_CHARS at <= 6 bytes a character
#: (JSON's \u escapes of control characters) plus the other fields
_UPDATE_BYTES = 16 * 1024


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shown(value: Any, limit: int = 60) -> str:
    """repr(value), shortened: error answers and log lines stay one short line whatever was sent."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python converts to text
        return f"an {type(value).__name__} too large to show"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_text(command: str, key: str, value: str, limits: bool) -> str:
    """A prompt field: valid Unicode (a lone surrogate such as JSON's "\\ud800" cannot be encoded and
    would crash the producer) and, with `limits`, at most MAX_PROMPT_CHARS characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UpdateError(
            f"{command}: {key!r} contains {value[exc.start]!r} at character {exc.start}, a lone surrogate "
            f"that is not text; send valid Unicode", key) from None
    value = value.strip()
    if limits and len(value) > MAX_PROMPT_CHARS:
        raise UpdateError(
            f"{command}: {key!r} has {len(value)} characters; at most {MAX_PROMPT_CHARS} (CLIP reads only its "
            f"first 77 tokens, about 300 characters of English)", key)
    return value


def _check_number(command: str, key: str, value: Any, limits: bool) -> float:
    """guidance_scale: a finite number >= 0 (<= MAX_GUIDANCE_SCALE with `limits`)."""
    ok = (_is_int(value) or isinstance(value, float)) and value >= 0
    if ok:
        try:
            value = float(value)  # an integer too large for a float raises OverflowError
        except OverflowError:
            ok = False
    ok = ok and math.isfinite(value) and (not limits or value <= MAX_GUIDANCE_SCALE)
    if not ok:
        upper = f" and <= {MAX_GUIDANCE_SCALE:g}" if limits else ", finite"
        raise UpdateError(
            f"{command}: {key!r} must be a number >= 0{upper} (<= 1 turns guidance off), got {_shown(value)}", key)
    return value


def _check_int(command: str, key: str, value: Any, low: int, high: int, what: str) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise UpdateError(f"{command}: {key!r} must be {what} in [{low}, {high}], got {_shown(value)}", key)
    return value


def validate_update(message: Mapping[str, Any], *, limits: bool = True) -> dict:
    """Check a command dict and return a normalized copy (plain types, picklable, JSON-able).

    Rules match GenerationConfig: prompt non-empty text; negative_prompt text (may be empty);
    transition an int >= 0 chunks (0 and 1 both switch at once); guidance_scale a finite number >= 0;
    1 <= min <= max integers; seed an int in [0, 2**63 - 1]; text must be valid Unicode. With `limits`
    (live updates; the run's own config passes False) the ceilings above apply too: prompt length,
    transition, guidance and conditioning frames. Unknown commands or fields are errors.
    Raises UpdateError with `.field` set; messages show at most a short piece of a bad value.
    """
    if not isinstance(message, Mapping):
        raise UpdateError(f"a command must be a JSON object, got {type(message).__name__}", None)
    command = message.get("command")
    if not isinstance(command, str):
        raise UpdateError(f"'command' must be one of {', '.join(COMMANDS)}, got {_shown(command)}", "command")
    if command not in COMMANDS:
        raise UpdateError(f"unknown command {_shown(command)}; known commands: {', '.join(COMMANDS)}", "command")
    spec = COMMANDS[command]
    for key in message:
        if key != "command" and key not in spec:
            allowed = ", ".join(spec) if spec else "no fields"
            raise UpdateError(f"{command}: unknown field {_shown(key)}; {command} takes {allowed}", str(key)[:60])
    for key, required in spec.items():
        if required and key not in message:
            raise UpdateError(f"{command}: missing field {key!r}", key)
    frames_max = MAX_CONDITIONING_FRAMES if limits else 2**63 - 1
    out: dict = {"command": command}
    for key, value in message.items():
        if key == "command":
            continue
        if key == "prompt":
            if not isinstance(value, str) or not value.strip():
                raise UpdateError(f"{command}: 'prompt' must be non-empty text, got {_shown(value)}", key)
            value = _check_text(command, key, value, limits)
        elif key == "negative_prompt":
            if value is None and command == "set_prompt":
                continue  # explicit null: keep the current negative prompt
            if not isinstance(value, str):
                raise UpdateError(f"{command}: 'negative_prompt' must be text (may be empty), got {_shown(value)}", key)
            value = _check_text(command, key, value, limits)
        elif key == "transition":
            top = MAX_TRANSITION_CHUNKS if limits else 2**63 - 1
            value = _check_int(command, key, value, 0, top, "a whole number of chunks")
        elif key == "guidance_scale":
            value = _check_number(command, key, value, limits)
        elif key in ("min", "max"):
            value = _check_int(command, key, value, 1, frames_max, "a whole number of conditioning frames")
        elif key == "seed":
            value = _check_int(command, key, value, 0, _MAX_SEED, "an integer")
        out[key] = value
    if command == "set_conditioning" and out["max"] < out["min"]:
        raise UpdateError(f"set_conditioning: 'max' ({out['max']}) must be >= 'min' ({out['min']})", "max")
    return out


@dataclass(frozen=True)
class ChunkSettings:
    """Everything that may change between chunks, fixed for chunk `index`.

    blend: the prompts and weights (negatives resolved to text). reseed: a live set_seed takes effect
    at this chunk — the pipeline re-seeds its noise generator and conditioning RNG with `seed` before
    generating it (as if the run had started with that seed).
    """

    index: int
    blend: PromptBlend
    guidance_scale: float
    min_conditioning_frames: int
    max_conditioning_frames: int
    seed: Optional[int]
    reseed: bool = False

    @property
    def prompt(self) -> str:
        """The text recorded in Chunk.prompt / frame headers."""
        return self.blend.description

    @property
    def negative_prompt(self) -> str:
        return self.blend.terms[-1].negative or ""


def _without_negligible(overrides: List["_PromptOverride"], chunk: int) -> List["_PromptOverride"]:
    """Drop the live prompts whose share of every chunk from `chunk` on is at most `_MIN_WEIGHT`.

    Each newer override scales the share of everything older by (1 - its weight), and weights only
    grow with the chunk index; so once the product of those factors is at most `_MIN_WEIGHT`, the older
    overrides stay below the weight `PromptBlend.from_weighted` drops anyway. Without this, a client
    sending long transitions one after the other would pile up overrides for as long as they last.
    """
    share, kept = 1.0, 0
    for o in reversed(overrides):
        if share <= _MIN_WEIGHT:
            break
        kept += 1
        if o.at <= chunk:
            share *= 1.0 - o.weight(chunk)
    return overrides[len(overrides) - kept:]


@dataclass(frozen=True)
class _PromptOverride:
    at: int
    prompt: str
    negative: Optional[str]
    transition: int
    seq: int

    def weight(self, chunk: int) -> float:
        """Share of the new prompt at `chunk`: (chunk - at + 1) / transition, so the change shows at `at`."""
        if self.transition <= 1:
            return 1.0
        return min(1.0, (chunk - self.at + 1) / self.transition)

    def complete_at(self) -> int:
        return self.at + max(self.transition, 1) - 1


class LiveSettings:
    """The settings of every chunk: the config's values, a prompt schedule and live overrides.

    Thread-safe (one lock). Updates are `validate_update` dicts applied with the chunk they take
    effect at (`apply(update, at_chunk)`); `settings_for_chunk(k, start_time)` answers for any chunk
    not yet forgotten. The same object works in the producer (fed by an `UpdateChannel`, see
    `next_chunk`) and as a mirror in the main process (fed with the same updates and chunk numbers,
    for status). Deterministic: the same updates at the same chunks give the same settings.
    """

    def __init__(
        self,
        *,
        prompt: str,
        negative_prompt: Optional[str] = None,
        guidance_scale: float = 30.0,
        min_conditioning_frames: int = 1,
        max_conditioning_frames: int = 8,
        seed: Optional[int] = None,
        schedule: Optional[PromptSchedule] = None,
    ) -> None:
        # the run's own config: checked like updates, but not held to the limits of live clients
        base = validate_update({"command": "set_prompt", "prompt": prompt, "negative_prompt": negative_prompt or ""},
                               limits=False)
        validate_update({"command": "set_guidance", "guidance_scale": guidance_scale}, limits=False)
        validate_update({"command": "set_conditioning", "min": min_conditioning_frames, "max": max_conditioning_frames},
                        limits=False)
        if seed is not None:
            validate_update({"command": "set_seed", "seed": seed}, limits=False)
        if schedule is not None and not isinstance(schedule, PromptSchedule):
            raise ConfigError(f"schedule: got {type(schedule).__name__}; give a PromptSchedule or None")
        self._lock = threading.Lock()
        self._prompt = base["prompt"]
        self._negative = base["negative_prompt"]
        self._schedule = schedule
        self._guidance: List[Tuple[int, float]] = [(0, float(guidance_scale))]
        self._conditioning: List[Tuple[int, Tuple[int, int]]] = [(0, (min_conditioning_frames, max_conditioning_frames))]
        self._seed: List[Tuple[int, Optional[int]]] = [(0, seed)]
        self._reseed_at: set = set()
        self._negatives: List[Tuple[int, str, int]] = []  # (at, negative, seq)
        self._overrides: List[_PromptOverride] = []
        self._seq = 0
        self._forgotten = 0

    @classmethod
    def from_config(cls, config: Any, schedule: Optional[PromptSchedule] = None) -> "LiveSettings":
        """From a GenerationConfig; a schedule, when given, takes precedence over `config.prompt`."""
        return cls(
            prompt=config.prompt,
            negative_prompt=config.negative_prompt,
            guidance_scale=config.guidance_scale,
            min_conditioning_frames=config.min_conditioning_frames,
            max_conditioning_frames=config.max_conditioning_frames,
            seed=config.seed,
            schedule=schedule,
        )

    @property
    def schedule(self) -> Optional[PromptSchedule]:
        return self._schedule

    @property
    def conditioning_range(self) -> Tuple[int, int]:
        """(CN, CX) of the earliest chunk still known — what a pipeline builds its first selector from
        (the first chunk's conditioning needs CX frames before any chunk settings are fixed)."""
        with self._lock:
            return self._conditioning[0][1]

    # -- updates ------------------------------------------------------------------------------
    def apply(self, update: Mapping[str, Any], at_chunk: int) -> dict:
        """Record a settings change taking effect at chunk `at_chunk`; returns the normalized update."""
        u = validate_update(update)
        if u["command"] not in SETTINGS_COMMANDS:
            raise UpdateError(f"{u['command']} is not a settings change; send it to the run's channel", "command")
        if not _is_int(at_chunk) or at_chunk < 0:
            raise ValueError(f"at_chunk must be an int >= 0, got {at_chunk!r}")
        with self._lock:
            if at_chunk < self._forgotten:
                raise ValueError(f"chunk {at_chunk} is already fixed (settings known from chunk {self._forgotten} on)")
            self._seq += 1
            cmd = u["command"]
            if cmd == "set_prompt":
                self._overrides.append(
                    _PromptOverride(at_chunk, u["prompt"], u.get("negative_prompt"), u.get("transition", 0), self._seq)
                )
            elif cmd == "set_negative_prompt":
                self._negatives.append((at_chunk, u["negative_prompt"], self._seq))
            elif cmd == "set_guidance":
                self._guidance.append((at_chunk, u["guidance_scale"]))
            elif cmd == "set_conditioning":
                self._conditioning.append((at_chunk, (u["min"], u["max"])))
            elif cmd == "set_seed":
                self._seed.append((at_chunk, u["seed"]))
                self._reseed_at.add(at_chunk)
        return u

    # -- queries ------------------------------------------------------------------------------
    @staticmethod
    def _value_at(timeline: List[Tuple[int, Any]], chunk: int) -> Any:
        value = timeline[0][1]
        for at, v in timeline:  # appended in apply order; the later update wins on equal chunks
            if at <= chunk:
                value = v
        return value

    def settings_for_chunk(self, chunk: int, start_time: Optional[float] = None) -> ChunkSettings:
        """The settings chunk `chunk` is generated with (start_time = first_frame / fps, for timed files)."""
        if not _is_int(chunk) or chunk < 0:
            raise ValueError(f"chunk index must be an int >= 0, got {chunk!r}")
        with self._lock:
            if chunk < self._forgotten:
                raise ValueError(f"chunk {chunk} was forgotten (settings kept from chunk {self._forgotten} on)")
            active = [o for o in self._overrides if o.at <= chunk]
            # items: (prompt, negative or None, seq, weight); the schedule/config prompt has seq 0
            if active and active[-1].weight(chunk) >= 1.0:
                active = active[-1:]
                items = []
            elif self._schedule is not None:
                items = [(t.prompt, t.negative, 0, t.weight) for t in self._schedule.blend_at(chunk, start_time).terms]
            else:
                items = [(self._prompt, None, 0, 1.0)]
            for o in active:
                w = o.weight(chunk)
                items = [(p, n, s, x * (1.0 - w)) for p, n, s, x in items]
                items.append((o.prompt, o.negative, o.seq, w))
            neg_override = None
            for at, neg, seq in self._negatives:
                if at <= chunk:
                    neg_override = (neg, seq)

            def resolve(negative: Optional[str], seq: int) -> str:
                if neg_override is not None and (negative is None or seq < neg_override[1]):
                    return neg_override[0]
                return self._negative if negative is None else negative

            blend = PromptBlend.from_weighted((p, resolve(n, s), w) for p, n, s, w in items)
            cn, cx = self._value_at(self._conditioning, chunk)
            return ChunkSettings(
                index=chunk,
                blend=blend,
                guidance_scale=self._value_at(self._guidance, chunk),
                min_conditioning_frames=cn,
                max_conditioning_frames=cx,
                seed=self._value_at(self._seed, chunk),
                reseed=chunk in self._reseed_at,
            )

    def live_prompts(self, chunk: int) -> int:
        """How many live prompts weigh in chunk `chunk`'s blend (0: the file / config prompt alone).
        Counted from the newest: a complete transition hides everything older, and prompts whose share
        fell to the blend's threshold do not count."""
        with self._lock:
            share, count = 1.0, 0
            for o in reversed(self._overrides):
                if o.at > chunk:
                    continue
                if share <= _MIN_WEIGHT:
                    break
                count += 1
                share *= 1.0 - o.weight(chunk)
            return count

    def upcoming(self, chunk: int, start_time: Optional[float] = None, count: int = 5) -> List[dict]:
        """Scheduled prompt changes after `chunk`: live transitions not yet complete, else the file's."""
        with self._lock:
            live = [o for o in self._overrides if o.complete_at() > chunk]
            any_live = bool(self._overrides)
            schedule = self._schedule
        if live:
            return [
                {"prompt": o.prompt, "negative_prompt": o.negative, "from_chunk": o.at, "at_chunk": o.complete_at(), "source": "live"}
                for o in live[:count]
            ]
        if any_live or schedule is None:
            return []
        return [dict(item, source="file") for item in schedule.upcoming(chunk, start_time, count)]

    def forget_before(self, chunk: int) -> None:
        """Drop history only chunks < `chunk` need, keeping memory bounded over an endless run."""
        with self._lock:
            self._forgotten = max(self._forgotten, chunk)
            for name in ("_guidance", "_conditioning", "_seed"):
                tl = getattr(self, name)
                keep_from = 0
                for idx, (at, _) in enumerate(tl):
                    if at <= chunk:
                        keep_from = idx
                setattr(self, name, tl[keep_from:])
            self._reseed_at = {c for c in self._reseed_at if c >= chunk}
            done = [i for i, o in enumerate(self._overrides) if o.complete_at() <= chunk]
            if done:
                self._overrides = self._overrides[done[-1]:]
                self._schedule = None  # fully replaced by a live prompt for the rest of the run
            self._overrides = _without_negligible(self._overrides, chunk)
            negs = [i for i, (at, _, _) in enumerate(self._negatives) if at <= chunk]
            if negs:
                self._negatives = self._negatives[negs[-1]:]

    def next_chunk(
        self, chunk: int, start_time: Optional[float] = None, channel: Optional["UpdateChannel"] = None, **wait: Any
    ) -> Optional[ChunkSettings]:
        """The producer's call at each chunk boundary: take pending updates from `channel` (blocking
        while paused), fix chunk `chunk`'s settings and forget older history. None means stop."""
        if channel is not None:
            updates = channel.begin_chunk(chunk, **wait)
            if updates is None:
                return None
            for u in updates:
                self.apply(u, chunk)
        settings = self.settings_for_chunk(chunk, start_time)
        self.forget_before(chunk)
        return settings


class UpdateChannel:
    """Carries live updates from the runtime (main process) to the producer (spawned child).

    Must reach the child as an argument of `Process(...)`, not through a queue. Works between threads
    of one process too (the Python API).

    Exactness of "applies at chunk k": `next_chunk` is the first chunk whose settings are not fixed.
    The runtime's `submit` reads it and stores the update under one lock; the producer's
    `begin_chunk(k)` takes the same lock, takes every stored update and moves `next_chunk` past k. So
    an update answered with k is applied to chunk k — never earlier, never later. pause / stop are
    shared flags read at the boundary: chunk k does not start while paused; stop makes `begin_chunk`
    return None.

    Bounded: updates wait in a fixed shared-memory mailbox of `capacity` slots (JSON, at most
    `_UPDATE_BYTES` each); when it is full (a paused producer takes nothing), `submit` raises
    UpdateError instead of growing memory. Nothing here has a name in /dev/shm (the lock is an
    `ipc.PipeLock`, the mailbox a `RawArray`), so a SIGKILL of every process leaves nothing behind.

    Deliberately no `multiprocessing.Condition` (its `notify` waits for every sleeper and hangs for
    good once a sleeping producer was killed): the paused producer polls the flags, and every lock is
    taken with a timeout (a side that died holding it gives a ChannelError, not a hang).
    """

    def __init__(self, context: Any = None, capacity: int = MAX_QUEUED_UPDATES) -> None:
        if not _is_int(capacity) or capacity < 1:
            raise ConfigError(f"UpdateChannel capacity: got {capacity!r}; use at least 1 update")
        ctx = context if context is not None else multiprocessing.get_context("spawn")
        self.capacity = capacity
        self._lock = PipeLock()
        self._next = ctx.RawValue("q", 0)
        self._sent = ctx.RawValue("q", 0)   # updates stored so far
        self._taken = ctx.RawValue("q", 0)  # updates the producer took so far
        self._paused = ctx.RawValue("b", 0)
        self._stopped = ctx.RawValue("b", 0)
        self._lengths = ctx.RawArray("q", capacity)
        self._box = ctx.RawArray("B", capacity * _UPDATE_BYTES)

    # -- runtime side -------------------------------------------------------------------------
    def submit(self, update: Mapping[str, Any]) -> int:
        """Send a settings change; returns the chunk it applies at. UpdateError when the mailbox is
        full (`capacity` changes already wait for the next chunk) or the stream is stopping."""
        u = validate_update(update)
        if u["command"] not in SETTINGS_COMMANDS:
            raise UpdateError(f"{u['command']} is not a settings change; use pause(), resume() or stop()", "command")
        data = json.dumps(u, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(data) > _UPDATE_BYTES:  # cannot happen within the prompt limits; checked all the same
            raise UpdateError(f"{u['command']}: the change takes {len(data)} bytes; at most {_UPDATE_BYTES}", None)
        with self._locked():
            if self._stopped.value:
                raise UpdateError("the stream is stopping; no more changes are taken", None)
            at = int(self._next.value)
            waiting = self._sent.value - self._taken.value
            if waiting >= self.capacity:
                raise UpdateError(
                    f"{waiting} changes already wait for chunk {at} (at most {self.capacity}); send more once it "
                    f"has started{' (the stream is paused: resume first)' if self._paused.value else ''}", None)
            slot = self._sent.value % self.capacity
            memoryview(self._box).cast("B")[slot * _UPDATE_BYTES: slot * _UPDATE_BYTES + len(data)] = data
            self._lengths[slot] = len(data)
            self._sent.value += 1
        return at

    def pause(self) -> int:
        """No chunk starts from now until `resume`; returns the chunk that waits."""
        with self._locked():
            self._paused.value = 1
            return int(self._next.value)

    def resume(self) -> int:
        """Let generation go on; returns the chunk that starts next."""
        with self._locked():
            self._paused.value = 0
            return int(self._next.value)

    def stop(self) -> int:
        """End the stream at the next boundary; returns the first chunk that will not be made."""
        with self._locked():
            self._stopped.value = 1
            return int(self._next.value)

    def state(self) -> dict:
        with self._locked():
            return {
                "next_chunk": int(self._next.value),
                "paused": bool(self._paused.value),
                "stopping": bool(self._stopped.value),
                "queued_updates": int(self._sent.value - self._taken.value),
            }

    # -- producer side ------------------------------------------------------------------------
    def begin_chunk(
        self, chunk: int, timeout: float = 10.0, poll: float = 0.25, abort: Optional[Callable[[], bool]] = None
    ) -> Optional[List[dict]]:
        """Called by the producer before generating chunk `chunk`: waits while paused, returns the
        updates that apply at this chunk, or None when the run must stop. `abort()` (checked while
        paused) lets the producer give up when the runtime is gone. `timeout`: seconds to wait for
        the channel's lock (ChannelError after that)."""
        while True:
            with self._locked(timeout):
                if self._stopped.value:
                    return None
                if not self._paused.value:
                    break
            if abort is not None and abort():
                return None
            time.sleep(poll)  # paused: poll the flags (see the class docstring)
        with self._locked(timeout):
            if self._stopped.value:
                return None
            if chunk < self._next.value:
                raise ValueError(f"chunk {chunk} already began (next is {self._next.value})")
            box = memoryview(self._box).cast("B")
            raw = []
            for n in range(self._taken.value, self._sent.value):
                slot = n % self.capacity
                raw.append(bytes(box[slot * _UPDATE_BYTES: slot * _UPDATE_BYTES + self._lengths[slot]]))
            self._taken.value = self._sent.value
            self._next.value = chunk + 1
        return [json.loads(r.decode("utf-8")) for r in raw]

    @contextlib.contextmanager
    def _locked(self, timeout: float = 10.0):
        if not self._lock.acquire(timeout=timeout):
            raise ChannelError(f"update channel: lock not free within {timeout:g} s (the other side died holding it?)")
        try:
            yield
        finally:
            self._lock.release()

    def close(self) -> None:
        """Nothing to release any more (no queue feeder thread; the pipe closes with the object); kept so
        callers can end the channel the same way in each process."""
