"""Producer process on its own: the shape handshake, per-frame metadata, stats, stop, error reports."""

from __future__ import annotations

import pytest

from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.errors import ConfigError
from continuityseq_stream.runtime.producer import Producer
from continuityseq_stream.runtime.ringbuffer import FrameRing, RingClosed
from continuityseq_stream.demo.synthetic_source import synthetic_frame

SOURCE = "continuityseq_stream.demo.synthetic_source:synthetic_stream"


def cfg(**kw):
    return GenerationConfig(**{"prompt": "p", "width": 32, "height": 16, "num_frames": 4, "fps": 4.0, "times": 3, **kw})


def drive(producer, ring, reader, limit=None):
    """Parent side of the protocol; returns (frames read, events)."""
    frames, events = [], []
    while True:
        ev = producer.next_event(0.2)
        if ev is not None:
            events.append(ev)
            if ev[0] == "shape":
                ring.allocate(ev[1], ev[2])
        if ring.frame_shape is not None:
            try:
                item = ring.read(reader, timeout=0.2)
            except RingClosed:
                return frames, events
            if item is not None:
                frames.append(item)
                if limit is not None and len(frames) == limit:
                    producer.stop()
        elif not producer.is_alive() and ev is None:
            return frames, events


def run_producer(config, limit=None, **kw):
    ring = FrameRing(4, max_readers=1)
    reader = ring.add_reader("block")
    producer = Producer(config, ring, source=SOURCE, **kw)
    try:
        producer.start()
        frames, events = drive(producer, ring, reader, limit)
        assert producer.join(20)
        return frames, events, producer.stats()
    finally:
        producer.shutdown(5)
        ring.destroy()


@pytest.mark.slow
def test_times_chunks_with_metadata_assigned_once():
    frames, events, stats = run_producer(cfg())
    assert [e[0] for e in events if e[0] != "log"] == ["shape", "attached", "done"]
    assert events[0] == ("shape", 16, 32)
    assert [m.index for _, m in frames] == list(range(12))
    assert [m.chunk for _, m in frames] == [i // 4 for i in range(12)]
    assert [m.pts for _, m in frames] == [i / 4.0 for i in range(12)]
    assert all((f == synthetic_frame(m.index, 32, 16)).all() and m.prompt == "p" for f, m in frames)
    assert stats["chunks"] == 3 and stats["frames"] == 12 and stats["gen_fps"] > 0


@pytest.mark.slow
def test_stop_ends_a_forever_producer_after_the_chunk_being_written():
    frames, events, stats = run_producer(cfg(times=0), limit=6, source_kwargs={"delay": 0.05})
    assert len(frames) % 4 == 0 and len(frames) >= 8  # the chunk in flight was finished, not cut
    assert [m.index for _, m in frames] == list(range(len(frames)))
    assert events[-1][0] == "done"


@pytest.mark.slow
def test_unexpected_error_is_reported_with_type_and_message(capfd):
    frames, events, _ = run_producer(cfg(times=0), source_kwargs={"fail_after": 2})
    assert len(frames) == 8
    assert events[-1][:4] == ("error", "RuntimeError", "synthetic failure before chunk 2", True)
    assert "Traceback" in capfd.readouterr().err  # the traceback of an unexpected error goes to stderr


@pytest.mark.slow
def test_a_source_that_cannot_be_imported_is_a_config_error_report():
    ring = FrameRing(2)
    try:
        with pytest.raises(ConfigError, match="module:function"):
            Producer(cfg(), ring, source="nocolon")
    finally:
        ring.destroy()
    p_ring = FrameRing(2, max_readers=1)
    reader = p_ring.add_reader("block")
    producer = Producer(cfg(), p_ring, source="continuityseq_stream.no_such_module:f")
    try:
        producer.start()
        frames, events = drive(producer, p_ring, reader)
    finally:
        producer.shutdown(5)
        p_ring.destroy()
    assert frames == [] and events[-1][:2] == ("error", "ConfigError") and events[-1][3] is False
