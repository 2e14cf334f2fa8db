"""The operator API's JSON routes (issue 6, on FastAPI since issue 18)::

    GET  /health                      200 {"ok": true, ...}  503 {"ok": false, "stalled":
                                      {stage: seconds}, "reason": ...} when ingest is stuck
                                      (collector.health; no credential needed)
    GET  /me                          200 {"name", "role", "via"}: who the credential is
    GET  /alarms[?site=&asset=&state=&active=true|false]
                                      200 {"alarms": [...]}  a repeated key matches any value
    GET  /alarms/<alarm_id>           200 the alarm, 404 when there is none
    POST /alarms/<alarm_id>/<action>  {"comment", "duration_s", "request_id"}, all optional.
                                      Answers the status and AlarmCommandResult of the
                                      collector's command callback.

``<action>`` is an :data:`derrick.wire.payloads.AlarmAction`; ``<alarm_id>`` is
``rule:site:asset:device``, percent-encoded or not. A missing ``request_id`` gets a
generated one, so the answer and the log line can be matched.

``who`` is the authenticated user (:mod:`collector.web.security`); a ``who`` in the body
that names someone else is refused (400). Only the deprecated machine identities (the
shared token, the open loopback mode) still take ``who`` from the body or the
``X-Derrick-User`` header, as before. Viewing needs the viewer role, each action the role
:data:`collector.users.PERMISSIONS` names (403 otherwise).

Errors answer ``{"error": "..."}``: 400 (also uvicorn's answer to a head above 8 KiB),
401, 403, 404, 405, 408 (request not complete within ``timeout_s``), 413 (body above
``max_body_kb``), 500 (the callback raised; logged), 503 (too many connections), 504 (the
callback did not answer within ``timeout_s``: the command may still take effect; its
outcome is logged when it comes).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from collector.users import Identity, least_role
from collector.web.errors import NO_STORE, ApiError
from collector.web.security import CSRF_HEADER, Credentials, Refused, Session, csrf_ok
from derrick.plumbing.configfile import one_line
from derrick.wire.payloads import AlarmCommand, AlarmCommandResult

log = structlog.get_logger("collector.alarms.httpapi")

ALARM_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,300}$")
BODY_KEYS = frozenset(("who", "comment", "duration_s", "request_id"))
FILTER_KEYS = ("site", "asset", "state", "active")
USER_HEADER = "x-derrick-user"
PEER_HEADER = "x-derrick-peer"
ROLE_HEADER = "x-derrick-role"
LINGER_BYTES = 16 * 1024 * 1024  # a refused body is read (and dropped) up to this
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="derrick-alarms"'}
MACHINE_IDENTITIES = ("shared-token", "open")

ListAlarms = Callable[[], list[dict[str, Any]]]
RunCommand = Callable[[AlarmCommand], Awaitable[tuple[int, AlarmCommandResult]]]


class CommandBody(BaseModel):
    """A command's body (all optional); the documentation of ``POST .../<action>``."""

    comment: str = Field(default="", max_length=2000, description="why (journaled)")
    duration_s: float = Field(default=0, ge=0, description="shelve: for how long")
    request_id: str = Field(default="", max_length=100, description="echoed in the answer")
    who: str | None = Field(
        default=None,
        description="only for the deprecated shared token; otherwise your login (or left out)",
    )


class Me(BaseModel):
    name: str
    role: str
    via: str


def credentials(request: Request, cookie_name: str) -> Credentials:
    headers = request.headers
    return Credentials(
        authorization=headers.get("authorization", ""),
        peer=headers.get(PEER_HEADER, ""),
        peer_user=_utf8_header(headers.get(USER_HEADER, "")),
        peer_role=headers.get(ROLE_HEADER, ""),
        session_id=request.cookies.get(cookie_name),
    )


def authenticated(request: Request) -> tuple[Identity, Session | None]:
    """The request's identity (and console session); 401 when it has none."""
    web = request.app.state.web
    try:
        found = web.auth.identify(credentials(request, web.cookie_name))
    except Refused as exc:
        raise ApiError(401, str(exc), CHALLENGE) from exc
    request.state.identity = found[0]
    return found


def viewer(found: Annotated[tuple[Identity, Session | None], Depends(authenticated)]) -> Identity:
    identity = found[0]
    if not identity.may("view"):
        raise ApiError(403, f"{identity.name} may not view alarms")
    return identity


def check_csrf(request: Request, session: Session | None, form_token: str | None = None) -> None:
    """A state change made with a console session must carry the session's CSRF token."""
    if session is not None and not csrf_ok(session, form_token or request.headers.get(CSRF_HEADER)):
        raise ApiError(403, "CSRF token missing or wrong; reload the page")


