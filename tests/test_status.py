"""The stderr status line: counters, sink states, and "paused" while a control pause holds the producer."""

from __future__ import annotations

from continuityseq_stream.runtime.status import SinkStatus, format_status


def _line(**kw):
    base = dict(label="stream", elapsed=130.4, chunks=41, frames=328, gen_fps=2.5, out_fps=16, ring_fill=12,
                ring_slots=64, sinks=[SinkStatus("file:out.mp4", 328), SinkStatus("preview", 301, skipped=27),
                                      SinkStatus("rtmp://x", 320, extra={"held": 95}), SinkStatus("zmq", 3, state="failed")])
    base.update(kw)
    return format_status(**base)


def test_status_line_shows_counters_and_sink_states():
    assert _line() == ("[stream 0:02:10] chunks 41 (328 frames) | gen 2.5 fps / out 16 fps | ring 12/64 | "
                       "file:out.mp4 328 | preview 301 skipped 27 | rtmp://x 320 held 95 | zmq 3 (failed)")


def test_status_line_says_paused_only_while_paused():
    assert _line(paused=True).startswith("[stream 0:02:10] chunks 41 (328 frames) paused | gen")
    assert "paused" not in _line(paused=False)
