"""The CLI with a preview window and a file at once, under a real X server (Xvfb): the window opens
and draws frames, `q` in it (sent with xdotool) ends the whole run gracefully, the file is complete.
(That the frame's pixels reach the screen is checked with a known pattern in test_preview_sink.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import av
import numpy as np
import pytest

from servers import Xvfb, assert_no_children

pytestmark = [pytest.mark.slow, pytest.mark.needs_display]

W, H = 64, 48


def _window_ids(xserver) -> list[str]:
    out = subprocess.run(["xdotool", "search", "--name", "continuityseq-stream"], env=xserver.env(),
                         capture_output=True, text=True, timeout=10)
    return out.stdout.split()


def test_preview_and_file_then_q_ends_the_run(tmp_path):
    try:
        xserver = Xvfb(320, 240)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    video = tmp_path / "v.mp4"
    with xserver:
        env = xserver.env(HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path.parent / "xdg-cache-preview"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "continuityseq_stream.cli", "--model", "demo-random", "-p", "preview test",
             "-WI", str(W), "-HI", str(H), "-T", "4", "-s", "2", "-r", "0", "--forever",
             "--sink", "preview", "--sink", f"file:{video}", "-o", str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not _window_ids(xserver) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.5)
            if not _window_ids(xserver):
                proc.kill()
                proc.wait()
                log = [ln for ln in proc.stderr.read().replace("\r", "\n").splitlines()
                       if "preview" in ln or "sink" in ln or "rror" in ln]
                pytest.fail("no preview window: " + "\n".join(log[-40:]))
            time.sleep(1.0)  # let it play a little (the pixels on screen are checked in test_preview_sink.py)
            subprocess.run(["xdotool", "search", "--name", "continuityseq-stream", "windowfocus", "--sync",
                            "key", "q"], env=xserver.env(), check=True, timeout=20, capture_output=True)
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        end = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("[end")]
        shown = re.search(r"preview \d+ (?:skipped \d+ )?shown (\d+)", end[-1] if end else "")
        assert shown and int(shown.group(1)) >= 4, end  # the window drew frames
        with av.open(str(video)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) >= 4 and frames[0].shape == (H, W, 3)
        assert np.std(np.stack(frames)) > 5  # real content, not a blank stream
    assert_no_children("Xvfb")
