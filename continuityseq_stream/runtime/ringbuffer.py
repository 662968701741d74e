"""A bounded shared-memory ring of video frames with one read cursor per reader.

Why: the producer process generates frames; the sinks in the main process read them. A fixed ring in
`multiprocessing.shared_memory` bounds memory whatever the run length and moves frames across the
process boundary without pickling and without copies of its own: the producer makes each frame
straight into a slot (`reserve` -> fill `slot(seq)` -> `commit`; the uint8 conversion of the
decoded pixels writes there), and a lossless reader gets a read-only view of the slot (`acquire` ->
use -> `release`), which the writer cannot reuse until it is released. `write` / `read` are the
copying forms of the same calls.

Layout
    - a control block (`RawArray` of int64, created with the ring, before the producer is spawned):
      write cursor, closed flag, frame size, and per reader: active, policy, read cursor, skipped.
    - a data segment (`SharedMemory`, created by `allocate` once the first frame's size is known):
      `slots` frames of H x W x 3 uint8, then per slot: sequence number, frame index, chunk index,
      pts, and the prompt as at most `prompt_bytes` UTF-8 bytes (longer prompts are truncated at a
      character boundary; the full prompt is still in the producer).

Cursors count frames since the start of the ring (`seq`); frame `seq` lives in slot `seq % slots`.
The ring holds the frames `[write_seq - slots, write_seq)`.

Reader policies (see `sinks/base.py`):
    block   lossless: the writer waits while this reader is a full ring behind.
    latest  never holds the writer: a reader whose next frame was overwritten jumps to the newest
            frame and counts the frames it skipped. A reader that keeps up still gets every frame.

Synchronisation: one lock guards the cursors (never held while pixels move); wake-ups go through one
semaphore per reader and one for the writer, released only when the other side said it waits (a flag
in the control block). The lock and semaphores are pipes (`ipc.PipeLock` / `PipeSemaphore`), not
multiprocessing's named semaphores, so they have no name that a SIGKILL could leave in /dev/shm. Deliberately no `multiprocessing.Condition`: its `notify` waits
for the sleepers to acknowledge and hangs forever once a waiting process was killed. All of it is
created before the producer is spawned and travels with it. One writer (the producer). A slot is
never rewritten while a `block` reader has not released it (its cursor still points at it). A
`latest` reader copies its frame without the lock and then checks, seqlock style, that the writer
did not start on that slot meanwhile (the control block's `begun` counter); if it did, the copy is
dropped and the reader jumps ahead, so it never returns a torn frame. Every wait has
a timeout (a call returns `None`/`False` rather than hanging); `close` (end of stream) wakes every
waiter, readers then drain what is left for them and get `RingClosed`; `remove_reader` frees the
writer from a reader that went away.

The process that calls `allocate` owns the segment and unlinks its name: early with `unlink()` once
the other process has attached (then even SIGKILL of every process leaves nothing in /dev/shm), at the
latest in `destroy` (always call it, e.g. in a `finally`); other processes `attach` and `detach`.
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

from ..chunk import FrameMeta
from ..errors import ConfigError, ReaderRemoved, RingClosed, RingTimeout  # noqa: F401 (re-exported)
from ..ipc import PipeLock, PipeSemaphore, ProcessEvent  # noqa: F401 (ProcessEvent re-exported)

__all__ = ["FrameRing", "ProcessEvent", "RingClosed", "ReaderRemoved", "RingTimeout", "POLICY_CODES", "check_ring_memory",
           "ring_bytes"]

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


def _truncate_utf8(text: str, limit: int) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8")


class FrameRing:
    """Shared-memory frame ring. Create in the parent before spawning the producer, pass it as a
    `Process` argument, `allocate(h, w)` in the owner, `attach()` in the other process.

    slots: frames the ring holds (>= 2). max_readers: reader cursors available.
    prompt_bytes: bytes kept of each frame's prompt (UTF-8, truncated at a character boundary).
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
        self._shm: Optional[shared_memory.SharedMemory] = None
        self._owner = False
        self._destroyed = False
        self._unlinked = False
        self._frames = self._meta = self._pts = self._prompts = None
        self._last_prompt: tuple[str, bytes] = ("", b"")
        self._reserved: Optional[int] = None   # seq the writer reserved and has not committed
        self._held: dict[int, int] = {}       # block reader -> seq of the slot it holds (acquire .. release)

    # -- pickling (to the producer at spawn time only) -------------------------------------------
    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in ("slots", "max_readers", "prompt_bytes", "_wake_room", "name", "_lock", "_writer_wake", "_reader_wake", "_ready", "_ctl")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_local()

    # -- memory ----------------------------------------------------------------------------------
    def _layout(self, height: int, width: int) -> tuple[int, int, int, int]:
        return _layout(self.slots, height, width, self.prompt_bytes)

    def _map(self, shm: shared_memory.SharedMemory, height: int, width: int) -> None:
        meta, pts, prompts, _ = self._layout(height, width)
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
        size = self._layout(height, width)[-1]
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

    # -- locking ---------------------------------------------------------------------------------
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

    # -- readers ---------------------------------------------------------------------------------
    def _r(self, reader: int, field: int) -> int:
        return _HEADER + reader * _R_FIELDS + field

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

    # -- writer ----------------------------------------------------------------------------------
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

    def fill(self) -> int:
        """Frames in the ring not yet read by the furthest-behind active reader (0..slots)."""
        ws, lag = int(self._ctl[_WRITE]), 0
        for r in range(self.max_readers):
            if self._ctl[self._r(r, _R_ACTIVE)]:
                lag = max(lag, ws - int(self._ctl[self._r(r, _R_SEQ)]))
        return min(lag, self.slots)
