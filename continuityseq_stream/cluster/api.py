"""The multi-stream HTTP API, independent of the web framework that carries it.

`ClusterApi.handle(ApiRequest) -> ApiResponse` is the whole API; `http.py` serves it with aiohttp
(the local back end) and `ray_ingress.py` as a Ray Serve deployment (the Ray back end), so both back
ends answer the same routes with the same bytes:

    GET    /                          the page: the streams, each a link to its own page
    GET    /healthz                   200 while the service answers; each stream's state
    GET    /metrics                   every stream's metrics with a stream="ID" label, and the service's
    GET    /streams                   the streams                     POST /streams   create one (201)
    GET    /streams/ID                one stream, with its status     DELETE /streams/ID   delete it
    POST   /streams/ID/stop           end it on purpose (listed until deleted)
    *      /streams/ID/api/...        the stream's own API (status, prompt, guidance, ... stop)
    GET    /streams/ID/healthz | metrics     POST /streams/ID/whep, DELETE /streams/ID/whep/VID

The per-stream routes are forwarded to the stream's own service, with its token: the commands are
exactly the single-stream API's. WHEP is signalling only: the answer's ICE candidates are the
stream's own host, so video goes from the stream's node to the viewer, never through here.
Security as for `serve`: a bearer token on every route but / and /healthz (needed off loopback),
request bodies up to `max_body` bytes, per-client rate limits, and every error one line of JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Mapping, Optional

from ..control import encode_answer, error_response
from ..errors import ClusterFull, ConfigError, ContinuitySeqError, StreamNotFound
from ..service.limits import RateLimiter
from .backend import Backend
from .metrics import merge_metrics, service_metrics
from .options import ClusterOptions
from .spec import StreamSpec

log = logging.getLogger(__name__)

__all__ = ["ClusterApi", "ApiRequest", "ApiResponse", "PUBLIC_PATHS"]

PUBLIC_PATHS = frozenset({"/", "/healthz", "/favicon.ico"})
_STREAM = re.compile(r"/streams/([^/]+)(/.*)?\Z")
#: the stream's own routes that are forwarded (everything else under /streams/ID is the service's)
_FORWARDED = re.compile(r"/(api/[a-z_/-]+|healthz|metrics|whep|whep/[A-Za-z0-9_-]+)\Z")
_PROXY_TIMEOUT = 20.0


@dataclass
class ApiRequest:
    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    remote: str = "?"

    def header(self, name: str) -> str:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return ""


@dataclass
class ApiResponse:
    status: int
    body: bytes
    headers: dict = field(default_factory=dict)


def json_response(answer: dict, status: int = 200, **headers: str) -> ApiResponse:
    return ApiResponse(status, encode_answer(answer), {"Content-Type": "application/json", **headers})


def error_json(message: str, status: int, **headers: str) -> ApiResponse:
    return json_response(error_response(message), status, **headers)


class ClusterApi:
    def __init__(self, backend: Backend, options: ClusterOptions) -> None:
        self.backend, self.options = backend, options
        self.limiter = RateLimiter(options.rate, options.burst)
        self.started = time.time()
        self._session = None

    # -- entry -------------------------------------------------------------------------------------
    async def handle(self, req: ApiRequest) -> ApiResponse:
        try:
            return await self._handle(req)
        except StreamNotFound as exc:
            return error_json(str(exc), 404)
        except ClusterFull as exc:
            return error_json(str(exc), 503, **{"Retry-After": "30"})
        except ContinuitySeqError as exc:
            return error_json(str(exc), 400)
        except Exception as exc:  # noqa: BLE001 - the service must answer, whatever broke
            log.exception("cluster API: %s %s", req.method, req.path)
            return error_json(f"internal error: {type(exc).__name__}: {exc}", 500)

    async def _handle(self, req: ApiRequest) -> ApiResponse:
        wait = self.limiter.allow(req.remote)
        if wait > 0:
            return error_json(f"too many requests from {req.remote}; retry in {wait:.2f} s", 429,
                              **{"Retry-After": str(max(1, round(wait + 0.5)))})
        if len(req.body) > self.options.max_body:
            return error_json(f"the request body is larger than {self.options.max_body} bytes; send a smaller one", 413)
        if not self._authorized(req):
            return error_json("missing or wrong bearer token; send the header 'Authorization: Bearer TOKEN' "
                              "(cluster --token)", 401, **{"WWW-Authenticate": 'Bearer realm="continuityseq"'})
        method, path = req.method.upper(), req.path
        if path == "/" and method == "GET":
            return self._page()
        if path == "/favicon.ico":
            return ApiResponse(204, b"")
        if path == "/healthz" and method == "GET":
            return await self._health()
        if path == "/metrics" and method == "GET":
            return await self._metrics()
        if path == "/streams":
            if method == "GET":
                return json_response({"ok": True, "backend": self.backend.name,
                                      "streams": await self._run(self.backend.streams)})
            if method == "POST":
                return await self._create(req)
            return self._not_allowed(req)
        found = _STREAM.match(path)
        if found:
            return await self._stream_route(req, found.group(1), found.group(2) or "")
        return error_json(f"404 Not Found: {method} {path}; see GET /streams", 404)

    def _authorized(self, req: ApiRequest) -> bool:
        token = self.options.token
        if token is None or req.path in PUBLIC_PATHS:
            return True
        scheme, _, value = req.header("Authorization").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    @staticmethod
    def _not_allowed(req: ApiRequest) -> ApiResponse:
        return error_json(f"405 Method Not Allowed: {req.method} {req.path}", 405)

    @staticmethod
    async def _run(fn, *args):
        """A blocking back-end call (process waits, Ray calls) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- the service's own routes ------------------------------------------------------------------
    async def _create(self, req: ApiRequest) -> ApiResponse:
        try:
            body = json.loads(req.body or b"{}")
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"the body is not JSON ({type(exc).__name__}); send an object like "
                              f'{{"id": "venue-a", "flags": {{"model": "demo", "prompt": "a red ball"}}}}') from None
        spec = StreamSpec.from_json(body, default_id=f"stream-{secrets.token_hex(3)}")
        info = await self._run(self.backend.create, spec)
        return json_response({"ok": True, **info}, 201, Location=f"/streams/{spec.id}")

    async def _stream_route(self, req: ApiRequest, stream_id: str, rest: str) -> ApiResponse:
        method = req.method.upper()
        if rest in ("", "/"):
            if method == "GET":
                info = await self._run(self.backend.info, stream_id)
                info["status"] = await self._stream_status(stream_id)
                return json_response({"ok": True, **info})
            if method == "DELETE":
                await self._run(self.backend.delete, stream_id)
                return json_response({"ok": True, "deleted": stream_id})
            return self._not_allowed(req)
        if rest == "/stop":
            if method != "POST":
                return self._not_allowed(req)
            return json_response({"ok": True, **await self._run(self.backend.stop, stream_id)})
        if _FORWARDED.match(rest):
            return await self._forward(req, stream_id, rest)
        return error_json(f"404 Not Found: {method} {req.path}; a stream has /api/..., /healthz, /metrics, "
                          f"/whep, /stop", 404)

    async def _health(self) -> ApiResponse:
        streams = await self._run(self.backend.streams)
        states = {s["id"]: s["state"] for s in streams}
        return json_response({"ok": True, "healthy": True, "backend": self.backend.name,
                              "uptime": round(time.time() - self.started, 1), "streams": states})

    async def _metrics(self) -> ApiResponse:
        streams = await self._run(self.backend.streams)
        texts = {}
        for info in streams:
            if info.get("state") == "running":
                got = await self._forward_raw("GET", info["id"], "/metrics")
                if got is not None and got[0] == 200:
                    texts[info["id"]] = got[1].decode("utf-8", "replace")
        body = merge_metrics(texts) + service_metrics(streams)
        return ApiResponse(200, body.encode(), {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    def _page(self) -> ApiResponse:
        page = resources.files(__package__).joinpath("page/index.html").read_bytes()
        return ApiResponse(200, page, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
                                       "Referrer-Policy": "no-referrer"})

    # -- forwarding to a stream's own service ------------------------------------------------------
    async def _stream_status(self, stream_id: str) -> Optional[dict]:
        got = await self._forward_raw("GET", stream_id, "/api/status")
        if got is None or got[0] != 200:
            return None
        try:
            return json.loads(got[1])
        except ValueError:
            return None

    async def _forward(self, req: ApiRequest, stream_id: str, rest: str) -> ApiResponse:
        got = await self._forward_raw(req.method.upper(), stream_id, rest, req.query, req.body,
                                      req.header("Content-Type"))
        if got is None:
            info = await self._run(self.backend.info, stream_id)  # StreamNotFound -> 404
            return error_json(f"stream {stream_id!r} is not serving (state {info.get('state')}); "
                              f"retry in a few seconds", 503, **{"Retry-After": "2"})
        status, body, headers = got
        out = {k: v for k, v in headers.items() if k.lower() in ("content-type", "retry-after", "etag")}
        location = headers.get("Location")
        if location:  # a WHEP session's URL, as the viewer must call it: through this service
            out["Location"] = f"/streams/{stream_id}{location}" if location.startswith("/") else location
        return ApiResponse(status, body, out)

    async def _forward_raw(self, method: str, stream_id: str, rest: str, query: str = "", body: bytes = b"",
                           content_type: str = "") -> Optional[tuple[int, bytes, dict]]:
        """(status, body, headers) of the stream's own answer, or None when it cannot be reached."""
        import aiohttp

        url, token = await self._run(self.backend.endpoint, stream_id)
        if url is None:
            return None
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_PROXY_TIMEOUT))
        headers = {"Authorization": f"Bearer {token}"}
        if content_type:
            headers["Content-Type"] = content_type
        target = url.rstrip("/") + rest + (f"?{query}" if query else "")
        try:
            async with self._session.request(method, target, data=body or None, headers=headers) as resp:
                return resp.status, await resp.read(), dict(resp.headers)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.info("stream %s: %s %s: %s", stream_id, method, rest, exc)
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
