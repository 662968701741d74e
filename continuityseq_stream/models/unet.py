"""`ContinuitySeqUNet`: the dual-stream 3D UNet of the ContinuitySeq / vseq2vseq family.

One class implements the four reference snapshots (config field `variant`, tests/golden/ARCHITECTURE.md §1, §7);
the default config is the full-size ContinuitySeq-A UNet (variant "A-prev", 2,414,450,544 params).
State-dict keys are exactly the reference's, so its checkpoints load without conversion.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..errors import ConfigError, ContinuitySeqError
from .blocks import Conditioner, ConditioningIn, DownBlock, Frames, MidBlock, UpBlock, temporal_transformer
from .variants import VARIANTS, variant_traits

DOWN_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_TYPES = ("UpBlock3D", "CrossAttnUpBlock3D")
ATTENTION_BACKENDS = ("sdpa", "xformers", "math")


@dataclass
class ContinuitySeqUNetOutput(BaseOutput):
    """Output of `ContinuitySeqUNet.forward(..., return_dict=True)`: predicted noise `[B, 4, F, H, W]`."""

    sample: torch.Tensor


class ContinuitySeqUNet(ModelMixin, ConfigMixin):
    """Dual-stream ContinuitySeq UNet; constructor arguments are its (frozen, validated) config.

    `forward(sample [B,4,F,H,W], conditioning_hidden_states [B|1,4,Fc,H,W], timestep, encoder_hidden_states
    [B,L,D]) -> Tensor [B,4,F,H,W]` (or `ContinuitySeqUNetOutput` with `return_dict=True`).
    Passing the conditioning latents with batch 1 while `sample` has batch B (one shared timestep, as in
    classifier-free guidance) computes the conditioning stream once instead of B times; same output.
    Load checkpoints with `from_pretrained` (strict keys, variant detection, see `loading.py`).
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: Sequence[str] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        up_block_types: Sequence[str] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | Sequence[int] = 64,
        variant: str = "A-prev",
        use_conditioning_norm: bool = True,
        use_conditioning_transformer: bool = False,
        use_temp_conditioning_transformer: bool = True,
        use_conditioning_in_transformers: bool = False,
    ):
        super().__init__()
        cfg = dict(self.config)
        head_dims = _validate_config(cfg)
        traits = variant_traits(variant, use_conditioning_norm, use_temp_conditioning_transformer)
        self.traits = traits
        c = list(block_out_channels)
        c0, levels, temb = c[0], len(c), 4 * c[0]

        # Time: sinusoid with the cosine half first and frequency denominator = half width (§2).
        self.time_proj = Timesteps(c0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.add_module(traits.time_embedding_name, TimestepEmbedding(c0, temb, act_fn="silu"))
        self.conditioning_time_embedding = (
            TimestepEmbedding(c0, temb, act_fn="silu") if traits.separate_conditioning_time_embedding else None)
        self.conditioning_in = ConditioningIn(c0, in_channels) if traits.conditioning_in else None

        self.conv_in = Conditioner(in_channels, c0, 3, 1, 1, traits.conditioning_blocks)
        # transformer_in: 8 heads of width a, GroupNorm with 32 groups whatever norm_num_groups is (§3).
        self.transformer_in = temporal_transformer(c0, 8, head_dims[0], 32)

        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(down_block_types):
            cin = c[i - 1] if i > 0 else c0
            self.down_blocks.append(DownBlock(cin, c[i], temb, cfg, traits, head_dims[i],
                                              kind == "CrossAttnDownBlock3D", i < levels - 1))
        self.mid_block = MidBlock(c[-1], temb, cfg, traits, head_dims[-1])
        self.up_blocks = nn.ModuleList()
        r, r_heads = c[::-1], head_dims[::-1]
        for i, kind in enumerate(up_block_types):
            prev, out, skip = r[max(i - 1, 0)], r[i], r[min(i + 1, levels - 1)]
            n = layers_per_block
            widths = [(prev if j == 0 else out) + (skip if j == n else out) for j in range(n + 1)]
            self.up_blocks.append(UpBlock(widths, out, temb, cfg, traits, r_heads[i],
                                          kind == "CrossAttnUpBlock3D", i < levels - 1))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, c0, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = Conditioner(c0, out_channels, 3, 1, 1, traits.conditioning_blocks)
        self._attention_backend = "sdpa"
        self.set_attention_backend("sdpa")

    # ------------------------------------------------------------------ attention
    def set_attention_backend(self, backend: str) -> None:
        """Attention kernel for every attention layer: "sdpa" (default, PyTorch SDPA), "math"
        (explicit softmax) or "xformers". Equivalent to ~1e-6. Changes no global state (unlike
        diffusers' experimental `ModelMixin.set_attention_backend`, which this overrides)."""
        if backend not in ATTENTION_BACKENDS:
            raise ConfigError(f"attention backend {backend!r} is unknown; use one of {', '.join(ATTENTION_BACKENDS)}")
        if backend == "xformers":
            if importlib.util.find_spec("xformers") is None:
                raise ContinuitySeqError(
                    "attention backend 'xformers' needs the xformers package, which is not installed; "
                    "use 'sdpa' (PyTorch's fused attention, the default) instead")
            from diffusers.models.attention_processor import XFormersAttnProcessor
            make = XFormersAttnProcessor
        else:
            make = AttnProcessor2_0 if backend == "sdpa" else AttnProcessor
        for module in self.modules():
            if isinstance(module, Attention):
                module.set_processor(make())
        self._attention_backend = backend

    @property
    def attention_backend(self) -> str:
        return self._attention_backend

    # ------------------------------------------------------------------ forward
    @property
    def time_embedding_module(self) -> nn.Module:
        return getattr(self, self.traits.time_embedding_name)

    def forward(self, sample: torch.Tensor, conditioning_hidden_states: torch.Tensor, timestep,
                encoder_hidden_states: torch.Tensor, return_dict: bool = False):
        """Predict the noise of `sample` `[B, 4, F, H, W]` (frames on dim 2, as is the output).

        `conditioning_hidden_states` `[B or 1, 4, Fc, H, W]`: clean latents, any Fc >= 1. `timestep`: int,
        float, 0-d, `[1]` or `[B]` tensor. `encoder_hidden_states` `[B, L, cross_attention_dim]`.
        """
        x, y, e = sample, conditioning_hidden_states, encoder_hidden_states
        b, f, fc = _check_inputs(x, y, e, self.config)
        t = _timesteps(timestep, b, x.device)
        # CFG sharing: the conditioning stream depends only on its latents and the timestep, so with
        # one conditioning item and one shared timestep it is computed once and broadcast.
        # A scalar / one-element timestep is shared by construction: no device->host sync per step.
        one_t = isinstance(timestep, (int, float)) or (torch.is_tensor(timestep) and timestep.numel() == 1)
        shared = y.shape[0] == 1 and (b == 1 or one_t or bool((t == t[0]).all()))
        if y.shape[0] == 1 and not shared:
            y = y.expand(b, *y.shape[1:])
        cb = 1 if shared else b
        traits = self.traits
        # Quirk (§8.2.2): A and B-init skip every temporal module when F == 1; B-HEAD runs them anyway.
        fr = Frames(b, f, cb, fc, f > 1 or traits.temporal_always)

        dtype = self.conv_in.spatial_conv.weight.dtype
        tau = self.time_proj(t).to(dtype)  # computed in float32, then cast (§8.4)
        emb = self.time_embedding_module(tau)
        if self.conditioning_time_embedding is not None:
            c_emb = self.conditioning_time_embedding(tau[:cb])
        else:  # A-prev: the same MLP output feeds both streams
            c_emb = emb[:cb]
        h_emb = emb.repeat_interleave(f, 0)
        c_emb = c_emb.repeat_interleave(fc, 0)
        e = e.repeat_interleave(f, 0)

        h = _flatten(x)
        c = _flatten(y)
        if self.conditioning_in is not None and f > 1:
            h = self.conditioning_in(h, c, tau, fr)
        h, c = self.conv_in(h, c, fr)
        if fr.temporal:
            h = self.transformer_in(h, num_frames=f, return_dict=False)[0]

        skips_h, skips_c = [h], [c]
        for block in self.down_blocks:
            h, c, sh, sc = block(h, c, h_emb, c_emb, e, fr)
            skips_h += sh
            skips_c += sc
        h, c = self.mid_block(h, c, h_emb, c_emb, e, fr)

        factor = 2 ** (len(self.up_blocks) - 1)
        forward_size = any(s % factor != 0 for s in x.shape[-2:])
        for block in self.up_blocks:
            h, c = block(h, c, skips_h, skips_c, h_emb, c_emb, e, fr, forward_size)

        h = self.conv_act(self.conv_norm_out(h))
        # The conditioning output is discarded; in A-prev it still reaches h through conv_out's block.
        h, _ = self.conv_out(h, c, fr)
        out = h.reshape(b, f, *h.shape[1:]).transpose(1, 2).contiguous()
        return ContinuitySeqUNetOutput(sample=out) if return_dict else out

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = "unet",
                        torch_dtype: torch.dtype | None = None, device=None, variant: str | None = None,
                        **kwargs) -> "ContinuitySeqUNet":
        """Load a checkpoint folder or hub repo id strictly; see `loading.load_unet`."""
        from .loading import load_unet

        return load_unet(cls, pretrained_model_name_or_path, subfolder=subfolder, torch_dtype=torch_dtype,
                         device=device, variant=variant, **kwargs)

    def save_pretrained(self, save_directory, dtype: torch.dtype | None = None, safe_serialization: bool = True,
                        **kwargs) -> None:
        """Write `config.json` and `diffusion_pytorch_model.safetensors` (or `.bin` when
        `safe_serialization=False`), optionally cast to `dtype` (e.g. torch.float16)."""
        from .loading import save_unet

        save_unet(self, save_directory, dtype=dtype, safe_serialization=safe_serialization, **kwargs)


