"""The multi-stream API served by aiohttp (the local back end), on the service's server thread."""

from __future__ import annotations

from aiohttp import web

from .api import ApiRequest, ClusterApi, error_json

__all__ = ["build_app"]

API_KEY = web.AppKey("cluster_api", ClusterApi)


async def _handle(request: web.Request) -> web.StreamResponse:
    api = request.app[API_KEY]
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        answer = error_json(f"the request body is larger than {api.options.max_body} bytes; send a smaller one", 413)
    else:
        answer = await api.handle(ApiRequest(request.method, request.path, request.query_string,
                                             dict(request.headers), body, request.remote or "?"))
    return web.Response(body=answer.body, status=answer.status, headers=answer.headers)


async def _close(app: web.Application) -> None:
    await app[API_KEY].close()


def build_app(api: ClusterApi) -> web.Application:
    """One catch-all route: `ClusterApi` does the routing, so Ray Serve can carry the same API."""
    app = web.Application(client_max_size=api.options.max_body)
    app[API_KEY] = api
    app.router.add_route("*", "/{tail:.*}", _handle)
    app.on_cleanup.append(_close)
    return app
