"""`preview`: an OpenCV window showing the frames at the output fps; q, Esc or closing it ends the run.

Two rules shape this module:

- `cv2.imshow` without a usable display aborts the whole process (SIGABRT, cannot be caught). So
  `check_display()` first checks DISPLAY and then opens a window in a throw-away subprocess; only when
  that works does the sink create its own window. The sink's `prepare()` calls it, which the runtime
  does before the producer starts, so a missing display is one clear error and nothing else has begun.
- The window lives in its own small process (the script `preview_window.py`), fed raw frames through
  a pipe: OpenCV's Qt backend wants to own the GUI thread of a process, and inside the runtime's
  process (torch, PyAV, the sink threads) its window sometimes never came up. `open`, `write` and
  `close` may be called from any thread. That script also works around Qt losing the window's map
  event under load (the window stayed black): see its docstring.

`write()` paces the frames to the output fps (it returns when the frame's display slot has come), so
the frames of a chunk that arrives at once still play smoothly; the policy is "latest": when
generation is faster than real time, the ring skips frames for this sink instead of waiting for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

from ..chunk import FrameMeta
from ..errors import SinkError
from .options import sink_error
from .base import Sink, StreamInfo

__all__ = ["PreviewSink", "check_display", "from_uri"]

DEFAULT_TITLE = "continuityseq-stream"
#: the window process (a plain script: it imports nothing from the package)
_WINDOW_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preview_window.py")
_checked: set[str] = set()  # displays that passed the probe in this process

_PROBE = (
    "import cv2, numpy as np\n"
    "cv2.namedWindow('continuityseq-probe', cv2.WINDOW_AUTOSIZE)\n"
    "cv2.imshow('continuityseq-probe', np.zeros((8, 8, 3), np.uint8))\n"
    "cv2.waitKey(1)\n"
    "cv2.destroyAllWindows()\n"
    "cv2.waitKey(1)\n"
)


def check_display(timeout: float = 20.0) -> str:
    """Raise SinkError unless OpenCV can open a window; returns the DISPLAY that works.

    Checks that DISPLAY is set, that the X server answers (`xdpyinfo`, when installed) and that a cv2
    window can be created — in a subprocess, because a failure there aborts the process.
    """
    display = os.environ.get("DISPLAY", "")
    if not display:
        raise SinkError("preview: no display (DISPLAY is not set); run it in a desktop session, "
                        "under `xvfb-run`, or leave out --sink preview")
    if display in _checked:
        return display
    if shutil.which("xdpyinfo"):
        try:
            answer = subprocess.run(["xdpyinfo"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, timeout=min(timeout, 10.0))
        except subprocess.TimeoutExpired:
            raise SinkError(f"preview: the X server at DISPLAY={display} does not answer (xdpyinfo timed out)") from None
        if answer.returncode != 0:
            why = answer.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
            raise SinkError(f"preview: cannot connect to the X server at DISPLAY={display} ({why[0]}); "
                            "check DISPLAY and X authorization (xauth), or leave out --sink preview")
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SinkError(f"preview: opening a test window on DISPLAY={display} took over {timeout:g} s") from None
    if probe.returncode != 0:
        lines = [ln for ln in probe.stderr.decode(errors="replace").splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {probe.returncode}"
        raise SinkError(f"preview: OpenCV cannot open a window on DISPLAY={display} ({why}); "
                        "a GUI build of opencv-python and a working X display are needed")
    _checked.add(display)
    return display


class PreviewSink(Sink):
    """A window that plays the frames at the output fps (see the module docstring)."""

    policy = "latest"

    def __init__(self, title: str = DEFAULT_TITLE, name: str = "preview") -> None:
        super().__init__(name)
        self.title = title
        self._proc: subprocess.Popen | None = None
        self._ready = threading.Event()
        self._gone = threading.Event()  # the window process ended (closed by the user, or failed)
        self._closing = threading.Event()
        self._next_slot: float | None = None
        self._shown = 0

    @property
    def shown(self) -> int:
        """Frames the window has drawn so far (a newer frame may replace one not yet drawn)."""
        return self._shown

    def stats(self) -> dict:
        return {"shown": self._shown}

    def prepare(self) -> None:
        """Called by the runtime before the producer starts: fail now (SinkError) if there is no display."""
        check_display()

    def _open(self, info: StreamInfo) -> None:
        check_display()
        self._proc = subprocess.Popen(
            [sys.executable, _WINDOW_SCRIPT, str(info.width), str(info.height), self.title],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        threading.Thread(target=self._events, name=f"{self.name}-events", daemon=True).start()
        if not self._ready.wait(30) or self._gone.is_set():
            self._stop_window(0.0)
            raise SinkError("preview: cannot create the window (the window process did not start in 30 s)")

    def _events(self) -> None:
        """Read the window process's one-word lines: ready, shown, stop."""
        for line in self._proc.stdout:
            word = line.strip()
            if word == b"ready":
                self._ready.set()
            elif word == b"shown":
                self._shown += 1
            elif word == b"stop":
                self.wants_stop.set()
        self._gone.set()
        self._ready.set()
        if self._shown and not self._closing.is_set():
            self.wants_stop.set()  # the user closed the window: end the run

    def _write(self, frame: np.ndarray, meta: FrameMeta) -> None:
        if self._gone.is_set():
            return  # window closed by the user: wants_stop is set, the runtime is stopping
        period = 1.0 / self.info.fps
        now = time.monotonic()
        slot = now if self._next_slot is None else max(self._next_slot, now)
        if slot > now:
            self._closing.wait(slot - now)
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame[..., ::-1]).tobytes())  # RGB -> BGR
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            return  # the window process just ended; `_events` saw it
        self._next_slot = slot + period

    def _close(self) -> None:
        self._closing.set()
        self._stop_window(10.0)

    def _stop_window(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # end of frames: the window process destroys its window and exits
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def from_uri(uri: str) -> PreviewSink:
    """`preview` -> PreviewSink (no options)."""
    if uri.strip() != "preview":
        raise sink_error(uri, "the preview sink takes no options; use preview")
    return PreviewSink()
