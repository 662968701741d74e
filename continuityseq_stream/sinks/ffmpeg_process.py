"""One ffmpeg subprocess fed through a non-blocking stdin pipe (`FfmpegProcess`), which dies with
the thread that started it (Linux: PR_SET_PDEATHSIG) and never leaves a process behind."""

from __future__ import annotations

import os
import select
import subprocess
import time

from ..errors import SinkError
from ..ipc import die_with_this_thread

__all__ = ["FfmpegProcess"]

#: seconds ffmpeg may take no data before the clock counts it as an outage and drops frames
_STUCK_AFTER = 1.0
#: a new ffmpeg connects to its target before it reads frames (an RTMP handshake with a distant
#: server takes a second or two): it is never counted as stuck this early
_STARTUP_ALLOWANCE = 3.0


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
                                             preexec_fn=die_with_this_thread())
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
