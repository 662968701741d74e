"""`continuityseq-stream serve`: the run command's generation flags plus the server's options.

Kept light at import (click only): the CLI imports it on every start; aiohttp, prometheus-client,
python-osc and aiortc are imported when `serve` runs, with one line saying how to install them
(`pip install 'continuityseq_stream[service]'`) when they are missing.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Optional

import click

from ..errors import ConfigError

__all__ = ["make_serve_command"]

logger = logging.getLogger("continuityseq_stream")

#: run flags that name or write the default output file, which serve does not make
_NOT_FOR_SERVE = ("output_dir", "save_init", "include_model")
#: the token may come from the environment, so that it is not visible in the process list
TOKEN_ENV = "CONTINUITYSEQ_TOKEN"

#: serve's --ring-frames default: one second at 16 fps (the run command's 64 would add 4 s of latency)
SERVE_RING_FRAMES = 16

SERVER_OPTIONS = [
    click.option("--host", default="127.0.0.1", show_default=True,
                 help="Address the HTTP server binds (not loopback: needs --token)."),
    click.option("--port", type=int, default=8080, show_default=True, help="HTTP port (0: any free port)."),
    click.option("--token", default=None, envvar=TOKEN_ENV, show_envvar=True,
                 help="Bearer token for the API, /metrics and WebRTC (needed off loopback). The page takes it "
                      "as http://HOST:PORT/#token=TOKEN (a fragment: never sent to the server or logged)."),
    click.option("--osc", "osc", default=None, metavar="HOST:PORT",
                 help="Take OSC commands on this UDP address (/prompt s, /guidance f, /conditioning i i, /seed i, "
                      "/pause, /resume, /stop)."),
    click.option("--osc-telemetry", "osc_telemetry", default=None, metavar="HOST:PORT",
                 help="Send OSC telemetry (/continuityseq/chunk, /continuityseq/fps, ...) to this UDP address."),
    click.option("--osc-allow-remote", is_flag=True, help="Accept a non-loopback --osc address (OSC has no token)."),
    click.option("--rate", type=float, default=20.0, show_default=True, help="Requests per second per client."),
    click.option("--burst", type=int, default=40, show_default=True, help="Requests a client may make at once."),
    click.option("--health-timeout", type=float, default=None,
                 help="Seconds without a chunk before /healthz is unhealthy (default: 4x the chunk interval, >= 30)."),
    click.option("--linger", type=float, default=0.0, show_default=True,
                 help="Seconds the API stays up after the stream ended (health and status say why)."),
    click.option("--lead", type=float, default=1.0, show_default=True,
                 help="Seconds of video generation may run ahead of the viewers' clock."),
    click.option("--max-viewers", type=int, default=8, show_default=True, help="WebRTC viewers at once."),
    click.option("--source", default=None, metavar="MODULE:FUNCTION",
                 help="Chunk source instead of the model, e.g. continuityseq_stream.demo.synthetic_source:synthetic_stream "
                      "(a moving test pattern: check a deployment without a GPU)."),
]
SERVER_FIELDS = ("host", "port", "token", "osc", "osc_telemetry", "osc_allow_remote", "rate", "burst",
                 "health_timeout", "linger", "lead", "max_viewers")


def service_options(values: dict):
    """The server flags -> ServiceOptions (ConfigError on bad values)."""
    from .options import ServiceOptions, parse_hostport

    values = dict(values)
    for name in ("osc", "osc_telemetry"):
        if values[name] is not None:
            values[name] = parse_hostport(values[name], "--" + name.replace("_", "-"))
    return ServiceOptions(**values)


def _import_service():
    try:
        from . import serving
    except ImportError as exc:
        raise ConfigError(f"serve needs the service extra ({exc.name} is missing); install it with "
                          f"pip install 'continuityseq_stream[service]'") from None
    return serving


def _serve(build_config: Callable, source: Optional[str], **options) -> None:
    """Generate one never-ending stream and serve it: the page at http://HOST:PORT/, an HTTP API
    (/openapi.json), /metrics, /healthz, WebRTC viewers, OSC. Takes the run command's generation flags."""
    serving = _import_service()
    from ..runtime.producer import DEFAULT_SOURCE
    from ..runtime.ringbuffer import check_ring_memory
    from ..runtime.loop import RuntimeOptions, build_sinks

    service = service_options({k: options.pop(k) for k in SERVER_FIELDS})  # cheap checks first
    config, schedule, stream, demo_applied = build_config(options)
    runtime = RuntimeOptions(duration=stream["duration"], ring_frames=stream["ring_frames"],
                             source=source or DEFAULT_SOURCE, schedule=schedule, control=stream["control"],
                             control_allow_remote=stream["control_allow_remote"])
    check_ring_memory(runtime.ring_frames, *config.frame_size)
    sinks = build_sinks(stream["sinks"]) if stream["sinks"] else []
    if demo_applied:
        logger.info("demo model settings (flags not given): %s", ", ".join(demo_applied))
    status = serving.serve(config, sinks, runtime, service)
    if status:
        sys.exit(status)


def make_serve_command(run_options: list, build_config: Callable, setup_logging: Callable) -> click.Command:
    """The `serve` command from the run command's flags (`run_options`: click option decorators),
    its config builder (`cli.build_run_config`) and log setup: passed in rather than imported, so that
    `python -m continuityseq_stream.cli` (cli as __main__) does not import the CLI twice."""

    def serve(**options) -> None:
        setup_logging()
        _serve(build_config, **options)

    serve.__doc__ = _serve.__doc__
    command = serve
    for decorator in reversed(list(run_options) + SERVER_OPTIONS):
        command = decorator(command)
    command = click.command("serve", context_settings={"show_default": True})(command)
    command.params = [p for p in command.params if p.name not in _NOT_FOR_SERVE]
    for param in command.params:
        if param.name == "times":  # one never-ending stream unless asked otherwise
            param.default = 0
            param.help = "Number of chunks; 0 (the default for serve) = until stopped."
        elif param.name == "ring_frames":  # every frame in the ring is latency between a command and the screen
            param.default = SERVE_RING_FRAMES
    return command
