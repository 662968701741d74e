"""OSC (python-osc, UDP): control commands in, telemetry out.

Commands (`--osc HOST:PORT`, loopback unless --osc-allow-remote; OSC has no authentication):

    /prompt s [i]          set_prompt: the prompt [, transition in chunks]
    /negative_prompt s     set_negative_prompt
    /guidance f            set_guidance (an int is taken too)
    /conditioning i i      set_conditioning min max
    /seed i                set_seed
    /pause  /resume  /stop

Each message goes through the same dispatcher as HTTP; the answer goes back to the sender's address
and port: `/ok s i` (the command, the chunk it applies at) or `/error s` (one line). A bundle is
taken message by message. Senders are rate limited like HTTP clients (per host).

Telemetry (`--osc-telemetry HOST:PORT`): `/continuityseq/chunk i s` (chunk index, prompt) when a
chunk arrives, `/continuityseq/seam f` (its seam score), and once a second `/continuityseq/fps f f`
(generation fps, output fps), `/continuityseq/ring i i` (fill, slots), `/continuityseq/viewers i`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Optional

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket, ParseError

from ..control import error_response
from .limits import RateLimiter
from .state import ServiceState

log = logging.getLogger(__name__)

__all__ = ["OscPart", "OSC_COMMANDS", "osc_to_command", "build_message"]

#: address -> (command, field names in argument order, how many are required, argument types shown)
OSC_COMMANDS = {
    "/prompt": ("set_prompt", ("prompt", "transition"), 1, "s [i]"),
    "/negative_prompt": ("set_negative_prompt", ("negative_prompt",), 1, "s"),
    "/guidance": ("set_guidance", ("guidance_scale",), 1, "f"),
    "/conditioning": ("set_conditioning", ("min", "max"), 2, "i i"),
    "/seed": ("set_seed", ("seed",), 1, "i"),
    "/pause": ("pause", (), 0, ""),
    "/resume": ("resume", (), 0, ""),
    "/stop": ("stop", (), 0, ""),
}

TELEMETRY_PERIOD = 1.0


def osc_to_command(address: str, args: tuple) -> dict:
    """An OSC message -> a control command dict, or an error answer (unknown address, argument count)."""
    spec = OSC_COMMANDS.get(address)
    if spec is None:
        return error_response(f"unknown OSC address {address[:60]!r}; known: {', '.join(OSC_COMMANDS)}")
    command, names, required, types = spec
    if not required <= len(args) <= len(names):
        takes = f"takes {types}" if types else "takes no arguments"
        return error_response(f"{address} {takes}, got {len(args)} argument(s)")
    return {"command": command, **dict(zip(names, args))}


def build_message(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, part: "OscPart") -> None:
        self.part = part
        self.transport: Optional[asyncio.DatagramTransport] = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.part.received(data, addr, self.transport)


class OscPart:
    """The OSC server and telemetry sender, a part of the service's event loop (server.py)."""

    def __init__(self, state: ServiceState, listen: Optional[tuple[str, int]],
                 telemetry: Optional[tuple[str, int]]) -> None:
        self.state, self.listen, self.telemetry = state, listen, telemetry
        self.limiter = RateLimiter(state.options.rate, state.options.burst)
        self.transport: Optional[asyncio.DatagramTransport] = None
        self.address: Optional[tuple[str, int]] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._sock: Optional[socket.socket] = None
        self._tasks: list[asyncio.Task] = []
        self._unsubscribe = None

    async def start(self, app, loop: asyncio.AbstractEventLoop) -> None:
        from ..errors import ConfigError

        self._loop = loop
        if self.listen is not None:
            try:
                self.transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=self.listen)
            except OSError as exc:
                raise ConfigError(f"--osc: cannot listen on {self.listen[0]}:{self.listen[1]}: "
                                  f"{exc.strerror or exc}; choose another port") from None
            self.address = self.transport.get_extra_info("sockname")[:2]
            log.info("OSC on udp %s:%d", *self.address)
        if self.telemetry is not None:
            family = socket.AF_INET6 if ":" in self.telemetry[0] else socket.AF_INET
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._unsubscribe = self.state.bus.subscribe(self._on_event)
            self._tasks.append(loop.create_task(self._periodic()))

    # -- commands ---------------------------------------------------------------------------------------
    def received(self, data: bytes, addr, transport) -> None:
        try:
            messages = OscPacket(data).messages
        except ParseError as exc:
            self._reply(transport, addr, "/error", f"not an OSC packet: {str(exc)[:80]}")
            return
        for timed in messages:
            message = timed.message
            wait = self.limiter.allow(addr[0])
            if wait > 0:
                self._reply(transport, addr, "/error", f"too many messages from {addr[0]}; retry in {wait:.2f} s")
                continue
            command = osc_to_command(message.address, tuple(message.params))
            if command.get("ok") is False:
                self.state.count_command("osc", command)
                self._reply(transport, addr, "/error", command["error"])
                continue
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(self._loop.create_task(self._dispatch(command, addr, transport)))

    async def _dispatch(self, command: dict, addr, transport) -> None:
        answer = await self._loop.run_in_executor(None, self.state.dispatcher.dispatch, command)
        self.state.count_command("osc", answer)
        if answer.get("ok"):
            self._reply(transport, addr, "/ok", answer["command"], int(answer.get("applies_at_chunk", -1)))
        else:
            self._reply(transport, addr, "/error", answer["error"])
            log.info("OSC %s from %s: %s", command.get("command"), addr[0], answer["error"])

    @staticmethod
    def _reply(transport, addr, address: str, *args: Any) -> None:
        try:
            transport.sendto(build_message(address, *args), addr)
        except OSError:
            pass  # the sender is gone: UDP has nobody to tell

    # -- telemetry ----------------------------------------------------------------------------------------
    def _send(self, address: str, *args: Any) -> None:
        try:
            self._sock.sendto(build_message(address, *args), self.telemetry)
        except OSError:
            pass  # no listener (ICMP refused) or a full buffer: telemetry is best effort

    def _on_event(self, event: dict) -> None:
        if event["event"] == "chunk":
            self._send("/continuityseq/chunk", int(event["chunk"]), str(event["prompt"]))
        elif event["event"] == "seam" and event.get("seam_score") is not None:
            self._send("/continuityseq/seam", float(event["seam_score"]))

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(TELEMETRY_PERIOD)
            status = self.state.status()
            self._send("/continuityseq/fps", float(status.get("gen_fps", 0.0)), float(status.get("out_fps", 0.0)))
            self._send("/continuityseq/ring", int(status.get("ring_fill", 0)), int(status.get("ring_slots", 0)))
            self._send("/continuityseq/viewers", int(status.get("viewers", 0)))

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._tasks:
            task.cancel()
        if self.transport is not None:
            self.transport.close()
        if self._sock is not None:
            self._sock.close()
