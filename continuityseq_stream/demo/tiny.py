"""Complete tiny pipelines with random weights, built offline (tests and the demo model).

Nothing here is a trained model: every weight is random (seeded), the tokenizer is made locally.
A tiny pipeline exercises the whole system — prompt encoding, conditioning, the dual-stream UNet,
DDIM, VAE encode/decode, streaming, sinks — in well under a second per chunk on a CPU, and its
output looks like coloured noise.

- `get_dummy_components(seed)` -> dict of ContinuitySeqPipeline components (diffusers-test style).
- `save_tiny_pipeline(folder)` writes them in the ContinuitySeq-A checkpoint layout
  (`model_index.json` naming `TextToVideoSDPipeline`, `scheduler/`, `tokenizer/`, `text_encoder/`,
  `vae/`, `unet/`), so loading it goes through the real `ContinuitySeqPipeline.from_pretrained`.
- `demo_model_path()` / `demo_2d_model_path()` / `demo_upscaler_path()` build those folders once,
  cached under `$XDG_CACHE_HOME/continuityseq_stream/` (default `~/.cache/continuityseq_stream/`);
  this is what `--model demo-random`, `--model-2d demo` and `--upscaler demo` load.

Scheduler: ModelScope's text-to-video DDIM config (scaled-linear betas 0.00085 -> 0.012, 1000 train
steps, epsilon prediction, clip_sample False, set_alpha_to_one False, steps_offset 1). The real
checkpoint's scheduler config was not seen; this is *assumed* (tests/golden/ARCHITECTURE.md §10).

Seeding uses `torch.random.fork_rng`, so building a tiny model leaves the global RNG untouched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "TINY_TEXT_DIM", "TINY_UNET_CONFIG", "MODELSCOPE_SCHEDULER_CONFIG",
    "make_tokenizer", "make_text_encoder", "make_vae", "make_unet", "make_scheduler",
    "get_dummy_components", "save_tiny_pipeline", "save_tiny_sd_pipeline", "save_tiny_upscaler",
    "demo_cache_dir", "demo_model_path", "demo_2d_model_path", "demo_upscaler_path", "DEMO_LABEL",
]

#: bump when the tiny architecture changes, so stale caches are rebuilt
_DEMO_VERSION = "v1"
DEMO_LABEL = (
    "demo model: tiny, RANDOM weights, built offline - it exercises the whole system, "
    "it is not a trained model (expect coloured noise)"
)

TINY_TEXT_DIM = 32
TINY_UNET_CONFIG = dict(
    in_channels=4,
    out_channels=4,
    block_out_channels=[32, 32],
    layers_per_block=1,
    down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
    up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"],
    norm_num_groups=8,
    cross_attention_dim=TINY_TEXT_DIM,
    attention_head_dim=8,
)
MODELSCOPE_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


# -- components ---------------------------------------------------------------------------------
def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for bytes (GPT-2's table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


def make_tokenizer(max_length: int = 77):
    """A CLIP tokenizer with a byte-level vocabulary (every prompt tokenizes; no merges).

    Built with `CLIPTokenizer(vocab=dict, merges=list)`: in transformers 5 the `vocab_file=` form
    silently yields a 2-token vocabulary (transformers 5 ignores the files).
    """
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in _byte_symbols():
        vocab[s] = len(vocab)
        vocab[s + "</w>"] = len(vocab)
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def make_text_encoder(vocab_size: int, hidden_size: int = TINY_TEXT_DIM):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=hidden_size,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="quick_gelu",
    )
    return CLIPTextModel(config).eval()


def make_vae():
    """Tiny AutoencoderKL with 4 down blocks: the 8x spatial factor of SD VAEs (two blocks give only 2x)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=8, sample_size=64,
    ).eval()


