"""The operator console against a real AlarmApi on a loopback port: logins and cookies,
what each role sees and may do, CSRF, escaping, the live summary stream (its light rows:
no form in them), an alarm's own page with its commands, the journal and its CSV, the
hidden lists, an asset's page and the KPIs.

The server runs on its own event loop in a thread (as in tests/test_alarm_http.py); the
tests are a small cookie-keeping client over ``http.client``. The backend is canned: a
list of alarms, a command callback that records, a fake journal and latest values.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest
from argon2 import PasswordHasher

from collector.alarms.changes import Changes
from collector.alarms.httpapi import AlarmApi, HttpApiSettings
from collector.influx import StoreUnavailable
from collector.users import Role, UserStore
from collector.web import console
from collector.web.security import CONTENT_SECURITY_POLICY
from derrick.wire.payloads import AlarmCommand, AlarmCommandResult
from devstack.served import ServedApi

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
USERS = {"viewer1": Role.VIEWER, "op1": Role.OPERATOR, "sup1": Role.SUPERVISOR,
         "adm1": Role.ADMIN}  # fmt: skip
S = 1_000_000_000
BASE = 1_780_000_000 * S
SCRIPT = "<script>alert(1)</script>"


def alarm(
    rule: str,
    state: str = "active_unacked",
    priority: str = "high",
    offset_s: int = 0,
    *,
    site: str = "yard",
    asset: str = "crane-01",
    **extra: Any,
) -> dict[str, Any]:
    """An alarm as collector.alarms.notify.console_view lists it."""
    return {
        "v": 1,
        "alarm_id": f"{rule}:{site}:{asset}:lmi",
        "rule": rule,
        "site": site,
        "asset": asset,
        "device": "lmi",
        "state": state,
        "active": state in ("active_unacked", "active_acked"),
        "acked": state not in ("active_unacked", "rtn_unacked"),
        "priority": priority,
        "value": 16.5,
        "limit": 15.3,
        "message": f"{rule} message",
        "shelved_until_ns": None,
        "ts_ns": BASE + offset_s * S,
        "latched": False,
        "max_shelve_s": 28800.0,
        "suppressed": False,
        "out_of_service": False,
        "shelved_by": "",
        "shelve_reason": "",
        "removed_by": "",
        "remove_reason": "",
        **extra,
    }


OVERLOAD = alarm("crane_overload", offset_s=10, max_shelve_s=3600.0)
WIND = alarm("wind_high", "active_acked", "critical", 20, asset="crane-02")
HOOK = alarm("hook_low", "active_unacked", "low", 30)
LMI = alarm("lmi_warning", "rtn_unacked", "medium", 40)
BRAKE = alarm("brake_fault", "latched", "critical", 5, latched=True)
QUIET = alarm("temp_ok", "normal", "low", 50)
SHELVED = alarm(
    "door_open", "shelved", "medium", 60, acked=True,
    shelved_until_ns=time.time_ns() + 600 * S, shelved_by="sup1", shelve_reason="sensor cleaning",
)  # fmt: skip
SUPPRESSED = alarm("gps_lost", "suppressed_by_design", "low", 70, acked=True, suppressed=True)
OUT = alarm(
    "slew_fault", "out_of_service", "high", 80, acked=True, out_of_service=True,
    removed_by="sup1", remove_reason="encoder replaced",
)  # fmt: skip
HOSTILE = alarm("crane_overload", "active_unacked", "critical", 1, site="port", asset="crane-07",
                message=f"overload {SCRIPT}")  # fmt: skip
ALARMS = [OVERLOAD, WIND, HOOK, LMI, BRAKE, QUIET, SHELVED, SUPPRESSED, OUT, HOSTILE]
SUMMARY_ORDER = [HOSTILE, OVERLOAD, HOOK, WIND, BRAKE, LMI]


def ids(alarms: list[dict[str, Any]]) -> list[str]:
    return [a["alarm_id"] for a in alarms]


def accepted(command: AlarmCommand) -> tuple[int, AlarmCommandResult]:
    return 200, AlarmCommandResult(
        request_id=command.request_id, alarm_id=command.alarm_id, action=command.action,
        ok=True, state="active_acked", ts_ns=123,
    )  # fmt: skip


def refusing(reason: str) -> Callable[[AlarmCommand], tuple[int, AlarmCommandResult]]:
    def answer(command: AlarmCommand) -> tuple[int, AlarmCommandResult]:
        return 409, AlarmCommandResult(
            request_id=command.request_id, alarm_id=command.alarm_id, action=command.action,
            ok=False, reason=reason, ts_ns=123,
        )  # fmt: skip

    return answer


JOURNAL_ROWS = [
    {"ts_ns": BASE + 20 * S, "site": "yard", "asset": "crane-01", "device": "lmi",
     "rule": "crane_overload", "event": "journal", "priority": "high", "state": "active_acked",
     "reason": "acknowledge", "who": "op1", "comment": '=HYPERLINK("http://evil.example")',
     "message": "+cmd|' /C calc'!A0", "value": -3.5, "limit": 15.3, "notice_key": "k2",
     "duration_s": None},
    {"ts_ns": BASE + 10 * S, "site": "yard", "asset": "crane-01", "device": "lmi",
     "rule": "crane_overload", "event": "announce", "priority": "high",
     "state": "active_unacked", "reason": "new", "who": None, "comment": None,
     "message": f"hook load {SCRIPT}", "value": 16.5, "limit": None, "notice_key": "k1",
     "duration_s": None},
]  # fmt: skip


class Console(ServedApi):
    """An AlarmApi with users and the console, serving on its own loop in a thread."""

    def __init__(self, tmp_path: Path, answer: Callable[..., Any] = accepted, **options: Any):
        backend = {
            "journal": self._journal,
            "latest": self._latest,
            "kpis": lambda: dict(self.kpi_report),
        }
        for key in ("journal", "latest", "kpis"):
            if key in options:
                backend[key] = options.pop(key)
        self.settings = HttpApiSettings(**{"enabled": True, "port": 0, **options})
        self.answer = answer
        self.alarms = [dict(a) for a in ALARMS]
        self.commands: list[AlarmCommand] = []
        self.journal_calls: list[dict[str, Any]] = []
        self.journal_rows = [dict(r) for r in JOURNAL_ROWS]
        self.latest_values: Any = {"lmi": {"ts_ns": BASE, "values": {"hook_load": 12.5}}}
        self.kpi_report = dict(KPI_REPORT)
        self.changes = Changes()
        self.users = UserStore(tmp_path / "users.yaml", hasher=FAST)
        for name, role in USERS.items():
            self.users.add(name, role, PASSWORD)
        api = AlarmApi(
            self.settings, list_alarms=lambda: self.alarms, command=self._command,
            users=self.users, changes=self.changes, **backend,
        )  # fmt: skip
        super().__init__(api)

    async def _command(self, command: AlarmCommand) -> tuple[int, AlarmCommandResult]:
        self.commands.append(command)
        return self.answer(command)

    async def _journal(self, **query: Any) -> list[dict[str, Any]]:
        self.journal_calls.append(query)
        return self.journal_rows

    async def _latest(self, site: str, asset: str) -> dict[str, Any]:
        if isinstance(self.latest_values, Exception):
            raise self.latest_values
        return self.latest_values

    def bump(self) -> None:
        self.call_soon(self.changes.bump)

    def browser(self) -> Browser:
        return Browser(self.port)


KPI_REPORT = {
    "alarms_per_window": 3, "in_flood": False, "flood_s_total": 36.0, "active": 4,
    "unacked": 4, "standing": 2, "shelved": 1, "suppressed": 1, "out_of_service": 1,
    "chattering": 1, "top": [[OVERLOAD["alarm_id"], 2], [HOOK["alarm_id"], 1]],
    "chattering_ids": [OVERLOAD["alarm_id"]], "counting_s": 7200.0, "window_s": 600.0,
    "flood_per_window": 10, "standing_after_s": 86400.0,
}  # fmt: skip


@dataclass
class Answer:
    status: int
    body: str
    headers: http.client.HTTPMessage

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


class Browser:
    """http.client with a cookie jar: just enough of a browser for the console."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []

    def request(
        self,
        method: str,
        path: str,
        fields: dict[str, Any] | list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        body = None
        if fields is not None:
            body = urlencode(fields, doseq=True).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            answer = Answer(response.status, response.read().decode(), response.headers)
        finally:
            conn.close()
        self._keep(response.headers.get_all("Set-Cookie") or [])
        return answer

    def _keep(self, lines: list[str]) -> None:
        for line in lines:
            self.set_cookies.append(line)
            for name, morsel in SimpleCookie(line).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, fields: Any, **kwargs: Any) -> Answer:
        return self.request("POST", path, fields, **kwargs)

    def follow(self, answer: Answer) -> Answer:
        assert answer.status == 303, (answer.status, answer.body[:300])
        return self.get(answer.location)

    def login(self, name: str, next_page: str = "/console") -> Answer:
        answer = self.post("/login", {"name": name, "password": PASSWORD, "next": next_page})
        assert answer.status == 303, answer.body[:300]
        return answer

    def csrf(self, page: str = "/console") -> str:
        return csrf_of(self.get(page).body)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found[1]


