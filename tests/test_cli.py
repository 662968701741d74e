"""The CLI end to end on the demo model: the original README command lines produce playable mp4s
(read back with PyAV), --init-video continues a video, and every bad input exits 2 with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from continuityseq_stream.cli.app import main, output_stem, slugify
from continuityseq_stream.config import GenerationConfig

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--width", "64", "--height", "48", "-s", "2", "-r", "0"]
PROMPT = "an astronaut is walking on the moon"


@pytest.fixture(autouse=True)
def demo_cache(tmp_path_factory, monkeypatch):
    """One demo-model cache for the whole session, never the user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def cli(args, capsys):
    """Run the CLI in-process; returns (exit status, stdout, stderr)."""
    try:
        main.main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def read_video(path):
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return np.stack(frames)


def _run_ok(args, capsys):
    code, out, err = cli(args, capsys)
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1])
    assert path.is_file() and path.suffix == ".mp4"
    return path, err


@pytest.mark.slow
def test_original_example_with_model_2d(tmp_path, capsys):
    # inference.py --model b-f/ContinuitySeq-A --prompt "..." --model-2d stabilityai/stable-diffusion-2-1
    #   --num-frames 16 --width 576 --height 320 --times 1 --sdp
    path, err = _run_ok(["--model", "demo-random", "--prompt", PROMPT, "--model-2d", "demo", "--num-frames", "4",
                         *SMALL, "--times", "1", "--sdp", "-o", str(tmp_path)], capsys)
    v = read_video(path)
    assert v.shape == (4, 48, 64, 3)
    assert path.name.startswith("an-astronaut-is-walking-on-the-moon_")
    assert "random weights" in err.lower()


