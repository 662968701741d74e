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

Errors raise one line naming the path: `SinkError` for a target that fails (unwritable directory),
`ConfigError` for a bad option (bad input: the run does not start).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qsl

import numpy as np

from ..chunk import FrameMeta
from ..errors import ConfigError, SinkError
from .options import parse_number
from .base import Sink, StreamInfo

__all__ = ["FileSink", "from_uri"]

_FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
_OPTIONS = ("segment", "crf", "preset", "keyint")


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
        self.crf, self.preset, self.keyint = int(crf), str(preset), keyint
        self.segment_seconds = segment_seconds
        if segment_seconds is not None:
            if not segment_seconds > 0:
                raise ConfigError(f"file sink: segment={segment_seconds!r}; use a positive number of seconds")
            try:
                self.pattern % 0
            except TypeError:
                raise ConfigError(
                    f"file sink {self.pattern!r}: segment= needs a counter in the name, e.g. out_%03d.mp4"
                ) from None
        if keyint is not None and int(keyint) < 1:
            raise ConfigError(f"file sink: keyint={keyint!r}; use a number of frames >= 1")
        self._check_writable(Path(self._segment_path(0)))
        self.paths: list[str] = []  # every file written, in order
        self._container = None
        self._stream = None
        self._segment = -1
        self._segment_first = 0  # global index of the current segment's first frame
        self._frames_per_segment: Optional[int] = None

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
        raise ConfigError(f"--sink {uri!r}: give a path, e.g. file:out.mp4")
    kwargs: dict = {}
    # option typos are bad input (ConfigError: the run does not start), not a failing target
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in _OPTIONS:
            raise ConfigError(f"--sink {uri!r}: unknown option {key!r}; known: {', '.join(_OPTIONS)}")
        if key == "segment":
            kwargs["segment_seconds"] = parse_number(uri, key, value, float, 0.001, 1e9)
        elif key == "preset":
            kwargs["preset"] = value
        elif key == "crf":
            kwargs["crf"] = parse_number(uri, key, value, int, 0, 51)
        else:
            kwargs[key] = parse_number(uri, key, value, int, 1, 100_000)
    return FileSink(path, **kwargs)
