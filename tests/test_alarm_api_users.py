"""The operator API with named users (issue 18): who a command is from, who may give it.

A real server on a loopback port (the ``Served`` harness of test_alarm_http), a real
users file with cheap argon2 parameters, real HTTP clients. The MQTT side's vetting
(:mod:`collector.alarms.authority`) is tested here too, as a unit: the same users and
roles decide it.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from pydantic import SecretStr
from structlog.testing import capture_logs

from collector.alarms.authority import CommandAuthority, redacted
from collector.alarms.changes import Changes
from collector.main import main as collector_main
from collector.users import Role, UserStore
from collector.web.api import Listing
from collector.web.app import Backend
from derrick.wire.payloads import AlarmCommand
from tests.test_alarm_http import OVERLOAD, TOKEN_ENV, Served

pytestmark = pytest.mark.integration

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "a long enough password"


@pytest.fixture
def users(tmp_path: Path) -> UserStore:
    store = UserStore(tmp_path / "users.yaml", hasher=CHEAP)
    for name, role in (("vera", Role.VIEWER), ("otto", Role.OPERATOR), ("sue", Role.SUPERVISOR)):
        store.add(name, role, PASSWORD)
    return store


@pytest.fixture
def tokens(users: UserStore) -> dict[str, str]:
    return {name: users.new_token(name, "test") for name in ("vera", "otto", "sue")}


class UsersServed(Served):
    def __init__(self, users: UserStore, **settings: Any) -> None:
        super().__init__(users_file=str(users.path), **settings)
        self.api._users = users  # the same store (and its cheap hasher)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_a_credential_nothing_but_health(users):
    with UsersServed(users) as server:
        assert server.call("GET", "/health")[0] == 200
        status, _, headers = server.call("GET", "/alarms")
        assert status == 401
        assert "Bearer" in headers["WWW-Authenticate"]
        posted = server.call("POST", f"/alarms/{OVERLOAD}/acknowledge", {"who": "otto"})
        assert posted[0] == 401
        assert server.commands == []


def test_a_users_token_makes_who_the_user(users, tokens):
    with UsersServed(users) as server, capture_logs() as logs:
        assert server.call("GET", "/me", headers=bearer(tokens["otto"]))[1] == {
            "name": "otto",
            "role": "operator",
            "via": "token",
        }
        status, _, _ = server.call(
            "POST", f"/alarms/{OVERLOAD}/acknowledge", {"comment": "seen"}, bearer(tokens["otto"])
        )
        assert status == 200
        # a header naming someone else changes nothing: who is the token's user
        server.call(
            "POST",
            f"/alarms/{OVERLOAD}/acknowledge",
            None,
            {**bearer(tokens["otto"]), "X-Derrick-User": "sue"},
        )
    assert [c.who for c in server.commands] == ["otto", "otto"]
    assert tokens["otto"] not in repr(logs)
    assert tokens["otto"].split("_")[2] not in repr(logs)


def test_a_who_naming_someone_else_is_refused(users, tokens):
    with UsersServed(users) as server:
        status, payload, _ = server.call(
            "POST", f"/alarms/{OVERLOAD}/acknowledge", {"who": "sue"}, bearer(tokens["otto"])
        )
        assert status == 400
        assert "who comes from your login (otto)" in payload["error"]
        same = server.call(
            "POST", f"/alarms/{OVERLOAD}/acknowledge", {"who": "otto"}, bearer(tokens["otto"])
        )
        assert same[0] == 200
    assert [c.who for c in server.commands] == ["otto"]


@pytest.mark.parametrize(
    ("user", "action", "allowed"),
    [
        ("vera", "acknowledge", False),
        ("otto", "acknowledge", True),
        ("otto", "reset", True),
        ("otto", "shelve", False),
        ("otto", "remove_from_service", False),
        ("sue", "shelve", True),
        ("sue", "return_to_service", True),
    ],
)
def test_roles_decide_the_actions(users, tokens, user, action, allowed):
    body = {"comment": "why", "duration_s": 600}
    with UsersServed(users) as server:
        status, payload, _ = server.call(
            "POST", f"/alarms/{OVERLOAD}/{action}", body, bearer(tokens[user])
        )
    if allowed:
        assert status == 200
        assert [c.who for c in server.commands] == [user]
    else:
        assert status == 403
        assert f"{action} needs" in payload["error"]
        assert server.commands == []


def test_a_viewer_reads_but_cannot_command(users, tokens):
    with UsersServed(users) as server:
        assert server.call("GET", "/alarms", headers=bearer(tokens["vera"]))[0] == 200
        status, payload, _ = server.call(
            "POST", f"/alarms/{OVERLOAD}/acknowledge", {}, bearer(tokens["vera"])
        )
    assert status == 403
    assert "vera is viewer: acknowledge needs operator" in payload["error"]


def test_revoked_tokens_and_disabled_users_are_refused_at_once(users, tokens):
    with UsersServed(users) as server:
        assert server.call("GET", "/alarms", headers=bearer(tokens["otto"]))[0] == 200
        otto_id = tokens["otto"].split("_")[1]
        users.revoke_token("otto", otto_id)
        assert server.call("GET", "/alarms", headers=bearer(tokens["otto"]))[:2] == (
            401,
            {"error": "token not accepted"},
        )
        users.set_disabled("sue", True)
        assert server.call("GET", "/alarms", headers=bearer(tokens["sue"]))[0] == 401


def test_the_shared_token_still_works_and_names_who_itself(users, monkeypatch):
    """The deprecated machine identity: as before, who comes from the body."""
    monkeypatch.setenv(TOKEN_ENV, "old-shared-token")
    with capture_logs() as logs, UsersServed(users, token_env=TOKEN_ENV) as server:
        status, _, _ = server.call(
            "POST", f"/alarms/{OVERLOAD}/shelve", {"who": "scada", "duration_s": 60},
            bearer("old-shared-token"),
        )  # fmt: skip
        assert status == 200
        assert server.call("GET", "/alarms", headers=bearer("drk_00000000_x"))[0] == 401
    assert [c.who for c in server.commands] == ["scada"]
    assert any(e["event"].startswith("alarm api shared token is deprecated") for e in logs)


def test_a_peer_acts_for_the_user_it_names(users):
    with UsersServed(users) as server:
        server.api.peer_secret(SecretStr("group-secret"))
        headers = {"X-Derrick-Peer": "group-secret", "X-Derrick-User": "otto",
                   "X-Derrick-Role": "operator"}  # fmt: skip
        status, _, _ = server.call("POST", f"/alarms/{OVERLOAD}/acknowledge", {}, headers)
        assert status == 200
        shelve = server.call("POST", f"/alarms/{OVERLOAD}/shelve", {"duration_s": 9}, headers)
        assert shelve[0] == 403  # an operator's command passed on is still an operator's
        wrong = {**headers, "X-Derrick-Peer": "guessed"}
        assert server.call("POST", f"/alarms/{OVERLOAD}/acknowledge", {}, wrong)[0] == 401
    assert [c.who for c in server.commands] == ["otto"]


def test_openapi_and_its_page_are_served_without_a_cdn(users):
    with UsersServed(users) as server:
        status, schema, _ = server.call("GET", "/openapi.json")
        assert status == 200
        assert "/alarms/{alarm_id}/{action}" in schema["paths"]
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("GET", "/api/docs")
            response = conn.getresponse()
            page = response.read().decode()
        finally:
            conn.close()
    assert response.status == 200
    assert "/alarms/{alarm_id}/{action}" in page
    assert "http://" not in page.replace("http://127.0.0.1", "")
    assert "https://" not in page
    assert "<script" not in page
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


# --- commands over MQTT ----------------------------------------------------------------


def command(**fields: Any) -> AlarmCommand:
    return AlarmCommand.model_validate({"alarm_id": OVERLOAD, "action": "acknowledge", **fields})


def test_mqtt_commands_need_a_users_token(users, tokens):
    authority = CommandAuthority("auto", users)
    assert authority.mode == "verified"
    vetted = authority.vet(command(token=tokens["otto"], comment="seen"))
    assert isinstance(vetted, AlarmCommand)
    assert (vetted.who, vetted.comment, vetted.token) == ("otto", "seen", None)
    assert "no credential" in str(authority.vet(command(who="otto")))
    assert authority.vet(command(token="drk_12345678_forged")) == "token not accepted"
    assert "who comes from the token (otto)" in str(
        authority.vet(command(token=tokens["otto"], who="sue"))
    )
    refused = authority.vet(command(action="shelve", token=tokens["otto"], duration_s=60))
    assert refused == "otto is operator: shelve needs supervisor"
    assert "vera is viewer" in str(authority.vet(command(token=tokens["vera"])))


def test_mqtt_commands_open_and_off():
    open_mode = CommandAuthority("auto", None)
    assert open_mode.mode == "open"
    assert isinstance(open_mode.vet(command(who="j.smith")), AlarmCommand)
    assert open_mode.vet(command()) == "who is required"
    off = CommandAuthority("off", None)
    assert "turned off" in str(off.vet(command(who="j.smith")))
    with pytest.raises(ValueError, match=r"needs alarms\.http\.users_file"):
        CommandAuthority("verified", None)


def test_a_dead_letter_never_keeps_a_token():
    secret = "drk_0123abcd_s3cr3t"
    kept = redacted(json.dumps({"alarm_id": 5, "token": secret}).encode())
    assert secret.encode() not in kept
    assert json.loads(kept)["token"] == "<redacted>"
    assert secret.encode() not in redacted(b'{"token": "' + secret.encode() + b'", broken')
    assert redacted(b"[1, 2]") == b"[1, 2]"


# --- derrick-collector --check --------------------------------------------------------


def test_check_reads_the_users_file_and_says_what_the_console_has(tmp_path, users, capsys):
    config = tmp_path / "collector.yaml"
    base = "collector: {id: c1}\ninflux: {api: v1, database: derrick}\n"
    config.write_text(base + "alarms:\n  http:\n    enabled: true\n    users_file: gone.yaml\n")
    assert collector_main(["--config", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"{config}: alarms.http.users_file: " in err
    assert "derrick-collector users add" in err
    config.write_text(base + f"alarms:\n  http:\n    enabled: true\n    users_file: {users.path}\n")
    assert collector_main(["--config", str(config), "--check"]) == 0
    out = capsys.readouterr().out
    assert "console at /console with 3 users" in out
    assert "MQTT commands verified" in out


def test_one_listing_serves_the_requests_and_streams_of_a_moment():
    """With fail-over a listing reads etcd in the event loop: open consoles share it."""
    calls: list[int] = []

    def listed() -> list[dict[str, Any]]:
        calls.append(1)
        return [{"alarm_id": f"a:b:c:{len(calls)}"}]

    backend = Backend(list_alarms=listed, command=None, changes=Changes())  # type: ignore[arg-type]
    listing = Listing(max_age_s=0.2)
    first = listing.get(backend)
    assert listing.get(backend) is first
    assert len(calls) == 1
    backend.changes.bump()  # a change here: listed again at once
    assert listing.get(backend)[0]["alarm_id"] == "a:b:c:2"
    time.sleep(0.25)  # changes on other members: listed again after max_age_s
    listing.get(backend)
    assert len(calls) == 3
