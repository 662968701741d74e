"""What flows from the generator to the sinks: decoded chunks and per-frame metadata.

Frame indices and presentation timestamps are assigned once, where frames are produced; sinks
never invent them (docs/architecture.md, the data flow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """One generated chunk, decoded.

    frames: uint8 RGB, shape [F, H, W, 3], C-contiguous; or, from `stream(output_type="pt")`, the
        decoded pixels as a float tensor [F, 3, H, W] in about [-1, 1] (on the model's device), which
        `write_frame` converts to uint8 right where the frame is wanted (the producer: a ring slot).
    index: chunk number, 0 for the first chunk of the run.
    first_frame: global index of frames[0] in the output video.
    conditioning_frames: how many latent frames (k) conditioned this chunk.
    prompt: the prompt (or prompt blend description) this chunk was generated with.
    resume_point: with `stream(resume_points=True)`, what continuing after this chunk needs
        (`resume.ResumePoint`), else None.
    """

    frames: Any
    index: int
    first_frame: int
    conditioning_frames: int
    prompt: str
    resume_point: Any = None

    def __post_init__(self) -> None:
        f = self.frames
        if isinstance(f, np.ndarray):
            if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
                raise ValueError(f"Chunk.frames must be uint8 [F, H, W, 3], got {f.dtype} {tuple(f.shape)}")
        elif not (getattr(f, "ndim", 0) == 4 and f.shape[1] == 3 and f.is_floating_point()):
            raise ValueError(f"Chunk.frames must be uint8 [F, H, W, 3] or float pixels [F, 3, H, W], got "
                             f"{getattr(f, 'dtype', type(f).__name__)} {tuple(getattr(f, 'shape', ()))}")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the frames."""
        shape = self.frames.shape
        return (int(shape[1]), int(shape[2])) if isinstance(self.frames, np.ndarray) else (int(shape[2]), int(shape[3]))

    def write_frame(self, i: int, out: np.ndarray) -> None:
        """Write frame `i` as uint8 RGB into `out` `[H, W, 3]` (pixels are converted straight into it)."""
        if isinstance(self.frames, np.ndarray):
            out[...] = self.frames[i]
        else:
            pixels_to_uint8_into(self.frames[i], out)


def pixels_to_uint8_into(pixels: Any, out: np.ndarray) -> None:
    """One frame tensor `[3, H, W]` in [-1, 1] -> `out` uint8 `[H, W, 3]`, as `pixels_to_uint8` rounds.

    Duck-typed on the tensor's own methods so that this module (imported by the runtime and every
    sink) never imports torch. The rounded floats are cast while numpy copies them into `out` (on a
    CUDA device they become uint8 there first, so only one byte per channel crosses to the host)."""
    x = ((pixels.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    if x.device.type != "cpu":
        x = x.byte().cpu()
    np.copyto(out, x.permute(1, 2, 0).numpy(), casting="unsafe")


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
