"""`continuityseq-stream cluster`: many streams behind one HTTP API, on this machine or on Ray.

Kept light at import (click only): the CLI imports it on every start. The service extra (aiohttp,
psutil) and, with `--ray`, Ray are imported when the command runs, with one line saying how to
install them when they are missing.
"""

from __future__ import annotations

import logging
import signal
import time

import click

from ..errors import ConfigError

__all__ = ["make_cluster_command"]

logger = logging.getLogger("continuityseq_stream")
TOKEN_ENV = "CONTINUITYSEQ_TOKEN"


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (handlers only set a flag: they must take no lock)."""
    stop: list = []
    saved = {sig: signal.signal(sig, lambda *_: stop.append(True)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def _run_local(options, root) -> None:
    from ..service.server import ServiceServer
    from .api import ClusterApi
    from .backend import LocalBackend
    from .http import build_app

    backend = LocalBackend(root, max_streams=options.max_streams, host=options.host,
                           start_timeout=options.start_timeout)
    api = ClusterApi(backend, options)
    server = ServiceServer(build_app(api), options.host, options.port)
    try:
        server.start()
        click.echo(f"serving streams on {server.url} (local back end, at most {options.max_streams} streams, "
                   f"{backend.adopted} found in {root})", err=True)
        _wait_for_signal()
    finally:
        server.close()
        backend.close(stop_streams=options.stop_streams_on_exit)
        _say_what_goes_on(options, root)


def _run_ray(options, root) -> None:
    from .ray_backend import RayBackend, connect
    from .ray_ingress import deploy, undeploy

    started_here = connect(options.ray, options.ray_cpus)
    import ray

    try:
        backend = RayBackend(root, stream_cpus=options.stream_cpus, max_restarts=options.max_restarts,
                             start_timeout=options.start_timeout)
        recovered = backend.recover()
        url = deploy(options, root)
        click.echo(f"serving streams on {url} (Ray back end: {int(ray.cluster_resources().get('CPU', 0))} CPUs, "
                   f"{int(ray.cluster_resources().get('GPU', 0))} GPUs; {len(backend.streams())} streams, "
                   f"{recovered} resumed from {root})", err=True)
        _wait_for_signal()
    finally:
        undeploy()
        if options.stop_streams_on_exit or started_here:
            RayBackend(root).close(stop_streams=True)
        _say_what_goes_on(options, root, ended_with_ray=started_here)
        if started_here:
            ray.shutdown()


def _say_what_goes_on(options, root, ended_with_ray: bool = False) -> None:
    if options.stop_streams_on_exit:
        click.echo(f"the streams were stopped (their state stays in {root})", err=True)
    elif ended_with_ray:
        click.echo("the streams ended with the Ray instance this command started; start the command again "
                   "with the same --state-root to resume them (or run `ray start --head` and --ray auto, so "
                   "that they outlive the ingress)", err=True)
    else:
        click.echo(f"the streams go on; start the service again with --state-root {root} to manage them "
                   f"(or pass --stop-streams-on-exit)", err=True)


_OPTIONS = [
    click.option("--host", default="127.0.0.1", help="Address the API binds (not loopback: needs --token)."),
    click.option("--port", type=int, default=8090, help="HTTP port of the API."),
    click.option("--token", default=None, envvar=TOKEN_ENV, show_envvar=True,
                  help="Bearer token for every route but / and /healthz (needed off loopback)."),
    click.option("--state-root", default="continuityseq-streams",
                  help="Folder where every stream keeps its state and log (shared storage on a multi-node Ray cluster)."),
    click.option("--max-streams", type=int, default=4, help="Streams at once on the local back end."),
    click.option("--ray", "ray", default=None, metavar="auto|ADDRESS",
                  help="Run the streams as Ray actors: auto = the Ray cluster on this machine (else a local one), "
                  "or the head's address. Needs pip install 'continuityseq_stream[ray]'."),
    click.option("--ray-cpus", type=float, default=None, help="CPUs of a local Ray started by --ray auto (default: all)."),
    click.option("--stream-cpus", type=float, default=1.0, help="CPUs a stream asks Ray for when the cluster has no GPU."),
    click.option("--max-restarts", type=int, default=-1, help="Ray restarts of a stream's actor (-1: always)."),
    click.option("--stop-streams-on-exit", is_flag=True, help="Stop the streams when this service stops."),
    click.option("--start-timeout", type=float, default=300.0, help="Seconds a new stream may take to start serving."),
    click.option("--rate", type=float, default=20.0, help="Requests per second per client."),
    click.option("--burst", type=int, default=40, help="Requests a client may make at once."),
]


def _cluster(**values) -> None:
    """Serve many never-ending streams behind one HTTP API (POST /streams to create one); each stream
    is a `serve` of its own, here or on a Ray cluster (--ray)."""
    try:
        from .options import ClusterOptions
        from .process import check_state_root

        import aiohttp  # noqa: F401 - the service extra
        import psutil  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"cluster needs the service extra ({exc.name} is missing); install it with "
                          f"pip install 'continuityseq_stream[service]'") from None
    options = ClusterOptions(**values)
    root = check_state_root(options.state_root)
    if options.ray is None:
        _run_local(options, root)
    else:
        _run_ray(options, root)


def make_cluster_command(setup_logging) -> click.Command:
    """The `cluster` command (`setup_logging`: the CLI's log set-up, passed in like serve's)."""

    def cluster(**values) -> None:
        setup_logging()
        _cluster(**values)

    cluster.__doc__ = _cluster.__doc__
    command = cluster
    for decorator in reversed(_OPTIONS):
        command = decorator(command)
    return click.command("cluster", context_settings={"show_default": True})(command)
