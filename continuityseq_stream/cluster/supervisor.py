"""`StreamSupervisor`: one stream of a multi-stream service, kept alive.

It owns the stream's folder under the state root,

    <root>/<id>/stream.json   the spec, when it was made, its restarts, its token (mode 0600)
    <root>/<id>/state/        the resume state, saved by the stream after every chunk
    <root>/<id>/serve.log     the stream's log (its stderr), appended

and one `ServeProcess`. A thread of its own starts the child and watches it: a child that ends with
status 0 ended on purpose (its `--times`, a stop command) and stays ended; one that dies any other
way (kill -9, a crash) is started again with `--resume`, so the video goes on from its last saved
chunk, and `restarts` counts it. A child that keeps dying within `QUICK_DEATH` seconds of its start
`MAX_QUICK_DEATHS` times in a row is given up ("failed", with its last log line). The same class
runs in the local back end (one per stream, in the service's process) and inside each Ray actor.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from .process import ServeProcess
from .spec import StreamSpec

log = logging.getLogger(__name__)

__all__ = ["StreamSupervisor", "RECORD", "QUICK_DEATH", "MAX_QUICK_DEATHS"]

RECORD = "stream.json"
QUICK_DEATH = 30.0
MAX_QUICK_DEATHS = 5
_POLL = 0.25


class StreamSupervisor:
    """One stream (see the module docstring). `start()` makes a new stream and waits until it serves;
    `restart()` starts one whose process died (a restarted Ray actor); `adopt()` takes over one whose
    process still runs (a restarted local service)."""

    def __init__(self, spec: StreamSpec, root: Path, *, host: str = "127.0.0.1", die_with_parent: bool = False,
                 start_timeout: float = 300.0) -> None:
        self.spec, self.dir, self.host = spec, Path(root) / spec.id, host
        self.die_with_parent, self.start_timeout = die_with_parent, start_timeout
        self.record: dict = {}
        self.state = "new"
        self.error: Optional[str] = None
        self.exit_status: Optional[int] = None
        self.process: Optional[ServeProcess] = None
        self._stopping = False
        self._closed = threading.Event()
        self._started = threading.Event()
        self._quick_deaths = 0
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    # -- the record on disk ------------------------------------------------------------------------
    def _save(self) -> None:
        tmp = self.dir / (RECORD + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the stream's token
        with os.fdopen(fd, "w") as f:
            json.dump(self.record, f)
        os.replace(tmp, self.dir / RECORD)

    @staticmethod
    def load_record(folder: Path) -> Optional[dict]:
        try:
            return json.loads((Path(folder) / RECORD).read_text())
        except (OSError, ValueError):
            return None

    def _new_process(self) -> ServeProcess:
        return ServeProcess(self.spec.argv(), self.dir / "state", self.dir / "serve.log", host=self.host,
                            token=self.record["token"], die_with_parent=self.die_with_parent)

    # -- the three ways in -------------------------------------------------------------------------
    def start(self) -> dict:
        """A new stream: make its folder, start it, wait until it serves. ConfigError (the stream's own
        one line) when it does not start; its folder is removed then."""
        try:
            self.dir.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise ConfigError(f"id: a stream {self.spec.id!r} already exists (its folder {str(self.dir)!r}); "
                              f"choose another id or delete it first") from None
        self.record = {"spec": self.spec.as_json(), "created": time.time(), "restarts": 0, "last_restart": None,
                       "token": secrets.token_urlsafe(24), "served": False, "stopped": False}
        self._save()
        self._run_thread()
        self._started.wait()
        if self.state == "failed":
            error = self.error
            self.close(stop=True)
            shutil.rmtree(self.dir, ignore_errors=True)
            raise ConfigError(error or "the stream did not start")
        return self.info()

    def restart(self) -> None:
        """The stream's process is gone (its Ray actor was restarted): start it again, resuming."""
        self.record = self.load_record(self.dir) or {}
        if not self.record:
            raise ConfigError(f"stream {self.spec.id!r}: no {RECORD} in {str(self.dir)!r} to restart from")
        if self.record.get("stopped"):
            self.state = "stopped"
            return
        self._count_restart()
        self._run_thread()

    def adopt(self, pid: int, url: str) -> None:
        """Watch a stream process that outlived the service that started it."""
        self.record = self.load_record(self.dir) or {}
        self.process = self._new_process()
        self.process.adopt(pid, url)
        self.state = "running"
        self._started.set()
        self._thread = threading.Thread(target=self._watch, name=f"stream-{self.spec.id}", daemon=True)
        self._thread.start()

    # -- the thread that starts and watches the child --------------------------------------------
    def _run_thread(self) -> None:
        # every child is forked by this one long-lived thread: PR_SET_PDEATHSIG follows the thread
        self._thread = threading.Thread(target=self._main, name=f"stream-{self.spec.id}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        if not self._launch():
            self._started.set()
            return
        self._started.set()
        self._watch()

    def _launch(self) -> bool:
        """Start the child and wait for it to serve; False (state "failed") when it does not."""
        self.state = "starting"
        self.process = self._new_process()
        try:
            self.process.start()
            self.process.wait_serving(self.start_timeout)
        except (ConfigError, OSError) as exc:
            self.state, self.error = "failed", str(exc)
            self.exit_status = self.process.poll()
            log.warning("stream %s: %s", self.spec.id, exc)
            return False
        with self._lock:
            self.record.update(served=True, pid=self.process.pid, url=self.process.url)
            self._save()
        self.state, self.error = "running", None
        return True

    def _watch(self) -> None:
        while not self._closed.wait(_POLL):
            code = self.process.poll()
            if code is None or self._stopping:
                continue
            self.exit_status = code
            if code == 0:
                self.state = "ended"
                with self._lock:
                    self.record["stopped"] = True
                    self._save()
                return
            if not self._should_restart():
                return
            log.warning("stream %s: its process died (status %s); restarting it from its saved state",
                        self.spec.id, code)
            self._count_restart()
            if not self._launch():
                if self._should_give_up():
                    return

    def _should_restart(self) -> bool:
        lived = time.monotonic() - self.process.started_at
        self._quick_deaths = self._quick_deaths + 1 if lived < QUICK_DEATH else 0
        if self._should_give_up():
            return False
        self.state = "restarting"
        time.sleep(min(1.0 * 2 ** max(0, self._quick_deaths - 1), 30.0))  # back off when it dies at once
        return not self._closed.is_set() and not self._stopping

    def _should_give_up(self) -> bool:
        if self._quick_deaths >= MAX_QUICK_DEATHS:
            self.state = "failed"
            self.error = (f"the stream died {MAX_QUICK_DEATHS} times within {QUICK_DEATH:.0f} s of its start; "
                          f"last: {self.process.last_line() if self.process else ''}")
            return True
        return False

    def _count_restart(self) -> None:
        with self._lock:
            self.record["restarts"] = int(self.record.get("restarts", 0)) + 1
            self.record["last_restart"] = time.time()
            self._save()

    # -- what the API reads and does ----------------------------------------------------------------
    def endpoint(self) -> tuple[Optional[str], str]:
        """(the stream's own base URL or None while it is not serving, its bearer token)."""
        url = self.process.url if self.process is not None and self.state == "running" else None
        return url, self.record.get("token", "")

    def info(self) -> dict:
        url, token = self.endpoint()
        return {"id": self.spec.id, "state": self.state, "url": url,
                "page": None if url is None else f"{url}#token={token}",
                "restarts": self.record.get("restarts", 0), "last_restart": self.record.get("last_restart"),
                "created": self.record.get("created"), "pid": None if self.process is None else self.process.pid,
                "resumed": bool(self.process and self.process.resumed), "exit_status": self.exit_status,
                "error": self.error, "flags": self.spec.as_json()["flags"], "dir": str(self.dir)}

    def stop(self, timeout: float = 30.0) -> dict:
        """End the stream on purpose (its state is kept; it is not restarted)."""
        self._stopping = True
        with self._lock:
            self.record["stopped"] = True
            self._save()
        if self.process is not None:
            self.exit_status = self.process.stop(timeout)
        self.state = "stopped"
        self._closed.set()
        return self.info()

    def delete(self) -> None:
        """Stop the stream and remove its folder (state and log)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self, stop: bool) -> None:
        """The service is going away: stop the stream too when `stop`, else leave it running."""
        if stop:
            self.stop()
        self._closed.set()
