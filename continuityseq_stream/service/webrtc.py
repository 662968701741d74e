"""WebRTC viewers (aiortc): a WHEP-style endpoint and a data channel for control and events.

    POST /whep            body: an SDP offer (application/sdp) -> 201, body: the SDP answer,
                          Location: /whep/<session>. Non-trickle: the answer carries the candidates.
    DELETE /whep/<session>  ends that viewer.

Each viewer gets a `HubTrack`: at its own ticks (the output fps) it takes the frame due now from the
frame hub (`FrameHub.latest`), so it is a `latest` reader: a viewer that is slow, or whose peer
stopped reading, skips frames (counted) and never holds generation or another viewer. aiortc encodes
per sender (each RTCRtpSender owns its encoder), so viewers do not share one encode; what they share
is the hub's frame (one copy of the pixels for all of them).

Data channel (any label; the page opens "control"): the peer sends control commands as JSON text,
exactly as the ZeroMQ socket takes them (`{"command": "set_prompt", "prompt": "..."}`), and gets the
dispatcher's answer back as JSON with `"type": "answer"`; the service sends per-chunk events
(`"type": "event"`, see tap.py) and once a second the status (`"type": "status"`). The channel belongs
to the peer connection that the WHEP request made, which passed the bearer-token check: no token
travels on it. Messages are limited in size (`max_body`) and rate (`rate`/`burst`) like HTTP.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
import secrets
import time
from typing import Optional

from aiohttp import web

from ..control import encode_answer, error_response, parse_request
from .limits import RateLimiter
from .state import ServiceState, ViewerStats

log = logging.getLogger(__name__)

__all__ = ["HubTrack", "WebRtcPart", "webrtc_part"]

CLOCK_RATE = 90_000
STATUS_PERIOD = 1.0


def webrtc_part(state: ServiceState) -> Optional["WebRtcPart"]:
    """The WebRTC part, or None (with one log line) when aiortc is not installed."""
    try:
        import aiortc  # noqa: F401
    except ImportError:
        log.info("aiortc is not installed: no WebRTC viewers (pip install 'continuityseq_stream[service]')")
        return None
    return WebRtcPart(state)


def _hub_track_class():
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError
    from av import VideoFrame

    class HubTrack(MediaStreamTrack):
        """A video track that shows the hub's frame due now, `fps` times a second."""

        kind = "video"

        def __init__(self, state: ServiceState, stats: ViewerStats, fps: float) -> None:
            super().__init__()
            self.state, self.stats, self.period = state, stats, 1.0 / fps
            self._start: Optional[float] = None
            self._ticks = 0

        async def recv(self) -> VideoFrame:
            if self.readyState != "live":
                raise MediaStreamError
            await self._tick()
            shown = self.state.hub.latest()
            while shown is None:  # before the first frame (model loading)
                await asyncio.sleep(0.05)
                if self.readyState != "live":
                    raise MediaStreamError
                shown = self.state.hub.latest()
            self.stats.count(shown.meta.index)
            frame = VideoFrame.from_ndarray(shown.frame, format="rgb24")
            frame.pts = int(round(self._ticks * self.period * CLOCK_RATE))
            frame.time_base = fractions.Fraction(1, CLOCK_RATE)
            return frame

        async def _tick(self) -> None:
            """Sleep until this viewer's next frame time; a late viewer does not try to catch up."""
            now = time.monotonic()
            if self._start is None:
                self._start = now
                return
            self._ticks += 1
            due = self._start + self._ticks * self.period
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 1.0:  # more than a second late (a stalled peer): restart the clock from now
                self._start, self._ticks = now - self._ticks * self.period, self._ticks

    return HubTrack


def HubTrack(state: ServiceState, stats: ViewerStats, fps: float):  # noqa: N802 - a class made on demand
    """Make a hub track (aiortc is imported only when WebRTC is used)."""
    return _hub_track_class()(state, stats, fps)


class _Viewer:
    """One WHEP session: its peer connection, track, stats and data channels."""

    def __init__(self, session: str, pc, stats: ViewerStats) -> None:
        self.session, self.pc, self.stats = session, pc, stats
        self.channels: list = []
        self.limiter: Optional[RateLimiter] = None


