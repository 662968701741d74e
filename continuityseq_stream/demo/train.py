"""Train the demo model on synthetic motion: a tiny VAE, then a tiny ContinuitySeq-A UNet.

    python -m continuityseq_stream.demo.train --work /tmp/demo-train --out continuityseq_stream/data/demo

Three stages, each resumable from its last checkpoint in `--work` (re-run the same command):

1. **VAE** (`AutoencoderKL`, 4 down blocks = the 8x factor of SD VAEs): reconstruction (L1 + MSE) of
   the posterior mean plus a small KL term on single frames of `synthetic.make_clips`. Its `scaling_factor` is set to
   1 / std of the training latents (the role 0.18215 plays for SD).
2. **UNet** (`ContinuitySeqUNet`, variant A-prev) trained as the original (tests/golden/ARCHITECTURE.md §9): clips of
   `max_cond + frames` latent frames; per batch k is uniform in [1, max_cond]; the k frames before the
   target window are the clean conditioning, the following `frames` frames are noised with the
   ModelScope DDIM schedule (scaled-linear 0.00085 -> 0.012, 1000 steps) and the UNet predicts the
   noise. Text: a tiny CLIP text encoder over a word-level vocabulary of the caption grammar (made
   locally), randomly initialised and trained jointly with the UNet (`--frozen-text-encoder` keeps
   it at its random init, as the first shipped model had it: that UNet learned to ignore the
   prompt); 10 % of prompts are dropped to "" for classifier-free guidance. Weights are averaged
   (EMA) and the EMA is what is saved.
   Every frame of a plain clip shows its colour, shape and (from 2 frames on) its direction, so the
   text is redundant for most batches and a UNet trained on them alone learns to ignore it: both
   earlier demo runs moved the object a random way when the conditioning was one frame. So
   `turn_fraction` of the batches come from *turn clips* (`synthetic.render_turn_clip`): the
   conditioning frames move one way, the target frames another, and only the caption says which.
3. **Decoder refinement**: the VAE decoder alone is fine-tuned on the frozen encoder's latents, with
   object pixels weighted up. The encoder (so the latent space the UNet learned) does not change, so
   this stage may run beside stage 2 (`--stage decoder` and `--stage unet`).

The result is a diffusers-layout folder (`model_index.json`, `scheduler/`, `tokenizer/`,
`text_encoder/`, `vae/`, `unet/`, fp16 safetensors) that `ContinuitySeqPipeline.from_pretrained` loads.
Every random draw comes from explicit generators seeded by `--seed`; a stage stops at its step count
or its time budget, whichever comes first (so wall time, not the seed, can change the result).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import pickle
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import synthetic
from .components import (TEXT_DIM, TrainConfig, make_scheduler, make_text_encoder, make_unet, make_vae,  # noqa: F401
                         make_word_tokenizer, save_pipeline_folder)

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "make_word_tokenizer", "make_text_encoder", "make_vae", "make_unet", "make_scheduler",
           "encode_captions", "vae_loss", "unet_loss", "object_mask", "train_vae", "train_unet", "train_decoder",
           "save_pipeline_folder", "main"]

@torch.no_grad()
def encode_captions(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    """Last hidden states `[N, 77, D]`, padded to max length without mask (as the pipeline encodes)."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


