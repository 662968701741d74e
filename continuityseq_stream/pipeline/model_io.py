"""The ends of the sampling loop, one function per model call: the prompt through CLIP, pixels into
and latents out of the VAE (in batches of frames), one UNet call, and the x2 latent upscaler.

`ContinuitySeqPipeline`'s public steps (`encode_prompt`, `prepare_conditioning`, `decode_latents`,
`upscale_latents`) are these with the pipeline's components; keeping the tensor work here leaves the
pipeline class with the loop itself. The shapes and the original's behaviour are in pipeline.py.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

__all__ = ["encode_text", "vae_encode", "vae_decode", "unet_noise", "run_upscaler"]

logger = logging.getLogger(__name__)


def encode_text(tokenizer, text_encoder, text: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """CLIP's last hidden state (after the final LayerNorm) of `text`, padded to the tokenizer's
    `model_max_length` (77) without attention mask: `[1, 77, D]` in `dtype`."""
    ids = tokenizer(
        text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(device))[0].to(dtype)


def vae_encode(vae, pixels: torch.Tensor, batch_size: int, scaling_factor: float) -> torch.Tensor:
    """Pixels `[N, 3, H, W]` in [-1, 1] (on the VAE's device and dtype) -> `latent_dist.mean` x
    `scaling_factor`, `[N, 4, H/8, W/8]`, `batch_size` frames per VAE call."""
    parts = [vae.encode(pixels[i: i + batch_size]).latent_dist.mean for i in range(0, pixels.shape[0], batch_size)]
    return torch.cat(parts) * scaling_factor


def vae_decode(vae, latents: torch.Tensor, batch_size: int, scaling_factor: float) -> torch.Tensor:
    """Latents `[1, 4, F, h, w]` -> pixels `[F, 3, H, W]` (float, about [-1, 1]), `batch_size`
    frames per VAE call."""
    z = (latents[0].permute(1, 0, 2, 3) / scaling_factor).to(vae.dtype)  # [F, 4, h, w]
    return torch.cat([vae.decode(z[i: i + batch_size]).sample for i in range(0, z.shape[0], batch_size)])


def unet_noise(unet, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The UNet's noise prediction for noisy `x` beside clean conditioning `y`, whatever the UNet
    returns it in (a tensor, an output object with `.sample`, or a tuple)."""
    out = unet(x, y, t, encoder_hidden_states=text)
    if isinstance(out, torch.Tensor):
        return out
    return out.sample if hasattr(out, "sample") else out[0]


def run_upscaler(latents: torch.Tensor, upscaler, prompt: str, generator: torch.Generator, num_inference_steps: int,
                 batch_size: Optional[int], report: bool) -> torch.Tensor:
    """Latents `[1, 4, F, h, w]` -> `[1, 4, F, 2h, 2w]` through the SD x2 latent upscaler: guidance
    0, the prompt repeated per frame, `batch_size` frames per call (None: all). report: log how
    many steps each call ran (counted by the upscaler's step callback)."""
    z = latents[0].permute(1, 0, 2, 3)
    batch = batch_size or z.shape[0]
    out, steps = [], []  # steps[j]: denoising steps call j ran

    def count_step(*_) -> None:
        steps[-1] += 1

    for i in range(0, z.shape[0], batch):
        part = z[i: i + batch]
        steps.append(0)
        out.append(upscaler(
            prompt=[prompt] * part.shape[0], image=part.to(upscaler.unet.dtype), num_inference_steps=num_inference_steps,
            guidance_scale=0.0, generator=generator, output_type="latent", callback=count_step,
        ).images.to(latents.dtype))
    if report:
        logger.info("upscaler: %d call(s) of %d frames, steps run per call: %s", len(steps), batch,
                    ", ".join(map(str, steps)))
    return torch.cat(out).permute(1, 0, 2, 3).unsqueeze(0)
