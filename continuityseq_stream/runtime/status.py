"""The one-line status the runtime prints on stderr while it runs (and once at the end).

Why a module of its own: what the line says is a user-facing format; the runtime only gathers the
numbers. A sink can add its own counters by exposing an optional `stats() -> dict` method (e.g. the
RTMP pacer's `{"held": 37}`: frames repeated to keep a constant frame rate); they are printed after
the sink's name as `key value`.

Example:
    [stream 0:02:10] chunks 41 (328 frames) | gen 2.5 fps / out 16 fps | ring 12/64 | file:out.mp4 328 | preview 301 skipped 27 | rtmp://127.0.0.1/live/x 320 held 95
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["SinkStatus", "format_status", "format_duration", "status_dict"]


@dataclass(frozen=True)
class SinkStatus:
    """What the status line shows for one sink."""

    name: str
    written: int
    skipped: int = 0
    state: str = "running"  # waiting | running | done | ended | failed | detached
    extra: Mapping[str, object] = field(default_factory=dict)


def format_duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _num(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def format_status(
    *,
    label: str,
    elapsed: float,
    chunks: int,
    frames: int,
    gen_fps: float,
    out_fps: float,
    ring_fill: int,
    ring_slots: int,
    sinks: list[SinkStatus],
    paused: bool = False,
) -> str:
    """One line: chunks made (and "paused" while a control pause holds the producer), generation fps
    vs output fps, ring fill, per-sink counters."""
    parts = [
        f"[{label} {format_duration(elapsed)}] chunks {chunks} ({frames} frames){' paused' if paused else ''}",
        f"gen {gen_fps:.1f} fps / out {_num(float(out_fps))} fps",
        f"ring {ring_fill}/{ring_slots}",
    ]
    for s in sinks:
        text = f"{s.name} {s.written}"
        if s.skipped:
            text += f" skipped {s.skipped}"
        for key, value in s.extra.items():
            text += f" {key} {_num(value)}"
        if s.state in ("failed", "ended", "waiting", "detached"):
            text += f" ({s.state})"
        parts.append(text)
    return " | ".join(parts)


def status_dict(*, elapsed: float, chunks: int, frames: int, gen_fps: float, out_fps: float, ring_fill: int,
                ring_slots: int, sinks: list[SinkStatus], stopping: bool) -> dict:
    """The status line's figures as the control `status` answer carries them (a wire format)."""
    rows = [{"name": s.name, "frames": s.written, "skipped": s.skipped, "state": s.state, **dict(s.extra)}
            for s in sinks]
    return {
        "elapsed": round(elapsed, 3),
        "chunks_made": chunks,
        "frames_made": frames,
        "gen_fps": round(gen_fps, 3),
        "out_fps": float(out_fps),
        "ring_fill": ring_fill,
        "ring_slots": ring_slots,
        "skipped": {r["name"]: r["skipped"] for r in rows},
        "sinks": rows,
        "stopping": stopping,
    }
