"""Prompt schedules: which prompt (or blend) each chunk of a run is generated with, from a
prompt file's lines (timed or every `--prompts-interval` chunks, optionally looping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

from ..errors import ConfigError
from .files import _TIME_EPS, ParsedPrompts, PromptEntry, format_timestamp, parse_prompt_text, read_prompt_file
from .blend import PromptBlend

#: chunks per prompt of an untimed prompt file when `--prompts-interval` is not given
DEFAULT_PROMPTS_INTERVAL = 4


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
            raise ConfigError(f"{{prompts_file}}: give at least one prompt", names=("prompts_file",))
        timed = self.entries[0].time is not None
        if any((e.time is not None) != timed for e in self.entries):
            raise ConfigError(f"{{prompts_file}}: either every prompt has a time stamp or none has", names=("prompts_file",))
        if not isinstance(self.loop, bool):
            raise ConfigError(f"{{loop_prompts}}: got {self.loop!r}; use True or False", names=("loop_prompts",))
        if not (isinstance(self.transition_seconds, (int, float)) and self.transition_seconds >= 0):
            raise ConfigError(f"prompt transition_seconds: got {self.transition_seconds!r}; use seconds >= 0")
        if timed:
            if self.interval is not None:
                raise ConfigError(
                    f"{{prompts_interval}}: got {self.interval!r} but the prompt file has time stamps, which "
                    f"switch by output time; drop {{prompts_interval}} or the stamps",
                    names=("prompts_interval",))
            times = [e.time for e in self.entries]
            if any(b <= a for a, b in zip(times, times[1:])):
                raise ConfigError(f"{{prompts_file}}: time stamps must increase from line to line", names=("prompts_file",))
            if self.end_time is not None and self.end_time <= times[-1]:
                raise ConfigError(
                    f"{{prompts_file}}: the loop end {format_timestamp(self.end_time)} must come after the last "
                    f"stamp {format_timestamp(times[-1])}",
                    names=("prompts_file",))
            if self.loop and self.end_time is None:
                raise ConfigError(
                    f"{{loop_prompts}}: a time-stamped prompt file needs a last line with only a time stamp "
                    "(e.g. `03:00`) saying when the loop starts over",
                    names=("loop_prompts",))
        else:
            if self.interval is not None and (
                isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1
            ):
                raise ConfigError(f"{{prompts_interval}}: got {self.interval!r}; use a number of chunks >= 1", names=("prompts_interval",))
            if self.end_time is not None:
                raise ConfigError(f"{{prompts_file}}: a loop end time needs time-stamped prompts", names=("prompts_file",))
            if self.transition_seconds:
                raise ConfigError(
                    "prompt transition_seconds applies to time-stamped files; untimed files blend over "
                    "{prompts_interval} chunks", names=("prompts_interval",)
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
