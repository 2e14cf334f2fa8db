"""Serving an ASGI application (Starlette / FastAPI) with uvicorn inside the program's own
event loop: the only module that imports uvicorn.

``uvicorn.Server.serve`` installs its own SIGINT/SIGTERM handlers and owns the process's
shutdown; Derrick's programs own theirs (``run_until_signalled``, one TaskGroup). So the
socket is bound here (a port that cannot be listened on is an :class:`AsgiError` naming
the address, raised before anything is served), handed to ``Server.startup``, and the
server's ``main_loop`` runs as a task; :meth:`AsgiServer.close` asks it to exit and waits
for open requests up to ``grace_s`` (long-lived streams are told to end by the app).

uvicorn's own access log is off: the apps log what matters once, without query strings
or headers (which could carry secrets).

uvicorn (0.55) waits without limit for a request head: a client that opens a connection
and sends half a head (or nothing) holds one of ``max_connections`` until it goes away,
and enough of them lock everyone else out. :class:`_HeadTimeoutH11` closes such a
connection after ``head_timeout_s`` with a 408; slow bodies are the app's to time out.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import h11
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger(__name__)

MAX_HEAD_BYTES = 8 * 1024  # request line and headers; a larger head is refused by h11


class AsgiError(Exception):
    """The server cannot start: the address cannot be listened on, or TLS files are bad."""


class _HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head (see the module doc)."""

    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_overdue)

    def _head_overdue(self) -> None:
        """Still no complete head: answer 408 and close (a head that did arrive has moved
        h11's client state past IDLE, and its request is under way)."""
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if not self.conn.trailing_data[0]:  # not a byte of a head: idle, close quietly
            self.transport.close()
            return
        body = f'{{"error": "request not complete within {self.head_timeout_s:g} s"}}'.encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        self.transport.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise AsgiError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise AsgiError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class AsgiServer:
    """One ASGI app on one listening socket, served by uvicorn in the running loop."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        name: str,
        timeout_keep_alive_s: float = 5.0,
        grace_s: float = 5.0,
        max_connections: int = 64,
        head_timeout_s: float = 10.0,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self._requested_port = port
        self._grace_s = grace_s
        protocol = type("HeadTimeoutH11", (_HeadTimeoutH11,), {"head_timeout_s": head_timeout_s})
        self._config = uvicorn.Config(
            app,
            http=protocol,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            date_header=True,
            timeout_keep_alive=max(1, round(timeout_keep_alive_s)),
            timeout_graceful_shutdown=max(1, round(grace_s)),
            limit_concurrency=max_connections,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
        )
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    @property
    def tls(self) -> bool:
        return self._config.ssl_certfile is not None

    async def start(self) -> int:
        """Listen and serve; returns the bound port. :class:`AsgiError` when it cannot."""
        try:
            self._config.load()
        except (OSError, ssl.SSLError) as exc:
            raise AsgiError(f"{self.name}: cannot load the TLS certificate or key: {exc}") from exc
        self._sock = bind(self.host, self._requested_port)
        self.port = self._sock.getsockname()[1]
        server = uvicorn.Server(self._config)
        server.lifespan = self._config.lifespan_class(self._config)  # as Server._serve does
        try:
            await server.startup(sockets=[self._sock])
        except BaseException:
            self._sock.close()
            raise
        self._server = server
        self._task = asyncio.create_task(server.main_loop(), name=f"{self.name}-uvicorn")
        log.info(f"{self.name} listening", host=self.host, port=self.port, tls=self.tls)
        return self.port

    async def close(self) -> None:
        """Stop listening; requests still open get ``grace_s``, then are cancelled.

        uvicorn's own ``Server.shutdown`` waits on 0.1 s ticks and sleeps 0.1 s besides,
        which a simulator closing 50 control servers in turn pays 50 times over; this is
        the same sequence on 10 ms ticks.
        """
        server, task = self._server, self._task
        if server is None or task is None:
            return
        self._server = self._task = None
        server.should_exit = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
        try:
            async with asyncio.timeout(self._grace_s):
                # uvicorn keeps no event to wait on for these
                while server.server_state.connections or server.server_state.tasks:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        except TimeoutError:
            log.warning(f"{self.name}: requests cancelled at shutdown",
                        requests=len(server.server_state.tasks))  # fmt: skip
            for request in list(server.server_state.tasks):
                request.cancel()
        for listener in server.servers:
            await listener.wait_closed()
        if self._sock is not None:
            self._sock.close()
        log.info(f"{self.name} stopped", port=self.port)
