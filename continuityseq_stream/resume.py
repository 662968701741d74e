"""Resume after a crash: the saved state of a stream, written after every chunk, read by `--resume`.

(The file sinks of a resumed run write new files: runtime/resume_files.py.)

What continuing the same video needs, and nothing else (a `ResumePoint`, taken by `pipeline.stream`
right after a chunk is made):

- the conditioning latents of the next chunk (the last k latent frames, clean), as they are;
- the next chunk index and the next frame index, so frame indices, pts and ZeroMQ headers go on;
- the state of the torch noise generator and of the conditioning selector's `random.Random`, so a
  resumed run makes exactly the chunks the uninterrupted run would have made;
- the live settings (`prompts.LiveSettings`: the prompt file's schedule, every live change still in
  effect or scheduled, their chunk numbers), so control changes and the schedule position survive.

One file, `DIR/state.safetensors`: the tensors (latents, generator state) plus a JSON document in the
safetensors header's metadata. A safetensors header is 8 bytes of length and then JSON, so the small
part can be read and checked (model, size, frames per chunk) without torch and before any model
loads; loading never unpickles anything. Writes are atomic: a temporary file in DIR, fsync,
`os.replace`, fsync of DIR. A reader sees the previous state or the new one, never a torn one.

When a point is saved (`StateKeeper`, in the producer process): once every sink has taken the
chunk's frames out of the frame ring, so a resumed run neither skips frames that were still waiting
in the ring nor repeats more than what the sinks were working on. On a normal end of the producer
the last written chunk is saved at once (the sinks drain the ring before the run ends).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import random
import struct
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Optional

from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["ResumeError", "ResumePoint", "STATE_FILE", "StateKeeper", "check_resume_options", "initial_live_settings",
           "live_snapshot", "load_resume_point", "read_state", "resume_start", "restore_live",
           "save_state", "state_dir_of"]

STATE_FILE = "state.safetensors"
FORMAT = "continuityseq-resume/1"
#: what must match between the saved run and the resumed one (GenerationConfig fields)
IDENTITY = ("model", "width", "height", "num_frames", "upscale")
_MAX_HEADER = 16 * 2**20  # a state header is a few KB; anything huge is not our file
#: LiveSettings attributes a snapshot carries (`_lock` is rebuilt); tests check this list is complete
LIVE_FIELDS = ("_prompt", "_negative", "_schedule", "_guidance", "_conditioning", "_seed", "_reseed_at",
               "_negatives", "_overrides", "_seq", "_forgotten")


class ResumeError(ConfigError):
    """--state-dir / --resume cannot be used as given (no state, another model's state, a damaged file)."""


@dataclass(frozen=True)
class ResumePoint:
    """Everything needed to go on after a chunk: generate chunk `next_chunk`, whose first frame is
    `next_frame`, conditioned on `conditioning` `[1, 4, k, h, w]`, drawing noise from a generator in
    `generator_state` and k from a `random.Random` in `selector_rng` (None: the selector has no rng),
    with the live settings `live` (a `live_snapshot` dict)."""

    next_chunk: int
    next_frame: int
    conditioning: Any
    generator_state: Any
    selector_rng: Optional[tuple]
    live: dict


def state_dir_of(config) -> Optional[str]:
    """Where a run saves its state: --state-dir, else the --resume folder (a resumed run keeps saving
    where it resumed from, so it can be resumed again), else None."""
    return config.state_dir or config.resume


# -- live settings <-> JSON -------------------------------------------------------------------------
def live_snapshot(live) -> dict:
    """A JSON-ready copy of a `LiveSettings` (its timelines after `forget_before`: small)."""
    with live._lock:  # noqa: SLF001 - the snapshot is the class's whole state, read consistently
        schedule = live._schedule
        return {
            "prompt": live._prompt,
            "negative": live._negative,
            "schedule": None if schedule is None else dataclasses.asdict(schedule),
            "guidance": [[at, v] for at, v in live._guidance],
            "conditioning": [[at, list(v)] for at, v in live._conditioning],
            "seed": [[at, v] for at, v in live._seed],
            "reseed_at": sorted(live._reseed_at),
            "negatives": [list(n) for n in live._negatives],
            "overrides": [dataclasses.asdict(o) for o in live._overrides],
            "seq": live._seq,
            "forgotten": live._forgotten,
        }


def restore_live(snapshot: dict):
    """The `LiveSettings` a `live_snapshot` was taken of (ResumeError when the snapshot is damaged)."""
    from .prompts import LiveSettings, PromptEntry, PromptSchedule
    from .prompts.live import _PromptOverride

    try:
        schedule = None
        if snapshot["schedule"] is not None:
            fields = dict(snapshot["schedule"])
            fields["entries"] = tuple(PromptEntry(**e) for e in fields["entries"])
            schedule = PromptSchedule(**fields)
        live = LiveSettings(prompt=snapshot["prompt"], negative_prompt=snapshot["negative"], schedule=schedule)
        live._guidance = [(int(at), float(v)) for at, v in snapshot["guidance"]]
        live._conditioning = [(int(at), (int(v[0]), int(v[1]))) for at, v in snapshot["conditioning"]]
        live._seed = [(int(at), None if v is None else int(v)) for at, v in snapshot["seed"]]
        live._reseed_at = {int(c) for c in snapshot["reseed_at"]}
        live._negatives = [(int(at), str(neg), int(seq)) for at, neg, seq in snapshot["negatives"]]
        live._overrides = [_PromptOverride(**o) for o in snapshot["overrides"]]
        live._seq, live._forgotten = int(snapshot["seq"]), int(snapshot["forgotten"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ResumeError(f"{{resume}}: the saved live settings are damaged ({type(e).__name__}: {e}); "
                          "start a new video without {resume}", names=("resume",)) from None
    return live


# -- the file -----------------------------------------------------------------------------------------
def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_state(directory: str, point: ResumePoint, identity: dict) -> str:
    """Write `point` (with the run's `identity`: model, size, frames per chunk) to DIR/state.safetensors
    atomically; returns the path. OSError when DIR cannot be written."""
    from safetensors.torch import save

    doc = {"format": FORMAT, **identity, "next_chunk": point.next_chunk, "next_frame": point.next_frame,
           "conditioning_frames": int(point.conditioning.shape[2]),
           "selector_rng": None if point.selector_rng is None else [point.selector_rng[0], list(point.selector_rng[1]),
                                                                    point.selector_rng[2]],
           "live": point.live}
    tensors = {"conditioning": point.conditioning.detach().to("cpu").contiguous(),
               "generator": point.generator_state.detach().to("cpu").contiguous()}
    data = save(tensors, metadata={"state": json.dumps(doc)})
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        path = os.path.join(directory, STATE_FILE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return path


def read_state(directory: str) -> dict:
    """The JSON part of DIR/state.safetensors (no tensors, no torch): cheap, for checks before the
    model loads. ResumeError with one line naming --resume when there is none or it is not ours."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isdir(directory):
        raise ResumeError(f"{{resume}}: got {directory!r}, which is not a folder; give the {{state_dir}} of an "
                          "earlier run", names=("resume", "state_dir"))
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < size <= _MAX_HEADER:
                raise ValueError("no safetensors header")
            header = json.loads(f.read(size).decode("utf-8"))
        doc = json.loads(header["__metadata__"]["state"])
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
    except FileNotFoundError:
        raise ResumeError(f"{{resume}}: no saved state in {directory!r} ({STATE_FILE} not found); give the "
                          "{state_dir} of an earlier run, or start without {resume}",
                          names=("resume", "state_dir")) from None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ResumeError(f"{{resume}}: {path!r} is not a saved state ({e}); give the {{state_dir}} of an earlier "
                          "run, or start without {resume}", names=("resume", "state_dir")) from None
    return doc


def identity_of(config) -> dict:
    return {name: getattr(config, name) for name in IDENTITY}


def _describe(values: dict) -> str:
    up = ", -u" if values.get("upscale") else ""
    return f"-m {values.get('model')} at {values.get('width')}x{values.get('height')}, -T {values.get('num_frames')}{up}"


def check_resume_options(config) -> Optional[dict]:
    """The cheap checks of --state-dir and --resume (before any model work): the state folder can be
    made and written; the saved state exists, is ours, and belongs to a run of the same model, size
    and frames per chunk; --times still asks for chunks. Returns the saved state's JSON part, or None
    without --resume. Raises ResumeError (one line)."""
    if config.state_dir is not None:
        try:
            os.makedirs(config.state_dir, exist_ok=True)
        except OSError as e:
            raise ResumeError(f"{{state_dir}}: cannot create {config.state_dir!r} ({e.strerror}); choose a writable "
                              "folder", names=("state_dir",)) from None
    directory = state_dir_of(config)
    if directory is not None and os.path.isdir(directory) and not os.access(directory, os.W_OK | os.X_OK):
        name = "state_dir" if config.state_dir is not None else "resume"
        raise ResumeError(f"{{{name}}}: {directory!r} is not writable; the state is saved there after every chunk",
                          names=(name,))
    if config.resume is None:
        return None
    doc = read_state(config.resume)
    saved = {name: doc.get(name) for name in IDENTITY}
    if saved != identity_of(config):
        raise ResumeError(
            f"{{resume}}: the state in {config.resume!r} is of a run with {_describe(saved)}; this run has "
            f"{_describe(identity_of(config))}; give the same {{model}}, {{width}}/{{height}} and {{num_frames}} to "
            "continue that video, or start without {resume}",
            names=("resume", "model", "width", "height", "num_frames"))
    if config.times and doc["next_chunk"] >= config.times:
        raise ResumeError(
            f"{{resume}}: the video in {config.resume!r} already has {doc['next_chunk']} chunks and {{times}} "
            f"{config.times} asks for no more; give a larger {{times}} (chunks in all) or {{forever}}",
            names=("resume", "times", "forever"))
    return doc


def load_resume_point(config, device=None, dtype=None) -> ResumePoint:
    """The saved state of `config.resume` as a `ResumePoint` (latents on `device` in `dtype`),
    checked as `check_resume_options` does."""
    from safetensors.torch import load_file  # (no `import torch` here: resume.py stays importable by the runtime)

    doc = check_resume_options(config)
    path = os.path.join(config.resume, STATE_FILE)
    try:
        tensors = load_file(path)
        conditioning, generator = tensors["conditioning"], tensors["generator"]
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for damaged files
        raise ResumeError(f"{{resume}}: cannot read the tensors of {path!r} ({e}); start without {{resume}}",
                          names=("resume",)) from None
    rng = doc["selector_rng"]
    return ResumePoint(
        next_chunk=int(doc["next_chunk"]), next_frame=int(doc["next_frame"]),
        conditioning=conditioning.to(device=device or "cpu", dtype=dtype or conditioning.dtype),
        generator_state=generator.byte(),  # a torch.ByteTensor, as get_state() gives
        selector_rng=None if rng is None else (rng[0], tuple(rng[1]), rng[2]),
        live=doc["live"],
    )


def resume_start(config) -> int:
    """The first chunk this run makes: the saved next chunk with --resume, else 0 (cheap)."""
    return int(read_state(config.resume)["next_chunk"]) if config.resume else 0


def initial_live_settings(config, schedule=None):
    """The live settings a run starts from: the saved ones with --resume (they include every live
    change and the schedule position), else the config's and the prompt file's."""
    from .prompts import LiveSettings

    if config.resume:
        return restore_live(read_state(config.resume)["live"])
    return LiveSettings.from_config(config, schedule)


def restore_rng(seed: int, state: Optional[tuple]) -> random.Random:
    rng = random.Random(seed)
    if state is not None:
        rng.setstate(state)
    return rng


# -- saving while the producer runs ---------------------------------------------------------------------
class StateKeeper:
    """Producer side: saves the newest `ResumePoint` whose frames every sink has taken from the ring.

    `offer(end_seq, point)` after a chunk's frames are in the ring (`end_seq`: the ring's `written`
    count then). A thread compares with what the slowest reader has taken (`written - fill()`) and
    saves the newest point it covers; `close()` saves the newest offered point (on a normal end the
    sinks drain the ring). A failing save is logged once and generation goes on.
    """

    def __init__(self, directory: str, identity: dict, ring, poll: float = 0.2) -> None:
        self.directory, self.identity, self.ring, self.poll = directory, identity, ring, poll
        self._pending: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._saved_chunk = -1
        self._warned = False
        self._thread = threading.Thread(target=self._watch, name="state-keeper", daemon=True)
        self._thread.start()

    @classmethod
    def for_config(cls, config, ring) -> Optional["StateKeeper"]:
        directory = state_dir_of(config)
        return None if directory is None else cls(directory, identity_of(config), ring)

    def offer(self, end_seq: int, point: ResumePoint) -> None:
        with self._lock:
            self._pending.append((end_seq, point))

    def _delivered(self) -> int:
        return self.ring.written - self.ring.fill()

    def _take(self, upto: Optional[int]) -> Optional[ResumePoint]:
        """The newest pending point with end_seq <= upto (all of them for None); older ones dropped."""
        newest = None
        with self._lock:
            while self._pending and (upto is None or self._pending[0][0] <= upto):
                newest = self._pending.popleft()[1]
        return newest

    def _save(self, point: Optional[ResumePoint]) -> None:
        if point is None or point.next_chunk <= self._saved_chunk:
            return
        try:
            save_state(self.directory, point, self.identity)
            self._saved_chunk = point.next_chunk
        except OSError as e:
            if not self._warned:
                self._warned = True
                logger.warning("cannot save the resume state in %s (%s); generation goes on", self.directory, e)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                delivered = self._delivered()
            except Exception:  # noqa: BLE001 - the ring is gone: the run is ending
                return
            self._save(self._take(delivered))

    def close(self) -> None:
        """Stop watching and save the newest point offered (the last chunk written)."""
        self._stop.set()
        self._thread.join(5.0)
        self._save(self._take(None))
