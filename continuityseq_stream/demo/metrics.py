"""Continuity metrics of chunked video: seams, drift and prompt adherence.

Input everywhere: uint8 frames `[N, H, W, 3]` and the chunk length L (frames per chunk); frame t and
t + 1 straddle a chunk boundary when (t + 1) % L == 0.

Two families:

- **Any model's output**: `frame_difference_stats` — mean absolute difference between consecutive
  frames at chunk boundaries vs inside chunks (a seam shows as a jump in this difference).
- **Single-object videos** (the synthetic data and the trained demo model): `track` finds the object
  by colour segmentation (pixels far from the frame's median colour = the background) and measures
  its centre (coverage-weighted circular mean, so wrap-around at the edges does not break it), area, colour and fill
  ratio (area / bounding box: square ~1, circle ~0.79, triangle ~0.5). From the track:
  `seam_stats` (velocity error across boundaries vs inside chunks, the *seam ratio*), `drift`
  (object size and colour over chunks), `adherence` (per chunk: colour, shape and direction asked for
  by a caption of `synthetic`'s grammar).

The velocity error of step t is |v_t - v_{t-1}| with v_t = c_{t+1} - c_t (wrapped to the torus):
zero for constant motion. Boundary errors are the two that involve the step across a boundary;
inside errors involve no such step. seam ratio = (mean boundary error + eps) / (mean inside error + eps)
with eps = 0.25 px (below tracking precision), so a perfectly smooth motion gives exactly 1 and a jump
at the joins gives a large value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import synthetic

__all__ = [
    "Track", "boundary_steps", "track", "wrapped_delta", "velocities", "seam_stats", "frame_difference_stats",
    "drift", "adherence", "classify_colour", "classify_shape", "direction_of", "continuity_report",
]

#: a pixel belongs to the object when its RGB distance to the background is above this
THRESHOLD = 60.0
#: velocity-error floor of the seam ratio, pixels/frame
SEAM_EPS = 0.25
#: slower than this (pixels/frame) counts as not moving
MIN_SPEED = 0.2


def boundary_steps(num_frames: int, chunk_length: int) -> np.ndarray:
    """Bool `[N - 1]`: step t (frame t -> t + 1) crosses a chunk boundary."""
    if chunk_length < 1:
        raise ValueError(f"chunk_length: got {chunk_length}; use the number of frames per chunk (>= 1)")
    return (np.arange(1, num_frames) % chunk_length) == 0


def _check(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: got shape {frames.shape}; use uint8 [N, H, W, 3]")
    return frames


# -- tracking -----------------------------------------------------------------------------------
@dataclass
class Track:
    """Per-frame measurements of the single object (NaN where none was found).

    centre `[N, 2]` (x, y pixels), area `[N]` (pixels), colour `[N, 3]` (mean RGB of the object's
    core), background `[N, 3]`, fill `[N]` (area / bounding-box area), size (frame side W, H).
    """

    centre: np.ndarray
    area: np.ndarray
    colour: np.ndarray
    background: np.ndarray
    fill: np.ndarray
    size: tuple[int, int]

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.centre[:, 0])


def _circular_mean(coords: np.ndarray, weights: np.ndarray, period: int) -> float:
    angle = 2 * np.pi * coords / period
    s, c = (weights * np.sin(angle)).sum(), (weights * np.cos(angle)).sum()
    return float(np.mod(np.arctan2(s, c) * period / (2 * np.pi), period))


def _measure(frame: np.ndarray, threshold: float, min_area: int):
    h, w = frame.shape[:2]
    pixels = frame.reshape(-1, 3).astype(np.float64)
    bg = np.median(pixels, axis=0)
    dist = np.linalg.norm(pixels - bg, axis=1).reshape(h, w)
    mask = dist > threshold
    area = int(mask.sum())
    if area < min_area:
        return None, bg
    # centre: coverage-weighted (anti-aliased edge pixels count by how far they are from the background)
    soft = dist > threshold / 2
    ys, xs = np.nonzero(soft)
    weight = np.clip(dist[soft] / np.percentile(dist[mask], 90), 0.0, 1.0)
    cx = _circular_mean(xs + 0.5, weight, w)
    cy = _circular_mean(ys + 0.5, weight, h)
    # fill ratio: roll so the object sits in the middle (handles wrap-around), then its bounding box
    rolled = np.roll(mask, (h // 2 - int(cy), w // 2 - int(cx)), axis=(0, 1))
    ry, rx = np.nonzero(rolled)
    fill = area / float((ry.max() - ry.min() + 1) * (rx.max() - rx.min() + 1))
    core = dist[mask] >= np.median(dist[mask])  # the more saturated half: edges blend with the background
    colour = pixels[mask.reshape(-1)][core].mean(axis=0)
    return (cx, cy, area, colour, fill), bg


def track(frames: np.ndarray, threshold: float = THRESHOLD, min_area: int = 4) -> Track:
    """Measure the object in every frame (see module doc)."""
    frames = _check(frames)
    n, h, w = frames.shape[:3]
    centre = np.full((n, 2), np.nan)
    area = np.full(n, np.nan)
    colour = np.full((n, 3), np.nan)
    background = np.zeros((n, 3))
    fill = np.full(n, np.nan)
    for i, frame in enumerate(frames):
        m, bg = _measure(frame, threshold, min_area)
        background[i] = bg
        if m is not None:
            centre[i], area[i], colour[i], fill[i] = (m[0], m[1]), m[2], m[3], m[4]
    return Track(centre, area, colour, background, fill, (w, h))


def wrapped_delta(a: np.ndarray, b: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """b - a on the torus of `size` (W, H): each component in [-S/2, S/2)."""
    period = np.asarray(size, dtype=np.float64)
    return np.mod(np.asarray(b) - np.asarray(a) + period / 2, period) - period / 2


def velocities(tr: Track) -> np.ndarray:
    """`[N - 1, 2]` wrapped displacement between consecutive frames (NaN where untracked)."""
    return wrapped_delta(tr.centre[:-1], tr.centre[1:], tr.size)


# -- seams --------------------------------------------------------------------------------------
def seam_stats(frames_or_track, chunk_length: int, eps: float = SEAM_EPS) -> dict:
    """Velocity error across chunk boundaries vs inside chunks, and their ratio (see module doc)."""
    tr = frames_or_track if isinstance(frames_or_track, Track) else track(frames_or_track)
    v = velocities(tr)
    n = len(tr.centre)
    crosses = boundary_steps(n, chunk_length)
    err = np.linalg.norm(v[1:] - v[:-1], axis=1)  # error t involves steps t and t + 1 of v
    at_boundary = crosses[1:] | crosses[:-1]
    ok = ~np.isnan(err)
    b, i = err[ok & at_boundary], err[ok & ~at_boundary]
    mb = float(b.mean()) if len(b) else float("nan")
    mi = float(i.mean()) if len(i) else float("nan")
    return {
        "boundary_velocity_error": mb, "inside_velocity_error": mi,
        "seam_ratio": (mb + eps) / (mi + eps) if len(b) and len(i) else float("nan"),
        "boundary_samples": int(len(b)), "inside_samples": int(len(i)),
        "tracked_fraction": float(tr.found.mean()) if n else float("nan"),
    }


def frame_difference_stats(frames: np.ndarray, chunk_length: int) -> dict:
    """Mean |frame t+1 - frame t| (0-255 scale) at chunk boundaries vs inside chunks; any video."""
    frames = _check(frames).astype(np.float32)
    d = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))
    crosses = boundary_steps(len(frames), chunk_length)
    b, i = d[crosses], d[~crosses]
    mb = float(b.mean()) if len(b) else float("nan")
    mi = float(i.mean()) if len(i) else float("nan")
    return {"boundary_frame_diff": mb, "inside_frame_diff": mi,
            "frame_diff_ratio": mb / mi if len(b) and len(i) and mi > 0 else float("nan"),
            "boundary_frame_diff_p95": float(np.percentile(b, 95)) if len(b) else float("nan"),
            "inside_frame_diff_p95": float(np.percentile(i, 95)) if len(i) else float("nan")}


# -- drift --------------------------------------------------------------------------------------
def drift(frames_or_track, chunk_length: int, window: int = 5) -> dict:
    """Object size and colour over chunks: per-chunk means, and first `window` chunks vs last `window`.

    area_change: relative change of the mean area; colour_shift / background_shift: RGB distance;
    series: per-chunk area and colour (NaN for chunks where the object was never found).
    """
    tr = frames_or_track if isinstance(frames_or_track, Track) else track(frames_or_track)
    n = len(tr.area)
    chunks = max(1, n // chunk_length)
    area = np.full(chunks, np.nan)
    colour = np.full((chunks, 3), np.nan)
    background = np.zeros((chunks, 3))
    for c in range(chunks):
        s = slice(c * chunk_length, (c + 1) * chunk_length)
        if np.any(tr.found[s]):
            area[c] = np.nanmean(tr.area[s])
            colour[c] = np.nanmean(tr.colour[s], axis=0)
        background[c] = tr.background[s].mean(axis=0)
    w = max(1, min(window, chunks // 2 or 1))
    a0, a1 = np.nanmean(area[:w]), np.nanmean(area[-w:])
    c0, c1 = np.nanmean(colour[:w], axis=0), np.nanmean(colour[-w:], axis=0)
    return {
        "chunks": int(chunks),
        "area_first": float(a0), "area_last": float(a1), "area_change": float((a1 - a0) / a0) if a0 else float("nan"),
        "colour_shift": float(np.linalg.norm(c1 - c0)),
        "background_shift": float(np.linalg.norm(background[-w:].mean(0) - background[:w].mean(0))),
        "found_chunks": float(np.mean(~np.isnan(area))),
        "series": {"area": area.tolist(), "colour": colour.tolist()},
    }


# -- adherence ----------------------------------------------------------------------------------
def classify_colour(rgb) -> Optional[str]:
    """Nearest palette colour of `synthetic.COLOURS` (None for NaN)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if np.isnan(rgb).any():
        return None
    names = list(synthetic.COLOURS)
    d = [np.linalg.norm(rgb - np.asarray(synthetic.COLOURS[k])) for k in names]
    return names[int(np.argmin(d))]


