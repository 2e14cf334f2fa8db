"""The operator web app: the JSON API, the login, the console and the API's own docs,
as one FastAPI application (served by :class:`derrick.plumbing.asgi.AsgiServer`)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collector.alarms.changes import Changes
from collector.web import api, errors
from collector.web.security import (
    SECURE_SESSION_COOKIE,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    Authenticator,
    LoginThrottle,
)

if TYPE_CHECKING:
    from collector.alarms.httpapi import HttpApiSettings

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
_ENCODED_SLASH = re.compile(r"%2[fF]")


@dataclass
class Backend:
    """What the collector gives the web app: its alarms, its commands, its health, and
    (for the console) changes, the journal, KPIs and the latest values of an asset."""

    list_alarms: api.ListAlarms
    command: api.RunCommand
    health: Callable[[], dict[str, Any]] = lambda: {"ok": True}
    changes: Changes | None = None
    journal: Callable[..., Awaitable[list[dict[str, Any]]]] | None = None
    kpis: Callable[[], dict[str, Any]] | None = None
    latest: Callable[[str, str], Awaitable[dict[str, Any]]] | None = None


@dataclass
class Web:
    """The app's shared state (``request.app.state.web``)."""

    settings: HttpApiSettings
    backend: Backend
    auth: Authenticator
    throttle: LoginThrottle
    commands: api.Commands
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    listing: api.Listing = field(default_factory=api.Listing)
    templates: Jinja2Templates = field(
        default_factory=lambda: Jinja2Templates(directory=str(TEMPLATES))
    )

    @property
    def secure(self) -> bool:
        return self.settings.cookies_secure()

    @property
    def cookie_name(self) -> str:
        return SECURE_SESSION_COOKIE if self.secure else SESSION_COOKIE

    @property
    def console(self) -> bool:
        """The console needs named users (a shared token names nobody)."""
        return self.auth.users is not None


class Hardened:
    """Pure ASGI middleware: security headers on every answer, and a path whose ``%2F``
    stays encoded (an alarm id with a slash in it is a bad id, not another route)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path") or b""
        if b"%2" in raw and _ENCODED_SLASH.search(raw.decode("latin-1")):
            pieces = _ENCODED_SLASH.split(raw.decode("latin-1"))
            scope = {**scope, "path": "%2F".join(unquote(piece) for piece in pieces)}

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [
                    (name.encode(), value.encode())
                    for name, value in SECURITY_HEADERS.items()
                    if name.encode() not in present
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def build_app(web: Web) -> FastAPI:
    app = FastAPI(
        title="Derrick collector: operator API",
        version="1",
        description="The alarms of one collector (with fail-over, of every collector), "
        "and the commands operators give them. See docs/console.md.",
        docs_url=None,  # FastAPI's pages load Swagger UI from a CDN; sites are offline
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.web = web
    errors.install(app)
    app.include_router(api.router)
    app.add_api_route("/api/docs", api_docs, methods=["GET"], include_in_schema=False)
    if web.console:
        from collector.web import admin, console, login  # noqa: PLC0415 - only with users

        app.include_router(login.router)
        app.include_router(console.router)
        app.include_router(admin.router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(Hardened)
    return app


async def api_docs(request: Request) -> HTMLResponse:
    """The OpenAPI description as a plain page (no script, nothing from a CDN)."""
    schema = request.app.openapi()
    routes = [
        {
            "method": method.upper(),
            "path": path,
            "summary": op.get("summary", ""),
            "params": [p["name"] for p in op.get("parameters", [])],
        }
        for path, ops in schema.get("paths", {}).items()
        for method, op in ops.items()
    ]
    return request.app.state.web.templates.TemplateResponse(
        request, "api_docs.html", {"schema": schema, "routes": routes}
    )
