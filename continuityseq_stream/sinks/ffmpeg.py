"""Live output through an ffmpeg subprocess: `rtmp://...`, `rtmps://...` and `ffmpeg:URL`.

Raw rgb24 frames go to ffmpeg's stdin; ffmpeg encodes H.264 (x264 `ultrafast` + `zerolatency`,
yuv420p, a keyframe every 2 s) and sends FLV to an RTMP server, or whatever format the target needs.

A live server drops a stream whose frames stop coming, so a clock thread (`pacer.Pacer`) sends exactly one
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

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qsl

import numpy as np

from ..chunk import FrameMeta
from ..errors import SinkError
from .options import parse_bool, parse_number, sink_error
from .base import Sink, StreamInfo
from .ffmpeg_process import FfmpegProcess
from .pacer import FrameQueue, Pacer

log = logging.getLogger(__name__)

__all__ = ["FfmpegOptions", "FfmpegSink", "from_uri"]

_OPTION_NAMES = ("audio", "preroll", "log", "format", "bitrate", "retries", "timeout")

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
        self._queue = FrameQueue(queue_frames)
        self._restart_asked_at = 0.0
        self.paths: list[str] = []
        self._pacer: Pacer | None = None

    # -- control ------------------------------------------------------------------------------------
    def pause(self) -> None:
        """Hold the picture: keep sending the last frame and take no new ones (write() then blocks)."""
        self._queue.paused.set()

    def resume(self) -> None:
        """Continue with the queued frames after `pause()`."""
        self._queue.paused.clear()
        self._queue.wake.set()

    @property
    def paused(self) -> bool:
        return self._queue.paused.is_set()

    def stats(self) -> dict:
        """Counters for the status line: sent, repeated, held, dropped, reconnects, queued."""
        return self._queue.stats()

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
        q = self._queue
        q.abort.set()
        q.closing.set()
        q.wake.set()
        q.space.set()
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
        self._queue.capacity = max(self.queue_frames, preroll_frames + 2)
        self._pacer = Pacer(self.name, self._queue, self._launch, self._beat, fps=info.fps,
                            preroll=self.options.preroll, retries=self.options.retries,
                            stop_timeout=self.stop_timeout, log_path=self.log_path,
                            local_file=self.options.local_path is not None)
        self._pacer.start()

    def _launch(self, restart: bool) -> tuple[FfmpegProcess, str]:
        """For the clock: start the next ffmpeg (a restart on a local file writes the next segment)."""
        target, overwrite = self._next_target(restart=restart)
        command = ffmpeg_command(self.options, self.info, self.binary, target=target, overwrite=overwrite)
        return FfmpegProcess(command, self.log_path), target

    def _beat(self, at: Optional[float]) -> None:
        """For the clock: the watchdog's heartbeat now (None), or at `at` (when ffmpeg last took bytes)."""
        if at is None:
            self.heartbeat()
        elif at > self.last_heartbeat:
            self.last_heartbeat = at

    def _write(self, frame: np.ndarray, meta: FrameMeta) -> None:
        info = self.info
        if frame.shape != (info.height, info.width, 3) or frame.dtype != np.uint8:
            raise SinkError(f"sink {self.name}: frame {meta.index} is {frame.dtype} {frame.shape}, "
                            f"expected uint8 {(info.height, info.width, 3)}")
        self._queue.put(np.ascontiguousarray(frame).copy(), self._raise_if_failed)

    def _raise_if_failed(self) -> None:
        pacer = self._pacer
        if pacer is not None and pacer.error:
            raise SinkError(pacer.error)
        if self._queue.abort.is_set():
            raise SinkError(f"sink {self.name}: interrupted (detached by the runtime)")
        if self._queue.closing.is_set():
            raise SinkError(f"sink {self.name}: write after close")

    def _close(self) -> None:
        """Drain the queue at the output rate, then end ffmpeg; bounded in time."""
        pacer = self._pacer
        self._queue.closing.set()
        self._queue.wake.set()
        if pacer is None:
            return
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