def logged_in(served: Console, name: str) -> Browser:
    browser = served.browser()
    browser.login(name)
    return browser


@pytest.fixture
def served(tmp_path):
    with Console(tmp_path, grafana_url="http://grafana.example:3000/d/derrick-crane?orgId=1") as c:
        yield c


def tbody_of(html: str, tbody: str = "summary-rows") -> str:
    return html.split(f'id="{tbody}"', 1)[1].split("</tbody>", 1)[0]


def row_ids(html: str, tbody: str = "summary-rows") -> list[str]:
    return re.findall(r'<tr data-alarm-id="([^"]+)"', tbody_of(html, tbody))


def alarm_path(alarm_id: str) -> str:
    """An alarm's page, as the summary links it (its colons kept)."""
    return f"/console/alarm/{alarm_id}"


def form_of(html: str, form_id: str) -> str:
    """The form with this id, up to its end."""
    return html.split(f'id="{form_id}"', 1)[1].split("</form>", 1)[0]


ROW_ACK = ('<button type="submit" class="ack-button" form="row-ack-form" name="alarm_id" '
           'value="([^"]+)">Acknowledge</button>')  # fmt: skip
PAGES = [
    "/console", "/console/shelved", "/console/suppressed", "/console/out-of-service",
    "/console/journal", "/console/kpis", "/console/asset/yard/crane-01",
    alarm_path(OVERLOAD["alarm_id"]),
]  # fmt: skip


# --- logins, cookies, redirects -------------------------------------------------------


@pytest.mark.parametrize("page", [*PAGES, "/console/journal?site=a&asset=b"])
def test_pages_without_a_login_go_to_the_login_and_come_back(served, page):
    browser = served.browser()
    answer = browser.get(page)
    assert answer.status == 303
    target = urlsplit(answer.location)
    assert target.path == "/login"
    assert parse_qs(target.query)["next"] == [page]
    form = browser.get(answer.location)
    assert form.status == 200
    assert 'id="login-form"' in form.body
    back = browser.login("viewer1", next_page=page)
    assert back.location == page
    assert browser.get(page).status == 200


def test_login_cookie_flags(served):
    browser = served.browser()
    browser.login("op1")
    [line] = browser.set_cookies
    assert line.startswith("derrick_session=")
    flags = {part.strip().lower() for part in line.split(";")}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags


def test_secure_cookies_always(tmp_path):
    with Console(tmp_path, secure_cookies="always") as served:
        browser = served.browser()
        browser.login("op1")
        [line] = browser.set_cookies
        assert line.startswith("__Host-derrick_session=")
        flags = {part.strip().lower() for part in line.split(";")}
        assert {"httponly", "samesite=strict", "path=/", "secure"} <= flags
        assert not any(flag.startswith("domain") for flag in flags)
        assert browser.get("/console").status == 200


@pytest.mark.parametrize(
    "target", ["//evil.example", "https://evil.example/", "/\\evil.example", "evil"]
)
def test_no_open_redirect_after_an_action(served, target):
    browser = logged_in(served, "op1")
    answer = browser.post(
        f"/console/alarms/{OVERLOAD['alarm_id']}/acknowledge",
        {"csrf": browser.csrf(), "back": target, "comment": ""},
    )
    assert answer.status == 303
    assert urlsplit(answer.location).path == "/console"
    assert not urlsplit(answer.location).netloc


