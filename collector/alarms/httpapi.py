"""Operator HTTP API of the collector's alarms (issue 6): list them, command them.

A small HTTP/1.1 JSON server on asyncio streams (stdlib only), one request per connection
(``Connection: close``)::

    GET  /health                      200 {"ok": true, ...}  503 {"ok": false, "stalled":
                                      {stage: seconds}, "reason": ...} when ingest is stuck
                                      (collector.health; no token needed)
    GET  /alarms[?site=&asset=&state=&active=true|false]
                                      200 {"alarms": [...]}  a repeated key matches any value
    GET  /alarms/<alarm_id>           200 the alarm, 404 when there is none
    POST /alarms/<alarm_id>/<action>  {"who", "comment", "duration_s", "request_id"}, all
                                      optional; ``who`` defaults to the X-Derrick-User
                                      header. Answers the status and AlarmCommandResult
                                      the collector's command callback returns.

``<action>`` is an :data:`derrick.wire.payloads.AlarmAction` (acknowledge, reset, shelve,
unshelve, remove_from_service, return_to_service); ``<alarm_id>`` is ``rule:site:asset:device``,
percent-encoded or not. A missing ``request_id`` gets a generated one, so the answer and
the log line can be matched.

With a token configured, every route but /health needs ``Authorization: Bearer <token>``.
Errors answer ``{"error": "..."}``: 400 (bad JSON, invalid command, bad query), 401, 404,
405, 408 (request not complete within ``timeout_s``), 413 (body above ``max_body_kb``),
431 (head above 8 KiB), 500 (the callback raised; logged), 501 (chunked body), 503 (too
many connections), 504 (the callback did not answer within ``timeout_s``: the command may
still take effect; its outcome is logged when it comes).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, unquote

import structlog
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from derrick.plumbing import configfile
from derrick.plumbing.configfile import StrictModel
from derrick.plumbing.httpserver import HttpError, body_length, read_head
from derrick.wire.payloads import AlarmCommand, AlarmCommandResult

log = structlog.get_logger(__name__)

MAX_HEAD_BYTES = 8 * 1024
MAX_CONNECTIONS = 64
LINGER_BYTES = 16 * 1024 * 1024
LINGER_S = 1.0
ALARM_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,300}$")
BODY_KEYS = frozenset(("who", "comment", "duration_s", "request_id"))
FILTER_KEYS = ("site", "asset", "state", "active")
USER_HEADER = "x-derrick-user"

ListAlarms = Callable[[], list[dict[str, Any]]]
RunCommand = Callable[[AlarmCommand], Awaitable[tuple[int, AlarmCommandResult]]]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; any other name counts as beyond."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpApiSettings(StrictModel):
    """Operator HTTP API of the alarms: list, acknowledge, shelve... (off by default)."""

    enabled: bool = Field(default=False, description="serve the alarm API")
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address to listen on; anything but loopback needs a token",
    )
    port: int = Field(default=8470, ge=0, le=65535, description="TCP port; 0: any free port")
    token_env: str | None = Field(
        default=None, description="environment variable holding the bearer token"
    )
    token_file: Path | None = Field(
        default=None, description="file holding the bearer token, relative to the config file"
    )
    max_body_kb: int = Field(
        default=64, ge=1, le=1024, description="larger request bodies are refused (413)"
    )
    timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="a client must send its request within this (else 408); a command not "
        "answered within this gets 504",
    )

    @field_validator("token_file")
    @classmethod
    def _beside_config(cls, value: Path | None, info: ValidationInfo) -> object:
        return configfile.beside_config(value, info)

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> Self:
        if self.token_env and self.token_file:
            raise ValueError("give token_env or token_file, not both")
        if not is_loopback(self.host) and not (self.token_env or self.token_file):
            raise ValueError(
                "an API that changes alarm state needs a token when it listens beyond "
                f"loopback: set token_env or token_file, or listen on 127.0.0.1 (host "
                f"{self.host!r})"
            )
        return self

    def token(self) -> SecretStr | None:
        """The bearer token, read now; ValueError / OSError when it cannot be read."""
        if self.token_env:
            if self.token_env not in os.environ:
                raise ValueError(f"environment variable {self.token_env} is not set")
            return SecretStr(os.environ[self.token_env].strip())
        if self.token_file:
            return SecretStr(self.token_file.read_text(encoding="utf-8").strip())
        return None


class HttpApiError(Exception):
    """The API cannot start: no token to check, or the address cannot be listened on."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int
    payload: object
    headers: dict[str, str] = field(default_factory=dict)
    read_all: bool = True  # False: the client may still be sending; drain before closing


