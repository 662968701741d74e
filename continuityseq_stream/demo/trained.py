"""The trained demo model shipped inside the package, and what it needs to run well.

`continuityseq_stream/data/demo/` is a complete diffusers-layout folder (fp16 safetensors, a few MB)
written by `python -m continuityseq_stream.demo.train`: a tiny ContinuitySeq-A UNet, VAE and CLIP text
encoder trained on `synthetic` moving shapes at 32x32, 4 frames per chunk. It understands prompts
of the synthetic grammar only ("a red circle moving left on a gray background").

- `trained_demo_path()`: that folder, or None when the weights are absent (e.g. a source tree without
  them). What the model names mean (and the error when the weights are absent): pipeline/resolve.py.
- `DEMO_SETTINGS`: the generation settings it was trained and evaluated for (size, frames per chunk,
  k range, guidance, steps) — the original's defaults (576x320, 8 frames, guidance 30) are far outside
  what it knows.
- `demo_init_frame(prompt, seed)`: a first frame for the prompt rendered by the synthetic generator,
  the natural init image of this model (a random text-to-image model gives noise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from . import synthetic

__all__ = ["TRAINED_DEMO_DIR", "DEMO_SETTINGS", "TRAINED_DEMO_LABEL", "EXAMPLE_PROMPTS", "trained_demo_path",
           "demo_init_frame", "demo_training_info"]

TRAINED_DEMO_DIR = Path(__file__).parent.parent / "data" / "demo"
_PARTS = ("model_index.json", "scheduler", "tokenizer", "text_encoder", "vae", "unet")

#: settings the demo model was trained for / evaluated with (pipeline.stream keyword names)
DEMO_SETTINGS = dict(height=32, width=32, num_frames=4, min_conditioning_frames=1, max_conditioning_frames=4,
                     guidance_scale=7.0, num_inference_steps=20)
TRAINED_DEMO_LABEL = (
    "demo model: tiny ContinuitySeq trained on synthetic moving shapes (32x32, 4 frames per chunk); "
    "prompts like 'a red circle moving left on a gray background'"
)
EXAMPLE_PROMPTS = (
    "a red circle moving left on a gray background",
    "a yellow square moving right on a purple background",
    "a white triangle moving up on a black background",
    "a green circle moving down on a brown background",
)


def trained_demo_path() -> Optional[Path]:
    """The shipped trained demo folder, or None if any part of it is missing."""
    d = TRAINED_DEMO_DIR
    if all((d / p).exists() for p in _PARTS) and any((d / "unet").glob("*.safetensors")):
        return d
    return None


def demo_init_frame(prompt: str, seed: int = 0, size: int = DEMO_SETTINGS["width"]) -> np.ndarray:
    """uint8 `[size, size, 3]`: the object the prompt asks for, drawn at a random place (seeded).

    A prompt outside the grammar gets a random clip's first frame (the model will still move it).
    """
    rng = np.random.default_rng(seed)
    if synthetic.parse_caption(prompt) is not None:
        spec = synthetic.spec_from_caption(prompt, rng, size)
    else:
        spec = synthetic.sample_spec(rng, size)
    return synthetic.render_frame(spec, spec.x, spec.y)


def demo_training_info() -> dict:
    """The training record stored beside the shipped weights (`training.json`), or {}."""
    f = TRAINED_DEMO_DIR / "training.json"
    return json.loads(f.read_text()) if f.is_file() else {}
