"""`RuntimeOptions`: how a streaming run behaves (not what it generates: that is `GenerationConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..config import build_from_mapping
from ..control import check_control_address
from ..errors import ConfigError, bad_value
from ..prompts import PromptSchedule
from .producer import DEFAULT_SOURCE, check_source_spec
from .threads import resolve_threads

__all__ = ["RuntimeOptions"]


@dataclass(frozen=True)
class RuntimeOptions:
    """How a streaming run behaves (not what it generates: that is `GenerationConfig`).

    duration: stop gracefully after so many seconds of wall-clock time, counted from the first frame
        (model loading excluded); None runs until `times` chunks or a stop.
    ring_frames: frames the shared-memory ring holds: how far a lossless sink may fall behind before
        the producer waits, and how much a `latest` sink can lag before it skips.
    status_interval: seconds between status lines on stderr; 0 prints only the final line.
    stop_grace: seconds the producer gets, after a stop, to finish the chunk it is writing and exit
        before the ring is closed / the process is killed.
    drain_timeout: seconds the sinks get to drain after a stop before the exit is forced; None waits.
    source: the chunk source "module:function" run in the producer (see producer.py).
    source_kwargs: keyword arguments for the source (picklable values).
    schedule: a prompt file's `PromptSchedule` (`--prompts-file`); it takes precedence over the
        config's prompt. Picklable: it travels to the producer process.
    control: bind address of the control socket (`--control`, e.g. tcp://127.0.0.1:5557), or None.
    control_allow_remote: accept a non-loopback control address (`--control-allow-remote`).
    sink_timeout: seconds a sink may spend in one open/write/close without progress (`--sink-timeout`);
        then it is detached (an RTMP/ffmpeg sink restarts its ffmpeg instead) and the others go on.
    threads: torch's intra-op CPU threads in the producer (`--threads`); None: `OMP_NUM_THREADS` if
        exported, else the available CPUs minus one (threads.py says why).
    """

    duration: Optional[float] = None
    ring_frames: int = 64
    status_interval: float = 5.0
    stop_grace: float = 10.0
    drain_timeout: Optional[float] = None
    source: str = DEFAULT_SOURCE
    source_kwargs: Mapping[str, Any] = field(default_factory=dict)
    schedule: Optional[PromptSchedule] = None
    control: Optional[str] = None
    control_allow_remote: bool = False
    sink_timeout: float = 10.0
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.duration is not None and not (_finite(self.duration) and self.duration > 0):
            raise bad_value("duration", self.duration, "use a positive number of seconds, or leave it unset")
        if not isinstance(self.ring_frames, int) or isinstance(self.ring_frames, bool) or self.ring_frames < 2:
            raise bad_value("ring_frames", self.ring_frames, "use a number of frames >= 2, e.g. 64")
        if not (_finite(self.status_interval) and self.status_interval >= 0):
            raise bad_value("status_interval", self.status_interval, "use seconds >= 0 (0: final line only)")
        if not (_finite(self.stop_grace) and self.stop_grace >= 0):
            raise bad_value("stop_grace", self.stop_grace, "use seconds >= 0")
        if self.drain_timeout is not None and not (_finite(self.drain_timeout) and self.drain_timeout >= 0):
            raise bad_value("drain_timeout", self.drain_timeout, "use seconds >= 0, or None to wait")
        check_source_spec(self.source)
        if not isinstance(self.source_kwargs, Mapping):
            raise ConfigError(f"source_kwargs: got {self.source_kwargs!r}; use a mapping of keyword arguments")
        object.__setattr__(self, "source_kwargs", dict(self.source_kwargs))
        if self.schedule is not None and not isinstance(self.schedule, PromptSchedule):
            raise ConfigError(f"schedule: got {type(self.schedule).__name__}; use a PromptSchedule or None")
        if not isinstance(self.control_allow_remote, bool):
            raise bad_value("control_allow_remote", self.control_allow_remote, "use True or False")
        if self.control is not None:
            check_control_address(self.control, self.control_allow_remote)
        if not (_finite(self.sink_timeout) and self.sink_timeout > 0):
            raise bad_value("sink_timeout", self.sink_timeout, "use a finite number of seconds > 0, e.g. 10")
        if self.threads is not None:
            resolve_threads(self.threads)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RuntimeOptions":
        """Build from a mapping; unknown keys are an error."""
        return build_from_mapping(cls, values, "runtime option(s)")


def _finite(value: Any) -> bool:
    """A real number that is not NaN or infinite (NaN passes no comparison, so `> 0` alone lets inf in)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
