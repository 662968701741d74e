"""The Ray back end: each stream a detached Ray actor that owns its `serve` process.

The actor (`StreamActor`) holds one `StreamSupervisor`, so a stream on Ray is the same process tree
as a local one (producer, ring, sinks, its own HTTP API and WebRTC viewers), started on whatever
node Ray placed the actor: RTMP and file sinks write from there and viewers are served from there;
frames never pass through the ingress. The child is tied to the actor's worker (PR_SET_PDEATHSIG):
when the worker dies (kill -9, node loss), the stream dies with it, Ray starts the actor again
(`max_restarts`), and the new actor resumes the stream from its saved state, which must therefore
lie on storage every node sees (`--state-root`). Actors are named `stream-<id>` in the namespace
`continuityseq` and detached: they outlive the ingress, and a new ingress finds them by name.

Resources: one GPU per stream when the cluster has GPUs, else `stream_cpus` CPUs; a stream that no
node can hold right now is refused as full instead of waiting unplaced.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import ClusterFull, ConfigError, StreamNotFound
from .backend import not_found
from .spec import StreamSpec

log = logging.getLogger(__name__)

__all__ = ["RayBackend", "NAMESPACE", "import_ray", "connect"]

NAMESPACE = "continuityseq"
PREFIX = "stream-"
INSTALL_HINT = "pip install 'continuityseq_stream[ray]'"


def import_ray():
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed; install it with {INSTALL_HINT}") from None
    return ray


def connect(address: str, num_cpus: Optional[float] = None) -> bool:
    """Join the Ray cluster at `address`, or with "auto" the one running on this machine, else start
    a local one (`num_cpus` CPUs, no dashboard). True when this process started it (it ends with us)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
    if address != "auto":
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray's own errors vary by version
            raise ConfigError(f"--ray: cannot join the Ray cluster at {address!r}: {exc}; give the head's "
                              f"address (HOST:6379, ray://HOST:10001) or auto") from None
        return False
    try:
        ray.init(address="auto", **kwargs)
        return False
    except (ConnectionError, RuntimeError, ValueError):
        pass
    ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    return True


def _actor_class(ray):
    """The actor class (made on first use: Ray is an optional extra)."""

    class StreamActor:
        """One stream: a `StreamSupervisor` in this actor's worker process."""

        def __init__(self, spec_json: dict, root: str, start_timeout: float) -> None:
            from .supervisor import StreamSupervisor

            spec = StreamSpec.from_json(spec_json)
            self.node = ray.util.get_node_ip_address()
            self.sup = StreamSupervisor(spec, Path(root), host=self.node, die_with_parent=True,
                                        start_timeout=start_timeout)
            self.restarted = StreamSupervisor.load_record(self.sup.dir) is not None
            if self.restarted:  # Ray started this actor again after its worker died: resume the stream
                self.sup.restart()

        def start(self) -> dict:
            return self.info() if self.restarted else self._with_node(self.sup.start())

        def _with_node(self, info: dict) -> dict:
            info.update(backend="ray", worker_pid=os.getpid(), node=self.node)
            return info

        def info(self) -> dict:
            return self._with_node(self.sup.info())

        def endpoint(self) -> tuple:
            return self.sup.endpoint()

        def stop(self) -> dict:
            return self._with_node(self.sup.stop())

        def delete(self) -> None:
            self.sup.delete()

    return ray.remote(StreamActor)


