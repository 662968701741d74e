"""Live updates: the commands a running stream takes (set_prompt, set_guidance, ..., pause, stop)
and `validate_update`, which checks one and its limits before it is queued.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..errors import UpdateError

# ------------------------------------------------------------------------------------------------
# live updates
# ------------------------------------------------------------------------------------------------
#: commands that change per-chunk settings -> {field: required?}
SETTINGS_COMMANDS = {
    "set_prompt": {"prompt": True, "transition": False, "negative_prompt": False},
    "set_negative_prompt": {"negative_prompt": True},
    "set_guidance": {"guidance_scale": True},
    "set_conditioning": {"min": True, "max": True},
    "set_seed": {"seed": True},
}
#: commands about the run itself (handled by the channel / runtime, not by LiveSettings)
RUN_COMMANDS = {"pause": {}, "resume": {}, "stop": {}, "status": {}}
COMMANDS = {**SETTINGS_COMMANDS, **RUN_COMMANDS}
_MAX_SEED = 2**63 - 1

# Limits of live updates. They protect a running stream from its control clients: each update is kept
# until its chunk is made, and one absurd value would spoil the rest of the run (a guidance of 1e308
# overflows to NaN latents: on the tiny pipeline that chunk and every later one, conditioned on it, came
# out black even after the guidance was set back). The run's own config is not held to them
# (`validate_update(..., limits=False)`). docs/reliability-control.md lists them.
#: characters of a live prompt / negative prompt. CLIP reads 77 tokens (about 300 characters of
#: English) and ignores the rest; 1,000 leaves room for long words and punctuation.
MAX_PROMPT_CHARS = 1000
#: chunks a live `set_prompt` transition may take (hours of video at the usual chunk lengths)
MAX_TRANSITION_CHUNKS = 10_000
#: classifier-free guidance scale of a live `set_guidance` (the seed's default is 30)
MAX_GUIDANCE_SCALE = 100.0
#: conditioning frames of a live `set_conditioning` (k above a chunk's frame count means all of them)
MAX_CONDITIONING_FRAMES = 1000
#: changes the runtime may queue for the producer before it takes them at the next chunk boundary
MAX_QUEUED_UPDATES = 32
#: live prompts blending at once (transitions still fading in): each one is encoded for every chunk
MAX_BLEND_PROMPTS = 16
#: bytes of one queued update as UTF-8 JSON: two prompts of MAX_PROMPT_CHARS at <= 6 bytes a character
#: (JSON's \u escapes of control characters) plus the other fields
_UPDATE_BYTES = 16 * 1024


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shown(value: Any, limit: int = 60) -> str:
    """repr(value), shortened: error answers and log lines stay one short line whatever was sent."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python converts to text
        return f"an {type(value).__name__} too large to show"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_text(command: str, key: str, value: str, limits: bool) -> str:
    """A prompt field: valid Unicode (a lone surrogate such as JSON's "\\ud800" cannot be encoded and
    would crash the producer) and, with `limits`, at most MAX_PROMPT_CHARS characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UpdateError(
            f"{command}: {key!r} contains {value[exc.start]!r} at character {exc.start}, a lone surrogate "
            f"that is not text; send valid Unicode", key) from None
    value = value.strip()
    if limits and len(value) > MAX_PROMPT_CHARS:
        raise UpdateError(
            f"{command}: {key!r} has {len(value)} characters; at most {MAX_PROMPT_CHARS} (CLIP reads only its "
            f"first 77 tokens, about 300 characters of English)", key)
    return value


def _check_number(command: str, key: str, value: Any, limits: bool) -> float:
    """guidance_scale: a finite number >= 0 (<= MAX_GUIDANCE_SCALE with `limits`)."""
    ok = (_is_int(value) or isinstance(value, float)) and value >= 0
    if ok:
        try:
            value = float(value)  # an integer too large for a float raises OverflowError
        except OverflowError:
            ok = False
    ok = ok and math.isfinite(value) and (not limits or value <= MAX_GUIDANCE_SCALE)
    if not ok:
        upper = f" and <= {MAX_GUIDANCE_SCALE:g}" if limits else ", finite"
        raise UpdateError(
            f"{command}: {key!r} must be a number >= 0{upper} (<= 1 turns guidance off), got {_shown(value)}", key)
    return value


def _check_int(command: str, key: str, value: Any, low: int, high: int, what: str) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise UpdateError(f"{command}: {key!r} must be {what} in [{low}, {high}], got {_shown(value)}", key)
    return value


def validate_update(message: Mapping[str, Any], *, limits: bool = True) -> dict:
    """Check a command dict and return a normalized copy (plain types, picklable, JSON-able).

    Rules match GenerationConfig: prompt non-empty text; negative_prompt text (may be empty);
    transition an int >= 0 chunks (0 and 1 both switch at once); guidance_scale a finite number >= 0;
    1 <= min <= max integers; seed an int in [0, 2**63 - 1]; text must be valid Unicode. With `limits`
    (live updates; the run's own config passes False) the ceilings above apply too: prompt length,
    transition, guidance and conditioning frames. Unknown commands or fields are errors.
    Raises UpdateError with `.field` set; messages show at most a short piece of a bad value.
    """
    if not isinstance(message, Mapping):
        raise UpdateError(f"a command must be a JSON object, got {type(message).__name__}", None)
    command = message.get("command")
    if not isinstance(command, str):
        raise UpdateError(f"'command' must be one of {', '.join(COMMANDS)}, got {_shown(command)}", "command")
    if command not in COMMANDS:
        raise UpdateError(f"unknown command {_shown(command)}; known commands: {', '.join(COMMANDS)}", "command")
    spec = COMMANDS[command]
    for key in message:
        if key != "command" and key not in spec:
            allowed = ", ".join(spec) if spec else "no fields"
            raise UpdateError(f"{command}: unknown field {_shown(key)}; {command} takes {allowed}", str(key)[:60])
    for key, required in spec.items():
        if required and key not in message:
            raise UpdateError(f"{command}: missing field {key!r}", key)
    frames_max = MAX_CONDITIONING_FRAMES if limits else 2**63 - 1
    out: dict = {"command": command}
    for key, value in message.items():
        if key == "command":
            continue
        if key == "prompt":
            if not isinstance(value, str) or not value.strip():
                raise UpdateError(f"{command}: 'prompt' must be non-empty text, got {_shown(value)}", key)
            value = _check_text(command, key, value, limits)
        elif key == "negative_prompt":
            if value is None and command == "set_prompt":
                continue  # explicit null: keep the current negative prompt
            if not isinstance(value, str):
                raise UpdateError(f"{command}: 'negative_prompt' must be text (may be empty), got {_shown(value)}", key)
            value = _check_text(command, key, value, limits)
        elif key == "transition":
            top = MAX_TRANSITION_CHUNKS if limits else 2**63 - 1
            value = _check_int(command, key, value, 0, top, "a whole number of chunks")
        elif key == "guidance_scale":
            value = _check_number(command, key, value, limits)
        elif key in ("min", "max"):
            value = _check_int(command, key, value, 1, frames_max, "a whole number of conditioning frames")
        elif key == "seed":
            value = _check_int(command, key, value, 0, _MAX_SEED, "an integer")
        out[key] = value
    if command == "set_conditioning" and out["max"] < out["min"]:
        raise UpdateError(f"set_conditioning: 'max' ({out['max']}) must be >= 'min' ({out['min']})", "max")
    return out
