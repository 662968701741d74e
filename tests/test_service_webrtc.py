"""WebRTC viewers of `serve`, for real: aiortc WHEP clients in a network namespace the test makes
(aiortc's ICE skips 127.0.0.1; in `unshare -n` with 127.0.0.2 on lo it uses that and nothing else),
watching the synthetic source. The frames' colours match what was generated (each frame carries its
index), a viewer that stops reading slows neither the other viewer nor generation, and the data
channel takes commands and carries per-chunk events. The work is in tests/webrtc_check.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from service_helpers import namespace_skip_reason, run_in_namespace

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_whep_viewers_see_the_generated_colours_and_a_stalled_viewer_holds_nobody():
    reason = namespace_skip_reason()
    if reason:
        pytest.skip(reason)
    r = run_in_namespace(HERE / "webrtc_check.py")
    assert r["exit"] == 0 and r["delete_status"] == 200
    assert r["shape"] == [96, 128, 3]
    # colours: every checked frame is the synthetic frame its index bar names (lossy codec: a few levels
    # off), and clearly not the frame 8 later
    assert len(r["colour"]) >= 10
    for c in r["colour"]:
        assert c["diff"] < 12.0 and c["diff"] * 3 < c["diff_other"], c
    indexes = [c["index"] for c in r["colour"]]
    assert indexes == sorted(indexes) and indexes[-1] > indexes[0]
    # viewer B stopped reading: A still gets the output rate, generation still keeps pace
    assert r["after_b_stopped"] >= 0.6 * r["fps"] * r["watch_s"], r
    assert r["chunks_during"] >= 0.6 * r["elapsed"] / r["chunk_s"], r
    assert r["viewers_status"] == 2
    delivered = [m for m in r["metrics"] if m.startswith("continuityseq_frames_delivered_total")]
    assert len(delivered) == 2 and all(float(m.split()[-1]) > 50 for m in delivered)
    # the data channel: one-line error for bad JSON, the prompt change answered and seen in the events
    answers = r["answers"]
    assert any(a["ok"] is False and a["error"].startswith("malformed JSON") for a in answers)
    ok = [a for a in answers if a.get("ok")]
    assert ok and ok[0]["command"] == "set_prompt"
    at = ok[0]["applies_at_chunk"]
    chunks = [e for e in r["events"] if e["event"] == "chunk"]
    assert chunks and all(e["prompt"] == "a webrtc prompt" for e in chunks if e["chunk"] >= at)
    assert any(e["event"] == "seam" for e in r["events"])
    assert r["status_messages"] >= 3
