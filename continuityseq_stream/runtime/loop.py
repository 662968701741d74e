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

Prompt schedules and live control (prompts/, control/, live_control.py): `options.schedule` (a prompt file) goes to
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
"continuityseq_stream" loggers in the producer are re-emitted here through `logging` (producer_events.py).
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import threading
import time
from typing import Iterable, Optional, TextIO, Union

from ..config import GenerationConfig
from ..errors import ConfigError, rebuild_error
from ..prompts import UpdateChannel
from ..resume import resume_start
from ..sinks import Sink, StreamInfo
from .live_control import LiveControl
from .options import RuntimeOptions
from .producer import Producer
from .producer_events import ProducerEvents
from .resume_files import keep_earlier_files
from .ringbuffer import FrameRing, check_ring_memory
from .sink_runner import LogWriter, SinkRunner, build_sinks, close_unopened, drain_sinks, one_line, watch_sinks
from .status import format_status, status_dict
from .stopping import StopState, signal_handlers

__all__ = ["RuntimeOptions", "run", "build_sinks", "EXIT_OK", "EXIT_FAILED", "EXIT_ERROR", "EXIT_FORCED"]

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_FORCED = 0, 1, 2, 130

_TICK = 0.1  # main loop period (s): signal/stop/status latency


class _Run:
    """The main thread's side of one `run` call: start the ring, the producer and one runner per sink,
    pass the producer's events on, watch the sinks, and always tear everything down. How it stops
    is `stopping.StopState`; what the producer's events mean is `producer_events.ProducerEvents`;
    the control socket is `live_control.LiveControl`; each sink's thread is a `sink_runner.SinkRunner`."""

    def __init__(self, config: GenerationConfig, sinks: list[Sink], options: RuntimeOptions, log: LogWriter) -> None:
        self.config, self.sinks, self.options, self.log = config, sinks, options, log
        self.stop = StopState(log)
        self.abort = threading.Event()
        self.ring: Optional[FrameRing] = None
        self.producer: Optional[Producer] = None
        self.runners: list[SinkRunner] = []
        self.started = time.monotonic()
        self.first_frame_at: Optional[float] = None
        self.events = ProducerEvents(log, self._first_frame, self._attached)
        self.last_status = time.monotonic()
        self.channel: Optional[UpdateChannel] = None
        self.control: Optional[LiveControl] = None
        self.left_behind: set[int] = set()  # id() of sinks whose thread is stuck: nobody may close them

    # -- the run ---------------------------------------------------------------------------------
    def execute(self) -> int:
        opts = self.options
        try:
            self.ring = FrameRing(opts.ring_frames, max_readers=max(1, len(self.sinks)))
            self.runners = [
                SinkRunner(s, self.ring, self.ring.add_reader(s.policy), self.abort, self.log) for s in self.sinks
            ]
            ctx = mp.get_context("spawn")
            self.channel = UpdateChannel(ctx, first_chunk=resume_start(self.config))
            self.producer = Producer(self.config, self.ring, source=opts.source, source_kwargs=opts.source_kwargs,
                                     ctx=ctx, schedule=opts.schedule, channel=self.channel, threads=opts.threads)
            self.stop.channel, self.stop.producer = self.channel, self.producer
            if opts.control is not None:
                self.control = LiveControl(self.config, opts, self.channel, self.log, self.stop.request,
                                           self.status_fields)
                self.control.start()
            self.stop.take_signal()
            if self.stop.reason is not None:  # a signal arrived while setting up
                return EXIT_OK
            self.producer.start()
            self._loop()
        finally:
            self._teardown()
        if self.events.error is not None and not self.events.error[2] and not self.stop.force.is_set():
            name, _, _, template, names = self.events.error
            raise rebuild_error(name, template, names)
        return self._exit_code()

    def _loop(self) -> None:
        producer, ring = self.producer, self.ring
        while True:
            event = producer.next_event(_TICK)
            if event is not None:
                self.events.handle(event)
            now = time.monotonic()
            self.stop.take_signal()
            if self.stop.force.is_set():
                return
            if not producer.is_alive() and not self.events.finished and self.events.error is None:
                self.events.on_exit(producer)
            if self.events.error is not None or self.events.finished:
                if not ring.closed:
                    ring.close()
            if self.first_frame_at is not None:
                watch_sinks(self.runners, now, self.options.sink_timeout, self.log)
                if not self.stop.abandon and _duration_reached(self.options.duration, self.first_frame_at, now):
                    self.stop.request("duration")
                if not self.stop.abandon and any(r.sink.wants_stop.is_set() for r in self.runners):
                    self.stop.request("sink")
                if all(r.settled(now, self.options.sink_timeout) for r in self.runners):
                    return  # drained (or every sink gone)
            elif self.events.error is not None or self.events.finished or (
                self.stop.reason is not None and not producer.is_alive()
            ):
                return  # ended before the first frame
            if self.stop.reason is not None and self.stop.abandon:  # a finishing stop ends like --times
                waited = now - self.stop.at
                if not ring.closed and waited > self.options.stop_grace:
                    ring.close()  # the producer did not finish its chunk in time
                if self.first_frame_at is None and waited > self.options.stop_grace:
                    return
                if self.options.drain_timeout is not None and waited > self.options.stop_grace + self.options.drain_timeout:
                    self.log("sinks did not drain in time: forcing the exit")
                    self.stop.force.set()
                    return
            if (self.options.status_interval and self.first_frame_at is not None
                    and now - self.last_status >= self.options.status_interval):
                self.last_status = now
                self.log(self._status_line("stream"))

    def _first_frame(self, height: int, width: int) -> None:
        """The producer's first chunk is decoded: allocate the ring and start every sink's thread."""
        if self.first_frame_at is not None:
            return  # only the first "shape" counts
        self.ring.allocate(height, width)
        self.first_frame_at = time.monotonic()
        info = StreamInfo(width=width, height=height, fps=float(self.config.fps))
        for r in self.runners:
            r.start(info)

    def _attached(self) -> None:
        self.ring.unlink()  # both sides have it mapped: the name is no longer needed

    def status_fields(self) -> dict:
        """The status line's figures as a dict (`status.status_dict`), plus the live settings of the
        chunk in progress (`current_chunk`: the last chunk started) and the scheduled prompt changes."""
        fields = status_dict(**self._figures(), ring_fill=(self.ring.fill() if self.ring is not None and
                                                           self.first_frame_at is not None else 0),
                             stopping=self.stop.reason is not None)
        if self.control is not None:
            fields.update(self.control.live_fields())
        return fields

    def _figures(self) -> dict:
        """What the status line and the status answer share."""
        stats = self.producer.stats() if self.producer is not None else {"chunks": 0, "frames": 0, "gen_fps": 0.0}
        return dict(elapsed=time.monotonic() - (self.first_frame_at or self.started), chunks=stats["chunks"],
                    frames=stats["frames"], gen_fps=stats["gen_fps"], out_fps=self.config.fps,
                    ring_slots=self.options.ring_frames, sinks=[r.status() for r in self.runners])

    def _teardown(self) -> None:
        """Always runs: stop reading, close every sink, end the producer, unlink the ring."""
        forced = self.stop.force.is_set()
        if forced:
            self.abort.set()
        if self.control is not None:
            self.control.close()
        try:
            if self.ring is not None:
                self.ring.close()
            stuck = drain_sinks(self.runners, self.stop, self.abort, self.options.sink_timeout, self.log, _TICK)
            self.left_behind.update(id(r.sink) for r in stuck)
            close_unopened(self.runners, self.log)
        finally:
            try:
                if self.producer is not None:
                    # the loop already gave a stopping producer its grace period: do not wait twice
                    grace_used = self.stop.at is not None and time.monotonic() - self.stop.at > self.options.stop_grace
                    self.producer.shutdown(0.0 if forced or self.stop.force.is_set() or grace_used else self.options.stop_grace)
            finally:
                if self.ring is not None:
                    if self.first_frame_at is not None:
                        self.log(self._status_line("end"))
                    self.ring.destroy()
                if self.channel is not None:
                    self.channel.close()

    def _status_line(self, label: str) -> str:
        return format_status(label=label, **self._figures(), ring_fill=self.ring.fill() if self.ring is not None else 0,
                             paused=self._paused())

    def _paused(self) -> bool:
        if self.channel is None:
            return False
        try:
            return bool(self.channel.state()["paused"])
        except Exception:  # noqa: BLE001 - a status line is never worth a failure
            return False

    def _exit_code(self) -> int:
        if self.stop.force.is_set():
            return EXIT_FORCED
        if self.events.error is not None:
            unexpected = self.events.error[2]
            return EXIT_FAILED if unexpected else EXIT_ERROR
        if self.runners and all(r.state in ("failed", "detached") for r in self.runners):
            return EXIT_FAILED
        return EXIT_OK


def _duration_reached(duration: Optional[float], since: float, now: float) -> bool:
    return duration is not None and now - since >= duration


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
    writer = LogWriter(log if log is not None else sys.stderr)
    built = build_sinks(sinks, log=writer.stream)
    keep_earlier_files(built, config)  # --resume: file sinks write new files
    state = _Run(config, built, options, writer)
    try:
        for sink in built:
            prepare = getattr(sink, "prepare", None)
            if callable(prepare):
                prepare()
        with signal_handlers(state.stop.on_signal):
            return state.execute()
    finally:
        for sink in built:  # teardown for sinks that never got a runner (closing twice is a no-op)
            if id(sink) in state.left_behind:
                continue  # its thread is stuck inside it: a close from here could block or race
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001
                writer(f"sink {sink.name} failed (close): {one_line(e)}")
