"""Demo-model training: losses go down on a fixed batch, the word tokenizer, resumable runs that
write a folder the real pipeline loader accepts, and the shipped demo weights."""

import json

import numpy as np
import pytest
import torch

from continuityseq_stream.demo import synthetic, train


def _tiny_cfg(**kw):
    base = dict(vae_channels=(8, 16, 16, 16), vae_groups=8, unet_channels=(32, 32), unet_groups=8,
                frames=2, max_cond=2, vae_clips=2, unet_clips=4, vae_steps=2, unet_steps=2, vae_batch=4,
                unet_batch=2, checkpoint_every=1, decoder_steps=2, turn_clips=2, turn_fraction=0.5)
    base.update(kw)
    return train.TrainConfig(**base)


def test_word_tokenizer_one_token_per_grammar_word():
    tok = train.make_word_tokenizer()
    for word in synthetic.VOCABULARY:
        assert len(tok(word).input_ids) == 3, word  # <start> word <end>
    ids = tok("a red circle moving left on a gray background").input_ids
    assert len(ids) == 11
    assert len(tok("any other words still tokenize").input_ids) > 2


def test_text_encoder_tells_captions_apart():
    tok = train.make_word_tokenizer()
    enc = train.make_text_encoder(len(tok), seed=0)
    e = train.encode_captions(tok, enc, ["a red circle moving left on a gray background",
                                         "a blue circle moving left on a gray background", ""])
    assert e.shape == (3, 77, train.TEXT_DIM)
    assert (e[0] - e[1]).norm() > 1.0 and (e[0] - e[2]).norm() > 1.0


@pytest.mark.slow
def test_vae_steps_reduce_the_loss():
    cfg = _tiny_cfg()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = train.make_vae(cfg)
    pixels = train.frames_to_pixels(np.concatenate([c.frames for c in synthetic.make_clips(2, 4, seed=1)]))
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    loss = lambda: train.vae_loss(vae, pixels, cfg.vae_kl, torch.Generator().manual_seed(0))  # noqa: E731
    with torch.no_grad():
        before = loss().item()
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.8 * before, (before, after)


@pytest.mark.slow
def test_unet_steps_reduce_the_loss():
    cfg = _tiny_cfg()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = train.make_unet(cfg)
    scheduler = train.make_scheduler()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 4, 4, 4, generator=g)  # [B, C, k + F, h, w]
    text = torch.randn(2, 77, train.TEXT_DIM, generator=g)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    loss = lambda: train.unet_loss(unet, scheduler, latents, 2, 2, text, torch.Generator().manual_seed(1))  # noqa: E731
    with torch.no_grad():
        before = loss().item()
    for _ in range(8):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.9 * before, (before, after)


def test_object_mask_marks_the_shape_only():
    clip = synthetic.make_clips(1, 1, seed=0)[0]
    mask = train.object_mask(train.frames_to_pixels(clip.frames))
    area = mask.sum().item()
    assert 0.03 * 32 * 32 < area < 0.3 * 32 * 32


def test_lr_schedule_is_a_function_of_the_step():
    assert train._lr(0, 100, 1.0) == pytest.approx(1 / 50)
    assert train._lr(50, 100, 1.0) == pytest.approx(1.0)
    assert train._lr(100, 100, 1.0) == pytest.approx(0.1)


