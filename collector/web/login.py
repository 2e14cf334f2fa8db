"""Console login and logout: a form, a throttle on failures, a session cookie.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page can
send it), Secure with the ``__Host-`` prefix when the API serves TLS or
``secure_cookies: always`` says a TLS proxy is in front, and lasts ``session_hours``.
Failed logins are counted per name and per client address: past ``login_attempts`` each
attempt waits, doubling from 1 s up to 5 minutes (429 with Retry-After), and the password
of a throttled attempt is not even checked.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated
from urllib.parse import urlsplit

import structlog
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from collector.users import Identity
from collector.web.api import authenticated, check_csrf
from collector.web.security import Session

log = structlog.get_logger("collector.web")

router = APIRouter(include_in_schema=False)


def safe_next(target: str | None, default: str = "/console") -> str:
    """A path on this site to go to next (no open redirect): not another host (``//host``,
    or ``/\\host``, which browsers read the same), no control characters."""
    if not target or "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    return target


def login_page(request: Request, status: int = 200, error: str = "", **extra: object) -> Response:
    web = request.app.state.web
    context = {"error": error, "next": safe_next(request.query_params.get("next")), **extra}
    return web.templates.TemplateResponse(request, "login.html", context, status_code=status)


@router.get("/login")
async def login_form(request: Request) -> Response:
    return login_page(request)


@router.post("/login")
async def login(
    request: Request,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    next_page: Annotated[str, Form(alias="next")] = "/console",
) -> Response:
    web = request.app.state.web
    client = request.client.host if request.client else "unknown"
    keys = [f"name:{name}", f"address:{client}"]
    wait_s = web.throttle.wait_s(keys)
    if wait_s > 0:
        log.warning("login throttled", user=name, client=client, wait_s=round(wait_s, 1))
        retry = str(math.ceil(wait_s))
        page = login_page(
            request, 429, f"Too many failed logins: try again in {retry} s.", next=next_page
        )
        page.headers["Retry-After"] = retry
        return page
    identity = await asyncio.to_thread(web.auth.users.verify_password, name, password)
    if identity is None:
        web.throttle.failed(keys)
        log.warning("login failed", user=name, client=client)
        return login_page(request, 401, "Name or password not accepted.", next=next_page)
    web.throttle.succeeded(keys)
    session_id, _session = web.auth.sessions.create(identity)
    log.info("login", user=identity.name, role=identity.role.value, client=client)
    answer = RedirectResponse(safe_next(next_page), status_code=303)
    answer.set_cookie(
        web.cookie_name,
        session_id,
        max_age=int(web.settings.session_hours * 3600),
        path="/",
        secure=web.secure,
        httponly=True,
        samesite="strict",
    )
    return answer


@router.post("/logout")
async def logout(
    request: Request,
    found: Annotated[tuple[Identity, Session | None], Depends(authenticated)],
    csrf: Annotated[str, Form()] = "",
) -> Response:
    web = request.app.state.web
    identity, session = found
    check_csrf(request, session, csrf)
    web.auth.sessions.drop(request.cookies.get(web.cookie_name))
    log.info("logout", user=identity.name)
    answer = RedirectResponse("/login", status_code=303)
    answer.delete_cookie(
        web.cookie_name, path="/", secure=web.secure, httponly=True, samesite="strict"
    )
    return answer
