"""Cross-process primitives without names, so that even `kill -9` of every process leaves nothing behind.

Why: on Linux, multiprocessing's Lock, Semaphore, Event, Queue and Condition are POSIX *named*
semaphores (`/dev/shm/sem.mp-*`). Only multiprocessing's resource tracker removes their names, and it
is a helper process in the run's process group: `kill -9` of the group kills it too, and a dozen names
stayed in /dev/shm for good. The primitives here are pipes. A pipe has no name; its file descriptors
reach a spawned child with the `Process` arguments (exactly like `multiprocessing.Pipe`'s
connections), and the kernel frees it once the last process holding it is gone, however it ended.

    PipeSemaphore(value)  a counting semaphore: the count is the number of bytes in the pipe
                          (`release` writes one, `acquire` reads one, waiting with a timeout).
    PipeLock()            a PipeSemaphore(1) used as a lock (also a context manager).
    MessagePipe()         a one-way channel of picklable messages: `sender()` goes to the other
                          process, `recv(timeout)` stays here.

Like the semaphores they replace: a process that dies holding a PipeLock takes the token with it
(the others time out instead of hanging, which callers already handle), and nothing is fair. A
PipeSemaphore's count saturates at the pipe's capacity (64 Ki on Linux): meant for locks and wake-ups.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from typing import Any, Optional

__all__ = ["PipeSemaphore", "PipeLock", "MessagePipe", "MessageSender", "ProcessEvent", "die_with_this_thread"]

_EVENT_SLICE = 0.5  # a ProcessEvent waiter re-checks the flag at least this often


def _wait_readable(fd: int, timeout: Optional[float]) -> None:
    """Block until `fd` has data (or EOF) or `timeout` seconds passed (None: no limit)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1))
    else:  # pragma: no cover - platforms without poll()
        select.select([fd], [], [], timeout)


class PipeSemaphore:
    """A semaphore made of a non-blocking pipe (see the module docstring).

    `acquire(block=True, timeout=None) -> bool` and `release()` behave like
    `multiprocessing.Semaphore`'s. Pass it to a child as a `Process` argument (or inside an object
    that is one); after that both processes share the same count.
    """

    def __init__(self, value: int = 1) -> None:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"PipeSemaphore value must be an int >= 0, got {value!r}")
        self._reader, self._writer = multiprocessing.Pipe(duplex=False)
        # O_NONBLOCK belongs to the pipe's open file description, which a child shares
        os.set_blocking(self._reader.fileno(), False)
        os.set_blocking(self._writer.fileno(), False)
        for _ in range(value):
            self.release()

    def _take(self) -> Optional[bool]:
        """Take one token without waiting: True, False when there is none, None at EOF (closed)."""
        try:
            return True if os.read(self._reader.fileno(), 1) else None
        except BlockingIOError:
            return False

    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        """Take one token; False when none came within `timeout` seconds (or `block` is False)."""
        got = self._take()
        if got or not block:
            return bool(got)
        deadline = None if timeout is None else time.monotonic() + timeout
        while got is False:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            _wait_readable(self._reader.fileno(), left)
            got = self._take()  # another waiter may have been faster: then wait again
        return bool(got)

    def release(self) -> None:
        """Give one token back (never blocks; a count at the pipe's capacity stays there)."""
        try:
            os.write(self._writer.fileno(), b"\x01")
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Close this process's ends (the other process keeps its own)."""
        self._reader.close()
        self._writer.close()


class PipeLock(PipeSemaphore):
    """A lock made of a PipeSemaphore(1): `acquire(timeout=...)`, `release()`, `with lock:`."""

    def __init__(self) -> None:
        super().__init__(1)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class MessageSender:
    """The sending end of a MessagePipe; thread-safe within its process. `send` blocks while the
    pipe is full (64 KiB unread), so the receiving process must keep reading."""

    def __init__(self, connection: Any) -> None:
        self._conn = connection
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"_conn": self._conn}

    def __setstate__(self, state: dict) -> None:
        self._conn = state["_conn"]
        self._lock = threading.Lock()

    def send(self, message: Any) -> None:
        with self._lock:
            self._conn.send(message)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class MessagePipe:
    """A one-way message channel: hand `sender()` to the other process, then call `close_sender()`
    here, so that `recv` sees the end of the pipe once the other process is gone (even in the middle
    of a message) instead of waiting for bytes that can no longer come."""

    def __init__(self) -> None:
        self._reader, writer = multiprocessing.Pipe(duplex=False)
        self._sender = MessageSender(writer)
        self.ended = False  # the sending side is gone and everything sent was received

    def sender(self) -> MessageSender:
        return self._sender

    def close_sender(self) -> None:
        self._sender.close()

    def recv(self, timeout: float) -> Optional[Any]:
        """The next message, or None when none came within `timeout` seconds or the pipe ended."""
        if not self.ended:
            try:
                if self._reader.poll(timeout):
                    return self._reader.recv()
                return None
            except (EOFError, OSError):
                self.ended = True
        time.sleep(timeout)  # keep the caller's polling pace rather than spinning
        return None

    def close(self) -> None:
        self._reader.close()
        self._sender.close()


class ProcessEvent:
    """A cross-process event that a dying waiter cannot break.

    `multiprocessing.Event` is built on `Condition`, whose `notify` waits for every sleeper to
    acknowledge: once a process is killed while waiting, the next `set()` hangs forever. This one is
    a shared flag plus a semaphore; `set` never blocks, and each waiter passes the wake-up on. Neither
    has a name in /dev/shm (`PipeSemaphore`, and `RawValue` lives in an unlinked mapping).
    """

    def __init__(self, ctx=None) -> None:
        ctx = ctx or multiprocessing.get_context("spawn")
        self._flag = ctx.RawValue("b", 0)
        self._sem = PipeSemaphore(0)

    def set(self) -> None:
        self._flag.value = 1
        self._sem.release()

    def is_set(self) -> bool:
        return bool(self._flag.value)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once set; False after `timeout` seconds (None: wait as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._flag.value:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            if self._sem.acquire(timeout=_EVENT_SLICE if left is None else min(left, _EVENT_SLICE)):
                self._sem.release()  # pass it on to the next waiter
                if self._flag.value:
                    return True
        return True


# -- child processes that die with us ------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _prctl():
    """libc's prctl on Linux (loaded once, before any fork), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_this_thread():
    """A `preexec_fn` that has the kernel SIGKILL the child when the thread starting it ends
    (PR_SET_PDEATHSIG follows the thread), or None where that does not exist. It runs between fork
    and exec and only makes two system calls, so it cannot deadlock on a lock of another thread."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the run died before the signal was armed
            os._exit(1)

    return preexec
