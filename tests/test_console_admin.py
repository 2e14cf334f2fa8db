"""The console's user administration (role admin), on a real server with a real users
file (the harness of test_console)."""

from __future__ import annotations

import re

import pytest
from structlog.testing import capture_logs

from collector.users import Role
from tests.test_console import PASSWORD, Console, csrf_of, logged_in

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path):
    with Console(tmp_path) as console:
        yield console


@pytest.mark.parametrize("name", ["viewer1", "op1", "sup1"])
def test_only_admins_see_or_change_users(served, name):
    browser = logged_in(served, name)
    assert browser.get("/console/users").status == 403
    csrf = browser.csrf("/console")
    answer = browser.post("/console/users/op1/disable", {"csrf": csrf})
    assert answer.status == 403
    assert served.users.user("op1").disabled is False


def test_an_admin_adds_a_user_who_can_then_log_in(served):
    admin = logged_in(served, "adm1")
    page = admin.get("/console/users")
    assert page.status == 200
    assert {"viewer1", "op1", "sup1", "adm1"} <= set(re.findall(r'data-user="([^"]+)"', page.body))
    assert "$argon2" not in page.body
    with capture_logs() as logs:
        answer = admin.post(
            "/console/users/add",
            {"csrf": csrf_of(page.body), "name": "night.op", "role": "operator",
             "password": "night shift pass"},
        )  # fmt: skip
    assert "night.op: added" in admin.follow(answer).body
    assert served.users.user("night.op").role is Role.OPERATOR
    assert "night shift pass" not in repr(logs)
    newcomer = served.browser()
    landed = newcomer.post(
        "/login", {"name": "night.op", "password": "night shift pass", "next": "/console"}
    )
    assert landed.status == 303


def test_a_weak_password_is_refused_with_the_reason(served):
    admin = logged_in(served, "adm1")
    answer = admin.post(
        "/console/users/add",
        {"csrf": admin.csrf("/console/users"), "name": "x1", "role": "viewer", "password": "short"},
    )
    assert "at least 10 characters" in admin.follow(answer).body
    assert served.users.user("x1") is None


def test_role_change_and_disable_end_the_users_sessions(served):
    operator = logged_in(served, "op1")
    assert operator.get("/console").status == 200
    admin = logged_in(served, "adm1")
    admin.post("/console/users/op1/role", {"csrf": admin.csrf("/console/users"), "role": "viewer"})
    assert served.users.user("op1").role is Role.VIEWER
    assert operator.get("/console").status == 303  # logged out: to the login page
    operator = logged_in(served, "op1")
    admin.post("/console/users/op1/disable", {"csrf": admin.csrf("/console/users")})
    assert operator.get("/console").status == 303
    refused = served.browser().post(
        "/login", {"name": "op1", "password": PASSWORD, "next": "/console"}
    )
    assert refused.status == 401


def test_a_new_token_is_shown_once_and_never_in_a_url(served):
    admin = logged_in(served, "adm1")
    answer = admin.post(
        "/console/users/sup1/token", {"csrf": admin.csrf("/console/users"), "label": "scada"}
    )
    assert answer.status == 200  # the page itself, not a redirect
    token = re.search(r'id="new-token-value">(drk_[^<]+)<', answer.body)[1]
    assert served.users.verify_token(token).name == "sup1"
    again = admin.get("/console/users")
    assert token not in again.body
    token_id = token.split("_")[1]
    assert token_id in again.body
    revoked = admin.post(
        "/console/users/sup1/revoke", {"csrf": csrf_of(again.body), "token_id": token_id}
    )
    assert revoked.status == 303
    assert served.users.verify_token(token) is None


def test_an_admin_cannot_lock_themselves_out(served):
    admin = logged_in(served, "adm1")
    for path, fields in (
        ("/console/users/adm1/remove", {}),
        ("/console/users/adm1/disable", {}),
        ("/console/users/adm1/role", {"role": "viewer"}),
    ):
        answer = admin.post(path, {"csrf": admin.csrf("/console/users"), **fields})
        assert "yourself" in admin.follow(answer).body
    assert served.users.user("adm1").role is Role.ADMIN
    assert not served.users.user("adm1").disabled


def test_admin_changes_need_the_csrf_token(served):
    admin = logged_in(served, "adm1")
    answer = admin.post("/console/users/op1/remove", {"csrf": "wrong"})
    assert answer.status == 403
    assert served.users.user("op1") is not None


def test_only_admins_have_the_users_link(served):
    assert 'id="nav-users"' in logged_in(served, "adm1").get("/console").body
    assert 'id="nav-users"' not in logged_in(served, "sup1").get("/console").body


# --- logins under attack ----------------------------------------------------------------


def test_ten_wrong_passwords_are_slowed_down(served):
    """login_attempts (5) free failures, then each attempt must wait, doubling; a throttled
    attempt is refused before its password is checked, even the right one."""
    browser = served.browser()
    answers = [
        browser.post("/login", {"name": "op1", "password": f"guess number {i}", "next": "/console"})
        for i in range(10)
    ]
    statuses = [answer.status for answer in answers]
    assert statuses[:5] == [401] * 5
    assert 429 in statuses[5:]
    throttled = next(a for a in answers if a.status == 429)
    assert int(throttled.headers["Retry-After"]) >= 1
    assert "Too many failed logins" in throttled.body
    right = browser.post("/login", {"name": "op1", "password": PASSWORD, "next": "/console"})
    assert right.status == 429  # the name is throttled: the right password waits too
    other = browser.post("/login", {"name": "sup1", "password": "wrong again", "next": "/"})
    assert other.status == 429  # and so is the address, whatever name it tries
