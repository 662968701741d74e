"""Real servers for the streaming tests: nginx-rtmp, an X server (Xvfb), and a PyAV RTMP reader.

Everything listens on 127.0.0.1 (free ports) or on a private X display, is started by the test and
stopped by PID; `assert_no_children` checks nothing was left behind.

Run as a script, this file is the RTMP reader the tests start in a subprocess (under `timeout -s KILL`,
because a stuck network read cannot be interrupted from Python):

    python tests/servers.py read rtmp://127.0.0.1:PORT/live/test --frames 40 --deadline 20 [--reconnect]

It prints one JSON object: frames read per connection, size, frame rate, mean colours.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
HERE = Path(__file__).resolve().parent
DOCS_NGINX = HERE.parent / "docs" / "streaming.md"
NGINX_HEREDOC = "cat > rtmp.conf <<'EOF'\n"


def _die_with_parent() -> None:
    """preexec_fn: the server gets SIGKILL when the thread that started it ends (Linux's parent-death
    signal follows the thread), so a crashed test leaves nothing: start servers from the main thread."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_pid(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate, then kill, one process we started; always reaps it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def children_named(*names: str) -> list:
    """Live child processes of this test process whose name is one of `names`."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name() in names and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def assert_no_children(*names: str, grace: float = 3.0) -> None:
    names = names or ("ffmpeg", "nginx", "Xvfb")
    deadline = time.monotonic() + grace
    while children_named(*names) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = children_named(*names)
    assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"


def docs_nginx_config() -> str:
    """The nginx config that docs/streaming.md tells users to write (`cat > rtmp.conf <<'EOF'` ... `EOF`):
    the tests run exactly that, so the documented config cannot rot."""
    text = DOCS_NGINX.read_text()
    start = text.index(NGINX_HEREDOC) + len(NGINX_HEREDOC)
    return text[start:text.index("\nEOF\n", start) + 1]


def nginx_config(port: int) -> str:
    """The docs' nginx config listening on 127.0.0.1:`port` instead of 1935 (its pid file and error log
    are relative to nginx's `-p` prefix folder)."""
    config = docs_nginx_config()
    assert "listen 127.0.0.1:1935;" in config, f"{DOCS_NGINX}: the rtmp.conf block must listen on 127.0.0.1:1935"
    return config.replace("127.0.0.1:1935", f"127.0.0.1:{port}")


