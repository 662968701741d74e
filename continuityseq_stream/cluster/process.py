"""`ServeProcess`: one stream's `continuityseq-stream serve` child process, started and stopped.

Each stream of a multi-stream service is the single-stream service itself (producer, ring, sinks,
HTTP API, WebRTC viewers, metrics, health) in a process of its own: everything a stream offers is
the tested single-stream code, and a stream that crashes takes nothing else with it.

The child binds `host` on a free port (read back from its "serving on URL" line), its bearer token
comes through the environment (never the process list), and it saves its state in `state_dir`
after every chunk; a later start with the same folder resumes the same video (`--resume`). Its
stderr is appended to `log_path`, never an unread pipe. `die_with_parent` ties the child to the
thread that started it (Linux PR_SET_PDEATHSIG): a Ray actor's stream dies with the actor's worker,
so the restarted actor never finds a second copy still writing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..ipc import die_with_this_thread

__all__ = ["ServeProcess", "STATE_FILE", "check_state_root", "alive_serve_process"]

#: the file `--state-dir` writes after every chunk; its presence means "resume"
STATE_FILE = "state.safetensors"
_SERVING = re.compile(rb"serving on (http://\S+/) ")
TOKEN_ENV = "CONTINUITYSEQ_TOKEN"


class ServeProcess:
    def __init__(self, argv: list[str], state_dir: Path, log_path: Path, *, host: str, token: str,
                 die_with_parent: bool = False, env: Optional[dict] = None) -> None:
        self.argv, self.state_dir, self.log_path = list(argv), Path(state_dir), Path(log_path)
        self.host, self.token, self.die_with_parent, self.env = host, token, die_with_parent, env
        self.proc: Optional[subprocess.Popen] = None
        self.url: Optional[str] = None
        self.resumed = False
        self._log_start = 0
        self.started_at = time.monotonic()

    @property
    def pid(self) -> Optional[int]:
        return None if self.proc is None else self.proc.pid

    def command(self) -> list[str]:
        """The child's command line: serve with the stream's flags, then the service's own."""
        self.resumed = (self.state_dir / STATE_FILE).exists()
        where = ["--resume", str(self.state_dir)] if self.resumed else ["--state-dir", str(self.state_dir)]
        return [sys.executable, "-m", "continuityseq_stream.cli", "serve", *self.argv,
                "--host", self.host, "--port", "0", *where]

    def start(self) -> None:
        cmd = self.command()
        env = dict(os.environ if self.env is None else self.env)
        env[TOKEN_ENV] = self.token
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if self.resumed else 'start'}\n".encode())
            log.flush()
            self._log_start = log.tell()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                         env=env, start_new_session=True,
                                         preexec_fn=die_with_this_thread() if self.die_with_parent else None)
        self.url = None
        self.started_at = time.monotonic()

    def adopt(self, pid: int, url: str) -> None:
        """Take over a child that still runs (started by an earlier service on this machine)."""
        self.proc, self.url, self.started_at = _Adopted(pid), url, 0.0
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0

    def _log_tail(self) -> bytes:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return log.read(1 << 20)
        except OSError:
            return b""

    def last_line(self) -> str:
        """The child's last log line since it started (its one-line error when it failed)."""
        lines = [line.strip() for line in self._log_tail().decode("utf-8", "replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def wait_serving(self, timeout: float) -> str:
        """Wait for the child's "serving on URL" line; its URL. ConfigError with the child's own one
        line when it exits first (bad flags: exit status 2), or when it says nothing in time."""
        deadline = time.monotonic() + timeout
        while True:
            found = _SERVING.search(self._log_tail())
            if found:
                self.url = found.group(1).decode()
                return self.url
            code = self.poll()
            if code is not None:
                line = self.last_line() or f"serve exited with status {code}"
                raise ConfigError(_strip_prefixes(line))
            if time.monotonic() > deadline:
                self.kill()
                raise ConfigError(f"the stream did not start serving within {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.1)

    def poll(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM (the run stops within its bounded time, the state is saved), then SIGKILL of the
        whole group; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the child's process group (producer, ffmpeg) and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def check_state_root(path: str) -> Path:
    """The folder every stream saves in (one sub-folder per stream), created; ConfigError when it
    cannot be."""
    root = Path(path).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--state-root: cannot write in {str(root)!r} ({exc.strerror or exc}); "
                          f"choose a writable folder") from None
    return root


def _strip_prefixes(line: str) -> str:
    """The child's one error line without its program name and "error:" (the API adds its own frame)."""
    for prefix in ("continuityseq-stream:", "error:", "Error:"):
        if line.startswith(prefix):
            line = line[len(prefix):].strip()
    return line


class _Adopted:
    """The parts of `subprocess.Popen` the service uses, for a process it did not start (it cannot
    reap it or learn its exit status: a vanished process counts as died, status -9)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        import psutil

        if self.returncode is None:
            try:
                if psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE:
                    self.returncode = -signal.SIGKILL
            except psutil.Error:
                self.returncode = -signal.SIGKILL
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.1)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


def alive_serve_process(pid: Optional[int], state_dir: Path) -> bool:
    """Whether `pid` is still a serve process saving in `state_dir` (not a reused PID)."""
    import psutil

    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and str(state_dir) in proc.cmdline()
    except psutil.Error:
        return False
