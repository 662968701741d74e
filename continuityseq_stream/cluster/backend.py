"""The interface the multi-stream API talks to, and the local back end.

    create(spec) -> info        start a stream, wait until it serves (ConfigError: its own one line;
                                ClusterFull when no more fit)
    streams() -> [info]         every stream, in creation order
    info(id) -> info            one stream (StreamNotFound)
    endpoint(id) -> (url, tok)  where the stream's own API answers, and its token (url None while it
                                is not serving)
    stop(id) -> info            end it on purpose; it stays listed (state kept) until deleted
    delete(id)                  stop it and forget it (its folder is removed)
    close(stop_streams)         the service ends; the streams go on unless `stop_streams`

An `info` is a JSON-ready dict: id, state (starting, running, restarting, ended, stopped, failed),
url and page of the stream's own service, restarts and last_restart, pid (the stream's process),
worker_pid (the process whose death is the stream's crash: the stream's process here, the actor's
worker on Ray), node, backend, created, exit_status, error, flags.

`LocalBackend`: each stream a `serve` process on this machine, watched and restarted by a
`StreamSupervisor` in this process, at most `max_streams` at once. Streams are processes of their
own session: stopping the service leaves them running, and a service started again on the same
state root adopts them (or restarts, from their saved state, the ones that died meanwhile).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional, Protocol

from ..errors import ClusterFull, ConfigError, StreamNotFound
from .process import alive_serve_process
from .spec import StreamSpec
from .supervisor import StreamSupervisor

log = logging.getLogger(__name__)

__all__ = ["Backend", "LocalBackend", "ACTIVE_STATES"]

#: states in which a stream holds its share of the machine (counted against --max-streams)
ACTIVE_STATES = frozenset({"new", "starting", "running", "restarting"})


class Backend(Protocol):
    name: str

    def create(self, spec: StreamSpec) -> dict: ...

    def streams(self) -> list[dict]: ...

    def info(self, stream_id: str) -> dict: ...

    def endpoint(self, stream_id: str) -> tuple[Optional[str], str]: ...

    def stop(self, stream_id: str) -> dict: ...

    def delete(self, stream_id: str) -> None: ...

    def close(self, stop_streams: bool) -> None: ...


def not_found(stream_id: str) -> StreamNotFound:
    return StreamNotFound(f"no stream {stream_id!r}; GET /streams lists the streams")


class LocalBackend:
    name = "local"

    def __init__(self, root: Path, *, max_streams: int = 4, host: str = "127.0.0.1",
                 start_timeout: float = 300.0) -> None:
        self.root, self.max_streams, self.host, self.start_timeout = Path(root), max_streams, host, start_timeout
        self._streams: dict[str, StreamSupervisor] = {}
        self._lock = threading.Lock()
        self._reserved: set[str] = set()
        self.adopted = self._adopt_existing()

    def _adopt_existing(self) -> int:
        """Streams an earlier service on this state root left: adopt the running ones, restart (from
        their state) the ones that died since, list the ended ones."""
        count = 0
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.exists() else []:
            record = StreamSupervisor.load_record(folder)
            if not record:
                continue
            try:
                spec = StreamSpec.from_json(record["spec"])
            except Exception as exc:  # noqa: BLE001 - a damaged record must not stop the service
                log.warning("ignoring %s: %s", folder, exc)
                continue
            sup = self._supervisor(spec)
            if alive_serve_process(record.get("pid"), folder / "state"):
                sup.adopt(record["pid"], record["url"])
            elif record.get("stopped") or not record.get("served"):
                sup.record, sup.state = record, "stopped"
            else:
                sup.restart()
            self._streams[spec.id] = sup
            count += 1
        return count

    def _supervisor(self, spec: StreamSpec) -> StreamSupervisor:
        return StreamSupervisor(spec, self.root, host=self.host, start_timeout=self.start_timeout)

    def _info(self, sup: StreamSupervisor) -> dict:
        info = sup.info()
        info.update(backend=self.name, worker_pid=info["pid"], node="localhost")
        return info

    def _get(self, stream_id: str) -> StreamSupervisor:
        with self._lock:
            sup = self._streams.get(stream_id)
        if sup is None:
            raise not_found(stream_id)
        return sup

    def create(self, spec: StreamSpec) -> dict:
        with self._lock:
            active = [s for s in self._streams.values() if s.state in ACTIVE_STATES]
            if len(active) + len(self._reserved) >= self.max_streams:
                raise ClusterFull(f"the service is full: {self.max_streams} stream(s) run (--max-streams "
                                  f"{self.max_streams}); stop or delete one, or start the service with a larger "
                                  f"--max-streams")
            if spec.id in self._streams or spec.id in self._reserved:
                raise ConfigError(f"id: a stream {spec.id!r} already exists; choose another id or delete it first")
            self._reserved.add(spec.id)
        try:
            sup = self._supervisor(spec)
            sup.start()
            with self._lock:
                self._streams[spec.id] = sup
            return self._info(sup)
        finally:
            with self._lock:
                self._reserved.discard(spec.id)

    def streams(self) -> list[dict]:
        with self._lock:
            sups = list(self._streams.values())
        return [self._info(s) for s in sups]

    def info(self, stream_id: str) -> dict:
        return self._info(self._get(stream_id))

    def endpoint(self, stream_id: str) -> tuple[Optional[str], str]:
        return self._get(stream_id).endpoint()

    def stop(self, stream_id: str) -> dict:
        sup = self._get(stream_id)
        sup.stop()
        return self._info(sup)

    def delete(self, stream_id: str) -> None:
        sup = self._get(stream_id)
        sup.delete()
        with self._lock:
            self._streams.pop(stream_id, None)

    def close(self, stop_streams: bool) -> None:
        with self._lock:
            sups = list(self._streams.values())
        for sup in sups:
            sup.close(stop=stop_streams)