class NginxRtmp:
    """nginx with the RTMP module, in the foreground from the docs' config in a temp dir, on a free port.

    `restart()` kills it (SIGKILL, as a crashed server) and starts it again on the same port.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if not shutil.which("nginx") or not os.path.exists(RTMP_MODULE):
            raise FileNotFoundError(f"nginx or {RTMP_MODULE} missing (apt-get install nginx libnginx-mod-rtmp)")
        self.dir = Path(workdir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(nginx_config(self.port))

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/test"

    def start(self) -> "NginxRtmp":
        with open(self.dir / "logs" / "stderr.log", "ab") as stderr:
            self._spawn(stderr)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nginx did not start: {(self.dir / 'logs' / 'stderr.log').read_text()[-2000:]}")
        return self

    def _spawn(self, stderr) -> None:
        self.proc = subprocess.Popen(
            ["nginx", "-e", str(self.dir / "logs" / "error.log"), "-c", str(self.conf), "-p", str(self.dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=stderr, preexec_fn=_die_with_parent)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None

    def __enter__(self) -> "NginxRtmp":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SilentTcpServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers (nor reads): what a
    hung RTMP server or a black-holing proxy looks like to a client. Runs in a thread of the test;
    `connections` counts the accepted ones; `stop()` closes everything."""

    def __init__(self) -> None:
        import threading

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-tcp-server", daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self._held.append(conn)
            self.connections += 1

    def rtmp_url(self, key: str = "test") -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def wait_connections(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.connections < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.connections >= n

    def start(self) -> "SilentTcpServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()

    def __enter__(self) -> "SilentTcpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Xvfb:
    """A private X server; `-displayfd` lets Xvfb pick a free display number itself (no races)."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        if not shutil.which("Xvfb"):
            raise FileNotFoundError("Xvfb not installed (apt-get install xvfb)")
        self.width, self.height = width, height
        self.proc: subprocess.Popen | None = None
        self.display: str | None = None

    def start(self) -> "Xvfb":
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{self.width}x{self.height}x24",
             "-nolisten", "tcp", "-noreset"],
            pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        os.close(write_fd)
        try:
            number = b""
            deadline = time.monotonic() + 15
            import select

            while not number.endswith(b"\n") and time.monotonic() < deadline:
                ready, _, _ = select.select([read_fd], [], [], 0.5)
                if ready:
                    part = os.read(read_fd, 16)
                    if not part:
                        break
                    number += part
            if not number.strip():
                self.stop()
                raise RuntimeError("Xvfb did not report a display number")
            self.display = ":" + number.decode().strip()
        finally:
            os.close(read_fd)
        return self

    def env(self, **extra) -> dict:
        env = dict(os.environ, DISPLAY=self.display, **extra)
        env.pop("WAYLAND_DISPLAY", None)
        return env

    def screenshot(self):
        """The whole screen as a uint8 [H, W, 3] RGB array (ffmpeg x11grab, one frame)."""
        import numpy as np

        out = subprocess.run(
            ["timeout", "-s", "KILL", "20", "ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "x11grab",
             "-video_size", f"{self.width}x{self.height}", "-i", self.display, "-frames:v", "1",
             "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
            stdin=subprocess.DEVNULL, capture_output=True, check=True)
        return np.frombuffer(out.stdout, np.uint8).reshape(self.height, self.width, 3)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None

    def __enter__(self) -> "Xvfb":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def close_window(display: str, title: str) -> int:
    """Ask the window named `title` to close, as a window manager's close button does (a
    WM_DELETE_WINDOW client message, sent with libX11 through ctypes; this xdotool has no windowclose).
    Returns how many windows were asked."""
    import ctypes
    import ctypes.util

    ids = subprocess.run(["xdotool", "search", "--name", title], env=dict(os.environ, DISPLAY=display),
                         capture_output=True, text=True, timeout=10).stdout.split()
    x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XInternAtom.restype = ctypes.c_ulong
    x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x11.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    x11.XFlush.argtypes = x11.XCloseDisplay.argtypes = [ctypes.c_void_p]

    class ClientMessage(ctypes.Structure):
        _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                    ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                    ("format", ctypes.c_int), ("data", ctypes.c_long * 5), ("pad", ctypes.c_long * 12)]

    dpy = x11.XOpenDisplay(display.encode())
    assert dpy, f"cannot open {display}"
    try:
        for wid in ids:
            ev = ClientMessage(type=33, send_event=1, display=dpy, window=int(wid),  # 33 = ClientMessage
                               message_type=x11.XInternAtom(dpy, b"WM_PROTOCOLS", 0), format=32)
            ev.data[0] = x11.XInternAtom(dpy, b"WM_DELETE_WINDOW", 0)
            x11.XSendEvent(dpy, int(wid), 0, 0, ctypes.byref(ev))
        x11.XFlush(dpy)
    finally:
        x11.XCloseDisplay(dpy)
    return len(ids)


class RtmpReader:
    """Runs this file's `read` command in a subprocess (under `timeout -s KILL`); `result()` is its JSON."""

    def __init__(self, url: str, frames: int, deadline: float, reconnect: bool = False,
                 open_timeout: float = 10.0, read_timeout: float = 3.0) -> None:
        self.deadline = deadline
        cmd = ["timeout", "-s", "KILL", str(int(deadline + 15)), sys.executable, str(HERE / "servers.py"), "read", url,
               "--frames", str(frames), "--deadline", str(deadline), "--open-timeout", str(open_timeout),
               "--read-timeout", str(read_timeout)] + (["--reconnect"] if reconnect else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        # wait until the reader is about to connect (PyAV imported), then give the RTMP handshake and
        # `play` a moment: a reader that joins a live stream late only starts at the next keyframe
        first = self.proc.stdout.readline()
        assert first.strip() == "connecting", f"RTMP reader did not start: {first!r}"
        time.sleep(0.7)

    def result(self) -> dict:
        try:
            text, _ = self.proc.communicate(timeout=self.deadline + 20)
        finally:
            stop_pid(self.proc)
        assert text.strip(), f"RTMP reader printed nothing (exit {self.proc.returncode})"
        return json.loads(text.strip().splitlines()[-1])


def _read_main(argv: list[str]) -> None:
    """`read URL`: read an RTMP stream with PyAV until --frames frames, --deadline, or (without
    --reconnect) the first read timeout. nginx never sends end-of-stream, so timeouts end the read."""
    import argparse

    import av
    import numpy as np

    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--deadline", type=float, default=20.0)
    ap.add_argument("--open-timeout", type=float, default=10.0)
    ap.add_argument("--read-timeout", type=float, default=3.0)
    ap.add_argument("--reconnect", action="store_true")
    a = ap.parse_args(argv)
    end = time.monotonic() + a.deadline
    result = {"segments": [], "width": None, "height": None, "rate": None, "means": [], "times": [], "pts": [],
              "first_frame_s": None, "errors": []}
    t0 = time.monotonic()
    total = 0
    print("connecting", flush=True)
    while time.monotonic() < end and total < a.frames:
        count = 0
        try:
            with av.open(a.url, timeout=(max(1.0, min(a.open_timeout, end - time.monotonic())), a.read_timeout),
                         options={"analyzeduration": "1000000", "probesize": "32768", "rtmp_buffer": "100"}) as c:
                stream = c.streams.video[0]
                result["rate"] = float(stream.average_rate or stream.guessed_rate or 0) or None
                for frame in c.decode(stream):
                    if result["first_frame_s"] is None:
                        result["first_frame_s"] = time.monotonic() - t0
                    result["width"], result["height"] = frame.width, frame.height
                    rgb = frame.to_ndarray(format="rgb24")
                    result["means"].append([round(float(v), 1) for v in rgb.reshape(-1, 3).mean(0)])
                    result["times"].append(round(time.monotonic() - t0, 3))
                    if frame.time is not None:
                        result["pts"].append(round(float(frame.time), 4))
                    count += 1
                    total += 1
                    if total >= a.frames or time.monotonic() >= end:
                        break
        except Exception as exc:  # timeouts and dropped connections end a segment
            when = f"{time.monotonic() - t0:.1f}s after {count} frames"
            result["errors"].append(f"{when}: {type(exc).__name__}: {exc}"[:200])
        if count:
            result["segments"].append(count)
        if not a.reconnect:
            break
        time.sleep(0.2)
    result["frames"] = total
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "read":
        _read_main(sys.argv[2:])
    else:
        sys.exit(__doc__)
