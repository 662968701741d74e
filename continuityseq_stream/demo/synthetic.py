"""Synthetic motion videos: one flat-coloured shape moving over a plain background, with a caption.

This is the training data of the trained demo model and the ground truth of the continuity metrics.
Everything is deterministic from a seed (a `numpy.random.Generator` passed in, never global state).

A clip is described by a `ClipSpec` (shape, colour, background, motion, start position, speed, size)
and rendered by `render_clip` into uint8 frames `[T, S, S, 3]` plus the exact object centre of every
frame (`positions`, pixels, x then y). Two kinds of motion:

- "left" / "right" / "up" / "down": constant velocity on a torus (the object leaves one edge and
  re-enters at the opposite one), so "moving left" stays true forever — which is what an endless
  stream needs. Positions are kept in [0, S).
- "bouncing": a diagonal constant velocity that reflects off the walls (the object stays inside).

A *turn clip* (`render_turn_clip`) moves one way for its first frames and another way from `turn_at`
on, captioned with the second motion: the training example of "the prompt says where to go next,
whatever the frames before did" (the trained demo learns from them to follow a prompt's direction,
also when the prompt changes mid-stream).

Captions come from a tiny grammar: "a red circle moving left on a gray background",
"a white triangle bouncing on a black background". `parse_caption` inverts it (the metrics use it to
know what a prompt asked for). Edges are anti-aliased by 4x4 supersampling, so sub-pixel motion is
visible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, asdict
from typing import Optional

import numpy as np

__all__ = [
    "SHAPES", "COLOURS", "BACKGROUNDS", "DIRECTIONS", "MOTIONS", "VOCABULARY", "DEFAULT_SIZE",
    "ClipSpec", "Clip", "caption", "parse_caption", "sample_spec", "spec_from_caption", "render_clip",
    "render_frame", "make_clips", "make_turn_clips", "render_turn_clip", "direction_vector", "half_extent",
]

#: frame side in pixels used by the shipped demo model (32 keeps CPU training within its budget)
DEFAULT_SIZE = 32

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "white": (240, 240, 240),
}
BACKGROUNDS = {
    "black": (15, 15, 15),
    "gray": (110, 110, 110),
    "purple": (85, 30, 105),
    "brown": (95, 60, 25),
}
DIRECTIONS = ("left", "right", "up", "down")
MOTIONS = DIRECTIONS + ("bouncing",)
#: every word the grammar can produce (the demo tokenizer's word-level vocabulary)
VOCABULARY = tuple(dict.fromkeys(
    ["a", "moving", "on", "background"] + list(SHAPES) + list(COLOURS) + list(BACKGROUNDS) + list(MOTIONS)))

_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_CAPTION = re.compile(
    r"^\s*an?\s+(?P<colour>\w+)\s+(?P<shape>\w+)\s+(?:moving\s+(?P<direction>\w+)|(?P<bouncing>bouncing))"
    r"\s+on\s+an?\s+(?P<background>\w+)\s+background\s*$", re.IGNORECASE)


def direction_vector(direction: str) -> tuple[float, float]:
    """Unit (dx, dy) of a direction word; image y grows downwards ("up" is -y)."""
    return _UNIT[direction]


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render a clip. Positions/sizes in pixels of a `size` x `size` frame."""

    shape: str
    colour: str
    background: str
    motion: str           # one of MOTIONS
    x: float              # start centre
    y: float
    vx: float             # pixels per frame
    vy: float
    radius: float         # half extent of the shape
    size: int = DEFAULT_SIZE

    @property
    def caption(self) -> str:
        return caption(self)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Clip:
    """Rendered clip: frames uint8 `[T, S, S, 3]`, positions float `[T, 2]` (x, y centre), caption."""

    frames: np.ndarray
    positions: np.ndarray
    caption: str
    spec: ClipSpec


def caption(spec: ClipSpec) -> str:
    """The grammar: "a <colour> <shape> moving <direction> | bouncing on a <background> background"."""
    motion = "bouncing" if spec.motion == "bouncing" else f"moving {spec.motion}"
    return f"a {spec.colour} {spec.shape} {motion} on a {spec.background} background"


