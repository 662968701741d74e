"""Helpers for the `serve` tests: start `continuityseq-stream serve` on the synthetic source in its own
process (a free port, read back from its "serving on" line), talk HTTP to it, stop it by PID."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Optional

SOURCE = "continuityseq_stream.demo.synthetic_source:synthetic_stream"
W, H, F, FPS = 64, 48, 4, 20
BASE = ["serve", "--model", "demo-random", "-WI", str(W), "-HI", str(H), "-T", str(F), "-s", "2", "-f", str(FPS),
        "-r", "3", "--source", SOURCE, "--port", "0"]


class Served:
    """A running `serve` process: its URL, its stderr lines (read on a thread), stop()."""

    def __init__(self, args: list[str], prompt: str = "a red fox", env: Optional[dict] = None,
                 ready_timeout: float = 120.0) -> None:
        cmd = [sys.executable, "-m", "continuityseq_stream.cli", *BASE, "-p", prompt, *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                     env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env or {})))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_url(ready_timeout)

    def _read(self) -> None:
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def _wait_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.match(r"serving on (http://\S+/) ", line)
                if m:
                    return m.group(1)
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.lines}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"serve printed no URL in {timeout} s: {self.lines}")

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "condition", period: float = 0.1):
        """Poll `predicate()` until it returns something truthy; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            assert self.proc.poll() is None, f"serve exited {self.proc.returncode} waiting for {what}: {self.lines}"
            time.sleep(period)
        raise AssertionError(f"no {what} within {timeout} s; stderr: {self.lines[-10:]}")

    def status(self, token: Optional[str] = None) -> dict:
        return request("GET", self.url + "api/status", token=token)[2]

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode


def request(method: str, url: str, body=None, token: Optional[str] = None, headers: Optional[dict] = None,
            timeout: float = 10.0):
    """(status, headers, parsed JSON or text). `body`: a dict (sent as JSON), bytes or str."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else (
        body.encode() if isinstance(body, str) else body)
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, hdrs, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, raw = exc.code, dict(exc.headers), exc.read()
    text = raw.decode("utf-8", errors="replace")
    if hdrs.get("Content-Type", "").startswith("application/json"):
        return status, hdrs, json.loads(text)
    return status, hdrs, text


def children_pids(pid: int, needle: str) -> list[int]:
    """PIDs of `pid`'s direct children whose command line contains `needle`."""
    import psutil

    return [c.pid for c in psutil.Process(pid).children() if needle in " ".join(c.cmdline())]


def namespace_skip_reason(*tools: str, packages: str = "chromium chromium-driver"):
    """Why a test cannot run in a network namespace of its own here, or None. `packages`: the Debian
    packages that bring `tools`, for the skip message."""
    import shutil

    missing = [t for t in ("unshare", "ip", *tools) if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install util-linux iproute2 {packages})"
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace here (root needed): {probe.stderr.strip()}"
    return None


def run_in_namespace(script, *args: str, timeout: float = 400, setup: str = "") -> dict:
    """Run `script` with this Python in a fresh network namespace (lo up, 127.0.0.2 added: aiortc's ICE
    skips exactly 127.0.0.1, so peers meet on 127.0.0.2 and nothing leaves the namespace); returns the
    JSON object it prints last. `setup`: more shell commands run in the namespace first."""
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    quoted = " ".join(f'"{a}"' for a in (sys.executable, str(script), *args))
    cmd = ["unshare", "-n", "bash", "-c", f"ip link set lo up && ip addr add 127.0.0.2/8 dev lo && {setup or 'true'} && exec {quoted}"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
