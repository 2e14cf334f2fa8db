"""The console's user administration (role admin): what ``derrick-collector users`` does,
on a page::

    GET  /console/users                         the users, their roles and tokens
    POST /console/users/add                     name, role, password
    POST /console/users/<name>/role             role
    POST /console/users/<name>/disable|enable
    POST /console/users/<name>/remove
    POST /console/users/<name>/token            label: the new token is shown once, on
                                                the answer itself (never in a URL)
    POST /console/users/<name>/revoke           token_id

Each change is written to the users file (:class:`collector.users.UserStore`, atomic)
and logged with the admin's name; a user whose role changes, or who is disabled or
removed, loses their open sessions at once. An admin cannot demote, disable or remove
themselves, so the last way in is never locked by accident.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from collector.users import Role, UsersError, UserStore
from collector.web.console import Visit, error_page, posted, render, to_login, visitor, with_notice

log = structlog.get_logger("collector.web")

router = APIRouter(include_in_schema=False)

PAGE = "/console/users"


def admin(request: Request) -> Visit | Response:
    """The admin visiting, or the page that turns anyone else away."""
    visit = visitor(request)
    if visit is None:
        return to_login(request, PAGE)
    if not visit.identity.may("manage_users"):
        role = visit.identity.role.value
        return error_page(
            request, visit, 403, f"{visit.identity.name} is {role}: users are managed by admins"
        )
    return visit


def store(request: Request) -> UserStore:
    users = request.app.state.web.auth.users
    assert users is not None  # the console exists only with users
    return users


@router.get(PAGE)
async def users_page(request: Request) -> Response:
    visit = admin(request)
    if isinstance(visit, Response):
        return visit
    return page(request, visit)


def page(request: Request, visit: Visit, status: int = 200, **extra: Any) -> Response:
    listed = store(request).users()
    roles = [role.value for role in Role]
    return render(request, visit, "users.html", "users", status, users=listed, roles=roles, **extra)


async def admin_form(request: Request) -> tuple[Visit, FormData] | Response:
    """A posted admin form (login, CSRF and role checked)."""
    checked = await posted(request)
    if isinstance(checked, Response):
        return checked
    visit, form, _back = checked
    if not visit.identity.may("manage_users"):
        return error_page(request, visit, 403, "users are managed by admins")
    return visit, form


async def change(
    request: Request, visit: Visit, done: str, apply: Callable[[], object], **about: str
) -> Response:
    """Apply one change to the users file (in a thread: argon2 and fsync take time) and
    go back to the page saying so; a refusal (unknown user, weak password) is shown."""
    try:
        await asyncio.to_thread(apply)
    except UsersError as exc:
        return with_notice(PAGE, visit, str(exc), "refused")
    log.info(f"user {done}", admin=visit.identity.name, **about)
    return with_notice(PAGE, visit, f"{about.get('user', '')}: {done}", "ok")


def not_yourself(visit: Visit, name: str, what: str) -> str | None:
    if name == visit.identity.name:
        return f"you cannot {what} yourself; another admin can"
    return None


def role_of(form: FormData) -> Role | None:
    try:
        return Role(str(form.get("role") or ""))
    except ValueError:
        return None


@router.post(f"{PAGE}/add")
async def add(request: Request) -> Response:
    checked = await admin_form(request)
    if isinstance(checked, Response):
        return checked
    visit, form = checked
    name, role = str(form.get("name") or "").strip(), role_of(form)
    if role is None:
        return with_notice(PAGE, visit, "choose a role", "refused")
    password = str(form.get("password") or "")
    users = store(request)
    return await change(
        request, visit, "added", lambda: users.add(name, role, password), user=name, role=role.value
    )


@router.post(PAGE + "/{name}/role")
async def set_role(request: Request, name: str) -> Response:
    checked = await admin_form(request)
    if isinstance(checked, Response):
        return checked
    visit, form = checked
    role = role_of(form)
    refusal = not_yourself(visit, name, "change the role of")
    if role is None or refusal:
        return with_notice(PAGE, visit, refusal or "choose a role", "refused")
    users, sessions = store(request), request.app.state.web.auth.sessions

    def apply() -> None:
        users.set_role(name, role)
        sessions.drop_user(name)

    return await change(request, visit, "role changed", apply, user=name, role=role.value)


@router.post(PAGE + "/{name}/{what}")
async def account(request: Request, name: str, what: str) -> Response:
    """disable, enable, remove, token, revoke."""
    checked = await admin_form(request)
    if isinstance(checked, Response):
        return checked
    visit, form = checked
    users, sessions = store(request), request.app.state.web.auth.sessions
    if what == "token":
        return await new_token(request, visit, users, name, str(form.get("label") or ""))
    if what == "revoke":
        token_id = str(form.get("token_id") or "")
        return await change(
            request, visit, "token revoked", lambda: users.revoke_token(name, token_id),
            user=name, token_id=token_id,
        )  # fmt: skip
    if what not in ("disable", "enable", "remove"):
        return error_page(request, visit, 404, f"no such change {what[:20]!r}")
    refusal = not_yourself(visit, name, what) if what != "enable" else None
    if refusal:
        return with_notice(PAGE, visit, refusal, "refused")

    def apply() -> None:
        if what == "remove":
            users.remove(name)
        else:
            users.set_disabled(name, what == "disable")
        sessions.drop_user(name)

    done = {"disable": "disabled", "enable": "enabled", "remove": "removed"}[what]
    return await change(request, visit, done, apply, user=name)


async def new_token(
    request: Request, visit: Visit, users: UserStore, name: str, label: str
) -> Response:
    """The new token, on this answer only (a redirect would put it in a URL)."""
    try:
        token = await asyncio.to_thread(users.new_token, name, label)
    except UsersError as exc:
        return with_notice(PAGE, visit, str(exc), "refused")
    log.info("user token made", admin=visit.identity.name, user=name, label=label)
    return page(request, visit, new_token={"user": name, "token": token, "label": label})
