"""Control interface of a running simulator: a tiny HTTP/1.1 JSON API (stdlib only).

Tests and demos use it to read what the simulator serves, force an overload and pin tags
to exact values, then check what comes out at the other end of the pipeline::

    GET  /health                      200 {"status": "ok"}
    GET  /values                      200 {"hook_load": 12.5, ...}  engineering units, now
    POST /overload {"active": true}   200 {"active": true, "took_effect_ns": ...}
    POST /hold     {"hook_load": 12.5, ...}
                                      200 {"held": {...every pinned tag}, "took_effect_ns": ...}
    POST /release  (no body or {})    200 {"held": {}, "took_effect_ns": ...}

``took_effect_ns`` is ``time.time_ns()`` right after the change was applied: every
Modbus read that starts after the response arrives sees it. Pinned values win over a
forced overload. Errors answer ``{"error": "..."}`` with 400 (bad JSON, unknown tag,
value that does not fit its register), 404, 405, 408 (request not complete within
5 s), 413 / 431 (body above 64 KiB, head above 8 KiB) or 501 (chunked body).

There is no authentication: it binds to loopback unless told otherwise. One request per
connection (``Connection: close``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus

import structlog

from derrick.plumbing.httpserver import HttpError, body_length, read_head
from simulators.plc import SimulatedPlc

log = structlog.get_logger("sim")

MAX_HEAD_BYTES = 8 * 1024
MAX_BODY_BYTES = 64 * 1024
IO_TIMEOUT_S = 5.0


class ControlError(Exception):
    """The control server could not listen."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes


async def _read_request(reader: asyncio.StreamReader) -> Request:
    method, target, headers = await read_head(reader, MAX_HEAD_BYTES)
    length = body_length(headers)
    if length > MAX_BODY_BYTES:
        raise HttpError(413, f"body above {MAX_BODY_BYTES} bytes")
    body = await reader.readexactly(length)
    return Request(method, target.split("?", 1)[0], body)


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


def _fault(plc: SimulatedPlc, body: bytes) -> dict[str, object]:
    """{"latency_s": 0.5} | {"silent": true} | {"reset": true}, any combination."""
    data = _json_body(body)
    allowed = {"latency_s", "silent", "reset"}
    if not isinstance(data, dict) or not data or set(data) - allowed:
        raise HttpError(400, f"body must be an object with some of {sorted(allowed)}")
    latency = data.get("latency_s", plc.faults.latency_s)
    if isinstance(latency, bool) or not isinstance(latency, int | float) or not 0 <= latency <= 60:
        raise HttpError(400, "latency_s must be a number of seconds from 0 to 60")
    if not all(isinstance(data.get(k, False), bool) for k in ("silent", "reset")):
        raise HttpError(400, "silent and reset must be true or false")
    plc.faults.latency_s = float(latency)
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


def _route(plc: SimulatedPlc, request: Request) -> dict[str, object]:
    methods = ROUTES.get(request.path)
    if methods is None:
        raise HttpError(404, f"no endpoint {request.path[:80]!r}; have: {', '.join(ROUTES)}")
    handler = methods.get(request.method)
    if handler is None:
        allow = ", ".join(methods)
        raise HttpError(405, f"{request.path} takes {allow}", {"Allow": allow})
    return handler(plc, request.body)


async def _answer(
    plc: SimulatedPlc, reader: asyncio.StreamReader
) -> tuple[int, dict[str, object], dict[str, str]]:
    try:
        async with asyncio.timeout(IO_TIMEOUT_S):
            request = await _read_request(reader)
        return 200, _route(plc, request), {}
    except HttpError as exc:
        if exc.status >= 404:
            log.info("control request refused", status=exc.status, error=exc.message)
        return exc.status, {"error": exc.message}, exc.headers
    except TimeoutError:
        return 408, {"error": f"request not complete within {IO_TIMEOUT_S:g} s"}, {}


def _response(status: int, payload: dict[str, object], headers: dict[str, str]) -> bytes:
    body = json.dumps(payload).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def _handle(
    plc: SimulatedPlc, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        status, payload, headers = await _answer(plc, reader)
        async with asyncio.timeout(IO_TIMEOUT_S):
            writer.write(_response(status, payload, headers))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        pass  # the client went away or stalled while reading the answer
    finally:
        writer.close()
        with suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(IO_TIMEOUT_S):
                await writer.wait_closed()


@asynccontextmanager
async def serving(plc: SimulatedPlc, host: str, port: int) -> AsyncIterator[int]:
    """Serve the control API while the context is open; yields the bound port."""
    try:
        server = await asyncio.start_server(partial(_handle, plc), host, port, limit=MAX_HEAD_BYTES)
    except OSError as exc:
        raise ControlError(
            f"cannot listen for control HTTP on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