def parse_caption(text: str) -> Optional[dict]:
    """Inverse of `caption`: {colour, shape, motion, background}, or None if `text` is not in the grammar."""
    m = _CAPTION.match(text or "")
    if not m:
        return None
    out = {k: m.group(k).lower() for k in ("colour", "shape", "background")}
    out["motion"] = "bouncing" if m.group("bouncing") else (m.group("direction") or "").lower()
    if out["colour"] not in COLOURS or out["shape"] not in SHAPES or out["background"] not in BACKGROUNDS \
            or out["motion"] not in MOTIONS:
        return None
    return out


def sample_spec(rng: np.random.Generator, size: int = DEFAULT_SIZE, bouncing_fraction: float = 0.2,
                **fixed) -> ClipSpec:
    """A random clip spec drawn from `rng`; keyword arguments (shape=..., colour=..., motion=...) fix fields."""
    shape = fixed.get("shape") or SHAPES[rng.integers(len(SHAPES))]
    colour = fixed.get("colour") or list(COLOURS)[rng.integers(len(COLOURS))]
    background = fixed.get("background") or list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    if fixed.get("motion"):
        motion = fixed["motion"]
    else:
        motion = "bouncing" if rng.random() < bouncing_fraction else DIRECTIONS[rng.integers(len(DIRECTIONS))]
    radius = float(rng.uniform(0.16, 0.22) * size)
    speed = float(rng.uniform(0.03, 0.06) * size)
    if motion == "bouncing":
        angle = rng.uniform(0, 2 * np.pi)
        # keep both components clearly non-zero so the bounce is visible on both axes
        vx = speed * np.sign(np.cos(angle)) * max(abs(np.cos(angle)), 0.4)
        vy = speed * np.sign(np.sin(angle)) * max(abs(np.sin(angle)), 0.4)
        r = half_extent(shape, radius)
        x, y = rng.uniform(r, size - r, size=2)
    else:
        ux, uy = _UNIT[motion]
        vx, vy = speed * ux, speed * uy
        x, y = rng.uniform(0, size, size=2)
    return ClipSpec(shape, colour, background, motion, float(x), float(y), float(vx), float(vy), radius, int(size))


def spec_from_caption(text: str, rng: np.random.Generator, size: int = DEFAULT_SIZE) -> ClipSpec:
    """A random clip that matches a caption of the grammar (ValueError otherwise)."""
    parsed = parse_caption(text)
    if parsed is None:
        raise ValueError(f"caption {text!r} is not in the grammar, e.g. {caption(sample_spec(np.random.default_rng(0)))!r}")
    return sample_spec(rng, size, **parsed)


def half_extent(shape: str, radius: float) -> float:
    """Half the width/height of the drawn shape (bouncing reflects at this distance from a wall)."""
    return {"circle": 1.0, "square": 0.886, "triangle": 1.2}[shape] * radius


def _trajectory(spec: ClipSpec, num_frames: int) -> np.ndarray:
    """Centres `[T, 2]`: wrapped for directional motion, reflected for bouncing."""
    t = np.arange(num_frames, dtype=np.float64)
    x = spec.x + spec.vx * t
    y = spec.y + spec.vy * t
    if spec.motion != "bouncing":
        return np.stack([np.mod(x, spec.size), np.mod(y, spec.size)], axis=1)

    def reflect(p, lo, hi):
        span = hi - lo
        q = np.mod(p - lo, 2 * span)
        return lo + np.where(q > span, 2 * span - q, q)

    r = half_extent(spec.shape, spec.radius)
    lo, hi = r, spec.size - r
    return np.stack([reflect(x, lo, hi), reflect(y, lo, hi)], axis=1)


