"""The preview's window process: `python preview_window.py WIDTH HEIGHT TITLE`, BGR frames on stdin.

Run as a plain script by `PreviewSink` (it imports nothing from the package, so it starts fast and
works from a checkout). A reader thread keeps only the newest frame; the main thread shows it with
OpenCV, polls keys and prints one word per line on stdout: "ready" once the window exists, "shown"
per frame handed to the window, "stop" on q / Esc and when the user closed the window (then it
exits). End of stdin closes the window.

Why the window is sent Expose events (`_Exposer`): OpenCV's Qt backend (Qt 5.15 in opencv-python)
paints a window only after it has seen the window's MapNotify/Expose from the X server. When the
window is resized while it is being mapped (its layout and the first frame set its size; on a
loaded machine these land in one burst) Qt sometimes drops those events (its xcb event log showed
them missing): the window is mapped but Qt never paints it, and it stays black for good while every
frame is "shown". On Xvfb with two busy loops that was 16 new windows in 42; an unmap/map of the
window (xdotool) made it paint at once, a plain Expose did not (Qt paints only a window it saw
mapped). So, a few times after the first frame, this process sends its own windows the MapNotify
Qt may have missed and an Expose (`XSendEvent`, `XClearArea(..., exposures=True)`, through its own
X connection; Qt's windows have no background, so nothing flickers): Qt repaints from its backing
store. With it: 0 black windows in 30 under the same load.
"""

import ctypes
import ctypes.util
import os
import sys
import threading
import time

#: seconds after the first frame at which the window is sent an Expose event
EXPOSE_AFTER = (0.2, 0.6, 1.5, 3.0)


class _XMapEvent(ctypes.Structure):
    """Xlib's XMapEvent, padded to the size of an XEvent (24 longs)."""

    _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                ("display", ctypes.c_void_p), ("event", ctypes.c_ulong), ("window", ctypes.c_ulong),
                ("override_redirect", ctypes.c_int), ("pad", ctypes.c_long * 24)]


_MAP_NOTIFY, _STRUCTURE_NOTIFY_MASK = 19, 1 << 17


