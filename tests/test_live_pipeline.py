"""Prompt schedules and live updates inside the pipeline (tiny random-weight model, CPU).

What is checked is what the UNet really receives: its `encoder_hidden_states` are recorded for every
chunk and compared with embeddings computed here from the tokenizer and text encoder directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from continuityseq_stream.errors import ConfigError
from continuityseq_stream.prompts import PromptSchedule, UpdateChannel

H = W = 32
F = 4


@pytest.fixture
def fed(pipe):
    """Records, per UNet call, the text embeddings it was given; also counts prompt encodings."""
    calls, encoded = [], []
    forward, encode = pipe.unet.forward, pipe._encode_text

    def spy_forward(*args, **kwargs):
        calls.append(kwargs["encoder_hidden_states"].detach().clone())
        return forward(*args, **kwargs)

    def spy_encode(text):
        encoded.append(text)
        return encode(text)

    pipe.unet.forward, pipe._encode_text = spy_forward, spy_encode
    yield calls, encoded
    pipe.unet.forward, pipe._encode_text = forward, encode


def _embed(pipe, text):
    ids = pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids).last_hidden_state[0]  # [77, D]


def _image():
    return np.random.RandomState(0).randint(0, 256, (H, W, 3), dtype=np.uint8)


def _kw(**kw):
    base = dict(image=_image(), height=H, width=W, num_frames=F, num_inference_steps=1,
                generator=torch.Generator().manual_seed(0))
    base.update(kw)
    return base


def test_three_prompts_over_six_chunks_feed_the_blended_embeddings_to_the_unet(pipe, fed):
    calls, encoded = fed
    schedule = PromptSchedule.from_text("a red fox\na city at night | ugly\nan ocean reef\n", interval=2)
    chunks = list(pipe.stream(schedule, guidance_scale=5.0, times=6, **_kw()))

    e = {p: _embed(pipe, p) for p in ("a red fox", "a city at night", "an ocean reef", "", "ugly")}
    # chunk c = (1 - w) * P[c // 2] + w * P[c // 2 + 1], w = (c % 2) / 2; negatives blend alike
    expected = [
        ({"a red fox": 1.0}, {"": 1.0}),
        ({"a red fox": 0.5, "a city at night": 0.5}, {"": 0.5, "ugly": 0.5}),
        ({"a city at night": 1.0}, {"ugly": 1.0}),
        ({"a city at night": 0.5, "an ocean reef": 0.5}, {"ugly": 0.5, "": 0.5}),
        ({"an ocean reef": 1.0}, {"": 1.0}),
        ({"an ocean reef": 1.0}, {"": 1.0}),
    ]
    assert len(calls) == 6  # one step per chunk, guidance batch [uncond, cond]
    for c, (chunk, got, (cond_w, uncond_w)) in enumerate(zip(chunks, calls, expected)):
        assert got.shape[0] == 2
        cond = sum(w * e[p] for p, w in cond_w.items())
        uncond = sum(w * e[p] for p, w in uncond_w.items())
        torch.testing.assert_close(got[1], cond, rtol=0, atol=1e-5, msg=f"cond of chunk {c}")
        torch.testing.assert_close(got[0], uncond, rtol=0, atol=1e-5, msg=f"uncond of chunk {c}")
        label = " + ".join(f"{p} ({w:.0%})" for p, w in cond_w.items()) if len(cond_w) > 1 else next(iter(cond_w))
        assert chunk.prompt == label
    # every prompt (and negative) was encoded exactly once
    assert sorted(encoded) == sorted(e)


def test_timed_lines_switch_at_the_output_time(pipe, fed):
    calls, _ = fed
    # fps 8, 4 frames per chunk: chunks start at 0, 0.5, 1.0, 1.5, 2.0 s
    schedule = PromptSchedule.from_text("00:00 dawn\n00:01 noon\n0:01.9 dusk\n")
    chunks = list(pipe.stream(schedule, guidance_scale=1.0, times=5, fps=8.0, **_kw()))
    assert [c.prompt for c in chunks] == ["dawn", "dawn", "noon", "noon", "dusk"]
    assert all(got.shape[0] == 1 for got in calls)  # no guidance: conditional embeddings only
    for c, got in zip(chunks, calls):
        torch.testing.assert_close(got[0], _embed(pipe, c.prompt), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="fps"):
        next(pipe.stream(schedule, times=1, **_kw()))


def test_live_updates_apply_at_the_announced_chunk(pipe, fed):
    calls, _ = fed
    noise = []
    prepare = pipe.prepare_latents
    pipe.prepare_latents = lambda *a, **k: noise.append(prepare(*a, **k)) or noise[-1]
    channel = UpdateChannel()
    try:
        stream = pipe.stream("a red fox", guidance_scale=5.0, updates=channel, **_kw())
        c0 = next(stream)
        assert channel.submit({"command": "set_prompt", "prompt": "a city", "transition": 2}) == 1
        assert channel.submit({"command": "set_seed", "seed": 5}) == 1
        assert channel.submit({"command": "set_conditioning", "min": 2, "max": 2}) == 1
        c1, c2 = next(stream), next(stream)
        assert channel.submit({"command": "set_guidance", "guidance_scale": 1.0}) == 3
        c3 = next(stream)
        channel.stop()
        assert list(stream) == []
    finally:
        pipe.prepare_latents = prepare
        channel.close()
    fox, city = _embed(pipe, "a red fox"), _embed(pipe, "a city")
    assert [c.prompt for c in (c0, c1, c2, c3)] == ["a red fox", "a red fox (50%) + a city (50%)", "a city", "a city"]
    torch.testing.assert_close(calls[1][1], 0.5 * fox + 0.5 * city, rtol=0, atol=1e-5)
    torch.testing.assert_close(calls[2][1], city, rtol=0, atol=1e-5)
    assert calls[3].shape[0] == 1  # guidance 1: no unconditional half from chunk 3 on
    # set_seed re-seeds the noise before chunk 1, as if the run had started with seed 5
    expected = torch.randn(noise[1].shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(noise[1], expected * pipe.scheduler.init_noise_sigma)
    # k drawn after chunk 1 comes from the new range [2, 2]
    assert (c2.conditioning_frames, c3.conditioning_frames) == (2, 2)
