"""`open_stream(config)`: from a validated `GenerationConfig` to an iterator of decoded chunks.

The one entry point the CLI and the producer process share. It

1. resolves the device (`-d`; default cuda, else mps, else cpu), the dtype (`--dtype`; default
   float16 on CUDA, float32 elsewhere), the attention kernel (`-S` SDPA, the default; `-x`
   xformers, a clear error when it is not installed) and the seed (`-r`; default a random integer
   in [0, 9,999,999] as the original, logged so the run can be repeated);
2. checks the model path (`-m`, or `demo`) before any heavy work;
3. makes the first chunk's conditioning pixels from `-i` (init image), `--init-video` (its last
   CX frames) or the text-to-image model `-MP` (`-IW/-IH/-IG`), and writes them with `-I`;
4. loads the pipeline (and with `-u` the latent upscaler), builds the original's conditioning
   policy (k uniform in [CN, CX]) with a `random.Random(seed)`, and a CPU `torch.Generator(seed)`
   for all noise;
5. yields `Chunk`s, `times` of them (0 = forever), each with the settings `LiveSettings` gives it
   (the config's values < a prompt file's schedule < live updates; see prompts/live.py); with
   `--original-postprocess` their frames get the original's truncation, CLAHE and gamma.

Everything happens lazily, on the first `next()`; errors are `ContinuitySeqError`s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from ..chunk import Chunk
from ..config import GenerationConfig, resolve_seed
from ..errors import ConfigError
from ..prompts import LiveSettings, PromptSchedule, UpdateChannel
from .preflight import check_attention, check_upscaler_size, preflight
from .resolve import demo_kind, is_trained_demo, resolve_pretrained_path

logger = logging.getLogger(__name__)

__all__ = ["open_stream", "preflight", "resolve_runtime", "Runtime", "resolve_seed", "check_upscaler_size"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Runtime:
    """Where and how the model runs."""

    device: torch.device
    dtype: torch.dtype
    attention: str  # "sdpa", "xformers" or "math"


def resolve_runtime(config: GenerationConfig) -> Runtime:
    """Device, dtype and attention kernel for `config`; ConfigError when one is not available."""
    name = config.device
    if name is None:
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    base = name.split(":")[0]
    if base == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{{device}}: got {name!r} but CUDA is not available here; use cpu", names=("device",))
    if base == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ConfigError(f"{{device}}: got {name!r} but MPS is not available here; use cpu", names=("device",))
    if base == "cuda" and ":" in name:
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise ConfigError(f"{{device}}: got {name!r}; this machine has cuda:0..cuda:{torch.cuda.device_count() - 1}",
                              names=("device",))
    device = torch.device(name)
    if config.dtype is not None:
        dtype = _DTYPES[config.dtype]
    else:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return Runtime(device=device, dtype=dtype, attention=check_attention(config))


def _init_pixels(config: GenerationConfig) -> Optional[torch.Tensor]:
    """Pixels `[Fc, 3, H, W]` in [-1, 1] from -i or --init-video (cheap; checked before heavy work),
    or None when the text-to-image model must render them."""
    from . import first_frame as sources

    if config.init_image is not None:
        return sources.load_init_image(config.init_image, config.height, config.width)
    if config.init_video is not None:
        return sources.load_init_video(config.init_video, config.height, config.width, config.max_conditioning_frames)
    return None


def _render_init(config: GenerationConfig, runtime: Runtime) -> torch.Tensor:
    from . import first_frame as sources

    if is_trained_demo(config.model):
        # the trained demo knows only synthetic moving shapes: its first frame is the shape the prompt
        # asks for, drawn by the same generator it was trained on (-MP is not used)
        from ..demo.trained import demo_init_frame

        logger.info("first frame drawn by the synthetic-shapes generator (%s)", config.model)
        return sources.to_pixels(demo_init_frame(config.prompt, config.seed), config.height, config.width)
    logger.info("rendering the init image with %s", config.model_2d)
    return sources.generate_init_image(
        config.model_2d, config.prompt, height=config.height, width=config.width,
        image_height=config.image_height, image_width=config.image_width,
        negative_prompt=config.negative_prompt, guidance_scale=config.image_guidance_scale,
        generator=torch.Generator("cpu").manual_seed(config.seed), device=runtime.device, dtype=runtime.dtype,
        # a real text-to-image model uses its own default number of steps; the demo one is noise anyway
        num_inference_steps=config.num_steps if demo_kind(config.model_2d, "2d") else None,
    )


def _original_look(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """`--original-postprocess`: each chunk's float pixels -> uint8 frames as the original wrote them
    (truncated, CLAHE, gamma 0.98; postprocess.py)."""
    from .postprocess import original_postprocess

    try:
        for chunk in chunks:
            yield dataclasses.replace(chunk, frames=original_postprocess(chunk.frames))
    finally:
        chunks.close()  # the pipeline's generator ends now, not when it is collected


def open_stream(
    config: GenerationConfig,
    *,
    save_init_to: Optional[str] = None,
    progress: bool = True,
    schedule: Optional[PromptSchedule] = None,
    updates: Optional[UpdateChannel] = None,
    abort: Optional[Callable[[], bool]] = None,
    output_type: str = "np",
) -> Iterator[Chunk]:
    """Yield the chunks `config` asks for (`config.times`, 0 = forever).

    save_init_to: where `-I/--save-init` writes the init image (default `<output-dir>/init_<seed>.png`).
    progress: show diffusers' per-step progress bar (tqdm, stderr).
    schedule: a prompt file's `PromptSchedule` (takes precedence over `config.prompt`).
    updates: an `UpdateChannel` carrying live changes (control socket); they apply at chunk boundaries.
    abort: checked while paused; True ends the stream (the producer is stopping).
    output_type: as `pipe.stream` ("pt": float pixels, which the producer converts into its ring slots).
    The per-chunk settings are `LiveSettings.from_config(config, schedule)` (see prompts/live.py).
    """
    from .conditioning import UniformConditioning
    from ..demo.tiny import DEMO_LABEL
    from ..resume import check_resume_options, load_resume_point, restore_live, restore_rng, state_dir_of
    from .pipeline import ContinuitySeqPipeline

    # Cheap checks first, so that bad input fails in one line before any heavy work or log line.
    config = resolve_seed(config)
    runtime = resolve_runtime(config)
    pixels = _init_pixels(config)
    check_upscaler_size(config)
    check_resume_options(config)
    folder = resolve_pretrained_path(config.model)  # builds the demo model on first use: after the cheap checks
    if is_trained_demo(config.model):
        from ..demo.trained import TRAINED_DEMO_LABEL

        logger.info(TRAINED_DEMO_LABEL)
    draws_2d = pixels is None and not is_trained_demo(config.model)
    if (demo_kind(config.model) == "random" or (draws_2d and demo_kind(config.model_2d, "2d"))
            or (config.upscale and demo_kind(config.upscaler, "upscaler"))):
        logger.warning(DEMO_LABEL)
    threads = torch.get_num_threads()  # what `--threads` gave this process (runtime/threads.py)
    logger.info("seed %s, device %s, dtype %s, attention %s, %d CPU thread%s",
                "from the saved state" if config.resume else config.seed, runtime.device,
                str(runtime.dtype).replace("torch.", ""), runtime.attention, threads, "" if threads == 1 else "s")
    point = load_resume_point(config, runtime.device, runtime.dtype) if config.resume else None
    if point is not None:  # no new first frame: the saved latents condition the next chunk
        logger.info("resuming from %s: chunk %d, frame %d", config.resume, point.next_chunk, point.next_frame)
    elif pixels is None:  # by precedence, a prompt file's first prompt also draws the first frame
        first = schedule.entries[0] if schedule is not None else None
        pixels = _render_init(config if first is None else config.replace(
            prompt=first.prompt, negative_prompt=config.negative_prompt if first.negative is None else first.negative),
            runtime)
    if config.save_init and point is None:
        from .first_frame import save_init_image

        path = save_init_to or os.path.join(config.output_dir, f"init_{config.seed}.png")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        logger.info("init image saved to %s", save_init_image(pixels[-1:], path))

    pipe = ContinuitySeqPipeline.from_pretrained(folder, torch_dtype=runtime.dtype, device=runtime.device)
    pipe.unet.set_attention_backend(runtime.attention)
    if config.compile:
        pipe.unet.compile()  # in place (nn.Module.compile): the first chunk pays the compilation
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc="steps")
    upscaler = None
    if config.upscale:
        from .first_frame import load_upscaler

        upscaler = load_upscaler(config.upscaler, device=runtime.device, dtype=runtime.dtype)
        upscaler.set_progress_bar_config(disable=True)

    live = LiveSettings.from_config(config, schedule) if point is None else restore_live(point.live)
    generator = torch.Generator("cpu").manual_seed(config.seed)
    if point is not None:
        generator.set_state(point.generator_state)
    chunks = pipe.stream(
        live,
        num_frames=config.num_frames,
        num_inference_steps=config.num_steps,
        height=config.height,
        width=config.width,
        selector=UniformConditioning(*live.conditioning_range,
                                     restore_rng(config.seed, None if point is None else point.selector_rng)),
        image=pixels if point is None else None,
        init_latents=None if point is None else point.conditioning,
        start_chunk=0 if point is None else point.next_chunk,
        start_frame=0 if point is None else point.next_frame,
        resume_points=state_dir_of(config) is not None,
        generator=generator,
        times=None if config.times == 0 else config.times,
        vae_batch_size=config.vae_batch_size,
        vae_scale=config.vae_scale,
        upscaler=upscaler,
        upscaler_steps=config.num_steps,  # as the original: the upscaler runs -s steps
        updates=updates,
        fps=config.fps,
        abort=abort,
        output_type="pt" if config.original_postprocess else output_type,
    )
    if config.original_postprocess:
        chunks = _original_look(chunks)
    if not progress:
        yield from chunks
        return
    from tqdm import tqdm

    # a chunk bar beside diffusers' per-step bar (stderr; open-ended with --times 0); counted when a
    # chunk is made, not when the consumer asks for the next one
    bar = tqdm(total=config.times or None, desc="chunks", unit="chunk", file=sys.stderr)
    try:
        for chunk in chunks:
            bar.update(1)
            yield chunk
    finally:
        bar.close()
