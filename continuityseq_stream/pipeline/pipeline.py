"""ContinuitySeqPipeline: text + a few clean latent frames -> the next chunk of video, forever.

One chunk (tests/golden/ARCHITECTURE.md §9, the original `inference.py`):

1. `encode_prompt`: CLIP last hidden states of the prompt, padded to `tokenizer.model_max_length`
   (77) without attention mask; with classifier-free guidance (guidance > 1) the unconditional
   embeddings (the negative prompt, default `""`) come **first**: `[uncond, cond]`.
2. `prepare_conditioning` (first chunk only): the init pixels in [-1, 1] are VAE-encoded in batches
   of `vae_batch_size` frames; latent = `latent_dist.mean` x scaling factor (`vae_scale` overrides
   `vae.config.scaling_factor`). The original drew `latent_dist.sample()` from the global RNG; we use
   the mean, which is deterministic and differs by the VAE's tiny posterior std only.
   Later chunks get their conditioning as latents directly (the last k frames of the previous chunk).
3. `denoise_chunk`: noise `[1, 4, F, h, w]` from the explicit `generator` (drawn in float32 on the
   generator's device, then moved), DDIM over `num_inference_steps` with eta 0; at every step the
   **clean** conditioning latents (never noised, identical at every step) go to the UNet beside the
   noisy latents; ε = ε_u + g (ε_c − ε_u).
4. `decode_latents`: latents / scaling factor through the VAE in batches of `vae_batch_size` frames,
   then `to_uint8`: clamp to [-1, 1], (x + 1) x 127.5, rounded -> uint8 `[F, H, W, 3]`.
5. After each chunk a `ConditioningSelector` picks k; the next chunk is conditioned on the last k
   latent frames of this chunk (k > F means all F).

`stream()` yields one decoded `Chunk` at a time and keeps only the k conditioning latents between
chunks, so memory is flat in the number of chunks. `__call__` collects `times` chunks.

Per-chunk parameters come from one mechanism, `prompts.LiveSettings`: before every chunk `stream()`
asks it for that chunk's `ChunkSettings` (prompt blend, negative prompt, guidance, CN/CX, seed). A
plain prompt, a `PromptSchedule` (prompt file) or a ready `LiveSettings` all go through it; live
changes arrive through an optional `prompts.UpdateChannel` (`updates=`) and apply exactly at the
chunk `UpdateChannel.submit` announced. Text embeddings of a blend are the weighted sum of its
prompts' embeddings, each prompt encoded once (`prompts.PromptBlender`).

Fixes of the original's bugs (docs/differences.md): pixels always reach the VAE in [-1, 1] (the original fed
its generated init image in [0, 1]); an init image works (the original's 4-D tensor crashed the
encoder); randomness only from explicit generators. The original's truncation, CLAHE and gamma
are not applied here (frames are the decoder's output, rounded); `postprocess.py` has them
(`--original-postprocess`). Every difference from the original: docs/differences.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..chunk import Chunk
from .components import COMPONENTS, load_components  # noqa: F401 (COMPONENTS re-exported)
from .conditioning import ConditioningSelector
from ..errors import ConfigError
from ..prompts import LiveSettings, PromptSchedule, UpdateChannel
from .first_frame import pixels_to_uint8
from .model_io import encode_text, run_upscaler, unet_noise, vae_decode, vae_encode
from .streaming import ChunkRecipe, ChunkStream, check_stream_args, first_conditioning, stream_settings

__all__ = ["ContinuitySeqPipeline", "ContinuitySeqPipelineOutput"]


@dataclass
class ContinuitySeqPipelineOutput(BaseOutput):
    """frames: uint8 `[times * F, H, W, 3]`."""

    frames: np.ndarray


class ContinuitySeqPipeline(DiffusionPipeline):
    """Chunked text-to-video with clean latent conditioning (ContinuitySeq / vseq2vseq).

    Components: `unet` (continuityseq_stream.models.ContinuitySeqUNet), `vae` (AutoencoderKL),
    `text_encoder` (CLIPTextModel), `tokenizer` (CLIPTokenizer), `scheduler` (DDIMScheduler).
    The named steps below are the sampling loop; the model calls behind them are in model_io.py,
    the loading in components.py, the chunk-after-chunk loop of `stream()` in streaming.py.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], *,
                        torch_dtype: Optional[torch.dtype] = None, device: Optional[Union[str, torch.device]] = None,
                        **kwargs: Any) -> "ContinuitySeqPipeline":
        """Load every component explicitly from its subfolder of a diffusers-layout folder (not by
        the classes `model_index.json` names: see components.py); `torch_dtype` default float32.
        `kwargs` are not supported."""
        if kwargs:
            raise ConfigError(f"ContinuitySeqPipeline.from_pretrained: unsupported argument(s) {sorted(kwargs)}")
        pipe = cls(**load_components(pretrained_model_name_or_path, torch_dtype or torch.float32))
        return pipe if device is None else pipe.to(device)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def scaling_factor(self, vae_scale: Optional[float] = None) -> float:
        return float(vae_scale) if vae_scale is not None else float(self.vae.config.scaling_factor)

    @property
    def _device(self) -> torch.device:
        return self._execution_device

    # -- named steps ----------------------------------------------------------------------------
    def _encode_text(self, text: str) -> torch.Tensor:
        return encode_text(self.tokenizer, self.text_encoder, text, self._device, self.unet.dtype)

    @torch.inference_mode()
    def encode_prompt(self, prompt: str, negative_prompt: Optional[str] = None, do_cfg: bool = True) -> torch.Tensor:
        """`[1, 77, D]`, or `[2, 77, D]` = concat([uncond, cond]) with guidance (uncond first)."""
        cond = self._encode_text(prompt)
        if not do_cfg:
            return cond
        uncond = self._encode_text(negative_prompt if negative_prompt is not None else "")
        return torch.cat([uncond, cond])

    @torch.inference_mode()
    def prepare_conditioning(
        self, pixels: torch.Tensor, vae_batch_size: int = 16, vae_scale: Optional[float] = None
    ) -> torch.Tensor:
        """Pixels `[N, 3, H, W]` in [-1, 1] -> clean conditioning latents `[1, 4, N, H/8, W/8]`."""
        latents = vae_encode(self.vae, pixels.to(self._device, self.vae.dtype), vae_batch_size,
                             self.scaling_factor(vae_scale))  # [N, 4, h, w]
        return latents.permute(1, 0, 2, 3).unsqueeze(0).to(self.unet.dtype).contiguous()

    def prepare_latents(self, num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """Initial noise `[1, 4, F, h, w]` from `generator` (float32 on its device, then moved/cast)."""
        shape = (1, self.unet.config.in_channels, num_frames, height, width)
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        return noise.to(self._device, self.unet.dtype) * self.scheduler.init_noise_sigma

    def _unet(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """One UNet call (a subclass may change how the conditioning goes in: bench_model.py does)."""
        return unet_noise(self.unet, x, y, t, text)

    @torch.inference_mode()
    def denoise_chunk(
        self,
        conditioning: torch.Tensor,
        prompt_embeds: torch.Tensor,
        num_frames: int,
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """One chunk: DDIM (eta 0) from fresh noise with the clean `conditioning` `[1, 4, Fc, h, w]`
        at every step -> denoised latents `[1, 4, F, h, w]`.

        With guidance (`prompt_embeds` has batch 2, uncond first) the noisy latents are doubled; the
        conditioning is passed once (batch 1): ContinuitySeqUNet computes the conditioning stream once
        and shares it between both halves (same result as concat([y] * 2), half the work)."""
        do_cfg = prompt_embeds.shape[0] == 2
        h, w = conditioning.shape[-2:]
        self.scheduler.set_timesteps(num_inference_steps, device=self._device)
        latents = self.prepare_latents(num_frames, h, w, generator)
        y = conditioning.to(self._device, self.unet.dtype)
        for t in self.progress_bar(self.scheduler.timesteps):
            x_in = torch.cat([latents] * 2) if do_cfg else latents
            x_in = self.scheduler.scale_model_input(x_in, t)
            y_in = self.scheduler.scale_model_input(y, t)  # identity for DDIM; never noised
            eps = self._unet(x_in, y_in, t, prompt_embeds)
            if do_cfg:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            latents = self.scheduler.step(eps, t, latents, eta=0.0, generator=generator).prev_sample
        return latents

    @torch.inference_mode()
    def decode_latents(
        self, latents: torch.Tensor, vae_batch_size: int = 16, vae_scale: Optional[float] = None
    ) -> torch.Tensor:
        """Latents `[1, 4, F, h, w]` -> pixels `[F, 3, H, W]` (float, about [-1, 1]), `vae_batch_size`
        frames per VAE call."""
        return vae_decode(self.vae, latents, vae_batch_size, self.scaling_factor(vae_scale))

    @torch.inference_mode()
    def upscale_latents(self, latents: torch.Tensor, upscaler, prompt: str, generator: torch.Generator,
                        num_inference_steps: int = 25, batch_size: Optional[int] = None,
                        report: bool = False) -> torch.Tensor:
        """`-u/--upscale`: SD x2 latent upscaler per frame -> latents `[1, 4, F, 2h, 2w]` (same VAE
        space; the upscaler and the video model share the SD VAE).

        As the original: `num_inference_steps` (its `-s`), guidance 0 (no classifier-free
        guidance), the prompt repeated per frame, and `batch_size` frames per upscaler call (None:
        the whole chunk, which is what the original's batches of `-T` frames amount to).
        report: log how many steps each call ran (counted by the upscaler's step callback)."""
        return run_upscaler(latents, upscaler, prompt, generator, num_inference_steps, batch_size, report)

    @staticmethod
    def to_uint8(pixels: torch.Tensor) -> np.ndarray:
        """Pixels `[F, 3, H, W]` -> uint8 `[F, H, W, 3]` (clamp [-1, 1], (x + 1) x 127.5, rounded)."""
        return pixels_to_uint8(pixels)

    # -- streaming ------------------------------------------------------------------------------
    def stream(
        self,
        prompt: Union[str, PromptSchedule, LiveSettings],
        negative_prompt: Optional[str] = None,
        *,
        num_frames: int = 8, height: Optional[int] = None, width: Optional[int] = None,
        num_inference_steps: int = 25, guidance_scale: float = 30.0,
        selector: Optional[ConditioningSelector] = None, generator: Optional[torch.Generator] = None,
        image: Any = None, init_latents: Optional[torch.Tensor] = None, times: Optional[int] = None,
        vae_batch_size: int = 16, vae_scale: Optional[float] = None,
        upscaler: Any = None, upscaler_steps: Optional[int] = None,
        updates: Optional[UpdateChannel] = None, fps: Optional[float] = None,
        abort: Optional[Callable[[], bool]] = None, output_type: str = "np",
        start_chunk: int = 0, start_frame: int = 0, resume_points: bool = False,
    ) -> Iterator[Chunk]:
        """Yield decoded chunks one at a time; `times=None` runs forever.

        prompt: a string; a `PromptSchedule` (a prompt file: prompts that blend from one into the next
            over the chunks, or switch at output times); or a `LiveSettings` holding everything that
            may change per chunk (then `negative_prompt` and `guidance_scale` here are ignored, and
            its CN/CX decide the conditioning range). Chunk.prompt records the chunk's prompt, or the
            blend as `a (75%) + b (25%)`.
        updates: an `UpdateChannel` for live changes while the stream runs (`submit` a set_prompt,
            set_guidance, ... from another thread or process; it answers the chunk the change applies
            at). `pause()` makes the next chunk wait, `stop()` ends the stream at the next boundary.
        fps: output frame rate; needed by time-stamped schedules (a chunk's output time is
            first_frame / fps).
        abort: called while the stream waits paused; True ends the stream (e.g. the caller is gone).
        image: the first chunk's conditioning pixels (PIL image, uint8 array `[H, W, 3]` /
            `[N, H, W, 3]`, or a tensor in [-1, 1]), resized to `height x width`; with several frames
            (an init video) the last `selector.max_k` are used. Or pass `init_latents`
            `[1, 4, Fc, h, w]` (already scaled) instead.
        selector: k after each chunk (default: uniform in the settings' [CN, CX], [1, 8] for a plain
            prompt, the original's policy, seeded from the generator's initial seed, so a seeded
            generator alone makes the run reproducible). A live change of CN/CX replaces it by a
            uniform selector over the new range that keeps drawing from the same `rng`.
        generator: the only source of noise (default: a CPU generator with a random seed). A live
            set_seed re-seeds it (and the selector's `rng`) before its chunk.
        upscaler: a `StableDiffusionLatentUpscalePipeline` (`-u/--upscale`); frames come out 2x.
            It runs `upscaler_steps` steps (default: `num_inference_steps`, as the original) without
            guidance on each chunk's latents before decoding, one call per chunk.
        output_type: "np" (Chunk.frames uint8 `[F, H, W, 3]`) or "pt" (the decoded float pixels
            `[F, 3, H, W]` on the model's device; `Chunk.write_frame` converts them where they go).
        start_chunk, start_frame: index of the first chunk and of its first frame (a resumed stream
            goes on from a saved `resume.ResumePoint`: pass its latents as `init_latents`, its
            generator and selector states, and its live settings as `prompt`). `times` counts from 0.
        resume_points: attach to every chunk what continuing after it needs (`Chunk.resume_point`).
        """
        check_stream_args(output_type, times, num_frames, fps)
        live, selector, generator = stream_settings(prompt, negative_prompt, guidance_scale, selector, generator, fps)
        recipe = ChunkRecipe(num_frames, num_inference_steps, generator, vae_batch_size, vae_scale, upscaler,
                             upscaler_steps or num_inference_steps, output_type)
        conditioning = first_conditioning(self, image, init_latents, height, width, selector.max_k, vae_batch_size,
                                          vae_scale)
        yield from ChunkStream(self, live, selector, recipe, conditioning, times=times, fps=fps, updates=updates,
                               abort=abort, start_chunk=start_chunk, start_frame=start_frame,
                               resume_points=resume_points)

    # -- diffusers convention -------------------------------------------------------------------
    def __call__(self, prompt: str, negative_prompt: Optional[str] = None, *, times: int = 1,
                 output_type: str = "np", return_dict: bool = True, **kwargs: Any):
        """All frames of `times` chunks as uint8 `[times * F, H, W, 3]` (`output_type="np"`).
        Keyword arguments are those of `stream()`."""
        if output_type != "np":
            raise ConfigError(f"output_type: got {output_type!r}; only 'np' (uint8 frames) is supported")
        if times is None or times < 1:
            raise ConfigError(f"times: got {times!r}; __call__ needs a finite number of chunks >= 1 (use stream() for forever)")
        frames = np.concatenate([c.frames for c in self.stream(prompt, negative_prompt, times=times, **kwargs)])
        return ContinuitySeqPipelineOutput(frames=frames) if return_dict else (frames,)