# -- losses -------------------------------------------------------------------------------------
def frames_to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` -> float `[N, 3, H, W]` in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def vae_loss(vae, pixels: torch.Tensor, kl_weight: float, generator: torch.Generator,
             sample_scale: float = 0.0) -> torch.Tensor:
    """L1 + MSE reconstruction plus `kl_weight` x mean KL.

    The decoder reconstructs the posterior mean (+ `sample_scale` x its noise): the pipeline encodes
    with the mean, and the full posterior noise of an untrained encoder (std ~1) makes a tiny VAE
    learn only blurred blobs within a CPU budget. The KL term keeps the latents bounded."""
    posterior = vae.encode(pixels).latent_dist
    z = posterior.mean
    if sample_scale:
        z = z + sample_scale * posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    recon = vae.decode(z).sample
    return F.l1_loss(recon, pixels) + F.mse_loss(recon, pixels) + kl_weight * posterior.kl().mean() / z[0].numel()


def unet_loss(unet, scheduler, latents: torch.Tensor, k: int, frames: int, text: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
    """Epsilon-prediction loss of one batch.

    latents `[B, 4, L, h, w]` (clean, scaled); the last `frames` frames of the first `k + frames` are
    the target window, the `k` before it the clean conditioning; text `[B, 77, D]`.
    """
    b = latents.shape[0]
    y = latents[:, :, :k]
    x0 = latents[:, :, k:k + frames]
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    xt = scheduler.add_noise(x0, noise, t)
    eps = unet(xt, y, t, encoder_hidden_states=text)
    eps = eps if isinstance(eps, torch.Tensor) else eps[0]
    return F.mse_loss(eps, noise)


# -- checkpoints --------------------------------------------------------------------------------
def _save_checkpoint(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> Optional[dict]:
    return _load_safely(path) if path.is_file() else None


def _load_safely(path: Path):
    """`torch.load` with `weights_only=True`: what this module saves in `--work` (state dicts, optimizer
    and generator states, latents, captions, step counters) is tensors in dicts/lists with plain
    values, so nothing more is needed, and a file put into `--work` by someone else cannot run code
    when it is loaded. Anything else is a ValueError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = (str(e).strip().splitlines() or ["not loadable as plain tensors"])[0]
        raise ValueError(f"{path}: not a checkpoint this trainer wrote ({why[:200]}); "
                         "delete it or use a new --work folder") from None


def _lr(step: int, total: int, base: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 10 % (a pure function of the step: resume-safe)."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


# -- stage 1: VAE -------------------------------------------------------------------------------
def train_vae(cfg: TrainConfig, work: Path, log=print):
    """Train (or resume) the VAE; returns it with `scaling_factor` set, in eval mode."""
    work.mkdir(parents=True, exist_ok=True)
    ckpt_path = work / "vae.pt"
    vae = make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    rng = np.random.default_rng(cfg.seed + 12)
    step, done = 0, False
    state = _load_checkpoint(ckpt_path)
    if state:
        vae.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"]); rng.bit_generator.state = state["rng"]
        step, done = state["step"], state.get("done", False)
        log(f"vae: resumed at step {step}{' (done)' if done else ''}")
    clips = synthetic.make_clips(cfg.vae_clips, 8, cfg.seed + 1, cfg.size)
    pool = np.concatenate([c.frames for c in clips])  # [N, S, S, 3]
    start, losses = time.monotonic(), []
    vae.train()
    while not done and step < cfg.vae_steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.vae_steps, cfg.vae_lr)
        idx = rng.integers(0, len(pool), cfg.vae_batch)
        loss = vae_loss(vae, frames_to_pixels(pool[idx]), cfg.vae_kl, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        out_of_time = time.monotonic() - start > cfg.vae_minutes * 60
        if step % cfg.checkpoint_every == 0 or step >= cfg.vae_steps or out_of_time:
            done = step >= cfg.vae_steps or out_of_time
            _save_checkpoint(ckpt_path, model=vae.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                             rng=rng.bit_generator.state, step=step, done=done)
            log(f"vae: step {step} loss {np.mean(losses[-cfg.checkpoint_every:]):.4f} "
                f"({time.monotonic() - start:.0f}s)")
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(frames_to_pixels(pool[i:i + 256])).latent_dist.mean for i in range(0, min(len(pool), 2048), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    log(f"vae: scaling_factor {vae.config.scaling_factor:.4f}")
    return vae


@torch.no_grad()
def encode_clips(vae, clips, batch: int = 256) -> torch.Tensor:
    """Clean scaled latents `[N, 4, T, h, w]` of clips (posterior mean x scaling factor)."""
    frames = np.stack([c.frames for c in clips])  # [N, T, S, S, 3]
    n, t = frames.shape[:2]
    flat = frames.reshape(n * t, *frames.shape[2:])
    z = torch.cat([vae.encode(frames_to_pixels(flat[i:i + batch])).latent_dist.mean
                   for i in range(0, len(flat), batch)]) * vae.config.scaling_factor
    return z.reshape(n, t, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


# -- stage 3: decoder refinement ----------------------------------------------------------------
def object_mask(pixels: torch.Tensor) -> torch.Tensor:
    """`[N, 1, H, W]` 1 where a pixel differs from its frame's median colour (the background)."""
    bg = pixels.flatten(2).median(dim=2).values[..., None, None]
    return ((pixels - bg).abs().amax(dim=1, keepdim=True) > 0.05).float()


def train_decoder(cfg: TrainConfig, work: Path, vae, log=print):
    """Fine-tune the VAE decoder on the frozen encoder's latents (or resume); returns the VAE.

    Reconstruction error is weighted 1 + `object_weight` on object pixels (the object is ~10 % of a
    frame and is what the demo is about). Run after (or beside) the UNet stage: the latent space,
    hence the UNet, is unchanged.
    """
    ckpt_path = work / "decoder.pt"
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed + 32)
    step, done = 0, False
    state = _load_checkpoint(ckpt_path)
    if state:
        vae.decoder.load_state_dict(state["decoder"]); vae.post_quant_conv.load_state_dict(state["post_quant_conv"])
        opt.load_state_dict(state["opt"]); rng.bit_generator.state = state["rng"]
        step, done = state["step"], state.get("done", False)
        log(f"decoder: resumed at step {step}{' (done)' if done else ''}")
    if not done and step < cfg.decoder_steps:
        clips = synthetic.make_clips(cfg.vae_clips, 8, cfg.seed + 1, cfg.size)
        pixels = frames_to_pixels(np.concatenate([c.frames for c in clips]))
        with torch.no_grad():
            z = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
            weights = 1.0 + cfg.object_weight * object_mask(pixels)
    start, losses = time.monotonic(), []
    vae.decoder.train()
    while not done and step < cfg.decoder_steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.decoder_steps, cfg.decoder_lr)
        idx = torch.from_numpy(rng.integers(0, len(z), cfg.vae_batch))
        recon = vae.decode(z[idx]).sample
        err = (recon - pixels[idx]).abs() + (recon - pixels[idx]) ** 2
        loss = (err * weights[idx]).mean() / weights[idx].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        out_of_time = time.monotonic() - start > cfg.decoder_minutes * 60
        if step % cfg.checkpoint_every == 0 or step >= cfg.decoder_steps or out_of_time:
            done = step >= cfg.decoder_steps or out_of_time
            _save_checkpoint(ckpt_path, decoder=vae.decoder.state_dict(), post_quant_conv=vae.post_quant_conv.state_dict(),
                             opt=opt.state_dict(), rng=rng.bit_generator.state, step=step, done=done)
            log(f"decoder: step {step} loss {np.mean(losses[-cfg.checkpoint_every:]):.4f} "
                f"({time.monotonic() - start:.0f}s)")
    return vae.eval()


# -- stage 2: UNet ------------------------------------------------------------------------------
def _encoded_clips(cache: Path, vae, log, what: str, make) -> dict:
    """{"latents": [N, 4, T, h, w], "captions": [...]} of the clips `make()` renders, cached in `cache`."""
    if cache.is_file():
        return _load_safely(cache)
    t0 = time.monotonic()
    clips = make()
    data = {"latents": encode_clips(vae, clips), "captions": [c.caption for c in clips]}
    torch.save(data, cache)
    log(f"unet: encoded {len(clips)} {what} in {time.monotonic() - t0:.0f}s")
    return data


def train_unet(cfg: TrainConfig, work: Path, vae, tokenizer, text_encoder, log=print):
    """Train (or resume) the UNet (and, with `cfg.train_text_encoder`, the text encoder jointly) on VAE
    latents of synthetic clips; returns the EMA `(unet, text_encoder)` in eval mode.

    A frozen random text encoder left the UNet nearly blind to the prompt (guidance 1 and 7 gave the
    same videos, direction at chance with one conditioning frame): trained jointly, the encoder learns
    to put colour and direction where cross-attention can read them.
    """
    ckpt_path = work / "unet.pt"
    scheduler = make_scheduler()
    clip_len = cfg.max_cond + cfg.frames
    data = _encoded_clips(work / f"latents-{cfg.unet_clips}x{clip_len}.pt", vae, log, "clips",
                          lambda: synthetic.make_clips(cfg.unet_clips, clip_len, cfg.seed + 2, cfg.size))
    latents, captions = data["latents"], data["captions"]
    turn_latents, turn_captions = None, []
    if cfg.turn_clips and cfg.turn_fraction > 0:
        turns = _encoded_clips(
            work / f"turns-{cfg.turn_clips}x{clip_len}.pt", vae, log, "turn clips",
            lambda: synthetic.make_turn_clips(cfg.turn_clips, clip_len, cfg.max_cond, cfg.seed + 4, cfg.size))
        turn_latents, turn_captions = turns["latents"], turns["captions"]
    unique = sorted(set(captions) | set(turn_captions)) + [""]
    token_ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids  # [U, 77]
    caption_idx = torch.tensor([unique.index(c) for c in captions])
    turn_idx = torch.tensor([unique.index(c) for c in turn_captions], dtype=torch.long)
    empty = len(unique) - 1

    text_encoder = copy.deepcopy(text_encoder).requires_grad_(cfg.train_text_encoder)
    model = torch.nn.ModuleDict({"unet": make_unet(cfg), "text_encoder": text_encoder})
    ema = copy.deepcopy(model).requires_grad_(False)
    groups = [{"params": list(model["unet"].parameters()), "base_lr": cfg.unet_lr}]
    if cfg.train_text_encoder:
        groups.append({"params": list(text_encoder.parameters()), "base_lr": cfg.text_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.unet_lr, weight_decay=0.0)
    trainable = [p for g in groups for p in g["params"]]
    gen = torch.Generator().manual_seed(cfg.seed + 21)
    rng = np.random.default_rng(cfg.seed + 22)
    step, done = 0, False
    state = _load_checkpoint(ckpt_path)
    if state:
        if "model" not in state or not any(k.startswith("unet.") for k in state["model"]):
            raise ValueError(f"{ckpt_path} is from an older training layout (UNet only); use a new --work folder")
        model.load_state_dict(state["model"]); ema.load_state_dict(state["ema"]); opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"]); rng.bit_generator.state = state["rng"]
        step, done = state["step"], state.get("done", False)
        log(f"unet: resumed at step {step}{' (done)' if done else ''}")
    frozen_table = None
    if not cfg.train_text_encoder:
        with torch.no_grad():
            frozen_table = text_encoder.eval()(token_ids)[0]
    start, losses = time.monotonic(), []
    model.train()
    while not done and step < cfg.unet_steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.unet_steps, g["base_lr"])
        k = int(rng.integers(1, cfg.max_cond + 1))
        if turn_latents is not None and rng.random() < cfg.turn_fraction:
            # a turn clip turns at frame max_cond: the conditioning is the k frames just before it
            idx = torch.from_numpy(rng.integers(0, len(turn_latents), cfg.unet_batch))
            offset = cfg.max_cond - k
            batch = turn_latents[idx, :, offset:offset + k + cfg.frames]
            text_idx = turn_idx[idx].clone()
        else:
            idx = torch.from_numpy(rng.integers(0, len(latents), cfg.unet_batch))
            offset = int(rng.integers(0, cfg.max_cond - k + 1))  # window [offset, offset + k + F) inside the clip
            batch = latents[idx, :, offset:offset + k + cfg.frames]
            text_idx = caption_idx[idx].clone()
        text_idx[torch.from_numpy(rng.random(cfg.unet_batch) < cfg.prompt_dropout)] = empty
        if cfg.cond_dropout > 0:  # nothing to continue from: colour, shape, place and motion come from the text
            dropped = torch.from_numpy(rng.random(cfg.unet_batch) < cfg.cond_dropout)
            batch = batch.clone()
            batch[dropped, :, :k] = 0.0
        text = frozen_table[text_idx] if frozen_table is not None else text_encoder(token_ids[text_idx])[0]
        loss = unet_loss(model["unet"], scheduler, batch, k, cfg.frames, text, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        step += 1
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        out_of_time = time.monotonic() - start > cfg.unet_minutes * 60
        if step % cfg.checkpoint_every == 0 or step >= cfg.unet_steps or out_of_time:
            done = step >= cfg.unet_steps or out_of_time
            _save_checkpoint(ckpt_path, model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(),
                             gen=gen.get_state(), rng=rng.bit_generator.state, step=step, done=done)
            log(f"unet: step {step} loss {np.mean(losses[-cfg.checkpoint_every:]):.4f} "
                f"({time.monotonic() - start:.0f}s)")
    ema.eval()
    return ema["unet"], ema["text_encoder"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m continuityseq_stream.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="checkpoints and cached latents (re-run to resume)")
    p.add_argument("--out", required=True, help="diffusers-layout output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--stage", choices=("all", "unet", "decoder"), default="all",
                   help="run only the UNet or the decoder stage (after the VAE; they are independent and may "
                        "run side by side); 'all' also writes --out")
    for name in ("vae_steps", "vae_batch", "vae_clips", "unet_steps", "unet_batch", "unet_clips", "turn_clips", "frames",
                 "max_cond", "size"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(TrainConfig, name))
    p.add_argument("--decoder-steps", type=int, default=TrainConfig.decoder_steps)
    for name in ("vae_minutes", "unet_minutes", "unet_lr", "vae_lr", "decoder_minutes", "turn_fraction", "cond_dropout"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(TrainConfig, name))
    p.add_argument("--text-lr", type=float, default=TrainConfig.text_lr)
    p.add_argument("--frozen-text-encoder", dest="train_text_encoder", action="store_false",
                   help="keep the random text encoder frozen (the first shipped model's setting)")
    p.add_argument("--unet-channels", default=",".join(map(str, TrainConfig.unet_channels)))
    p.add_argument("--vae-channels", default=",".join(map(str, TrainConfig.vae_channels)))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
    cfg.unet_channels = tuple(int(c) for c in args.unet_channels.split(","))
    cfg.vae_channels = tuple(int(c) for c in args.vae_channels.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    log = lambda msg: logger.info(msg)  # noqa: E731
    t0 = time.monotonic()
    vae = train_vae(cfg, work, log)
    tokenizer = make_word_tokenizer()
    text_encoder = make_text_encoder(len(tokenizer), cfg.seed + 3)
    if args.stage in ("all", "unet"):
        unet, text_encoder = train_unet(cfg, work, vae, tokenizer, text_encoder, log)
    if args.stage in ("all", "decoder"):
        vae = train_decoder(cfg, work, vae, log)
    if args.stage != "all":
        log(f"stage {args.stage} finished ({time.monotonic() - t0:.0f}s)")
        return 0
    meta = {"config": asdict(cfg), "wall_seconds_this_run": round(time.monotonic() - t0, 1)}
    save_pipeline_folder(Path(args.out), unet, vae, text_encoder, tokenizer, meta)
    log(f"saved {args.out} ({time.monotonic() - t0:.0f}s this run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
