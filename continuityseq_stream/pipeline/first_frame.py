"""Where the first chunk's conditioning comes from, and the optional latent upscaler.

Every source returns pixels as a float32 tensor `[N, 3, H, W]` in **[-1, 1]** at the output size
(N = 1 for an image, up to CX for a video). The pipeline VAE-encodes them into the first chunk's
conditioning latents.

- `stream_init_pixels(image, ...)`  what `stream(image=...)` is given, checked and sized for the VAE.
- `load_init_image(path, ...)`  `-i/--init-image`: any size and format Pillow reads, resized.
- `init_source_size(...)` / `fit_video_size(...)`  the video size an init image or video implies
  (its own size rounded down to multiples of 8, as the original; explicit `-WI/-HI` win).
- `load_init_video(path, ...)`  `--init-video`: the last `max_frames` frames of a video (PyAV),
  found by seeking near the end rather than decoding the whole file.
- `generate_init_image(model_2d, prompt, ...)`  `-MP/--model-2d`: a diffusers text-to-image pipeline
  (`AutoPipelineForText2Image`) renders the prompt at `-IW x -IH` with guidance `-IG`.

Fix of the original: its generated image reached the VAE in [0, 1] (the 2x-1 mapping was missing);
here every source is mapped to [-1, 1], the range the VAE was trained on.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError, bad_value
from .init_files import _open_image, fit_video_size, init_source_size, read_video_tail

logger = logging.getLogger(__name__)

__all__ = [
    "to_pixels", "pixels_to_uint8", "stream_init_pixels", "load_init_image", "load_init_video", "generate_init_image",
    "save_init_image", "load_upscaler", "init_source_size", "fit_video_size",
]

ImageLike = Union["PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    # bilinear, align_corners False, as the original; antialias when shrinking avoids aliasing
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def to_pixels(image: Any, height: int, width: int) -> torch.Tensor:
    """An image or frames -> float32 `[N, 3, height, width]` in [-1, 1].

    Accepts an image file path, a PIL image, a list of them, uint8 numpy `[H, W, 3]` / `[N, H, W, 3]`,
    or a float tensor `[3, H, W]` / `[N, 3, H, W]` already in [-1, 1].
    """
    if isinstance(image, (str, os.PathLike)):
        return load_init_image(os.fspath(image), height, width)
    if isinstance(image, (list, tuple)):
        return torch.cat([to_pixels(im, height, width) for im in image])
    if isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"image tensor: got shape {tuple(image.shape)}; use [3, H, W] or [N, 3, H, W] in [-1, 1]")
        return _resize(x, height, width).clamp(-1, 1)
    if not isinstance(image, np.ndarray):  # PIL
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ConfigError(f"image array: got {arr.dtype} {arr.shape}; use uint8 [H, W, 3] or [N, H, W, 3]")
    x = torch.from_numpy(np.array(arr, copy=True)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return _resize(x, height, width).clamp(-1, 1)


def stream_init_pixels(image: Any, height: Optional[int], width: Optional[int], max_k: int,
                       multiple: int) -> torch.Tensor:
    """The last `max_k` frames of `stream()`'s `image` as pixels `[N, 3, H, W]` in [-1, 1].

    The size is `height` x `width`, or the image's own when either is None; each side must be a
    positive multiple of `multiple` (the VAE's downscale factor), else a ConfigError naming it."""
    if image is None:
        raise ConfigError("stream(): give `image` (init image or video frames) or `init_latents` for the first chunk")
    if height is None or width is None:
        if isinstance(image, torch.Tensor):
            height, width = image.shape[-2:]
        else:
            arr = np.asarray(image if not isinstance(image, (list, tuple)) else image[0])
            height, width = arr.shape[-3:-1]
    for name, v in (("height", height), ("width", width)):
        if int(v) % multiple or int(v) < multiple:
            raise bad_value(name, v, f"use a positive multiple of {multiple}")
    return to_pixels(image, int(height), int(width))[-max_k:]


def pixels_to_uint8(x: torch.Tensor) -> np.ndarray:
    """`[N, 3, H, W]` in [-1, 1] -> uint8 `[N, H, W, 3]` (clamped, (x + 1) * 127.5, rounded)."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).cpu().numpy())


def load_init_image(path: str, height: int, width: int) -> torch.Tensor:
    """`-i/--init-image`: read any image file, resize to the output size -> `[1, 3, H, W]` in [-1, 1]."""
    with _open_image(path) as im:
        im.load()
        return to_pixels(im, height, width)


def load_init_video(path: str, height: int, width: int, max_frames: int) -> torch.Tensor:
    """`--init-video`: the last `max_frames` frames of a video -> `[k, 3, H, W]` in [-1, 1], in order
    (read by `init_files.read_video_tail`)."""
    return to_pixels(read_video_tail(path, max_frames), height, width)


def generate_init_image(
    model_2d: str,
    prompt: str,
    *,
    height: int,
    width: int,
    image_height: Optional[int] = None,
    image_width: Optional[int] = None,
    negative_prompt: Optional[str] = None,
    guidance_scale: float = 12.5,
    generator: Optional[torch.Generator] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    num_inference_steps: Optional[int] = None,
) -> torch.Tensor:
    """`-MP/--model-2d`: render the prompt with a text-to-image pipeline -> `[1, 3, H, W]` in [-1, 1].

    The image is rendered at `image_width x image_height` (default: the output size), then resized
    bilinearly to the output size. The pipeline is freed before returning.
    """
    from diffusers import AutoPipelineForText2Image

    from .resolve import resolve_pretrained_path

    folder = resolve_pretrained_path(model_2d, demo="2d")
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(folder, torch_dtype=dtype)
    except Exception as e:  # diffusers raises many kinds for a folder that is not a pipeline
        raise CheckpointError(
            f"{{model_2d}}: cannot load {model_2d!r} as a text-to-image pipeline ({type(e).__name__}: {e}); "
            "pass a diffusers text-to-image folder or hub id, e.g. stabilityai/stable-diffusion-2-1", names=("model_2d",)
        ) from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(leave=False)
    kwargs = dict(
        prompt=prompt, negative_prompt=negative_prompt, height=image_height or height,
        width=image_width or width, guidance_scale=guidance_scale, generator=generator, output_type="pt",
    )
    if num_inference_steps:
        kwargs["num_inference_steps"] = num_inference_steps
    with torch.inference_mode():
        images = pipe(**kwargs).images  # [1, 3, h, w] in [0, 1]
    del pipe
    return to_pixels(images.float() * 2.0 - 1.0, height, width)  # the fix: [0, 1] -> [-1, 1]


def save_init_image(pixels: torch.Tensor, path: str) -> str:
    """`-I/--save-init`: write the first init frame as PNG; returns the path."""
    from PIL import Image

    Image.fromarray(pixels_to_uint8(pixels[:1])[0]).save(path, format="PNG")
    return path


def load_upscaler(upscaler: str, *, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32):
    """`-u/--upscale`: diffusers' SD x2 latent upscaler (`--upscaler`, default
    stabilityai/sd-x2-latent-upscaler) as a `StableDiffusionLatentUpscalePipeline` on `device`."""
    from diffusers import StableDiffusionLatentUpscalePipeline

    from .resolve import resolve_pretrained_path

    folder = resolve_pretrained_path(upscaler, demo="upscaler")
    try:
        pipe = StableDiffusionLatentUpscalePipeline.from_pretrained(folder, torch_dtype=dtype)
    except Exception as e:
        raise CheckpointError(
            f"{{upscaler}}: cannot load {upscaler!r} as a latent upscaler ({type(e).__name__}: {e}); "
            "pass a StableDiffusionLatentUpscalePipeline folder or hub id, e.g. stabilityai/sd-x2-latent-upscaler",
            names=("upscaler",)) from None
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)
