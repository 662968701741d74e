"""The streaming runtime: producer process -> frame ring -> one reader thread per sink.

`run(config, sinks, options)` is the whole never-ending run and returns the process exit status:

    0    a graceful end: `times` chunks done, SIGINT/SIGTERM, `duration` reached, a sink's `wants_stop`
         (preview q/Esc), or every sink ended normally (e.g. stdout's reader went away). At least one
         sink kept working to the end; a sink that failed on the way has printed its one line.
    1    the producer crashed (unexpected exception, killed) or every sink failed while running.
    A `ContinuitySeqError` raised by the producer (bad checkpoint, bad input...) is raised again by
    `run`, after teardown, so callers treat it like any other bad input (the CLI: one line, status 2).
    130  a second SIGINT/SIGTERM forced the exit (sinks were still closed).

How a run goes
    0. Before anything starts: the frame ring's shared memory for the frames the config will make
       (`check_ring_memory`: an absurd `ring_frames` or size is a ConfigError, not a SIGBUS mid-run).
    1. Sinks given as URIs are built (`sink_from_uri`); one whose target is already known to be bad
       (`SinkError`) prints one line and is left out. When that leaves no sink at all, `run` raises the
       SinkError instead (bad input: one line and status 2 from the CLI, nothing started). Each sink
       may expose an optional `prepare()` (called before the producer starts, e.g. stdout moves stray
       prints to stderr) and `stats()` (extra counters for the status line).
    2. A `FrameRing` and the `Producer` process start; every sink gets a ring reader with its
       `policy` before the first frame exists, so lossless readers see frame 0.
    3. On the first chunk the producer reports the frame size; the ring is allocated and one thread per
       sink opens it (`StreamInfo(width, height, config.fps)`) and copies frames from its reader
       into `sink.write`. A sink failing in open or write prints one line, its reader is removed (it
       no longer holds the producer) and it is closed; the others go on.
    3b. The watchdog (main thread, every tick, also during the drain): a sink that spends
       `sink_timeout` seconds in one open/write/close without `heartbeat()` (a clocked sink: also
       between calls) is stuck. If `sink.restart_target()` says it restarted its target (ffmpeg), it
       gets another timeout; otherwise it is detached: one line, its reader removed, `interrupt()`,
       and its daemon thread is waited for at most one more timeout, then left behind (nobody closes
       a sink under a thread that hangs in it). Waiting for frames is never a stall.
    4. Stop: the producer is told to stop (a chunk being written is finished, one being computed is
       abandoned; after `stop_grace` seconds the ring is closed regardless), the sinks drain what the
       ring holds for them, every sink is closed, the producer process is joined (killed after
       `stop_grace`) and the shared memory is unlinked. Teardown runs on every path. The run ends
       within stop_grace + the healthy sinks' drain of the ring (ring_frames / fps for a paced RTMP
       sink) + 2 * sink_timeout (see docs/reliability.md).

Prompt schedules and live control (prompts.py, control.py): `options.schedule` (a prompt file) goes to
the producer's source; with `options.control` a `ControlServer` answers JSON commands on a loopback
socket. Settings changes travel to the producer through an `UpdateChannel` and apply at the chunk the
answer names; pause/resume are flags the producer reads at chunk boundaries (while paused no chunk
starts; paced sinks such as RTMP repeat the last frame, so the stream stays up); `stop` ends the run
after the chunk in progress (like the end of `--times`, exit 0); `status` answers the status line's
figures plus the current prompt and what is scheduled.

Signals: `run` installs SIGINT/SIGTERM handlers only while it runs, and only from the main thread
(restored afterwards). The first signal starts the graceful stop; a second forces a fast one: readers
stop at once (frames still in the ring are dropped), sinks are closed, the producer is killed.

Nothing is printed on stdout; the status line goes to `log` (stderr by default) every
`status_interval` seconds and once at the end (when there was a first frame). Log records of the
"continuityseq_stream" loggers in the producer are re-emitted here through `logging`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing as mp
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, TextIO, Union

from ..config import GenerationConfig
from ..control.server import ControlServer, LiveController, check_control_address
from ..errors import ConfigError, ContinuitySeqError, SinkEnded, SinkError, bad_value, rebuild_error
from .producer import DEFAULT_SOURCE, Producer, check_source_spec
from ..prompts import LiveSettings, PromptSchedule, UpdateChannel
from .ringbuffer import FrameRing, ReaderRemoved, RingClosed, RingTimeout, check_ring_memory
from ..sinks import Sink, StreamInfo, sink_from_uri
from .status import SinkStatus, format_status

__all__ = ["RuntimeOptions", "run", "build_sinks", "EXIT_OK", "EXIT_FAILED", "EXIT_ERROR", "EXIT_FORCED"]

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_FORCED = 0, 1, 2, 130

_TICK = 0.1  # main loop period (s): signal/stop/status latency


@dataclass(frozen=True)
class RuntimeOptions:
    """How a streaming run behaves (not what it generates: that is `GenerationConfig`).

    duration: stop gracefully after so many seconds of wall-clock time, counted from the first frame
        (model loading excluded); None runs until `times` chunks or a stop.
    ring_frames: frames the shared-memory ring holds: how far a lossless sink may fall behind before
        the producer waits, and how much a `latest` sink can lag before it skips.
    status_interval: seconds between status lines on stderr; 0 prints only the final line.
    stop_grace: seconds the producer gets, after a stop, to finish the chunk it is writing and exit
        before the ring is closed / the process is killed.
    drain_timeout: seconds the sinks get to drain after a stop before the exit is forced; None waits.
    source: the chunk source "module:function" run in the producer (see producer.py).
    source_kwargs: keyword arguments for the source (picklable values).
    schedule: a prompt file's `PromptSchedule` (`--prompts-file`); it takes precedence over the
        config's prompt. Picklable: it travels to the producer process.
    control: bind address of the control socket (`--control`, e.g. tcp://127.0.0.1:5557), or None.
    control_allow_remote: accept a non-loopback control address (`--control-allow-remote`).
    sink_timeout: seconds a sink may spend in one open/write/close without progress (`--sink-timeout`);
        then it is detached (an RTMP/ffmpeg sink restarts its ffmpeg instead) and the others go on.
    """

    duration: Optional[float] = None
    ring_frames: int = 64
    status_interval: float = 5.0
    stop_grace: float = 10.0
    drain_timeout: Optional[float] = None
    source: str = DEFAULT_SOURCE
    source_kwargs: Mapping[str, Any] = field(default_factory=dict)
    schedule: Optional[PromptSchedule] = None
    control: Optional[str] = None
    control_allow_remote: bool = False
    sink_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.duration is not None and not (_finite(self.duration) and self.duration > 0):
            raise bad_value("duration", self.duration, "use a positive number of seconds, or leave it unset")
        if not isinstance(self.ring_frames, int) or isinstance(self.ring_frames, bool) or self.ring_frames < 2:
            raise bad_value("ring_frames", self.ring_frames, "use a number of frames >= 2, e.g. 64")
        if not (_finite(self.status_interval) and self.status_interval >= 0):
            raise bad_value("status_interval", self.status_interval, "use seconds >= 0 (0: final line only)")
        if not (_finite(self.stop_grace) and self.stop_grace >= 0):
            raise bad_value("stop_grace", self.stop_grace, "use seconds >= 0")
        if self.drain_timeout is not None and not (_finite(self.drain_timeout) and self.drain_timeout >= 0):
            raise bad_value("drain_timeout", self.drain_timeout, "use seconds >= 0, or None to wait")
        check_source_spec(self.source)
        if not isinstance(self.source_kwargs, Mapping):
            raise ConfigError(f"source_kwargs: got {self.source_kwargs!r}; use a mapping of keyword arguments")
        object.__setattr__(self, "source_kwargs", dict(self.source_kwargs))
        if self.schedule is not None and not isinstance(self.schedule, PromptSchedule):
            raise ConfigError(f"schedule: got {type(self.schedule).__name__}; use a PromptSchedule or None")
        if not isinstance(self.control_allow_remote, bool):
            raise ConfigError(f"--control-allow-remote: got {self.control_allow_remote!r}; use True or False")
        if self.control is not None:
            check_control_address(self.control, self.control_allow_remote)
        if not (_finite(self.sink_timeout) and self.sink_timeout > 0):
            raise bad_value("sink_timeout", self.sink_timeout, "use a finite number of seconds > 0, e.g. 10")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RuntimeOptions":
        """Build from a mapping; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown runtime option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(values))


