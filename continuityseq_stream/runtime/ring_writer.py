"""The writer side of the frame ring (one writer, the producer): `reserve` a slot, fill `slot(seq)`
in place, `commit` it with its metadata, or `write` a ready frame (a copy). The design is in
`ringbuffer.py`.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from ..chunk import FrameMeta
from ..errors import ConfigError, RingClosed
from .ring_memory import (_BEGUN, _CLOSED, _HEADER, _R_ACTIVE, _R_FIELDS, _R_POLICY, _R_SEQ, _R_WAITING, _WRITE,
                          _WRITER_WAITING, RingMemory)

__all__ = ["RingWriter"]


def _truncate_utf8(text: str, limit: int) -> bytes:
    """At most `limit` bytes of `text` in UTF-8, cut at a character boundary."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


class RingWriter(RingMemory):
    """The writing end of a frame ring (`FrameRing` combines this with the reader side)."""

    def _init_local(self) -> None:
        super()._init_local()
        self._last_prompt: tuple[str, bytes] = ("", b"")  # the last prompt and its stored bytes
        self._reserved: Optional[int] = None   # seq the writer reserved and has not committed

    def _writer_blocked(self, ws: int) -> bool:
        ctl = self._ctl
        for r in range(self.max_readers):
            base = _HEADER + r * _R_FIELDS
            if ctl[base + _R_ACTIVE] and ctl[base + _R_POLICY] == 0 and ws - ctl[base + _R_SEQ] >= self.slots:
                return True
        return False

    def reserve(self, timeout: Optional[float] = None) -> Optional[int]:
        """Claim the next slot (one writer only); its sequence number, or None when a `block` reader
        was still a full ring behind after `timeout` seconds. Fill `slot(seq)`, then `commit(seq, meta)`.
        Raises RingClosed after `close`."""
        if self._reserved is not None:
            raise RuntimeError("frame ring: commit() the reserved slot before reserving another")
        if self._frames is None:
            self.attach()
        deadline = None if timeout is None else time.monotonic() + timeout
        ctl = self._ctl
        while True:
            with self._locked(timeout):
                if ctl[_CLOSED]:
                    raise RingClosed("frame ring: closed")
                ws = ctl[_WRITE]
                if not self._writer_blocked(ws):
                    ctl[_BEGUN] = ws + 1  # a `latest` reader copying this slot's old frame will drop it
                    self._reserved = ws
                    return ws
                ctl[_WRITER_WAITING] = 1
            if not self._sleep_on(self._writer_wake, deadline):
                return None

    def slot(self, seq: int) -> np.ndarray:
        """Writable `[H, W, 3]` uint8 view of the reserved slot `seq` (fill it before `commit`)."""
        if seq is None or seq != self._reserved:
            raise RuntimeError(f"frame ring: slot {seq} is not reserved")
        return self._frames[seq % self.slots]

    def commit(self, seq: int, meta: FrameMeta) -> None:
        """Publish the reserved slot `seq` with its metadata and wake the readers waiting for it."""
        if seq is None or seq != self._reserved:
            raise RuntimeError(f"frame ring: slot {seq} is not reserved")
        if self._last_prompt[0] != meta.prompt:
            self._last_prompt = (meta.prompt, _truncate_utf8(meta.prompt, self.prompt_bytes))
        prompt = self._last_prompt[1]
        slot = seq % self.slots
        self._meta[slot] = (seq, meta.index, meta.chunk, len(prompt))
        self._pts[slot] = meta.pts
        self._prompts[slot, : len(prompt)] = np.frombuffer(prompt, np.uint8)
        ctl = self._ctl
        with self._locked(30.0):
            ctl[_WRITE] = seq + 1
            waiting = []
            for r in range(self.max_readers):
                if ctl[self._r(r, _R_WAITING)]:
                    ctl[self._r(r, _R_WAITING)] = 0
                    waiting.append(r)
        self._reserved = None
        for r in waiting:
            self._reader_wake[r].release()

    def check_frame_size(self, height: int, width: int) -> None:
        """ConfigError unless frames of `height` x `width` fit the ring's slots."""
        if self._frames is None:
            self.attach()
        h, w = self._frames.shape[1:3]
        if (height, width) != (h, w):
            raise ConfigError(
                f"frame size changed during the run: {width}x{height}, the ring holds {w}x{h}; "
                "every chunk must have the first chunk's size")

    def write(self, frame: np.ndarray, meta: FrameMeta, timeout: Optional[float] = None) -> bool:
        """Append one frame (copied into the next slot); False when a `block` reader still held that
        slot after `timeout` seconds. Raises RingClosed after `close`."""
        if self._frames is None:
            self.attach()
        if frame.shape != self._frames.shape[1:]:
            self.check_frame_size(*frame.shape[:2])
            raise ConfigError(f"frame shape {frame.shape}: use uint8 [H, W, 3]")
        seq = self.reserve(timeout)
        if seq is None:
            return False
        self._frames[seq % self.slots] = frame
        self.commit(seq, meta)
        return True
