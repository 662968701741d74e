"""The page in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by
selenium) opens `serve`'s page in a network namespace the test makes (see test_service_webrtc.py);
the video plays (its time advances), a canvas capture of the video element shows the generated
colours, and a prompt typed into the page reaches the stream from the announced chunk on."""

from __future__ import annotations

from pathlib import Path

import pytest

from service_helpers import namespace_skip_reason, run_in_namespace

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_page_plays_the_stream_and_sends_a_prompt(tmp_path):
    reason = namespace_skip_reason("chromium", "chromedriver")
    if reason:
        pytest.skip(reason)
    shot = tmp_path / "page.png"
    r = run_in_namespace(HERE / "browser_check.py", str(shot))
    assert r["exit"] == 0
    t0, t1 = r["time"]
    assert t1 - t0 > 1.0  # 2 s of wall clock: the video's time advances
    assert r["connection"] == "connected" and r["viewers"] == 1
    for c in r["colour"]:
        assert c["diff"] < 12.0 and c["diff"] * 3 < c["diff_other"], c
    assert r["message"].startswith("set_prompt") and r["applies_at"] >= 1
    assert r["page_prompt"] == r["status_prompt"] == "a browser prompt"
    assert r["status_chunk"] >= r["applies_at"]
    assert r["out_fps"] == "20.0"
    assert r["log_has_no_errors"]
    assert shot.stat().st_size > 10_000
