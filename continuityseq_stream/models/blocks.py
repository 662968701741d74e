"""Building blocks of the dual-stream ContinuitySeq UNet (tests/golden/ARCHITECTURE.md §4-§7).

Two streams run side by side: the hidden stream h `[B·F, C, H, W]` (noisy latents being denoised)
and the conditioning stream c `[Bc·Fc, C, H, W]` (clean latents of previous frames). Information
flows only from c to h. Where diffusers already has a module with the same math and state-dict
keys it is used as is (TemporalConvLayer, Transformer2DModel, TransformerTemporalModel,
BasicTransformerBlock); this file adds only what the family adds.

`Bc` is 1 when the conditioning stream is shared by every batch item (classifier-free guidance:
both halves see the same clean conditioning latents and the same timestep), else B. Every place
where the hidden stream reads the conditioning stream broadcasts it with `Frames.expand_cond`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn

from .variants import VariantTraits


@dataclass(frozen=True)
class Frames:
    """Batch and frame layout of one forward call, passed to every block."""

    batch: int  # B, hidden stream batch
    frames: int  # F, hidden frames per sample
    cond_batch: int  # Bc: 1 (shared conditioning stream) or B
    cond_frames: int  # Fc, conditioning frames per sample
    temporal: bool  # run the temporal modules (F > 1, or always for B-HEAD)

    def expand_cond(self, t: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-sample conditioning tensor `[Bc, ...]` to `[B, ...]` (a view, no copy)."""
        return t if t.shape[0] == self.batch else t.expand(self.batch, *t.shape[1:])

    def last_cond_frame(self, c: torch.Tensor) -> torch.Tensor:
        """Last conditioning frame of each sample repeated over the F hidden frames: `[B·F, C, H, W]`."""
        c5 = c.reshape(self.cond_batch, self.cond_frames, *c.shape[1:])[:, -1:]
        last = self.expand_cond(c5).expand(self.batch, self.frames, *c.shape[1:])
        return last.reshape(self.batch * self.frames, *c.shape[1:])


def _channels_last_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a Linear (or Linear+act) over the channel axis 1 of a `[N, C, ...]` tensor."""
    return layer(x.movedim(1, -1)).movedim(-1, 1)


class _GammaBeta(nn.Module):
    """Two `Sequential(Linear, SiLU)` maps named `gamma` and `beta` (keys `gamma.0.*`, `beta.0.*`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.gamma = nn.Sequential(nn.Linear(in_features, out_features), nn.SiLU())
        self.beta = nn.Sequential(nn.Linear(in_features, out_features), nn.SiLU())


class ConditioningBlock(nn.Module):
    """A-prev per-convolution gate: h ← h + SiLU(Wγ·h) ⊙ ℓ + SiLU(Wβ·h), ℓ = last conditioning frame (§6.1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conditioning_norm = _GammaBeta(channels, channels)

    def forward(self, h: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        # The gate is computed from the hidden stream and multiplies the *last* conditioning frame
        # (not a per-frame pairing); that is what the checkpoint was trained with.
        gamma = _channels_last_linear(self.conditioning_norm.gamma, h)
        beta = _channels_last_linear(self.conditioning_norm.beta, h)
        return h + gamma * last + beta


class Conditioner(nn.Module):
    """Every 2-D convolution of the model: one conv per stream plus an optional conditioning block (§4.2)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 conditioning_block: bool = False):
        super().__init__()
        self.spatial_conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)
        self.conditioning_conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)
        self.conditioning_block = ConditioningBlock(cout) if conditioning_block else None

    def forward(self, h: torch.Tensor, c: torch.Tensor, fr: Frames) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.spatial_conv(h)
        c = self.conditioning_conv(c)
        # Quirk (§8.2.2): the conditioning block is skipped when F == 1, as in the reference.
        if self.conditioning_block is not None and fr.frames > 1:
            h = self.conditioning_block(h, fr.last_cond_frame(c))
        return h, c


class ConditioningIn(_GammaBeta):
    """A-HEAD gate on the raw latents before `conv_in` (§7.1): h ← 2h + β(τ) + γ(τ) ⊙ ℓ."""

    def forward(self, h: torch.Tensor, y: torch.Tensor, tau: torch.Tensor, fr: Frames) -> torch.Tensor:
        gamma = self.gamma(tau).repeat_interleave(fr.frames, 0)[:, :, None, None]
        beta = self.beta(tau).repeat_interleave(fr.frames, 0)[:, :, None, None]
        # Quirk: the reference adds the input to itself (h + h); the checkpoint was trained with it.
        return 2 * h + beta + gamma * fr.last_cond_frame(y)