def test_no_open_redirect_after_login(served):
    answer = served.browser().login("op1", next_page="//evil.example")
    assert answer.location == "/console"


def test_logout_ends_the_session(served):
    browser = logged_in(served, "op1")
    page = browser.get("/console")
    assert 'id="logout-form"' in page.body
    answer = browser.post("/logout", {"csrf": csrf_of(page.body)})
    assert (answer.status, answer.location) == (303, "/login")
    assert browser.get("/console").status == 303


def test_api_tokens_may_read_pages(served):
    token = served.users.new_token("viewer1", "wallboard")
    browser = served.browser()
    page = browser.get("/console", headers={"Authorization": f"Bearer {token}"})
    assert page.status == 200
    assert 'id="user-name">viewer1<' in page.body
    assert 'id="logout-form"' not in page.body


# --- pages by role ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(USERS))
def test_every_page_renders_for_every_role(served, name):
    browser = logged_in(served, name)
    for page in PAGES:
        answer = browser.get(page)
        assert answer.status == 200, (page, answer.body[:500])
        assert answer.headers["Content-Type"].startswith("text/html")
        assert f'id="user-name">{name}<' in answer.body
        assert f'id="user-role">{USERS[name].value}<' in answer.body
        assert 'action="/logout"' in answer.body
        assert csrf_of(answer.body)
        for href in ("/console/shelved", "/console/journal", "/console/kpis"):
            assert f'href="{href}"' in answer.body


def test_pages_carry_security_headers_and_no_inline_code(served):
    browser = logged_in(served, "sup1")
    for page in [*PAGES, "/login"]:
        answer = browser.get(page)
        headers = answer.headers
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, page
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        if page != "/login":
            assert headers["Cache-Control"] == "no-store"
        html = answer.body
        assert "<style" not in html
        assert not re.search(r"\sstyle=", html)
        assert not re.search(r"\son[a-z]+=", html)
        for tag in re.findall(r"<script[^>]*>", html):
            assert re.fullmatch(r'<script src="/static/[a-z]+\.js" defer>', tag), tag
        external = set(re.findall(r'(?:src|href)="(https?:[^"]*)"', html))
        assert external <= {
            "http://grafana.example:3000/d/derrick-crane?orgId=1&amp;var-site=yard&amp;"
            "var-asset=crane-01"
        }


def test_static_files(served):
    browser = served.browser()
    script = browser.get("/static/console.js")
    assert script.status == 200
    assert "javascript" in script.headers["Content-Type"]
    assert "EventSource" in script.body
    style = browser.get("/static/console.css")
    assert style.status == 200
    assert "text/css" in style.headers["Content-Type"]


# --- the summary --------------------------------------------------------------------------


def test_summary_order_banner_and_priority_marks(served):
    page = logged_in(served, "viewer1").get("/console").body
    assert row_ids(page) == ids(SUMMARY_ORDER)
    banner = page.split('id="banner"', 1)[1].split("</section>", 1)[0]
    counts = dict(re.findall(r'data-count="(\w+)">(\d+)<', banner))
    assert counts == {"critical": "3", "high": "1", "medium": "1", "low": "1", "unacked": "4",
                      "total": "6"}  # fmt: skip
    for mark in ("◆ CRITICAL", "▲ HIGH", "■ MEDIUM", "● LOW"):
        assert mark in banner
    row = re.search(r'<tr data-alarm-id="crane_overload:yard[^>]*>', page)[0]
    assert "priority-high" in row
    assert 'data-unacked="true"' in row
    assert 'href="/console/asset/yard/crane-01"' in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("site=port", [HOSTILE]),
        ("priority=critical", [HOSTILE, WIND, BRAKE]),
        ("asset=crane-01", [OVERLOAD, HOOK, BRAKE, LMI]),
        ("site=yard&priority=low", [HOOK]),
        ("site=nowhere", []),
    ],
)
def test_summary_filters(served, query, expected):
    page = logged_in(served, "viewer1").get(f"/console?{query}").body
    assert row_ids(page) == ids(expected)
    assert f'data-events="/console/events?{query.replace("&", "&amp;")}"' in page


def test_a_message_with_markup_is_text(served):
    page = logged_in(served, "op1").get("/console").body
    assert SCRIPT not in page
    assert "overload &lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_viewer_sees_no_actions_and_may_not_act(served):
    browser = logged_in(served, "viewer1")
    for page in PAGES:
        html = browser.get(page).body
        assert "ack-button" not in html
        assert 'action="/console/alarms' not in html
        assert 'action="/console/acknowledge' not in html
        assert 'id="ack-selected"' not in html
        assert 'id="row-ack-form"' not in html
        assert "select-alarm" not in html
        assert "actions-link" not in html
        assert 'method="post"' not in html.split('id="main"', 1)[1], page
    alarm_page = browser.get(alarm_path(OVERLOAD["alarm_id"])).body
    assert 'id="alarm-details"' in alarm_page
    assert "may look at this alarm, not act on it" in alarm_page
    csrf = browser.csrf()
    for action in ("acknowledge", "shelve"):
        answer = browser.post(
            f"/console/alarms/{OVERLOAD['alarm_id']}/{action}",
            {"csrf": csrf, "reason": "x", "duration_s": "600"},
        )
        assert answer.status == 403
        assert "viewer" in answer.body
    answer = browser.post("/console/acknowledge", {"csrf": csrf, "alarm_id": OVERLOAD["alarm_id"]})
    assert answer.status == 403
    assert served.commands == []


