"""FrameRing: block waits, latest skips and counts, independent readers, close wakes waiters,
removed readers free the writer, cross-process (spawn) write/read, nothing left in /dev/shm."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import numpy as np
import pytest

from continuityseq_stream.chunk import FrameMeta
from continuityseq_stream.errors import ConfigError
from continuityseq_stream.runtime.ringbuffer import FrameRing, ProcessEvent, ReaderRemoved, RingClosed

H, W = 6, 8


def frame(i: int) -> np.ndarray:
    return np.full((H, W, 3), i % 256, np.uint8)


def meta(i: int, prompt: str = "p") -> FrameMeta:
    return FrameMeta(index=i, chunk=i // 4, pts=i / 8, prompt=prompt)


@pytest.fixture
def ring():
    r = FrameRing(4, max_readers=4)
    yield r
    r.destroy()
    assert not os.path.exists(f"/dev/shm/{r.name}")


def test_frames_and_metadata_round_trip(ring):
    rd = ring.add_reader("block")
    ring.allocate(H, W)
    for i in range(3):
        assert ring.write(frame(i), meta(i, prompt=f"prompt {i}"))
    for i in range(3):
        f, m = ring.read(rd, timeout=1)
        assert (f == i).all() and f.shape == (H, W, 3)
        assert m == FrameMeta(index=i, chunk=i // 4, pts=i / 8, prompt=f"prompt {i}")
    assert ring.read(rd, timeout=0.05) is None


def test_read_returns_a_copy_that_later_writes_do_not_touch(ring):
    rd = ring.add_reader("latest")
    ring.allocate(H, W)
    ring.write(frame(1), meta(1))
    f, _ = ring.read(rd, timeout=1)
    for i in range(10):
        ring.write(frame(100 + i), meta(100 + i))
    assert (f == 1).all()


def test_block_reader_makes_the_writer_wait_until_it_reads(ring):
    rd = ring.add_reader("block")
    ring.allocate(H, W)
    for i in range(4):
        assert ring.write(frame(i), meta(i), timeout=0.1)
    t0 = time.monotonic()
    assert ring.write(frame(4), meta(4), timeout=0.3) is False  # a full ring behind: wait, then give up
    assert time.monotonic() - t0 >= 0.25
    done = threading.Event()

    def writer():
        ring.write(frame(4), meta(4), timeout=5)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    assert not done.wait(0.2)  # still blocked
    f, m = ring.read(rd, timeout=1)
    assert m.index == 0
    assert done.wait(2)  # the read freed a slot and woke the writer
    t.join()
    assert [ring.read(rd, timeout=1)[1].index for _ in range(4)] == [1, 2, 3, 4]


def test_block_reader_gets_a_read_only_view_that_the_writer_cannot_reuse_before_release(ring):
    rd = ring.add_reader("block")
    ring.allocate(H, W)
    for i in range(4):
        assert ring.write(frame(i), meta(i), timeout=0.1)
    view, m = ring.acquire(rd, timeout=1)
    assert m.index == 0 and (view == 0).all() and not view.flags.writeable
    assert np.shares_memory(view, ring._frames)  # no copy out of the ring
    with pytest.raises(RuntimeError, match="release"):
        ring.acquire(rd, timeout=0.1)  # one frame held at a time
    assert ring.reserve(timeout=0.2) is None  # the slot of frame 0 is still held: the writer waits
    assert (view == 0).all()
    ring.release(rd)
    seq = ring.reserve(timeout=0.2)
    assert seq == 4
    ring.slot(seq)[...] = 44  # the writer makes frame 4 in place, in the slot frame 0 had
    ring.commit(seq, meta(4))
    assert (view == 44).all()  # (this is why a view must not be used after release)
    assert [ring.read(rd, timeout=1)[1].index for _ in range(4)] == [1, 2, 3, 4]


def test_reserve_slot_commit_is_what_write_does(ring):
    rd = ring.add_reader("block")
    ring.allocate(H, W)
    seq = ring.reserve(timeout=0.1)
    with pytest.raises(RuntimeError, match="commit"):
        ring.reserve(timeout=0.1)
    with pytest.raises(RuntimeError, match="not reserved"):
        ring.slot(seq + 1)
    ring.slot(seq)[...] = 7
    assert ring.read(rd, timeout=0.05) is None  # nothing visible before commit
    ring.commit(seq, meta(0, prompt="made in place"))
    f, m = ring.read(rd, timeout=1)
    assert (f == 7).all() and m == meta(0, prompt="made in place")


def test_latest_reader_skips_a_slot_the_writer_has_started_to_overwrite(ring):
    rd = ring.add_reader("latest")
    ring.allocate(H, W)
    for i in range(4):
        ring.write(frame(i), meta(i))
    seq = ring.reserve(timeout=0.1)  # frame 4 goes where frame 0 is, not committed yet
    ring.slot(seq)[:2] = 200  # half written
    f, m = ring.read(rd, timeout=1)
    assert m.index == 3 and (f == 3).all()  # not the torn frame 0
    assert ring.skipped(rd) == 3


def test_latest_reader_drops_a_copy_the_writer_tore_while_it_was_copying(ring, monkeypatch):
    rd = ring.add_reader("latest")
    ring.allocate(H, W)
    for i in range(4):
        ring.write(frame(i), meta(i))
    real = ring._frame_meta
    calls = []

    def writer_strikes_during_the_copy(slot):
        if not calls:  # the reader has just copied frame 0; now the writer starts on its slot
            seq = ring.reserve(timeout=0.1)
            ring.slot(seq)[...] = 250
            ring.commit(seq, meta(4))
        calls.append(slot)
        return real(slot)

    monkeypatch.setattr(ring, "_frame_meta", writer_strikes_during_the_copy)
    f, m = ring.read(rd, timeout=1)
    assert m.index == 4 and (f == 250).all()  # the copy of frame 0 was discarded, the newest one read
    assert ring.skipped(rd) == 4


def test_destroy_with_a_frame_view_still_alive_leaves_it_readable():
    r = FrameRing(4, max_readers=1)
    rd = r.add_reader("block")
    r.allocate(H, W)
    r.write(frame(9), meta(9))
    view, _ = r.acquire(rd, timeout=1)
    r.destroy()  # unmapping now would make `view` a dangling pointer (segfault on access)
    assert (view == 9).all()
    assert not os.path.exists(f"/dev/shm/{r.name}")


def test_latest_reader_never_blocks_and_counts_what_it_skipped(ring):
    rd = ring.add_reader("latest")
    ring.allocate(H, W)
    for i in range(10):
        assert ring.write(frame(i), meta(i), timeout=0.01)
    f, m = ring.read(rd, timeout=1)
    assert m.index == 9 and (f == 9).all()  # overrun: jumps to the newest frame
    assert ring.skipped(rd) == 9
    ring.write(frame(10), meta(10))
    ring.write(frame(11), meta(11))
    assert [ring.read(rd, timeout=1)[1].index for _ in range(2)] == [10, 11]  # keeping up: every frame
    assert ring.skipped(rd) == 9


def test_readers_are_independent(ring):
    fast = ring.add_reader("block")
    slow = ring.add_reader("latest")
    ring.allocate(H, W)
    got = []
    for i in range(12):
        assert ring.write(frame(i), meta(i), timeout=1)
        got.append(ring.read(fast, timeout=1)[1].index)
    assert got == list(range(12))
    assert ring.read(slow, timeout=1)[1].index == 11
    assert ring.skipped(slow) == 11
    assert ring.fill() == 0


def test_close_wakes_waiting_readers_and_writer_and_readers_drain(ring):
    rd = ring.add_reader("block")
    idle = ring.add_reader("latest")
    ring.allocate(H, W)
    for i in range(4):
        ring.write(frame(i), meta(i))
    errors = []

    def blocked_writer():
        try:
            ring.write(frame(4), meta(4), timeout=10)
        except RingClosed:
            errors.append("writer")

    def idle_reader():
        try:
            while True:
                if ring.read(idle, timeout=10) is None:
                    return
        except RingClosed:
            errors.append("reader")

    threads = [threading.Thread(target=blocked_writer), threading.Thread(target=idle_reader)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # let both reach their wait (they would wait 10 s without the close)
    t0 = time.monotonic()
    ring.close()
    for t in threads:
        t.join(5)
    assert time.monotonic() - t0 < 2
    assert sorted(errors) == ["reader", "writer"]
    assert [ring.read(rd, timeout=1)[1].index for _ in range(4)] == [0, 1, 2, 3]  # drains what is left
    with pytest.raises(RingClosed):
        ring.read(rd, timeout=1)


def test_removed_reader_no_longer_holds_the_writer(ring):
    stuck = ring.add_reader("block")
    ring.allocate(H, W)
    for i in range(4):
        ring.write(frame(i), meta(i))
    threading.Timer(0.2, ring.remove_reader, args=(stuck,)).start()
    t0 = time.monotonic()
    assert ring.write(frame(4), meta(4), timeout=5)
    assert time.monotonic() - t0 < 2
    with pytest.raises(ReaderRemoved):
        ring.read(stuck, timeout=0.1)


def test_long_prompts_are_truncated_at_a_character_boundary():
    ring = FrameRing(2, prompt_bytes=5)
    try:
        rd = ring.add_reader("block")
        ring.allocate(H, W)
        ring.write(frame(0), meta(0, prompt="abcdé"))  # é is two bytes: cut before it
        assert ring.read(rd, timeout=1)[1].prompt == "abcd"
    finally:
        ring.destroy()


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="slots: got 1"):
        FrameRing(1)
    ring = FrameRing(2, max_readers=1)
    try:
        with pytest.raises(ConfigError, match="policy"):
            ring.add_reader("drop")
        ring.add_reader("block")
        with pytest.raises(ConfigError, match="reader cursors"):
            ring.add_reader("block")
        ring.allocate(H, W)
        with pytest.raises(ConfigError, match="frame size changed"):
            ring.write(np.zeros((H + 2, W, 3), np.uint8), meta(0))
    finally:
        ring.destroy()


# -- across processes --------------------------------------------------------------------------

def _child_writer(ring: FrameRing, n: int) -> None:
    assert ring.wait_ready(10)
    ring.attach()
    try:
        for i in range(n):
            frame_i = np.full((H, W, 3), i % 256, np.uint8)
            frame_i[0, 0, 0] = (i * 7) % 256
            while not ring.write(frame_i, FrameMeta(i, i // 4, i / 8, f"chunk {i // 4}"), timeout=1):
                pass
    finally:
        ring.detach()  # also closes the ring: end of stream


@pytest.mark.slow
def test_cross_process_write_and_read_with_spawn():
    ctx = mp.get_context("spawn")
    ring = FrameRing(8, max_readers=2, ctx=ctx)
    n = 300
    try:
        lossless = ring.add_reader("block")
        proc = ctx.Process(target=_child_writer, args=(ring, n))
        proc.start()
        ring.allocate(H, W)
        got = []
        while True:
            try:
                item = ring.read(lossless, timeout=10)
            except RingClosed:
                break
            assert item is not None, "no frame in 10 s"
            f, m = item
            assert f[0, 0, 0] == (m.index * 7) % 256 and f[1, 1, 1] == m.index % 256
            assert m.prompt == f"chunk {m.index // 4}"
            got.append(m.index)
        proc.join(10)
        assert proc.exitcode == 0
        assert got == list(range(n))  # lossless and in order through an 8-slot ring
    finally:
        ring.destroy()
    assert not os.path.exists(f"/dev/shm/{ring.name}")


def _wait_then_die(ev: ProcessEvent) -> None:
    ev.wait(60)


@pytest.mark.slow
def test_process_event_survives_a_killed_waiter():
    """mp.Event.set() hangs forever after a waiter was SIGKILLed; ProcessEvent must not."""
    ctx = mp.get_context("spawn")
    ev = ProcessEvent(ctx)
    proc = ctx.Process(target=_wait_then_die, args=(ev,))
    proc.start()
    time.sleep(1.0)  # let the child reach its wait
    proc.kill()
    proc.join(5)
    t = threading.Thread(target=ev.set, daemon=True)
    t.start()
    t.join(3)
    assert not t.is_alive() and ev.is_set() and ev.wait(0)


def test_allocate_refuses_a_ring_that_shared_memory_cannot_hold(monkeypatch):
    """A sparse segment larger than /dev/shm would only fail at the first write (SIGBUS in the
    producer mid-run): refuse it up front with one line naming --ring-frames."""
    import collections

    import continuityseq_stream.runtime.ring_memory as rb

    ring = FrameRing(64)
    try:
        fake = collections.namedtuple("St", "f_bavail f_frsize")(1024, 4096)  # 4 MiB free
        monkeypatch.setattr(rb.os, "statvfs", lambda folder: fake)
        with pytest.raises(ConfigError, match=r"ring_frames: 64 frames of 576x320 need \d+ MiB.*4 MiB free"):
            ring.allocate(320, 576)
        monkeypatch.undo()
        ring.allocate(8, 8)  # small enough: fine
    finally:
        ring.destroy()


def _child_in_place_writer(ring: FrameRing, n: int, size: int) -> None:
    assert ring.wait_ready(10)
    ring.attach()
    try:
        for i in range(n):
            seq = ring.reserve(timeout=1)
            while seq is None:
                seq = ring.reserve(timeout=1)
            ring.slot(seq)[...] = i % 251  # every pixel of frame i has the same value
            ring.commit(seq, FrameMeta(i, 0, i / 8, "p"))
    finally:
        ring.detach()


@pytest.mark.slow
def test_no_torn_frames_under_a_fast_in_place_writer_and_two_kinds_of_reader():
    """A spawned writer fills 256x256 slots in place as fast as it can; a lossless reader (views) and
    a lossy one (copies) check that every frame they get is uniform, i.e. never half overwritten."""
    ctx = mp.get_context("spawn")
    size, n = 256, 1500
    ring = FrameRing(4, max_readers=2, ctx=ctx)
    try:
        lossless, lossy = ring.add_reader("block"), ring.add_reader("latest")
        proc = ctx.Process(target=_child_in_place_writer, args=(ring, n, size))
        proc.start()
        ring.allocate(size, size)
        results = {}

        def consume(reader, name):
            got, bad = [], 0
            while True:
                try:
                    item = ring.acquire(reader, timeout=10)
                except RingClosed:
                    break
                assert item is not None
                f, m = item
                if f.min() != f.max() or f[0, 0, 0] != m.index % 251:
                    bad += 1
                got.append(m.index)
                del f, item
                ring.release(reader)
            results[name] = (got, bad)

        threads = [threading.Thread(target=consume, args=(lossless, "block")),
                   threading.Thread(target=consume, args=(lossy, "latest"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        proc.join(10)
        assert proc.exitcode == 0
        assert results["block"] == (list(range(n)), 0)
        got, bad = results["latest"]
        assert bad == 0 and got == sorted(got) and got[-1] == n - 1
        assert len(got) + ring.skipped(lossy) == n
    finally:
        ring.destroy()
