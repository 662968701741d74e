"""The control client (`ControlClient`) and the `continuityseq-stream control` command."""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping, Optional

import click
import zmq

from ..errors import ConfigError, ContinuitySeqError, ControlError
from .protocol import DEFAULT_CONTROL_ADDRESS

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


if __name__ == "__main__":  # python -m continuityseq_stream.control.client --address ... status
    sys.exit(control_command(prog_name="continuityseq-stream control"))
