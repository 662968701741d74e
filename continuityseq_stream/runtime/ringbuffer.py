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

Modules: `ring_memory.py` (the layouts; `RingMemory`: the segment's life, the lock and wake-ups),
`ring_readers.py` (`RingReaders`: cursors, acquire/release/read), `ring_writer.py` (`RingWriter`:
reserve/slot/commit/write); `FrameRing` here is the two sides over one shared `RingMemory`.
"""

from __future__ import annotations

from ..errors import ReaderRemoved, RingClosed, RingTimeout
from ..ipc import ProcessEvent
from .ring_memory import POLICY_CODES, check_ring_memory, ring_bytes
from .ring_readers import RingReaders
from .ring_writer import RingWriter

__all__ = ["FrameRing", "ProcessEvent", "RingClosed", "ReaderRemoved", "RingTimeout", "POLICY_CODES", "check_ring_memory",
           "ring_bytes"]


class FrameRing(RingReaders, RingWriter):
    """Shared-memory frame ring. Create in the parent before spawning the producer, pass it as a
    `Process` argument, `allocate(h, w)` in the owner, `attach()` in the other process.

    slots: frames the ring holds (>= 2). max_readers: reader cursors available.
    prompt_bytes: bytes kept of each frame's prompt (UTF-8, truncated at a character boundary).

    The memory and its life come from `RingMemory`, the readers' calls from `RingReaders`, the
    writer's from `RingWriter`; this class adds nothing but their union.
    """
