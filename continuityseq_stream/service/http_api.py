"""The HTTP API (aiohttp): status, control commands, schedule, OpenAPI, /metrics, /healthz, the page.

Why aiohttp: one asyncio library that is the HTTP server, the test client and the server aiortc's own
examples use for WebRTC signalling; no request-model layer of its own (every command is checked by
the one dispatcher, not by a second set of rules), small, and OpenAPI comes from the command table
(openapi.py) instead of from decorators.

Routes (`openapi_document()` is the reference):
    GET  /                 the page (page/index.html)          GET /openapi.json   the schema
    GET  /healthz          200 healthy / 503 unhealthy         GET /metrics        Prometheus text
    GET  /api/status       figures, current prompt, schedule   GET /api/schedule   prompt now and next
    POST /api/command      any control command (JSON, as the ZeroMQ socket takes it)
    POST /api/prompt | negative-prompt | guidance | conditioning | seed | pause | resume | stop
    POST /whep, DELETE /whep/{id}   WebRTC viewers (webrtc.py), when aiortc is installed

Security: with a token every route except /, /healthz and /openapi.json needs `Authorization: Bearer
TOKEN` (compared in constant time; never read from the query string, which ends up in logs); there is
no access log. Bodies are limited to `max_body` bytes, each client to `rate`/`burst` requests.
Every error is JSON `{"ok": false, "error": "<one line>", "field": ...}`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from importlib import resources
from typing import Awaitable, Callable, Optional

from aiohttp import web

from ..control import encode_answer, error_response, parse_request
from ..prompts import UpdateError
from .dispatcher import command_from
from .limits import RateLimiter
from .openapi import COMMAND_ROUTES, openapi_document
from .prometheus import CONTENT_TYPE, ServiceMetrics
from .state import ServiceState

log = logging.getLogger(__name__)

__all__ = ["build_app", "PUBLIC_PATHS"]

#: paths anyone who reaches the port may GET, token or not
PUBLIC_PATHS = frozenset({"/", "/healthz", "/openapi.json", "/favicon.ico"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATE_KEY = web.AppKey("state", ServiceState)
METRICS_KEY = web.AppKey("metrics", ServiceMetrics)
LIMITER_KEY = web.AppKey("limiter", RateLimiter)


def json_response(answer: dict, status: int = 200, **headers: str) -> web.Response:
    return web.Response(body=encode_answer(answer), status=status, content_type="application/json",
                        headers=headers or None)


def error_json(message: str, status: int, field: Optional[str] = None, **headers: str) -> web.Response:
    return json_response(error_response(message, field), status, **headers)


def answer_status(answer: dict) -> int:
    """HTTP status of a control answer: 200 ok, 503 stream not answering, 400 a bad command."""
    if answer.get("ok"):
        return 200
    return 503 if answer.get("unavailable") else 400


# -- middlewares -------------------------------------------------------------------------------------
@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413...) as one-line JSON like every other error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            limit = request.app[STATE_KEY].options.max_body
            return error_json(f"the request body is larger than {limit} bytes; send a smaller one", 413)
        return error_json(f"{exc.status} {exc.reason}: {request.method} {request.path}", exc.status)


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    wait = request.app[LIMITER_KEY].allow(request.remote or "?")
    if wait > 0:
        return error_json(f"too many requests from {request.remote}; retry in {wait:.2f} s", 429,
                          **{"Retry-After": str(max(1, round(wait + 0.5)))})
    return await handler(request)


@web.middleware
async def bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[STATE_KEY].options.token
    if token is None or request.path in PUBLIC_PATHS:
        return await handler(request)
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        return error_json("missing or wrong bearer token; send the header 'Authorization: Bearer TOKEN' "
                          "(serve --token)", 401, **{"WWW-Authenticate": 'Bearer realm="continuityseq"'})
    return await handler(request)


# -- handlers ----------------------------------------------------------------------------------------
async def dispatch(request: web.Request, message, surface: str = "http") -> dict:
    """Run the blocking dispatcher off the event loop."""
    state = request.app[STATE_KEY]
    answer = await asyncio.get_running_loop().run_in_executor(None, state.dispatcher.dispatch, message)
    return state.count_command(surface, answer)


async def read_json(request: web.Request, required: bool = True):
    """(object, None) or (None, error response): the body parsed as JSON with the control socket's
    messages; an empty body is {} unless `required`."""
    body = await request.read()
    if not body.strip() and not required:
        return {}, None
    message, problem = parse_request(body)
    if problem is not None:
        return None, error_json(problem, 400)
    return message, None


async def post_command(request: web.Request) -> web.Response:
    message, problem = await read_json(request)
    if problem is not None:
        return problem
    answer = await dispatch(request, message)
    return json_response(answer, answer_status(answer))


def command_handler(command: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        fields, problem = await read_json(request, required=False)
        if problem is not None:
            return problem
        try:
            message = command_from(command, fields)
        except UpdateError as exc:
            return error_json(str(exc), 400, exc.field)
        answer = await dispatch(request, message)
        return json_response(answer, answer_status(answer))

    handler.__name__ = f"post_{command}"
    return handler


async def get_status(request: web.Request) -> web.Response:
    return json_response({"ok": True, **request.app[STATE_KEY].status()})


async def get_schedule(request: web.Request) -> web.Response:
    status = request.app[STATE_KEY].status()
    keys = ("current_chunk", "prompt", "prompt_weights", "negative_prompt", "guidance_scale", "conditioning",
            "seed", "paused", "scheduled")
    return json_response({"ok": True, **{k: status.get(k) for k in keys}})


async def get_health(request: web.Request) -> web.Response:
    health = request.app[STATE_KEY].health()
    return json_response(health.as_dict(), 200 if health.healthy else 503)


async def get_metrics(request: web.Request) -> web.Response:
    body = await asyncio.get_running_loop().run_in_executor(None, request.app[METRICS_KEY].render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(openapi_document(), indent=1), content_type="application/json")


async def get_page(request: web.Request) -> web.Response:
    page = resources.files(__package__).joinpath("page/index.html").read_bytes()
    return web.Response(body=page, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                 "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                                            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                                            "media-src 'self' blob:; connect-src 'self'"})


async def get_favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)


def build_app(state: ServiceState, metrics: ServiceMetrics) -> web.Application:
    """The aiohttp application (WebRTC routes are added by webrtc.py)."""
    app = web.Application(client_max_size=state.options.max_body,
                          middlewares=[errors_as_json, rate_limit, bearer_token])
    app[STATE_KEY] = state
    app[METRICS_KEY] = metrics
    app[LIMITER_KEY] = RateLimiter(state.options.rate, state.options.burst)
    app.router.add_get("/", get_page)
    app.router.add_get("/favicon.ico", get_favicon)
    app.router.add_get("/healthz", get_health)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/openapi.json", get_openapi)
    app.router.add_get("/api/status", get_status)
    app.router.add_get("/api/schedule", get_schedule)
    app.router.add_post("/api/command", post_command)
    for route, command in COMMAND_ROUTES.items():
        app.router.add_post(f"/api/{route}", command_handler(command))
    return app
