"""Where the CLI follows the original inference.py (issue #15): the video size an init image or video
implies, the upscaler's steps and batch, and `--original-postprocess` (truncation, CLAHE, gamma).
The CLI tests run the real command (producer process, ring, H.264 file) and read the mp4 back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from continuityseq_stream.pipeline import first_frame as sources, postprocess
from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.errors import ConfigError
from continuityseq_stream.pipeline.first_frame import fit_video_size, init_source_size
from test_cli import cli, read_video
from test_sources import make_video

PROMPT = "an astronaut is walking on the moon"
FAST = ["-m", "demo-random", "-p", PROMPT, "-T", "2", "-s", "1", "-t", "1", "-r", "0"]


@pytest.fixture(autouse=True)
def demo_cache(tmp_path_factory, monkeypatch):
    """One demo-model cache for the whole session, never the user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _image(path, width, height, seed=0):
    rgb = np.random.RandomState(seed).randint(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return str(path)


def _run(args, capsys):
    """Run the CLI; returns (frames of the mp4 it wrote, stderr)."""
    code, out, err = cli(args, capsys)
    assert code == 0, err
    return read_video(out.strip().splitlines()[-1]), err


# -- the size rule --------------------------------------------------------------------------------
def test_fit_video_size_rounds_down_and_explicit_sizes_win():
    assert fit_video_size((200, 120)) == (200, 120)
    assert fit_video_size((205, 127)) == (200, 120)  # rounded down, as the original's `x - x % 8`
    assert fit_video_size((205, 127), 64, 48) == (64, 48)
    assert fit_video_size((200, 120), width=96) == (96, 56)  # 96 * 120 / 200 = 57.6 -> 56: aspect kept
    assert fit_video_size((200, 120), height=64) == (104, 64)  # 64 * 200 / 120 = 106.7 -> 104
    assert fit_video_size((400, 20), width=64) == (64, 8)  # never below 8


def test_fit_video_size_too_small_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"^init_video: it is 7x200 pixels.*width/height") as e:
        fit_video_size((7, 200), name="init_video")
    assert "\n" not in str(e.value)
    assert fit_video_size((7, 200), 16, 200) == (16, 200)  # both given: the source size does not matter


def test_init_source_size_reads_headers(tmp_path):
    assert init_source_size(_image(tmp_path / "a.jpg", 205, 127)) == (205, 127)
    assert init_source_size(init_video=str(make_video(tmp_path / "v.mp4", 3, w=80, h=60))) == (80, 60)
    assert init_source_size() is None
    with pytest.raises(ConfigError, match="^init_image: .*does not exist"):
        init_source_size(str(tmp_path / "missing.png"))
    (tmp_path / "bad.mp4").write_bytes(b"\0" * 100)
    with pytest.raises(ConfigError, match="^init_video: cannot open"):
        init_source_size(init_video=str(tmp_path / "bad.mp4"))


@pytest.mark.slow
def test_cli_init_image_sets_the_video_size(tmp_path, capsys):
    img = _image(tmp_path / "image.png", 200, 120)
    frames, err = _run([*FAST, "-i", img, "-o", str(tmp_path / "a")], capsys)
    assert frames.shape == (2, 120, 200, 3)
    assert "video size 200x120 from -i/--init-image" in err


@pytest.mark.slow
def test_cli_size_flags_win_over_the_init_image(tmp_path, capsys):
    img = _image(tmp_path / "image.png", 200, 120)
    frames, err = _run([*FAST, "-i", img, "-WI", "64", "-HI", "48", "-o", str(tmp_path / "a")], capsys)
    assert frames.shape == (2, 48, 64, 3)
    assert "video size" not in err
    frames, _ = _run([*FAST, "-i", img, "--width", "96", "-o", str(tmp_path / "b")], capsys)
    assert frames.shape == (2, 56, 96, 3)  # the height follows the image's aspect ratio


@pytest.mark.slow
def test_cli_init_video_sets_the_video_size(tmp_path, capsys):
    video = make_video(tmp_path / "previous.mp4", 6, w=80, h=60)
    frames, err = _run([*FAST, "--init-video", str(video), "-CX", "2", "-o", str(tmp_path / "a")], capsys)
    assert frames.shape == (2, 56, 80, 3)
    assert "video size 80x56 from --init-video of 80x60" in err


@pytest.mark.slow
def test_cli_trained_demo_takes_the_image_size_and_its_other_settings(tmp_path, capsys):
    img = _image(tmp_path / "image.png", 48, 40)
    frames, err = _run(["-m", "demo", "-p", "a red circle moving left on a gray background", "-i", img, "-s", "2",
                        "-t", "1", "-r", "0", "-o", str(tmp_path / "a")], capsys)
    assert frames.shape == (4, 40, 48, 3)  # the image's size; the demo's 4 frames per chunk
    settings = next(ln for ln in err.splitlines() if "demo model settings" in ln)
    assert "num_frames 4" in settings and "width" not in settings and "height" not in settings