# --- reading a request -------------------------------------------------------------------


_UNIQUE_HEADERS = ("content-length", "authorization", USER_HEADER)


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_body: int
) -> Request:
    method, target, headers = await read_head(reader, MAX_HEAD_BYTES, _UNIQUE_HEADERS)
    length = body_length(headers)
    if length > max_body:
        raise HttpError(413, f"body above {max_body // 1024} KiB")
    if length and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it on larger bodies
        await writer.drain()
    body = await reader.readexactly(length)
    path, _, query = target.partition("?")
    return Request(method, path, query, headers, body)


# --- routes --------------------------------------------------------------------------------


def _segments(path: str) -> list[str]:
    """Percent-decoded path segments; an alarm id may come as ``a%3Ab`` or ``a:b``."""
    try:
        return [unquote(part, errors="strict") for part in path.strip("/").split("/")]
    except UnicodeDecodeError as exc:
        raise HttpError(400, "path is not UTF-8 after percent-decoding") from exc


def _route(path: str) -> tuple[str, tuple[str, ...], str]:
    """(route name, its arguments, the one method it takes); 404 when none matches."""
    parts = _segments(path)
    if parts == ["health"]:
        return "health", (), "GET"
    if parts == ["alarms"]:
        return "list", (), "GET"
    if len(parts) in (2, 3) and parts[0] == "alarms":
        if not ALARM_ID.match(parts[1]):
            raise HttpError(400, f"bad alarm id {parts[1][:80]!r}: want rule:site:asset:device")
        if len(parts) == 2:
            return "get", (parts[1],), "GET"
        return "command", (parts[1], parts[2]), "POST"
    raise HttpError(
        404,
        f"no endpoint {path[:80]!r}; have: GET /health, GET /alarms, GET /alarms/<id>, "
        "POST /alarms/<id>/<action>",
    )