def test_operator_sees_acknowledge_and_reset_but_not_shelve(served):
    browser = logged_in(served, "op1")
    page = browser.get("/console").body
    assert 'id="ack-selected"' in page
    rows = tbody_of(page)
    assert "<form" not in rows and "action=" not in rows and 'name="csrf"' not in rows
    unacked = [a for a in SUMMARY_ORDER if not a["acked"]]
    assert re.findall(ROW_ACK, rows) == ids(unacked)
    assert re.findall(r'class="select-alarm"', rows) == ['class="select-alarm"'] * len(unacked)
    # Anything but acknowledging is on the alarm's page: for an operator, only the latched
    # alarm's reset.
    assert re.findall(r'<a class="actions-link" href="([^"]+)">Actions…</a>', rows) == [
        alarm_path(BRAKE["alarm_id"])
    ]
    for absent in ("shelve-form", "shelve-button", "remove-form", "remove-button"):
        assert absent not in page, absent

    overload = browser.get(alarm_path(OVERLOAD["alarm_id"])).body
    ack = form_of(overload, "ack-form")
    assert (
        f'action="/console/alarms/{quote(OVERLOAD["alarm_id"], safe="")}/acknowledge"'
        in (overload.split('id="ack-form"', 1)[0].rsplit("<form", 1)[1])
    )
    assert 'name="comment"' in ack
    assert f'name="back" value="{alarm_path(OVERLOAD["alarm_id"])}"' in ack
    for absent in ("reset-form", "shelve-form", "unshelve-form", "remove-form", "return-form"):
        assert f'id="{absent}"' not in overload, absent
    brake = browser.get(alarm_path(BRAKE["alarm_id"])).body
    assert 'id="reset-form"' in brake and 'id="ack-form"' not in brake
    assert 'id="shelve-form"' not in brake


def test_the_summary_has_one_acknowledge_form_for_all_rows(served):
    """Each row's Acknowledge button submits the page's #row-ack-form (csrf, back and a
    comment) with its alarm's id; Enter in that comment acknowledges nothing."""
    browser = logged_in(served, "op1")
    page = browser.get("/console?site=yard").body
    form = form_of(page, "row-ack-form")
    assert 'action="/console/acknowledge"' in page.split('id="row-ack-form"', 1)[0][-80:]
    assert f'name="csrf" value="{csrf_of(page)}"' in form
    assert 'name="back" value="/console?site=yard"' in form
    assert re.search(r"<button [^>]*disabled", form)  # the first submit button: Enter
    assert 'form="row-ack-form"' in page.split('id="summary-rows"', 1)[0]  # its comment
    assert len(re.findall("<form", page)) == 4  # logout, filters, row-ack-form, ack-form
    [first, *_] = re.findall(ROW_ACK, page)
    answer = browser.post(
        "/console/acknowledge",
        {"csrf": csrf_of(page), "back": "/console?site=yard", "comment": "seen",
         "alarm_id": first},
    )  # fmt: skip
    assert urlsplit(answer.location).path == "/console"
    assert [(c.alarm_id, c.action, c.who, c.comment) for c in served.commands] == [
        (first, "acknowledge", "op1", "seen")
    ]
    assert "Acknowledged 1 of 1." in browser.follow(answer).body


def test_summary_rows_are_the_same_for_every_user_of_a_role(served):
    """Rows hold no token and no page to come back to: they are cached per role."""
    served.users.add("op2", Role.OPERATOR, PASSWORD)
    first, second = (logged_in(served, name).get("/console").body for name in ("op1", "op2"))
    assert csrf_of(first) != csrf_of(second)
    assert tbody_of(first) == tbody_of(second)
    assert csrf_of(first) not in tbody_of(first)


def test_a_supervisors_summary_of_2000_alarms_is_light(served):
    """Crews read the summary on phones: 2,000 alarms (as bench/console.py's, half of them
    unacknowledged, each row with its checkbox, Acknowledge button and Actions link for a
    supervisor) stay below 1.5 MB, where forms in every row made 5 MB."""
    served.alarms = [
        alarm(f"rule_{i // 200}", "active_unacked" if i % 2 == 0 else "active_acked",
              console.PRIORITIES[i % 4], -i, site=f"site-{i % 5}", asset=f"crane-{i % 200:03d}")
        for i in range(2000)
    ]  # fmt: skip
    page = logged_in(served, "sup1").get("/console")
    assert page.status == 200
    assert len(row_ids(page.body)) == 2000
    size = len(page.body.encode())
    assert size < 1_500_000, f"the summary of 2,000 alarms is {size:,} bytes"
    assert len(re.findall("<form", page.body)) == 4
    assert page.body.count('class="actions-link"') == 2000


def test_operator_acknowledges_as_themselves(served):
    browser = logged_in(served, "op1")
    answer = browser.post(
        f"/console/alarms/{OVERLOAD['alarm_id']}/acknowledge",
        {"csrf": browser.csrf(), "comment": "crane stopped", "who": "mallory",
         "back": "/console?site=yard"},
    )  # fmt: skip
    assert answer.status == 303
    assert urlsplit(answer.location).path == "/console"
    assert parse_qs(urlsplit(answer.location).query)["site"] == ["yard"]
    [command] = served.commands
    assert (command.alarm_id, command.action, command.who, command.comment) == (
        OVERLOAD["alarm_id"], "acknowledge", "op1", "crane stopped",
    )  # fmt: skip
    shown = browser.follow(answer).body
    assert re.search(r'id="notice" class="notice notice-ok"[^>]*>Acknowledged: crane_overload',
                     shown)  # fmt: skip


@pytest.mark.parametrize("token", [None, "", "wrong"])
def test_a_post_without_the_csrf_token_is_refused(served, token):
    browser = logged_in(served, "sup1")
    fields = {"comment": "x"} if token is None else {"comment": "x", "csrf": token}
    answer = browser.post(f"/console/alarms/{OVERLOAD['alarm_id']}/acknowledge", fields)
    assert answer.status == 403
    assert "CSRF" in answer.body
    answer = browser.post("/console/acknowledge", {**fields, "alarm_id": OVERLOAD["alarm_id"]})
    assert answer.status == 403
    assert browser.post("/logout", fields).status == 403
    assert served.commands == []


def test_a_long_notice_is_cut(tmp_path):
    with Console(tmp_path, answer=refusing("no " * 2000)) as served:
        browser = logged_in(served, "op1")
        fields = [("csrf", browser.csrf()), *[("alarm_id", i) for i in ids(SUMMARY_ORDER)]]
        answer = browser.post("/console/acknowledge", fields)
        assert len(answer.location) < 4000
        notice = re.search(r'<p id="notice"[^>]*>([^<]*)</p>', browser.follow(answer).body)
        assert notice[1].startswith("Acknowledged 0 of 6.")
        assert notice[1].endswith("\u2026")


