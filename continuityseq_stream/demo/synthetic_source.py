"""A synthetic chunk source for tests and benchmarks of the streaming runtime (no model needed).

`synthetic_stream(config)` yields `Chunk`s like `pipeline.chunk_source.open_stream` does: `config.times` chunks of
`config.num_frames` frames of `config.height` x `config.width` (or forever when `times` is 0). Every
frame is a pure function of its global index, so a test can recompute what any sink should have
received: a diagonal colour gradient that moves one step per frame, with the frame index written as
16 black/white blocks (most significant bit first) across the top rows. The blocks survive lossy
H.264 at the default quality, so `decode_index` reads the index back from a decoded file frame.

Used through the producer's source hook, e.g. `RuntimeOptions(source="continuityseq_stream.demo.synthetic_source:
synthetic_stream", source_kwargs={"delay": 0.05})`. Knobs, all explicit arguments:
    delay: seconds of simulated compute per chunk (time.sleep inside the generator, like a model).
    fail_after: raise RuntimeError("synthetic failure ...") instead of producing that chunk.
    fail_as_config: with `fail_after`, raise a ConfigError naming `guidance_scale` instead (a user
        error raised in the producer process, as a bad setting found there would be).
Like the real source it takes the live-control arguments `schedule`, `updates` and `abort` (see
prompts/): each chunk's `prompt` (and so the frame headers) follows the schedule and live changes,
pause/stop work at chunk boundaries; the pixels do not depend on the prompt.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Optional

import numpy as np

from ..chunk import Chunk
from ..config import GenerationConfig
from ..errors import bad_value
from ..prompts import LiveSettings, PromptSchedule, UpdateChannel

__all__ = ["synthetic_frame", "synthetic_stream", "decode_index", "INDEX_BITS"]

INDEX_BITS = 16


def _bar_geometry(width: int, height: int) -> tuple[int, int]:
    """(block width, bar height) of the index bar."""
    return max(1, width // INDEX_BITS), max(2, min(16, height // 4))


def synthetic_frame(index: int, width: int, height: int) -> np.ndarray:
    """The frame with global index `index`: uint8 [height, width, 3]."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (x * 2 + index * 3) % 256
    frame[..., 1] = (y * 2 + index * 5) % 256
    frame[..., 2] = ((x + y) + index * 7) % 256
    bw, bh = _bar_geometry(width, height)
    for bit in range(INDEX_BITS):
        on = (index >> (INDEX_BITS - 1 - bit)) & 1
        frame[:bh, bit * bw:(bit + 1) * bw] = 255 if on else 0
    return frame


def decode_index(frame: np.ndarray) -> int:
    """Read back the index written by `synthetic_frame` (also from a lossy-decoded frame)."""
    height, width = frame.shape[:2]
    bw, bh = _bar_geometry(width, height)
    index = 0
    for bit in range(INDEX_BITS):
        # the centre of each block, away from edges where compression blurs
        block = frame[bh // 4: bh - bh // 4 or 1, bit * bw + bw // 4: (bit + 1) * bw - bw // 4 or bit * bw + 1]
        index = (index << 1) | int(block.mean() > 127)
    return index


def synthetic_stream(
    config: GenerationConfig, *, delay: float = 0.0, fail_after: Optional[int] = None,
    fail_as_config: bool = False, schedule: Optional[PromptSchedule] = None, updates: Optional[UpdateChannel] = None,
    abort: Optional[Callable[[], bool]] = None,
) -> Iterator[Chunk]:
    """Chunks of deterministic moving-pattern frames (see the module docstring)."""
    f, w, h = config.num_frames, config.width, config.height
    live = LiveSettings.from_config(config, schedule)
    n = 0
    while config.times == 0 or n < config.times:
        settings = live.next_chunk(n, n * f / config.fps, channel=updates, abort=abort)
        if settings is None:
            return
        if fail_after is not None and n >= fail_after and fail_as_config:
            raise bad_value("guidance_scale", config.guidance_scale, f"synthetic failure before chunk {n}")
        if fail_after is not None and n >= fail_after:
            raise RuntimeError(f"synthetic failure before chunk {n}")
        if delay:
            time.sleep(delay)
        frames = np.stack([synthetic_frame(n * f + i, w, h) for i in range(f)])
        yield Chunk(frames=frames, index=n, first_frame=n * f,
                    conditioning_frames=min(f, settings.max_conditioning_frames), prompt=settings.prompt)
        n += 1
