"""The trained demo's parts, built from a `TrainConfig`: a word-level CLIP tokenizer and a tiny
random CLIP text encoder, the VAE, the ContinuitySeq-A UNet, the DDIM scheduler, and the
diffusers-layout folder they are saved in. Training them: train.py."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import synthetic
from .tiny import MODEL_INDEX

__all__ = ["TEXT_DIM", "TrainConfig", "make_word_tokenizer", "make_text_encoder", "make_vae", "make_unet",
           "make_scheduler", "save_pipeline_folder"]

TEXT_DIM = 32


@dataclass
class TrainConfig:
    """All knobs of a training run (saved next to the checkpoints)."""

    size: int = synthetic.DEFAULT_SIZE
    frames: int = 4                 # F: frames generated per chunk
    max_cond: int = 4               # k is uniform in [1, max_cond]
    seed: int = 0
    # VAE
    vae_channels: tuple = (16, 32, 64, 64)
    vae_groups: int = 8
    vae_clips: int = 400
    vae_steps: int = 800
    vae_batch: int = 24
    vae_lr: float = 2e-3
    vae_kl: float = 1e-4
    vae_minutes: float = 12.0
    # decoder refinement (encoder frozen, so the UNet's latent space does not move)
    decoder_steps: int = 1500
    decoder_lr: float = 1e-3
    decoder_minutes: float = 15.0
    object_weight: float = 4.0
    # UNet
    unet_channels: tuple = (32, 64)
    unet_groups: int = 16
    unet_clips: int = 2000
    unet_steps: int = 7000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    unet_minutes: float = 60.0
    prompt_dropout: float = 0.1
    train_text_encoder: bool = True  # False: the text encoder stays frozen at its random init
    text_lr: float = 1e-3
    turn_clips: int = 1000           # clips that change direction where the conditioning ends
    turn_fraction: float = 0.3       # share of batches drawn from them
    cond_dropout: float = 0.0        # share of samples whose conditioning latents are zeroed
    ema: float = 0.995
    checkpoint_every: int = 50
    extra: dict = field(default_factory=dict)


# -- components ---------------------------------------------------------------------------------
def make_word_tokenizer(words=synthetic.VOCABULARY, max_length: int = 77):
    """A CLIP tokenizer whose merges turn every grammar word into one token.

    Byte symbols stay in the vocabulary, so any prompt tokenizes (unknown words as characters).
    Built with `CLIPTokenizer(vocab=dict, merges=list)` (the `vocab_file=` form misbehaves in
    transformers 5).
    """
    from transformers import CLIPTokenizer

    from .tiny import _byte_symbols

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in _byte_symbols():
        vocab.setdefault(s, len(vocab))
        vocab.setdefault(s + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        # segment with the merges so far (earlier words' merges rank lower and apply first), then chain
        # the pieces left to right with new merges, so the whole word ends as one token
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], {m: i for i, m in enumerate(merges)})
        left = pieces[0]
        for right in pieces[1:]:
            merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _bpe(symbols: list[str], ranks: dict) -> list[str]:
    """Byte-pair merging as CLIP does it: repeatedly join the adjacent pair of lowest rank."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, _ = min(pairs)
        if rank == math.inf:
            break
        pair, out, i = (symbols[min(pairs)[1]], symbols[min(pairs)[1] + 1]), [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                out.append(symbols[i] + symbols[i + 1]); i += 2
            else:
                out.append(symbols[i]); i += 1
        symbols = out
    return symbols


def make_text_encoder(vocab_size: int, seed: int):
    """Tiny CLIP text encoder with random weights from `seed` (eval mode, no gradients; the UNet stage
    trains a copy of it)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_DIM,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="quick_gelu",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(config)
        # random embeddings of std 0.02 make all words look alike after the final LayerNorm; widen them
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, 1.0)
    return model.eval().requires_grad_(False)


def make_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(cfg.vae_channels), layers_per_block=1, norm_num_groups=cfg.vae_groups,
        sample_size=cfg.size,
    )


def make_unet(cfg: TrainConfig):
    """ContinuitySeq-A (A-prev) UNet; widths are multiples of 32 (temporal GroupNorm uses 32 groups)."""
    from ..models import ContinuitySeqUNet

    n = len(cfg.unet_channels)
    return ContinuitySeqUNet(
        sample_size=cfg.size // 8, block_out_channels=list(cfg.unet_channels), layers_per_block=1,
        down_block_types=["CrossAttnDownBlock3D"] * (n - 1) + ["DownBlock3D"],
        up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * (n - 1),
        norm_num_groups=cfg.unet_groups, cross_attention_dim=TEXT_DIM, attention_head_dim=8,
    )


def make_scheduler():
    """The pipeline's DDIM with the ModelScope training schedule."""
    from diffusers import DDIMScheduler

    from .tiny import MODELSCOPE_SCHEDULER_CONFIG

    return DDIMScheduler(**MODELSCOPE_SCHEDULER_CONFIG)


def save_pipeline_folder(folder: Path, unet, vae, text_encoder, tokenizer, meta: Optional[dict] = None,
                         dtype: torch.dtype = torch.float16) -> Path:
    """Write the diffusers-layout folder (weights as `dtype` safetensors) in the ContinuitySeq-A layout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        copy.deepcopy(model).to(dtype).save_pretrained(folder / name, safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    make_scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    if meta is not None:
        (folder / "training.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return folder