def test_a_forged_notice_is_not_shown(served):
    browser = logged_in(served, "op1")
    page = browser.get("/console?notice=Call+555-0100+now&kind=ok&sig=0123").body
    assert 'id="notice"' not in page
    assert "555-0100" not in page


def test_multi_select_acknowledge_sends_one_command_each(served):
    browser = logged_in(served, "op1")
    selected = [OVERLOAD["alarm_id"], HOOK["alarm_id"], HOSTILE["alarm_id"]]
    fields = [("csrf", browser.csrf()), ("comment", "all seen"), ("back", "/console"),
              *[("alarm_id", i) for i in [*selected, OVERLOAD["alarm_id"]]]]  # fmt: skip
    answer = browser.post("/console/acknowledge", fields)
    assert answer.status == 303
    assert [(c.alarm_id, c.action, c.who, c.comment) for c in served.commands] == [
        (i, "acknowledge", "op1", "all seen") for i in selected
    ]
    assert len({c.request_id for c in served.commands}) == 3
    assert "Acknowledged 3 of 3." in browser.follow(answer).body
    nothing = browser.post("/console/acknowledge", {"csrf": browser.csrf()})
    assert "Select at least one alarm" in browser.follow(nothing).body


def test_multi_select_reports_the_refused(tmp_path):
    with Console(tmp_path, answer=refusing("alarm is active_acked; nothing to acknowledge")) as c:
        browser = logged_in(c, "op1")
        fields = [("csrf", browser.csrf()), ("alarm_id", WIND["alarm_id"]),
                  ("alarm_id", "bad id!")]  # fmt: skip
        shown = browser.follow(browser.post("/console/acknowledge", fields)).body
        assert "Acknowledged 0 of 2." in shown
        assert "nothing to acknowledge" in shown
        assert "bad alarm id" in shown
        assert len(c.commands) == 1


def test_supervisor_shelves_with_a_reason_and_a_duration(served):
    browser = logged_in(served, "sup1")
    summary = browser.get("/console").body
    assert "shelve" not in tbody_of(summary) and "<form" not in tbody_of(summary)
    links = re.findall(r'<a class="actions-link" href="([^"]+)">', summary)
    assert links == [alarm_path(i) for i in ids(SUMMARY_ORDER)]
    here = alarm_path(OVERLOAD["alarm_id"])
    page = browser.get(here).body
    target = f'action="/console/alarms/{quote(OVERLOAD["alarm_id"], safe="")}/shelve"'
    assert target in page.split('id="shelve-form"', 1)[0].rsplit("<form", 1)[1]
    form = form_of(page, "shelve-form")
    assert re.findall(r'<option value="(\d+)">', form) == ["600", "1800", "3600"]
    assert re.search(r'<input name="reason" [^>]*required', form)
    assert 'name="duration_s"' in form and 'id="shelve-button"' in form
    remove = form_of(page, "remove-form")
    assert re.search(r'<input name="reason" [^>]*required', remove)
    assert 'id="remove-button"' in remove
    assert 'id="ack-form"' in page  # OVERLOAD is unacknowledged
    assert 'id="return-form"' not in page and 'id="unshelve-form"' not in page
    answer = browser.post(
        f"/console/alarms/{OVERLOAD['alarm_id']}/shelve",
        {"csrf": csrf_of(page), "reason": "sensor cleaning", "duration_s": "600", "back": here},
    )
    assert answer.status == 303
    assert urlsplit(answer.location).path == here
    [command] = served.commands
    assert (command.action, command.who, command.comment, command.duration_s) == (
        "shelve", "sup1", "sensor cleaning", 600.0,
    )  # fmt: skip
    shown = browser.follow(answer).body
    assert re.search(r'id="notice" class="notice notice-ok"[^>]*>Shelved: crane_overload', shown)


def test_a_refused_shelve_shows_the_lifecycles_reason(tmp_path):
    reason = "duration_s must be more than 0 and at most 3600 s"
    with Console(tmp_path, answer=refusing(reason)) as served:
        browser = logged_in(served, "sup1")
        here = alarm_path(OVERLOAD["alarm_id"])
        answer = browser.post(
            f"/console/alarms/{OVERLOAD['alarm_id']}/shelve",
            {"csrf": browser.csrf(here), "reason": "<b>long</b> job", "duration_s": "7200",
             "back": here},
        )  # fmt: skip
        assert answer.status == 303
        assert urlsplit(answer.location).path == here
        [command] = served.commands
        assert command.duration_s == 7200.0
        shown = browser.follow(answer).body
        notice = re.search(r'<p id="notice"[^>]*>([^<]*)</p>', shown)
        assert notice, shown[:2000]
        assert "notice-refused" in shown
        assert reason in notice[1]
        assert "Shelve refused for crane_overload:yard:crane-01:lmi" in notice[1]


