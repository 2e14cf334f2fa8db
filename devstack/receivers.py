"""Real receivers for notifications, for tests: an HTTP server and an SMTP server.

Both listen on 127.0.0.1 on a free port, record everything they receive in a
thread-safe list, and can be stopped and started again on the SAME port (a receiver
that is down for a while). Both are context managers; ``wait_for_*`` waits for what a
test expects without sleeping a fixed time.

    with HttpReceiver() as hooks:
        hooks.status = 503                # answer every request with 503 from now on
        hooks.queue_replies(503, 503)     # or: the next two get 503, then ``status``
        ...
        hooks.wait_for_requests(3, timeout=5)
        assert hooks.keys() == ["k1", "k1", "k1"]

    with SmtpReceiver() as mail:
        ...
        [msg] = mail.wait_for_messages(1, timeout=5)
        msg.message["Subject"]

``HttpReceiver(tls=...)`` and ``SmtpReceiver(tls=..., implicit_tls=...)`` take a
server certificate from :mod:`devstack.certs`; the SMTP receiver can require a login.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import http.server
import json
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Generic, Self, TypeVar

from devstack.certs import IssuedCert
from devstack.services import LOOPBACK, free_port

__all__ = ["HttpReceiver", "HttpRequest", "Mail", "SmtpReceiver"]

_MAX_BODY = 16 * 1024 * 1024


def _server_context(tls: IssuedCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


T = TypeVar("T")


class _Records(Generic[T]):
    """A list appended to by server threads and waited on by the test."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._changed = threading.Condition()

    def add(self, item: T) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def snapshot(self) -> list[T]:
        with self._changed:
            return list(self._items)

    def clear(self) -> None:
        with self._changed:
            self._items.clear()

    def wait_for(self, count: int, timeout: float, what: str) -> list[T]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._items) >= count, timeout):
                raise TimeoutError(
                    f"{len(self._items)} of {count} {what} arrived within {timeout:g} s"
                )
            return list(self._items)


# --------------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class HttpRequest:
    """One request as the receiver saw it. ``headers`` keep the sender's spelling;
    :meth:`header` looks a name up case-insensitively."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    arrived: float  # time.monotonic()

    def header(self, name: str, default: str | None = None) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return default


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Records the request, then answers as the receiver is told to (or not at all)."""

    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection
    timeout = 60  # a client that connects and says nothing is dropped after that

    def _any(self) -> None:
        receiver = self.server.receiver
        body = self._read_body()
        receiver.record(self, body)
        reply = receiver.next_reply()
        if receiver.hang or receiver.delay_s > 0:
            # A receiver that accepts and does not answer (yet). stop() wakes it, and then
            # it closes the connection without a word.
            woken = receiver.wakeup.wait(None if receiver.hang else receiver.delay_s)
            if woken:
                self.close_connection = True
                return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, _MAX_BODY))

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while len(data) < _MAX_BODY:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            data += self.rfile.read(size)
            self.rfile.readline()
        return bytes(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the receiver's records are the log."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, receiver: HttpReceiver, address: tuple[str, int]):
        self.receiver = receiver
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away (a sender that gave up waiting, by design)."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Cut every open connection, so no handler thread waits on a silent client."""
        with self._open_lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class HttpReceiver:
    """A threaded HTTP server on 127.0.0.1 that records every request.

    Attributes a test may set at any time:

    * ``status`` (default 200), ``reply_body`` (bytes), ``reply_headers``: the answer;
    * ``queue_replies(*statuses)``: answers for the next requests, before ``status``;
    * ``hang = True``: accept, record, never answer (until ``stop()``);
      ``delay_s``: answer that much later.

    ``stop()`` closes the port (connections are refused); ``start()`` opens the same port
    again. Records survive a restart; ``clear()`` drops them.
    """

    def __init__(
        self, *, port: int | None = None, tls: IssuedCert | None = None, status: int = 200
    ) -> None:
        self.host = LOOPBACK
        self.port = port or free_port()
        self.status = status
        self.reply_body = b""
        self.reply_headers: dict[str, str] = {}
        self.hang = False
        self.delay_s = 0.0
        self.wakeup = threading.Event()
        self._tls = _server_context(tls) if tls else None
        self._queued: deque[_Reply] = deque()
        self._lock = threading.Lock()
        self._records: _Records[HttpRequest] = _Records()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def url_for(self, path: str = "/") -> str:
        return self.url + (path if path.startswith("/") else f"/{path}")

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> Self:
        if self._server is not None:
            return self
        self.wakeup.clear()
        server = _Server(self, (self.host, self.port))
        if self._tls is not None:
            # The handshake happens in the request's thread, not in the accept loop.
            server.socket = self._tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"http-receiver-{self.port}",
        )  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port and every open connection; hanging requests end unanswered."""
        server, self._server = self._server, None
        if server is None:
            return
        self.wakeup.set()
        server.shutdown()
        server.drop_connections()
        server.server_close()  # joins the request threads
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the handler calls

    def record(self, handler: _Handler, body: bytes) -> None:
        parsed: Any = None
        if body:
            with contextlib.suppress(ValueError):
                parsed = json.loads(body)
        self._records.add(
            HttpRequest(
                method=handler.command,
                path=handler.path,
                headers=dict(handler.headers.items()),
                body=body,
                json=parsed,
                arrived=time.monotonic(),
            )
        )

    def next_reply(self) -> _Reply:
        with self._lock:
            if self._queued:
                return self._queued.popleft()
        return _Reply(self.status, self.reply_body, dict(self.reply_headers))

    # -- what tests call

    def queue_replies(self, *statuses: int, body: bytes = b"") -> None:
        """The next requests get these statuses, in order; then ``status`` again."""
        with self._lock:
            self._queued.extend(_Reply(status, body) for status in statuses)

    @property
    def requests(self) -> list[HttpRequest]:
        return self._records.snapshot()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[HttpRequest]:
        """All requests once at least ``count`` arrived; TimeoutError saying how many did."""
        return self._records.wait_for(count, timeout, "HTTP requests")

    def keys(self) -> list[str | None]:
        """The ``Idempotency-Key`` header of each request, in arrival order."""
        return [request.header("Idempotency-Key") for request in self.requests]

    def clear(self) -> None:
        self._records.clear()


# --------------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class Mail:
    """One message as the SMTP receiver took it."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes
    login: str | None  # the user that logged in, if any
    arrived: float  # time.monotonic()


