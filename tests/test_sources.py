"""First-frame sources: init image, init video (last frames), text-to-image, save-init, upscaler errors."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from continuityseq_stream.pipeline import first_frame as sources
from continuityseq_stream.cli.app import flag_for
from continuityseq_stream.errors import CheckpointError, ConfigError


def _colour(i: int) -> tuple:
    return ((i * 37) % 256, (i * 91 + 40) % 256, (255 - i * 23) % 256)


def make_video(path, n, fps=10, w=64, h=48, keyint=None):
    """n frames of flat colours _colour(i), H.264 mp4."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "10", "preset": "ultrafast", **({"g": str(keyint)} if keyint else {})}
        for i in range(n):
            arr = np.zeros((h, w, 3), np.uint8)
            arr[:] = _colour(i)
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def test_to_pixels_forms_and_range():
    arr = np.zeros((10, 12, 3), np.uint8)
    arr[..., 0] = 255
    x = sources.to_pixels(arr, 16, 24)
    assert x.shape == (1, 3, 16, 24) and x.dtype == torch.float32
    assert x[0, 0].min() == 1.0 and x[0, 1].max() == -1.0
    assert sources.to_pixels(Image.fromarray(arr), 8, 8).shape == (1, 3, 8, 8)
    assert sources.to_pixels(np.stack([arr] * 3), 8, 8).shape == (3, 3, 8, 8)
    assert sources.to_pixels(torch.zeros(3, 4, 4), 8, 8).shape == (1, 3, 8, 8)
    with pytest.raises(ConfigError):
        sources.to_pixels(np.zeros((4, 4), np.float32), 8, 8)
    assert np.array_equal(sources.pixels_to_uint8(sources.to_pixels(arr, 10, 12)), arr[None])


def test_init_image_any_size(tmp_path):
    p = tmp_path / "in.jpg"
    Image.fromarray(np.full((123, 77, 3), 200, np.uint8)).save(p)
    x = sources.load_init_image(str(p), 48, 64)
    assert x.shape == (1, 3, 48, 64)
    assert torch.equal(sources.to_pixels(p, 48, 64), x)
    assert torch.allclose(x, torch.full_like(x, 200 / 127.5 - 1), atol=0.02)


def test_init_image_errors(tmp_path):
    with pytest.raises(ConfigError, match="init_image: .*does not exist"):
        sources.load_init_image(str(tmp_path / "missing.png"), 8, 8)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ConfigError, match="cannot read") as e:
        sources.load_init_image(str(bad), 8, 8)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("n,keyint", [(5, None), (120, 10)])
def test_init_video_last_frames(tmp_path, n, keyint):
    path = make_video(tmp_path / "v.mp4", n, keyint=keyint)
    x = sources.load_init_video(str(path), 24, 32, max_frames=3)
    assert x.shape == (3, 3, 24, 32)
    got = sources.pixels_to_uint8(x)[:, 12, 16].astype(int)
    want = np.array([_colour(i) for i in range(n - 3, n)])
    assert np.abs(got - want).max() <= 12, (got, want)


def test_init_video_shorter_than_max(tmp_path):
    path = make_video(tmp_path / "v.mp4", 2)
    assert sources.load_init_video(str(path), 8, 8, max_frames=8).shape[0] == 2


def test_init_video_seeks_instead_of_decoding_everything(tmp_path, monkeypatch):
    path = make_video(tmp_path / "long.mp4", 300, fps=30, keyint=15)
    decoded = []
    real_to_ndarray = av.VideoFrame.to_ndarray

    def counting(self, *a, **kw):
        decoded.append(1)
        return real_to_ndarray(self, *a, **kw)

    monkeypatch.setattr(av.VideoFrame, "to_ndarray", counting)
    x = sources.load_init_video(str(path), 8, 8, max_frames=4)
    assert x.shape[0] == 4
    assert len(decoded) < 100  # a full decode would touch 300 frames


def test_init_video_errors(tmp_path):
    with pytest.raises(ConfigError, match="init_video: .*does not exist"):
        sources.load_init_video(str(tmp_path / "nope.mp4"), 8, 8, 4)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(ConfigError, match="init_video: ") as e:
        sources.load_init_video(str(bad), 8, 8, 4)
    assert "\n" not in str(e.value)


@pytest.fixture
def demo_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.mark.slow
def test_generate_init_image_demo_in_minus_one_one(demo_cache, tmp_path):
    x = sources.generate_init_image("demo", "a red apple", height=48, width=64, image_height=32, image_width=32,
                                    guidance_scale=12.5, generator=torch.Generator().manual_seed(0),
                                    num_inference_steps=2)
    assert x.shape == (1, 3, 48, 64)
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.05  # mapped to [-1, 1], not left in [0, 1]
    png = sources.save_init_image(x, str(tmp_path / "init.png"))
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (64, 48)


def test_model_2d_errors(tmp_path):
    with pytest.raises(CheckpointError, match="^model_2d: ") as e:
        sources.generate_init_image(str(tmp_path / "nope"), "x", height=8, width=8)
    assert e.value.render(flag_for).startswith("-MP/--model-2d: ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="^model_2d: cannot load") as e:
        sources.generate_init_image(str(tmp_path / "empty"), "x", height=8, width=8)
    assert e.value.render(flag_for).startswith("-MP/--model-2d: cannot load")


def test_upscaler_errors(tmp_path):
    """No small offline latent upscaler exists to test the happy path; the error path is tested."""
    with pytest.raises(CheckpointError, match="^upscaler: ") as e:
        sources.load_upscaler("nobody-xyz/no-upscaler-123")
    assert e.value.render(flag_for).startswith("--upscaler: ")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="^upscaler: cannot load") as e:
        sources.load_upscaler(str(tmp_path / "empty"))
    assert e.value.render(flag_for).startswith("--upscaler: cannot load")
