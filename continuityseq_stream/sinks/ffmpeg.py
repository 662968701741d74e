"""Live output through an ffmpeg subprocess: `rtmp://...`, `rtmps://...` and `ffmpeg:URL`.

Raw rgb24 frames go to ffmpeg's stdin; ffmpeg encodes H.264 (x264 `ultrafast` + `zerolatency`,
yuv420p, a keyframe every 2 s) and sends FLV to an RTMP server, or whatever format the target needs.

A live server drops a stream whose frames stop coming, so a clock thread (`_Pacer`) sends exactly one
frame every 1/fps seconds:

- generation slower than real time: the last frame is sent again (counted as `repeated`);
- generation faster than real time: `write()` blocks on a small bounded queue, which is the
  back-pressure the ring buffer's `block` policy turns into a waiting producer. `policy` is therefore
  "block": every generated frame reaches the stream (except during an outage), and nothing grows;
- the server drops (ffmpeg exits, EPIPE): ffmpeg is restarted with exponential backoff; meanwhile the
  clock keeps taking frames off the queue at the output rate and drops them (counted as `dropped`),
  so `write()` keeps accepting frames and generation goes on;
- `pause()`: the clock keeps sending the last frame (counted as `held`) and takes no new ones, so
  `write()` blocks once the queue is full (generation waits) until `resume()`.
- ffmpeg takes no data (a server that accepted the connection and never answers, a stalled network):
  the clock never blocks on ffmpeg's stdin (non-blocking pipe). While ffmpeg is merely slow, or
  starting (connecting), the clock waits for it (back-pressure, as above); once it has taken nothing
  for `_STUCK_AFTER` seconds past its start-up, frames are dropped like during an outage, so
  generation and the other sinks go on. ffmpeg's own
  `-rw_timeout` (option `timeout`) ends it on a network target that stopped answering, and the
  runtime's watchdog (`--sink-timeout`) calls `restart_target()`, which kills it; the reconnect
  logic then starts a new one.

ffmpeg dies with the run: it runs in its own session (a Ctrl-C in the terminal reaches only the run,
which then ends ffmpeg in order), and on Linux it gets SIGKILL from the kernel when the thread that
started it ends (PR_SET_PDEATHSIG), so not even kill -9 of the run leaves an ffmpeg behind.

A restart never overwrites what an earlier ffmpeg wrote to a local file target (`ffmpeg:out.ts`): the
new ffmpeg writes the next free segment name (`out.1.ts`, `out.2.ts`, ...; see `paths`).

URI options (sink options, parsed strictly; unknown names are a ConfigError):

    audio=0|1        add a silent AAC track (anullsrc); some services refuse video-only streams
    preroll=SECONDS  buffer this much video before going live (a cushion for slow chunks), 0..60
    log=PATH         ffmpeg's stderr is appended here (default: a temp file, see `log_path`)
    format=NAME      output container (default: flv for rtmp/rtmps, guessed by ffmpeg otherwise)
    bitrate=KBPS     constant-ish video bitrate (-b:v/-maxrate/-bufsize); default x264 CRF 23
    retries=N        give up (write() raises SinkError) after N failed restarts in a row; 0 = never
    timeout=SECONDS  network targets: ffmpeg gives up on a connection that takes no data for this long
                     (its -rw_timeout; the reconnect logic then restarts it); default 10, 0 = never

Options normally go in the query (`rtmp://host/app/key?audio=1&preroll=2`). When the target URL needs
its own query string, put the sink options after `#` instead; the query then goes to ffmpeg
unchanged: `ffmpeg:udp://127.0.0.1:1234?pkt_size=1316#format=mpegts`.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

import numpy as np

from ..chunk import FrameMeta
from ..errors import SinkError
from .options import parse_bool, parse_number, sink_error
from .base import Sink, StreamInfo

log = logging.getLogger(__name__)

__all__ = ["FfmpegOptions", "FfmpegSink", "from_uri"]

_OPTION_NAMES = ("audio", "preroll", "log", "format", "bitrate", "retries", "timeout")

#: seconds ffmpeg may take no data before the clock counts it as an outage and drops frames
_STUCK_AFTER = 1.0
#: a new ffmpeg connects to its target before it reads frames (an RTMP handshake with a distant
#: server takes a second or two): it is never counted as stuck this early
_STARTUP_ALLOWANCE = 3.0
_PROTOCOL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class FfmpegOptions:
    """A parsed `rtmp://`/`rtmps://`/`ffmpeg:` sink URI: where ffmpeg writes and how."""

    target: str
    format: str | None = None
    audio: bool = False
    preroll: float = 0.0
    log: str | None = None
    bitrate: int | None = None
    retries: int = 0
    timeout: float = 10.0

    @classmethod
    def parse(cls, uri: str) -> "FfmpegOptions":
        """Split sink options from the target URL; raise ConfigError naming any bad option."""
        if uri.startswith("ffmpeg:"):
            target = uri[len("ffmpeg:"):]
            default_format = None
        elif uri.startswith(("rtmp://", "rtmps://")):
            target = uri
            default_format = "flv"
        else:
            raise sink_error(uri, "not an ffmpeg sink; use rtmp://..., rtmps://... or ffmpeg:URL")
        if "#" in target:
            target, _, opts = target.partition("#")
        elif "?" in target:
            target, _, opts = target.partition("?")
        else:
            opts = ""
        if not target:
            raise sink_error(uri, f"no output URL; use e.g. ffmpeg:out.ts#format=mpegts")
        pairs = parse_qsl(opts, keep_blank_values=True, strict_parsing=False)
        unknown = sorted({k for k, _ in pairs if k not in _OPTION_NAMES})
        if unknown:
            raise sink_error(
                uri, f"unknown option(s) {', '.join(unknown)}; known: {', '.join(_OPTION_NAMES)}"
                " (if the target URL needs its own query, put sink options after '#')"
            )
        values = dict(pairs)
        return cls(
            target=target,
            format=values.get("format") or default_format,
            audio=parse_bool(uri, "audio", values.get("audio", "0")),
            preroll=parse_number(uri, "preroll", values.get("preroll", "0"), float, 0, 60),
            log=values.get("log") or None,
            bitrate=(parse_number(uri, "bitrate", values["bitrate"], int, 50, 100_000) if "bitrate" in values else None),
            retries=parse_number(uri, "retries", values.get("retries", "0"), int, 0, 1_000_000),
            timeout=parse_number(uri, "timeout", values.get("timeout", "10"), float, 0, 86_400),
        )

    @property
    def network(self) -> bool:
        """True for a network URL (`scheme://`, not `file://`): ffmpeg then gets `-rw_timeout`."""
        m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", self.target)
        return bool(m) and m.group(1).lower() != "file"

    @property
    def local_path(self) -> str | None:
        """The file a local target writes (`out.ts`, `file:out.ts`), or None (network, `pipe:`...)."""
        m = _PROTOCOL.match(self.target)
        if m is None or len(m.group(1)) == 1:  # no protocol (a one-letter one is a Windows drive)
            return self.target
        if m.group(1).lower() == "file":
            rest = self.target[m.end():]
            return rest[2:] if rest.startswith("//") else rest
        return None


def ffmpeg_command(opts: FfmpegOptions, info: StreamInfo, binary: str = "ffmpeg", *,
                   target: str | None = None, overwrite: bool = True) -> list[str]:
    """The ffmpeg command line: raw rgb24 on stdin -> x264 zerolatency (+ silent AAC) -> target
    (`opts.target` unless given). overwrite=False (`-n`): ffmpeg refuses to replace an existing file."""
    fps = info.fps
    rate = f"{fps:g}"
    gop = max(1, int(round(2 * fps)))
    cmd = [binary, "-hide_banner", "-nostats", "-loglevel", "info", "-y" if overwrite else "-n",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{info.width}x{info.height}",
           "-framerate", rate, "-i", "pipe:0"]
    if opts.audio:
        cmd += ["-f", "lavfi", "-i", "anullsrc=channel_layout=stereo:sample_rate=44100"]
    cmd += ["-map", "0:v"]
    if opts.audio:
        cmd += ["-map", "1:a"]
    if info.width % 2 or info.height % 2:  # yuv420p needs even sizes
        cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
            "-g", str(gop), "-sc_threshold", "0", "-r", rate]
    if opts.bitrate:
        cmd += ["-b:v", f"{opts.bitrate}k", "-maxrate", f"{opts.bitrate}k", "-bufsize", f"{2 * opts.bitrate}k"]
    if opts.audio:
        cmd += ["-c:a", "aac", "-b:a", "128k", "-shortest"]
    if opts.format:
        cmd += ["-f", opts.format]
    if opts.format == "flv":
        cmd += ["-flvflags", "no_duration_filesize"]
    if opts.local_path is not None:
        cmd += ["-flush_packets", "1"]  # to the OS at every packet: a killed ffmpeg loses almost nothing
    if opts.network and opts.timeout:
        # also covers the connect and the RTMP handshake: a server that accepts and never answers
        cmd += ["-rw_timeout", str(int(opts.timeout * 1_000_000))]
    cmd.append(target or opts.target)
    return cmd


def segment_path(path: str, n: int) -> str:
    """`out.ts` -> `out.1.ts` (n=1): the file a restarted ffmpeg writes instead of overwriting."""
    root, ext = os.path.splitext(path)
    return f"{root}.{n}{ext}"


@functools.lru_cache(maxsize=1)
def _prctl():
    """libc's prctl on Linux (loaded once, before any fork), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_this_thread():
    """A `preexec_fn` that has the kernel SIGKILL the child when the thread starting it ends
    (PR_SET_PDEATHSIG follows the thread), or None where that does not exist. It runs between fork
    and exec and only makes two system calls, so it cannot deadlock on a lock of another thread."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the run died before the signal was armed
            os._exit(1)

    return preexec


class FfmpegProcess:
    """One ffmpeg subprocess: stdin is a non-blocking pipe we hand frames to, stderr is appended to a
    log file.

    A frame is handed over with `offer` and `pump`: what the pipe does not take at once stays
    `busy` and is pumped later, so the caller (the clock) is never stuck in a write to an ffmpeg that
    stopped reading. `progress_at` is when ffmpeg last took bytes. `stop()` always leaves no process
    behind: finish the frame in flight, close stdin, wait, then terminate, then kill.
    """

    def __init__(self, cmd: list[str], log_path: str) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.started_at = time.monotonic()
        with open(log_path, "ab") as log_file:
            log_file.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
            log_file.flush()
            try:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                             stderr=log_file, bufsize=0, start_new_session=True,
                                             preexec_fn=_die_with_this_thread())
            except OSError as exc:
                raise SinkError(f"cannot start ffmpeg ({cmd[0]}): {exc}; install ffmpeg or put it on PATH") from exc
        self._fd = self.proc.stdin.fileno()
        os.set_blocking(self._fd, False)
        self._writable = select.poll()  # not select(): that fails for descriptors >= 1024
        self._writable.register(self._fd, select.POLLOUT)
        self._pending: memoryview | None = None
        self.progress_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def busy(self) -> bool:
        """ffmpeg has not taken all of the last frame yet."""
        return self._pending is not None

    def stuck(self, now: float) -> bool:
        """Busy, ffmpeg took nothing for `_STUCK_AFTER` seconds, and it is past its start-up."""
        return (self._pending is not None and now - self.started_at > _STARTUP_ALLOWANCE
                and now - self.progress_at > _STUCK_AFTER)

    def offer(self, data: memoryview) -> bool:
        """Start handing one frame over (only when not `busy`); False when ffmpeg is gone."""
        if self._pending is not None:
            raise RuntimeError("ffmpeg process: a frame is still being handed over")
        self._pending = data
        return self.pump(0.0)

    def pump(self, wait: float) -> bool:
        """Hand over what is pending, waiting up to `wait` seconds for ffmpeg to take it. False when
        ffmpeg is gone (EPIPE); the frame in flight is then lost."""
        deadline = time.monotonic() + wait
        while self._pending is not None:
            try:
                n = os.write(self._fd, self._pending)
            except BlockingIOError:
                n = 0
            except (OSError, ValueError):  # EPIPE: ffmpeg exited
                self._pending = None
                return False
            if n:
                self.progress_at = time.monotonic()
                rest = self._pending[n:]
                self._pending = rest if len(rest) else None
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._writable.poll(max(1, int(left * 1000)))
        return True

    def kill(self) -> None:
        """SIGKILL ffmpeg now (any thread); the clock then sees EPIPE and treats it as an exit."""
        try:
            self.proc.kill()
        except OSError:
            pass

    def stop(self, timeout: float = 5.0) -> int | None:
        """End ffmpeg: finish the frame in flight, close stdin (it finishes the stream), wait,
        terminate, kill. Returns the exit code. A stuck ffmpeg (see `stuck`) is not waited for: it
        gets SIGTERM after 0.5 s (ffmpeg then abandons its blocked network I/O)."""
        stuck = self.stuck(time.monotonic())
        if self._pending is not None and not stuck and self.alive():
            self.pump(timeout)
        self._pending = None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        first_wait = min(timeout, 0.5) if stuck else timeout
        for action, wait in ((None, first_wait), (self.proc.terminate, 2.0), (self.proc.kill, 5.0)):
            if action is not None:
                try:
                    action()
                except ProcessLookupError:
                    pass
            try:
                return self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()


class _Backoff:
    """Exponential backoff between restarts: 0.5 s, 1 s, 2 s ... up to `cap`; reset after a stable run."""

    def __init__(self, first: float = 0.5, cap: float = 10.0, stable: float = 5.0) -> None:
        self.first, self.cap, self.stable = first, cap, stable
        self.delay = first
        self.failures = 0  # restarts in a row that did not stay up for `stable` seconds

    def failed(self, uptime: float) -> float:
        """Record an exit after `uptime` seconds; return how long to wait before the next start."""
        if uptime >= self.stable:
            self.delay, self.failures = self.first, 0
        delay = self.delay
        self.failures += 1
        self.delay = min(self.cap, self.delay * 2)
        return delay


class _Pacer(threading.Thread):
    """The clock: every 1/fps seconds take the next frame (or repeat the last) and hand it to ffmpeg.

    Owns the ffmpeg process and its restarts; nothing else touches it while running, except
    `FfmpegSink.restart_target`/`interrupt`, which only kill it (the clock then sees EPIPE). Every
    process is started from this thread, so the kernel kills it when this thread ends.
    """

    def __init__(self, sink: "FfmpegSink") -> None:
        super().__init__(name=f"ffmpeg-pacer[{sink.name}]", daemon=True)
        self.sink = sink
        self.proc: FfmpegProcess | None = None
        self.backoff = _Backoff()
        self.restart_at = 0.0
        self.error: str | None = None
        self.starts = 0

    # The queue, counters and events live on the sink; the lock there guards them.
    def run(self) -> None:
        sink = self.sink
        period = 1.0 / sink.info.fps
        try:
            if not self._wait_preroll():
                return
            last: np.ndarray | None = None
            next_tick = time.monotonic()
            while not sink._abort.is_set():
                if sink._closing.is_set() and self.proc is None and self.starts:
                    self._drop_queue()  # closing during an outage: nothing more can be sent
                    break
                if not self._waiting_for_ffmpeg():
                    frame, finished = sink._take(paused=sink._paused.is_set())
                    if finished and frame is None:
                        break
                    if frame is not None:
                        last = frame
                    elif last is not None:
                        sink._count("held" if sink._paused.is_set() else "repeated")
                    if last is not None:
                        self._emit(last, fresh=frame is not None)
                self._beat()
                next_tick += period
                if next_tick - time.monotonic() < -1.0:  # more than a second late: resynchronise the clock
                    next_tick = time.monotonic()
                self._wait_until(next_tick)  # hands pending bytes to ffmpeg meanwhile
        except Exception as exc:  # never die silently: write() reports it
            self.error = f"ffmpeg sink clock failed: {exc!r}"
            log.exception("ffmpeg sink %s: clock failed", sink.name)
        finally:
            self._stop_process()
            sink._space.set()

    def _waiting_for_ffmpeg(self) -> bool:
        """ffmpeg is still taking the last frame and is not stuck: skip this tick (back-pressure, like
        a blocking write). A dead or stuck ffmpeg is handled by `_emit` (frames dropped)."""
        proc = self.proc
        if proc is None or not proc.busy:
            return False
        if not proc.pump(0.0):
            self._lost()
            return False
        return proc.busy and not proc.stuck(time.monotonic())

    def _drop_queue(self) -> None:
        """Drop every queued frame at once (counted): a closing sink whose ffmpeg is down."""
        with self.sink._lock:
            dropped = len(self.sink._queue)
            self.sink._queue.clear()
            self.sink._stats["dropped"] += dropped

    def _beat(self) -> None:
        """The sink's heartbeat for the runtime's watchdog: every tick, except while ffmpeg holds a
        frame it does not take (then the time it last took bytes)."""
        proc, sink = self.proc, self.sink
        if proc is None or not proc.busy:
            sink.heartbeat()
        elif proc.progress_at > sink.last_heartbeat:
            sink.last_heartbeat = proc.progress_at

    def _wait_until(self, when: float) -> None:
        """Sleep until `when`, handing the frame in flight to ffmpeg meanwhile. Not an Event wait: a
        new frame must not advance the clock."""
        while True:
            left = when - time.monotonic()
            if left <= 0:
                return
            proc = self.proc
            if proc is not None and proc.busy:
                if not proc.pump(left):
                    self._lost()
                continue
            time.sleep(left)
            return

    def _wait_preroll(self) -> bool:
        """Buffer `preroll` seconds of frames (or until close) before the first tick."""
        sink = self.sink
        need = max(1, int(round(sink.options.preroll * sink.info.fps)))
        while not sink._closing.is_set():
            sink.heartbeat()  # waiting for frames is not being stuck
            with sink._lock:
                if len(sink._queue) >= need:
                    return True
            sink._wake.wait(0.05)
            sink._wake.clear()
        with sink._lock:
            return bool(sink._queue) and not sink._abort.is_set()

    def _emit(self, frame: np.ndarray, fresh: bool) -> None:
        """Hand one frame to ffmpeg; while ffmpeg is down or stuck, drop it (and restart ffmpeg when
        the backoff allows)."""
        sink = self.sink
        now = time.monotonic()
        if self.proc is None or not self.proc.alive():
            if self.proc is not None:
                self._lost()
            # no restart for the last queued frames of a closing sink (a first start still happens)
            if now < self.restart_at or (self.starts and sink._closing.is_set()) or not self._start():
                if fresh:
                    sink._count("dropped")
                return
        if self.proc.busy:  # stuck (see _waiting_for_ffmpeg): an outage, generation goes on
            if fresh:
                sink._count("dropped")
            return
        if self.proc.offer(memoryview(frame).cast("B")):
            sink._count("sent")
        else:
            self._lost()
            if fresh:
                sink._count("dropped")

    def _start(self) -> bool:
        sink = self.sink
        limit = sink.options.retries
        if limit and self.backoff.failures > limit:
            self.error = (f"ffmpeg sink {sink.name}: gave up after {self.backoff.failures - 1} restarts in a row; "
                          f"see {sink.log_path}")
            sink._closing.set()
            return False
        target, overwrite = sink._next_target(restart=self.starts > 0)
        self.proc = FfmpegProcess(ffmpeg_command(sink.options, sink.info, sink.binary, target=target,
                                                 overwrite=overwrite), sink.log_path)
        self.starts += 1
        if self.starts > 1:
            sink._count("reconnects")
            where = f" into {target} (earlier files are kept)" if sink.options.local_path is not None else ""
            log.warning("ffmpeg sink %s: restarted ffmpeg (pid %d)%s", sink.name, self.proc.pid, where)
        return True

    def _lost(self) -> None:
        """ffmpeg died: reap it, log one line, schedule the next start."""
        proc, self.proc = self.proc, None
        code = proc.stop(timeout=1.0)
        delay = self.backoff.failed(time.monotonic() - proc.started_at)
        self.restart_at = time.monotonic() + delay
        log.warning("ffmpeg sink %s: ffmpeg exited (code %s), retrying in %.1f s; log: %s",
                    self.sink.name, code, delay, self.sink.log_path)

    def _stop_process(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=0.0 if self.sink._abort.is_set() else self.sink.stop_timeout)
            self.proc = None


class FfmpegSink(Sink):
    """Paced constant-frame-rate output through ffmpeg (see the module docstring).

    `paths`: for a local file target, every file an ffmpeg of this sink was started on, in order.
    """

    policy = "block"
    clocked = True  # the clock heartbeats on every tick: silence means ffmpeg is stuck

    def __init__(self, options: FfmpegOptions, name: str | None = None, *, queue_frames: int = 4,
                 stop_timeout: float = 5.0, binary: str | None = None) -> None:
        super().__init__(name or options.target)
        self.options = options
        self.queue_frames = queue_frames
        self.stop_timeout = stop_timeout
        self.binary = binary or shutil.which("ffmpeg") or "ffmpeg"
        self.log_path = options.log
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._capacity = queue_frames
        self._lock = threading.Lock()
        self._wake = threading.Event()  # nudges the clock (new frame, close)
        self._space = threading.Event()  # nudges a blocked write()
        self._closing = threading.Event()
        self._paused = threading.Event()
        self._abort = threading.Event()  # interrupt(): end now, drop what is queued
        self._restart_asked_at = 0.0
        self.paths: list[str] = []
        self._stats = {"sent": 0, "repeated": 0, "held": 0, "dropped": 0, "reconnects": 0}
        self._pacer: _Pacer | None = None

    # -- control ------------------------------------------------------------------------------------
    def pause(self) -> None:
        """Hold the picture: keep sending the last frame and take no new ones (write() then blocks)."""
        self._paused.set()

    def resume(self) -> None:
        """Continue with the queued frames after `pause()`."""
        self._paused.clear()
        self._wake.set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def stats(self) -> dict:
        """Counters for the status line: sent, repeated, held, dropped, reconnects, queued."""
        with self._lock:
            return dict(self._stats, queued=len(self._queue))

    def prepare(self) -> None:
        """Called by the runtime before the producer starts: fail now (SinkError) without ffmpeg."""
        if not (shutil.which(self.binary) or os.path.isfile(self.binary)):
            raise SinkError(f"sink {self.name}: ffmpeg not found ({self.binary!r}); install ffmpeg (apt-get install ffmpeg)")

    # -- the runtime's watchdog ------------------------------------------------------------------------
    def restart_target(self) -> bool:
        """ffmpeg took no data for the sink timeout: kill it; the clock's reconnect logic starts a new
        one (with its backoff). False (detach the sink) when there is no ffmpeg to kill, or when the
        previous restart was not followed by a single heartbeat (the clock itself is stuck)."""
        pacer = self._pacer
        proc = pacer.proc if pacer is not None and pacer.is_alive() else None
        if proc is None or (self._restart_asked_at and self.last_heartbeat < self._restart_asked_at):
            return False
        self._restart_asked_at = time.monotonic()
        log.warning("ffmpeg sink %s: ffmpeg (pid %d) took no data for too long; killing it, it restarts",
                    self.name, proc.pid)
        proc.kill()
        return True

    def interrupt(self) -> None:
        """The sink is being detached: stop taking frames, end the clock and kill ffmpeg now."""
        self._abort.set()
        self._closing.set()
        self._wake.set()
        self._space.set()
        pacer = self._pacer
        proc = pacer.proc if pacer is not None else None
        if proc is not None:
            proc.kill()

    def _next_target(self, restart: bool) -> tuple[str, bool]:
        """(target, overwrite) for the next ffmpeg. A restart on a local file whose earlier file exists
        writes the next free segment name instead (`out.1.ts`), never over what was written."""
        path = self.options.local_path
        if path is None:
            return self.options.target, True
        if not restart:
            self.paths.append(path)
            return self.options.target, True
        current = self.paths[-1]
        if os.path.exists(current):
            n = len(self.paths)
            while os.path.exists(segment_path(path, n)):
                n += 1
            current = segment_path(path, n)
            self.paths.append(current)
        prefix = self.options.target[: len(self.options.target) - len(path)]  # "file:" or ""
        return prefix + current, False

    # -- Sink -----------------------------------------------------------------------------------------
    def _open(self, info: StreamInfo) -> None:
        self.prepare()
        if info.fps <= 0:
            raise SinkError(f"sink {self.name}: fps must be > 0, got {info.fps}")
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="continuityseq-ffmpeg-", suffix=".log")
            os.close(fd)
        else:
            try:
                open(self.log_path, "ab").close()
            except OSError as exc:
                raise SinkError(f"sink {self.name}: cannot write ffmpeg log {self.log_path!r}: {exc}") from exc
        preroll_frames = int(round(self.options.preroll * info.fps))
        self._capacity = max(self.queue_frames, preroll_frames + 2)
        self._pacer = _Pacer(self)
        self._pacer.start()

    def _write(self, frame: np.ndarray, meta: FrameMeta) -> None:
        info = self.info
        if frame.shape != (info.height, info.width, 3) or frame.dtype != np.uint8:
            raise SinkError(f"sink {self.name}: frame {meta.index} is {frame.dtype} {frame.shape}, "
                            f"expected uint8 {(info.height, info.width, 3)}")
        copy = np.ascontiguousarray(frame).copy()
        while True:
            self._raise_if_failed()
            with self._lock:
                if len(self._queue) < self._capacity:
                    self._queue.append(copy)
                    self._space.clear()
                    break
            self._space.wait(0.1)
        self._wake.set()

    def _raise_if_failed(self) -> None:
        pacer = self._pacer
        if pacer is not None and pacer.error:
            raise SinkError(pacer.error)
        if self._abort.is_set():
            raise SinkError(f"sink {self.name}: interrupted (detached by the runtime)")
        if self._closing.is_set():
            raise SinkError(f"sink {self.name}: write after close")

    def _take(self, paused: bool) -> tuple[np.ndarray | None, bool]:
        """For the clock: (next frame or None, whether the sink is closing)."""
        with self._lock:
            frame = None if paused and not self._closing.is_set() else (self._queue.popleft() if self._queue else None)
            if frame is not None:
                self._space.set()
            return frame, self._closing.is_set()

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _close(self) -> None:
        """Drain the queue at the output rate, then end ffmpeg; bounded in time."""
        pacer = self._pacer
        self._closing.set()
        self._wake.set()
        if pacer is None:
            return
        with self._lock:
            queued = len(self._queue)
        pacer.join(queued / self.info.fps + self.stop_timeout + 10.0)
        if pacer.is_alive():  # a pipe write is stuck: kill ffmpeg so the clock can finish
            proc = pacer.proc
            if proc is not None:
                proc.proc.kill()
            pacer.join(5.0)


def from_uri(uri: str) -> FfmpegSink:
    """`rtmp://host/app/key[?opts]`, `rtmps://...`, `ffmpeg:URL[?opts | #opts]` -> FfmpegSink."""
    return FfmpegSink(FfmpegOptions.parse(uri), name=display_name(uri))


def display_name(uri: str) -> str:
    """The URI without options, and with an RTMP stream key masked (it is a secret) for logs."""
    base = uri.split("#")[0].split("?")[0]
    if base.startswith(("rtmp://", "rtmps://")) and base.count("/") >= 4:
        head, _, key = base.rpartition("/")
        if key:
            return f"{head}/{key[:2]}***"
    return base