class WebRtcPart:
    """Adds the WHEP routes to the app and owns the viewers' peer connections."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.viewers: dict[str, _Viewer] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._unsubscribe = None
        self._status_task: Optional[asyncio.Task] = None
        self._counter = 0

    async def start(self, app: web.Application, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._unsubscribe = self.state.bus.subscribe(self._on_event)
        self._status_task = loop.create_task(self._status_loop())

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/whep", self.post_whep)
        app.router.add_delete("/whep/{session}", self.delete_whep)

    # -- WHEP ---------------------------------------------------------------------------------------------
    async def post_whep(self, request: web.Request) -> web.Response:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        from .http_api import error_json

        live = [v for v in self.viewers.values() if v.pc.connectionState not in ("closed", "failed")]
        if len(live) >= self.state.options.max_viewers:
            return error_json(f"{len(live)} viewers already watch (at most {self.state.options.max_viewers}); "
                              f"try again later", 503)
        offer = (await request.read()).decode("utf-8", errors="replace")
        if "v=0" not in offer or "m=video" not in offer:
            return error_json("send an SDP offer (Content-Type: application/sdp) with a video m-line to receive", 400)
        self._counter += 1
        session = secrets.token_urlsafe(12)
        stats = ViewerStats(f"viewer-{self._counter}")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: nothing leaves the host's own addresses
        viewer = _Viewer(session, pc, stats)
        viewer.limiter = RateLimiter(self.state.options.rate, self.state.options.burst)
        self.viewers[session] = viewer
        self.state.viewers[session] = stats

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            viewer.channels.append(channel)

            @channel.on("message")
            def on_message(message) -> None:
                self._loop.create_task(self._on_channel_message(viewer, channel, message))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._drop(session)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            pc.addTrack(HubTrack(self.state, stats, 1.0 / self.state.hub.period))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - a bad offer is the client's error, in one line
            await self._drop(session)
            return error_json(f"cannot answer this SDP offer: {' '.join(str(exc).split())[:200]}", 400)
        log.info("WebRTC viewer %s connected (%d watching)", stats.name, len(self.viewers))
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": f"/whep/{session}"})

    async def delete_whep(self, request: web.Request) -> web.Response:
        from .http_api import error_json

        session = request.match_info["session"]
        if session not in self.viewers:
            return error_json("no such WHEP session", 404)
        await self._drop(session)
        return web.Response(status=200)

    async def _drop(self, session: str) -> None:
        viewer = self.viewers.pop(session, None)
        if viewer is None:
            return
        viewer.stats.connected = False
        await viewer.pc.close()
        log.info("WebRTC viewer %s left", viewer.stats.name)

    # -- data channel -----------------------------------------------------------------------------------
    async def _on_channel_message(self, viewer: _Viewer, channel, message) -> None:
        raw = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        if len(raw) > self.state.options.max_body:
            answer = error_response(f"the message has {len(raw)} bytes; at most {self.state.options.max_body}")
        elif viewer.limiter.allow("channel") > 0:
            answer = error_response("too many messages; slow down")
        else:
            command, problem = parse_request(raw)
            if problem is not None:
                answer = error_response(problem)
            else:
                answer = await self._loop.run_in_executor(None, self.state.dispatcher.dispatch, command)
        self.state.count_command("webrtc", answer)
        self._send(channel, {"type": "answer", **answer})

    @staticmethod
    def _send(channel, message: dict) -> None:
        if channel.readyState == "open":
            try:
                channel.send(encode_answer(message).decode("utf-8"))
            except Exception:  # noqa: BLE001 - a closing channel: nothing to tell
                pass

    def _broadcast(self, message: dict) -> None:
        for viewer in list(self.viewers.values()):
            for channel in viewer.channels:
                self._send(channel, message)

    def _on_event(self, event: dict) -> None:
        """From the tap's thread: hand the event to the loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._broadcast, {"type": "event", **event})

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_PERIOD)
            if any(v.channels for v in self.viewers.values()):
                self._broadcast({"type": "status", **self.state.status()})

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._status_task is not None:
            self._status_task.cancel()
        for session in list(self.viewers):
            await self._drop(session)