class DualResnet(nn.Module):
    """Dual-stream resnet (§6.2), with the A-HEAD / B conditioning time gates and B-init mixing (§7)."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float, traits: VariantTraits,
                 output_scale_factor: float = 1.0):
        super().__init__()
        self._names = dict(traits.resnet_names)  # role -> state-dict name (REF-A or REF-B spelling)
        self._time_mode = traits.conditioning_time_mode
        self.output_scale_factor = output_scale_factor
        blocks = traits.conditioning_blocks
        self.add_module(self._names["norm1"], nn.GroupNorm(groups, cin, eps=eps))
        self.add_module(self._names["c_norm1"], nn.GroupNorm(groups, cin, eps=eps))
        self.conv1 = Conditioner(cin, cout, 3, 1, 1, blocks)
        self.add_module(self._names["time_emb_proj"], nn.Linear(temb, cout))
        self.add_module(self._names["time_c_emb_proj"], nn.Linear(temb, cout))
        self.add_module(self._names["norm2"], nn.GroupNorm(groups, cout, eps=eps))
        self.add_module(self._names["c_norm2"], nn.GroupNorm(groups, cout, eps=eps))
        self.conv2 = Conditioner(cout, cout, 3, 1, 1, blocks)
        self.conv_shortcut = Conditioner(cin, cout, 1, 1, 0, blocks) if cin != cout else None
        if traits.resnet_mixing:
            # B-init: `conditioning_norm3` is a Linear despite its name.
            self.conditioning_norm3 = nn.Linear(cout, cout)
            self.conditioning_proj = nn.Linear(cout, cout)
        else:
            self.conditioning_norm3 = self.conditioning_proj = None

    def _m(self, role: str) -> nn.Module:
        return getattr(self, self._names[role])

    def forward(self, x, cx, h_emb, c_emb, fr: Frames):
        h = F.silu(self._m("norm1")(x))
        c = F.silu(self._m("c_norm1")(cx))
        h, c = self.conv1(h, c, fr)
        h = h + self._m("time_emb_proj")(F.silu(h_emb))[:, :, None, None]
        ct = self._m("time_c_emb_proj")(F.silu(c_emb))[:, :, None, None]
        if self._time_mode == "add":  # A-prev adds the time embedding to the conditioning stream
            c = c + ct
        elif self._time_mode == "mul":  # A-HEAD multiplies (no sigmoid, no +1), as trained
            c = c * ct
        else:  # B multiplies by a sigmoid gate
            c = c * torch.sigmoid(ct)
        h = F.silu(self._m("norm2")(h))
        c = F.silu(self._m("c_norm2")(c))
        h, c = self.conv2(h, c, fr)
        if self.conv_shortcut is not None:
            x, cx = self.conv_shortcut(x, cx, fr)
        if self.conditioning_proj is not None:
            h = h + self._mix(h, c, fr)
        s = self.output_scale_factor
        return (x + h) / s, (cx + c) / s

    def _mix(self, h: torch.Tensor, c: torch.Tensor, fr: Frames) -> torch.Tensor:
        """B-init cross-stream mixing (§7.2), also for F == 1 as in that snapshot."""
        b, f = fr.batch, fr.frames
        shape = h.shape[1:]
        c5 = fr.expand_cond(c.reshape(fr.cond_batch, fr.cond_frames, *shape))
        # Conditioning frames first, then hidden frames, truncated to F; weights linspace(1, 0, F).
        seq = torch.cat([c5, h.reshape(b, f, *shape)], dim=1)[:, :f]
        w = torch.linspace(1.0, 0.0, f, dtype=h.dtype, device=h.device).view(1, f, 1, 1, 1)
        mix = (seq * w).movedim(2, -1)
        mix = self.conditioning_proj(self.conditioning_norm3(mix)).movedim(-1, 2)
        return mix.reshape(b * f, *shape)


class TemporalConditioningTransformer(nn.Module):
    """Hidden ← conditioning attention over the frame axis, per pixel (§6.6; B: §7.2)."""

    def __init__(self, channels: int, heads: int, head_dim: int, groups: int, pad_and_inverted_mask: bool):
        super().__init__()
        self.pad_and_inverted_mask = pad_and_inverted_mask
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, heads * head_dim)
        self.cond_norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.cond_proj_in = nn.Linear(channels, heads * head_dim)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(heads * head_dim, heads, head_dim, cross_attention_dim=heads * head_dim,
                                  only_cross_attention=True)
        ])
        self.proj_out = nn.Linear(heads * head_dim, channels)

    def forward(self, h: torch.Tensor, c: torch.Tensor, fr: Frames) -> torch.Tensor:
        b, f, fc = fr.batch, fr.frames, fr.cond_frames
        ch, hh, ww = h.shape[1:]
        h5 = h.reshape(b, f, ch, hh, ww).transpose(1, 2)  # [B, C, F, H, W]
        c5 = c.reshape(fr.cond_batch, fc, ch, hh, ww).transpose(1, 2)  # [Bc, C, Fc, H, W]
        bias = None
        pad = f - fc
        if self.pad_and_inverted_mask and pad > 0:
            # Quirk (§8.2.1): zero frames are *prepended* and take part in cond_norm's statistics, and
            # the key bias is inverted: 0 on the pads, -10000 on the real frames. The reference's
            # comment says the pads should be masked; the checkpoint was trained with this inversion.
            zeros = c5.new_zeros(c5.shape[0], ch, pad, hh, ww)
            c5 = torch.cat([zeros, c5], dim=2)
            bias = torch.cat([h.new_zeros(pad), h.new_full((fc,), -10000.0)])
        hn = self.norm(h5).permute(0, 3, 4, 2, 1).reshape(b * hh * ww, f, ch)  # [B·H·W, F, C]
        cn = self.cond_norm(c5).permute(0, 3, 4, 2, 1)  # [Bc, H, W, Fk, C]
        ctx = self.cond_proj_in(cn)
        ctx = fr.expand_cond(ctx).reshape(b * hh * ww, ctx.shape[3], -1)
        s = self.proj_in(hn)
        if bias is not None:
            # one bias row shared by every sequence, query and head; only attn2 sees it
            bias = bias.view(1, 1, -1).expand(s.shape[0], 1, -1)
        s = self.transformer_blocks[0](s, encoder_hidden_states=ctx, encoder_attention_mask=bias)
        out = self.proj_out(s).reshape(b, hh, ww, f, ch).permute(0, 3, 4, 1, 2).reshape(b * f, ch, hh, ww)
        return out + h


def spatial_transformer(channels: int, head_dim: int, groups: int, cross_attention_dim: int) -> nn.Module:
    """Per-frame text cross-attention transformer (§6.4) = diffusers Transformer2DModel, linear projections."""
    return Transformer2DModel(num_attention_heads=channels // head_dim, attention_head_dim=head_dim,
                              in_channels=channels, num_layers=1, cross_attention_dim=cross_attention_dim,
                              norm_num_groups=groups, use_linear_projection=True)


def temporal_transformer(channels: int, heads: int, head_dim: int, groups: int) -> nn.Module:
    """Self-attention over the frame axis per pixel (§6.5) = diffusers TransformerTemporalModel."""
    return TransformerTemporalModel(num_attention_heads=heads, attention_head_dim=head_dim,
                                    in_channels=channels, num_layers=1, norm_num_groups=groups)


class Downsample(nn.Module):
    """Stride-2 Conditioner on both streams (key `downsamplers.0.conv`)."""

    def __init__(self, channels: int, padding: int, conditioning_block: bool):
        super().__init__()
        self.conv = Conditioner(channels, channels, 3, 2, padding, conditioning_block)

    def forward(self, h, c, fr: Frames):
        return self.conv(h, c, fr)


class Upsample(nn.Module):
    """Nearest ×2 (or to a forwarded size for odd latents), then a k3 Conditioner (`upsamplers.0.conv`)."""

    def __init__(self, channels: int, conditioning_block: bool):
        super().__init__()
        self.conv = Conditioner(channels, channels, 3, 1, 1, conditioning_block)

    @staticmethod
    def _resize(x: torch.Tensor, size) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest interpolation has no bf16 kernel everywhere
            x = x.float()
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return x.to(dtype)

    def forward(self, h, c, fr: Frames, size=None):
        return self.conv(self._resize(h, size), self._resize(c, size), fr)


class _Level(nn.Module):
    """Shared layer logic of down, mid and up blocks: resnet, temporal conv, transformers (§5 steps 6-8)."""

    def _init_layers(self, widths_in, cout, temb, cfg, traits: VariantTraits, head_dim: int, cross_attn: bool,
                     scale: float = 1.0, n_attn: int | None = None):
        groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        self.resnets = nn.ModuleList(
            [DualResnet(cin, cout, temb, groups, eps, traits, scale) for cin in widths_in])
        self.temp_convs = nn.ModuleList(
            [TemporalConvLayer(cout, cout, dropout=traits.temporal_conv_dropout) for _ in widths_in])
        self.has_cross_attention = cross_attn
        if cross_attn:
            heads = cout // head_dim
            n = len(widths_in) if n_attn is None else n_attn
            self.attentions = nn.ModuleList([
                spatial_transformer(cout, head_dim, groups, cfg["cross_attention_dim"]) for _ in range(n)])
            self.temp_attentions = nn.ModuleList([
                temporal_transformer(cout, heads, head_dim, groups) for _ in range(n)])
            if traits.temp_conditioning:
                self.temp_conditioning_attentions = nn.ModuleList([
                    TemporalConditioningTransformer(cout, heads, head_dim, groups, traits.pad_and_inverted_mask)
                    for _ in range(n)])
            else:
                self.temp_conditioning_attentions = None

    def _layer(self, j, h, c, h_emb, c_emb, e, fr: Frames):
        h, c = self.resnets[j](h, c, h_emb, c_emb, fr)
        if fr.temporal:
            h = self.temp_convs[j](h, num_frames=fr.frames)
        if self.has_cross_attention:
            h = self.attentions[j](h, encoder_hidden_states=e, return_dict=False)[0]
            if fr.temporal:
                h = self.temp_attentions[j](h, num_frames=fr.frames, return_dict=False)[0]
                if self.temp_conditioning_attentions is not None:
                    h = self.temp_conditioning_attentions[j](h, c, fr)
        return h, c


class DownBlock(_Level):
    """`CrossAttnDownBlock3D` / `DownBlock3D`; returns the block output and its skip tensors."""

    def __init__(self, cin, cout, temb, cfg, traits, head_dim, cross_attn, add_downsample):
        super().__init__()
        layers = cfg["layers_per_block"]
        self._init_layers([cin] + [cout] * (layers - 1), cout, temb, cfg, traits, head_dim, cross_attn)
        self.downsamplers = nn.ModuleList(
            [Downsample(cout, cfg["downsample_padding"], traits.conditioning_blocks)]) if add_downsample else None

    def forward(self, h, c, h_emb, c_emb, e, fr: Frames):
        skips_h, skips_c = [], []
        for j in range(len(self.resnets)):
            h, c = self._layer(j, h, c, h_emb, c_emb, e, fr)
            skips_h.append(h)
            skips_c.append(c)
        if self.downsamplers is not None:
            h, c = self.downsamplers[0](h, c, fr)
            skips_h.append(h)
            skips_c.append(c)
        return h, c, skips_h, skips_c


class MidBlock(_Level):
    """`UNetMidBlock3DCrossAttn`: resnet, [temporal conv], transformers, resnet, [temporal conv] (§5 step 7)."""

    def __init__(self, channels, temb, cfg, traits, head_dim):
        super().__init__()
        # One transformer set (after the first resnet) but two resnets and temporal convs.
        self._init_layers([channels, channels], channels, temb, cfg, traits, head_dim, True,
                          cfg["mid_block_scale_factor"], n_attn=1)

    def forward(self, h, c, h_emb, c_emb, e, fr: Frames):
        h, c = self._layer(0, h, c, h_emb, c_emb, e, fr)
        h, c = self.resnets[1](h, c, h_emb, c_emb, fr)
        if fr.temporal:
            h = self.temp_convs[1](h, num_frames=fr.frames)
        return h, c


class UpBlock(_Level):
    """`CrossAttnUpBlock3D` / `UpBlock3D`: concatenates skips (current first) before each resnet."""

    def __init__(self, widths_in, cout, temb, cfg, traits, head_dim, cross_attn, add_upsample):
        super().__init__()
        self._init_layers(widths_in, cout, temb, cfg, traits, head_dim, cross_attn)
        self.upsamplers = nn.ModuleList(
            [Upsample(cout, traits.conditioning_blocks)]) if add_upsample else None

    def forward(self, h, c, skips_h, skips_c, h_emb, c_emb, e, fr: Frames, forward_upsample_size=False):
        """Pops this block's skips from `skips_h`/`skips_c` (lists, modified in place)."""
        for j in range(len(self.resnets)):
            h = torch.cat([h, skips_h.pop()], dim=1)
            c = torch.cat([c, skips_c.pop()], dim=1)
            h, c = self._layer(j, h, c, h_emb, c_emb, e, fr)
        if self.upsamplers is not None:
            # Odd latent sizes: upsample to the exact size of the next skip instead of ×2.
            size = tuple(skips_h[-1].shape[2:]) if forward_upsample_size and skips_h else None
            h, c = self.upsamplers[0](h, c, fr, size)
        return h, c
