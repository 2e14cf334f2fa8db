"""Control interface of a running simulator: a tiny HTTP JSON API (Starlette on uvicorn).

Tests and demos use it to read what the simulator serves, force an overload and pin tags
to exact values, then check what comes out at the other end of the pipeline::

    GET  /health                      200 {"status": "ok"}
    GET  /values                      200 {"hook_load": 12.5, ...}  engineering units, now
    POST /overload {"active": true}   200 {"active": true, "took_effect_ns": ...}
    POST /hold     {"hook_load": 12.5, ...}
                                      200 {"held": {...every pinned tag}, "took_effect_ns": ...}
    POST /release  (no body or {})    200 {"held": {}, "took_effect_ns": ...}
    POST /fault    {"latency_s": 0.5} | {"silent": true} | {"reset": true}
                   | {"min_request_gap_s": 0.2} | {"deaf_after_connect_s": 1}
                   | {"max_registers": 16} | {"max_bits": 64}
                   | {"requests_per_connection": 10}   (any combination; 0 is off)
                                      200 {every fault switch, "dropped_connections": n, ...}

``took_effect_ns`` is ``time.time_ns()`` right after the change was applied: every
Modbus read that starts after the response arrives sees it. Pinned values win over a
forced overload. Errors answer ``{"error": "..."}`` with 400 (bad JSON, unknown tag,
value that does not fit its register), 404 (unknown path, naming the endpoints), 405
(with ``Allow``; HEAD is served wherever GET is), 408 (body not all there within 5 s) or
413 (body above 64 KiB, by Content-Length before reading or while reading a chunked
one); 408 and 413 close the connection. Otherwise connections are kept alive.

Why Starlette: this module used to carry its own HTTP/1.1 parser on asyncio streams;
the HTTP is now a kept library's (Starlette on uvicorn and h11), served inside the
simulator's own event loop by :class:`derrick.plumbing.asgi.AsgiServer`, and what is
left here is the API. The handlers are plain functions over :class:`SimulatedPlc` with
no I/O; one endpoint reads the body and answers. Below the application it is the
server's business: a malformed request, or a request line and headers still incomplete
past 8 KiB, get uvicorn's plain-text 400 ``Invalid HTTP request received.`` and the
connection is closed (h11 hints 431, uvicorn 0.55 answers 400; a larger head that
arrives whole in one read is accepted); a head not complete within ``AsgiServer``'s
head timeout (10 s) gets its 408 and is closed.

There is no authentication: it binds to loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from derrick.plumbing.asgi import AsgiError, AsgiServer
from simulators.plc import SimulatedPlc

log = structlog.get_logger("sim")

MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_S = 5.0


class ControlError(Exception):
    """The control server could not listen."""


class HttpError(Exception):
    """A request answered with an error status and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _json_body(body: bytes) -> object:
    """The parsed body, None when empty; 400 when it is not JSON."""
    if not body.strip():
        return None
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except ValueError as exc:
        raise HttpError(400, f"body is not valid JSON: {exc}") from exc


def _health(_plc: SimulatedPlc, _body: bytes) -> dict[str, object]:
    return {"status": "ok"}


def _values(plc: SimulatedPlc, _body: bytes) -> dict[str, object]:
    return dict(plc.values())


def _overload(plc: SimulatedPlc, body: bytes) -> dict[str, object]:
    data = _json_body(body)
    active = data.get("active") if isinstance(data, dict) and len(data) == 1 else None
    if not isinstance(active, bool):
        raise HttpError(400, 'body must be {"active": true} or {"active": false}')
    if getattr(plc.model, "LOAD_ALARM", None) is None:
        raise HttpError(400, f"a {plc.profile.kind} simulator has no overload to force")
    if plc.overload(active):
        log.info("overload forced" if active else "overload force released", via="control")
    return {"active": active, "took_effect_ns": time.time_ns()}


