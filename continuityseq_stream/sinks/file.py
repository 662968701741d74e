"""File sink: H.264 (libx264, yuv420p) through PyAV into a container that survives a crash.

A plain mp4 writes its index (`moov`) at the end, so a process killed with SIGKILL leaves an
unplayable file. This sink writes *fragmented* mp4 (`movflags=frag_keyframe+empty_moov+
default_base_moof`) or Matroska (`.mkv`): the header goes first and every fragment is
self-describing, so a killed run leaves a file that plays up to the last flushed fragment. A key
frame (and so a fragment) is forced every `keyint` frames (default: one second of video) and the
muxer flushes every packet to the OS, so at most about a second is lost.

Timestamps are constant-fps: a frame's pts is its `FrameMeta.index` (relative to the current
segment) in units of 1/fps, so the timeline never drifts, whatever the generation speed.

URI forms (`from_uri`):

    file:out.mp4                       one file
    file:out.mkv                       Matroska instead of fragmented mp4
    file:out_%03d.mp4?segment=600      a new file every 600 s of video (24/7 runs), numbered 000, 001...
    file:out.mp4?crf=18&preset=veryfast&keyint=16

Options: crf an integer in [0, 51]; preset one of x264's presets (`options.X264_PRESETS`); keyint
frames in [1, 100000]; segment seconds in [1, 1e9], with a name that formats as a counter (checked by
formatting it, so `out_%.mp4` is refused at once, not when the first segment is due).

Errors raise one line naming the path: `SinkError` for a target that fails (unwritable directory),
`ConfigError` for a bad option (bad input: the run does not start). Both come from the constructor,
before any frame exists.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qsl

import numpy as np

from ..chunk import FrameMeta
from ..errors import ConfigError, SinkError
from .options import X264_PRESETS, parse_choice, parse_number, sink_error
from .base import Sink, StreamInfo

__all__ = ["FileSink", "from_uri"]

_FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
_OPTIONS = ("segment", "crf", "preset", "keyint")
#: shortest segment: below a second a segment is shorter than the default key-frame interval
MIN_SEGMENT_SECONDS = 1.0


class _BadArgument(ConfigError):
    """A FileSink argument that cannot work; `problem` is the message without the sink's name, so
    `from_uri` can restate it about the `--sink` URI."""

    def __init__(self, pattern: str, problem: str) -> None:
        super().__init__(f"file sink {pattern!r}: {problem}")
        self.problem = problem


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _counter_problem(pattern: str) -> Optional[str]:
    """Why `pattern` cannot name numbered segments (None when it can). Formatting it with two
    numbers is the test: `%` errors (`out_%.mp4`: ValueError, no counter: TypeError) and names that
    do not change with the number are all caught here rather than when the first segment is due."""
    try:
        first, second = pattern % 0, pattern % 1
    except (TypeError, ValueError) as e:
        return (f"segment= needs one printf counter in the name, e.g. out_%03d.mp4 ({e}; write %% for a "
                "literal %)")
    if first == second:
        return "segment= needs a counter that changes the name, e.g. out_%03d.mp4"
    return None


def _argument_problem(pattern: str, crf, preset, keyint, segment_seconds) -> Optional[str]:
    """The first FileSink argument that cannot work, as "name=value: what works", or None."""
    if not _is_int(crf) or not 0 <= crf <= 51:
        return f"crf={crf!r}: use an integer in [0, 51] (lower is better quality; 18 is near lossless)"
    if preset not in X264_PRESETS:
        return f"preset={preset!r}: use one of {', '.join(X264_PRESETS)}"
    if keyint is not None and (not _is_int(keyint) or keyint < 1):
        return f"keyint={keyint!r}: use a number of frames >= 1"
    if segment_seconds is not None:
        if (not isinstance(segment_seconds, (int, float)) or isinstance(segment_seconds, bool)
                or not math.isfinite(segment_seconds) or segment_seconds < MIN_SEGMENT_SECONDS):
            return f"segment={segment_seconds!r}: use a finite number of seconds >= {MIN_SEGMENT_SECONDS:g}"
        return _counter_problem(pattern)
    return None


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


class FileSink(Sink):
    """Writes frames to a crash-safe H.264 file (or a series of files with `segment_seconds`).

    path: target file; with `segment_seconds` it must contain a printf-style counter (`%03d`),
        e.g. ``out_%03d.mp4``. `.mkv` gives Matroska, anything else fragmented mp4.
    crf, preset: libx264 quality / speed (defaults 18, "veryfast").
    keyint: frames between key frames = fragments (default: round(fps), one second).
    segment_seconds: start a new file every so many seconds of video (at a frame boundary).
    """

    policy = "block"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        crf: int = 18,
        preset: str = "veryfast",
        keyint: Optional[int] = None,
        segment_seconds: Optional[float] = None,
    ) -> None:
        super().__init__(f"file:{path}")
        self.pattern = str(path)
        problem = _argument_problem(self.pattern, crf, preset, keyint, segment_seconds)
        if problem is not None:
            raise _BadArgument(self.pattern, problem)
        self.crf, self.preset, self.keyint = crf, preset, keyint
        self.segment_seconds = segment_seconds
        self._check_writable(Path(self._segment_path(0)))
        self.paths: list[str] = []  # every file written, in order
        self._container = None
        self._stream = None
        self._segment = -1
        self._segment_first = 0  # global index of the current segment's first frame
        self._frames_per_segment: Optional[int] = None

    def retarget(self, path: str | os.PathLike) -> None:
        """Write to `path` instead (same options; before the first frame): a resumed run keeps the
        earlier run's file and writes a new one (resume.keep_earlier_files)."""
        if self._container is not None or self.paths:
            raise RuntimeError("file sink: retarget() before the first frame only")
        problem = _argument_problem(str(path), self.crf, self.preset, self.keyint, self.segment_seconds)
        if problem is not None:
            raise _BadArgument(str(path), problem)
        self.pattern, self.name = str(path), f"file:{path}"
        self._check_writable(Path(self._segment_path(0)))

    # -- helpers --------------------------------------------------------------------------------
    def _segment_path(self, n: int) -> str:
        return self.pattern % n if self.segment_seconds is not None else self.pattern

    @staticmethod
    def _check_writable(path: Path) -> None:
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise SinkError(f"file sink: directory {str(parent)!r} does not exist; create it or choose another path")
        if not os.access(parent, os.W_OK):
            raise SinkError(f"file sink: directory {str(parent)!r} is not writable; choose another path")
        if path.is_dir():
            raise SinkError(f"file sink: {str(path)!r} is a directory; give a file name such as out.mp4")

    def _start_segment(self, n: int, first_index: int) -> None:
        import av  # imported here so that `--help` and other sinks do not pay for it

        info = self.info
        assert info is not None
        path = self._segment_path(n)
        self._check_writable(Path(path))
        mkv = path.lower().endswith((".mkv", ".webm"))
        fmt_options = {} if mkv else dict(_FRAGMENTED_MP4)
        try:
            container = av.open(
                path, mode="w", format="matroska" if mkv else "mp4", options=fmt_options,
                container_options={"flush_packets": "1"},
            )
        except (OSError, av.FFmpegError) as e:
            raise SinkError(f"file sink: cannot open {path!r} for writing: {e}") from None
        rate = _fps_fraction(info.fps)
        keyint = int(self.keyint) if self.keyint else max(1, round(info.fps))
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = info.width, info.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = 1 / rate
        stream.codec_context.time_base = 1 / rate
        stream.codec_context.gop_size = keyint
        # zerolatency: no lookahead/B-frame delay, so packets (and fragments) leave at once.
        stream.options = {
            "crf": str(self.crf), "preset": self.preset, "tune": "zerolatency",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0",
        }
        self._container, self._stream = container, stream
        self._segment, self._segment_first = n, first_index
        self.paths.append(path)

    def _finish_segment(self) -> None:
        container, stream = self._container, self._stream
        self._container = self._stream = None
        if container is None:
            return
        try:
            for packet in stream.encode(None):
                container.mux(packet)
        finally:
            container.close()

    # -- Sink -----------------------------------------------------------------------------------
    def _open(self, info: StreamInfo) -> None:
        if info.width % 2 or info.height % 2:
            raise SinkError(f"file sink: H.264 yuv420p needs an even size, got {info.width}x{info.height}")
        if self.segment_seconds is not None:
            self._frames_per_segment = max(1, round(self.segment_seconds * info.fps))

    def _write(self, frame: np.ndarray, meta: FrameMeta) -> None:
        import av

        if self._frames_per_segment is not None:
            n = meta.index // self._frames_per_segment
            if n != self._segment:
                self._finish_segment()
                self._start_segment(n, n * self._frames_per_segment)
        elif self._container is None:
            self._start_segment(0, 0)
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = meta.index - self._segment_first
        try:
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
        except (OSError, av.FFmpegError) as e:
            raise SinkError(f"file sink: writing {self.paths[-1]!r} failed: {e}") from None

    def _close(self) -> None:
        self._finish_segment()


