"""The frame ring's shared state and its life: the control block's layout, the data segment's
layout and size, and `RingMemory`, the part of `FrameRing` that makes, maps, unlinks and frees the
memory and holds the lock and wake-up semaphores both sides use.

The design (layout, policies, synchronisation, who unlinks what and when) is described once, in
`ringbuffer.py`; the reader and writer sides are `ring_readers.py` and `ring_writer.py`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import sys
import time
from contextlib import contextmanager
from multiprocessing import shared_memory
from typing import Iterator, Optional

import numpy as np

from ..errors import ConfigError, RingClosed, RingTimeout
from ..ipc import PipeLock, PipeSemaphore, ProcessEvent

__all__ = ["POLICY_CODES", "RingMemory", "check_ring_memory", "ring_bytes"]

POLICY_CODES = {"block": 0, "latest": 1}

# control block: header fields (_BEGUN: slots the writer has started to fill, = _WRITE + 1 while it fills one)
_WRITE, _CLOSED, _HEIGHT, _WIDTH, _WRITER_WAITING, _BEGUN, _HEADER = 0, 1, 2, 3, 4, 5, 8
# control block: per-reader fields
_R_ACTIVE, _R_POLICY, _R_SEQ, _R_SKIPPED, _R_WAITING, _R_FIELDS = 0, 1, 2, 3, 4, 5

# slot metadata (int64): sequence number, frame index, chunk index, prompt length in bytes
_M_SEQ, _M_INDEX, _M_CHUNK, _M_PLEN, _M_FIELDS = 0, 1, 2, 3, 4

_WAIT_SLICE = 0.5  # re-check state at least this often, even without a notification
_KEPT_MAPPED: list = []  # segments left mapped because a frame view outlived the ring (see `_unmap`)


def ring_bytes(slots: int, height: int, width: int, prompt_bytes: int = 256) -> int:
    """Bytes of the shared-memory segment of a ring of `slots` frames of `height` x `width`."""
    return _layout(slots, height, width, prompt_bytes)[-1]


def _layout(slots: int, height: int, width: int, prompt_bytes: int) -> tuple[int, int, int, int]:
    """Offsets of the metadata, pts and prompt arrays after the frames, and the total size."""
    frames = slots * height * width * 3
    meta = -(-frames // 8) * 8
    pts = meta + slots * _M_FIELDS * 8
    prompts = pts + slots * 8
    return meta, pts, prompts, prompts + max(1, slots * prompt_bytes)


def check_ring_memory(slots: int, height: int, width: int, prompt_bytes: int = 256, folder: str = "/dev/shm") -> None:
    """ConfigError when `folder` cannot hold a ring of `slots` frames of `height` x `width`.

    The segment is created sparse and only fails when a page is first written: the producer would
    die of SIGBUS mid-run (Docker's default /dev/shm is 64 MB; 64 frames of 1152x640 need 140 MB).
    `runtime.run` calls this with the frame size the config will produce before the producer starts,
    so an absurd `ring_frames` (or size) is refused before any model work; `allocate` checks again."""
    size = ring_bytes(slots, height, width, prompt_bytes)
    try:
        st = os.statvfs(folder)
    except OSError:
        return  # no such folder on this platform: nothing to check
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise ConfigError(
            f"{{ring_frames}}: {slots} frames of {width}x{height} need {size / 2**20:,.0f} MiB of shared memory, "
            f"{folder} has {free / 2**20:,.0f} MiB free; use a smaller {{ring_frames}} or video size, or more "
            "shared memory (e.g. docker run --shm-size=1g)", names=("ring_frames",))


class RingMemory:
    """The shared part of a frame ring: control block, lock, wake-ups, the data segment's life.

    Made in the parent before the producer is spawned; pickling carries the shared objects (and
    only those) to the child, where `_init_local` starts the process-local state afresh. Subclasses
    that keep process-local state of their own extend `_init_local`.
    """

    def __init__(self, slots: int, *, max_readers: int = 16, prompt_bytes: int = 256, ctx=None) -> None:
        if not isinstance(slots, int) or slots < 2:
            raise ConfigError(f"slots: got {slots!r}; use at least 2 frames")
        if not isinstance(max_readers, int) or max_readers < 1:
            raise ConfigError(f"max_readers: got {max_readers!r}; use at least 1")
        if not isinstance(prompt_bytes, int) or prompt_bytes < 0:
            raise ConfigError(f"prompt_bytes: got {prompt_bytes!r}; use 0 or more")
        ctx = ctx or mp.get_context("spawn")
        self.slots, self.max_readers, self.prompt_bytes = slots, max_readers, prompt_bytes
        self._wake_room = max(1, slots // 4)
        self.name = f"csq_{os.getpid()}_{secrets.token_hex(6)}"
        self._lock = PipeLock()
        self._writer_wake = PipeSemaphore(0)
        self._reader_wake = [PipeSemaphore(0) for _ in range(max_readers)]
        self._ready = ProcessEvent(ctx)
        self._ctl = ctx.RawArray("q", _HEADER + max_readers * _R_FIELDS)
        self._init_local()

    def _init_local(self) -> None:
        """This process's own state: nothing mapped yet."""
        self._shm: Optional[shared_memory.SharedMemory] = None
        self._owner = False
        self._destroyed = False
        self._unlinked = False
        self._frames = self._meta = self._pts = self._prompts = None

    # -- pickling (to the producer at spawn time only) -------------------------------------------
    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in ("slots", "max_readers", "prompt_bytes", "_wake_room", "name", "_lock",
                                              "_writer_wake", "_reader_wake", "_ready", "_ctl")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_local()

    # -- the data segment ------------------------------------------------------------------------
    def _map(self, shm: shared_memory.SharedMemory, height: int, width: int) -> None:
        meta, pts, prompts, _ = _layout(self.slots, height, width, self.prompt_bytes)
        buf = shm.buf
        self._frames = np.ndarray((self.slots, height, width, 3), np.uint8, buf, 0)
        self._meta = np.ndarray((self.slots, _M_FIELDS), np.int64, buf, meta)
        self._pts = np.ndarray((self.slots,), np.float64, buf, pts)
        self._prompts = np.ndarray((self.slots, self.prompt_bytes), np.uint8, buf, prompts)
        self._shm = shm

    def allocate(self, height: int, width: int) -> None:
        """Create the data segment for frames of `height` x `width` (owner side) and mark the ring ready."""
        if self._shm is not None:
            raise RuntimeError("ring already allocated")
        if height < 1 or width < 1:
            raise ConfigError(f"frame size: got {width}x{height}; frames need at least 1x1 pixels")
        size = ring_bytes(self.slots, height, width, self.prompt_bytes)
        check_ring_memory(self.slots, height, width, self.prompt_bytes)
        shm = shared_memory.SharedMemory(name=self.name, create=True, size=size)
        self._owner = True
        self._map(shm, height, width)
        self._meta[:, _M_SEQ] = -1
        self._ctl[_HEIGHT], self._ctl[_WIDTH] = height, width
        self._ready.set()

    def unlink(self) -> None:
        """Remove the segment's name (owner side). The memory stays mapped where it is mapped; call it
        as soon as every process has attached, so that not even a SIGKILL of all of them can leave
        the segment behind in /dev/shm. Safe to call twice."""
        if not self._owner or self._unlinked or self._shm is None:
            return
        self._unlinked = True
        try:
            self._shm.unlink()  # also tells the resource tracker
        except FileNotFoundError:
            pass

    def wait_ready(self, timeout: Optional[float]) -> bool:
        """True once `allocate` ran (in any process)."""
        return self._ready.wait(timeout)

    def attach(self) -> None:
        """Map the owner's data segment (non-owner side; call after `wait_ready`)."""
        if self._shm is not None:
            return
        if self._destroyed:
            raise RingClosed("frame ring: already destroyed")
        if not self._ready.is_set():
            raise RuntimeError("ring not allocated yet; wait_ready() first")
        self._map(shared_memory.SharedMemory(name=self.name), int(self._ctl[_HEIGHT]), int(self._ctl[_WIDTH]))

    @property
    def frame_shape(self) -> Optional[tuple[int, int, int]]:
        if not self._ready.is_set():
            return None
        return int(self._ctl[_HEIGHT]), int(self._ctl[_WIDTH]), 3

    def destroy(self) -> None:
        """Close the ring, unmap the segment and, in the owner, unlink it. Safe to call twice."""
        self.close()
        try:
            with self._locked(2.0):
                self._unmap()
        except RingTimeout:
            self._unmap()  # a dead process holds the lock; nobody else can be reading

    def detach(self) -> None:
        """Unmap without unlinking (non-owner side)."""
        self.destroy()

    def _unmap(self) -> None:
        self._ctl[_CLOSED] = 1
        self._destroyed = True
        if self._shm is None:
            return
        if self._owner:
            self.unlink()
        shm, self._shm = self._shm, None
        frames = self._frames
        self._frames = self._meta = self._pts = self._prompts = None
        # A view `acquire` handed out has `frames` as its base: while one is alive (a sink thread
        # stuck in write, a caller that kept one), unmapping would turn it into a dangling pointer
        # (numpy does not hold the segment's buffer export). Then keep the mapping until the process
        # exits; its name is already gone, so the memory is freed then.
        if frames is not None and sys.getrefcount(frames) > 2:
            _KEPT_MAPPED.append(shm)
            return
        del frames
        try:
            shm.close()
        except BufferError:
            _KEPT_MAPPED.append(shm)

    # -- locking and wake-ups --------------------------------------------------------------------
    @contextmanager
    def _locked(self, timeout: Optional[float]) -> Iterator[None]:
        if not self._lock.acquire(timeout=timeout if timeout is not None else 30.0):
            raise RingTimeout("frame ring: lock not available (did a process die while holding it?)")
        try:
            yield
        finally:
            self._lock.release()

    @staticmethod
    def _sleep_on(sem, deadline: Optional[float]) -> bool:
        """Wait for a wake-up on `sem`; False when the deadline passed."""
        if deadline is None:
            sem.acquire(timeout=_WAIT_SLICE)
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sem.acquire(timeout=min(left, _WAIT_SLICE))
        return True

    def _r(self, reader: int, field: int) -> int:
        """Index in the control block of a reader's `field` (`_R_*`)."""
        return _HEADER + reader * _R_FIELDS + field

    # -- end of stream ---------------------------------------------------------------------------
    def close(self) -> None:
        """End of stream: wake every waiter; readers drain what is left, writes raise RingClosed.
        Takes no lock, so it works even when a dead process holds it."""
        self._ctl[_CLOSED] = 1
        self._writer_wake.release()
        for sem in self._reader_wake:
            sem.release()

    @property
    def closed(self) -> bool:
        return bool(self._ctl[_CLOSED])

    @property
    def written(self) -> int:
        """Frames written so far."""
        return int(self._ctl[_WRITE])
