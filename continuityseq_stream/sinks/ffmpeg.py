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

URI options (sink options, parsed strictly; unknown names are a ConfigError):

    audio=0|1        add a silent AAC track (anullsrc); some services refuse video-only streams
    preroll=SECONDS  buffer this much video before going live (a cushion for slow chunks), 0..60
    log=PATH         ffmpeg's stderr is appended here (default: a temp file, see `log_path`)
    format=NAME      output container (default: flv for rtmp/rtmps, guessed by ffmpeg otherwise)
    bitrate=KBPS     constant-ish video bitrate (-b:v/-maxrate/-bufsize); default x264 CRF 23
    retries=N        give up (write() raises SinkError) after N failed restarts in a row; 0 = never

Options normally go in the query (`rtmp://host/app/key?audio=1&preroll=2`). When the target URL needs
its own query string, put the sink options after `#` instead; the query then goes to ffmpeg
unchanged: `ffmpeg:udp://127.0.0.1:1234?pkt_size=1316#format=mpegts`.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import subprocess
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

_OPTION_NAMES = ("audio", "preroll", "log", "format", "bitrate", "retries")


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
        )


def ffmpeg_command(opts: FfmpegOptions, info: StreamInfo, binary: str = "ffmpeg") -> list[str]:
    """The ffmpeg command line: raw rgb24 on stdin -> x264 zerolatency (+ silent AAC) -> target."""
    fps = info.fps
    rate = f"{fps:g}"
    gop = max(1, int(round(2 * fps)))
    cmd = [binary, "-hide_banner", "-nostats", "-loglevel", "info", "-y",
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
    cmd.append(opts.target)
    return cmd


class FfmpegProcess:
    """One ffmpeg subprocess: stdin is a pipe we write frames to, stderr is appended to a log file.

    `stop()` always leaves no process behind: close stdin, wait, then terminate, then kill.
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
                                             stderr=log_file, start_new_session=True)
            except OSError as exc:
                raise SinkError(f"cannot start ffmpeg ({cmd[0]}): {exc}; install ffmpeg or put it on PATH") from exc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, data: memoryview) -> bool:
        """Write one frame; False when ffmpeg is gone (EPIPE, exited)."""
        try:
            self.proc.stdin.write(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ValueError, OSError):
            return False

    def stop(self, timeout: float = 5.0) -> int | None:
        """End ffmpeg: close stdin (it finishes the stream), wait, terminate, kill. Returns the exit code."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        for action, wait in ((None, timeout), (self.proc.terminate, 2.0), (self.proc.kill, 5.0)):
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

    Owns the ffmpeg process and its restarts; nothing else touches it while running.
    """

    def __init__(self, sink: "FfmpegSink") -> None:
        super().__init__(name=f"ffmpeg-pacer[{sink.name}]", daemon=True)
        self.sink = sink
        self.proc: FfmpegProcess | None = None
        self.backoff = _Backoff()
        self.restart_at = 0.0
        self.error: str | None = None

    # The queue, counters and events live on the sink; the lock there guards them.
    def run(self) -> None:
        sink = self.sink
        period = 1.0 / sink.info.fps
        try:
            if not self._wait_preroll():
                return
            last: np.ndarray | None = None
            next_tick = time.monotonic()
            while True:
                frame, finished = sink._take(paused=sink._paused.is_set())
                if finished and frame is None:
                    break
                if frame is not None:
                    last = frame
                elif last is not None:
                    sink._count("held" if sink._paused.is_set() else "repeated")
                if last is not None:
                    self._emit(last, fresh=frame is not None)
                next_tick += period
                delay = next_tick - time.monotonic()
                if delay < -1.0:  # more than a second late (stalled pipe): resynchronise the clock
                    next_tick = time.monotonic()
                elif delay > 0:
                    time.sleep(delay)  # not an Event wait: a new frame must not advance the clock
        except Exception as exc:  # never die silently: write() reports it
            self.error = f"ffmpeg sink clock failed: {exc!r}"
            log.exception("ffmpeg sink %s: clock failed", sink.name)
        finally:
            self._stop_process()
            sink._space.set()

    def _wait_preroll(self) -> bool:
        """Buffer `preroll` seconds of frames (or until close) before the first tick."""
        sink = self.sink
        need = max(1, int(round(sink.options.preroll * sink.info.fps)))
        while not sink._closing.is_set():
            with sink._lock:
                if len(sink._queue) >= need:
                    return True
            sink._wake.wait(0.05)
            sink._wake.clear()
        with sink._lock:
            return bool(sink._queue)

    def _emit(self, frame: np.ndarray, fresh: bool) -> None:
        """Send one frame to ffmpeg; while ffmpeg is down, drop it and restart when the backoff allows."""
        sink = self.sink
        now = time.monotonic()
        if self.proc is None or not self.proc.alive():
            if self.proc is not None:
                self._lost()
            if now < self.restart_at:
                if fresh:
                    sink._count("dropped")
                return
            if not self._start():
                if fresh:
                    sink._count("dropped")
                return
        if self.proc.send(memoryview(frame).cast("B")):
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
        self.proc = FfmpegProcess(ffmpeg_command(sink.options, sink.info, sink.binary), sink.log_path)
        if self.backoff.failures:
            sink._count("reconnects")
            log.warning("ffmpeg sink %s: restarted ffmpeg (pid %d)", sink.name, self.proc.pid)
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
            self.proc.stop(timeout=self.sink.stop_timeout)
            self.proc = None


class FfmpegSink(Sink):
    """Paced constant-frame-rate output through ffmpeg (see the module docstring)."""

    policy = "block"

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