@pytest.mark.parametrize(
    ("action", "fields", "said"),
    [
        ("explode", {}, "invalid command"),
        ("shelve", {"reason": "x", "duration_s": "soon"}, "duration must be a number"),
        ("acknowledge", {"comment": "x" * 2001}, "invalid command"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(served, action, fields, said):
    browser = logged_in(served, "sup1")
    answer = browser.post(
        f"/console/alarms/{OVERLOAD['alarm_id']}/{action}", {"csrf": browser.csrf(), **fields}
    )
    assert answer.status == 303
    assert said in browser.follow(answer).body
    assert served.commands == []


# --- the live stream ----------------------------------------------------------------------


class Stream:
    """A raw reader of /console/events."""

    def __init__(self, browser: Browser, query: str = "") -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", browser.port, timeout=10)
        cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
        self.conn.request("GET", f"/console/events{query}", headers={"Cookie": cookie})
        self.response = self.conn.getresponse()

    def event(self) -> tuple[str, dict[str, Any]] | None:
        """The next event (name, data), None at the end of the stream."""
        name, data = "", ""
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                name = text[7:]
            elif text.startswith("data: "):
                data += text[6:]
            elif not text and name:
                return name, json.loads(data)

    def close(self) -> None:
        self.conn.close()


def test_the_stream_sends_the_rows_escaped_then_only_what_changed(served):
    stream = Stream(logged_in(served, "op1"))
    try:
        assert stream.response.status == 200
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        assert stream.response.headers["Cache-Control"] == "no-store"
        name, first = stream.event()
        assert name == "summary"
        assert first["order"] == ids(SUMMARY_ORDER) == list(first["rows"])
        everything = "".join(first["rows"].values())
        assert row_ids(f'<tbody id="summary-rows">{everything}</tbody>') == ids(SUMMARY_ORDER)
        assert SCRIPT not in everything
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in first["rows"][HOSTILE["alarm_id"]]
        assert 'data-count="critical">3<' in first["banner"]
        new = alarm("overload_cutout", "active_unacked", "critical", 90)
        served.alarms = [*served.alarms, new]
        started = time.monotonic()
        served.bump()
        name, second = stream.event()
        took = time.monotonic() - started
        assert name == "summary"
        assert took < 1.0
        assert second["version"] == 1
        assert second["changed_ns"] == served.changes.changed_ns > 0
        assert list(second["rows"]) == [new["alarm_id"]]  # only the new row travels
        assert second["order"][0] == new["alarm_id"]
        assert 'data-count="critical">4<' in second["banner"]
        changed = dict(served.alarms[0], value=77.5)
        served.alarms = [changed, *served.alarms[1:]]
        served.bump()
        _name, third = stream.event()
        assert list(third["rows"]) == [changed["alarm_id"]]
        assert "77.5" in third["rows"][changed["alarm_id"]]
        assert "order" not in third  # the same rows in the same order
    finally:
        stream.close()


def test_the_stream_notices_changes_without_a_bump(served):
    stream = Stream(logged_in(served, "viewer1"), "?site=port")
    try:
        _name, first = stream.event()
        assert first["order"] == [HOSTILE["alarm_id"]]
        assert "ack-button" not in first["rows"][HOSTILE["alarm_id"]]
        served.alarms = [a for a in served.alarms if a["alarm_id"] != HOSTILE["alarm_id"]]
        started = time.monotonic()
        _name, second = stream.event()
        assert time.monotonic() - started < 3.5
        assert second["version"] == 0
        assert (second["order"], second["rows"]) == ([], {})
        assert "No alarms to show for these filters" in second["empty"]
    finally:
        stream.close()


def test_the_stream_ends_when_the_api_closes(tmp_path):
    with Console(tmp_path) as served:
        stream = Stream(logged_in(served, "op1"))
        try:
            assert stream.event()[0] == "summary"
            started = time.monotonic()
            served.close()
            assert time.monotonic() - started < 5
            assert stream.event() is None
        finally:
            stream.close()


def test_the_stream_needs_a_login(served):
    answer = served.browser().get("/console/events")
    assert answer.status == 401


# --- one asset ---------------------------------------------------------------------------


def test_asset_page_alarms_values_and_grafana(served):
    page = logged_in(served, "sup1").get("/console/asset/yard/crane-01").body
    shown = row_ids(page, "asset-rows")
    mine = [a for a in ALARMS if (a["site"], a["asset"]) == ("yard", "crane-01")]
    assert sorted(shown) == sorted(ids(mine))
    assert QUIET["alarm_id"] in shown and SHELVED["alarm_id"] in shown
    assert '<th scope="row">hook_load</th><td class="num">12.5</td>' in page
    assert (
        'id="grafana-link" class="button secondary" href="http://grafana.example:3000/d/'
        'derrick-crane?orgId=1&amp;var-site=yard&amp;var-asset=crane-01"' in page
    )
    assert "return-button" in page  # slew_fault is out of service
    assert "unshelve-button" in page  # door_open is shelved
    assert f'<a class="details-link" href="{alarm_path(OVERLOAD["alarm_id"])}">' in page


def test_asset_page_without_values_still_shows_the_alarms(served):
    served.latest_values = StoreUnavailable("http://influx:8086: connection refused")
    page = logged_in(served, "op1").get("/console/asset/yard/crane-01").body
    assert "values not available: http://influx:8086: connection refused" in page
    assert OVERLOAD["alarm_id"] in row_ids(page, "asset-rows")


def test_asset_page_without_a_reader_or_grafana(tmp_path):
    with Console(tmp_path, latest=None) as served:
        page = logged_in(served, "op1").get("/console/asset/yard/crane-01")
        assert page.status == 200
        assert 'id="values-unavailable"' in page.body
        assert "grafana-link" not in page.body
        assert logged_in(served, "op1").get("/console/asset/yard/a%20b").status == 404


# --- one alarm -------------------------------------------------------------------------------


def test_alarm_page_details_journal_and_links(served):
    browser = logged_in(served, "sup1")
    page = browser.get(alarm_path(SHELVED["alarm_id"]))
    assert page.status == 200
    details = page.body.split('id="alarm-details"', 1)[1].split("</dl>", 1)[0]
    assert f'data-alarm-id="{SHELVED["alarm_id"]}"' in page.body.split("<dl", 1)[1]
    for shown in (SHELVED["alarm_id"], "door_open message", "Shelved", "16.5 / 15.3",
                  console.utc(SHELVED["ts_ns"]), "8 h"):  # fmt: skip
        assert shown in details, shown
    assert '<dt>Shelved by</dt><dd class="who">sup1</dd>' in details
    assert '<dt>Shelve reason</dt><dd class="why">sensor cleaning</dd>' in details
    assert console.utc(SHELVED["shelved_until_ns"]) in details
    assert 'href="/console/asset/yard/crane-01"' in page.body
    [call] = served.journal_calls
    now = time.time_ns()
    assert abs(call.pop("end_ns") - now) < 5 * S
    assert now - call.pop("start_ns") == pytest.approx(7 * 86400 * S, abs=5 * S)
    assert call == {"limit": 50, "site": "yard", "asset": "crane-01", "rule": "door_open"}
    table = page.body.split('id="alarm-journal-table"', 1)[1].split("</table>", 1)[0]
    assert '<td data-label="User" class="who">op1</td>' in table
    assert "hook load &lt;script&gt;" in table and SCRIPT not in page.body
    journal_link = re.search(r'id="alarm-journal-link" href="([^"]+)"', page.body)[1]
    query = parse_qs(urlsplit(journal_link.replace("&amp;", "&")).query)
    assert (query["site"], query["asset"], query["rule"]) == (["yard"], ["crane-01"],
                                                               ["door_open"])  # fmt: skip
    assert 'id="unshelve-form"' in page.body and 'id="ack-form"' not in page.body

    out = browser.get(alarm_path(OUT["alarm_id"])).body
    assert '<dt>Removed from service by</dt><dd class="who">sup1</dd>' in out
    assert '<dt>Removal reason</dt><dd class="why">encoder replaced</dd>' in out
    assert 'id="return-form"' in out
    assert 'id="shelve-form"' not in out and 'id="remove-form"' not in out
    suppressed = browser.get(alarm_path(SUPPRESSED["alarm_id"])).body
    assert "the rule&#39;s suppression condition" in suppressed


def test_alarm_page_escapes_and_returns_here(served):
    browser = logged_in(served, "op1")
    here = alarm_path(HOSTILE["alarm_id"])
    page = browser.get(here).body
    assert SCRIPT not in page
    assert "overload &lt;script&gt;alert(1)&lt;/script&gt;" in page
    answer = browser.post(
        f"/console/alarms/{quote(HOSTILE['alarm_id'], safe='')}/acknowledge",
        {"csrf": csrf_of(page), "comment": "seen", "back": here},
    )
    assert answer.location.startswith(here + "?")
    assert "Acknowledged: crane_overload:port:crane-07:lmi" in browser.follow(answer).body
    # the page by its fully encoded address too
    assert browser.get(f"/console/alarm/{quote(HOSTILE['alarm_id'], safe='')}").status == 200


@pytest.mark.parametrize("alarm_id", ["nope:yard:crane-01:lmi", "bad id!", "x" * 400])
def test_an_unknown_alarm_is_not_found(served, alarm_id):
    page = logged_in(served, "viewer1").get(f"/console/alarm/{quote(alarm_id, safe='')}")
    assert page.status == 404
    assert 'id="error-message"' in page.body
    assert served.journal_calls == []


def test_alarm_page_without_the_journal(tmp_path):
    async def broken(**_query: Any) -> list[dict[str, Any]]:
        raise StoreUnavailable("http://influx:8086: HTTP 503: down")

    with Console(tmp_path, journal=broken) as served:
        page = logged_in(served, "op1").get(alarm_path(OVERLOAD["alarm_id"]))
        assert page.status == 200
        assert re.search(r'id="alarm-journal-unavailable">the journal is not available: '
                         r"http://influx:8086: HTTP 503: down<", page.body)  # fmt: skip
        assert 'id="ack-form"' in page.body
    (tmp_path / "none").mkdir()
    with Console(tmp_path / "none", journal=None) as served:
        page = logged_in(served, "op1").get(alarm_path(OVERLOAD["alarm_id"]))
        assert page.status == 200
        assert 'id="alarm-journal-unavailable"' in page.body


def test_alarm_page_needs_a_login(served):
    answer = served.browser().get(alarm_path(OVERLOAD["alarm_id"]))
    assert answer.status == 303
    assert parse_qs(urlsplit(answer.location).query)["next"] == [alarm_path(OVERLOAD["alarm_id"])]


# --- hidden lists ---------------------------------------------------------------------------


def test_shelved_list_who_why_until_and_unshelve(served):
    browser = logged_in(served, "sup1")
    page = browser.get("/console/shelved").body
    assert row_ids(page, "hidden-rows") == [SHELVED["alarm_id"]]
    assert '<td data-label="By" class="who">sup1</td>' in page
    assert '<td data-label="Why" class="why">sensor cleaning</td>' in page
    assert console.utc(SHELVED["shelved_until_ns"]) in page
    assert "unshelve-button" in page
    answer = browser.post(
        f"/console/alarms/{SHELVED['alarm_id']}/unshelve",
        {"csrf": csrf_of(page), "comment": "done", "back": "/console/shelved"},
    )
    assert urlsplit(answer.location).path == "/console/shelved"
    [command] = served.commands
    assert (command.action, command.who, command.comment) == ("unshelve", "sup1", "done")
    assert "unshelve-button" not in logged_in(served, "op1").get("/console/shelved").body


def test_suppressed_and_out_of_service_lists(served):
    browser = logged_in(served, "sup1")
    page = browser.get("/console/suppressed").body
    assert row_ids(page, "hidden-rows") == [SUPPRESSED["alarm_id"]]
    assert "by design" in page
    assert 'class="act' not in page
    page = browser.get("/console/out-of-service").body
    assert row_ids(page, "hidden-rows") == [OUT["alarm_id"]]
    assert "encoder replaced" in page
    assert "return-button" in page
    browser.post(
        f"/console/alarms/{OUT['alarm_id']}/return_to_service",
        {"csrf": csrf_of(page), "comment": "fixed"},
    )
    assert [(c.action, c.who) for c in served.commands] == [("return_to_service", "sup1")]


# --- journal ---------------------------------------------------------------------------


def test_journal_page_searches_with_the_forms_filters(served):
    browser = logged_in(served, "viewer1")
    query = ("from=2026-06-01T10:00&to=2026-06-01T11:00&site=yard&asset=crane-01"
             "&rule=crane_overload&who=op1&event=journal")  # fmt: skip
    page = browser.get(f"/console/journal?{query}").body
    start = int(datetime(2026, 6, 1, 10, 0, tzinfo=UTC).timestamp()) * S
    end = int(datetime(2026, 6, 1, 11, 1, tzinfo=UTC).timestamp()) * S
    assert served.journal_calls == [
        {"start_ns": start, "end_ns": end, "limit": console.JOURNAL_LIMIT, "site": "yard",
         "asset": "crane-01", "rule": "crane_overload", "who": "op1", "event": "journal"}
    ]  # fmt: skip
    table = page.split('id="journal-table"', 1)[1]
    assert '<td data-label="User" class="who">op1</td>' in table
    assert "hook load &lt;script&gt;" in table
    assert SCRIPT not in page
    csv_href = re.search(r'id="csv-link" class="button secondary" href="([^"]+)"', page)[1]
    assert parse_qs(urlsplit(csv_href.replace("&amp;", "&")).query) == parse_qs(query)


def test_journal_defaults_to_the_last_day(served):
    logged_in(served, "viewer1").get("/console/journal")
    [call] = served.journal_calls
    now = time.time_ns()
    assert abs(call["end_ns"] - now) < 5 * S
    assert call["end_ns"] - call["start_ns"] == pytest.approx(86400 * S, abs=60 * S)
    assert set(call) == {"start_ns", "end_ns", "limit"}


def test_journal_csv(served):
    browser = logged_in(served, "viewer1")
    answer = browser.get("/console/journal.csv?site=yard")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/csv")
    assert re.fullmatch(r'attachment; filename="derrick-journal-\w+\.csv"',
                        answer.headers["Content-Disposition"])  # fmt: skip
    assert served.journal_calls[-1]["site"] == "yard"
    assert served.journal_calls[-1]["limit"] == console.CSV_LIMIT
    rows = list(csv.DictReader(io.StringIO(answer.body)))
    assert list(rows[0]) == list(console.CSV_COLUMNS)
    first = rows[0]
    assert first["time"] == "2026-05-28T20:27:00.000000Z"
    assert first["ts_ns"] == str(BASE + 20 * S)
    assert first["who"] == "op1"
    assert first["comment"] == '\'=HYPERLINK("http://evil.example")'
    assert first["message"] == "'+cmd|' /C calc'!A0"
    assert first["value"] == "-3.5"
    assert rows[1]["who"] == "" and rows[1]["limit"] == ""
    assert rows[1]["message"] == f"hook load {SCRIPT}"


def test_journal_unavailable(tmp_path):
    async def broken(**_query: Any) -> list[dict[str, Any]]:
        raise StoreUnavailable("http://influx:8086: HTTP 503: down")

    with Console(tmp_path, journal=broken) as served:
        browser = logged_in(served, "viewer1")
        page = browser.get("/console/journal")
        assert page.status == 200
        assert "the journal is not available: http://influx:8086: HTTP 503: down" in page.body
        assert 'id="journal-table"' not in page.body
        assert browser.get("/console/journal.csv").status == 503
    (tmp_path / "none").mkdir()
    with Console(tmp_path / "none", journal=None) as served:
        browser = logged_in(served, "viewer1")
        assert "the journal is not available" in browser.get("/console/journal").body
        csv_answer = browser.get("/console/journal.csv")
        assert csv_answer.status == 503


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("from=yesterday", "not a date and time"),
        ("from=2026-06-02T10:00&to=2026-06-01T10:00", "start must be before its end"),
        ("event=party", "unknown event"),
    ],
)
def test_journal_bad_searches(served, query, said):
    browser = logged_in(served, "viewer1")
    page = browser.get(f"/console/journal?{query}")
    assert page.status == 400
    assert said in page.body
    assert browser.get(f"/console/journal.csv?{query}").status == 400
    assert served.journal_calls == []


# --- KPIs ------------------------------------------------------------------------------


def test_kpi_page_targets_and_distributions(served):
    served.journal_rows = [
        {**JOURNAL_ROWS[1], "priority": p} for p in ["low"] * 7 + ["medium"] + ["critical"] * 2
    ]
    page = logged_in(served, "viewer1").get("/console/kpis").body
    table = page.split('id="kpi-table"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr class="kpi-row kpi-([\w-]+)">\s*<th scope="row" data-label="KPI">'
                      r"([^<]+)</th>", table)  # fmt: skip
    assert rows == [
        ("not-met", "Alarms per 10 minutes"),
        ("met", "Time in flood"),
        ("met", "In flood now"),
        ("near", "Standing alarms"),
        ("not-met", "Chattering alarms"),
    ]
    assert ">0.5 %<" in table
    top = page.split('id="top-table"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'class="rule">([^<]+)<', top) == [OVERLOAD["alarm_id"], HOOK["alarm_id"]]
    week = page.split('id="priority-week"', 1)[1].split("</table>", 1)[0]
    assert "70.0 %" in week and "10 in all" in week
    assert "kpi-not-met" in week  # high with critical 20 %: above 5 % + 5 points
    [call] = served.journal_calls
    assert call["event"] == "announce"
    assert call["end_ns"] - call["start_ns"] == pytest.approx(7 * 86400 * S, abs=5 * S)
    current = page.split('id="priority-current"', 1)[1].split("</table>", 1)[0]
    assert f"{len(ALARMS)} in all" in current


def test_kpi_page_without_kpis(tmp_path):
    with Console(tmp_path, kpis=None, journal=None) as served:
        page = logged_in(served, "viewer1").get("/console/kpis")
        assert page.status == 200
        assert "KPIs are not available" in page.body
        assert 'id="priority-current"' in page.body
        assert 'id="priority-week-error"' in page.body


# --- the pieces, without a server ------------------------------------------------------------


def test_order_of_the_summary():
    shuffled = list(reversed([a for a in ALARMS if console.on_summary(a)]))
    assert ids(console.ordered(shuffled)) == ids(SUMMARY_ORDER)


def test_shelve_choices_stop_at_the_alarms_maximum():
    assert [s for s, _ in console.shelve_choices(28800.0)] == list(console.SHELVE_CHOICES_S)
    assert console.shelve_choices(3600.0) == ((600, "10 min"), (1800, "30 min"), (3600, "1 h"))
    assert console.shelve_choices(2700.0)[-1] == (2700, "45 min")
    assert console.shelve_choices(300.0) == ((300, "5 min"),)
    assert console.shelve_choices(86400.0)[-1] == (86400, "24 h")


def test_csv_cells_never_start_a_formula():
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert console.cell(text) == "'" + text
    assert console.cell("plain") == "plain"
    assert console.cell(-3.5) == -3.5
    assert console.cell(None) == ""


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/console/shelved", "/console/shelved"),
        ("/console?site=yard", "/console?site=yard"),
        ("//evil.example", "/console"),
        ("/\\evil.example", "/console"),
        ("https://evil.example", "/console"),
        ("/console\r\nSet-Cookie: x=1", "/console"),
        ("", "/console"),
    ],
)
def test_local_paths_only(target, expected):
    assert console.safe_next(target) == expected


def test_grafana_link():
    assert console.grafana_link("https://g.example/d/x", "yard", "crane 1") == (
        "https://g.example/d/x?var-site=yard&var-asset=crane+1"
    )
    assert console.grafana_link("https://g.example/d/x?orgId=1#top", "a", "b") == (
        "https://g.example/d/x?orgId=1&var-site=a&var-asset=b#top"
    )
    assert console.grafana_link("javascript:alert(1)", "a", "b") is None
    assert console.grafana_link(None, "a", "b") is None