def _hold(plc: SimulatedPlc, body: bytes) -> dict[str, object]:
    data = _json_body(body)
    if not isinstance(data, dict) or not data:
        raise HttpError(400, 'body must be a JSON object of tag: value, e.g. {"hook_load": 12.5}')
    try:
        plc.hold(data)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from exc
    took_effect_ns = time.time_ns()
    log.info("values pinned", tags=sorted(data))
    return {"held": plc.held, "took_effect_ns": took_effect_ns}


def _release(plc: SimulatedPlc, body: bytes) -> dict[str, object]:
    if _json_body(body) not in (None, {}):
        raise HttpError(400, "body must be empty or {}")
    plc.release()
    took_effect_ns = time.time_ns()
    log.info("values released")
    return {"held": plc.held, "took_effect_ns": took_effect_ns}


# Numeric fault switches of /fault: key -> (type, largest value); 0 switches one off.
FAULT_NUMBERS: dict[str, tuple[type, float]] = {
    "latency_s": (float, 60),
    "min_request_gap_s": (float, 60),
    "deaf_after_connect_s": (float, 600),
    "max_registers": (int, 125),
    "max_bits": (int, 2000),
    "requests_per_connection": (int, 1_000_000),
}


def _fault(plc: SimulatedPlc, body: bytes) -> dict[str, object]:
    """{"latency_s": 0.5} | {"silent": true} | {"reset": true} | the awkward-device
    switches of :mod:`simulators.faults` ({"min_request_gap_s": 0.2},
    {"deaf_after_connect_s": 1}, {"max_registers": 16}, {"max_bits": 64},
    {"requests_per_connection": 10}; 0 is off), any combination."""
    data = _json_body(body)
    allowed = {*FAULT_NUMBERS, "silent", "reset"}
    if not isinstance(data, dict) or not data or set(data) - allowed:
        raise HttpError(400, f"body must be an object with some of {sorted(allowed)}")
    numbers = {}
    for key, (kind, largest) in FAULT_NUMBERS.items():
        value = data.get(key, getattr(plc.faults, key))
        fits = (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and 0 <= value <= largest
            and (kind is float or value == int(value))
        )
        if not fits:
            what = "a number of seconds" if kind is float else "a whole number"
            raise HttpError(400, f"{key} must be {what} from 0 to {largest:g}")
        numbers[key] = kind(value)
    if not all(isinstance(data.get(k, False), bool) for k in ("silent", "reset")):
        raise HttpError(400, "silent and reset must be true or false")
    for key, value in numbers.items():
        setattr(plc.faults, key, value)
    plc.faults.silent = data.get("silent", plc.faults.silent)
    dropped = plc.faults.reset() if data.get("reset") else 0
    took_effect_ns = time.time_ns()
    log.info("faults set", dropped_connections=dropped, **plc.faults.describe())
    return {
        **plc.faults.describe(),
        "dropped_connections": dropped,
        "took_effect_ns": took_effect_ns,
    }


def _scenario(plc: SimulatedPlc, body: bytes) -> dict[str, object]:
    """{"name": "kick", "active": true}: a scenario the model offers, switched now."""
    data = _json_body(body)
    name = data.get("name") if isinstance(data, dict) else None
    active = data.get("active") if isinstance(data, dict) else None
    offered = plc.scenarios()
    if not isinstance(active, bool) or name not in offered:
        raise HttpError(400, f'body must be {{"name": one of {offered}, "active": true|false}}')
    plc.scenario(name, active)
    took_effect_ns = time.time_ns()
    log.info("scenario started" if active else "scenario ended", scenario=name)
    return {"name": name, "active": active, "took_effect_ns": took_effect_ns}


def _sensor(plc: SimulatedPlc, body: bytes) -> dict[str, object]:
    """{"tag": "wind_speed", "stuck": true} or {"tag": "hook_load", "out_of_range": true}."""
    data = _json_body(body)
    if not isinstance(data, dict) or len(data) != 2 or not isinstance(data.get("tag"), str):
        raise HttpError(400, 'body must be {"tag": ..., "stuck"|"out_of_range": true|false}')
    fault, active = next((k, v) for k, v in data.items() if k != "tag")
    if fault not in ("stuck", "out_of_range") or not isinstance(active, bool):
        raise HttpError(400, 'body must be {"tag": ..., "stuck"|"out_of_range": true|false}')
    try:
        (plc.stick if fault == "stuck" else plc.out_of_range)(data["tag"], active)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from exc
    took_effect_ns = time.time_ns()
    log.info("sensor fault set", tag=data["tag"], fault=fault, active=active)
    return {**plc.sensor_faults(), "took_effect_ns": took_effect_ns}


