"""The operator console (issue 18): server-rendered pages over the operator API's backend.

Routes (all need a login; a browser without one is sent to ``/login?next=<page>``)::

    GET  /console                         alarm summary (filters: site, asset, priority)
    GET  /console/events?<filters>        the summary's live rows (Server-Sent Events)
    POST /console/acknowledge             acknowledge the selected alarms (alarm_id, ...)
    POST /console/alarms/<id>/<action>    one command (comment or reason, duration_s)
    GET  /console/alarm/<id>              one alarm: details, recent journal, its commands
    GET  /console/asset/<site>/<asset>    an asset's alarms and latest values
    GET  /console/shelved                 the hidden alarms: who, why, until when
    GET  /console/suppressed
    GET  /console/out-of-service
    GET  /console/journal[.csv]           the InfluxDB journal, searched; CSV export
    GET  /console/kpis                    alarm system KPIs against EEMUA 191 / ISA-18.2

Pages are Jinja templates (autoescaped) with no inline script or style (the CSP forbids
both); ``static/console.js`` adds live updates, flashing and sound. The summary's rows are
light (up to thousands, read on phones): no form in them, each row's Acknowledge button
submits the page's one ``#row-ack-form``, and everything else is done on the alarm's own
page (its "Actions…" link), where each command is a form. Every state change is
a form carrying the session's CSRF token; ``who`` is always the logged-in user. Commands
go through :class:`collector.web.api.Commands` like the JSON API's (which logs them).
After a command the browser is sent back (303) to the page it came from, with a notice
in the query string; the notice is signed (HMAC with a key of this process and the
user's name), so a link made elsewhere cannot put words on an operator's screen.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import hashlib
import hmac
import io
import json
import re
import secrets
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, get_args
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment
from starlette.datastructures import FormData

from collector.users import Identity, Role, may
from collector.web.api import (
    authenticated,
    check_csrf,
    checked_id,
    credentials,
    list_alarms,
    matching,
    read_body,
    require,
    validated,
)
from collector.web.errors import NO_STORE, ApiError
from collector.web.login import safe_next
from collector.web.security import Refused, Session
from derrick.wire.payloads import AlarmAction, NoticeEvent

log = structlog.get_logger("collector.web")

router = APIRouter(include_in_schema=False)

PRIORITIES = ("critical", "high", "medium", "low")
PRIORITY_MARKS = {
    "critical": "◆ CRITICAL",
    "high": "▲ HIGH",
    "medium": "■ MEDIUM",
    "low": "● LOW",
}
HIDDEN_STATES = frozenset({"shelved", "suppressed_by_design", "out_of_service"})
STATE_LABELS = {
    "normal": "Normal",
    "active_unacked": "Active, unacknowledged",
    "active_acked": "Active, acknowledged",
    "rtn_unacked": "Returned, unacknowledged",
    "latched": "Latched",
    "shelved": "Shelved",
    "suppressed_by_design": "Suppressed by design",
    "out_of_service": "Out of service",
}
ACTIONS: tuple[str, ...] = get_args(AlarmAction)
ACTION_TEXT = {  # action -> (button, button class, done)
    "acknowledge": ("Acknowledge", "ack-button", "Acknowledged"),
    "reset": ("Reset", "reset-button", "Reset"),
    "shelve": ("Shelve", "shelve-button", "Shelved"),
    "unshelve": ("Unshelve", "unshelve-button", "Unshelved"),
    "remove_from_service": ("Remove from service", "remove-button", "Removed from service"),
    "return_to_service": ("Return to service", "return-button", "Returned to service"),
}
EVENTS: tuple[str, ...] = get_args(NoticeEvent)
NAV = (
    ("/console", "Summary", "summary"),
    ("/console/shelved", "Shelved", "shelved"),
    ("/console/suppressed", "Suppressed", "suppressed"),
    ("/console/out-of-service", "Out of service", "out-of-service"),
    ("/console/journal", "Journal", "journal"),
    ("/console/kpis", "KPIs", "kpis"),
)
SUMMARY_FILTERS = ("site", "asset", "priority")
SHELVE_CHOICES_S = (600, 1800, 3600, 7200, 14400, 28800)
DEFAULT_MAX_SHELVE_S = 8 * 3600.0
MAX_SELECTED = 500
MAX_FORM_FIELDS = 2 * MAX_SELECTED + 10
JOURNAL_LIMIT = 1000
CSV_LIMIT = 10_000
JOURNAL_DAY_S = 24 * 3600
ALARM_JOURNAL_S = 7 * 24 * 3600  # an alarm's page: its journal of the last week,
ALARM_JOURNAL_LIMIT = 50  # the newest this many
KPI_WEEK_S = 7 * 24 * 3600
CSV_COLUMNS = (
    "time", "ts_ns", "site", "asset", "device", "rule", "event", "priority", "state",
    "who", "comment", "message", "value", "limit", "reason",
)  # fmt: skip
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
WAIT_S = 1.0  # the stream looks at closing / disconnection at least this often
RECHECK_S = 2.0  # and re-renders at least this often (alarms of other collectors)
KEEPALIVE_S = 15.0
IDENT = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
NS_PER_S = 1_000_000_000
ROW_CACHE_SIZE = 4096  # rows of 2,000 alarms for two roles; about 4 MB at most
NONE = "\u2013"  # an en dash: shown for a value there is not
_NOTICE_KEY = secrets.token_bytes(32)
_NOTICE_PARAMS = ("notice", "kind", "sig")
MAX_NOTICE = 1000


# --- who is asking ---------------------------------------------------------------------


@dataclass(frozen=True)
class Visit:
    """The logged-in user of one request (the session is None for an API token)."""

    identity: Identity
    session: Session | None

    @property
    def csrf(self) -> str:
        return self.session.csrf if self.session is not None else ""


def visitor(request: Request) -> Visit | None:
    """The request's user, None when it has no credential (or its login ended)."""
    try:
        identity, session = authenticated(request)
    except ApiError as exc:
        if exc.status == 401:
            return None
        raise
    return Visit(identity, session)


