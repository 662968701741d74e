"""One `stream()` of the pipeline, chunk after chunk: the per-chunk settings, the selector that
follows live CN/CX changes and set_seed, the text embeddings of each chunk's prompt blend, one chunk
made from its conditioning (`ChunkStream.next_chunk`) and the resume point taken after it.

`ContinuitySeqPipeline.stream()` checks its arguments (`check_stream_args`, `stream_settings`),
prepares the first conditioning (`first_conditioning`) and hands over to a `ChunkStream`; the
pipeline's own methods do the model work (denoise, upscale, decode).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import torch

from ..chunk import Chunk
from ..errors import ConfigError, bad_value
from ..prompts import ChunkSettings, LiveSettings, PromptBlend, PromptBlender, PromptSchedule, UpdateChannel
from .conditioning import ConditioningSelector, FixedConditioning, UniformConditioning, clamp_k
from .first_frame import stream_init_pixels

__all__ = ["ChunkRecipe", "ChunkStream", "check_stream_args", "first_conditioning", "live_settings_for",
           "stream_settings"]


@dataclass(frozen=True)
class ChunkRecipe:
    """What stays the same for every chunk of one `stream()`: how a chunk is made from its
    conditioning, embeddings and settings (`_next_chunk`)."""

    num_frames: int
    num_inference_steps: int
    generator: torch.Generator
    vae_batch_size: int
    vae_scale: Optional[float]
    upscaler: Any
    upscaler_steps: int
    output_type: str


def check_stream_args(output_type: str, times: Optional[int], num_frames: Any, fps: Any) -> None:
    """ConfigError for a `stream()` argument that cannot work (before any model work)."""
    if output_type not in ("np", "pt"):
        raise ConfigError(f"output_type: got {output_type!r}; use 'np' (uint8 frames) or 'pt' (float pixels)")
    if times is not None and times < 1:
        raise ConfigError(f"times: got {times!r}; use a number of chunks >= 1, or None to run forever")
    if not isinstance(num_frames, int) or num_frames < 1:
        raise bad_value("num_frames", num_frames, "use a number of frames per chunk >= 1")
    if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
        raise ConfigError(f"fps: got {fps!r}; use frames per second > 0")


def stream_settings(prompt, negative_prompt, guidance_scale, selector: Optional[ConditioningSelector],
                    generator: Optional[torch.Generator], fps: Optional[float]):
    """(live settings, selector, generator) of a new stream: the generator defaults to a CPU one with
    a random seed, the selector to uniform over the settings' [CN, CX] drawing from a `random.Random`
    seeded from the generator (so a seeded generator alone makes the run reproducible)."""
    if generator is None:
        generator = torch.Generator("cpu").manual_seed(random.SystemRandom().randrange(2**63))
    live = live_settings_for(prompt, negative_prompt, guidance_scale, selector, generator)
    if live.schedule is not None and live.schedule.timed and fps is None:
        raise ConfigError("fps: a time-stamped prompt schedule switches by output time; pass fps=")
    selector = selector or UniformConditioning(*live.conditioning_range, random.Random(generator.initial_seed()))
    return live, selector, generator


def first_conditioning(pipe, image: Any, init_latents: Optional[torch.Tensor], height: Optional[int],
                       width: Optional[int], max_k: int, vae_batch_size: int, vae_scale: Optional[float]) -> torch.Tensor:
    """The first chunk's conditioning latents: the last `max_k` frames of `init_latents`, or of
    `image` encoded by `pipe`'s VAE (at `height` x `width`, or the image's own size)."""
    if init_latents is not None:
        if init_latents.ndim != 5:
            raise ConfigError(f"init_latents: got shape {tuple(init_latents.shape)}; use [1, 4, Fc, h, w]")
        return init_latents[:, :, -max_k:]
    pixels = stream_init_pixels(image, height, width, max_k, pipe.vae_scale_factor)
    return pipe.prepare_conditioning(pixels, vae_batch_size, vae_scale)


def follow_settings(settings: ChunkSettings, selector: ConditioningSelector, selector_range: Tuple[int, int],
                     generator: torch.Generator) -> Tuple[ConditioningSelector, Tuple[int, int]]:
    """The selector (and its CN/CX range) for this chunk: a live CN/CX change replaces it by a uniform
    one over the new range (drawing from the same `rng`); a live set_seed re-seeds the generator and
    that `rng`."""
    wanted = (settings.min_conditioning_frames, settings.max_conditioning_frames)
    if wanted != selector_range:
        selector, selector_range = UniformConditioning(*wanted, _selector_rng(selector, generator)), wanted
    if settings.reseed:
        generator.manual_seed(settings.seed)
        rng = getattr(selector, "rng", None)
        if isinstance(rng, random.Random):
            rng.seed(settings.seed)
    return selector, selector_range


def _selector_rng(selector: ConditioningSelector, generator: torch.Generator) -> random.Random:
    """The `random.Random` a selector draws from (a new one seeded from `generator` if it has none)."""
    rng = getattr(selector, "rng", None)
    return rng if isinstance(rng, random.Random) else random.Random(generator.initial_seed())


def live_settings_for(prompt, negative_prompt, guidance_scale, selector, generator) -> LiveSettings:
    """The one per-chunk settings object of a stream, from whatever `stream()` was given."""
    if isinstance(prompt, LiveSettings):
        return prompt
    if isinstance(prompt, PromptSchedule):
        schedule, text = prompt, prompt.entries[0].prompt
    elif isinstance(prompt, str):
        schedule, text = None, prompt
    else:
        raise ConfigError(f"prompt: got {type(prompt).__name__}; give a str, a PromptSchedule or a LiveSettings")
    if selector is None:
        cn, cx = 1, 8  # the original's policy
    elif isinstance(selector, UniformConditioning):
        cn, cx = selector.cn, selector.cx
    elif isinstance(selector, FixedConditioning):
        cn = cx = selector.k
    else:
        cn, cx = 1, selector.max_k
    seed = generator.initial_seed()
    return LiveSettings(prompt=text, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                        min_conditioning_frames=cn, max_conditioning_frames=cx,
                        seed=seed if seed < 2**63 else None, schedule=schedule)


class ChunkStream:
    """The chunks of one stream: `pipe` makes each chunk; `live` says its settings; `selector` picks
    the conditioning frames after it; `recipe` is what stays fixed. Iterating yields `Chunk`s from
    `start_chunk` / `start_frame` until `times` chunks (None: forever) or a stop through `updates`."""

    def __init__(self, pipe, live: LiveSettings, selector: ConditioningSelector, recipe: ChunkRecipe,
                 conditioning: torch.Tensor, *, times: Optional[int], fps: Optional[float],
                 updates: Optional[UpdateChannel], abort: Optional[Callable[[], bool]], start_chunk: int = 0,
                 start_frame: int = 0, resume_points: bool = False) -> None:
        self.pipe, self.live, self.selector, self.recipe = pipe, live, selector, recipe
        self.selector_range = live.conditioning_range
        self.conditioning = conditioning
        self.times, self.fps, self.updates, self.abort = times, fps, updates, abort
        self.index, self.first_frame = start_chunk, start_frame
        self.resume_points = resume_points
        self.blender = PromptBlender(pipe._encode_text)
        self.embeds_for: dict = {}  # the last blend's embeddings (one entry)

    def __iter__(self):
        generator, fps = self.recipe.generator, self.fps
        while self.times is None or self.index < self.times:
            index, first_frame = self.index, self.first_frame
            settings = self.live.next_chunk(index, first_frame / fps if fps else None, channel=self.updates,
                                            abort=self.abort)
            if settings is None:
                return  # stopped through `updates`
            self.selector, self.selector_range = follow_settings(settings, self.selector, self.selector_range, generator)
            embeds = self.chunk_embeds(settings)
            frames, self.conditioning, used = self.next_chunk(self.conditioning, embeds, settings, index)
            point = self.resume_point(index + 1, first_frame + frames.shape[0]) if self.resume_points else None
            yield Chunk(frames=frames, index=index, first_frame=first_frame, conditioning_frames=used,
                        prompt=settings.prompt, resume_point=point)
            self.index += 1
            self.first_frame += frames.shape[0]

    @torch.inference_mode()
    def chunk_embeds(self, settings: ChunkSettings) -> torch.Tensor:
        """Text embeddings of a chunk: the blend of its prompts' embeddings (each prompt encoded once),
        `[uncond, cond]` with guidance > 1, else `[cond]`. `embeds_for` keeps the previous chunk's result."""
        do_cfg = settings.guidance_scale > 1.0
        key: Tuple[PromptBlend, bool] = (settings.blend, do_cfg)
        if key not in self.embeds_for:
            if do_cfg:
                cond, uncond = self.blender(settings.blend)
                embeds = torch.cat([uncond, cond])
            else:
                embeds = self.blender.mix([(t.prompt, t.weight) for t in settings.blend.terms])
            self.embeds_for.clear()
            self.embeds_for[key] = embeds
        return self.embeds_for[key]

    def next_chunk(self, conditioning: torch.Tensor, prompt_embeds: torch.Tensor, settings: ChunkSettings,
                   index: int):
        """Denoise + pick the next conditioning + decode. Returns (frames, next conditioning, k used);
        frames are uint8 `[F, H, W, 3]`, or the float pixels for `output_type="pt"`.

        Only the k tail latents survive this call (cloned, so the chunk's latents can be freed)."""
        r, pipe, selector = self.recipe, self.pipe, self.selector
        latents = pipe.denoise_chunk(
            conditioning, prompt_embeds, r.num_frames, r.num_inference_steps, settings.guidance_scale, r.generator)
        k = clamp_k(selector.next_k(index, r.num_frames), r.num_frames)
        next_conditioning = latents[:, :, -k:].clone()
        if r.upscaler is not None:
            latents = pipe.upscale_latents(latents, r.upscaler, settings.blend.dominant, r.generator,
                                           r.upscaler_steps, report=index == 0)
        pixels = pipe.decode_latents(latents, r.vae_batch_size, r.vae_scale)
        frames = pixels if r.output_type == "pt" else pipe.to_uint8(pixels)
        return frames, next_conditioning, int(conditioning.shape[2])

    def resume_point(self, next_chunk: int, next_frame: int):
        """What continuing after a chunk needs, taken right after it was made (resume.py)."""
        from ..resume import ResumePoint, live_snapshot

        rng = getattr(self.selector, "rng", None)
        return ResumePoint(next_chunk=next_chunk, next_frame=int(next_frame), conditioning=self.conditioning,
                           generator_state=self.recipe.generator.get_state(),
                           selector_rng=rng.getstate() if isinstance(rng, random.Random) else None,
                           live=live_snapshot(self.live))