Handler = Callable[[SimulatedPlc, bytes], dict[str, object]]
ROUTES: dict[str, dict[str, Handler]] = {
    "/health": {"GET": _health},
    "/values": {"GET": _values},
    "/overload": {"POST": _overload},
    "/hold": {"POST": _hold},
    "/release": {"POST": _release},
    "/fault": {"POST": _fault},
    "/scenario": {"POST": _scenario},
    "/sensor": {"POST": _sensor},
}


def _answer(
    status: int, payload: dict[str, object], headers: dict[str, str] | None = None
) -> Response:
    # json.dumps as before: the same bytes, and a NaN a model produced is no 500
    return Response(json.dumps(payload), status, headers, media_type="application/json")


def _refused(exc: HttpError) -> Response:
    if exc.status >= 404:
        log.info("control request refused", status=exc.status, error=exc.message)
    return _answer(exc.status, {"error": exc.message}, exc.headers)


async def _read_body(request: Request) -> bytes:
    """The whole body, Content-Length or chunked: 413 above MAX_BODY_BYTES, 408 when it
    is not all there within BODY_TIMEOUT_S. Either closes the connection (body unread)."""
    close = {"Connection": "close"}
    too_big = HttpError(413, f"body above {MAX_BODY_BYTES} bytes", close)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_big  # refused before reading a byte of it
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise too_big
    except TimeoutError:
        raise HttpError(408, f"body not complete within {BODY_TIMEOUT_S:g} s", close) from None
    return bytes(body)


async def _endpoint(plc: SimulatedPlc, methods: dict[str, Handler], request: Request) -> Response:
    # Starlette routes HEAD where there is GET (and drops the body of the answer)
    handler = methods["GET" if request.method == "HEAD" else request.method]
    try:
        return _answer(200, handler(plc, await _read_body(request)))
    except HttpError as exc:
        return _refused(exc)
    except ClientDisconnect:
        return Response(status_code=400)  # nobody to read it: uvicorn drops it


async def _not_found(request: Request, _exc: Exception) -> Response:
    path = request.scope["path"]  # as routed: percent-decoded, no query
    return _refused(HttpError(404, f"no endpoint {path[:80]!r}; have: {', '.join(ROUTES)}"))


async def _not_allowed(request: Request, exc: Exception) -> Response:
    path = request.scope["path"]
    allow = exc.headers.get("Allow", "") if isinstance(exc, HTTPException) else ""
    allow = ", ".join(sorted(allow.split(", ")))  # Starlette's: GET comes with HEAD
    return _refused(HttpError(405, f"{path} takes {', '.join(ROUTES[path])}", {"Allow": allow}))


def app(plc: SimulatedPlc) -> Starlette:
    """The control API over ``plc`` as an ASGI application."""
    routes = [
        Route(path, partial(_endpoint, plc, methods), methods=list(methods))
        for path, methods in ROUTES.items()
    ]
    application = Starlette(
        routes=routes,
        exception_handlers={404: _not_found, 405: _not_allowed},
    )
    application.router.redirect_slashes = False  # /health/ is 404 like any unknown path
    return application


@asynccontextmanager
async def serving(plc: SimulatedPlc, host: str, port: int) -> AsyncIterator[int]:
    """Serve the control API while the context is open; yields the bound port."""
    server = AsgiServer(app(plc), host, port, name="sim control")
    try:
        bound = await server.start()
    except AsgiError as exc:
        raise ControlError(f"control HTTP: {exc}") from exc
    try:
        yield bound
    finally:
        await server.close()
