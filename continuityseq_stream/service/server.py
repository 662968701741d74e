"""The service's asyncio side on a thread of its own: the HTTP app, and the parts that plug into it.

`runtime.run` must own the main thread (it installs the signal handlers), so the event loop that
serves HTTP, OSC and WebRTC runs on a daemon thread. `ServiceServer.start()` binds before it returns
(a taken or refused port is a ConfigError, before any model is loaded) and `close()` ends every
part and the loop. A part is any object with `async start(app, loop)` and `async close()`
(OSC and WebRTC); a part that fails to start is a ConfigError too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Optional, Protocol

from aiohttp import web

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ServiceServer", "Part"]


class Part(Protocol):
    async def start(self, app: web.Application, loop: asyncio.AbstractEventLoop) -> None: ...

    async def close(self) -> None: ...


class ServiceServer:
    def __init__(self, app: web.Application, host: str, port: int, parts: tuple = ()) -> None:
        self.app, self.host, self.requested_port, self.parts = app, host, port, list(parts)
        self.port: Optional[int] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._main, name="service-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> "ServiceServer":
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join(5.0)
            raise self._error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._start())
        except OSError as exc:
            self._error = ConfigError(f"--port: cannot listen on {self.host}:{self.requested_port}: "
                                      f"{exc.strerror or exc}; choose another --port (0: any free one)")
        except ConfigError as exc:
            self._error = exc
        except Exception as exc:  # noqa: BLE001 - reported to start() as one line
            log.exception("service failed to start")
            self._error = ConfigError(f"serve: the server failed to start: {type(exc).__name__}: {exc}")
        if self._error is not None:
            loop.run_until_complete(self._shutdown())
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # the bound port (0 -> a free one)
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        loop = asyncio.get_running_loop()
        for part in self.parts:
            await part.start(self.app, loop)

    async def _shutdown(self) -> None:
        for part in reversed(self.parts):
            try:
                await asyncio.wait_for(part.close(), 5.0)
            except Exception:  # noqa: BLE001 - closing must go on
                log.exception("service part failed to close")
        if self._runner is not None:
            await self._runner.cleanup()

    def call(self, coro, timeout: float = 10.0):
        """Run a coroutine on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(15.0)
