"""The control server (a ZeroMQ REP socket in a thread of the run) and `LiveController`, the run's
ready-made handler that forwards changes to the producer. The protocol: control/__init__.py."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Mapping, Optional

import zmq

from ..errors import ConfigError, ContinuitySeqError, ControlError  # noqa: F401 (ControlError re-exported)
from ..prompts import (MAX_BLEND_PROMPTS, MAX_PROMPT_CHARS, RUN_COMMANDS, LiveSettings, UpdateChannel, UpdateError,
                      validate_update)
from .protocol import (DEFAULT_CONTROL_ADDRESS, DROP_REQUEST_BYTES, MAX_REQUEST_BYTES, check_control_address,
                       encode_answer, error_response, parse_request, short_text)

log = logging.getLogger(__name__)


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
            answer = error_response(f"internal error: {type(exc).__name__}: {short_text(str(exc))}")
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