@pytest.mark.slow
def test_original_example_with_init_image(tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "image.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (100, 150, 3), dtype=np.uint8)).save(img)
    # inference.py --model ... --prompt "..." --init-image "image.png" --num-frames 16 --times 1 --sdp
    path, _ = _run_ok(["--model", "demo-random", "--prompt", PROMPT, "--init-image", str(img), "--num-frames", "4",
                       *SMALL, "--times", "1", "--sdp", "-o", str(tmp_path / "out")], capsys)
    assert read_video(path).shape == (4, 48, 64, 3)


@pytest.mark.slow
def test_original_example_times_4_short_flags(tmp_path, capsys):
    # inference.py ... --times 4 --sdp (short flags and underscore spellings, -N, -I, -f)
    path, _ = _run_ok(["-m", "demo-random", "-p", PROMPT, "-MP", "demo", "-T", "3", "-WI", "64", "-HI", "48",
                       "--num_steps", "1", "-t", "4", "-S", "-CN", "1", "--max-conditioning-n-sample-frames", "2",
                       "-N", "-I", "-f", "8", "-r", "3", "-o", str(tmp_path)], capsys)
    v = read_video(path)
    assert v.shape == (12, 48, 64, 3)
    assert path.stem.endswith("_demo-random")
    init = path.with_name(path.stem + "_init.png")
    assert init.is_file()
    with av.open(str(path)) as c:
        assert float(c.streams.video[0].average_rate) == pytest.approx(8.0)


@pytest.mark.slow
def test_same_seed_same_video(tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "i.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(img)
    args = ["-m", "demo-random", "-p", "x", "-i", str(img), "-T", "2", *SMALL, "-t", "2"]
    a, _ = _run_ok([*args, "-o", str(tmp_path / "a")], capsys)
    b, _ = _run_ok([*args, "-o", str(tmp_path / "b")], capsys)
    assert np.array_equal(read_video(a), read_video(b))


@pytest.mark.slow
def test_init_video_continues_a_video(tmp_path, capsys):
    from test_sources import make_video

    video = make_video(tmp_path / "previous.mp4", 20, w=80, h=60)
    path, _ = _run_ok(["-m", "demo-random", "-p", "more", "--init-video", str(video), "-T", "4", *SMALL, "-t", "2",
                       "-CX", "3", "-o", str(tmp_path / "out")], capsys)
    assert read_video(path).shape == (8, 48, 64, 3)


@pytest.mark.slow
def test_upscale_with_demo_upscaler(tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "i.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(img)
    path, _ = _run_ok(["-m", "demo-random", "-p", "x", "-i", str(img), "-T", "2", "--width", "64", "--height", "64",
                       "-s", "1", "-t", "1", "-u", "--upscaler", "demo", "-o", str(tmp_path)], capsys)
    assert read_video(path).shape == (2, 128, 128, 3)


def _bad_cases(tmp):
    unreadable = tmp / "broken.png"
    unreadable.write_text("not an image")
    bad_video = tmp / "broken.mp4"
    bad_video.write_bytes(b"\0" * 100)
    base = ["-m", "demo-random", "-p", "x", "-MP", "demo", "-T", "2", "-s", "1", "--width", "64", "--height", "48"]
    return {
        "width": ([*base, "-WI", "60"], "-WI/--width"),
        "height": ([*base, "-HI", "50"], "-HI/--height"),
        "cn>cx": ([*base, "-CN", "4", "-CX", "2"], "-CX/--max_conditioning_n_sample_frames"),
        "cn<1": ([*base, "-CN", "0"], "-CN/--min_conditioning_n_sample_frames"),
        "missing image": ([*base, "-i", str(tmp / "nope.png")], "-i/--init-image"),
        "unreadable image": ([*base, "-i", str(unreadable)], "-i/--init-image"),
        "missing video": ([*base, "--init-video", str(tmp / "nope.mp4")], "--init-video"),
        "unreadable video": ([*base, "--init-video", str(bad_video)], "--init-video"),
        "model path": ([*base, "-m", str(tmp / "no-such-model")], "-m/--model"),
        "offline hub id": ([*base, "-m", "nobody-xyz/ContinuitySeq-none"], "-m/--model"),
        "unknown device": ([*base, "-d", "tpu"], "-d/--device"),
        "cuda missing": ([*base, "-d", "cuda"], "-d/--device"),
        "bad int": ([*base, "-T", "many"], "-T"),
        "xformers missing": ([*base, "-x"], "-x/--xformers"),
    }


@pytest.mark.parametrize("case", [
    "width", "height", "cn>cx", "cn<1", "missing image", "unreadable image", "missing video", "unreadable video",
    "model path", "offline hub id", "unknown device",
    # the device is checked by the producer (the main process has no torch): a process starts
    pytest.param("cuda missing", marks=pytest.mark.slow), "bad int", "xformers missing"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    import torch

    if case == "cuda missing" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if case == "xformers missing" and __import__("importlib").util.find_spec("xformers"):
        pytest.skip("xformers is installed here")
    args, flag = _bad_cases(tmp_path)[case]
    out_dir = tmp_path / "out"
    code, out, err = cli([*args, "-o", str(out_dir)], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert flag in lines[0] and "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir())  # nothing half-written


def test_naming():
    cfg = GenerationConfig(prompt="A Cat, on the Moon!", model="/models/ContinuitySeq-A", include_model=True)
    assert slugify("A Cat, on the Moon!") == "a-cat-on-the-moon"
    assert output_stem(cfg, "abc123") == "a-cat-on-the-moon_abc123_continuityseq-a"
    assert output_stem(cfg.replace(include_model=False), "abc123") == "a-cat-on-the-moon_abc123"


def test_subcommands_can_be_added(capsys):
    import click

    @click.command("hello")
    def hello():
        click.echo("hi")

    main.add_command(hello)
    try:
        assert cli(["hello"], capsys)[:2] == (0, "hi\n")
        code, out, _ = cli(["--help"], capsys)
        assert code == 0 and "run" in out and "hello" in out
    finally:
        main.commands.pop("hello")


def test_help_lists_every_original_flag(capsys):
    code, out, _ = cli(["run", "--help"], capsys)
    assert code == 0
    for flag in ["-m", "--model", "-p", "--prompt", "-t", "--times", "-o", "--output-dir", "-n", "--negative-prompt",
                 "-T", "--num-frames", "-CN", "--min_conditioning_n_sample_frames", "-CX",
                 "--max_conditioning_n_sample_frames", "-WI", "--width", "-HI", "--height", "-IW", "--image-width",
                 "-IH", "--image-height", "-MP", "--model-2d", "-i", "--init-image", "-VS", "--vae-scale", "-VB",
                 "--vae-batch-size", "-s", "--num-steps", "-g", "--guidance-scale", "-IG", "--image-guidance-scale",
                 "-f", "--fps", "-d", "--device", "-x", "--xformers", "-S", "--sdp", "-r", "--seed", "-I",
                 "--save-init", "-N", "--include-model", "-u", "--upscale", "--init-video", "--dtype", "--upscaler",
                 "--num_frames", "--min-conditioning-n-sample-frames"]:
        assert f" {flag}" in out or f"{flag}," in out, flag


# -- the executables, as a user runs them -----------------------------------------------------------
def _subprocess(cmd, tmp_path, env_cache):
    env = {**os.environ, "XDG_CACHE_HOME": str(env_cache), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


@pytest.mark.slow
def test_bin_inference_py_original_command_line(tmp_path, demo_cache):
    proc = _subprocess([sys.executable, str(REPO / "bin" / "inference.py"), "--model", "demo-random", "--prompt", PROMPT,
                        "--model-2d", "demo", "--num-frames", "3", "--width", "64", "--height", "48", "--times", "2",
                        "--sdp", "-s", "1"], tmp_path, demo_cache)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    if not path.is_absolute():
        path = tmp_path / path
    assert path.parent.name == "output"  # the original default output folder
    assert read_video(path).shape == (6, 48, 64, 3)


@pytest.mark.slow
def test_bin_continuityseq_stream_bad_input(tmp_path, demo_cache):
    proc = _subprocess([sys.executable, str(REPO / "bin" / "continuityseq-stream"), "-p", "x", "-WI", "100"],
                       tmp_path, demo_cache)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "-WI/--width" in proc.stderr
