"""How many latent frames of a finished chunk condition the next one.

After every chunk the pipeline asks a `ConditioningSelector` for k and hands the last k latent frames
of that chunk (clean, never noised) to the next chunk as conditioning. The original `inference.py`
draws k uniformly in [CN, CX] (inclusive) with Python's `random` after every chunk; a k larger than
the chunk simply means "all of its frames" (``latents[:, :, -k:]``).

Selectors hold their own seeded `random.Random`; they never touch global random state.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Optional

from ..config import check_conditioning_range
from ..errors import ConfigError

__all__ = ["ConditioningSelector", "UniformConditioning", "FixedConditioning", "clamp_k"]


def clamp_k(k: int, num_frames: int) -> int:
    """The number of frames ``latents[:, :, -k:]`` really takes from a chunk of `num_frames`."""
    return max(1, min(int(k), int(num_frames)))


class ConditioningSelector(ABC):
    """Picks k, the number of trailing latent frames of a chunk that condition the next chunk."""

    @abstractmethod
    def next_k(self, chunk_index: int, num_frames: int) -> int:
        """k (>= 1) to take from chunk `chunk_index`, which has `num_frames` latent frames.

        Called once after every chunk, in order (also after the last one, as the original does, so
        that a run of N chunks consumes the same random draws whether or not it continues).
        The pipeline clamps k to `num_frames`.
        """

    @property
    @abstractmethod
    def max_k(self) -> int:
        """The largest k this selector can return (how many frames an init video may provide)."""


class UniformConditioning(ConditioningSelector):
    """The original policy: k uniform in [cn, cx], inclusive, drawn after every chunk.

    `rng` is a `random.Random`; pass one seeded from the run's seed for reproducible runs
    (default: a fresh unseeded one).
    """

    def __init__(self, cn: int, cx: int, rng: Optional[random.Random] = None) -> None:
        check_conditioning_range(cn, cx)
        self.cn, self.cx = cn, cx
        self.rng = rng if rng is not None else random.Random()

    @property
    def max_k(self) -> int:
        return self.cx

    def next_k(self, chunk_index: int, num_frames: int) -> int:
        return self.rng.randint(self.cn, self.cx)

    def __repr__(self) -> str:
        return f"UniformConditioning(cn={self.cn}, cx={self.cx})"


class FixedConditioning(ConditioningSelector):
    """Always the same k (e.g. for benchmarks or a steadier look)."""

    def __init__(self, k: int) -> None:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"conditioning frames: got {k!r}; use at least 1")
        self.k = k

    @property
    def max_k(self) -> int:
        return self.k

    def next_k(self, chunk_index: int, num_frames: int) -> int:
        return self.k

    def __repr__(self) -> str:
        return f"FixedConditioning({self.k})"
