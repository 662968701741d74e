"""The multi-stream API as a Ray Serve deployment (the Ray back end's ingress).

The deployment holds a `ClusterApi` over a `RayBackend`; all stream state lives in the stream
actors and their folders, so the ingress can be stopped, restarted or replicated without touching
a stream. Ray Serve's HTTP proxy listens on `host:port`; requests reach `Ingress.__call__` as
Starlette requests and go through the same `ClusterApi.handle` as on the local back end.
"""

from __future__ import annotations

from pathlib import Path

from .api import ApiRequest, ClusterApi, error_json
from .options import ClusterOptions
from .ray_backend import RayBackend

__all__ = ["deploy", "APP_NAME"]

APP_NAME = "continuityseq"


def _deployment():
    from ray import serve
    from starlette.responses import Response

    @serve.deployment(name="continuityseq-ingress", num_replicas=1, ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=64)
    class Ingress:
        def __init__(self, options: dict, root: str) -> None:
            self.options = ClusterOptions.from_dict(options)
            backend = RayBackend(Path(root), stream_cpus=self.options.stream_cpus,
                                 max_restarts=self.options.max_restarts, start_timeout=self.options.start_timeout)
            self.api = ClusterApi(backend, self.options)

        async def __call__(self, request) -> Response:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.options.max_body:
                answer = error_json(f"the request body is larger than {self.options.max_body} bytes; "
                                    f"send a smaller one", 413)
            else:
                answer = await self.api.handle(ApiRequest(
                    request.method, request.url.path, request.url.query, dict(request.headers),
                    await request.body(), request.client.host if request.client else "?"))
            return Response(answer.body, status_code=answer.status, headers=answer.headers)

    return Ingress


def deploy(options: ClusterOptions, root: Path) -> str:
    """Start Ray Serve's proxy on options.host:port and the ingress behind it; its URL."""
    import dataclasses

    from ray import serve

    serve.start(http_options={"host": options.host, "port": options.port})
    app = _deployment().bind(dataclasses.asdict(options), str(root))
    serve.run(app, name=APP_NAME, route_prefix="/")
    host = f"[{options.host}]" if ":" in options.host else options.host
    return f"http://{host}:{options.port}/"


def undeploy() -> None:
    """Stop the ingress (the stream actors are detached: they go on). Ray Serve's own proxy and
    controller stay in the Ray cluster, so the next ingress starts in seconds (on the same port: a
    running Serve keeps its first http_options)."""
    from ray import serve

    try:
        serve.delete(APP_NAME)
    except Exception:  # noqa: BLE001 - best effort at exit
        pass