def classify_shape(fill: float) -> Optional[str]:
    """square (fill > 0.88), circle (0.64..0.88), triangle (< 0.64); None for NaN."""
    if fill is None or np.isnan(fill):
        return None
    return "square" if fill > 0.88 else "circle" if fill >= 0.64 else "triangle"


def direction_of(v, min_speed: float = MIN_SPEED) -> Optional[str]:
    """Dominant direction of a mean velocity (dx, dy); None when slower than `min_speed` or NaN."""
    dx, dy = float(v[0]), float(v[1])
    if np.isnan(dx) or np.isnan(dy) or max(abs(dx), abs(dy)) < min_speed:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _majority(values) -> Optional[str]:
    values = [v for v in values if v is not None]
    return max(set(values), key=values.count) if values else None


def adherence(frames_or_track, chunk_length: int, prompt: str, min_speed: float = MIN_SPEED) -> dict:
    """Per chunk: does the tracked object have the prompt's colour, shape and motion?

    Motion: the mean velocity of the chunk's inside steps points the asked direction ("bouncing":
    it moves at all). Returns fractions of chunks (`colour`, `shape`, `direction`, `colour_and_direction`,
    `all`) and the per-chunk labels. Raises ValueError for a prompt outside the grammar.
    """
    asked = synthetic.parse_caption(prompt)
    if asked is None:
        raise ValueError(f"prompt {prompt!r} is not in the synthetic grammar; adherence cannot be judged")
    tr = frames_or_track if isinstance(frames_or_track, Track) else track(frames_or_track)
    v = velocities(tr)
    n = len(tr.area)
    rows = []
    for c in range(n // chunk_length):
        lo, hi = c * chunk_length, (c + 1) * chunk_length
        inside = v[lo:hi - 1]
        mean_v = np.nanmean(inside, axis=0) if np.any(~np.isnan(inside[:, 0])) else np.array([np.nan, np.nan])
        moved = direction_of(mean_v, min_speed)
        colour = _majority([classify_colour(x) for x in tr.colour[lo:hi]])
        shape = _majority([classify_shape(x) for x in tr.fill[lo:hi]])
        ok_dir = moved is not None if asked["motion"] == "bouncing" else moved == asked["motion"]
        rows.append({"colour": colour, "shape": shape, "direction": moved, "ok_colour": colour == asked["colour"],
                     "ok_shape": shape == asked["shape"], "ok_direction": bool(ok_dir)})
    frac = (lambda key: float(np.mean([r[key] for r in rows])) if rows else float("nan"))
    both = [r["ok_colour"] and r["ok_direction"] for r in rows]
    every = [r["ok_colour"] and r["ok_direction"] and r["ok_shape"] for r in rows]
    return {"chunks": len(rows), "colour": frac("ok_colour"), "shape": frac("ok_shape"),
            "direction": frac("ok_direction"),
            "colour_and_direction": float(np.mean(both)) if rows else float("nan"),
            "all": float(np.mean(every)) if rows else float("nan"), "per_chunk": rows}


def continuity_report(frames: np.ndarray, chunk_length: int, prompt: Optional[str] = None) -> dict:
    """Everything above on one video (adherence only when `prompt` is in the grammar)."""
    tr = track(frames)
    out = {"frames": int(len(frames)), "chunk_length": int(chunk_length)}
    out.update(frame_difference_stats(frames, chunk_length))
    out.update(seam_stats(tr, chunk_length))
    d = drift(tr, chunk_length)
    out.update({k: v for k, v in d.items() if k != "series"})
    if prompt is not None and synthetic.parse_caption(prompt) is not None:
        a = adherence(tr, chunk_length, prompt)
        out.update({f"adherence_{k}": v for k, v in a.items() if k not in ("per_chunk", "chunks")})
    return out
