"""Frozen, validated configuration of one generation run.

Every flag of the original `inference.py` has a field here with the original's meaning. Values are
checked once, when the object is built; a bad value raises `ConfigError` naming the field, the value
and what would work (the field is a `{name}` placeholder of the error: a Python caller reads
`guidance_scale`, the CLI spells it as its flag, `-g/--guidance-scale`). NaN, infinities and sizes
or counts beyond the bounds below are refused here, not discovered after the model has loaded.
Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .errors import ConfigError, bad_value

DEFAULT_MODEL = "b-f/ContinuitySeq-A"
#: what a Hugging Face hub id looks like (`owner/name`); here, not in models/, so that the model-name
#: checks of the main process need no torch
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULT_MODEL_2D = "stabilityai/stable-diffusion-2-1"
DEFAULT_UPSCALER = "stabilityai/sd-x2-latent-upscaler"
DTYPES = ("float32", "float16", "bfloat16")

#: Upper bounds of the sizes and counts (documented in docs/bad-input.md). A side of 4096 pixels is
#: 512 latents, far beyond what the model was trained on (576x320); above it a chunk would not come in
#: any useful time and the frame ring (64 frames) would outgrow shared memory. The ring's real size is
#: checked against /dev/shm before the producer starts (ringbuffer.check_ring_memory).
MAX_SIDE = 4096
MAX_FRAMES = 256
#: DDIM and the SD-family schedulers are trained on 1000 timesteps; more steps raise in the scheduler
MAX_STEPS = 1000
#: torch.Generator.manual_seed takes 64 bits; the control socket's set_seed takes the same range
MAX_SEED = 2**63 - 1
#: frame rates a file, an RTMP stream and the pacing clock all handle (below 1 fps the x264 key
#: frame interval and FLV timing degenerate; 0.0001 fps rounds to a zero time base)
FPS_RANGE = (1.0, 240.0)
#: the latent upscaler (-u) doubles each side of the frames
UPSCALE_FACTOR = 2


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
    #: save what continuing needs after every chunk in this folder (resume.py, docs/resume.md)
    state_dir: Optional[str] = None
    #: continue the video whose state an earlier run saved in this folder (and keep saving there)
    resume: Optional[str] = None

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

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the frames the sinks receive: the video size, doubled with `upscale`."""
        factor = UPSCALE_FACTOR if self.upscale else 1
        return self.height * factor, self.width * factor

    # -- validation -----------------------------------------------------------------------------
    def _validate(self) -> None:
        """Every field, in the order a user reads them; the first bad one raises `ConfigError`."""
        self._check_text()
        self._check_sizes()
        self._check_counts()
        self._check_numbers()
        self._check_runtime_choices()
        self._check_flags()
        if self.init_image is not None and self.init_video is not None:
            raise bad_value("init_video", self.init_video, "give either {init_image} or {init_video}, not both",
                            "init_image")
        if self.seed is not None:
            _int(self, "seed", 0, MAX_SEED, f"use an integer in [0, {MAX_SEED}] (torch seeds are 64-bit)")
        for name in ("state_dir", "resume"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise bad_value(name, value, "give a folder path, or leave it unset")

    def _check_text(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise bad_value("prompt", self.prompt, "give a non-empty prompt")
        if not isinstance(self.model, str) or not self.model.strip():
            raise bad_value("model", self.model, "give a model folder, a hub id, demo or demo-random")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise bad_value("negative_prompt", self.negative_prompt, "give text, or leave it unset for the empty prompt")

    def _check_sizes(self) -> None:
        for name in ("width", "height"):
            _int(self, name, 8, MAX_SIDE, f"use a multiple of 8 in [8, {MAX_SIDE}] (the VAE downsamples by 8), e.g. 576x320")
            if getattr(self, name) % 8:
                raise bad_value(name, getattr(self, name), "use a multiple of 8 (the VAE downsamples by 8), e.g. 576x320")
        for name in ("image_width", "image_height"):
            if getattr(self, name) is None:
                continue
            what = f"use a multiple of 8 in [8, {MAX_SIDE}], or leave it unset to use the video size"
            _int(self, name, 8, MAX_SIDE, what)
            if getattr(self, name) % 8:
                raise bad_value(name, getattr(self, name), what)

    def _check_counts(self) -> None:
        _int(self, "times", 0, None, "use a number of chunks >= 1, or 0 to run until stopped")
        _int(self, "num_frames", 1, MAX_FRAMES, f"use a number of frames per chunk in [1, {MAX_FRAMES}]")
        check_conditioning_range(self.min_conditioning_frames, self.max_conditioning_frames)
        _int(self, "num_steps", 1, MAX_STEPS,
             f"use a number of denoising steps in [1, {MAX_STEPS}] (the schedulers are trained on {MAX_STEPS} timesteps)")
        _int(self, "vae_batch_size", 1, None, "use a batch of at least 1 frame")

    def _check_numbers(self) -> None:
        _number(self, "fps", FPS_RANGE[0], FPS_RANGE[1],
                f"use a frame rate in [{FPS_RANGE[0]:g}, {FPS_RANGE[1]:g}], e.g. 16")
        if self.vae_scale is not None:
            _number(self, "vae_scale", 0, None, "use a positive factor (SD VAEs use 0.18215) or leave it unset",
                    open_low=True)
        for name in ("guidance_scale", "image_guidance_scale"):
            _number(self, name, 0, None, "use a finite guidance scale >= 0 (values <= 1 turn classifier-free guidance off)")

    def _check_runtime_choices(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise bad_value("dtype", self.dtype, f"use one of {', '.join(DTYPES)}")
        if self.device is not None:
            base = str(self.device).split(":")[0]
            if base not in ("cpu", "cuda", "mps"):
                raise bad_value("device", self.device, "use cpu, cuda, cuda:N or mps")

    def _check_flags(self) -> None:
        for name in ("xformers", "sdp", "save_init", "include_model", "upscale", "compile", "original_postprocess"):
            if not isinstance(getattr(self, name), bool):
                raise bad_value(name, getattr(self, name), "use True or False")


def check_conditioning_range(cn: Any, cx: Any) -> None:
    """The one check of a conditioning range [CN, CX] (the config's and every `UniformConditioning`'s):
    whole numbers, 1 <= CN <= CX. Live `set_conditioning` updates add their limits on top of it
    (prompts/updates.py) and answer in the control protocol's terms."""
    if not _is_int(cn) or cn < 1:
        raise bad_value("min_conditioning_frames", cn, "use at least 1 conditioning frame")
    if not _is_int(cx) or cx < cn:
        raise bad_value("max_conditioning_frames", cx, f"use a value >= {{min_conditioning_frames}} ({cn})",
                        "min_conditioning_frames")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(config: GenerationConfig, name: str, lo: int, hi: Optional[int], what_works: str) -> None:
    """`ConfigError` unless field `name` is an int (not a bool) in [lo, hi] (hi None: no upper bound)."""
    value = getattr(config, name)
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        raise bad_value(name, value, what_works)


def _number(config: GenerationConfig, name: str, lo: float, hi: Optional[float], what_works: str,
            open_low: bool = False) -> None:
    """`ConfigError` unless field `name` is a finite int/float in [lo, hi] ((lo, hi] with `open_low`).
    NaN and infinities are refused here: they pass every comparison-based check and fail much later."""
    value = getattr(config, name)
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > lo if open_low else value >= lo) and (hi is None or value <= hi))
    if not ok:
        raise bad_value(name, value, what_works)


def resolve_seed(config: GenerationConfig) -> GenerationConfig:
    """The config with a seed: `-r` if given, else a random one in [0, 9,999,999] (the original's range)."""
    if config.seed is not None:
        return config
    return config.replace(seed=random.SystemRandom().randint(0, 9_999_999))


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback IPs (127.0.0.0/8, ::1, also in brackets); False for `*`,
    0.0.0.0, other addresses and host or interface names (which may be reachable from outside).
    The one check behind every bind that is loopback-only unless asked: --control, zmq sinks, serve."""
    import ipaddress

    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def build_from_mapping(cls, values: Mapping[str, Any], what: str):
    """`cls(**values)` for a frozen options dataclass; a key that is not one of its fields is a
    ConfigError naming the unknown keys and the known ones (never silently ignored)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**dict(values))