def _finite(value: Any) -> bool:
    """A real number that is not NaN or infinite (NaN passes no comparison, so `> 0` alone lets inf in)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or repr(e)
    return text if isinstance(e, ContinuitySeqError) else f"{type(e).__name__}: {text}"


class _Log:
    """Thread-safe one-line writer to the log stream (never stdout)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self._lock = stream, threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            try:
                print(line, file=self.stream, flush=True)
            except (OSError, ValueError):
                pass


class _SinkRunner:
    """One sink's reader thread: open on the first frame, copy frames from the ring, always close.

    The main thread's watchdog (`_Run._watch`) reads `stalled_for`: how long this thread has been in
    one sink call (open/write/close) without a heartbeat of the sink. `detach` gives up on a stuck
    sink: its ring reader is removed (the producer no longer waits for it), `sink.interrupt()` is
    asked to end the stuck call, and the thread (a daemon: it cannot hold the process exit) closes
    the sink itself if it comes back; the runtime waits for that at most one more sink timeout.
    """

    def __init__(self, sink: Sink, ring: FrameRing, reader: int, abort: threading.Event, log: _Log) -> None:
        self.sink, self.ring, self.reader, self.abort, self.log = sink, ring, reader, abort, log
        self.state = "waiting"
        self.thread: Optional[threading.Thread] = None
        self.skipped = 0
        self.call: Optional[str] = None  # the sink call in progress: "open", "write" or "close"
        self.call_since = 0.0
        self.opened_at: Optional[float] = None
        self.grace_from = 0.0  # a restart of the sink's target gives it a new timeout from here
        self.detached_at: Optional[float] = None

    def start(self, info: StreamInfo) -> None:
        self.thread = threading.Thread(target=self._run, args=(info,), name=f"sink {self.sink.name}", daemon=True)
        self.thread.start()

    @property
    def finished(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()

    def settled(self, now: float, close_wait: float) -> bool:
        """Finished, or detached at least `close_wait` seconds ago (then no longer waited for)."""
        if self.finished:
            return True
        return self.detached_at is not None and now - self.detached_at >= close_wait

    def stalled_for(self, now: float) -> float:
        """Seconds without progress: since the later of the current sink call's start and the sink's
        last heartbeat (a `clocked` sink: also between calls, from its open on). 0 while the thread
        waits for frames, and once detached."""
        if self.thread is None or self.detached_at is not None or not self.thread.is_alive():
            return 0.0
        call, since = self.call, self.call_since  # call first: a newer call only makes `since` later
        if call is None:
            if not self.sink.clocked or self.opened_at is None:
                return 0.0
            since = self.opened_at
        return max(0.0, now - max(since, self.sink.last_heartbeat, self.grace_from))

    def detach(self, now: float, stalled: float) -> None:
        """Give up on this stuck sink (main thread): one line, free its ring reader, interrupt it."""
        where = self.call or "its clock"
        self.detached_at = now
        self.state = "detached"
        if where == "close":
            self.log(f"sink {self.sink.name}: no progress for {stalled:.1f} s while closing; left behind")
        else:
            self.log(f"sink {self.sink.name}: no progress for {stalled:.1f} s (stuck in {where}); "
                     "detached, the other sinks go on")
        try:
            self.ring.remove_reader(self.reader)  # the writer no longer waits for this cursor
        except Exception:  # noqa: BLE001 - a dead process may hold the ring's lock: the run ends anyway
            pass
        try:
            self.sink.interrupt()
        except Exception:  # noqa: BLE001 - an interrupt is best effort
            pass

    def _fail(self, stage: str, e: BaseException) -> None:
        if self.detached_at is not None:
            return  # the watchdog already said so; this is the interrupted call coming back
        if isinstance(e, SinkEnded):
            self.state = "ended"
            self.log(f"sink {self.sink.name} ended: {_one_line(e)}")
        else:
            self.state = "failed"
            self.log(f"sink {self.sink.name} failed ({stage}): {_one_line(e)}; removed, the other sinks go on")

    def _enter(self, call: str) -> None:
        self.call_since = time.monotonic()
        self.call = call

    def _run(self, info: StreamInfo) -> None:
        try:
            self._enter("open")
            try:
                self.sink.open(info)
            except Exception as e:  # noqa: BLE001 - any sink error removes only this sink
                self._fail("open", e)
                return
            finally:
                self.call = None
            self.opened_at = time.monotonic()
            if self.detached_at is None:
                self.state = "running"
            while not self.abort.is_set() and self.detached_at is None:
                try:
                    # a lossless sink writes straight from the ring's slot (no copy); the slot is
                    # the writer's again once released, so a sink never keeps the frame it was given
                    item = self.ring.acquire(self.reader, timeout=0.25)
                except (RingClosed, ReaderRemoved):
                    break
                except RingTimeout:
                    continue
                if item is None:
                    continue
                self._enter("write")
                try:
                    self.sink.write(*item)
                except Exception as e:  # noqa: BLE001
                    del item
                    self._release()
                    self._fail("write", e)
                    return
                finally:
                    self.call = None
                del item
                self._release()
            if self.detached_at is None:
                self.state = "done"
        finally:
            try:
                self.skipped = self.ring.skipped(self.reader)
                self.ring.remove_reader(self.reader)
            except Exception:  # noqa: BLE001 - the ring may be unusable after a crash
                pass
            self._enter("close")
            try:
                self.sink.close()
            except Exception as e:  # noqa: BLE001
                if self.state not in ("failed", "ended"):
                    self._fail("close", e)
            finally:
                self.call = None

    def _release(self) -> None:
        try:
            self.ring.release(self.reader)
        except RingTimeout:
            pass  # a process died holding the ring's lock: the run is ending anyway

    def status(self) -> SinkStatus:
        try:
            skipped = self.ring.skipped(self.reader) if not self.finished else self.skipped
        except Exception:  # noqa: BLE001
            skipped = self.skipped
        extra: Mapping[str, Any] = {}
        stats = getattr(self.sink, "stats", None)
        if callable(stats):
            try:
                extra = dict(stats())
            except Exception:  # noqa: BLE001 - a status line is never worth a failure
                extra = {}
        return SinkStatus(self.sink.name, self.sink.frames_written, skipped, self.state, extra)


class _SignalFlag:
    """A flag that a signal handler may set. `threading.Event.set` takes a lock: a handler that
    interrupts the main thread while it holds that lock (in `wait`) would deadlock on it."""

    def __init__(self) -> None:
        self._value = False

    def set(self) -> None:
        self._value = True

    def is_set(self) -> bool:
        return self._value


class _Run:
    """State of one `run` call (the main thread's loop)."""

    def __init__(self, config: GenerationConfig, sinks: list[Sink], options: RuntimeOptions, log: _Log) -> None:
        self.config, self.sinks, self.options, self.log = config, sinks, options, log
        self.stop_reason: Optional[str] = None
        self.stop_at: Optional[float] = None
        self.force = _SignalFlag()
        self.force_logged = False
        self.pending_signal: Optional[str] = None  # set by the handler, acted on by the loop
        self.abort = threading.Event()
        self.ring: Optional[FrameRing] = None
        self.producer: Optional[Producer] = None
        self.runners: list[_SinkRunner] = []
        self.started = time.monotonic()
        self.first_frame_at: Optional[float] = None
        # (class name, message, unexpected, template, names) of the producer's error
        self.producer_error: Optional[tuple[str, str, bool, str, tuple]] = None
        self.producer_finished = False
        self.last_status = time.monotonic()
        self.abandon = False  # the producer was told to stop now (not only at the next chunk boundary)
        self.channel: Optional[UpdateChannel] = None
        self.controller: Optional[LiveController] = None
        self.server: Optional[ControlServer] = None
        self.left_behind: set[int] = set()  # id() of sinks whose thread is stuck: nobody may close them

    # -- stop requests (main thread, signal handlers, control thread) ---------------------------
    def request_stop(self, reason: str, finish_chunk: bool = False) -> None:
        """Start the graceful stop. `finish_chunk` (the control `stop`): no chunk starts any more, but
        the one being computed is finished and written, like the end of `--times`. Otherwise (signals,
        --duration, a sink) that chunk is abandoned; a later plain request upgrades a finishing stop."""
        if self.channel is not None:
            self.channel.stop()
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_at = time.monotonic()
        if not finish_chunk and not self.abandon:
            self.abandon = True
            self.stop_at = time.monotonic()
            if self.producer is not None:
                self.producer.stop()

    def on_signal(self, signum: int, _frame) -> None:
        # Runs between two bytecodes of the main thread, which may be holding the log's lock or the
        # update channel's: take no lock here. Only record; the loop (or teardown) acts on it.
        if self.pending_signal is None and not self.abandon:
            self.pending_signal = signal.Signals(signum).name
        else:
            self.force.set()

    def _take_signal(self) -> None:
        """Act on a signal the handler recorded (main thread, outside the handler)."""
        name, self.pending_signal = self.pending_signal, None
        if name is not None and not self.abandon:
            self.request_stop(name)
            self.log(f"{name}: stopping, the sinks drain what the ring holds (again to force)")
        if self.force.is_set() and not self.force_logged:
            self.force_logged = True
            self.log("forcing the exit")

    # -- the run ---------------------------------------------------------------------------------
    def execute(self) -> int:
        opts = self.options
        try:
            self.ring = FrameRing(opts.ring_frames, max_readers=max(1, len(self.sinks)))
            self.runners = [
                _SinkRunner(s, self.ring, self.ring.add_reader(s.policy), self.abort, self.log) for s in self.sinks
            ]
            ctx = mp.get_context("spawn")
            self.channel = UpdateChannel(ctx)
            self.producer = Producer(self.config, self.ring, source=opts.source, source_kwargs=opts.source_kwargs,
                                     ctx=ctx, schedule=opts.schedule, channel=self.channel)
            if opts.control is not None:
                self._start_control()
            self._take_signal()
            if self.stop_reason is not None:  # a signal arrived while setting up
                return EXIT_OK
            self.producer.start()
            self._loop()
        finally:
            self._teardown()
        if self.producer_error is not None and not self.producer_error[2] and not self.force.is_set():
            name, _, _, template, names = self.producer_error
            raise rebuild_error(name, template, names)
        return self._exit_code()

    def _loop(self) -> None:
        producer, ring = self.producer, self.ring
        while True:
            event = producer.next_event(_TICK)
            if event is not None:
                self._on_event(event)
            now = time.monotonic()
            self._take_signal()
            if self.force.is_set():
                return
            if not producer.is_alive() and not self.producer_finished and self.producer_error is None:
                self._on_producer_exit()
            if self.producer_error is not None or self.producer_finished:
                if not ring.closed:
                    ring.close()
            if self.first_frame_at is not None:
                self._watch(now)
                if not self.abandon and _duration_reached(self.options.duration, self.first_frame_at, now):
                    self.request_stop("duration")
                if not self.abandon and any(r.sink.wants_stop.is_set() for r in self.runners):
                    self.request_stop("sink")
                if all(r.settled(now, self.options.sink_timeout) for r in self.runners):
                    return  # drained (or every sink gone)
            elif self.producer_error is not None or self.producer_finished or (
                self.stop_reason is not None and not producer.is_alive()
            ):
                return  # ended before the first frame
            if self.stop_reason is not None and self.abandon:  # a finishing stop ends like --times
                waited = now - self.stop_at
                if not ring.closed and waited > self.options.stop_grace:
                    ring.close()  # the producer did not finish its chunk in time
                if self.first_frame_at is None and waited > self.options.stop_grace:
                    return
                if self.options.drain_timeout is not None and waited > self.options.stop_grace + self.options.drain_timeout:
                    self.log("sinks did not drain in time: forcing the exit")
                    self.force.set()
                    return
            if (self.options.status_interval and self.first_frame_at is not None
                    and now - self.last_status >= self.options.status_interval):
                self.last_status = now
                self.log(self._status_line("stream"))

    def _on_event(self, event: tuple) -> None:
        kind = event[0]
        if kind == "shape" and self.first_frame_at is None:
            _, height, width = event
            self.ring.allocate(height, width)
            self.first_frame_at = time.monotonic()
            info = StreamInfo(width=width, height=height, fps=float(self.config.fps))
            for r in self.runners:
                r.start(info)
        elif kind == "attached":
            self.ring.unlink()  # both sides have it mapped: the name is no longer needed
        elif kind == "done":
            self.producer_finished = True
        elif kind == "log":
            _, name, level, message = event
            logging.getLogger(name).log(level, "%s", message)
        elif kind == "error":
            _, name, message, unexpected, template, names = event
            self.producer_error = (name, message, bool(unexpected), template, tuple(names))
            if unexpected:  # a ContinuitySeqError is raised by `run` after teardown instead
                self.log(f"producer failed: {name}: {' '.join(message.split())}")

    def _on_producer_exit(self) -> None:
        # the child puts its last message before it exits: collect it before concluding it died
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not (self.producer_finished or self.producer_error):
            event = self.producer.next_event(0.1)
            if event is not None:
                self._on_event(event)
        if not (self.producer_finished or self.producer_error):
            code = self.producer.exitcode
            self.producer_error = ("ProducerDied", f"exit code {code}", True, f"exit code {code}", ())
            self.log(f"producer process died unexpectedly (exit code {code})")

    # -- live control ----------------------------------------------------------------------------
    def _start_control(self) -> None:
        """Bind the control socket (ConfigError when refused or taken: before any model work)."""
        schedule = self.options.schedule
        self.controller = LiveController(self.channel, LiveSettings.from_config(self.config, schedule))
        self.server = ControlServer(self.options.control, allow_remote=self.options.control_allow_remote,
                                    on_update=self._on_control_update, on_stop=self._on_control_stop,
                                    on_status=self.status_fields)
        self.server.start()
        logging.getLogger(__name__).info("control socket on %s", self.server.address)

    def _on_control_update(self, update: dict) -> dict:
        answer = self.controller.on_update(update)
        self.log(f"control: {update['command']} applies at chunk {answer['applies_at_chunk']}")
        return answer

    def _on_control_stop(self) -> dict:
        at = self.channel.stop()
        self.request_stop("control", finish_chunk=True)
        self.log(f"control: stop; chunk {at} and later will not be made, the sinks finish their files")
        return {"applies_at_chunk": at}

    def status_fields(self) -> dict:
        """The status line's figures as a dict, plus the live settings of the chunk in progress
        (`current_chunk`: the last chunk started) and the scheduled prompt changes."""
        stats = self.producer.stats() if self.producer is not None else {"chunks": 0, "frames": 0, "gen_fps": 0.0}
        ring = self.ring
        sinks = []
        for r in self.runners:
            st = r.status()
            sinks.append({"name": st.name, "frames": st.written, "skipped": st.skipped, "state": st.state,
                          **dict(st.extra)})
        fields = {
            "elapsed": round(time.monotonic() - (self.first_frame_at or self.started), 3),
            "chunks_made": stats["chunks"],
            "frames_made": stats["frames"],
            "gen_fps": round(stats["gen_fps"], 3),
            "out_fps": float(self.config.fps),
            "ring_fill": ring.fill() if ring is not None and self.first_frame_at is not None else 0,
            "ring_slots": self.options.ring_frames,
            "skipped": {s["name"]: s["skipped"] for s in sinks},
            "sinks": sinks,
            "stopping": self.stop_reason is not None,
        }
        if self.controller is not None:
            current = max(self.channel.state()["next_chunk"] - 1, 0)
            start_time = current * self.config.num_frames / self.config.fps
            fields.update(self.controller.status_fields(current, start_time))
            fields["current_chunk"] = current
        return fields

    # -- the watchdog ----------------------------------------------------------------------------
    def _watch(self, now: float) -> None:
        """Detach every sink stuck for `sink_timeout` seconds (main thread, every tick). A sink that
        can restart its target (ffmpeg/RTMP) does that instead and gets another timeout."""
        timeout = self.options.sink_timeout
        for r in self.runners:
            stalled = r.stalled_for(now)
            if stalled < timeout:
                continue
            try:
                restarted = bool(r.sink.restart_target())
            except Exception:  # noqa: BLE001 - a failed restart means: detach
                restarted = False
            if restarted:
                r.grace_from = now
                self.log(f"sink {r.sink.name}: no progress for {stalled:.1f} s; restarting its target")
            else:
                r.detach(now, stalled)

    def _wait_for_sinks(self) -> None:
        """The drain: wait until every started sink thread has finished or was given up on. The
        watchdog keeps running, so a sink stuck in write or close costs at most two sink timeouts
        (detached after one, then one more for its close); after a forced stop, 3 s in all."""
        close_wait = self.options.sink_timeout
        forced_at: Optional[float] = None
        while True:
            now = time.monotonic()
            self._take_signal()  # a Ctrl-C meanwhile forces (see on_signal)
            if self.force.is_set():
                self.abort.set()
                forced_at = forced_at if forced_at is not None else now
            self._watch(now)
            live = [r for r in self.runners if r.thread is not None and not r.settled(now, close_wait)]
            if not live or (forced_at is not None and now - forced_at > 3.0):
                break
            live[0].thread.join(_TICK)
        for r in self.runners:
            if r.thread is not None and r.thread.is_alive():
                self.left_behind.add(id(r.sink))
                if r.detached_at is None:
                    self.log(f"sink {r.sink.name} did not finish closing; leaving it")

    def _teardown(self) -> None:
        """Always runs: stop reading, close every sink, end the producer, unlink the ring."""
        forced = self.force.is_set()
        if forced:
            self.abort.set()
        if self.server is not None:
            self.server.close()
        try:
            if self.ring is not None:
                self.ring.close()
            self._wait_for_sinks()
            for r in self.runners:
                if r.thread is None:  # never opened (no first frame): still close it
                    try:
                        r.sink.close()
                    except Exception as e:  # noqa: BLE001
                        self.log(f"sink {r.sink.name} failed (close): {_one_line(e)}")
        finally:
            try:
                if self.producer is not None:
                    # the loop already gave a stopping producer its grace period: do not wait twice
                    grace_used = self.stop_at is not None and time.monotonic() - self.stop_at > self.options.stop_grace
                    self.producer.shutdown(0.0 if forced or self.force.is_set() or grace_used else self.options.stop_grace)
            finally:
                if self.ring is not None:
                    if self.first_frame_at is not None:
                        self.log(self._status_line("end"))
                    self.ring.destroy()
                if self.channel is not None:
                    self.channel.close()

    def _status_line(self, label: str) -> str:
        stats = self.producer.stats() if self.producer is not None else {"chunks": 0, "frames": 0, "gen_fps": 0.0}
        return format_status(
            label=label,
            elapsed=time.monotonic() - (self.first_frame_at or self.started),
            chunks=stats["chunks"],
            frames=stats["frames"],
            gen_fps=stats["gen_fps"],
            out_fps=self.config.fps,
            ring_fill=self.ring.fill() if self.ring is not None else 0,
            ring_slots=self.options.ring_frames,
            sinks=[r.status() for r in self.runners],
            paused=self._paused(),
        )

    def _paused(self) -> bool:
        if self.channel is None:
            return False
        try:
            return bool(self.channel.state()["paused"])
        except Exception:  # noqa: BLE001 - a status line is never worth a failure
            return False

    def _exit_code(self) -> int:
        if self.force.is_set():
            return EXIT_FORCED
        if self.producer_error is not None:
            unexpected = self.producer_error[2]
            return EXIT_FAILED if unexpected else EXIT_ERROR
        if self.runners and all(r.state in ("failed", "detached") for r in self.runners):
            return EXIT_FAILED
        return EXIT_OK


def _duration_reached(duration: Optional[float], since: float, now: float) -> bool:
    return duration is not None and now - since >= duration


def _build_sinks(items: Iterable[Union[str, Sink]], log: _Log) -> list[Sink]:
    """URIs -> sinks. A bad URI (`ConfigError`) raises. A `SinkError` (bad target) leaves that sink
    out with one line, the others go on; when that leaves no sink at all, the error is raised instead
    (`_no_usable_sink`): bad input, before anything started."""
    sinks, failed = [], []
    for item in items:
        if isinstance(item, Sink):
            sinks.append(item)
            continue
        try:
            sinks.append(sink_from_uri(str(item)))
        except SinkError as e:
            failed.append((str(item), e))
    if not sinks:
        raise _no_usable_sink(failed)
    for uri, e in failed:
        log(f"sink {uri} failed (setup): {_one_line(e)}; left out, the other sinks go on")
    return sinks


def _no_usable_sink(failed: list[tuple[str, SinkError]]) -> SinkError:
    """Every sink failed at setup: one line naming --sink (status 2 from the CLI), instead of a line
    per sink and a status that reads like a failure at run time."""
    reasons = "; ".join(f"{uri!r}: {_one_line(e)}" for uri, e in failed)
    if len(failed) == 1:
        return SinkError(f"{{sinks}} {reasons}", names=("sinks",))
    return SinkError(f"{{sinks}}: no usable sink, all {len(failed)} failed at setup ({reasons})", names=("sinks",))


def build_sinks(items: Iterable[Union[str, Sink]], *, log: Optional[TextIO] = None) -> list[Sink]:
    """`--sink` URIs (or Sink objects) -> the sinks a run would use, without starting anything: a bad
    URI raises ConfigError, a sink whose target is bad is left out with one line on `log` (stderr),
    and SinkError is raised when no sink is left. `run` does the same; a caller that wants every
    check done before it prints anything else (the CLI) calls this first and passes the sinks on."""
    items = list(items)
    if not items:
        raise ConfigError("{sinks}: no sink given; give at least one, e.g. file:out.mp4 or - (stdout)",
                          names=("sinks",))
    return _build_sinks(items, _Log(log if log is not None else sys.stderr))


def run(
    config: GenerationConfig,
    sinks: Iterable[Union[str, Sink]],
    options: Optional[RuntimeOptions] = None,
    *,
    log: Optional[TextIO] = None,
) -> int:
    """Stream `config`'s video into `sinks` (URIs or Sink objects) until it ends or is stopped;
    returns the exit status (see the module docstring). Raises ConfigError for unusable arguments,
    and SinkError when every sink given fails at setup (before the producer starts)."""
    options = options or RuntimeOptions()
    if not isinstance(options, RuntimeOptions):
        raise ConfigError(f"options: got {type(options).__name__}; use RuntimeOptions")
    check_ring_memory(options.ring_frames, *config.frame_size)  # before any sink or process exists
    writer = _Log(log if log is not None else sys.stderr)
    built = build_sinks(sinks, log=writer.stream)
    state = _Run(config, built, options, writer)
    try:
        for sink in built:
            prepare = getattr(sink, "prepare", None)
            if callable(prepare):
                prepare()
        with _signal_handlers(state.on_signal):
            return state.execute()
    finally:
        for sink in built:  # teardown for sinks that never got a runner (closing twice is a no-op)
            if id(sink) in state.left_behind:
                continue  # its thread is stuck inside it: a close from here could block or race
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001
                writer(f"sink {sink.name} failed (close): {_one_line(e)}")


class _signal_handlers:
    """Install SIGINT/SIGTERM handlers for the duration of a run (main thread only), then restore."""

    def __init__(self, handler) -> None:
        self.handler, self.saved = handler, {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self.handler)

    def __exit__(self, *exc) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
