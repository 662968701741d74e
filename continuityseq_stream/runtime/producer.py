"""The producer: runs the chunk generator in its own process and feeds the frame ring.

Why a process: model compute holds the GIL and the CPU for seconds; in its own (spawned) process it
never stalls the sinks, and a failing sink cannot kill generation. Metadata is assigned here, once,
per frame: global index (`chunk.first_frame + i`), chunk index, pts = index / fps, prompt.

The chunk source is an import path "module:function", called in the child as
`function(config, **source_kwargs, schedule=..., updates=..., abort=...)` and returning an iterator of
`Chunk`s. The last three are live control (prompts/): the prompt file's `PromptSchedule` or None, the
`UpdateChannel` the parent submits changes to (or None), and a callable that turns True once the
producer is asked to stop (a source waiting while paused gives up then). The default is the real
pipeline, `continuityseq_stream.pipeline.chunk_source:open_stream`; tests use `continuityseq_stream.demo.synthetic_source`.

Protocol with the parent (`Producer` is the parent's handle):
    child -> parent, over a pipe (`ipc.MessagePipe`: no named semaphores, nothing for a SIGKILL to
        leave in /dev/shm): ("shape", height, width) once the first chunk is decoded; the parent
        then `allocate`s the ring and the child attaches to it and says ("attached",), upon which the
        parent unlinks the segment's name (nothing can leak, even after SIGKILL). ("done", chunks) at the end of the
        source; ("error", type name, message, unexpected, template, names) when it failed (the last two
        let the parent rebuild the same error: `errors.rebuild_error`). Unexpected errors (anything
        but `ContinuitySeqError`) also print their traceback on the child's stderr.
    ("log", logger name, level, message) for each record of the "continuityseq_stream" loggers in
        the child; the parent re-emits them through its own logging (one log stream, on stderr).
    counters in shared memory (`stats()`): chunks and frames made, generation fps (frames per second of
        time spent inside the generator, i.e. not counting back-pressure waits; the first chunk, which
        includes model loading, is left out once there is a second).
    stop: `stop()` asks for a graceful end. A chunk already being written to the ring is finished
        (it was produced); a chunk still being computed is abandoned and the ring closed at once, so
        the sinks can drain without waiting for the model. `kill()` after a grace period ends a child
        stuck in compute.

CPU threads (runtime/threads.py): the child exports `OMP_NUM_THREADS`/`MKL_NUM_THREADS` = `threads` and a
passive OpenMP wait policy first thing, before the source (and with it torch) is imported, then sizes
torch's pool once the source module has loaded it, and logs the count torch reports.

The child ignores SIGINT (Ctrl-C reaches the whole process group; the parent coordinates the stop),
treats SIGTERM as `stop()`, and exits by itself if the parent dies.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Mapping, Optional

from ..chunk import FrameMeta
from ..config import GenerationConfig
from ..errors import ConfigError, ContinuitySeqError, error_state
from ..ipc import MessagePipe, ProcessEvent
from ..prompts import PromptSchedule, UpdateChannel
from ..resume import StateKeeper
from .ringbuffer import FrameRing, RingClosed
from .threads import apply_in_child, resolve_threads, set_torch_threads

__all__ = ["Producer", "DEFAULT_SOURCE", "resolve_source", "check_source_spec"]

DEFAULT_SOURCE = "continuityseq_stream.pipeline.chunk_source:open_stream"
_LIVE_KWARGS = ("schedule", "updates", "abort")  # passed to every source by the producer
LOGGER = "continuityseq_stream"  # records of this logger in the child are re-emitted in the parent

# stats array fields (float64)
_S_CHUNKS, _S_FRAMES, _S_GEN_FRAMES, _S_GEN_SECONDS, _S_FIELDS = 0, 1, 2, 3, 4
# child phases (guarded by a thread lock in the child)
_LOADING, _COMPUTING, _WRITING, _FINISHED = "loading", "computing", "writing", "finished"


def check_source_spec(spec: str) -> tuple[str, str]:
    """Split "module:function" (checked in the parent, imported in the child)."""
    module, sep, func = str(spec).partition(":")
    if not sep or not module or not func.isidentifier():
        raise ConfigError(f"source: got {spec!r}; use an import path 'module:function', e.g. {DEFAULT_SOURCE}")
    return module, func


def resolve_source(spec: str) -> Callable[..., Any]:
    """Import the chunk source named by "module:function"."""
    module, func = check_source_spec(spec)
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"source: cannot import {module!r} ({e})") from None
    fn = getattr(mod, func, None)
    if not callable(fn):
        raise ConfigError(f"source: {module!r} has no function {func!r}")
    return fn


class Producer:
    """Parent-side handle of the producer process.

    config: what to generate. ring: a `FrameRing` created in this process (the child writes to it).
    source / source_kwargs: the chunk source (see the module docstring).
    schedule / channel: live control handed to the source: a `PromptSchedule` (picklable) and an
        `UpdateChannel` made with the same multiprocessing context as `ctx` (it must reach the child
        as a process argument).
    threads: torch's intra-op threads in the child (None: `threads.default_threads()`).
    """

    def __init__(
        self,
        config: GenerationConfig,
        ring: FrameRing,
        *,
        source: str = DEFAULT_SOURCE,
        source_kwargs: Optional[Mapping[str, Any]] = None,
        ctx=None,
        schedule: Optional[PromptSchedule] = None,
        channel: Optional[UpdateChannel] = None,
        threads: Optional[int] = None,
    ) -> None:
        check_source_spec(source)
        self.threads = resolve_threads(threads)
        self._ctx = ctx or mp.get_context("spawn")
        self.config, self.ring, self.source = config, ring, source
        self.source_kwargs = dict(source_kwargs or {})
        taken = sorted(set(self.source_kwargs) & set(_LIVE_KWARGS))
        if taken:
            raise ConfigError(f"source_kwargs: {', '.join(taken)} are set by the runtime (live control); leave them out")
        self.schedule, self.channel = schedule, channel
        self._stop = ProcessEvent(self._ctx)
        self._events = MessagePipe()
        self._stats = self._ctx.RawArray("d", _S_FIELDS)
        self._process: Optional[mp.process.BaseProcess] = None

    def start(self) -> None:
        log_level = logging.getLogger(LOGGER).getEffectiveLevel()
        process = self._ctx.Process(
            target=_child_main,
            name="continuityseq-producer",
            args=(self.config, self.ring, self.source, self.source_kwargs, self._stop, self._events.sender(),
                  self._stats, log_level, self.schedule, self.channel, self.threads),
            daemon=True,
        )
        process.start()
        self._process = process
        self._events.close_sender()  # the child has its own copy; the pipe ends when the child does

    # -- control ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask for a graceful end (see the module docstring)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def next_event(self, timeout: float) -> Optional[tuple]:
        """The next message from the child, or None after `timeout` seconds."""
        return self._events.recv(timeout)

    def is_alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> Optional[int]:
        return None if self._process is None else self._process.pid

    @property
    def exitcode(self) -> Optional[int]:
        return None if self._process is None else self._process.exitcode

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the child; True when it has exited."""
        if self._process is None:
            return True
        self._process.join(timeout)
        return self._process.exitcode is not None

    def kill(self) -> None:
        if self._process is not None and self._process.exitcode is None:
            self._process.kill()
            self._process.join(5.0)

    def shutdown(self, grace: float) -> None:
        """Stop, wait up to `grace` seconds, then kill; releases the event queue. Always safe."""
        self.stop()
        if not self.join(grace):
            self.kill()
        self._events.close()

    def stats(self) -> dict:
        """chunks and frames made so far, generation fps (0.0 before there is a measure)."""
        s = self._stats
        gen_fps = s[_S_GEN_FRAMES] / s[_S_GEN_SECONDS] if s[_S_GEN_SECONDS] > 0 else 0.0
        return {"chunks": int(s[_S_CHUNKS]), "frames": int(s[_S_FRAMES]), "gen_fps": gen_fps}