class _SmtpHandler:
    def __init__(self, receiver: SmtpReceiver):
        self.receiver = receiver

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self.receiver.refuse_rcpt.get(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self.receiver.data_reply
        if not reply.startswith("250"):
            return reply
        raw = bytes(envelope.original_content or envelope.content)
        # Parsed with local line ends, as a mail store keeps it: CRLF is SMTP's wire form.
        message = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
        auth = session.auth_data if session.authenticated else None
        login = auth.login.decode() if auth is not None else None
        self.receiver.records.add(
            Mail(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                message=message,  # type: ignore[arg-type]  # policy.default gives EmailMessage
                raw=raw,
                login=login,
                arrived=time.monotonic(),
            )
        )
        return reply


class SmtpReceiver:
    """An aiosmtpd server on 127.0.0.1 that records every message it accepts.

    ``tls``: a server certificate; STARTTLS is offered (or, with ``implicit_tls``, TLS
    from the first byte, SMTPS). ``users``: logins it accepts (``{name: password}``);
    AUTH is then required, and offered only over TLS. A test may set at any time
    ``data_reply`` (default ``"250 OK"``; e.g. ``"451 4.3.0 try later"``) and
    ``refuse_rcpt`` (``{address: "550 5.1.1 no such user"}``).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        tls: IssuedCert | None = None,
        implicit_tls: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        if (implicit_tls or users) and tls is None:
            raise ValueError("implicit_tls and users need a tls certificate")
        self.host = LOOPBACK
        self.port = port or free_port()
        self.data_reply = "250 OK"
        self.refuse_rcpt: dict[str, str] = {}
        self.records: _Records[Mail] = _Records()
        self._tls = _server_context(tls) if tls else None
        self._implicit_tls = implicit_tls
        self._users = dict(users or {})
        self._controller: Any = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> Self:
        # Imported here so that devstack imports without aiosmtpd (a dev dependency).
        from aiosmtpd.controller import Controller  # noqa: PLC0415

        if self._controller is not None:
            return self
        kwargs: dict[str, Any] = {"server_hostname": "derrick-test-smtp", "ready_timeout": 10}
        if self._tls is not None and self._implicit_tls:
            kwargs["ssl_context"] = self._tls
        elif self._tls is not None:
            kwargs["tls_context"] = self._tls
        if self._users:
            kwargs.update(auth_required=True, authenticator=self._authenticator())
        # A Controller cannot start twice (its loop is closed on stop): a new one each time.
        controller = Controller(_SmtpHandler(self), hostname=self.host, port=self.port, **kwargs)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _authenticator(self) -> Callable[..., Any]:
        from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: PLC0415

        users = self._users

        def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            ok = (
                isinstance(data, LoginPassword)
                and users.get(data.login.decode()) == data.password.decode()
            )
            # handled=False: aiosmtpd itself answers a failure (535).
            return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

        return check

    @property
    def messages(self) -> list[Mail]:
        return self.records.snapshot()

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[Mail]:
        """All messages once at least ``count`` arrived; TimeoutError saying how many did."""
        return self.records.wait_for(count, timeout, "e-mails")

    def clear(self) -> None:
        self.records.clear()