class RayBackend:
    """Streams as Ray actors (see the module docstring). Works from the CLI's driver and from inside
    the Ray Serve ingress replica alike: all its state is in the actors and their folders."""

    name = "ray"

    def __init__(self, root: Path, *, stream_cpus: float = 1.0, max_restarts: int = -1,
                 start_timeout: float = 300.0, call_timeout: float = 10.0) -> None:
        self.ray = import_ray()
        self.root, self.stream_cpus, self.max_restarts = str(root), stream_cpus, max_restarts
        self.start_timeout, self.call_timeout = start_timeout, call_timeout
        self._actor = _actor_class(self.ray)

    # -- finding actors ----------------------------------------------------------------------------
    def _handle(self, stream_id: str):
        try:
            return self.ray.get_actor(PREFIX + stream_id, namespace=NAMESPACE)
        except ValueError:
            raise not_found(stream_id) from None

    def _ids(self) -> list[str]:
        names = self.ray.util.list_named_actors(all_namespaces=True)
        ids = [n["name"][len(PREFIX):] for n in names
               if n.get("namespace") == NAMESPACE and n["name"].startswith(PREFIX)]
        return sorted(ids)

    def _call(self, stream_id: str, method: str, timeout: Optional[float] = None):
        handle = self._handle(stream_id)
        try:
            return self.ray.get(getattr(handle, method).remote(), timeout=timeout or self.call_timeout)
        except self.ray.exceptions.RayTaskError as exc:
            cause = exc.cause if hasattr(exc, "cause") else None
            if isinstance(cause, (ConfigError, StreamNotFound)):
                raise cause from None
            raise ConfigError(f"stream {stream_id!r}: {type(cause or exc).__name__}: {cause or exc}") from None

    def _unavailable(self, stream_id: str, exc: BaseException) -> dict:
        return {"id": stream_id, "backend": "ray", "state": "restarting", "url": None, "page": None,
                "error": f"the stream's actor is not answering ({type(exc).__name__}); Ray restarts it"}

    # -- the interface -----------------------------------------------------------------------------
    def _resources(self) -> dict:
        total = self.ray.cluster_resources()
        if total.get("GPU", 0) >= 1:
            return {"num_gpus": 1, "num_cpus": 0}
        return {"num_cpus": self.stream_cpus}

    def _fits(self, resource: str, amount: float, wait: float = 10.0) -> bool:
        """Whether `amount` of `resource` is free; waits up to `wait` s, since an actor that was just
        killed (a stream that failed to start, a deleted one) gives its share back a moment later."""
        deadline = time.monotonic() + wait
        while self.ray.available_resources().get(resource, 0) + 1e-9 < amount:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)
        return True

    def _new_actor(self, spec: StreamSpec, resources: dict):
        """The stream's actor: named, detached (it outlives the ingress), restarted by Ray when its
        worker dies; calls to it may overlap (`info` while `start` waits)."""
        return self._actor.options(name=PREFIX + spec.id, namespace=NAMESPACE, lifetime="detached",
                                   max_restarts=self.max_restarts, max_task_retries=0, max_concurrency=8,
                                   **resources).remote(spec.as_json(), self.root, self.start_timeout)

    def create(self, spec: StreamSpec) -> dict:
        if spec.id in self._ids() or (Path(self.root) / spec.id).exists():
            raise ConfigError(f"id: a stream {spec.id!r} already exists (as an actor or a folder in the state "
                              f"root); choose another id or delete it first")
        resources = self._resources()
        need = ("GPU", resources["num_gpus"]) if "num_gpus" in resources else ("CPU", resources["num_cpus"])
        if not self._fits(*need):
            raise ClusterFull(f"the Ray cluster is full: no node has {need[1]:g} free {need[0]}(s) for another "
                              f"stream; stop or delete one, or add nodes")
        handle = self._new_actor(spec, resources)
        try:
            return self.ray.get(handle.start.remote(), timeout=self.start_timeout + 60)
        except Exception as exc:  # noqa: BLE001 - any failure: no half-made stream stays behind
            self.ray.kill(handle, no_restart=True)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ConfigError):
                raise ConfigError(str(cause)) from None
            raise ConfigError(f"the stream did not start: {type(cause or exc).__name__}: {cause or exc}") from None

    def recover(self) -> int:
        """Streams with a folder in the state root but no actor (the Ray instance they ran on ended):
        start their actors again, which resume them. How many."""
        from .supervisor import StreamSupervisor

        root, running, count = Path(self.root), set(self._ids()), 0
        for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
            record = StreamSupervisor.load_record(folder)
            if not record or record.get("stopped") or not record.get("served") or folder.name in running:
                continue
            spec = StreamSpec.from_json(record["spec"])
            self._new_actor(spec, self._resources())
            count += 1
        return count

    def streams(self) -> list[dict]:
        out = []
        for stream_id in self._ids():
            try:
                out.append(self.info(stream_id))
            except StreamNotFound:
                continue
        return sorted(out, key=lambda info: info.get("created") or 0)

    def info(self, stream_id: str) -> dict:
        try:
            return self._call(stream_id, "info")
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError,
                self.ray.exceptions.ActorUnavailableError) as exc:
            return self._unavailable(stream_id, exc)

    def endpoint(self, stream_id: str) -> tuple[Optional[str], str]:
        try:
            return tuple(self._call(stream_id, "endpoint"))
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError,
                self.ray.exceptions.ActorUnavailableError):
            return None, ""

    def stop(self, stream_id: str) -> dict:
        return self._call(stream_id, "stop", timeout=60)

    def delete(self, stream_id: str) -> None:
        handle = self._handle(stream_id)
        try:
            self.ray.get(handle.delete.remote(), timeout=60)
        except Exception as exc:  # noqa: BLE001 - the actor goes anyway
            log.warning("stream %s: delete: %s", stream_id, exc)
        self.ray.kill(handle, no_restart=True)

    def close(self, stop_streams: bool) -> None:
        """With `stop_streams`: stop every stream and end its actor (their folders stay)."""
        if not stop_streams:
            return
        for stream_id in self._ids():
            try:
                handle = self._handle(stream_id)
                self.ray.get(handle.stop.remote(), timeout=60)
                self.ray.kill(handle, no_restart=True)
            except Exception as exc:  # noqa: BLE001 - stop the others anyway
                log.warning("stream %s: stop: %s", stream_id, exc)
