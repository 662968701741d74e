"""The four ContinuitySeq / vseq2vseq UNet variants and what distinguishes them.

Every behavioural difference between the reference snapshots (tests/golden/ARCHITECTURE.md §5-§7) is one field of
`VariantTraits`, so the modules read a flag instead of comparing variant names.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

#: A-prev matches the published ContinuitySeq-A checkpoint (2,414,450,544 parameters).
VARIANTS = ("A-prev", "A-HEAD", "B-init", "B-HEAD")

# Resnet sub-module names: REF-A names -> REF-B names (ARCHITECTURE §7.2).
RESNET_NAMES_A = {
    "norm1": "norm1",
    "c_norm1": "c_norm1",
    "time_emb_proj": "time_emb_proj",
    "time_c_emb_proj": "time_c_emb_proj",
    "norm2": "norm2",
    "c_norm2": "c_norm2",
}
RESNET_NAMES_B = {
    "norm1": "hidden_norm1",
    "c_norm1": "conditioning_norm1",
    "time_emb_proj": "hidden_time_emb_proj",
    "time_c_emb_proj": "conditioning_time_emb_proj",
    "norm2": "hidden_norm2",
    "c_norm2": "conditioning_norm2",
}


@dataclass(frozen=True)
class VariantTraits:
    """What a variant builds and computes (see tests/golden/ARCHITECTURE.md for each item)."""

    name: str
    conditioning_blocks: bool  # per-convolution conditioning blocks (A-prev with use_conditioning_norm)
    separate_conditioning_time_embedding: bool  # `conditioning_time_embedding` MLP (A-HEAD, B)
    time_embedding_name: str  # "time_embedding" (A) or "hidden_time_embedding" (B)
    conditioning_in: bool  # A-HEAD's raw-latent gate before conv_in
    conditioning_time_mode: str  # resnet c-stream time embedding: "add" | "mul" | "sigmoid_mul"
    resnet_names: dict
    resnet_mixing: bool  # B-init's conditioning_norm3 / conditioning_proj
    temp_conditioning: bool  # temporal conditioning transformers present
    pad_and_inverted_mask: bool  # REF-A temporal conditioning: zero pads + inverted key bias
    temporal_always: bool  # B-HEAD runs temporal modules even when F == 1
    temporal_conv_dropout: float


def variant_traits(variant: str, use_conditioning_norm: bool = True,
                   use_temp_conditioning_transformer: bool = True) -> VariantTraits:
    """Traits of `variant`; the REF-A flags only matter where the reference honoured them."""
    if variant == "A-prev":
        return VariantTraits(variant, bool(use_conditioning_norm), False, "time_embedding", False, "add",
                             RESNET_NAMES_A, False, bool(use_temp_conditioning_transformer), True, False, 0.1)
    if variant == "A-HEAD":
        # A-HEAD keeps `use_conditioning_norm` as a config field but builds no conditioning blocks.
        return VariantTraits(variant, False, True, "time_embedding", True, "mul",
                             RESNET_NAMES_A, False, bool(use_temp_conditioning_transformer), True, False, 0.1)
    if variant == "B-init":
        return VariantTraits(variant, False, True, "hidden_time_embedding", False, "sigmoid_mul",
                             RESNET_NAMES_B, True, True, False, False, 0.1)
    if variant == "B-HEAD":
        return VariantTraits(variant, False, True, "hidden_time_embedding", False, "sigmoid_mul",
                             RESNET_NAMES_B, False, True, False, True, 0.0)
    raise ConfigError(f"variant={variant!r} is not a ContinuitySeq UNet variant; use one of {', '.join(VARIANTS)}")
