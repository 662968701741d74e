"""The sinks of a run: built from `--sink` URIs, then each driven by its own reader thread.

`build_sinks` turns URIs into sinks (a bad target is left out with one line); a `SinkRunner` opens
its sink on the first frame, copies frames from its ring reader into `sink.write` and always closes
it; the run loop's watchdog reads `stalled_for` and `detach`es a stuck one (docs/reliability.md).
At the end of a run, `drain_sinks` waits for the sink threads (the watchdog still running) and
`close_unopened` closes the sinks that never got a first frame.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Iterable, Mapping, Optional, TextIO, Union

from ..errors import ConfigError, ContinuitySeqError, ReaderRemoved, RingClosed, RingTimeout, SinkEnded, SinkError
from ..sinks import Sink, StreamInfo, sink_from_uri
from .ringbuffer import FrameRing
from .status import SinkStatus
from .stopping import StopState

__all__ = ["SinkRunner", "LogWriter", "build_sinks", "one_line", "watch_sinks", "drain_sinks", "close_unopened"]


def one_line(e: BaseException) -> str:
    """An error as one line: a user error's message, anything else with its type name."""
    text = " ".join(str(e).split()) or repr(e)
    return text if isinstance(e, ContinuitySeqError) else f"{type(e).__name__}: {text}"


class LogWriter:
    """Thread-safe one-line writer to the log stream (never stdout)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self._lock = stream, threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            try:
                print(line, file=self.stream, flush=True)
            except (OSError, ValueError):
                pass


class SinkRunner:
    """One sink's reader thread: open on the first frame, copy frames from the ring, always close.

    The main thread's watchdog (`watch_sinks`) reads `stalled_for`: how long this thread has been in
    one sink call (open/write/close) without a heartbeat of the sink. `detach` gives up on a stuck
    sink: its ring reader is removed (the producer no longer waits for it), `sink.interrupt()` is
    asked to end the stuck call, and the thread (a daemon: it cannot hold the process exit) closes
    the sink itself if it comes back; the runtime waits for that at most one more sink timeout.
    """

    def __init__(self, sink: Sink, ring: FrameRing, reader: int, abort: threading.Event, log: LogWriter) -> None:
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
            self.log(f"sink {self.sink.name} ended: {one_line(e)}")
        else:
            self.state = "failed"
            self.log(f"sink {self.sink.name} failed ({stage}): {one_line(e)}; removed, the other sinks go on")

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


def watch_sinks(runners: list[SinkRunner], now: float, timeout: float, log: LogWriter) -> None:
    """The watchdog (main thread, every tick): detach every sink stuck for `timeout` seconds. A sink
    that can restart its target (ffmpeg/RTMP) does that instead and gets another timeout."""
    for r in runners:
        stalled = r.stalled_for(now)
        if stalled < timeout:
            continue
        try:
            restarted = bool(r.sink.restart_target())
        except Exception:  # noqa: BLE001 - a failed restart means: detach
            restarted = False
        if restarted:
            r.grace_from = now
            log(f"sink {r.sink.name}: no progress for {stalled:.1f} s; restarting its target")
        else:
            r.detach(now, stalled)


def drain_sinks(runners: list[SinkRunner], stop: StopState, abort: threading.Event, timeout: float,
                log: LogWriter, tick: float) -> list[SinkRunner]:
    """The drain: wait until every started sink thread has finished or was given up on; returns the
    runners whose thread is still alive (left behind: nobody may close their sink). The watchdog keeps
    running, so a sink stuck in write or close costs at most two sink timeouts (detached after one,
    then one more for its close); after a forced stop, 3 s in all."""
    close_wait = timeout
    forced_at: Optional[float] = None
    while True:
        now = time.monotonic()
        stop.take_signal()  # a Ctrl-C meanwhile forces (see StopState.on_signal)
        if stop.force.is_set():
            abort.set()
            forced_at = forced_at if forced_at is not None else now
        watch_sinks(runners, now, timeout, log)
        live = [r for r in runners if r.thread is not None and not r.settled(now, close_wait)]
        if not live or (forced_at is not None and now - forced_at > 3.0):
            break
        live[0].thread.join(tick)
    stuck = []
    for r in runners:
        if r.thread is not None and r.thread.is_alive():
            stuck.append(r)
            if r.detached_at is None:
                log(f"sink {r.sink.name} did not finish closing; leaving it")
    return stuck


def close_unopened(runners: list[SinkRunner], log: LogWriter) -> None:
    """Close every sink whose thread never started (the run ended before the first frame): no
    runner opened it, yet it is closed like the others; a failure is one line."""
    for r in runners:
        if r.thread is None:
            try:
                r.sink.close()
            except Exception as e:  # noqa: BLE001
                log(f"sink {r.sink.name} failed (close): {one_line(e)}")


def build_sink_list(items: Iterable[Union[str, Sink]], log: LogWriter) -> list[Sink]:
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
        log(f"sink {uri} failed (setup): {one_line(e)}; left out, the other sinks go on")
    return sinks


def _no_usable_sink(failed: list[tuple[str, SinkError]]) -> SinkError:
    """Every sink failed at setup: one line naming --sink (status 2 from the CLI), instead of a line
    per sink and a status that reads like a failure at run time."""
    reasons = "; ".join(f"{uri!r}: {one_line(e)}" for uri, e in failed)
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
    return build_sink_list(items, LogWriter(log if log is not None else sys.stderr))