@pytest.mark.slow
def test_cli_tiny_init_image_exits_2_with_one_line(tmp_path, capsys):
    img = _image(tmp_path / "tiny.png", 5, 5)
    code, _, err = cli([*FAST, "-i", img, "-o", str(tmp_path / "out")], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "-i/--init-image: it is 5x5 pixels" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- the upscaler -----------------------------------------------------------------------------------
def _count_upscaler_unet_calls(upscaler, calls: list) -> None:
    """Record the batch size of every forward call of the upscaler's UNet (one call per step: no CFG)."""
    upscaler.unet.register_forward_hook(lambda _m, args, _out: calls.append(int(args[0].shape[0])))


def test_upscaler_runs_num_steps_on_the_whole_chunk(tmp_path, monkeypatch):
    """open_stream (what the CLI's producer runs) with -s 7: the upscaler's UNet runs 7 times per chunk,
    each time on all the chunk's frames (the original: num_inference_steps = -s, batches of -T frames)."""
    from continuityseq_stream.pipeline.chunk_source import open_stream

    calls: list = []
    real_load = sources.load_upscaler

    def load_and_count(*args, **kwargs):
        upscaler = real_load(*args, **kwargs)
        _count_upscaler_unet_calls(upscaler, calls)
        return upscaler

    monkeypatch.setattr(sources, "load_upscaler", load_and_count)
    config = GenerationConfig(prompt="x", model="demo-random", init_image=_image(tmp_path / "i.png", 64, 64),
                              width=64, height=64, num_frames=3, num_steps=7, times=2, seed=0, upscale=True,
                              upscaler="demo", vae_batch_size=2)
    chunks = list(open_stream(config, progress=False))
    assert [c.frames.shape for c in chunks] == [(3, 128, 128, 3)] * 2
    assert calls == [3] * 14  # 2 chunks x 7 steps, 3 frames each (not -VB 2)


@pytest.mark.slow
def test_cli_upscale_runs_the_upscaler_num_steps(tmp_path, capsys):
    img = _image(tmp_path / "i.png", 64, 64)
    frames, err = _run(["-m", "demo-random", "-p", "x", "-i", img, "-T", "2", "-s", "7", "-t", "1", "-u",
                        "--upscaler", "demo", "-o", str(tmp_path)], capsys)
    assert frames.shape == (2, 128, 128, 3)
    assert "upscaler: 1 call(s) of 2 frames, steps run per call: 7" in err  # counted by the step callback


# -- --original-postprocess ---------------------------------------------------------------------------
def test_truncation_differs_from_rounding_by_half_an_lsb():
    values = torch.tensor([100.6 / 127.5 - 1, 0.0, 1.0, -1.0, 2.0])  # last: clamped
    pixels = values.view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert postprocess.pixels_to_uint8_truncated(pixels)[0, 0, :, 0].tolist() == [100, 127, 255, 0, 255]
    assert sources.pixels_to_uint8(pixels)[0, 0, :, 0].tolist() == [101, 128, 255, 0, 255]
    ramp = torch.linspace(-1, 1, 10001).view(1, 1, 1, -1).expand(1, 3, 1, -1)
    mean_gap = sources.pixels_to_uint8(ramp).astype(float).mean() - postprocess.pixels_to_uint8_truncated(ramp).mean()
    assert mean_gap == pytest.approx(0.5, abs=0.01)


def test_gamma_applies_to_the_0_255_values():
    white = np.full((1, 8, 8, 3), 255, np.uint8)
    assert (postprocess.clahe_gamma(white) == 228).all()  # 255 ** 0.98 = 228.4: white becomes 228
    assert (postprocess.clahe_gamma(white, gamma=1.0) == 255).all()


def test_clahe_gamma_per_frame_and_channel_as_defined():
    import cv2

    rng = np.random.RandomState(1)
    frames = rng.randint(90, 140, (2, 24, 32, 3)).astype(np.uint8)  # low contrast: CLAHE stretches it
    frames[1, ..., 2] = 0  # one flat channel must not change the others
    out = postprocess.clahe_gamma(frames)
    clahe = cv2.createCLAHE(clipLimit=1.2, tileGridSize=(1, 1))
    for f in range(2):
        for c in range(3):
            want = np.floor(clahe.apply(frames[f, :, :, c].copy()).astype(np.float64) ** 0.98).astype(np.uint8)
            assert np.array_equal(out[f, :, :, c], want), (f, c)
    assert np.array_equal(out[1, ..., :2], postprocess.clahe_gamma(frames[1:, ..., :2].copy())[0])
    assert np.ptp(out[0, ..., 0].astype(int)) > np.ptp(frames[0, ..., 0].astype(int))  # contrast went up


def test_open_stream_original_postprocess_frames(tmp_path):
    """--original-postprocess gives exactly original_postprocess(the decoded pixels) of the same run."""
    from continuityseq_stream.pipeline.chunk_source import open_stream

    config = GenerationConfig(prompt="x", model="demo-random", init_image=_image(tmp_path / "i.png", 32, 24),
                              width=32, height=24, num_frames=2, num_steps=1, times=2, seed=3)
    raw = [c.frames for c in open_stream(config, progress=False, output_type="pt")]
    looked = list(open_stream(config.replace(original_postprocess=True), progress=False, output_type="pt"))
    assert len(looked) == 2
    for pixels, chunk in zip(raw, looked):
        assert chunk.frames.dtype == np.uint8 and chunk.frames.shape == (2, 24, 32, 3)
        assert np.array_equal(chunk.frames, postprocess.original_postprocess(pixels))
        assert chunk.frames.max() <= 228


@pytest.mark.slow
def test_cli_original_postprocess(tmp_path, capsys):
    """A white shape on black from the trained demo: its gamma caps white at 228 (H.264 adds a few levels)."""
    args = ["-m", "demo", "-p", "a white triangle moving up on a black background", "-s", "4", "-t", "1", "-r", "0"]
    plain, _ = _run([*args, "-o", str(tmp_path / "a")], capsys)
    looked, _ = _run([*args, "--original-postprocess", "-o", str(tmp_path / "b")], capsys)
    assert plain.shape == looked.shape == (4, 32, 32, 3)
    luma = np.array([0.299, 0.587, 0.114])
    assert (plain @ luma).max() > 245  # measured 254
    assert (looked @ luma).max() < 236  # measured 231