@pytest.mark.slow
def test_training_resumes_and_writes_a_loadable_folder(tmp_path):
    from continuityseq_stream.pipeline.pipeline import ContinuitySeqPipeline

    cfg = _tiny_cfg()
    tok = train.make_word_tokenizer()
    enc = train.make_text_encoder(len(tok), seed=0)
    vae = train.train_vae(cfg, tmp_path, log=lambda m: None)
    assert torch.load(tmp_path / "vae.pt", weights_only=True)["done"]
    unet, enc_trained = train.train_unet(cfg, tmp_path, vae, tok, enc, log=lambda m: None)
    # the text encoder was trained with the UNet (a copy: the frozen one passed in is untouched)
    changed = [k for k, v in enc_trained.state_dict().items() if not torch.equal(v, enc.state_dict()[k])]
    assert changed and not any(p.requires_grad for p in enc_trained.parameters())
    # resuming a finished stage does no more steps
    cfg2 = _tiny_cfg()
    messages = []
    train.train_unet(cfg2, tmp_path, vae, tok, enc, log=messages.append)
    assert any("resumed at step 2" in m for m in messages)
    encoder_before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    vae = train.train_decoder(cfg, tmp_path, vae, log=lambda m: None)
    assert torch.load(tmp_path / "decoder.pt", weights_only=True)["step"] == 2
    for k, v in vae.encoder.state_dict().items():  # the UNet's latent space is untouched
        assert torch.equal(v, encoder_before[k]), k
    folder = train.save_pipeline_folder(tmp_path / "out", unet, vae, enc_trained, tok, {"test": True})
    assert json.loads((folder / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKL"]
    pipe = ContinuitySeqPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    frame = synthetic.make_clips(1, 1, seed=0)[0].frames[0]
    out = pipe("a red circle moving left on a gray background", image=frame, times=2, num_frames=2,
               num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (4, 32, 32, 3) and out.frames.dtype == np.uint8


class _Payload:
    """Pickles as "create this file": what a hostile file in --work could do when unpickled."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_work_files_load_as_plain_tensors_only_and_a_planted_one_runs_no_code(tmp_path):
    cfg = _tiny_cfg()
    train.train_vae(cfg, tmp_path / "ok", log=lambda m: None)
    assert torch.load(tmp_path / "ok" / "vae.pt", weights_only=True)["step"] == 2  # what it saves loads so
    marker = tmp_path / "code-ran"
    work = tmp_path / "planted"
    work.mkdir()
    torch.save({"model": _Payload(marker), "step": 1}, work / "vae.pt")
    with pytest.raises(ValueError, match=r"vae\.pt: not a checkpoint this trainer wrote .*new --work folder"):
        train.train_vae(cfg, work, log=lambda m: None)
    torch.save({"latents": _Payload(marker), "captions": []}, work / "latents-4x4.pt")
    with pytest.raises(ValueError, match=r"latents-4x4\.pt: not a checkpoint"):
        train._encoded_clips(work / "latents-4x4.pt", None, lambda m: None, "clips", lambda: [])
    assert not marker.exists()


@pytest.mark.slow
def test_frozen_text_encoder_option_keeps_it_and_an_old_checkpoint_layout_is_refused(tmp_path):
    cfg = _tiny_cfg(train_text_encoder=False, turn_fraction=1.0, cond_dropout=0.5)  # every batch from the turn clips
    tok = train.make_word_tokenizer()
    enc = train.make_text_encoder(len(tok), seed=0)
    vae = train.train_vae(cfg, tmp_path, log=lambda m: None)
    _, enc_out = train.train_unet(cfg, tmp_path, vae, tok, enc, log=lambda m: None)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in enc_out.state_dict().items())
    turns = torch.load(tmp_path / "turns-2x4.pt", weights_only=True)  # the turn clips' latents, cached
    assert turns["latents"].shape[:3] == (2, 4, 4) and len(turns["captions"]) == 2
    state = torch.load(tmp_path / "unet.pt", weights_only=True)
    state["model"] = {k.removeprefix("unet."): v for k, v in state["model"].items() if k.startswith("unet.")}
    torch.save(state, tmp_path / "unet.pt")
    with pytest.raises(ValueError, match="new --work folder"):
        train.train_unet(cfg, tmp_path, vae, tok, enc, log=lambda m: None)


@pytest.mark.skipif(__import__("continuityseq_stream.demo.trained", fromlist=["x"]).trained_demo_path() is None,
                    reason="no trained demo weights shipped in continuityseq_stream/data/demo")
@pytest.mark.slow
def test_shipped_demo_loads_through_the_pipeline_and_draws_the_prompt():
    from continuityseq_stream.demo import metrics, trained as demo_model
    from continuityseq_stream.pipeline.pipeline import ContinuitySeqPipeline

    folder = demo_model.trained_demo_path()
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 10_000_000
    pipe = ContinuitySeqPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32  # fp16 files, loaded as float32 on the CPU
    prompt = demo_model.EXAMPLE_PROMPTS[0]
    s = demo_model.DEMO_SETTINGS
    out = pipe(prompt, image=demo_model.demo_init_frame(prompt, 0), times=2, num_frames=s["num_frames"],
               num_inference_steps=10, guidance_scale=s["guidance_scale"], generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (8, 32, 32, 3) and out.frames.dtype == np.uint8
    tr = metrics.track(out.frames)
    assert tr.found.mean() > 0.5  # an object is there, not noise


def test_demo_init_frame_draws_the_prompt():
    from continuityseq_stream.demo import metrics, trained as demo_model

    frame = demo_model.demo_init_frame("a blue square moving up on a black background", seed=3)
    tr = metrics.track(frame[None])
    assert frame.shape == (32, 32, 3)
    assert metrics.classify_colour(tr.colour[0]) == "blue" and metrics.classify_shape(tr.fill[0]) == "square"
    assert demo_model.demo_init_frame("free text", seed=3).shape == (32, 32, 3)


def test_the_trained_demo_is_absent_without_its_weights(monkeypatch, tmp_path):
    from continuityseq_stream.demo import trained as demo_model

    monkeypatch.setattr(demo_model, "TRAINED_DEMO_DIR", tmp_path / "absent")
    assert demo_model.trained_demo_path() is None