def _filters(query: str) -> dict[str, list[object]]:
    """Query filters: key -> accepted values (any of them matches; compared by ==, so an
    odd value in an alarm dict never breaks the listing)."""
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise HttpError(400, f"malformed query string: {exc}") from exc
    unknown = sorted(set(params) - set(FILTER_KEYS))
    if unknown:
        raise HttpError(400, f"unknown filter {', '.join(unknown)}; have: {', '.join(FILTER_KEYS)}")
    filters: dict[str, list[object]] = {key: list(values) for key, values in params.items()}
    if "active" in filters:
        if not set(filters["active"]) <= {"true", "false"}:
            raise HttpError(400, "active must be true or false")
        filters["active"] = [value == "true" for value in filters["active"]]
    return filters


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _command_fields(request: Request) -> dict[str, object]:
    """The body's fields, with ``who`` from the X-Derrick-User header when not in it."""
    try:
        data = json.loads(request.body or b"{}", parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HttpError(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HttpError(400, 'body must be a JSON object, e.g. {"who": "j.smith"}')
    unknown = sorted(set(data) - BODY_KEYS)
    if unknown:
        raise HttpError(
            400, f"unknown body key {', '.join(unknown)}; have: {', '.join(sorted(BODY_KEYS))}"
        )
    duration = data.get("duration_s")
    if isinstance(duration, float) and not math.isfinite(duration):
        raise HttpError(400, "invalid command: duration_s must be a finite number of seconds")
    if "who" not in data:
        user = request.headers.get(USER_HEADER)
        if not user:
            raise HttpError(
                400, "who is required: give it in the body or the X-Derrick-User header"
            )
        data["who"] = _utf8_header(user)
    if not data.get("request_id"):
        data["request_id"] = uuid.uuid4().hex
    return data


def _utf8_header(value: str) -> str:
    """A header value read as latin-1, re-read as UTF-8 when it is (a name like Müller)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


# --- the server ----------------------------------------------------------------------------


class AlarmApi:
    """The operator HTTP API over the collector's alarms.

    ``list_alarms`` returns the alarms as JSON-ready dicts (keys ``alarm_id``, ``site``,
    ``asset``, ``state``, ``active``... as in :class:`derrick.wire.payloads.AlarmStateMessage`);
    ``command`` carries out one command and returns the HTTP status and the result. The
    caller decides whether to serve at all (``settings.enabled``).
    """

    def __init__(
        self,
        settings: HttpApiSettings,
        *,
        list_alarms: ListAlarms,
        command: RunCommand,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._settings = settings
        self._list_alarms = list_alarms
        self._command = command
        self._health = health or (lambda: {"ok": True})
        self._token: bytes | None = None
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._late: set[asyncio.Task[tuple[int, AlarmCommandResult]]] = set()
        self.port = 0

    async def start(self) -> int:
        """Listen; returns the bound port. HttpApiError when the token cannot be read
        (or is empty) or the address cannot be listened on."""
        try:
            secret = self._settings.token()
        except (ValueError, OSError) as exc:
            raise HttpApiError(f"alarm API token: {exc}") from exc
        if secret is not None and not secret.get_secret_value():
            raise HttpApiError("alarm API token is empty")
        self._token = secret.get_secret_value().encode() if secret else None
        host, port = self._settings.host, self._settings.port
        try:
            self._server = await asyncio.start_server(
                self._connection, host, port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise HttpApiError(
                f"cannot listen for the alarm API on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("alarm api listening", host=host, port=self.port, token=self._token is not None)
        return self.port

    async def close(self) -> None:
        """Stop listening, end open connections and commands still running after a 504.

        Connections are aborted rather than their tasks cancelled: asyncio (3.11) reports a
        cancelled connection task as an error. One waiting for its command gets that long.
        """
        if self._server is None:
            return
        self._server.close()
        for writer in self._connections.values():
            writer.transport.abort()
        stuck: set[asyncio.Task[Any]] = set()
        if self._connections:
            _, stuck = await asyncio.wait(
                list(self._connections), timeout=self._settings.timeout_s + LINGER_S
            )
        stuck |= set(self._late)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        log.info("alarm api stopped", port=self.port)

    # one connection, one request

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                reply = Reply(503, {"error": "too many connections"}, read_all=False)
            else:
                reply = await self._answer(reader, writer)
            await self._send(writer, reply)
            if not reply.read_all:
                await _linger(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the client went away, or stalled while reading the answer
        finally:
            writer.close()
            with suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(LINGER_S):
                    await writer.wait_closed()
            self._connections.pop(task, None)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Reply:
        timeout_s = self._settings.timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                request = await _read_request(reader, writer, self._settings.max_body_kb * 1024)
        except HttpError as exc:
            log.info("alarm api request refused", status=exc.status, error=exc.message)
            return Reply(exc.status, {"error": exc.message}, exc.headers, read_all=False)
        except TimeoutError:
            log.info("alarm api request refused", status=408, error="client stalled")
            return Reply(408, {"error": f"request not complete within {timeout_s:g} s"})
        try:
            return await self._dispatch(request)
        except HttpError as exc:
            log.info(
                "alarm api request refused",
                status=exc.status,
                error=exc.message,
                method=request.method,
                path=request.path[:200],
            )
            return Reply(exc.status, {"error": exc.message}, exc.headers)

    async def _dispatch(self, request: Request) -> Reply:
        name, args, method = _route(request.path)
        if request.method != method:
            raise HttpError(
                405,
                f"{request.path[:80]} takes {method}, not {request.method[:10]}",
                {"Allow": method},
            )
        if name == "health":
            report = self._health()
            return Reply(200 if report.get("ok") else 503, report)
        self._authorize(request)
        if name == "command":
            return await self._run_command(request, *args)
        filters = _filters(request.query) if name == "list" else {}
        try:
            alarms = self._list_alarms()
        except Exception:
            log.exception("alarm api could not list alarms")
            return Reply(500, {"error": "internal error listing alarms; see the collector log"})
        if name == "get":
            found = next((a for a in alarms if a.get("alarm_id") == args[0]), None)
            if found is None:
                raise HttpError(404, f"no alarm {args[0]!r}")
            return Reply(200, found)
        return Reply(
            200,
            {"alarms": [a for a in alarms if all(a.get(k) in want for k, want in filters.items())]},
        )

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="derrick-alarms"'}
        if scheme.lower() != "bearer" or not given.strip():
            raise HttpError(401, "Authorization: Bearer <token> required", challenge)
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise HttpError(401, "token not accepted", challenge)

    async def _run_command(self, request: Request, alarm_id: str, action: str) -> Reply:
        fields = _command_fields(request)
        try:
            command = AlarmCommand.model_validate(
                {**fields, "alarm_id": alarm_id, "action": action}
            )
        except ValidationError as exc:
            raise HttpError(400, f"invalid command: {configfile.one_line(exc)}") from exc
        about = {
            "alarm_id": command.alarm_id,
            "action": command.action,
            "who": command.who,
            "request_id": command.request_id,
        }
        task = asyncio.create_task(self._command(command))
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                status, result = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()  # the server is closing
            raise
        except TimeoutError:
            # Not cancelled: the command may be half done; its outcome is logged instead.
            self._late.add(task)
            task.add_done_callback(lambda done: self._finished_late(done, about))
            log.warning("alarm api command", status=504, **about)
            return Reply(
                504,
                {
                    "error": "no answer in time; the command may still take effect",
                    "request_id": command.request_id,
                },
            )
        except Exception:
            log.exception("alarm api command", status=500, **about)
            return Reply(
                500,
                {
                    "error": "the command failed; see the collector log",
                    "request_id": command.request_id,
                },
            )
        if not isinstance(result, AlarmCommandResult) or not 200 <= status <= 599:
            log.error(
                "alarm api command", status=500, error="bad answer from the callback", **about
            )
            return Reply(
                500,
                {
                    "error": "the command gave no valid answer; see the collector log",
                    "request_id": command.request_id,
                },
            )
        log.info("alarm api command", status=status, ok=result.ok, reason=result.reason, **about)
        return Reply(status, result.model_dump(mode="json"))

    def _finished_late(
        self, task: asyncio.Task[tuple[int, AlarmCommandResult]], about: dict[str, str]
    ) -> None:
        self._late.discard(task)
        if task.cancelled():
            log.warning("alarm api command cancelled after 504", **about)
        elif (exc := task.exception()) is not None:
            log.error("alarm api command failed after 504", exc_info=exc, **about)
        else:
            status, result = task.result()
            log.info("alarm api command finished after 504", status=status, ok=result.ok, **about)

    async def _send(self, writer: asyncio.StreamWriter, reply: Reply) -> None:
        try:
            body = json.dumps(reply.payload, allow_nan=False).encode()
        except (TypeError, ValueError):
            log.exception("alarm api answer is not JSON", status=reply.status)
            reply = Reply(500, {"error": "internal error; see the collector log"}, {})
            body = json.dumps(reply.payload).encode()
        try:
            phrase = HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = "Status"
        head = [
            f"HTTP/1.1 {reply.status} {phrase}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{name}: {value}" for name, value in reply.headers.items()),
        ]
        async with asyncio.timeout(self._settings.timeout_s):
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Drop what the client still sends (bounded) before closing.

    Closing with unread data in the socket sends a reset, which can destroy the answer
    (a 413, say) before the client has read it.
    """
    if writer.can_write_eof():
        writer.write_eof()
    with suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_S):
            dropped = 0
            while dropped < LINGER_BYTES:
                chunk = await reader.read(64 * 1024)
                if not chunk:
                    return
                dropped += len(chunk)
