"""Prompt schedules, embedding blends and the live settings a running stream re-reads per chunk.

Three layers, each usable on its own (one module per topic: files.py, blend.py, schedule.py,
updates.py, live.py, channel.py; every public name is importable from this package):

* **Prompt files** (`parse_prompt_text`, `PromptSchedule.from_file`): one prompt per line, blank lines
  and `#` comments skipped, an optional negative prompt after a `|`, optional time stamps
  (`mm:ss` / `h:mm:ss`) at the start of every line. The format is documented in the README
  (section "Prompt schedules and live control") and in `parse_prompt_text`.
* **Schedules and blends** (`PromptSchedule`, `PromptBlend`, `PromptBlender`): which prompts, with which
  weights, a chunk is generated with, and the text embeddings for that mix. Embeddings of a prompt are
  computed once and cached; a blend is the weighted sum of its prompts' embeddings.
* **Live settings** (`validate_update`, `LiveSettings`, `UpdateChannel`): the per-chunk parameters a
  running stream may change (prompt with a transition, negative prompt, guidance scale, CN/CX, seed)
  plus pause/stop. Updates are plain dicts so they cross process boundaries through a
  `multiprocessing` queue; each one takes effect at a chunk boundary, and whoever submits it learns
  which chunk that is.

Precedence, from weakest to strongest: the run's config (`-p`, `-n`, `-g`, `-CN/-CX`, `-r`) < the prompt
file schedule < live updates. A live `set_prompt` applied at chunk k replaces the file schedule from
chunk k on for the rest of the run (during its transition the picture cross-fades from what the
schedule would have shown). A live `set_negative_prompt` replaces every older negative, including
per-line negatives of the file. Among live updates, the newer one wins.

Nothing here imports torch: blends are computed with the tensors' own arithmetic.
"""

from __future__ import annotations

from ..errors import ChannelError, UpdateError
from .files import (
    NEGATIVE_SEPARATOR, parse_timestamp, format_timestamp, PromptEntry, ParsedPrompts,
    parse_prompt_text, read_prompt_file)
from .blend import BlendTerm, PromptBlend, PromptBlender
from .schedule import DEFAULT_PROMPTS_INTERVAL, PromptSchedule
from .updates import (
    SETTINGS_COMMANDS, RUN_COMMANDS, COMMANDS, MAX_PROMPT_CHARS, MAX_TRANSITION_CHUNKS,
    MAX_GUIDANCE_SCALE, MAX_CONDITIONING_FRAMES, MAX_QUEUED_UPDATES, MAX_BLEND_PROMPTS, validate_update)
from .live import ChunkSettings, LiveSettings
from .channel import UpdateChannel

__all__ = [
    "ChannelError", "UpdateError", "NEGATIVE_SEPARATOR", "parse_timestamp", "format_timestamp",
    "PromptEntry", "ParsedPrompts", "parse_prompt_text", "read_prompt_file", "BlendTerm", "PromptBlend",
    "PromptBlender", "DEFAULT_PROMPTS_INTERVAL", "PromptSchedule", "SETTINGS_COMMANDS", "RUN_COMMANDS",
    "COMMANDS", "MAX_PROMPT_CHARS", "MAX_TRANSITION_CHUNKS", "MAX_GUIDANCE_SCALE",
    "MAX_CONDITIONING_FRAMES", "MAX_QUEUED_UPDATES", "MAX_BLEND_PROMPTS", "validate_update",
    "ChunkSettings", "LiveSettings", "UpdateChannel"
]
