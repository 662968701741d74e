"""ContinuitySeqPipeline with tiny random-weight components (CPU, float32).

The first chunk is recomputed step by step here, from the formulas of ARCHITECTURE.md §9 (CFG with
the unconditional half first, "" as default negative, clean conditioning at every step, latent x
scaling factor, DDIM eta 0 written out by hand), and compared with the pipeline.
"""

from __future__ import annotations

import gc
import itertools
import random

import numpy as np
import pytest
import torch

from continuityseq_stream.chunk import Chunk
from continuityseq_stream.pipeline.conditioning import FixedConditioning, UniformConditioning
from continuityseq_stream.errors import CheckpointError, ConfigError
import continuityseq_stream as csq  # its names import on first use: diffusers loads when a test needs it, not at collection
from continuityseq_stream.prompts import LiveSettings, UpdateChannel
from continuityseq_stream.pipeline.first_frame import to_pixels
from continuityseq_stream.demo.tiny import save_tiny_pipeline

H = W = 32  # latents 4x4
F = 4


def _image(seed=0, h=40, w=56):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_first_chunk(pipe, prompt, image, steps, guidance, seed, vae_scale=None):
    """The first chunk, written out: returns (uint8 frames, final latents, init latents)."""
    tok, te, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet

    def embed(text):
        ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return te(ids).last_hidden_state  # after the final layer norm, no attention mask

    scale = vae_scale if vae_scale is not None else vae.config.scaling_factor
    with torch.no_grad():
        e_u, e_c = embed(""), embed(prompt)
        # image -> [-1, 1] at the output size, bilinear
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
        x = torch.nn.functional.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=True)
        y = (vae.encode(x).latent_dist.mean * scale).permute(1, 0, 2, 3)[None]  # [1, 4, 1, h, w]
        # DDIM (ModelScope config: scaled-linear 0.00085..0.012, 1000 steps, "leading" spacing, offset 1)
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
        acp = torch.cumprod(1 - betas, 0)
        ratio = 1000 // steps
        timesteps = [i * ratio + 1 for i in reversed(range(steps))]
        lat = torch.randn((1, 4, F, H // 8, W // 8), generator=torch.Generator().manual_seed(seed))
        for t in timesteps:
            tt = torch.tensor(t)
            eps_u = unet(lat, y, tt, e_u)  # unconditional: "" prompt, same clean y
            eps_c = unet(lat, y, tt, e_c)
            eps = eps_u + guidance * (eps_c - eps_u)
            a_t = acp[t]
            a_prev = acp[t - ratio] if t - ratio >= 0 else acp[0]  # set_alpha_to_one=False
            x0 = (lat - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            lat = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        pix = vae.decode((lat / scale)[0].permute(1, 0, 2, 3)).sample
    frames = ((pix.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return frames, lat, y


@pytest.mark.parametrize("vae_scale", [None, 0.5])
def test_first_chunk_equals_step_by_step(pipe, vae_scale):
    prompt, img, steps, g, seed = "an astronaut is walking on the moon", _image(), 3, 7.5, 11
    seen_y = []
    orig_forward = pipe.unet.forward

    def spy(sample, cond, t, encoder_hidden_states, **kw):
        seen_y.append(cond.clone())
        assert sample.shape[0] == 2 and encoder_hidden_states.shape[0] == 2
        return orig_forward(sample, cond, t, encoder_hidden_states, **kw)

    pipe.unet.forward = spy
    try:
        chunk = next(pipe.stream(prompt, image=img, height=H, width=W, num_frames=F, num_inference_steps=steps,
                                 guidance_scale=g, generator=torch.Generator().manual_seed(seed),
                                 selector=FixedConditioning(2), vae_scale=vae_scale))
    finally:
        del pipe.unet.forward
    ref_frames, _, ref_y = _reference_first_chunk(pipe, prompt, img, steps, g, seed, vae_scale)
    assert isinstance(chunk, Chunk) and chunk.index == 0 and chunk.first_frame == 0
    assert chunk.conditioning_frames == 1 and chunk.prompt == prompt
    assert chunk.frames.shape == (F, H, W, 3) and chunk.frames.dtype == np.uint8
    # the conditioning is clean (never noised), identical at every step, latent x scaling factor
    assert len(seen_y) == steps
    for y in seen_y:
        torch.testing.assert_close(y, ref_y, rtol=0, atol=1e-6)
    diff = np.abs(chunk.frames.astype(int) - ref_frames.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert chunk.frames.std() > 1  # not a constant image


def test_output_type_pt_yields_pixels_that_convert_to_the_same_frames(pipe):
    kw = dict(image=_image(), height=H, width=W, num_frames=F, num_inference_steps=2, guidance_scale=3.0, times=2)
    np_chunks = list(pipe.stream("a boat", generator=torch.Generator().manual_seed(5), **kw))
    pt_chunks = list(pipe.stream("a boat", generator=torch.Generator().manual_seed(5), output_type="pt", **kw))
    for a, b in zip(np_chunks, pt_chunks):
        assert isinstance(b.frames, torch.Tensor) and b.frames.shape == (F, 3, H, W) and b.frame_size == (H, W)
        assert (b.index, b.first_frame, b.num_frames) == (a.index, a.first_frame, a.num_frames)
        for i in range(F):
            out = np.zeros((H, W, 3), np.uint8)
            b.write_frame(i, out)  # what the producer does into a ring slot
            np.testing.assert_array_equal(out, a.frames[i])
    with pytest.raises(ConfigError, match="output_type"):
        next(pipe.stream("a boat", output_type="pil", **kw))
    with pytest.raises(ValueError, match="float pixels"):
        Chunk(frames=torch.zeros(2, 3, 4, 4, dtype=torch.uint8), index=0, first_frame=0, conditioning_frames=1, prompt="")


def test_guidance_order_matters(pipe):
    """Swapping the halves (cond first) gives a different chunk: the order is really tested."""
    img = _image()
    kw = dict(image=img, height=H, width=W, num_frames=F, num_inference_steps=2, guidance_scale=7.5, times=1)
    a = pipe("a red car", generator=torch.Generator().manual_seed(0), **kw).frames
    ref, _, _ = _reference_first_chunk(pipe, "a red car", img, 2, 7.5, 0)
    assert np.abs(a.astype(int) - ref.astype(int)).max() <= 1
    swapped, _, _ = _reference_first_chunk(pipe, "a red car", img, 2, 1 - 7.5, 0)  # = cond-first order
    assert np.abs(a.astype(int) - swapped.astype(int)).mean() > 1


def test_negative_prompt_replaces_empty_string(pipe):
    kw = dict(image=_image(), height=H, width=W, num_frames=F, num_inference_steps=2, guidance_scale=5.0, times=1)
    a = pipe("a cat", generator=torch.Generator().manual_seed(0), **kw).frames
    b = pipe("a cat", "", generator=torch.Generator().manual_seed(0), **kw).frames
    c = pipe("a cat", "blurry", generator=torch.Generator().manual_seed(0), **kw).frames
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_no_guidance_runs_batch_one(pipe):
    seen = []
    orig = pipe.unet.forward
    pipe.unet.forward = lambda s, c, t, encoder_hidden_states, **kw: (seen.append(s.shape[0]), orig(s, c, t, encoder_hidden_states, **kw))[1]
    try:
        pipe("x", image=_image(), height=H, width=W, num_frames=F, num_inference_steps=2, guidance_scale=1.0,
             generator=torch.Generator().manual_seed(0))
    finally:
        del pipe.unet.forward
    assert seen == [1, 1]


def _record(pipe):
    calls = []
    orig = pipe.denoise_chunk

    def spy(conditioning, *a, **kw):
        out = orig(conditioning, *a, **kw)
        calls.append((conditioning.clone(), out.clone()))
        return out

    pipe.denoise_chunk = spy
    return calls


def test_next_conditioning_is_last_k_latents(pipe):
    calls = _record(pipe)
    try:
        chunks = list(pipe.stream("waves", image=_image(), height=H, width=W, num_frames=F, num_inference_steps=2,
                                  guidance_scale=5.0, times=6, generator=torch.Generator().manual_seed(0),
                                  selector=UniformConditioning(1, 6, random.Random(5))))
    finally:
        del pipe.denoise_chunk
    ref = random.Random(5)
    ks = [min(ref.randint(1, 6), F) for _ in range(6)]  # k > F means all F frames
    assert [c.conditioning_frames for c in chunks] == [1] + ks[:-1]
    assert [c.first_frame for c in chunks] == [i * F for i in range(6)]
    for i in range(5):
        cond_next, _ = calls[i + 1]
        _, latents = calls[i]
        assert torch.equal(cond_next, latents[:, :, -ks[i]:])


@pytest.mark.slow
def test_memory_flat_over_50_chunks(pipe):
    """Only the k conditioning latents survive a chunk: RSS, live tensors and Python objects stay
    flat between chunk 5 and chunk 50 of a never-ending stream."""
    import psutil

    stream = pipe.stream("memory", image=_image(), height=16, width=16, num_frames=2, num_inference_steps=1,
                         guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                         selector=UniformConditioning(1, 4, random.Random(0)))  # times=None: forever

    def measure():
        gc.collect()
        objs = gc.get_objects()
        tensors = sum(1 for o in objs if isinstance(o, torch.Tensor))
        return psutil.Process().memory_info().rss, tensors, len(objs)

    try:
        for _ in itertools.islice(stream, 5):
            pass
        rss5, tensors5, objs5 = measure()
        for _ in itertools.islice(stream, 45):
            pass
        rss50, tensors50, objs50 = measure()
    finally:
        stream.close()
    assert tensors50 <= tensors5 + 2
    assert objs50 - objs5 < 500, (objs5, objs50)
    assert rss50 - rss5 < 20 * 2**20, (rss5, rss50)


@pytest.mark.slow
def test_stream_forever_and_call(pipe):
    kw = dict(image=_image(), height=H, width=W, num_frames=F, num_inference_steps=1, guidance_scale=3.0)
    chunks = list(itertools.islice(pipe.stream("x", generator=torch.Generator().manual_seed(0), **kw), 7))
    assert [c.index for c in chunks] == list(range(7))
    out = pipe("x", times=3, generator=torch.Generator().manual_seed(0), **kw)
    assert out.frames.shape == (3 * F, H, W, 3)
    assert np.array_equal(out.frames, np.concatenate([c.frames for c in chunks[:3]]))


def test_global_rng_untouched(pipe):
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    pipe("x", image=_image(), height=H, width=W, num_frames=F, num_inference_steps=1, times=2,
         generator=torch.Generator().manual_seed(0), selector=UniformConditioning(1, 4, random.Random(0)))
    assert torch.equal(torch_state, torch.get_rng_state()) and py_state == random.getstate()


def test_updates_change_prompt_at_the_announced_chunk(pipe):
    channel = UpdateChannel()
    try:
        stream = pipe.stream("first prompt", guidance_scale=5.0, num_inference_steps=1, image=_image(), height=H,
                             width=W, num_frames=F, generator=torch.Generator().manual_seed(0), updates=channel)
        c0 = next(stream)
        assert channel.submit({"command": "set_prompt", "prompt": "second prompt"}) == 1
        assert channel.submit({"command": "set_guidance", "guidance_scale": 2.0}) == 1
        c1 = next(stream)
        channel.stop()
        assert list(stream) == []  # a stop ends the stream at the next boundary
        assert (c0.prompt, c1.prompt) == ("first prompt", "second prompt")
        with pytest.raises(ConfigError):
            channel.submit({"command": "set_prompt", "prompt": "x", "bogus": 1})
    finally:
        channel.close()


def test_live_settings_equal_plain_arguments(pipe):
    kw = dict(image=_image(), height=H, width=W, num_frames=F, num_inference_steps=1, times=2)
    live = LiveSettings(prompt="a blue sea", guidance_scale=5.0, min_conditioning_frames=1, max_conditioning_frames=3)
    a = pipe(live, generator=torch.Generator().manual_seed(0), **kw).frames
    b = pipe("a blue sea", guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
             selector=UniformConditioning(1, 3, random.Random(0)), **kw).frames
    assert np.array_equal(a, b)


def test_init_frames_use_last_max_k(pipe):
    video = np.stack([_image(i) for i in range(6)])
    calls = _record(pipe)
    try:
        pipe("x", image=video, height=H, width=W, num_frames=F, num_inference_steps=1,
             selector=FixedConditioning(3), generator=torch.Generator().manual_seed(0))
    finally:
        del pipe.denoise_chunk
    first_cond = calls[0][0]
    assert first_cond.shape[2] == 3
    expected = pipe.prepare_conditioning(to_pixels(video[-3:], H, W))
    torch.testing.assert_close(first_cond, expected)


def test_bad_stream_arguments(pipe):
    with pytest.raises(ConfigError, match="image"):
        next(pipe.stream("x", height=H, width=W))
    with pytest.raises(ConfigError, match="height"):
        next(pipe.stream("x", image=_image(), height=36, width=W))
    with pytest.raises(ConfigError, match="times"):
        pipe("x", image=_image(), times=0)


# -- loading ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_from_pretrained_real_layout(pipe, tiny_folder):
    import json

    assert json.loads((tiny_folder / "model_index.json").read_text())["_class_name"] == "TextToVideoSDPipeline"
    loaded = csq.ContinuitySeqPipeline.from_pretrained(str(tiny_folder), torch_dtype=torch.float32, device="cpu")
    loaded.set_progress_bar_config(disable=True)
    from continuityseq_stream.models import ContinuitySeqUNet

    assert isinstance(loaded.unet, ContinuitySeqUNet)
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    kw = dict(image=_image(), height=H, width=W, num_frames=F, num_inference_steps=2, guidance_scale=4.0, times=1)
    a = loaded("x", generator=torch.Generator().manual_seed(0), **kw).frames
    b = pipe("x", generator=torch.Generator().manual_seed(0), **kw).frames
    # Same weights, same math; but with one OpenMP thread the loaded (mmap'ed safetensors) weights take
    # another kernel path, and a float32 last-bit difference can flip a pixel sitting on .5 when it is
    # rounded to uint8: at most 1 LSB, in a handful of pixels.
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).sum())


def test_scheduler_forced_to_ddim(tiny_folder, tmp_path):
    import json
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_folder, folder)
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    cfg["_class_name"] = "PNDMScheduler"
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    loaded = csq.ContinuitySeqPipeline.from_pretrained(str(folder))
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert loaded.scheduler.config.steps_offset == 1


@pytest.mark.parametrize(
    "name,match",
    [("/nonexistent/model/folder", "does not exist"), ("nobody-xyz/not-a-model-123", "pass a local folder")],
)
def test_from_pretrained_errors(name, match):
    with pytest.raises(CheckpointError, match=match) as e:
        csq.ContinuitySeqPipeline.from_pretrained(name)
    from continuityseq_stream.cli.app import flag_for

    assert e.value.names == ("model",)  # the library names the argument; the CLI spells its flag
    assert "\n" not in str(e.value) and e.value.render(flag_for).startswith("-m/--model: ")


def test_from_pretrained_incomplete_folder(tmp_path, tiny_folder):
    import shutil

    shutil.copytree(tiny_folder, tmp_path / "m")
    shutil.rmtree(tmp_path / "m" / "vae")
    with pytest.raises(CheckpointError, match="vae/"):
        csq.ContinuitySeqPipeline.from_pretrained(str(tmp_path / "m"))
    (tmp_path / "m" / "vae").mkdir()
    with pytest.raises(CheckpointError, match="cannot load vae/"):
        csq.ContinuitySeqPipeline.from_pretrained(str(tmp_path / "m"))


def test_demo_names_resolve_to_the_trained_and_the_random_demo(monkeypatch, tmp_path):
    from continuityseq_stream.demo import tiny, trained as demo_model
    from continuityseq_stream.pipeline.resolve import resolve_pretrained_path

    trained = demo_model.trained_demo_path()
    if trained is not None:
        assert resolve_pretrained_path("demo") == resolve_pretrained_path("demo-trained") == str(trained)
    monkeypatch.setattr(tiny, "demo_model_path", lambda: tmp_path / "random")
    monkeypatch.setattr(tiny, "demo_2d_model_path", lambda: tmp_path / "2d")
    assert resolve_pretrained_path("demo-random") == str(tmp_path / "random")
    assert resolve_pretrained_path("demo", demo="2d") == str(tmp_path / "2d")
    monkeypatch.setattr(demo_model, "trained_demo_path", lambda: None)
    with pytest.raises(CheckpointError, match="demo-random"):
        resolve_pretrained_path("demo")