def to_login(request: Request, target: str | None = None) -> RedirectResponse:
    """To the login page, coming back to ``target`` (this page, its query encoded into
    ``next``) afterwards."""
    if target is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)


def here(request: Request) -> str:
    """This page's path and query, without a notice: where its forms come back to."""
    query = [(k, v) for k, v in request.query_params.multi_items() if k not in _NOTICE_PARAMS]
    return request.url.path + (f"?{urlencode(query)}" if query else "")


# --- notices ---------------------------------------------------------------------------


def _signature(name: str, kind: str, text: str) -> str:
    message = "\0".join((name, kind, text)).encode()
    return hmac.new(_NOTICE_KEY, message, hashlib.sha256).hexdigest()[:32]


def with_notice(back: str, visit: Visit, text: str, kind: str) -> RedirectResponse:
    """A 303 back to ``back`` that shows ``text`` there (``kind`` ok or refused); a long
    text is cut, as the URL must stay well within the server's 8 KiB request head."""
    if len(text) > MAX_NOTICE:
        text = text[: MAX_NOTICE - 1] + "\u2026"
    params = {"notice": text, "kind": kind, "sig": _signature(visit.identity.name, kind, text)}
    parts = urlsplit(back)
    query = "&".join(filter(None, (parts.query, urlencode(params))))
    return RedirectResponse(urlunsplit(("", "", parts.path, query, "")), status_code=303)


def notice_of(request: Request, visit: Visit) -> dict[str, str] | None:
    """The notice in this page's query string, if it was signed for this user."""
    text = request.query_params.get("notice")
    kind = request.query_params.get("kind", "")
    sig = request.query_params.get("sig", "")
    if not text or kind not in ("ok", "refused"):
        return None
    if not hmac.compare_digest(sig.encode(), _signature(visit.identity.name, kind, text).encode()):
        return None
    return {"text": text, "kind": kind}


# --- formatting ------------------------------------------------------------------------


