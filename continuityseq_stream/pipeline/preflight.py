"""`preflight(config)`: the cheap checks of a run, in the main process, without torch.

Bad input (an init image or video that cannot be read, a model path that does not exist or a hub
id that cannot be had, xformers asked for but not installed, a video size the latent upscaler cannot
take, a --resume state that does not fit) fails here with one line, in a fraction of a second, before
the producer process starts. Nothing here imports torch, diffusers or transformers: only the
producer loads the model, and importing the model stack in the main process cost seconds of start-up
on every run (and a second torch thread pool beside the producer's).

Left to the producer, which checks it first thing (`chunk_source.resolve_runtime`): whether the
device asked for with `-d` exists (CUDA/MPS availability needs torch). Its error is the same one line
and exit status 2, a few seconds later (the producer's torch import).
"""

from __future__ import annotations

import importlib.util
import json
import os

from ..config import GenerationConfig
from ..errors import ConfigError
from ..resume import check_resume_options
from .init_files import read_image, read_video_tail
from .resolve import demo_kind, is_trained_demo, resolve_pretrained_path

__all__ = ["preflight", "check_attention", "check_upscaler_size"]

#: down blocks of the SD x2 latent upscaler's UNet (stabilityai/sd-x2-latent-upscaler and the demo one)
_UPSCALER_DOWN_BLOCKS = 4


def check_attention(config: GenerationConfig) -> str:
    """The attention kernel ("xformers", "sdpa" or "math"); ConfigError when xformers is asked for
    but not installed (found by its spec, not imported: xformers imports torch)."""
    if config.xformers:
        if importlib.util.find_spec("xformers") is None:
            raise ConfigError("{xformers}: xformers is not installed; `pip install xformers` or use {sdp} (PyTorch SDPA)",
                              names=("xformers", "sdp"))
        return "xformers"
    return "sdpa" if config.sdp else "math"


def _upscaler_down_blocks(config: GenerationConfig) -> int:
    """Down blocks of the `--upscaler` UNet, from its `unet/config.json` (cheap: no weights are read);
    the SD x2 latent upscaler's 4 for the demo and when the file says nothing."""
    if demo_kind(config.upscaler, "upscaler"):
        return _UPSCALER_DOWN_BLOCKS
    folder = resolve_pretrained_path(config.upscaler, demo="upscaler")
    try:
        with open(os.path.join(folder, "unet", "config.json"), encoding="utf-8") as f:
            blocks = len(json.load(f).get("down_block_types") or ())
    except (OSError, ValueError, AttributeError, TypeError):
        blocks = 0
    return blocks or _UPSCALER_DOWN_BLOCKS


def check_upscaler_size(config: GenerationConfig) -> None:
    """`-u`: ConfigError unless the latent upscaler can take this video size.

    The upscaler doubles the latents (h, w) and its UNet then halves them once per down block but
    the first, with reflect padding that needs at least 2 latents at the bottom. So each latent side
    must be a multiple of 2**(blocks - 2) and at least 2**(blocks - 1): for the SD x2 upscaler (4
    blocks) multiples of 4, at least 8 latents, i.e. video sides that are multiples of 32, at least 64.
    The trained demo's 32x32 (4x4 latents) is too small. Without this check the upscaler fails with a
    padding RuntimeError deep in the UNet, after every model has loaded."""
    if not config.upscale:
        return
    blocks = _upscaler_down_blocks(config)
    multiple, least = 8 * 2 ** max(blocks - 2, 0), 8 * 2 ** max(blocks - 1, 0)  # in pixels (8 per latent)
    if all(side % multiple == 0 and side >= least for side in (config.width, config.height)):
        return
    fit = [max(least, -(-side // multiple) * multiple) for side in (config.width, config.height)]
    raise ConfigError(
        f"{{upscale}}: the latent upscaler needs video sides that are multiples of {multiple} and at least {least} "
        f"(latents of at least {least // 8}x{least // 8}); got {{width}} {config.width} x {{height}} {config.height}; "
        f"use e.g. {{width}} {fit[0]} {{height}} {fit[1]}, or run without {{upscale}}",
        names=("upscale", "width", "height"))


def check_init_files(config: GenerationConfig) -> bool:
    """Decode `-i` / the tail of `--init-video` once (ConfigError when unusable); True when one of them
    gives the first frame (then no text-to-image model is needed)."""
    if config.init_image is not None:
        read_image(config.init_image)
        return True
    if config.init_video is not None:
        read_video_tail(config.init_video, config.max_conditioning_frames)
        return True
    return False


def preflight(config: GenerationConfig) -> None:
    """Raise the `ContinuitySeqError` that `open_stream` would raise for these inputs, cheaply and
    without torch (see the module docstring). The demo models are not built here."""
    check_attention(config)
    has_init = check_init_files(config)
    check_resume_options(config)  # --state-dir / --resume: the state's small JSON part only
    if demo_kind(config.model) != "random":  # (the random demo is built on first use, not here)
        resolve_pretrained_path(config.model)
    if not has_init and not is_trained_demo(config.model) and not demo_kind(config.model_2d, "2d"):
        resolve_pretrained_path(config.model_2d, demo="2d")
    check_upscaler_size(config)  # (also resolves a non-demo --upscaler)