def _flatten(v: torch.Tensor) -> torch.Tensor:
    """`[B, C, F, H, W]` -> frame-flattened `[B·F, C, H, W]` (rows sample-major, frame-minor)."""
    bb, cc, ff, hh, ww = v.shape
    return v.transpose(1, 2).reshape(bb * ff, cc, hh, ww)


def _timesteps(timestep, batch: int, device) -> torch.Tensor:
    """Timestep(s) as a `[B]` tensor (int64 or float) on `device`."""
    t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep)
    t = t.to(device)
    if t.ndim == 0:
        t = t[None]
    if t.ndim != 1 or t.shape[0] not in (1, batch):
        raise ConfigError(f"timestep has shape {tuple(t.shape)}; pass a scalar, [1] or [batch={batch}]")
    return t.expand(batch)


def _check_inputs(x, y, e, config) -> tuple[int, int, int]:
    if x.ndim != 5 or y.ndim != 5:
        raise ConfigError(f"sample and conditioning_hidden_states must be 5-D [B, C, F, H, W]; got "
                          f"{tuple(x.shape)} and {tuple(y.shape)}")
    b, ch, f, hh, ww = x.shape
    if ch != config.in_channels or y.shape[1] != config.in_channels:
        raise ConfigError(f"sample/conditioning channels must be in_channels={config.in_channels}; got "
                          f"{ch} and {y.shape[1]}")
    if y.shape[0] not in (1, b) or tuple(y.shape[3:]) != (hh, ww) or y.shape[2] < 1:
        raise ConfigError(f"conditioning_hidden_states {tuple(y.shape)} must be [B or 1, C, Fc>=1, {hh}, {ww}] "
                          f"for sample {tuple(x.shape)}")
    if e.ndim != 3 or e.shape[0] != b or e.shape[2] != config.cross_attention_dim:
        raise ConfigError(f"encoder_hidden_states {tuple(e.shape)} must be [B={b}, L, "
                          f"{config.cross_attention_dim}]")
    return b, f, y.shape[2]


