"""continuityseq_stream: never-ending text-to-video with ContinuitySeq models, streamed live.

Heavy submodules (torch, diffusers) are imported lazily so that `continuityseq-stream --help` and
the sinks start fast; importing the package changes no global state.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "ContinuitySeqUNet": ".models",
    "ContinuitySeqPipeline": ".pipeline.pipeline",
    "Chunk": ".chunk",
    "FrameMeta": ".chunk",
    "GenerationConfig": ".config",
    "ContinuitySeqError": ".errors",
    "ConditioningSelector": ".pipeline.conditioning",
    "UniformConditioning": ".pipeline.conditioning",
    "FixedConditioning": ".pipeline.conditioning",
}

# public module name -> module it stands for (`from continuityseq_stream import demo_model`)
_MODULES = {
    "demo_model": ".demo.trained",
}

__all__ = sorted(_LAZY) + sorted(_MODULES) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    if name in _MODULES:
        return importlib.import_module(_MODULES[name], __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
