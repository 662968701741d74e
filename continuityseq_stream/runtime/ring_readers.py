"""The reader side of the frame ring: reader cursors with their policies, `acquire` / `release`
(a read-only view of the slot) and `read` (an own copy), the frames a `latest` reader skipped, and
how far behind the slowest reader is. The design is in `ringbuffer.py`.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from ..chunk import FrameMeta
from ..errors import ConfigError, ReaderRemoved, RingClosed
from .ring_memory import (_BEGUN, _CLOSED, _M_CHUNK, _M_INDEX, _M_PLEN, _R_ACTIVE, _R_POLICY, _R_SEQ, _R_SKIPPED,
                          _R_WAITING, _WRITE, _WRITER_WAITING, POLICY_CODES, RingMemory)

__all__ = ["RingReaders"]


class RingReaders(RingMemory):
    """Reader cursors of a frame ring (`FrameRing` combines this with the writer side)."""

    def _init_local(self) -> None:
        super()._init_local()
        self._held: dict[int, int] = {}  # block reader -> seq of the slot it holds (acquire .. release)

    def add_reader(self, policy: str) -> int:
        """Register a reader that starts at the next frame written; returns its id."""
        if policy not in POLICY_CODES:
            raise ConfigError(f"reader policy: got {policy!r}; use one of {', '.join(POLICY_CODES)}")
        with self._locked(5.0):
            for r in range(self.max_readers):
                if not self._ctl[self._r(r, _R_ACTIVE)]:
                    self._ctl[self._r(r, _R_POLICY)] = POLICY_CODES[policy]
                    self._ctl[self._r(r, _R_SEQ)] = self._ctl[_WRITE]
                    self._ctl[self._r(r, _R_SKIPPED)] = 0
                    self._ctl[self._r(r, _R_WAITING)] = 0
                    self._ctl[self._r(r, _R_ACTIVE)] = 1
                    return r
        raise ConfigError(f"frame ring: all {self.max_readers} reader cursors are in use; use fewer sinks")

    def remove_reader(self, reader: int) -> None:
        """Free a reader's cursor; a writer waiting for it (and the reader itself) are woken."""
        with self._locked(5.0):
            self._ctl[self._r(reader, _R_ACTIVE)] = 0
        self._writer_wake.release()
        self._reader_wake[reader].release()

    def skipped(self, reader: int) -> int:
        """Frames a `latest` reader skipped so far."""
        return int(self._ctl[self._r(reader, _R_SKIPPED)])

    def _frame_meta(self, slot: int) -> FrameMeta:
        m = self._meta[slot]
        prompt = bytes(self._prompts[slot, : m[_M_PLEN]]).decode("utf-8", "replace")
        return FrameMeta(index=int(m[_M_INDEX]), chunk=int(m[_M_CHUNK]), pts=float(self._pts[slot]), prompt=prompt)

    def acquire(self, reader: int, timeout: Optional[float] = None) -> Optional[tuple[np.ndarray, FrameMeta]]:
        """The reader's next frame and metadata; None when nothing came in `timeout` seconds.

        A `block` reader gets a read-only view of the slot, valid until `release(reader)` (call it
        once done; the writer cannot reuse the slot before). A `latest` reader gets its own copy
        (it never holds the writer), `release` is then a no-op. Raises RingClosed once the ring is
        closed and this reader has read everything, and ReaderRemoved when it was removed."""
        if reader in self._held:
            raise RuntimeError(f"frame ring: reader {reader} holds a frame; release() it first")
        deadline = None if timeout is None else time.monotonic() + timeout
        ctl, slots = self._ctl, self.slots
        r_seq = self._r(reader, _R_SEQ)
        while True:
            with self._locked(timeout):
                if not ctl[self._r(reader, _R_ACTIVE)]:
                    raise ReaderRemoved(f"frame ring: reader {reader} was removed")
                ws, rs = ctl[_WRITE], ctl[r_seq]
                ready = rs < ws
                if ready:
                    latest = ctl[self._r(reader, _R_POLICY)] == POLICY_CODES["latest"]
                    if latest and rs < ctl[_BEGUN] - slots:  # overwritten, or being overwritten now
                        ctl[self._r(reader, _R_SKIPPED)] += ws - 1 - rs
                        rs = ctl[r_seq] = ws - 1
                elif ctl[_CLOSED]:
                    raise RingClosed("frame ring: end of stream")
                else:
                    ctl[self._r(reader, _R_WAITING)] = 1
            if ready:
                if self._frames is None:
                    self.attach()
                slot = rs % slots
                if not latest:  # the writer cannot touch this slot before release(): no copy, no lock
                    view = self._frames[slot]
                    view.flags.writeable = False
                    self._held[reader] = rs
                    return view, self._frame_meta(slot)
                frame, meta = self._frames[slot].copy(), self._frame_meta(slot)
                with self._locked(timeout):
                    if rs >= ctl[_BEGUN] - slots:  # the writer did not start on this slot meanwhile
                        ctl[r_seq] = rs + 1
                        return frame, meta
                continue  # torn: the next round jumps to the newest frame
            if not self._sleep_on(self._reader_wake[reader], deadline):
                return None

    def release(self, reader: int) -> None:
        """Done with the frame `acquire` returned: a `block` reader's cursor moves on (the writer may
        reuse the slot; a view of it must not be used any more). No-op when nothing is held."""
        rs = self._held.pop(reader, None)
        if rs is None:
            return
        ctl = self._ctl
        with self._locked(5.0):
            ctl[self._r(reader, _R_SEQ)] = rs + 1
            # a writer waiting on a full ring is woken once a quarter of it is free, not at every
            # slot: one wake-up (two context switches) per 16 frames instead of per frame
            wake_writer = bool(ctl[_WRITER_WAITING]) and ctl[_WRITE] - (rs + 1) <= self.slots - self._wake_room
            if wake_writer:
                ctl[_WRITER_WAITING] = 0
        if wake_writer:
            self._writer_wake.release()

    def read(self, reader: int, timeout: Optional[float] = None) -> Optional[tuple[np.ndarray, FrameMeta]]:
        """`acquire` + own copy + `release`: the next frame as an array later writes do not touch."""
        item = self.acquire(reader, timeout)
        if item is None or reader not in self._held:
            return item
        try:
            return item[0].copy(), item[1]
        finally:
            self.release(reader)

    def fill(self) -> int:
        """Frames in the ring not yet read by the furthest-behind active reader (0..slots)."""
        ws, lag = int(self._ctl[_WRITE]), 0
        for r in range(self.max_readers):
            if self._ctl[self._r(r, _R_ACTIVE)]:
                lag = max(lag, ws - int(self._ctl[self._r(r, _R_SEQ)]))
        return min(lag, self.slots)
