"""The update channel: carries validated live updates from the runtime (main process) to the
producer (spawned child), each taking effect at a chunk boundary the submitter learns.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import time
from typing import Any, Callable, List, Mapping, Optional

from ..errors import ChannelError, ConfigError, UpdateError
from ..ipc import PipeLock
from .updates import MAX_QUEUED_UPDATES, SETTINGS_COMMANDS, validate_update, _UPDATE_BYTES, _is_int

class UpdateChannel:
    """Carries live updates from the runtime (main process) to the producer (spawned child).

    Must reach the child as an argument of `Process(...)`, not through a queue. Works between threads
    of one process too (the Python API).

    Exactness of "applies at chunk k": `next_chunk` is the first chunk whose settings are not fixed.
    The runtime's `submit` reads it and stores the update under one lock; the producer's
    `begin_chunk(k)` takes the same lock, takes every stored update and moves `next_chunk` past k. So
    an update answered with k is applied to chunk k — never earlier, never later. pause / stop are
    shared flags read at the boundary: chunk k does not start while paused; stop makes `begin_chunk`
    return None.

    Bounded: updates wait in a fixed shared-memory mailbox of `capacity` slots (JSON, at most
    `_UPDATE_BYTES` each); when it is full (a paused producer takes nothing), `submit` raises
    UpdateError instead of growing memory. Nothing here has a name in /dev/shm (the lock is an
    `ipc.PipeLock`, the mailbox a `RawArray`), so a SIGKILL of every process leaves nothing behind.

    Deliberately no `multiprocessing.Condition` (its `notify` waits for every sleeper and hangs for
    good once a sleeping producer was killed): the paused producer polls the flags, and every lock is
    taken with a timeout (a side that died holding it gives a ChannelError, not a hang).
    """

    def __init__(self, context: Any = None, capacity: int = MAX_QUEUED_UPDATES, first_chunk: int = 0) -> None:
        """first_chunk: the first chunk the producer will make (> 0 for a resumed run)."""
        if not _is_int(capacity) or capacity < 1:
            raise ConfigError(f"UpdateChannel capacity: got {capacity!r}; use at least 1 update")
        ctx = context if context is not None else multiprocessing.get_context("spawn")
        self.capacity = capacity
        self._lock = PipeLock()
        self._next = ctx.RawValue("q", first_chunk)
        self._sent = ctx.RawValue("q", 0)   # updates stored so far
        self._taken = ctx.RawValue("q", 0)  # updates the producer took so far
        self._paused = ctx.RawValue("b", 0)
        self._stopped = ctx.RawValue("b", 0)
        self._lengths = ctx.RawArray("q", capacity)
        self._box = ctx.RawArray("B", capacity * _UPDATE_BYTES)

    # -- runtime side -------------------------------------------------------------------------
    def submit(self, update: Mapping[str, Any]) -> int:
        """Send a settings change; returns the chunk it applies at. UpdateError when the mailbox is
        full (`capacity` changes already wait for the next chunk) or the stream is stopping."""
        u = validate_update(update)
        if u["command"] not in SETTINGS_COMMANDS:
            raise UpdateError(f"{u['command']} is not a settings change; use pause(), resume() or stop()", "command")
        data = json.dumps(u, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(data) > _UPDATE_BYTES:  # cannot happen within the prompt limits; checked all the same
            raise UpdateError(f"{u['command']}: the change takes {len(data)} bytes; at most {_UPDATE_BYTES}", None)
        with self._locked():
            if self._stopped.value:
                raise UpdateError("the stream is stopping; no more changes are taken", None)
            at = int(self._next.value)
            waiting = self._sent.value - self._taken.value
            if waiting >= self.capacity:
                raise UpdateError(
                    f"{waiting} changes already wait for chunk {at} (at most {self.capacity}); send more once it "
                    f"has started{' (the stream is paused: resume first)' if self._paused.value else ''}", None)
            slot = self._sent.value % self.capacity
            memoryview(self._box).cast("B")[slot * _UPDATE_BYTES: slot * _UPDATE_BYTES + len(data)] = data
            self._lengths[slot] = len(data)
            self._sent.value += 1
        return at

    def pause(self) -> int:
        """No chunk starts from now until `resume`; returns the chunk that waits."""
        with self._locked():
            self._paused.value = 1
            return int(self._next.value)

    def resume(self) -> int:
        """Let generation go on; returns the chunk that starts next."""
        with self._locked():
            self._paused.value = 0
            return int(self._next.value)

    def stop(self) -> int:
        """End the stream at the next boundary; returns the first chunk that will not be made."""
        with self._locked():
            self._stopped.value = 1
            return int(self._next.value)

    def state(self) -> dict:
        with self._locked():
            return {
                "next_chunk": int(self._next.value),
                "paused": bool(self._paused.value),
                "stopping": bool(self._stopped.value),
                "queued_updates": int(self._sent.value - self._taken.value),
            }

    # -- producer side ------------------------------------------------------------------------
    def begin_chunk(
        self, chunk: int, timeout: float = 10.0, poll: float = 0.25, abort: Optional[Callable[[], bool]] = None
    ) -> Optional[List[dict]]:
        """Called by the producer before generating chunk `chunk`: waits while paused, returns the
        updates that apply at this chunk, or None when the run must stop. `abort()` (checked while
        paused) lets the producer give up when the runtime is gone. `timeout`: seconds to wait for
        the channel's lock (ChannelError after that)."""
        while True:
            with self._locked(timeout):
                if self._stopped.value:
                    return None
                if not self._paused.value:
                    break
            if abort is not None and abort():
                return None
            time.sleep(poll)  # paused: poll the flags (see the class docstring)
        with self._locked(timeout):
            if self._stopped.value:
                return None
            if chunk < self._next.value:
                raise ValueError(f"chunk {chunk} already began (next is {self._next.value})")
            box = memoryview(self._box).cast("B")
            raw = []
            for n in range(self._taken.value, self._sent.value):
                slot = n % self.capacity
                raw.append(bytes(box[slot * _UPDATE_BYTES: slot * _UPDATE_BYTES + self._lengths[slot]]))
            self._taken.value = self._sent.value
            self._next.value = chunk + 1
        return [json.loads(r.decode("utf-8")) for r in raw]

    @contextlib.contextmanager
    def _locked(self, timeout: float = 10.0):
        if not self._lock.acquire(timeout=timeout):
            raise ChannelError(f"update channel: lock not free within {timeout:g} s (the other side died holding it?)")
        try:
            yield
        finally:
            self._lock.release()

    def close(self) -> None:
        """Nothing to release any more (no queue feeder thread; the pipe closes with the object); kept so
        callers can end the channel the same way in each process."""