def _coverage(shape: str, radius: float, cx: float, cy: float, size: int, wrap: bool, ss: int = 4) -> np.ndarray:
    """Fraction of each pixel covered by the shape, `[S, S]` in [0, 1] (ss x ss supersampling)."""
    offs = (np.arange(ss) + 0.5) / ss
    coords = (np.arange(size)[:, None] + offs[None, :]).reshape(-1)  # sub-pixel centres
    dx = coords[None, :] - cx
    dy = coords[:, None] - cy
    if wrap:  # torus: the nearest copy of the centre
        dx = np.mod(dx + size / 2, size) - size / 2
        dy = np.mod(dy + size / 2, size) - size / 2
    if shape == "circle":
        inside = dx * dx + dy * dy <= radius * radius
    elif shape == "square":
        half = radius * 0.886  # same area as the circle
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif shape == "triangle":
        r = radius * 1.2  # apex up, base down; centre of the bounding box at (cx, cy)
        inside = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    else:
        raise ValueError(f"shape {shape!r}: use one of {SHAPES}")
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))


def render_frame(spec: ClipSpec, cx: float, cy: float) -> np.ndarray:
    """One uint8 frame `[S, S, 3]` with the object centred at (cx, cy)."""
    alpha = _coverage(spec.shape, spec.radius, cx, cy, spec.size, wrap=spec.motion != "bouncing")[..., None]
    bg = np.asarray(BACKGROUNDS[spec.background], dtype=np.float64)
    fg = np.asarray(COLOURS[spec.colour], dtype=np.float64)
    return np.rint(bg * (1 - alpha) + fg * alpha).astype(np.uint8)


def render_clip(spec: ClipSpec, num_frames: int) -> Clip:
    """Render `num_frames` frames of `spec`; positions are the exact centres used for drawing."""
    positions = _trajectory(spec, num_frames)
    frames = np.stack([render_frame(spec, float(x), float(y)) for x, y in positions])
    return Clip(frames=frames, positions=positions.astype(np.float32), caption=caption(spec), spec=spec)


def render_turn_clip(spec: ClipSpec, motion: str, turn_at: int, num_frames: int) -> Clip:
    """Frames `[0, turn_at)` move as `spec`; from `turn_at` on the object moves `motion` (a direction,
    same speed) from where it was. Caption and returned spec: the second motion."""
    if spec.motion not in DIRECTIONS or motion not in DIRECTIONS:
        raise ValueError(f"turn clips move in directions {DIRECTIONS}; got {spec.motion!r} -> {motion!r}")
    if not 1 <= turn_at < num_frames:
        raise ValueError(f"turn_at: got {turn_at}; use 1..{num_frames - 1}")
    first = _trajectory(spec, turn_at)
    speed = float(np.hypot(spec.vx, spec.vy))
    ux, uy = _UNIT[motion]
    x0, y0 = first[-1]
    after = ClipSpec(spec.shape, spec.colour, spec.background, motion, float(x0 + speed * ux), float(y0 + speed * uy),
                     speed * ux, speed * uy, spec.radius, spec.size)
    positions = np.concatenate([first, _trajectory(after, num_frames - turn_at)])
    frames = np.stack([render_frame(after, float(x), float(y)) for x, y in positions])
    return Clip(frames=frames, positions=positions.astype(np.float32), caption=caption(after), spec=after)


def make_turn_clips(count: int, num_frames: int, turn_at: int, seed: int, size: int = DEFAULT_SIZE) -> list[Clip]:
    """`count` turn clips (a direction, then another one from frame `turn_at`), deterministic from `seed`."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        spec = sample_spec(rng, size, motion=DIRECTIONS[rng.integers(len(DIRECTIONS))])
        others = [d for d in DIRECTIONS if d != spec.motion]
        clips.append(render_turn_clip(spec, others[rng.integers(len(others))], turn_at, num_frames))
    return clips


def make_clips(count: int, num_frames: int, seed: int, size: int = DEFAULT_SIZE,
               bouncing_fraction: float = 0.2) -> list[Clip]:
    """`count` clips of `num_frames` frames, the same for the same arguments."""
    rng = np.random.default_rng(seed)
    return [render_clip(sample_spec(rng, size, bouncing_fraction), num_frames) for _ in range(count)]