def _utf8_header(value: str) -> str:
    """A header value read as latin-1, re-read as UTF-8 when it is (a name like Müller)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


router = APIRouter()


@router.get("/health", summary="Is ingest moving? (no credential needed)")
async def health(request: Request) -> JSONResponse:
    report = request.app.state.web.backend.health()
    return JSONResponse(report, 200 if report.get("ok") else 503, headers=NO_STORE)


@router.get("/me", summary="Who this credential is", response_model=Me)
async def me(identity: Annotated[Identity, Depends(viewer)]) -> JSONResponse:
    return JSONResponse(
        {"name": identity.name, "role": identity.role.value, "via": identity.via},
        headers=NO_STORE,
    )


def matching(alarms: list[dict[str, Any]], filters: dict[str, list[object]]) -> list[dict]:
    """The alarms whose every filtered key has one of the accepted values (compared by
    ==, so an odd value in an alarm dict never breaks the listing)."""
    return [a for a in alarms if all(a.get(k) in want for k, want in filters.items())]


class Listing:
    """The backend's alarms, shared by the requests and live streams of one moment.

    With fail-over the listing reads every asset's records from etcd (a blocking read
    and a parse of each record, in the event loop): every open console would otherwise
    do that on each change and every few seconds. A listing is reused while the alarm
    service's change counter stands still, for at most ``max_age_s`` (changes on other
    members show that much later); callers must not change what it returns.
    """

    def __init__(self, max_age_s: float = 0.5) -> None:
        self.max_age_s = max_age_s
        self._alarms: list[dict[str, Any]] = []
        self._version: int | None = None
        self._taken = -math.inf

    def get(self, backend: Any) -> list[dict[str, Any]]:
        version = backend.changes.version if backend.changes is not None else None
        now = time.monotonic()
        if version != self._version or now - self._taken > self.max_age_s:
            self._alarms = backend.list_alarms()
            self._version, self._taken = version, now
        return self._alarms


def list_alarms(request: Request) -> list[dict[str, Any]]:
    web = request.app.state.web
    try:
        return web.listing.get(web.backend)
    except Exception as exc:
        log.exception("alarm api could not list alarms")
        raise ApiError(500, "internal error listing alarms; see the collector log") from exc


@router.get("/alarms", summary="The alarms, filtered (a repeated key matches any value)")
async def alarms(
    request: Request,
    _identity: Annotated[Identity, Depends(viewer)],
    site: Annotated[list[str] | None, Query()] = None,
    asset: Annotated[list[str] | None, Query()] = None,
    state: Annotated[list[str] | None, Query()] = None,
    active: Annotated[list[str] | None, Query(description="true or false")] = None,
) -> JSONResponse:
    unknown = sorted(set(request.query_params) - set(FILTER_KEYS))
    if unknown:
        raise ApiError(400, f"unknown filter {', '.join(unknown)}; have: {', '.join(FILTER_KEYS)}")
    filters: dict[str, list[object]] = {
        key: list(values)
        for key, values in (("site", site), ("asset", asset), ("state", state))
        if values is not None
    }
    if active is not None:
        if not set(active) <= {"true", "false"}:
            raise ApiError(400, "active must be true or false")
        filters["active"] = [value == "true" for value in active]
    return JSONResponse({"alarms": matching(list_alarms(request), filters)}, headers=NO_STORE)


def checked_id(alarm_id: str) -> str:
    if not ALARM_ID.match(alarm_id):
        raise ApiError(400, f"bad alarm id {alarm_id[:80]!r}: want rule:site:asset:device")
    return alarm_id


@router.get("/alarms/{alarm_id}", summary="One alarm")
async def one_alarm(
    request: Request, alarm_id: str, _identity: Annotated[Identity, Depends(viewer)]
) -> JSONResponse:
    checked_id(alarm_id)
    found = next((a for a in list_alarms(request) if a.get("alarm_id") == alarm_id), None)
    if found is None:
        raise ApiError(404, f"no alarm {alarm_id!r}")
    return JSONResponse(found, headers=NO_STORE)


@router.post(
    "/alarms/{alarm_id}/{action}",
    summary="Command one alarm: acknowledge, reset, shelve, unshelve, remove_from_service, "
    "return_to_service",
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": CommandBody.model_json_schema()}}
        }
    },
)
async def command(
    request: Request,
    alarm_id: str,
    action: str,
    found: Annotated[tuple[Identity, Session | None], Depends(authenticated)],
) -> JSONResponse:
    checked_id(alarm_id)
    identity, session = found
    web = request.app.state.web
    body = await read_body(request, web.settings.max_body_kb * 1024, web.settings.timeout_s)
    check_csrf(request, session)
    fields = command_fields(body, identity, request.headers.get(USER_HEADER))
    order = validated(fields, alarm_id, action)
    require(identity, order.action)
    status, result = await web.commands.run(order, identity)
    return JSONResponse(result, status, headers=NO_STORE)


def require(identity: Identity, what: str) -> None:
    if not identity.may(what):
        raise ApiError(
            403,
            f"{identity.name} is {identity.role.value}: {what} needs "
            f"{least_role(what).value} or above",
        )


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body, up to ``max_bytes`` (413 beyond; what the client still sends is read and
    dropped, up to 16 MiB, so the answer is not destroyed by a reset under it)."""
    length = request.headers.get("content-length", "")
    if length and not length.isdigit():
        raise ApiError(400, f"bad Content-Length {length[:20]!r}")
    too_big = bool(length) and int(length) > max_bytes
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                too_big = too_big or size > max_bytes
                if too_big and size > LINGER_BYTES:
                    break
                if not too_big:
                    chunks.append(chunk)
    except TimeoutError as exc:
        raise ApiError(408, f"request not complete within {timeout_s:g} s") from exc
    if too_big:
        raise ApiError(413, f"body above {max_bytes // 1024} KiB", {"Connection": "close"})
    return b"".join(chunks)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def command_fields(body: bytes, identity: Identity, header_user: str | None) -> dict[str, object]:
    """The body's fields, with ``who`` set from the identity (see the module doc)."""
    try:
        data = json.loads(body or b"{}", parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, 'body must be a JSON object, e.g. {"comment": "crane stopped"}')
    unknown = sorted(set(data) - BODY_KEYS)
    if unknown:
        raise ApiError(
            400, f"unknown body key {', '.join(unknown)}; have: {', '.join(sorted(BODY_KEYS))}"
        )
    duration = data.get("duration_s")
    if isinstance(duration, float) and not math.isfinite(duration):
        raise ApiError(400, "invalid command: duration_s must be a finite number of seconds")
    data["who"] = _who(identity, data.get("who"), header_user)
    if not data.get("request_id"):
        data["request_id"] = uuid.uuid4().hex
    return data


