"""What flows from the generator to the sinks: decoded chunks and per-frame metadata.

Frame indices and presentation timestamps are assigned once, where frames are produced; sinks
never invent them (DESIGN.md, data flow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """One generated chunk, decoded.

    frames: uint8 RGB, shape [F, H, W, 3], C-contiguous.
    index: chunk number, 0 for the first chunk of the run.
    first_frame: global index of frames[0] in the output video.
    conditioning_frames: how many latent frames (k) conditioned this chunk.
    prompt: the prompt (or prompt blend description) this chunk was generated with.
    """

    frames: np.ndarray
    index: int
    first_frame: int
    conditioning_frames: int
    prompt: str

    def __post_init__(self) -> None:
        f = self.frames
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            raise ValueError(f"Chunk.frames must be uint8 [F, H, W, 3], got {f.dtype} {tuple(f.shape)}")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class FrameMeta:
    """Metadata of one output frame, assigned by the producer.

    index: global frame index (0-based); chunk: index of the chunk it came from;
    pts: presentation time in seconds at the output fps (index / fps); prompt: the chunk's prompt.
    """

    index: int
    chunk: int
    pts: float
    prompt: str
