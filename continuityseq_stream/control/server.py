"""Live control of a running stream: JSON commands over a ZeroMQ REP socket, and its client.

Protocol (one JSON object per request, one per answer, UTF-8, at most 64 KiB):

    {"command": "set_prompt", "prompt": "...", "transition": 4, "negative_prompt": "..."}
    {"command": "set_negative_prompt", "negative_prompt": "..."}
    {"command": "set_guidance", "guidance_scale": 12.5}
    {"command": "set_conditioning", "min": 2, "max": 6}
    {"command": "set_seed", "seed": 42}
    {"command": "pause"} / {"command": "resume"} / {"command": "stop"} / {"command": "status"}

Answers are `{"ok": true, "command": ..., ...}` — changes carry `"applies_at_chunk": k` — or
`{"ok": false, "error": "<one line>", "field": "<field or null>"}`. Every request gets an answer: a bad
one (malformed, nested too deeply, absurd values, too large, a failing handler...) gets an error answer,
never leaves the server loop and never reaches the run. Limits (prompts/updates.py, docs/reliability-control.md):
prompts of at most `MAX_PROMPT_CHARS` characters, at most `MAX_QUEUED_UPDATES` changes waiting for the
next chunk, requests of at most `MAX_REQUEST_BYTES` (larger ones up to `DROP_REQUEST_BYTES` get an error
answer; beyond that ZeroMQ drops the connection unread, so memory stays bounded).

The server binds to loopback only (`tcp://127.0.0.1:PORT`, `tcp://localhost:PORT`, `tcp://[::1]:PORT`,
or `ipc://`); anything else is refused unless `allow_remote=True` (`--control-allow-remote`), because
whoever reaches the socket can steer and stop the stream.

Seams for the runtime: `ControlServer(address, on_update=..., on_status=..., on_stop=...)` — see its
docstring — and `LiveController`, a ready-made `on_update` / status provider that forwards changes
to the producer through an `UpdateChannel` and mirrors them in a `LiveSettings` for status.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
import threading
from typing import Any, Callable, Mapping, Optional

import click
import zmq

from ..errors import ConfigError, ContinuitySeqError, ControlError  # noqa: F401 (ControlError re-exported)
from ..prompts import (MAX_BLEND_PROMPTS, MAX_PROMPT_CHARS, RUN_COMMANDS, LiveSettings, UpdateChannel, UpdateError,
                      validate_update)

log = logging.getLogger(__name__)

DEFAULT_CONTROL_ADDRESS = "tcp://127.0.0.1:5557"
#: requests larger than this get an error answer (the largest valid request is far smaller)
MAX_REQUEST_BYTES = 64 * 1024
#: requests larger than this are dropped by ZeroMQ without being read (the client times out)
DROP_REQUEST_BYTES = 1024 * 1024


# ------------------------------------------------------------------------------------------------
# addresses
# ------------------------------------------------------------------------------------------------
def check_control_address(address: str, allow_remote: bool = False) -> str:
    """Validate a `--control` bind address; non-loopback TCP needs `allow_remote`.

    Accepts `tcp://HOST:PORT` (PORT 1..65535, or `*` for a free port) and `ipc://PATH`.
    """
    if not isinstance(address, str) or "://" not in address:
        raise _address_error(f"got {address!r}; use tcp://127.0.0.1:PORT")
    scheme = address.split("://", 1)[0]
    if scheme == "ipc":
        if len(address) <= len("ipc://"):
            raise _address_error(f"got {address!r}; give a socket path, e.g. ipc:///tmp/continuityseq.sock")
        return address
    if scheme != "tcp":
        raise _address_error(f"got {address!r}; use tcp://127.0.0.1:PORT (or ipc://PATH)")
    rest = address[len("tcp://"):]
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        raise _address_error(f"got {address!r}; use tcp://HOST:PORT, e.g. tcp://127.0.0.1:5557")
    if port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise _address_error(f"port {port!r} in {address!r}; use a port in 1..65535")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    loopback = bare == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(bare).is_loopback
        except ValueError:
            loopback = False
    if not loopback and not allow_remote:
        raise ConfigError(
            f"{{control}}: {address!r} is not a loopback address, so anyone who can reach it could steer and stop "
            f"the stream; use tcp://127.0.0.1:PORT, or pass {{control_allow_remote}} to accept it",
            names=("control", "control_allow_remote"))
    return address


def _address_error(problem: str) -> ConfigError:
    """ConfigError "`{control}`: problem" (the CLI spells it --control)."""
    return ConfigError("{control}: " + problem, names=("control",))


# ------------------------------------------------------------------------------------------------
# server
# ------------------------------------------------------------------------------------------------
def error_response(message: str, field: Optional[str] = None) -> dict:
    return {"ok": False, "error": message, "field": field}


def _jsonable(value: Any) -> Any:
    """Fallback for json.dumps: numpy scalars/arrays and tensors by value, anything else as text."""
    for attr in ("item", "tolist"):
        fn = getattr(value, attr, None)
        if callable(fn):
            try:
                return fn()
            except (TypeError, ValueError):
                pass
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def encode_answer(answer: Mapping[str, Any]) -> bytes:
    """The answer as UTF-8 JSON; values JSON cannot hold (numpy numbers, ...) are converted, and an
    answer that still cannot be encoded becomes an error answer instead of killing the server."""
    try:
        return json.dumps(answer, default=_jsonable, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        log.warning("control: answer could not be encoded: %s", exc)
        return json.dumps(error_response(f"internal error: the answer could not be encoded as JSON: {exc}")).encode("utf-8")


_EXAMPLE = 'send an object like {"command": "status"}'


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def parse_request(payload: bytes) -> tuple[Any, Optional[str]]:
    """(decoded JSON, None), or (None, the one-line problem) for bytes that are not one JSON value.

    Besides ValueError, Python's decoder raises RecursionError on deeply nested input (2 KB of
    `[[[...]]]` are enough); that is a malformed request too, not a reason to stop serving.
    """
    try:
        return json.loads(payload.decode("utf-8")), None
    except UnicodeDecodeError as exc:
        return None, f"malformed JSON: not UTF-8 ({exc.reason} at byte {exc.start}); {_EXAMPLE}"
    except RecursionError:
        return None, f"malformed JSON: nested too deeply; {_EXAMPLE}"
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's limit on digits of an int
            return None, f"malformed JSON: a number has too many digits; {_EXAMPLE}"
        return None, f"malformed JSON: {_short(str(exc))}; {_EXAMPLE}"


class ControlServer:
    """A REP socket on a background thread answering control commands.

    Callbacks (called on the server thread; each returns a dict merged into the answer, or None):
      on_update(update) -> {"applies_at_chunk": k, ...}: a validated settings change or pause/resume
          (`validate_update` output). Raising `ContinuitySeqError` (e.g. `UpdateError` with `.field`)
          turns into an error answer; any other exception into "internal error" (logged).
      on_status() -> figures: chunks made, fps, ring fill, skipped per sink, current prompt, ...
      on_stop() -> {"applies_at_chunk": k}: end the run (the runtime shuts down gracefully).
    `handle_request(bytes) -> dict` is the whole protocol without sockets (tests, other transports).

    Use as a context manager, or `start()` / `close()`. `start()` binds before returning and raises
    ConfigError when the address is refused or taken. `address` is the resolved endpoint (useful
    with `tcp://127.0.0.1:*`).
    """

    def __init__(
        self,
        address: str = DEFAULT_CONTROL_ADDRESS,
        *,
        on_update: Callable[[dict], Optional[Mapping[str, Any]]],
        on_status: Callable[[], Optional[Mapping[str, Any]]],
        on_stop: Callable[[], Optional[Mapping[str, Any]]],
        allow_remote: bool = False,
        poll_ms: int = 100,
    ) -> None:
        self._requested = check_control_address(address, allow_remote)
        for name, cb in (("on_update", on_update), ("on_status", on_status), ("on_stop", on_stop)):
            if not callable(cb):
                raise ConfigError(f"ControlServer {name}: got {cb!r}; give a callable")
        if not isinstance(poll_ms, int) or poll_ms < 1:
            raise ConfigError(f"ControlServer poll_ms: got {poll_ms!r}; use milliseconds >= 1")
        self._on_update = on_update
        self._on_status = on_status
        self._on_stop = on_stop
        self._poll_ms = poll_ms
        self._stop_event = threading.Event()
        self._ready = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self.address: Optional[str] = None
        #: requests answered, and how many of them were errors (for status / tests)
        self.requests = 0
        self.errors = 0

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "ControlServer":
        if self._thread is not None:
            raise RuntimeError("ControlServer already started")
        self._thread = threading.Thread(target=self._run, name="continuityseq-control", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; the socket is closed (linger 0) before its context terminates."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = None
        try:
            sock = ctx.socket(zmq.REP)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, DROP_REQUEST_BYTES)
            if self._requested.startswith("tcp://["):
                sock.setsockopt(zmq.IPV6, 1)
            try:
                sock.bind(self._requested)
            except zmq.ZMQError as exc:
                self._error = ConfigError(
                    f"{{control}}: cannot bind {self._requested!r}: {exc.strerror}; choose another port or address",
                    names=("control",))
                return
            self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._ready.set()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            while not self._stop_event.is_set():
                if dict(poller.poll(self._poll_ms)).get(sock):
                    self._serve_one(sock)
        except Exception as exc:  # never let the control thread take the run down
            log.exception("control server stopped by an unexpected error")
            if not self._ready.is_set():
                self._error = ContinuitySeqError(f"{{control}}: server failed to start: {exc}", names=("control",))
        finally:
            if sock is not None:
                sock.close(linger=0)
            ctx.term()
            self._ready.set()

    def _serve_one(self, sock: zmq.Socket) -> None:
        """Receive one request and send its answer. Whatever goes wrong stays in this request: the REP
        socket gets an answer (an error one if need be) and the loop goes on."""
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            data = encode_answer(self.handle_request(parts[0] if len(parts) == 1 else None))
        except Exception as exc:  # noqa: BLE001 - handle_request never raises; this is the last net
            log.exception("control: request failed")
            data = json.dumps(error_response(f"internal error: {type(exc).__name__}")).encode("utf-8")
        try:
            sock.send(data)
        except zmq.ZMQError as exc:  # the peer went away; REP recovers on the next request
            log.warning("control: could not send an answer: %s", exc)

    # -- protocol -----------------------------------------------------------------------------
    def handle_request(self, payload: Optional[bytes]) -> dict:
        """Answer one raw request; never raises (anything unexpected becomes an "internal error" answer)."""
        self.requests += 1
        try:
            answer = self._answer(payload)
        except Exception as exc:  # noqa: BLE001 - a request must never take the server down
            log.exception("control: request failed")
            answer = error_response(f"internal error: {type(exc).__name__}: {_short(str(exc))}")
        if not answer.get("ok"):
            self.errors += 1
            log.info("control: rejected request: %s", answer.get("error"))
        return answer

    def _answer(self, payload: Optional[bytes]) -> dict:
        if payload is None:
            return error_response("send one JSON object per message (got a multipart message)")
        if len(payload) > MAX_REQUEST_BYTES:
            return error_response(
                f"the request has {len(payload)} bytes; at most {MAX_REQUEST_BYTES} (a prompt has at most "
                f"{MAX_PROMPT_CHARS} characters)")
        message, problem = parse_request(payload)
        if problem is not None:
            return error_response(problem)
        try:
            update = validate_update(message)
        except UpdateError as exc:
            return error_response(str(exc), exc.field)
        command = update["command"]
        try:
            if command == "status":
                extra = self._on_status()
            elif command == "stop":
                extra = self._on_stop()
            else:
                extra = self._on_update(update)
        except UpdateError as exc:
            return error_response(str(exc), exc.field)
        except ContinuitySeqError as exc:
            return error_response(str(exc), getattr(exc, "field", None))
        except Exception as exc:
            log.exception("control: %s callback failed", command)
            return error_response(f"internal error while handling {command}: {type(exc).__name__}: {exc}")
        answer = {"ok": True, "command": command}
        if isinstance(extra, Mapping):
            answer.update(extra)
            answer["ok"] = True
        return answer


class LiveController:
    """The runtime's side of live changes: a ready-made `on_update` and status provider.

    Forwards each validated change to the producer through `channel` (which tells the chunk it applies
    at) and applies the same update at the same chunk to `mirror` (a LiveSettings built like the
    producer's), so status can show the current prompt and what is scheduled next without asking
    the producer process. The mirror forgets what only chunks before the current one need, like the
    producer's copy does, so its memory stays bounded however many commands come.
    """

    def __init__(self, channel: UpdateChannel, mirror: LiveSettings) -> None:
        self.channel = channel
        self.mirror = mirror
        self._lock = threading.Lock()

    def on_update(self, update: dict) -> dict:
        command = update["command"]
        with self._lock:
            if command == "pause":
                return {"applies_at_chunk": self.channel.pause(), "paused": True}
            if command == "resume":
                return {"applies_at_chunk": self.channel.resume(), "paused": False}
            if command in RUN_COMMANDS:
                raise UpdateError(f"{command} is not handled by LiveController", "command")
            self._check_blend(update)
            at = self.channel.submit(update)
            self.mirror.apply(update, at)
            # status asks about chunk `next_chunk - 1` at the earliest: older history only costs memory
            self.mirror.forget_before(max(at - 1, 0))
            return {"applies_at_chunk": at}

    def _check_blend(self, update: dict) -> None:
        """Refuse a new fading prompt when MAX_BLEND_PROMPTS live prompts already blend: every prompt
        of a blend is encoded for every chunk. A switch at once (transition 0 or 1) is always taken."""
        if update["command"] != "set_prompt" or update.get("transition", 0) <= 1:
            return
        at = self.channel.state()["next_chunk"]
        blending = self.mirror.live_prompts(at)
        if blending >= MAX_BLEND_PROMPTS:
            raise UpdateError(
                f"set_prompt: {blending} live prompts already blend at chunk {at} (at most {MAX_BLEND_PROMPTS}); "
                f"wait until a transition completes, or send transition 0 to switch at once", "transition")

    def stop(self) -> dict:
        """The control `stop`: no chunk starts after the one in progress; answers the chunk it applies at."""
        return {"applies_at_chunk": self.channel.stop()}

    def status_fields(self, chunk: Optional[int] = None, start_time: Optional[float] = None) -> dict:
        """Live settings for status: `chunk`/`start_time` are those of the chunk being shown
        (default: the next chunk to be generated)."""
        state = self.channel.state()
        k = state["next_chunk"] if chunk is None else chunk
        fields = dict(state)
        try:
            s = self.mirror.settings_for_chunk(k, start_time)
        except ValueError:
            return fields
        fields.update(
            prompt=s.prompt,
            prompt_weights=[[t.prompt, round(t.weight, 6)] for t in s.blend.terms],
            negative_prompt=s.negative_prompt,
            guidance_scale=s.guidance_scale,
            conditioning=[s.min_conditioning_frames, s.max_conditioning_frames],
            seed=s.seed,
            scheduled=self.mirror.upcoming(k, start_time),
        )
        return fields


# ------------------------------------------------------------------------------------------------
# client
# ------------------------------------------------------------------------------------------------
class ControlClient:
    """A REQ client with a timeout per request. A REQ socket that timed out is stuck waiting for its
    answer, so it is closed (linger 0) and a fresh one is made for the next request."""

    def __init__(self, address: str = DEFAULT_CONTROL_ADDRESS, timeout: float = 5.0) -> None:
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"--timeout: got {timeout!r}; use seconds > 0")
        self.address = address
        self.timeout = float(timeout)
        self._ctx = zmq.Context()
        self._sock: Optional[zmq.Socket] = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            if self.address.startswith("tcp://["):
                sock.setsockopt(zmq.IPV6, 1)
            try:
                sock.connect(self.address)
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                raise ControlError(f"--address: cannot connect to {self.address!r}: {exc.strerror}; use tcp://HOST:PORT") from None
            self._sock = sock
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(self, message: Any) -> dict:
        """Send a dict (as JSON) or raw str/bytes; return the answer dict, ok or not.
        Raises ControlError when no answer comes within the timeout or it is not JSON."""
        if isinstance(message, bytes):
            payload = message
        elif isinstance(message, str):
            payload = message.encode("utf-8")
        else:
            payload = json.dumps(message).encode("utf-8")
        sock = self._socket()
        sock.send(payload)
        if not sock.poll(int(self.timeout * 1000), zmq.POLLIN):
            self._drop_socket()
            raise ControlError(
                f"no answer from {self.address} within {self.timeout:g} s; is a stream running with --control {self.address}?"
            )
        raw = sock.recv()
        try:
            answer = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ControlError(f"{self.address} answered something that is not JSON: {raw[:80]!r}") from None
        if not isinstance(answer, dict):
            raise ControlError(f"{self.address} answered {answer!r}, not a JSON object")
        return answer

    def call(self, command: str, **fields: Any) -> dict:
        """Send a command; return the answer, or raise ControlError carrying an error answer."""
        answer = self.request({"command": command, **fields})
        if not answer.get("ok"):
            raise ControlError(format_error(answer), answer)
        return answer

    def close(self) -> None:
        self._drop_socket()
        self._ctx.term()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def format_error(answer: Mapping[str, Any]) -> str:
    field = answer.get("field")
    where = f" (field: {field})" if field else ""
    return f"{answer.get('error', 'request failed')}{where}"


# ------------------------------------------------------------------------------------------------
# CLI: `continuityseq-stream control ...`
# ------------------------------------------------------------------------------------------------
def _send(ctx: click.Context, message: Any) -> None:
    address, timeout = ctx.obj["address"], ctx.obj["timeout"]
    try:
        with ControlClient(address, timeout) as client:
            answer = client.request(message)
    except ContinuitySeqError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(2)
    if not answer.get("ok"):
        click.echo(f"error: {format_error(answer)}", err=True)
        ctx.exit(2)
    click.echo(json.dumps(answer, sort_keys=True))


@click.group("control", help="Steer a running stream started with --control ADDRESS (prints the JSON answer).")
@click.option("--address", default=DEFAULT_CONTROL_ADDRESS, show_default=True, help="The stream's --control address.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True, help="Seconds to wait for the answer.")
@click.pass_context
def control_command(ctx: click.Context, address: str, timeout: float) -> None:
    ctx.obj = {"address": address, "timeout": timeout}


@control_command.command("set-prompt")
@click.argument("prompt")
@click.option("--transition", type=click.IntRange(min=0), default=None, help="Blend over this many chunks (0/1: at once).")
@click.option("--negative-prompt", default=None, help="Also set the negative prompt.")
@click.pass_context
def _set_prompt(ctx: click.Context, prompt: str, transition: Optional[int], negative_prompt: Optional[str]) -> None:
    """Show PROMPT from the next chunk on (replaces the prompt file's schedule)."""
    msg: dict = {"command": "set_prompt", "prompt": prompt}
    if transition is not None:
        msg["transition"] = transition
    if negative_prompt is not None:
        msg["negative_prompt"] = negative_prompt
    _send(ctx, msg)


@control_command.command("set-negative-prompt")
@click.argument("negative_prompt")
@click.pass_context
def _set_negative_prompt(ctx: click.Context, negative_prompt: str) -> None:
    """Use NEGATIVE_PROMPT from the next chunk on ("" for none)."""
    _send(ctx, {"command": "set_negative_prompt", "negative_prompt": negative_prompt})


@control_command.command("set-guidance")
@click.argument("guidance_scale", type=float)
@click.pass_context
def _set_guidance(ctx: click.Context, guidance_scale: float) -> None:
    """Classifier-free guidance scale (>= 0) from the next chunk on."""
    _send(ctx, {"command": "set_guidance", "guidance_scale": guidance_scale})


@control_command.command("set-conditioning")
@click.argument("minimum", metavar="MIN", type=int)
@click.argument("maximum", metavar="MAX", type=int)
@click.pass_context
def _set_conditioning(ctx: click.Context, minimum: int, maximum: int) -> None:
    """Draw the number of conditioning frames in [MIN, MAX] (like -CN/-CX)."""
    _send(ctx, {"command": "set_conditioning", "min": minimum, "max": maximum})


@control_command.command("set-seed")
@click.argument("seed", type=int)
@click.pass_context
def _set_seed(ctx: click.Context, seed: int) -> None:
    """Re-seed the generator at the next chunk."""
    _send(ctx, {"command": "set_seed", "seed": seed})


def _simple(name: str, doc: str) -> None:
    @control_command.command(name.replace("_", "-"), help=doc)
    @click.pass_context
    def _cmd(ctx: click.Context) -> None:
        _send(ctx, {"command": name})


_simple("pause", "Stop starting new chunks (sinks that pace, like RTMP, hold the last frame).")
_simple("resume", "Go on generating after pause.")
_simple("stop", "End the run cleanly after the chunk in progress.")
_simple("status", "Print the run's figures, current prompt and scheduled prompts.")


@control_command.command("send")
@click.argument("message")
@click.pass_context
def _send_raw(ctx: click.Context, message: str) -> None:
    """Send MESSAGE verbatim (a JSON object), for scripting and debugging."""
    _send(ctx, message)


if __name__ == "__main__":  # python -m continuityseq_stream.control.server --address ... status
    sys.exit(control_command(prog_name="continuityseq-stream control"))
