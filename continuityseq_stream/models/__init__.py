"""The ContinuitySeq dual-stream UNet (four variants) and its strict checkpoint loader.

Names are imported on first use (PEP 562): `VARIANTS` or the loader's helpers do not pull in
diffusers; `ContinuitySeqUNet` does.
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it
_LAZY = {
    "ContinuitySeqUNet": ".unet",
    "ContinuitySeqUNetOutput": ".unet",
    "ATTENTION_BACKENDS": ".unet",
    "VARIANTS": ".variants",
    "detect_variant": ".loading",
    "load_state_dict_file": ".loading",
    "convert_ref_a_head_to_ref_b": ".loading",
}

__all__ = ["ContinuitySeqUNet", "ContinuitySeqUNetOutput", "VARIANTS", "ATTENTION_BACKENDS", "detect_variant",
           "load_state_dict_file", "convert_ref_a_head_to_ref_b"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
