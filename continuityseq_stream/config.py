"""Frozen, validated configuration of one generation run.

Every flag of the original `inference.py` has a field here with the original's meaning. Values are
checked once, when the object is built; a bad value raises `ConfigError` naming the flag, the value
and what would work. Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .errors import ConfigError

DEFAULT_MODEL = "b-f/ContinuitySeq-A"
DEFAULT_MODEL_2D = "stabilityai/stable-diffusion-2-1"
DEFAULT_UPSCALER = "stabilityai/sd-x2-latent-upscaler"
DTYPES = ("float32", "float16", "bfloat16")


def _flag(name: str) -> str:
    """The CLI spelling of a config field, for error messages."""
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


# Field name -> the original inference.py flag, so errors speak the user's language.
FLAG_NAMES = {
    "model": "-m/--model",
    "prompt": "-p/--prompt",
    "times": "-t/--times",
    "output_dir": "-o/--output-dir",
    "negative_prompt": "-n/--negative-prompt",
    "num_frames": "-T/--num-frames",
    "min_conditioning_frames": "-CN/--min_conditioning_n_sample_frames",
    "max_conditioning_frames": "-CX/--max_conditioning_n_sample_frames",
    "width": "-WI/--width",
    "height": "-HI/--height",
    "image_width": "-IW/--image-width",
    "image_height": "-IH/--image-height",
    "model_2d": "-MP/--model-2d",
    "init_image": "-i/--init-image",
    "init_video": "--init-video",
    "vae_scale": "-VS/--vae-scale",
    "vae_batch_size": "-VB/--vae-batch-size",
    "num_steps": "-s/--num-steps",
    "guidance_scale": "-g/--guidance-scale",
    "image_guidance_scale": "-IG/--image-guidance-scale",
    "fps": "-f/--fps",
    "device": "-d/--device",
    "dtype": "--dtype",
    "xformers": "-x/--xformers",
    "sdp": "-S/--sdp",
    "seed": "-r/--seed",
    "save_init": "-I/--save-init",
    "include_model": "-N/--include-model",
    "upscale": "-u/--upscale",
    "upscaler": "--upscaler",
    "compile": "--compile",
    "original_postprocess": "--original-postprocess",
}


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate and how. `times=0` means forever."""

    prompt: str
    model: str = DEFAULT_MODEL
    times: int = 1
    output_dir: str = "./output"
    negative_prompt: Optional[str] = None
    num_frames: int = 8
    min_conditioning_frames: int = 1
    max_conditioning_frames: int = 8
    width: int = 576
    height: int = 320
    image_width: Optional[int] = None
    image_height: Optional[int] = None
    model_2d: str = DEFAULT_MODEL_2D
    init_image: Optional[str] = None
    init_video: Optional[str] = None
    vae_scale: Optional[float] = None
    vae_batch_size: int = 16
    num_steps: int = 25
    guidance_scale: float = 30.0
    image_guidance_scale: float = 12.5
    fps: float = 16.0
    device: Optional[str] = None
    dtype: Optional[str] = None
    xformers: bool = False
    sdp: bool = True
    seed: Optional[int] = None
    save_init: bool = False
    include_model: bool = False
    upscale: bool = False
    upscaler: str = DEFAULT_UPSCALER
    #: torch.compile the UNet (first chunk pays the compilation; bench/bench_model.py --compile)
    compile: bool = False
    #: the original's truncation to uint8, CLAHE and gamma on every frame (postprocess.py)
    original_postprocess: bool = False

    def __post_init__(self) -> None:
        self._validate()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "GenerationConfig":
        """Build from a mapping; unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(known))}"
            )
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "GenerationConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # -- derived --------------------------------------------------------------------------------
    @property
    def forever(self) -> bool:
        return self.times == 0

    # -- validation -----------------------------------------------------------------------------
    def _fail(self, name: str, value: Any, what_works: str) -> None:
        raise ConfigError(f"{_flag(name)}: got {value!r}; {what_works}")

    def _validate(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            self._fail("prompt", self.prompt, "give a non-empty prompt")
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 8 or v % 8:
                self._fail(name, v, "use a positive multiple of 8 (the VAE downsamples by 8), e.g. 576x320")
        for name in ("image_width", "image_height"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 8 or v % 8):
                self._fail(name, v, "use a positive multiple of 8, or leave it unset to use the video size")
        if not isinstance(self.times, int) or self.times < 0:
            self._fail("times", self.times, "use a number of chunks >= 1, or 0 to run until stopped")
        if not isinstance(self.num_frames, int) or self.num_frames < 1:
            self._fail("num_frames", self.num_frames, "use a number of frames per chunk >= 1")
        cn, cx = self.min_conditioning_frames, self.max_conditioning_frames
        if not isinstance(cn, int) or cn < 1:
            self._fail("min_conditioning_frames", cn, "use at least 1 conditioning frame")
        if not isinstance(cx, int) or cx < cn:
            self._fail("max_conditioning_frames", cx, f"use a value >= {_flag('min_conditioning_frames')} ({cn})")
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            self._fail("num_steps", self.num_steps, "use at least 1 denoising step")
        if not isinstance(self.vae_batch_size, int) or self.vae_batch_size < 1:
            self._fail("vae_batch_size", self.vae_batch_size, "use a batch of at least 1 frame")
        if not (isinstance(self.fps, (int, float)) and self.fps > 0):
            self._fail("fps", self.fps, "use a positive frame rate, e.g. 16")
        if self.vae_scale is not None and not (isinstance(self.vae_scale, (int, float)) and self.vae_scale > 0):
            self._fail("vae_scale", self.vae_scale, "use a positive factor (SD VAEs use 0.18215) or leave it unset")
        for name in ("guidance_scale", "image_guidance_scale"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0:
                self._fail(name, v, "use a guidance scale >= 0 (values <= 1 turn classifier-free guidance off)")
        if self.dtype is not None and self.dtype not in DTYPES:
            self._fail("dtype", self.dtype, f"use one of {', '.join(DTYPES)}")
        if self.device is not None:
            base = str(self.device).split(":")[0]
            if base not in ("cpu", "cuda", "mps"):
                self._fail("device", self.device, "use cpu, cuda, cuda:N or mps")
        if self.init_image is not None and self.init_video is not None:
            self._fail("init_video", self.init_video, f"give either {_flag('init_image')} or --init-video, not both")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            self._fail("seed", self.seed, "use a non-negative integer")
