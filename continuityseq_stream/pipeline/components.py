"""The five components of a ContinuitySeq pipeline, loaded one by one from a diffusers-layout folder.

`model_index.json` is not used to pick classes: the ContinuitySeq-A checkpoint names
`TextToVideoSDPipeline` and `UNet3DConditionModel`, but its UNet is the project's
`ContinuitySeqUNet`. The scheduler is always DDIM built from the saved scheduler config, whatever
class that config names (as the original). A component that cannot be loaded is a
`CheckpointError` naming its subfolder, never a library traceback.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar, Union

import torch

from ..errors import CheckpointError
from .resolve import resolve_pretrained_path

__all__ = ["COMPONENTS", "load_components"]

COMPONENTS = ("scheduler", "tokenizer", "text_encoder", "vae", "unet")

T = TypeVar("T")


def load_components(pretrained_model_name_or_path: Union[str, os.PathLike], dtype: torch.dtype) -> dict:
    """`{name: component}` for COMPONENTS, the models in `dtype` and in eval mode."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..models import ContinuitySeqUNet

    label = str(pretrained_model_name_or_path)
    folder = resolve_pretrained_path(pretrained_model_name_or_path)
    missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(folder, c))]
    if missing:
        raise CheckpointError(
            f"{{model}}: {label!r} lacks {', '.join(m + '/' for m in missing)}; "
            "pass a diffusers-layout folder with scheduler/, tokenizer/, text_encoder/, vae/ and unet/",
            names=("model",))
    parts = {
        "scheduler": _load(label, "scheduler", lambda: DDIMScheduler.from_config(
            DDIMScheduler.load_config(folder, subfolder="scheduler"))),
        "tokenizer": _load(label, "tokenizer", lambda: CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")),
        "text_encoder": _load(label, "text_encoder", lambda: CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", dtype=dtype)),
        "vae": _load(label, "vae", lambda: AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)),
        "unet": _load(label, "unet", lambda: ContinuitySeqUNet.from_pretrained(
            folder, subfolder="unet", torch_dtype=dtype)),
    }
    for name in ("text_encoder", "vae", "unet"):
        parts[name].eval()
    return parts


def _load(label: str, name: str, fn: Callable[[], T]) -> T:
    """`fn()`, with any failure but our own CheckpointError turned into one naming `name/` of `label`."""
    try:
        return fn()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{{model}}: cannot load {name}/ of {label!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", names=("model",)
        ) from None