def make_unet(**overrides):
    """Tiny ContinuitySeq-A (A-prev layout) UNet; cross_attention_dim = the tiny text width."""
    from ..models import ContinuitySeqUNet

    return ContinuitySeqUNet(**{**TINY_UNET_CONFIG, **overrides}).eval()


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**MODELSCOPE_SCHEDULER_CONFIG)


def get_dummy_components(seed: int = 0) -> dict:
    """unet, vae, text_encoder, tokenizer, scheduler with random weights seeded by `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = make_tokenizer()
        text_encoder = make_text_encoder(len(tokenizer))
        vae = make_vae()
        unet = make_unet()
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=make_scheduler())


# -- folders ------------------------------------------------------------------------------------
#: `model_index.json` of a ContinuitySeq-A folder. The real checkpoint names TextToVideoSDPipeline and
#: UNet3DConditionModel; folders made here say the same, so the loader is tested against that.
MODEL_INDEX = {
    "_class_name": "TextToVideoSDPipeline",
    "_diffusers_version": "0.21.4",
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet3DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def save_tiny_pipeline(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny pipeline in the ContinuitySeq-A checkpoint layout; returns the folder."""
    folder = Path(folder)
    comps = get_dummy_components(seed)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        comps[name].save_pretrained(folder / name)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    (folder / "README.txt").write_text(DEMO_LABEL + "\n")
    return folder


def save_tiny_sd_pipeline(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny text-to-image StableDiffusionPipeline (for `--model-2d demo`)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        tokenizer = make_tokenizer()
        text_encoder = make_text_encoder(len(tokenizer))
        vae = make_vae()
        unet = UNet2DConditionModel(
            block_out_channels=(32, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TINY_TEXT_DIM, attention_head_dim=8, norm_num_groups=8,
        ).eval()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**MODELSCOPE_SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "README.txt").write_text(DEMO_LABEL + "\n")
    return folder


def save_tiny_upscaler(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny `StableDiffusionLatentUpscalePipeline` (x2 in latent space; for `--upscaler demo`).

    Same K-diffusion UNet layout as stabilityai/sd-x2-latent-upscaler (fourier time embedding,
    8 input channels = latents + upsampled low-res latents, 5 outputs), at toy width."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionLatentUpscalePipeline, UNet2DConditionModel

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        tokenizer = make_tokenizer()
        text_encoder = make_text_encoder(len(tokenizer))
        vae = make_vae()
        unet = UNet2DConditionModel(
            act_fn="gelu", attention_head_dim=8, norm_num_groups=None, block_out_channels=[32, 32, 64, 64],
            time_cond_proj_dim=128 + TINY_TEXT_DIM, conv_in_kernel=1, conv_out_kernel=1,
            cross_attention_dim=TINY_TEXT_DIM, in_channels=8, out_channels=5, mid_block_type=None,
            only_cross_attention=False, resnet_time_scale_shift="scale_shift", time_embedding_type="fourier",
            timestep_post_act="gelu",
            down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"),
            up_block_types=("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"),
        ).eval()
    pipe = StableDiffusionLatentUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(prediction_type="sample"),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "README.txt").write_text(DEMO_LABEL + "\n")
    return folder


def demo_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "continuityseq_stream"


def _cached(name: str, build) -> Path:
    """Build a folder once into the cache, atomically (concurrent builders do not collide)."""
    target = demo_cache_dir() / f"{name}-{_DEMO_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # someone else finished first
            if not (target / "model_index.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built %s in %s", name, target)
    return target


def demo_model_path() -> Path:
    """Folder of the tiny ContinuitySeq demo pipeline (built on first use)."""
    return _cached("demo", save_tiny_pipeline)


def demo_upscaler_path() -> Path:
    """Folder of the tiny latent upscaler demo pipeline (built on first use)."""
    return _cached("demo-upscaler", save_tiny_upscaler)


def demo_2d_model_path() -> Path:
    """Folder of the tiny text-to-image demo pipeline (built on first use)."""
    return _cached("demo-2d", save_tiny_sd_pipeline)
