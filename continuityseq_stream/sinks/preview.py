"""`preview`: an OpenCV window showing the frames at the output fps; q, Esc or closing it ends the run.

Two rules shape this module:

- `cv2.imshow` without a usable display aborts the whole process (SIGABRT, cannot be caught). So
  `check_display()` first checks DISPLAY and then opens a window in a throw-away subprocess; only when
  that works does the sink create its own window. The CLI should call `check_display()` at startup,
  before the producer starts, so a missing display is one clear error and nothing else has begun.
- GUI toolkits want every window call on one thread (OpenCV's Qt backend deadlocks when a second
  thread makes a window after the first one ended). One process-wide `_GuiThread` makes all cv2 calls
  (create, show, poll keys, destroy) for every preview window; `open`, `write` and `close` only hand
  it data and events, so they may be called from any thread.

`write()` paces the frames to the output fps (it returns when the frame's display slot has come), so
the frames of a chunk that arrives at once still play smoothly; the policy is "latest": when
generation is faster than real time, the ring skips frames for this sink instead of waiting for it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

from ..chunk import FrameMeta
from ..errors import ConfigError, SinkError
from .base import Sink, StreamInfo

__all__ = ["PreviewSink", "check_display", "from_uri"]

DEFAULT_TITLE = "continuityseq-stream"
_STOP_KEYS = (ord("q"), ord("Q"), 27)  # q, Q, Esc
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


class _Window:
    """One preview window's state, shared between the sink (any thread) and the GUI thread."""

    def __init__(self, title: str, wants_stop: threading.Event) -> None:
        self.title = title
        self.wants_stop = wants_stop
        self.ready = threading.Event()
        self.done = threading.Event()  # destroyed (closed by the user or by the sink)
        self.error: BaseException | None = None
        self.shown = 0
        self.frame: np.ndarray | None = None
        self.seq = 0
        self.shown_seq = 0
        self.closing = False


class _GuiThread(threading.Thread):
    """The one thread of this process that calls cv2's window functions, for every preview window.

    OpenCV's Qt backend binds its GUI objects to the thread that made the first window, and later
    calls from other threads wait on that one: so there is exactly one such thread per process, and it
    lives as long as the process (a daemon). It shows each window's newest frame, polls keys every few
    milliseconds, and sets a window's `wants_stop` on q/Esc or when the user closed it.
    """

    _instance: "_GuiThread | None" = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> "_GuiThread":
        with cls._instance_lock:
            if cls._instance is None or not cls._instance.is_alive():
                cls._instance = cls()
                cls._instance.start()
                atexit.register(cls._instance.shutdown)
            return cls._instance

    def shutdown(self) -> None:
        """At interpreter exit: destroy the windows and end the loop while Python still runs (a GUI
        thread killed mid-call at shutdown can abort the process)."""
        self._quit.set()
        self._wake.set()
        self.join(5)

    def __init__(self) -> None:
        super().__init__(name="preview-gui", daemon=True)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._windows: list[_Window] = []
        self._quit = threading.Event()

    def add(self, window: _Window) -> None:
        with self._lock:
            self._windows.append(window)
        self._wake.set()

    def show(self, window: _Window, frame_bgr: np.ndarray) -> None:
        with self._lock:
            window.frame = frame_bgr
            window.seq += 1

    def remove(self, window: _Window) -> None:
        with self._lock:
            window.closing = True
        self._wake.set()

    def run(self) -> None:
        import cv2

        while not self._quit.is_set():
            with self._lock:
                windows = list(self._windows)
            if not windows:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            for w in windows:
                self._step(cv2, w)
            with self._lock:
                self._windows = [w for w in self._windows if not w.done.is_set()]
            key = cv2.waitKey(5)
            if key != -1 and (key & 0xFF) in _STOP_KEYS:
                for w in windows:
                    w.wants_stop.set()
        with self._lock:
            windows, self._windows = self._windows, []
        for w in windows:
            self._destroy(cv2, w)

    def _step(self, cv2, w: _Window) -> None:
        try:
            if not w.ready.is_set():
                cv2.namedWindow(w.title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
                w.ready.set()
            if w.closing:
                self._destroy(cv2, w)
                return
            with self._lock:
                frame, seq = w.frame, w.seq
            if seq != w.shown_seq and frame is not None:
                cv2.imshow(w.title, frame)
                w.shown_seq = seq
                w.shown += 1
            elif w.shown_seq and not self._visible(cv2, w.title):
                w.wants_stop.set()  # closed by the user: stop the run, and do not show it again
                w.done.set()
        except Exception as exc:
            w.error = exc
            w.ready.set()
            self._destroy(cv2, w)

    @staticmethod
    def _visible(cv2, title: str) -> bool:
        """False once the user closed the window (the Qt backend then raises instead of returning 0)."""
        try:
            return cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            return False

    @staticmethod
    def _destroy(cv2, w: _Window) -> None:
        try:
            cv2.destroyWindow(w.title)
            cv2.waitKey(1)
        except Exception:
            pass
        w.done.set()


class PreviewSink(Sink):
    """A window that plays the frames at the output fps (see the module docstring)."""

    policy = "latest"

    def __init__(self, title: str = DEFAULT_TITLE, name: str = "preview") -> None:
        super().__init__(name)
        self.title = title
        self._window: _Window | None = None
        self._closing = threading.Event()
        self._next_slot: float | None = None

    @property
    def shown(self) -> int:
        """Frames the window has drawn so far (a newer frame may replace one not yet drawn)."""
        return self._window.shown if self._window else 0

    def stats(self) -> dict:
        return {"shown": self.shown}

    def prepare(self) -> None:
        """Called by the runtime before the producer starts: fail now (SinkError) if there is no display."""
        check_display()

    def _open(self, info: StreamInfo) -> None:
        check_display()
        self._window = _Window(self.title, self.wants_stop)
        _GuiThread.get().add(self._window)
        if not self._window.ready.wait(20) or self._window.error:
            raise SinkError(f"preview: cannot create the window: {self._window.error or 'timed out'}")

    def _write(self, frame: np.ndarray, meta: FrameMeta) -> None:
        window = self._window
        if window is None or window.done.is_set():
            if window is not None and window.error:
                raise SinkError(f"preview: the window failed: {window.error}")
            return  # window closed by the user: wants_stop is set, the runtime is stopping
        period = 1.0 / self.info.fps
        now = time.monotonic()
        slot = now if self._next_slot is None else max(self._next_slot, now)
        if slot > now:
            self._closing.wait(slot - now)
        _GuiThread.get().show(window, np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR, a copy
        self._next_slot = slot + period

    def _close(self) -> None:
        self._closing.set()
        window = self._window
        if window is not None and not window.done.is_set():
            _GuiThread.get().remove(window)
            window.done.wait(10)


def from_uri(uri: str) -> PreviewSink:
    """`preview` -> PreviewSink (no options)."""
    if uri.strip() != "preview":
        raise ConfigError(f"--sink {uri!r}: the preview sink takes no options; use --sink preview")
    return PreviewSink()