def from_uri(uri: str) -> FileSink:
    """`file:PATH[?segment=SECONDS&crf=N&preset=NAME&keyint=FRAMES]` -> FileSink."""
    body = uri[len("file:"):] if uri.startswith("file:") else uri
    if body.startswith("//"):
        body = body[2:]
    path, _, query = body.partition("?")
    if not path:
        raise sink_error(uri, "give a path, e.g. file:out.mp4")
    kwargs: dict = {}
    # option typos are bad input (ConfigError: the run does not start), not a failing target
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in _OPTIONS:
            raise sink_error(uri, f"unknown option {key!r}; known: {', '.join(_OPTIONS)}")
        if key == "segment":
            kwargs["segment_seconds"] = parse_number(uri, key, value, float, MIN_SEGMENT_SECONDS, 1e9)
        elif key == "preset":
            kwargs["preset"] = parse_choice(uri, key, value, X264_PRESETS)
        elif key == "crf":
            kwargs["crf"] = parse_number(uri, key, value, int, 0, 51)
        else:
            kwargs[key] = parse_number(uri, key, value, int, 1, 100_000)
    try:
        return FileSink(path, **kwargs)
    except _BadArgument as e:  # e.g. a segment pattern that does not format: restated about the URI
        raise sink_error(uri, e.problem) from None