def utc(ts_ns: object) -> str:
    """``2026-12-04 15:20:07Z``: a time for people (UTC); a dash when there is none."""
    if not isinstance(ts_ns, int) or isinstance(ts_ns, bool) or ts_ns <= 0:
        return NONE
    return datetime.fromtimestamp(ts_ns / NS_PER_S, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso(ts_ns: object) -> str:
    """``2026-12-04T15:20:07.123456Z``: a time for machines (CSV, ``<time datetime>``)."""
    if not isinstance(ts_ns, int) or isinstance(ts_ns, bool):
        return ""
    moment = datetime.fromtimestamp(ts_ns // 1000 / 1e6, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def number(value: object) -> str:
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def duration(seconds: object) -> str:
    """``10 min``, ``1 h 30 min``, ``45 s``."""
    if not isinstance(seconds, int | float) or seconds < 0:
        return NONE
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    parts.append(f"{secs} s" if secs or not (hours or minutes) else "")
    return " ".join(p for p in parts if p)


def templates(request: Request) -> Jinja2Templates:
    """The app's templates, with the console's filters and globals (added once)."""
    found: Jinja2Templates = request.app.state.web.templates
    env = found.env
    if "utc" not in env.filters:
        env.filters.update(utc=utc, iso=iso, number=number, duration=duration, part=_part,
                           path_id=_path_id)  # fmt: skip
        env.globals.update(
            ACTION_TEXT=ACTION_TEXT, PRIORITIES=PRIORITIES, MARKS=PRIORITY_MARKS, NAV=NAV
        )
    return found


PLAIN = re.compile(r"[A-Za-z0-9_.-]*")  # (fullmatch) nothing in it to encode in a URL path
PLAIN_ID = re.compile(r"[A-Za-z0-9_.:-]*")


def _part(value: object) -> str:
    """One URL path segment, every reserved character encoded."""
    text = str(value)
    return text if PLAIN.fullmatch(text) else quote(text, safe="")


def _path_id(value: object) -> str:
    """An alarm id as a path segment: as :func:`_part`, but its colons (which a path after
    its first segment may hold) kept, as the summary's thousands of links are shorter so."""
    text = str(value)
    return text if PLAIN_ID.fullmatch(text) else quote(text, safe=":")


def render(
    request: Request, visit: Visit, template: str, page: str, status: int = 200, **context: Any
) -> Response:
    base = {
        "identity": visit.identity,
        "session": visit.session,
        "csrf": visit.csrf,
        "page": page,
        "notice": notice_of(request, visit),
        "back": here(request),
    }
    return templates(request).TemplateResponse(
        request, template, {**base, **context}, status_code=status, headers=NO_STORE
    )


def error_page(request: Request, visit: Visit, status: int, message: str) -> Response:
    return render(request, visit, "error.html", "", status, status_code=status, message=message)


# --- alarms ----------------------------------------------------------------------------


def on_summary(alarm: dict[str, Any]) -> bool:
    """Active, unacknowledged or latched, and not hidden (those have their own lists)."""
    state = alarm.get("state")
    if state in HIDDEN_STATES or alarm.get("out_of_service") or alarm.get("suppressed"):
        return False
    return not (state == "normal" and alarm.get("acked", True))


def _rank(alarm: dict[str, Any]) -> tuple[int, int, int]:
    urgent = bool(alarm.get("active")) and not alarm.get("acked", True)
    priority = alarm.get("priority")
    order = PRIORITIES.index(priority) if priority in PRIORITIES else len(PRIORITIES)
    stamp = alarm.get("ts_ns")
    return (0 if urgent else 1, order, -stamp if isinstance(stamp, int) else 0)


def ordered(alarms: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Active unacknowledged first, then by priority (critical first), then newest."""
    return sorted(alarms, key=_rank)


def actions_for(alarm: dict[str, Any], identity: Identity) -> list[str]:
    """The commands that apply to the alarm now and that this user may give."""
    state = alarm.get("state")
    hidden = state in HIDDEN_STATES
    out_of_service = bool(alarm.get("out_of_service")) or state == "out_of_service"
    wanted = {
        "acknowledge": not alarm.get("acked", True) and not hidden,
        "reset": state == "latched" and not alarm.get("active"),
        "shelve": not out_of_service,
        "unshelve": alarm.get("shelved_until_ns") is not None and not out_of_service,
        "remove_from_service": not out_of_service,
        "return_to_service": out_of_service,
    }
    allowed = _allowed(identity.role)
    return [action for action in ACTIONS if wanted[action] and action in allowed]


@functools.lru_cache(maxsize=16)
def _allowed(role: Role) -> frozenset[str]:
    """The commands a role may give (asked once a role, not once an alarm)."""
    return frozenset(action for action in ACTIONS if may(role, action))


def shelve_choices(max_shelve_s: object) -> tuple[tuple[int, str], ...]:
    """Shelve durations to offer: the usual ones up to the alarm's maximum, and that."""
    most = max_shelve_s if isinstance(max_shelve_s, int | float) else DEFAULT_MAX_SHELVE_S
    return _shelve_choices(float(most))


@functools.lru_cache(maxsize=64)
def _shelve_choices(most: float) -> tuple[tuple[int, str], ...]:
    choices = [s for s in SHELVE_CHOICES_S if s <= most]
    if most >= 1 and (not choices or choices[-1] < most):
        choices.append(int(most))
    return tuple((s, duration(s)) for s in choices)


def fingerprint(alarm: dict[str, Any]) -> int:
    """Changes when anything shown in the alarm's row changes (the script keeps rows
    whose fingerprint is unchanged, and with them a half-typed comment). Python's own
    hash: cheap (the live summary takes it of every alarm every 2 s), and only ever
    compared within this process."""
    try:
        return hash(tuple(alarm.items()))
    except TypeError:  # a value that is not hashable (not one of console_view's)
        return hash(repr(sorted(alarm.items(), key=str)))


def row_view(
    alarm: dict[str, Any], identity: Identity, only: frozenset[str] | None = None
) -> dict[str, Any]:
    """An alarm as a row of the templates: its fields plus what they show and allow."""
    actions = actions_for(alarm, identity)
    if only is not None:
        actions = [a for a in actions if a in only]
    priority = alarm.get("priority", "")
    return {
        **alarm,
        "mark": PRIORITY_MARKS.get(priority, str(priority).upper()),
        "state_label": STATE_LABELS.get(alarm.get("state", ""), alarm.get("state", "")),
        "unacked": not alarm.get("acked", True),
        "actions": actions,
        "selectable": "acknowledge" in actions,
        "more": any(a != "acknowledge" for a in actions),
        "shelve_choices": shelve_choices(alarm.get("max_shelve_s")),
        "fp": f"{fingerprint(alarm) & 0xFFFFFFFFFFFF:012x}",  # 48 bits: one alarm's changes
    }


def row_macro(env: Environment) -> Any:
    """The macro that renders an alarm's row (``_macros.html``'s ``alarm_row``)."""
    return env.get_template("_macros.html").module.alarm_row  # type: ignore[attr-defined]


class RowCache:
    """Rendered summary rows by all they are rendered from (the alarm's fingerprint and
    the user's role: a row holds no form, token or page to come back to), the least
    recently used dropped first: a change of one alarm among 2,000 renders one row, not
    2,000, and users of one role share their rows."""

    def __init__(self, size: int = ROW_CACHE_SIZE) -> None:
        self._size = size
        self._rows: OrderedDict[tuple[object, ...], str] = OrderedDict()

    def rows(self, env: Environment, alarms: list[dict[str, Any]], identity: Identity) -> list[str]:
        """The rows of these alarms for this user, rendered or from the cache."""
        role = identity.role
        may_ack = "acknowledge" in _allowed(role)
        macro: Any = None
        found: list[str] = []
        for alarm in alarms:
            key = (fingerprint(alarm), alarm.get("alarm_id"), role)
            html = self._rows.get(key)
            if html is None:
                macro = macro or row_macro(env)
                html = self._rows[key] = macro(row_view(alarm, identity), may_ack, may_ack)
            else:
                self._rows.move_to_end(key)
            found.append(html)
        while len(self._rows) > self._size:
            self._rows.popitem(last=False)
        return found


ROWS = RowCache()


# --- summary ---------------------------------------------------------------------------


def summary_filters(request: Request) -> dict[str, str]:
    found = {key: request.query_params.get(key, "").strip() for key in SUMMARY_FILTERS}
    return {key: value[:100] for key, value in found.items() if value}


def summary_url(filters: dict[str, str], path: str = "/console") -> str:
    return path + (f"?{urlencode(filters)}" if filters else "")


def banner_counts(alarms: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(a.get("priority") for a in alarms)
    totals = {p: counts.get(p, 0) for p in PRIORITIES}
    unacked = sum(not a.get("acked", True) for a in alarms)
    return {**totals, "unacked": unacked, "total": len(alarms)}


def summary_selection(
    alarms: list[dict[str, Any]], filters: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the alarms the summary is about, those of them the filters let through, ordered)."""
    present = [a for a in alarms if on_summary(a)]
    return present, ordered(matching(present, {k: [v] for k, v in filters.items()}))


def summary_context(
    env: Environment,
    alarms: list[dict[str, Any]],
    visit: Visit,
    filters: dict[str, str],
    selection: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """What the summary page and its live fragments are rendered from."""
    present, shown = selection or summary_selection(alarms, filters)
    may_ack = visit.identity.may("acknowledge")
    options = {
        key: sorted(
            {str(a.get(key)) for a in present} | {v for k, v in filters.items() if k == key}
        )
        for key in ("site", "asset")
    }
    back = summary_url(filters)
    return {
        "rows_html": ROWS.rows(env, shown, visit.identity),
        "counts": banner_counts(shown),
        "filters": filters,
        "options": {**options, "priority": list(PRIORITIES)},
        "can_ack": may_ack,
        "show_actions": may_ack,
        "csrf": visit.csrf,
        "back": back,
        "events_url": summary_url(filters, "/console/events"),
    }


@router.get("/console")
async def summary(request: Request) -> Response:
    visit = visitor(request)
    if visit is None:
        return to_login(request)
    env = templates(request).env
    context = summary_context(env, list_alarms(request), visit, summary_filters(request))
    return render(request, visit, "summary.html", "summary", **context)


@router.get("/console/events")
async def events(request: Request) -> Response:
    """The summary's rows and banner whenever they change (Server-Sent Events)."""
    if visitor(request) is None:
        return PlainTextResponse("log in first", 401, headers=NO_STORE)
    headers = {**NO_STORE, "X-Accel-Buffering": "no"}
    stream = summary_stream(request, summary_filters(request))
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@dataclass
class Shown:
    """What one stream has sent its page: each row's fingerprint, the rows' order and
    everything else (the key of the last event)."""

    fingerprints: dict[str, int] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    key: int | None = None


async def summary_stream(request: Request, filters: dict[str, str]) -> AsyncIterator[str]:
    """``event: summary`` when what the page shows changes: looked at on every change
    the alarm service announces and at least every :data:`RECHECK_S` (alarms owned by
    another collector change without a local bump); a keepalive comment every
    :data:`KEEPALIVE_S`. Ends when the server closes, the client goes or the login ends."""
    web = request.app.state.web
    changes = web.backend.changes
    seen, checked, sent = -1, 0.0, time.monotonic()
    shown = Shown()
    yield "retry: 3000\n\n"
    while not web.closing.is_set():
        visit = _still_visiting(request)
        if visit is None or await request.is_disconnected():
            return
        version = changes.version if changes is not None else 0
        now = time.monotonic()
        if version != seen or now - checked >= RECHECK_S:
            seen, checked = version, now
            event = _summary_event(request, visit, filters, version, shown)
            if event is not None:
                sent = now
                yield event
        if now - sent >= KEEPALIVE_S:
            sent = now
            yield ": keepalive\n\n"
        await _next_change(changes, seen, web.closing)


def _still_visiting(request: Request) -> Visit | None:
    """The stream's user, asked again each time (a removed user's stream ends)."""
    web = request.app.state.web
    try:
        identity, session = web.auth.identify(credentials(request, web.cookie_name))
    except Refused:
        return None
    return Visit(identity, session)


def _summary_event(
    request: Request, visit: Visit, filters: dict[str, str], version: int, shown: Shown
) -> str | None:
    """The event that brings the page from ``shown`` to now, or None when nothing shown
    changed. Only rows whose fingerprint changed travel (rendered, or from the row
    cache); the order only when it changed. A flood of 2,000 alarms is then a few
    hundred bytes per change on a phone's link, not the whole table each time."""
    try:
        alarms = list_alarms(request)
    except ApiError:
        return None  # the listing failed (logged): try again at the next look
    present, ordered_alarms = summary_selection(alarms, filters)
    prints = {str(a.get("alarm_id")): fingerprint(a) for a in ordered_alarms}
    order = list(prints)
    key = hash((visit.identity.role, *prints.values(), *order))
    if key == shown.key:
        return None
    changed = [
        a for a in ordered_alarms if shown.fingerprints.get(a["alarm_id"]) != prints[a["alarm_id"]]
    ]
    env = templates(request).env
    context = summary_context(env, alarms, visit, filters, (present, changed))
    web_changes = request.app.state.web.backend.changes
    data: dict[str, Any] = {
        "rows": dict(zip((a["alarm_id"] for a in changed), context["rows_html"], strict=True)),
        "banner": env.get_template("_banner.html").render(
            {**context, "counts": banner_counts(ordered_alarms)}
        ),
        "version": version,
        "changed_ns": web_changes.changed_ns if web_changes else 0,
    }
    if order != shown.order:
        data["order"] = order
    if not order:
        data["empty"] = env.get_template("_rows.html").render({**context, "rows_html": []})
    shown.fingerprints, shown.order, shown.key = prints, order, key
    return f"event: summary\ndata: {json.dumps(data)}\n\n"


async def _next_change(changes: Any, seen: int, closing: asyncio.Event) -> None:
    """Until the alarms change, the server closes, or :data:`WAIT_S` passes."""
    waits = [asyncio.ensure_future(closing.wait())]
    if changes is not None:
        waits.append(asyncio.ensure_future(changes.wait(seen, WAIT_S)))
    try:
        await asyncio.wait(waits, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


# --- commands --------------------------------------------------------------------------


async def read_form(request: Request) -> FormData:
    """The posted form (url-encoded, within the API's size and time limits)."""
    web = request.app.state.web
    body = await read_body(request, web.settings.max_body_kb * 1024, web.settings.timeout_s)
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise ApiError(400, "send the console's form (application/x-www-form-urlencoded)")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "the form could not be read") from exc
    return FormData(pairs)


def command_fields(visit: Visit, form: FormData) -> dict[str, object]:
    """A command's fields from a console form: ``who`` is the logged-in user, whatever
    the form says; the reason of a shelve or removal travels as its comment."""
    comment = str(form.get("comment") or form.get("reason") or "").strip()
    raw = str(form.get("duration_s") or "0").strip()
    try:
        seconds = float(raw)
    except ValueError as exc:
        raise ApiError(400, f"duration must be a number of seconds, not {raw[:20]!r}") from exc
    return {
        "who": visit.identity.name,
        "comment": comment,
        "duration_s": seconds,
        "request_id": uuid.uuid4().hex,
    }


async def posted(request: Request) -> tuple[Visit, FormData, str] | Response:
    """A console form's user, fields and page to go back to; or the answer that refuses
    it (no login: to the login page; no or wrong CSRF token, a form too big: an error)."""
    visit = visitor(request)
    if visit is None:
        return to_login(request, "/console")
    try:
        form = await read_form(request)
        check_csrf(request, visit.session, str(form.get("csrf") or ""))
    except ApiError as exc:
        return error_page(request, visit, exc.status, exc.message)
    return visit, form, safe_next(str(form.get("back") or ""))


def outcome(action: str, alarm_id: str, status: int, result: dict[str, Any]) -> tuple[bool, str]:
    """(ok, what to tell the user) of one command's answer."""
    if status == 200 and result.get("ok"):
        return True, f"{ACTION_TEXT[action][2]}: {alarm_id}"
    reason = result.get("reason") or result.get("error") or f"HTTP {status}"
    return False, f"{ACTION_TEXT[action][0]} refused for {alarm_id}: {reason}"


@router.post("/console/alarms/{alarm_id}/{action}")
async def command(request: Request, alarm_id: str, action: str) -> Response:
    got = await posted(request)
    if isinstance(got, Response):
        return got
    visit, form, back = got
    try:
        order = validated(command_fields(visit, form), checked_id(alarm_id), action)
    except ApiError as exc:
        return with_notice(back, visit, exc.message, "refused")
    try:
        require(visit.identity, order.action)
    except ApiError as exc:
        return error_page(request, visit, exc.status, exc.message)
    status, result = await request.app.state.web.commands.run(order, visit.identity)
    ok, text = outcome(order.action, order.alarm_id, status, result)
    return with_notice(back, visit, text, "ok" if ok else "refused")


@router.post("/console/acknowledge")
async def acknowledge_selected(request: Request) -> Response:
    """Acknowledge every selected alarm: one command each, one notice for them all."""
    got = await posted(request)
    if isinstance(got, Response):
        return got
    visit, form, back = got
    try:
        require(visit.identity, "acknowledge")
    except ApiError as exc:
        return error_page(request, visit, exc.status, exc.message)
    selected = list(dict.fromkeys(str(v) for v in form.getlist("alarm_id")))
    if not selected:
        return with_notice(back, visit, "Select at least one alarm to acknowledge.", "refused")
    if len(selected) > MAX_SELECTED:
        text = f"At most {MAX_SELECTED} alarms at once ({len(selected)} selected)."
        return with_notice(back, visit, text, "refused")
    refused = [
        why for alarm_id in selected if (why := await _acknowledge(request, visit, form, alarm_id))
    ]
    done = len(selected) - len(refused)
    log.info("console acknowledged selected", user=visit.identity.name, selected=len(selected),
             acknowledged=done)  # fmt: skip
    text = f"Acknowledged {done} of {len(selected)}." + "".join(f" {why}" for why in refused)
    return with_notice(back, visit, text, "refused" if refused else "ok")


async def _acknowledge(request: Request, visit: Visit, form: FormData, alarm_id: str) -> str:
    """Acknowledge one alarm: "" when done, else why not."""
    try:
        order = validated(command_fields(visit, form), checked_id(alarm_id), "acknowledge")
    except ApiError as exc:
        return exc.message
    status, result = await request.app.state.web.commands.run(order, visit.identity)
    ok, text = outcome("acknowledge", alarm_id, status, result)
    return "" if ok else text


# --- one asset -------------------------------------------------------------------------


def grafana_link(base: str | None, site: str, asset: str) -> str | None:
    """The Grafana dashboard's URL with ``var-site`` and ``var-asset`` filled in."""
    if not base or not base.startswith(("http://", "https://")):
        return None
    parts = urlsplit(base)
    added = urlencode({"var-site": site, "var-asset": asset})
    query = f"{parts.query}&{added}" if parts.query else added
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


async def latest_values(request: Request, site: str, asset: str) -> tuple[dict | None, str]:
    """(the asset's latest values, "") or (None, why they are not available)."""
    web = request.app.state.web
    if web.backend.latest is None:
        return None, "this collector has no InfluxDB reader for the console"
    try:
        async with asyncio.timeout(web.settings.timeout_s):
            return await web.backend.latest(site, asset), ""
    except TimeoutError:
        return None, f"InfluxDB did not answer within {web.settings.timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure of the store is shown, not raised
        log.warning("console could not read latest values", site=site, asset=asset,
                    error=str(exc))  # fmt: skip
        return None, str(exc) or exc.__class__.__name__


@router.get("/console/asset/{site}/{asset}")
async def asset_page(request: Request, site: str, asset: str) -> Response:
    visit = visitor(request)
    if visit is None:
        return to_login(request)
    if not (IDENT.match(site) and IDENT.match(asset)):
        return error_page(request, visit, 404, "no such asset: sites and assets are identifiers")
    mine = [a for a in list_alarms(request) if a.get("site") == site and a.get("asset") == asset]
    latest, why = await latest_values(request, site, asset)
    return render(
        request, visit, "asset.html", "asset",
        site=site, asset=asset,
        rows=[row_view(a, visit.identity) for a in ordered(mine)],
        show_actions=visit.identity.may("acknowledge"),
        latest=latest, latest_error=why,
        grafana=grafana_link(request.app.state.web.settings.grafana_url, site, asset),
    )  # fmt: skip


# --- hidden alarms ---------------------------------------------------------------------


@dataclass(frozen=True)
class HiddenList:
    title: str
    holds: Callable[[dict[str, Any]], bool]
    actions: frozenset[str]
    explain: str


HIDDEN_LISTS = {
    "shelved": HiddenList(
        "Shelved alarms",
        lambda a: a.get("shelved_until_ns") is not None or a.get("state") == "shelved",
        frozenset({"unshelve"}),
        "Hidden by an operator for a while; each comes back on its own when its time is up.",
    ),
    "suppressed": HiddenList(
        "Suppressed by design",
        lambda a: bool(a.get("suppressed")) or a.get("state") == "suppressed_by_design",
        frozenset(),
        "Hidden by the rule's own suppression condition (machine state), for as long as "
        "that holds.",
    ),
    "out-of-service": HiddenList(
        "Out of service",
        lambda a: bool(a.get("out_of_service")) or a.get("state") == "out_of_service",
        frozenset({"return_to_service"}),
        "Removed from service (maintenance, a broken sensor) until someone returns them.",
    ),
}


def hidden_view(kind: str, alarm: dict[str, Any], now_ns: int) -> dict[str, str]:
    """Who hid the alarm, why, and until when, as the list shows them."""
    if kind == "shelved":
        until = alarm.get("shelved_until_ns")
        left = (until - now_ns) / NS_PER_S if isinstance(until, int) else None
        when = utc(until) + (f" (in {duration(left)})" if left is not None and left > 0 else "")
        return {"who": alarm.get("shelved_by") or NONE, "why": alarm.get("shelve_reason") or NONE,
                "until": when}  # fmt: skip
    if kind == "suppressed":
        return {"who": "by design", "why": "the rule's suppression condition",
                "until": "while the condition holds"}  # fmt: skip
    return {"who": alarm.get("removed_by") or NONE, "why": alarm.get("remove_reason") or NONE,
            "until": "until returned to service"}  # fmt: skip


async def hidden_page(request: Request, kind: str) -> Response:
    visit = visitor(request)
    if visit is None:
        return to_login(request)
    listing = HIDDEN_LISTS[kind]
    now = time.time_ns()
    found = sorted((a for a in list_alarms(request) if listing.holds(a)), key=_rank)
    rows = [
        {**row_view(a, visit.identity, listing.actions), **hidden_view(kind, a, now)} for a in found
    ]
    return render(
        request, visit, "hidden.html", kind, kind=kind, listing=listing, rows=rows,
        show_actions=bool(listing.actions) and any(r["actions"] for r in rows),
    )  # fmt: skip


@router.get("/console/shelved")
async def shelved(request: Request) -> Response:
    return await hidden_page(request, "shelved")


@router.get("/console/suppressed")
async def suppressed(request: Request) -> Response:
    return await hidden_page(request, "suppressed")


@router.get("/console/out-of-service")
async def out_of_service(request: Request) -> Response:
    return await hidden_page(request, "out-of-service")


# --- journal ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    """A journal search as the form gives it (texts) and as the query takes it."""

    start_ns: int
    end_ns: int
    start_text: str
    end_text: str
    filters: dict[str, str]

    def query(self) -> str:
        given = {"from": self.start_text, "to": self.end_text, **self.filters}
        return urlencode({k: v for k, v in given.items() if v})


SEARCH_KEYS = ("site", "asset", "rule", "who", "event")


def _moment(text: str) -> tuple[int, int]:
    """A ``datetime-local`` value read as UTC: (its ns, how long the value lasts in ns:
    a minute, or a second when seconds are given)."""
    for pattern, step in (("%Y-%m-%dT%H:%M", 60), ("%Y-%m-%dT%H:%M:%S", 1)):
        try:
            moment = datetime.strptime(text, pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
        return int(moment.timestamp()) * NS_PER_S, step * NS_PER_S
    raise ValueError(f"not a date and time: {text[:40]!r} (want YYYY-MM-DDTHH:MM, UTC)")


def journal_search(params: Any, now_ns: int) -> Search:
    """The search of a journal request; ValueError saying what is wrong with it.
    ``to`` includes its whole minute; no ``from`` means 24 hours before ``to``."""
    end_text = str(params.get("to") or "").strip()
    end = now_ns + 1
    if end_text:
        start_of, lasts = _moment(end_text)
        end = start_of + lasts
    start_text = str(params.get("from") or "").strip()
    if start_text:
        start = _moment(start_text)[0]
    else:
        start = end - JOURNAL_DAY_S * NS_PER_S
        start_text = datetime.fromtimestamp(start // NS_PER_S, UTC).strftime("%Y-%m-%dT%H:%M")
    if start >= end:
        raise ValueError("the search's start must be before its end")
    filters = {k: str(params.get(k) or "").strip()[:200] for k in SEARCH_KEYS}
    if filters["event"] and filters["event"] not in EVENTS:
        raise ValueError(f"unknown event {filters['event'][:40]!r}; have: {', '.join(EVENTS)}")
    return Search(start, end, start_text, end_text, {k: v for k, v in filters.items() if v})


async def journal_rows(
    request: Request, search: Search, limit: int
) -> tuple[list[dict[str, Any]] | None, str]:
    """(the journal's rows, "") or (None, why they are not available)."""
    web = request.app.state.web
    if web.backend.journal is None:
        return None, "the journal is not available: this collector has no InfluxDB reader"
    try:
        async with asyncio.timeout(web.settings.timeout_s):
            rows = await web.backend.journal(
                start_ns=search.start_ns, end_ns=search.end_ns, limit=limit, **search.filters
            )
    except TimeoutError:
        return None, f"the journal is not available: no answer within {web.settings.timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure of the store is shown, not raised
        log.warning("console could not read the journal", error=str(exc))
        return None, f"the journal is not available: {exc or exc.__class__.__name__}"
    return rows, ""


@router.get("/console/journal")
async def journal(request: Request) -> Response:
    visit = visitor(request)
    if visit is None:
        return to_login(request)
    try:
        search = journal_search(request.query_params, time.time_ns())
    except ValueError as exc:
        search = journal_search({}, time.time_ns())
        return render(request, visit, "journal.html", "journal", 400, search=search,
                      rows=None, error=str(exc), events=EVENTS, limit=JOURNAL_LIMIT,
                      csv_url="/console/journal.csv")  # fmt: skip
    rows, error = await journal_rows(request, search, JOURNAL_LIMIT)
    return render(
        request, visit, "journal.html", "journal", search=search, rows=rows, error=error,
        events=EVENTS, limit=JOURNAL_LIMIT, csv_url=f"/console/journal.csv?{search.query()}",
    )  # fmt: skip


def cell(value: object) -> object:
    """A CSV cell: text that a spreadsheet would run as a formula gets a leading quote."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def journal_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        stamp = row.get("ts_ns")
        values = [iso(stamp), stamp, *(row.get(column) for column in CSV_COLUMNS[2:])]
        writer.writerow([cell(value) for value in values])
    return out.getvalue()


@router.get("/console/journal.csv")
async def journal_download(request: Request) -> Response:
    visit = visitor(request)
    if visit is None:
        return to_login(request)
    try:
        search = journal_search(request.query_params, time.time_ns())
    except ValueError as exc:
        return PlainTextResponse(str(exc), 400, headers=NO_STORE)
    rows, error = await journal_rows(request, search, CSV_LIMIT)
    if rows is None:
        return PlainTextResponse(error, 503, headers=NO_STORE)
    name = "derrick-journal-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ".csv"
    headers = {**NO_STORE, "Content-Disposition": f'attachment; filename="{name}"'}
    return Response(journal_csv(rows), media_type="text/csv; charset=utf-8", headers=headers)


# --- one alarm -------------------------------------------------------------------------

FORM_IDS = {  # action -> (the form's id, its button's id) on an alarm's page
    "acknowledge": ("ack-form", "acknowledge-button"),
    "reset": ("reset-form", "reset-button"),
    "shelve": ("shelve-form", "shelve-button"),
    "unshelve": ("unshelve-form", "unshelve-button"),
    "remove_from_service": ("remove-form", "remove-button"),
    "return_to_service": ("return-form", "return-button"),
}


def alarm_url(alarm_id: str) -> str:
    return "/console/alarm/" + _path_id(alarm_id)


def hidden_details(alarm: dict[str, Any], now_ns: int) -> list[tuple[str, str, str]]:
    """(label, text, class) of who hid the alarm, why and until when, for each way it is
    hidden (shelved, suppressed, out of service)."""
    found = []
    labels = {
        "shelved": ("Shelved by", "Shelve reason", "Shelved until (UTC)"),
        "suppressed": ("Suppressed", "Why suppressed", "Suppressed until"),
        "out-of-service": ("Removed from service by", "Removal reason", "Out of service"),
    }
    for kind, listing in HIDDEN_LISTS.items():
        if listing.holds(alarm):
            view = hidden_view(kind, alarm, now_ns)
            who, why, until = labels[kind]
            found += [(who, view["who"], "who"), (why, view["why"], "why"),
                      (until, view["until"], "until")]  # fmt: skip
    return found


async def alarm_journal(
    request: Request, alarm: dict[str, Any], now_ns: int
) -> tuple[list[dict[str, Any]] | None, str, str]:
    """(the journal of the alarm's rule on its asset over the last week, newest first, at
    most :data:`ALARM_JOURNAL_LIMIT`; or None), why not, and the journal page's search of
    the same."""
    start = now_ns - ALARM_JOURNAL_S * NS_PER_S
    filters = {k: str(alarm.get(k) or "") for k in ("site", "asset", "rule")}
    filters = {k: v for k, v in filters.items() if v}
    start_text = datetime.fromtimestamp(start // NS_PER_S, UTC).strftime("%Y-%m-%dT%H:%M")
    search = Search(start, now_ns + 1, start_text, "", filters)
    rows, error = await journal_rows(request, search, ALARM_JOURNAL_LIMIT)
    return rows, error, f"/console/journal?{search.query()}"


@router.get("/console/alarm/{alarm_id}")
async def alarm_page(request: Request, alarm_id: str) -> Response:
    """One alarm: all it holds, its recent journal, and the commands the user may give
    (each a form with a comment or reason, coming back here)."""
    visit = visitor(request)
    if visit is None:
        return to_login(request)
    found = None
    try:
        checked_id(alarm_id)
    except ApiError:
        pass
    else:
        found = next((a for a in list_alarms(request) if a.get("alarm_id") == alarm_id), None)
    if found is None:
        return error_page(request, visit, 404, f"no alarm {alarm_id[:300]!r}")
    now = time.time_ns()
    journal, journal_error, journal_url = await alarm_journal(request, found, now)
    row = row_view(found, visit.identity)
    return render(
        request, visit, "alarm.html", "alarm", row=row, hidden=hidden_details(found, now),
        journal=journal, journal_error=journal_error, journal_url=journal_url,
        journal_limit=ALARM_JOURNAL_LIMIT, forms=FORM_IDS, back=alarm_url(alarm_id),
    )  # fmt: skip


# --- KPIs ------------------------------------------------------------------------------


def _status(value: float, met: float, near: float | None = None) -> str:
    """met when ``value <= met``; near when within ``near``; else not met."""
    if value <= met:
        return "met"
    return "near" if near is not None and value <= near else "not met"


def kpi_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """Each KPI of :meth:`collector.alarms.service.AlarmService.kpi_report` with its
    EEMUA 191 / ISA-18.2 target and whether it is met."""
    window_s = float(report.get("window_s") or 600)
    rate = float(report.get("alarms_per_window", 0)) * 600 / window_s
    counting = float(report.get("counting_s") or 0)
    flood_pct = 100 * float(report.get("flood_s_total", 0)) / counting if counting > 0 else 0.0
    standing = int(report.get("standing", 0))
    chattering = int(report.get("chattering", 0))
    flood_now = bool(report.get("in_flood"))
    return [
        {"name": "Alarms per 10 minutes", "value": f"{rate:.3g}",
         "target": "≤ 1 very likely acceptable, ≤ 2 manageable (EEMUA 191); > "
                   f"{report.get('flood_per_window', 10)} is a flood",
         "status": _status(rate, 1, 2),
         "note": f"annunciations in the last {duration(window_s)}, for the whole collector "
                 "(the targets are per operator position)"},
        {"name": "Time in flood", "value": f"{flood_pct:.2g} %", "target": "< 1 %",
         "status": "met" if flood_pct < 1 else "not met",
         "note": f"{duration(report.get('flood_s_total', 0))} of {duration(counting)} counted"},
        {"name": "In flood now", "value": "yes" if flood_now else "no", "target": "no",
         "status": "not met" if flood_now else "met", "note": ""},
        {"name": "Standing alarms", "value": str(standing),
         "target": "0 (ISA-18.2: fewer than 5)", "status": _status(standing, 0, 4),
         "note": f"active for more than {duration(report.get('standing_after_s', 86400))}"},
        {"name": "Chattering alarms", "value": str(chattering), "target": "0",
         "status": _status(chattering, 0),
         "note": ", ".join(report.get("chattering_ids") or [])},
    ]  # fmt: skip


PRIORITY_TARGETS = {"low": 80.0, "medium": 15.0, "high": 5.0}
LEEWAY_PCT = 5.0


def distribution(priorities: list[str]) -> dict[str, Any]:
    """Shares of each priority against ISA-18.2's ≈ 80 / 15 / 5 % (low / medium / high),
    critical counted with high for the target and shown apart. Met when the high (with
    critical) and the medium shares are within :data:`LEEWAY_PCT` points of their target."""
    counts = Counter(priorities)
    total = sum(counts.values())

    def share(count: int) -> float:
        return 100 * count / total if total else 0.0

    rows = [{"priority": p, "mark": PRIORITY_MARKS[p], "count": counts.get(p, 0),
             "share": share(counts.get(p, 0))} for p in PRIORITIES]  # fmt: skip
    urgent = share(counts.get("high", 0) + counts.get("critical", 0))
    medium = share(counts.get("medium", 0))
    met = urgent <= PRIORITY_TARGETS["high"] + LEEWAY_PCT and (
        medium <= PRIORITY_TARGETS["medium"] + LEEWAY_PCT
    )
    status = "no data" if not total else ("met" if met else "not met")
    return {"rows": rows, "total": total, "urgent": urgent, "status": status}


async def week_distribution(request: Request) -> tuple[dict[str, Any] | None, str]:
    """The priorities of the last 7 days' annunciations, from the journal."""
    now = time.time_ns()
    week = Search(now - KPI_WEEK_S * NS_PER_S, now + 1, "", "", {"event": "announce"})
    rows, error = await journal_rows(request, week, CSV_LIMIT)
    if rows is None:
        return None, error
    return distribution([str(r.get("priority")) for r in rows]), ""


def top_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    total = int(report.get("alarms_per_window", 0)) or 1
    chattering = set(report.get("chattering_ids") or [])
    return [
        {"alarm_id": alarm_id, "count": count, "share": 100 * count / total,
         "chattering": alarm_id in chattering}
        for alarm_id, count in (report.get("top") or [])[:10]
    ]  # fmt: skip


@router.get("/console/kpis")
async def kpis(request: Request) -> Response:
    visit = visitor(request)
    if visit is None:
        return to_login(request)
    web = request.app.state.web
    report, error = None, "KPIs are not available: this collector does not count them"
    if web.backend.kpis is not None:
        try:
            report, error = web.backend.kpis(), ""
        except Exception as exc:  # noqa: BLE001 - shown on the page
            log.warning("console could not read the KPIs", error=str(exc))
            error = f"KPIs are not available: {exc or exc.__class__.__name__}"
    now_dist = distribution([str(a.get("priority")) for a in list_alarms(request)])
    week, week_error = await week_distribution(request)
    return render(
        request, visit, "kpis.html", "kpis", report=report, error=error,
        kpis=kpi_rows(report) if report else [], top=top_rows(report) if report else [],
        current=now_dist, week=week, week_error=week_error,
        counting=duration(report.get("counting_s")) if report else "",
    )  # fmt: skip