def _who(identity: Identity, claimed: object, header_user: str | None) -> object:
    if identity.via not in MACHINE_IDENTITIES:
        if claimed is not None and claimed != identity.name:
            raise ApiError(
                400, f"who comes from your login ({identity.name}); leave it out of the body"
            )
        return identity.name
    if claimed is not None:
        return claimed
    if not header_user:
        raise ApiError(400, "who is required: give it in the body or the X-Derrick-User header")
    return _utf8_header(header_user)


def validated(fields: dict[str, object], alarm_id: str, action: str) -> AlarmCommand:
    try:
        return AlarmCommand.model_validate({**fields, "alarm_id": alarm_id, "action": action})
    except ValidationError as exc:
        raise ApiError(400, f"invalid command: {one_line(exc)}") from exc


class Commands:
    """Runs commands through the collector's callback with a deadline (504 past it, the
    command still running and its outcome logged when it comes)."""

    def __init__(self, callback: RunCommand, timeout_s: float) -> None:
        self._callback = callback
        self._timeout_s = timeout_s
        self._late: set[asyncio.Task[tuple[int, AlarmCommandResult]]] = set()

    async def run(self, order: AlarmCommand, identity: Identity) -> tuple[int, dict[str, Any]]:
        about = {
            "alarm_id": order.alarm_id,
            "action": order.action,
            "who": order.who,
            "via": identity.via,
            "request_id": order.request_id,
        }
        task = asyncio.create_task(self._callback(order))
        try:
            async with asyncio.timeout(self._timeout_s):
                status, result = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()  # the server is closing
            raise
        except TimeoutError:
            # Not cancelled: the command may be half done; its outcome is logged instead.
            self._late.add(task)
            task.add_done_callback(lambda done: self._finished_late(done, about))
            log.warning("alarm api command", status=504, **about)
            return 504, {
                "error": "no answer in time; the command may still take effect",
                "request_id": order.request_id,
            }
        except Exception:
            log.exception("alarm api command", status=500, **about)
            return 500, {
                "error": "the command failed; see the collector log",
                "request_id": order.request_id,
            }
        if not isinstance(result, AlarmCommandResult) or not 200 <= status <= 599:
            log.error("alarm api command", status=500, error="bad answer from the callback",
                      **about)  # fmt: skip
            return 500, {
                "error": "the command gave no valid answer; see the collector log",
                "request_id": order.request_id,
            }
        log.info("alarm api command", status=status, ok=result.ok, reason=result.reason, **about)
        return status, result.model_dump(mode="json")

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

    async def close(self) -> None:
        """Cancel commands still running after their 504."""
        late = list(self._late)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
