"""The nameless cross-process primitives (continuityseq_stream.ipc): pipes instead of named semaphores."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from continuityseq_stream.ipc import MessagePipe, PipeLock, PipeSemaphore


def test_semaphore_counts_and_times_out():
    sem = PipeSemaphore(2)
    assert sem.acquire(timeout=0) and sem.acquire(block=False)
    t0 = time.monotonic()
    assert sem.acquire(timeout=0.2) is False
    assert 0.15 <= time.monotonic() - t0 < 5
    sem.release()
    assert sem.acquire(timeout=1)


def test_lock_excludes_threads_and_wakes_a_waiter():
    lock, inside, peak = PipeLock(), [0], [0]

    def work():
        for _ in range(200):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert peak[0] == 1 and inside[0] == 0
    assert lock.acquire(timeout=0)
    got = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=10)))
    waiter.start()
    time.sleep(0.1)
    assert got == []  # still held
    lock.release()
    waiter.join(10)
    assert got == [True]


def _hold_then_wait(lock: PipeLock, held) -> None:
    lock.acquire()
    held.release()
    time.sleep(60)


def _send_three(sender, sent) -> None:
    for i in range(3):
        sender.send(("message", i, "x" * 10_000))  # more than a pipe's atomic write
    sent.release()
    time.sleep(60)


@pytest.mark.slow
def test_a_process_killed_holding_the_lock_gives_a_timeout_not_a_hang():
    ctx = multiprocessing.get_context("spawn")
    lock, held = PipeLock(), PipeSemaphore(0)
    proc = ctx.Process(target=_hold_then_wait, args=(lock, held), daemon=True)
    proc.start()
    try:
        assert held.acquire(timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        assert lock.acquire(timeout=0.3) is False
    finally:
        proc.kill()


@pytest.mark.slow
def test_message_pipe_delivers_then_ends_when_the_sender_is_killed():
    ctx = multiprocessing.get_context("spawn")
    pipe, sent = MessagePipe(), PipeSemaphore(0)
    proc = ctx.Process(target=_send_three, args=(pipe.sender(), sent), daemon=True)
    proc.start()
    pipe.close_sender()
    try:
        got = [pipe.recv(30) for _ in range(3)]
        assert [m[:2] for m in got] == [("message", 0), ("message", 1), ("message", 2)]
        assert sent.acquire(timeout=30)
        assert pipe.recv(0.1) is None and not pipe.ended  # nothing more, the child is alive
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        t0 = time.monotonic()
        assert pipe.recv(0.2) is None and pipe.ended  # the end of the pipe, seen at once
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
        pipe.close()