# ------------------------------------------------------------------------------------------------
# child side


class _Child:
    """State of the producer process: the generation loop and the stop watcher."""

    def __init__(self, config, ring: FrameRing, stop, events, stats) -> None:
        self.config, self.ring, self.stop, self.events, self.stats = config, ring, stop, events, stats
        self.phase = _LOADING
        self.phase_lock = threading.Lock()
        self.attached = False

    def set_phase(self, phase: str) -> bool:
        """Enter `phase`; False when a stop already closed the ring (then stop producing)."""
        with self.phase_lock:
            if self.phase == _FINISHED or (self.stop.is_set() and phase != _WRITING):
                return False
            self.phase = phase
            return True

    def watch_stop(self) -> None:
        """Thread: on stop, close the ring at once unless a produced chunk is being written."""
        self.stop.wait()
        with self.phase_lock:
            if self.phase != _WRITING:
                self.phase = _FINISHED
                self._close_ring()

    def _close_ring(self) -> None:
        try:
            self.ring.close()
        except Exception:  # the parent may already have destroyed it
            pass

    def watch_parent(self) -> None:
        """Thread: exit when the parent process is gone (nobody would read or stop us)."""
        parent = mp.parent_process()
        if parent is None:
            return
        parent.join()
        os._exit(3)

    def run(self, source: str, source_kwargs: Mapping[str, Any], schedule=None, channel=None,
            threads: int = 1) -> None:
        fn = resolve_source(source)
        _size_torch_pool(threads)
        if source == DEFAULT_SOURCE:  # decoded pixels, converted to uint8 straight into the ring's slots
            source_kwargs = {"output_type": "pt", **source_kwargs}
        chunks = fn(self.config, **source_kwargs, schedule=schedule, updates=channel, abort=self.stop.is_set)
        fps, times = float(self.config.fps), self.config.times
        made = 0
        keeper = StateKeeper.for_config(self.config, self.ring)  # --state-dir: resume.py
        try:
            it = iter(chunks)
            while True:
                if not self.set_phase(_COMPUTING):
                    return
                t0 = time.monotonic()
                try:
                    chunk = next(it)
                except StopIteration:
                    return
                spent = time.monotonic() - t0
                if not self.set_phase(_WRITING):
                    return
                n = chunk.num_frames
                if made == 0:
                    self._first_chunk(chunk)
                    self.stats[_S_GEN_FRAMES], self.stats[_S_GEN_SECONDS] = n, spent
                elif made == 1:  # from the second chunk on, leave model loading out of the rate
                    self.stats[_S_GEN_FRAMES], self.stats[_S_GEN_SECONDS] = n, spent
                else:
                    self.stats[_S_GEN_FRAMES] += n
                    self.stats[_S_GEN_SECONDS] += spent
                self.ring.check_frame_size(*chunk.frame_size)
                for i in range(n):
                    index = chunk.first_frame + i
                    meta = FrameMeta(index=index, chunk=chunk.index, pts=index / fps, prompt=chunk.prompt)
                    seq = self.ring.reserve(timeout=1.0)
                    while seq is None:  # a lossless reader is a full ring behind; close/remove wakes us
                        seq = self.ring.reserve(timeout=1.0)
                    chunk.write_frame(i, self.ring.slot(seq))  # the frame is made in shared memory
                    self.ring.commit(seq, meta)
                    self.stats[_S_FRAMES] += 1
                if keeper is not None and chunk.resume_point is not None:
                    keeper.offer(self.ring.written, chunk.resume_point)
                made += 1
                self.stats[_S_CHUNKS] = made
                if times and made >= times:
                    return
        except RingClosed:
            return
        finally:
            if keeper is not None:
                keeper.close()  # saves the last chunk written (the sinks drain the ring)
            close = getattr(chunks, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass

    def _first_chunk(self, chunk) -> None:
        h, w = chunk.frame_size
        self.events.send(("shape", int(h), int(w)))
        while not self.ring.wait_ready(0.5):
            if self.stop.is_set() or self.ring.closed:
                raise RingClosed("stopped before the ring was ready")
        self.ring.attach()
        self.attached = True
        self.events.send(("attached",))

    def finish(self) -> None:
        with self.phase_lock:
            self.phase = _FINISHED
        self._close_ring()
        if self.attached:
            self.ring.detach()


class _ForwardLogs(logging.Handler):
    """Child side: sends the package's log records to the parent as ("log", name, level, message)."""

    def __init__(self, events) -> None:
        super().__init__()
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.events.send(("log", record.name, record.levelno, record.getMessage()))
        except Exception:  # noqa: BLE001 - logging must never break generation
            self.handleError(record)


def _size_torch_pool(threads: int) -> None:
    """Once the source module is imported: give torch (if it loaded torch) its thread count. (The
    session's info line reports the count after its input checks; this debug line adds the policy.)"""
    got = set_torch_threads(threads)
    if got is not None:
        policy = os.environ.get("OMP_WAIT_POLICY", "default").lower()
        logging.getLogger(__name__).debug("producer: torch on %d CPU thread%s (--threads; OpenMP wait policy %s)",
                                         got, "" if got == 1 else "s", policy)


def _child_main(config, ring, source, source_kwargs, stop, events, stats, log_level=logging.INFO,
                schedule=None, channel=None, threads=1) -> None:
    """Entry point of the producer process."""
    torch_fresh = apply_in_child(threads)  # first: OpenMP reads these when torch's library loads
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logger = logging.getLogger(LOGGER)  # this process is ours: route its logs to the parent
    logger.addHandler(_ForwardLogs(events))
    logger.setLevel(log_level)
    logger.propagate = False
    if not torch_fresh:
        logger.debug("producer: torch was imported before the thread settings (by the main module?); "
                     "its OpenMP wait policy is its default")
    child = _Child(config, ring, stop, events, stats)
    threading.Thread(target=child.watch_stop, name="stop-watcher", daemon=True).start()
    threading.Thread(target=child.watch_parent, name="parent-watcher", daemon=True).start()
    try:
        child.run(source, source_kwargs, schedule, channel, threads)
        events.send(("done", int(stats[_S_CHUNKS])))
    except ContinuitySeqError as e:  # the class, template and names survive: the parent rebuilds it
        events.send(("error", type(e).__name__, str(e), False, *error_state(e)[1:]))
    except BaseException as e:  # noqa: BLE001 - report everything to the parent, then exit non-zero
        traceback.print_exc(file=sys.stderr)
        events.send(("error", type(e).__name__, str(e) or repr(e), True, *error_state(e)[1:]))
    finally:
        child.finish()
        if channel is not None:
            channel.close()
        events.close()