def _validate_config(cfg: dict) -> list[int]:
    """Reject configs the reference cannot express; return the per-level attention head widths."""
    if cfg["variant"] not in VARIANTS:
        raise ConfigError(f"variant={cfg['variant']!r} is unknown; use one of {', '.join(VARIANTS)}")
    c = list(cfg["block_out_channels"])
    levels = len(c)
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if levels < 1 or len(down) != levels or len(up) != levels:
        raise ConfigError(f"down_block_types {down} and up_block_types {up} need one entry per "
                          f"block_out_channels {c}")
    bad = [k for k in down if k not in DOWN_TYPES] + [k for k in up if k not in UP_TYPES]
    if bad:
        raise ConfigError(f"unknown block types {bad}; down: {DOWN_TYPES}, up: {UP_TYPES}")
    if cfg["act_fn"] != "silu":
        raise ConfigError(f"act_fn={cfg['act_fn']!r}: the family only uses 'silu'")
    if cfg["use_conditioning_transformer"] or cfg["use_conditioning_in_transformers"]:
        raise ConfigError("use_conditioning_transformer / use_conditioning_in_transformers = true are REF-A "
                          "options that no known checkpoint uses (and whose reference forward is broken); "
                          "they are not implemented: set them to false")
    if cfg["variant"].startswith("B") and not cfg["use_temp_conditioning_transformer"]:
        raise ConfigError("use_temp_conditioning_transformer=false exists only in REF-A variants")
    if cfg["variant"] == "A-HEAD" and cfg["in_channels"] != 4:
        raise ConfigError("variant A-HEAD hard-codes 4 latent channels in conditioning_in; in_channels must be 4")
    a = cfg["attention_head_dim"]
    heads = [int(a)] * levels if isinstance(a, (int, float)) else [int(v) for v in a]
    if len(heads) != levels:
        raise ConfigError(f"attention_head_dim {a} needs one entry per level ({levels})")
    g = cfg["norm_num_groups"]
    for ch, hd in zip(c, heads):
        # temporal convs and transformer_in use GroupNorm(32) whatever norm_num_groups is (§3)
        if ch % 32 or ch % g or ch % hd:
            raise ConfigError(f"block_out_channels {c} must be multiples of 32, of norm_num_groups={g} "
                              f"and of attention_head_dim={a}")
    if cfg["layers_per_block"] < 1:
        raise ConfigError("layers_per_block must be >= 1")
    return heads


__all__ = ["ContinuitySeqUNet", "ContinuitySeqUNetOutput", "ATTENTION_BACKENDS"]
