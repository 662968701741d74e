"""The ContinuitySeq dual-stream UNet (four variants) and its strict checkpoint loader."""

from .loading import convert_ref_a_head_to_ref_b, detect_variant, load_state_dict_file
from .unet import ATTENTION_BACKENDS, ContinuitySeqUNet, ContinuitySeqUNetOutput
from .variants import VARIANTS

__all__ = ["ContinuitySeqUNet", "ContinuitySeqUNetOutput", "VARIANTS", "ATTENTION_BACKENDS", "detect_variant",
           "load_state_dict_file", "convert_ref_a_head_to_ref_b"]