class _Exposer:
    """Sends MapNotify + Expose to the top-level windows of this process (libX11 through ctypes).

    Windows are found by their `_NET_WM_PID` (Qt sets it), searched from the root a few levels deep
    (a window manager puts client windows inside frames). Does nothing when libX11 or the display
    cannot be had: the window then just keeps Qt's own behaviour."""

    def __init__(self) -> None:
        self.x11 = None
        name = ctypes.util.find_library("X11")
        if not name:
            return
        try:
            x11 = ctypes.cdll.LoadLibrary(name)
        except OSError:
            return
        vp, ul, u, i = ctypes.c_void_p, ctypes.c_ulong, ctypes.c_uint, ctypes.c_int
        x11.XOpenDisplay.restype, x11.XOpenDisplay.argtypes = vp, [ctypes.c_char_p]
        x11.XDefaultRootWindow.restype, x11.XDefaultRootWindow.argtypes = ul, [vp]
        x11.XInternAtom.restype, x11.XInternAtom.argtypes = ul, [vp, ctypes.c_char_p, i]
        x11.XQueryTree.restype = i
        x11.XQueryTree.argtypes = [vp, ul, ctypes.POINTER(ul), ctypes.POINTER(ul),
                                   ctypes.POINTER(ctypes.POINTER(ul)), ctypes.POINTER(u)]
        x11.XGetWindowProperty.restype = i
        x11.XGetWindowProperty.argtypes = [vp, ul, ul, ctypes.c_long, ctypes.c_long, i, ul, ctypes.POINTER(ul),
                                           ctypes.POINTER(i), ctypes.POINTER(ul), ctypes.POINTER(ul),
                                           ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte))]
        x11.XClearArea.argtypes = [vp, ul, i, i, u, u, i]
        x11.XSendEvent.restype = i
        x11.XSendEvent.argtypes = [vp, ul, i, ctypes.c_long, ctypes.POINTER(_XMapEvent)]
        x11.XFree.argtypes = [vp]
        x11.XFlush.argtypes = [vp]
        x11.XCloseDisplay.argtypes = [vp]
        self.x11 = x11

    def expose(self) -> int:
        """Send every top-level window of this process a MapNotify and an Expose; returns how many."""
        if self.x11 is None:
            return 0
        x11 = self.x11
        display = x11.XOpenDisplay(None)
        if not display:
            return 0
        try:
            pid_atom = x11.XInternAtom(display, b"_NET_WM_PID", 1)
            if not pid_atom:
                return 0
            windows = [w for w in self._tree(display, x11.XDefaultRootWindow(display), 3)
                       if self._pid(display, w, pid_atom) == os.getpid()]
            for w in windows:
                # the MapNotify Qt may have lost (it paints only windows it saw mapped), then an Expose
                event = _XMapEvent(type=_MAP_NOTIFY, send_event=1, display=display, event=w, window=w)
                x11.XSendEvent(display, w, 0, _STRUCTURE_NOTIFY_MASK, ctypes.byref(event))
                x11.XClearArea(display, w, 0, 0, 0, 0, 1)  # 0 x 0 = the whole window; 1 = send Expose
            x11.XFlush(display)
            return len(windows)
        finally:
            x11.XCloseDisplay(display)

    def _tree(self, display, window, depth: int) -> list:
        """`window`'s descendants down to `depth` levels."""
        root, parent = ctypes.c_ulong(), ctypes.c_ulong()
        children, count = ctypes.POINTER(ctypes.c_ulong)(), ctypes.c_uint()
        if not self.x11.XQueryTree(display, window, ctypes.byref(root), ctypes.byref(parent),
                                   ctypes.byref(children), ctypes.byref(count)):
            return []
        found = [children[k] for k in range(count.value)]
        if children:
            self.x11.XFree(children)
        if depth > 1:
            found += [w for child in list(found) for w in self._tree(display, child, depth - 1)]
        return found

    def _pid(self, display, window, atom):
        """The window's `_NET_WM_PID`, or None."""
        kind, fmt, n, after = ctypes.c_ulong(), ctypes.c_int(), ctypes.c_ulong(), ctypes.c_ulong()
        data = ctypes.POINTER(ctypes.c_ubyte)()
        status = self.x11.XGetWindowProperty(display, window, atom, 0, 1, 0, 6,  # 6 = XA_CARDINAL
                                             ctypes.byref(kind), ctypes.byref(fmt), ctypes.byref(n),
                                             ctypes.byref(after), ctypes.byref(data))
        if status != 0 or not data:
            return None
        try:
            # format 32 comes back as C longs
            return ctypes.cast(data, ctypes.POINTER(ctypes.c_long))[0] if fmt.value == 32 and n.value else None
        finally:
            self.x11.XFree(data)


def _say(word: str) -> None:
    try:
        sys.stdout.write(word + "\n")
        sys.stdout.flush()
    except OSError:
        pass


def main(argv: list) -> None:
    import cv2
    import numpy as np

    w, h, title = int(argv[0]), int(argv[1]), argv[2]
    size, latest, lock, eof = w * h * 3, [None], threading.Lock(), threading.Event()

    def read() -> None:
        while True:
            data = sys.stdin.buffer.read(size)
            if len(data) < size:
                eof.set()
                return
            with lock:
                latest[0] = data

    threading.Thread(target=read, daemon=True).start()
    cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
    _say("ready")
    exposer, first_shown, exposes = _Exposer(), None, list(EXPOSE_AFTER)
    while not eof.is_set():
        with lock:
            data, latest[0] = latest[0], None
        if data is not None:
            cv2.imshow(title, np.frombuffer(data, np.uint8).reshape(h, w, 3))
            first_shown = first_shown or time.monotonic()
            _say("shown")
        key = cv2.waitKey(5)
        if first_shown is not None and exposes and time.monotonic() - first_shown >= exposes[0]:
            exposes.pop(0)
            exposer.expose()
        if key != -1 and (key & 0xFF) in (ord("q"), ord("Q"), 27):
            _say("stop")
        elif first_shown is not None:
            try:
                visible = cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) >= 1
            except cv2.error:
                visible = False
            if not visible:
                _say("stop")
                break
    cv2.destroyAllWindows()
    cv2.waitKey(1)


if __name__ == "__main__":
    main(sys.argv[1:])
