"""Live settings: the per-chunk parameters a running stream re-reads at every chunk boundary
(the run's config < the prompt schedule < live updates; the newer update wins).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Tuple

from ..errors import ConfigError, UpdateError
from .blend import PromptBlend, _MIN_WEIGHT
from .schedule import PromptSchedule
from .updates import SETTINGS_COMMANDS, _is_int, validate_update

if TYPE_CHECKING:  # only for annotations: the channel is the module above this one
    from .channel import UpdateChannel


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


def _checked_config(prompt: str, negative_prompt: Optional[str], guidance_scale: float, min_conditioning_frames: int,
                    max_conditioning_frames: int, seed: Optional[int], schedule: Optional[PromptSchedule]) -> dict:
    """The run's own settings checked like updates, but not held to the limits of live clients (a
    `ContinuitySeqError` naming the bad one); returns the normalized `set_prompt` update."""
    base = validate_update({"command": "set_prompt", "prompt": prompt, "negative_prompt": negative_prompt or ""},
                           limits=False)
    validate_update({"command": "set_guidance", "guidance_scale": guidance_scale}, limits=False)
    validate_update({"command": "set_conditioning", "min": min_conditioning_frames, "max": max_conditioning_frames},
                    limits=False)
    if seed is not None:
        validate_update({"command": "set_seed", "seed": seed}, limits=False)
    if schedule is not None and not isinstance(schedule, PromptSchedule):
        raise ConfigError(f"schedule: got {type(schedule).__name__}; give a PromptSchedule or None")
    return base


def _value_at(timeline: List[Tuple[int, Any]], chunk: int) -> Any:
    """The value of a setting's timeline ((at, value) pairs) at chunk `chunk`."""
    value = timeline[0][1]
    for at, v in timeline:  # appended in apply order; the later update wins on equal chunks
        if at <= chunk:
            value = v
    return value


def _still_needed(timeline: List[tuple], chunk: int) -> List[tuple]:
    """A timeline (entries starting with their chunk, in apply order) without what only chunks before
    `chunk` need: everything older than its last entry at or before `chunk`."""
    keep_from = 0
    for idx, entry in enumerate(timeline):
        if entry[0] <= chunk:
            keep_from = idx
    return timeline[keep_from:]


def _blend_for_chunk(chunk: int, start_time: Optional[float], overrides: List[_PromptOverride],
                     negatives: List[Tuple[int, str, int]], schedule: Optional[PromptSchedule], prompt: str,
                     negative: str) -> PromptBlend:
    """Chunk `chunk`'s prompt blend: the schedule's (else the config's `prompt`), cross-faded with the
    live prompts active then (each scales everything older by 1 - its weight; a complete one alone).
    Negatives: the newest live negative replaces those of older prompts; else a prompt's own, else
    the config's `negative`."""
    active = [o for o in overrides if o.at <= chunk]
    # items: (prompt, negative or None, seq, weight); the schedule/config prompt has seq 0
    if active and active[-1].weight(chunk) >= 1.0:
        active = active[-1:]
        items = []
    elif schedule is not None:
        items = [(t.prompt, t.negative, 0, t.weight) for t in schedule.blend_at(chunk, start_time).terms]
    else:
        items = [(prompt, None, 0, 1.0)]
    for o in active:
        w = o.weight(chunk)
        items = [(p, n, s, x * (1.0 - w)) for p, n, s, x in items]
        items.append((o.prompt, o.negative, o.seq, w))
    neg_override = None
    for at, neg, seq in negatives:
        if at <= chunk:
            neg_override = (neg, seq)

    def resolve(own: Optional[str], seq: int) -> str:
        if neg_override is not None and (own is None or seq < neg_override[1]):
            return neg_override[0]
        return negative if own is None else own

    return PromptBlend.from_weighted((p, resolve(n, s), w) for p, n, s, w in items)


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
        base = _checked_config(prompt, negative_prompt, guidance_scale, min_conditioning_frames,
                               max_conditioning_frames, seed, schedule)
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
    def settings_for_chunk(self, chunk: int, start_time: Optional[float] = None) -> ChunkSettings:
        """The settings chunk `chunk` is generated with (start_time = first_frame / fps, for timed files)."""
        if not _is_int(chunk) or chunk < 0:
            raise ValueError(f"chunk index must be an int >= 0, got {chunk!r}")
        with self._lock:
            if chunk < self._forgotten:
                raise ValueError(f"chunk {chunk} was forgotten (settings kept from chunk {self._forgotten} on)")
            blend = _blend_for_chunk(chunk, start_time, self._overrides, self._negatives, self._schedule,
                                     self._prompt, self._negative)
            cn, cx = _value_at(self._conditioning, chunk)
            return ChunkSettings(
                index=chunk,
                blend=blend,
                guidance_scale=_value_at(self._guidance, chunk),
                min_conditioning_frames=cn,
                max_conditioning_frames=cx,
                seed=_value_at(self._seed, chunk),
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
                setattr(self, name, _still_needed(getattr(self, name), chunk))
            self._reseed_at = {c for c in self._reseed_at if c >= chunk}
            done = [i for i, o in enumerate(self._overrides) if o.complete_at() <= chunk]
            if done:
                self._overrides = self._overrides[done[-1]:]
                self._schedule = None  # fully replaced by a live prompt for the rest of the run
            self._overrides = _without_negligible(self._overrides, chunk)
            self._negatives = _still_needed(self._negatives, chunk)

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
