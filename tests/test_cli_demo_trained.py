"""`--model demo`: the CLI runs the shipped trained demo offline with its own settings, starting
from the shape the prompt asks for (drawn by the synthetic generator); the chunk made from it has
that colour."""

from __future__ import annotations

import subprocess
import sys

import av
import numpy as np
import pytest

from continuityseq_stream.demo import metrics
from continuityseq_stream.demo.trained import trained_demo_path


@pytest.mark.skipif(trained_demo_path() is None, reason="trained demo weights not in this tree")
@pytest.mark.slow
def test_cli_demo_trained_draws_the_prompted_colour(tmp_path):
    out = tmp_path / "v.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "continuityseq_stream.cli", "--model", "demo",
         "--prompt", "a red circle moving left on a gray background", "--times", "2", "-r", "0",
         "--sink", f"file:{out}"],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "trained on synthetic moving shapes" in proc.stderr
    with av.open(str(out)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert frames.shape == (8, 32, 32, 3)  # the demo's own settings: 32x32, 4 frames per chunk
    first = frames[:4].astype(int)  # the chunk conditioned on the rendered red circle
    r, g, b = first[..., 0], first[..., 1], first[..., 2]
    red = (r > 150) & (g < 100) & (b < 100)
    green = (g > 150) & (r < 100) & (b < 100)
    assert red.sum(axis=(1, 2)).min() >= 10, red.sum(axis=(1, 2))  # a red object in every frame
    assert red.sum() > 3 * green.sum()
    assert metrics.track(frames).found.all()  # one object tracked through both chunks


@pytest.mark.skipif(trained_demo_path() is None, reason="trained demo weights not in this tree")
@pytest.mark.slow
def test_cli_demo_uses_the_models_settings_for_flags_not_given_and_keeps_those_given(tmp_path):
    out = tmp_path / "v.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "continuityseq_stream.cli", "--model", "demo", "-p",
         "a yellow square moving right on a purple background", "-T", "3", "-s", "4", "--times", "2", "-r", "1",
         "--sink", f"file:{out}"],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    settings = [line for line in proc.stderr.splitlines() if "demo model settings" in line]
    assert settings and "width 32" in settings[0] and "guidance_scale 7.0" in settings[0], proc.stderr
    assert "num_frames" not in settings[0] and "num_steps" not in settings[0]  # given: kept
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (32, 32, 3)  # 2 chunks x -T 3 at the demo's 32x32
