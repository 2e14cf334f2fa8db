"""Operator HTTP API of the alarms: a real server on a loopback port, real HTTP clients.

The server runs on its own event loop in a thread; the tests talk to it with
``http.client`` (and a raw socket for the stalling client). The command callback is the
collector's seam: here it records the commands and answers what the test tells it to.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from collector.alarms.httpapi import AlarmApi, HttpApiError, HttpApiSettings
from derrick.plumbing import configfile
from derrick.wire.payloads import AlarmCommand, AlarmCommandResult
from devstack.served import ServedApi

pytestmark = pytest.mark.integration

TOKEN_ENV = "DERRICK_TEST_ALARM_API_TOKEN"
OVERLOAD = "crane_overload:yard:crane-01:lmi"


def alarm(rule: str, site: str, asset: str, state: str, active: bool) -> dict[str, Any]:
    return {
        "alarm_id": f"{rule}:{site}:{asset}:lmi",
        "rule": rule,
        "site": site,
        "asset": asset,
        "device": "lmi",
        "state": state,
        "active": active,
        "acked": state != "active_unacked",
        "priority": "high",
        "ts_ns": 1,
    }


ALARMS = [
    alarm("crane_overload", "yard", "crane-01", "active_unacked", True),
    alarm("wind_high", "yard", "crane-02", "active_acked", True),
    alarm("hydraulic_temp", "yard", "crane-01", "normal", False),
    alarm("crane_overload", "port", "crane-07", "returned_unacked", False),
]


def accepted(command: AlarmCommand) -> tuple[int, AlarmCommandResult]:
    return 200, AlarmCommandResult(
        request_id=command.request_id,
        alarm_id=command.alarm_id,
        action=command.action,
        ok=True,
        state="active_acked",
        ts_ns=123,
    )


Answer = Callable[[AlarmCommand], Any]


class Served(ServedApi):
    """An AlarmApi serving on its own loop in a thread while the ``with`` block runs."""

    def __init__(self, answer: Answer = accepted, **settings: Any) -> None:
        self.settings = HttpApiSettings(**{"enabled": True, "port": 0, **settings})
        self.answer = answer
        self.commands: list[AlarmCommand] = []
        super().__init__(AlarmApi(self.settings, list_alarms=lambda: ALARMS, command=self._command))

    async def _command(self, command: AlarmCommand) -> tuple[int, AlarmCommandResult]:
        self.commands.append(command)
        answer = self.answer(command)
        return await answer if asyncio.iscoroutine(answer) else answer

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, http.client.HTTPMessage]:
        """One request; (status, parsed JSON body, response headers)."""
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=headers or {})
            response = conn.getresponse()
            return response.status, json.loads(response.read()), response.headers
        finally:
            conn.close()


@pytest.fixture
def served():
    with Served() as server:
        yield server


def ids(payload: dict[str, Any]) -> set[str]:
    return {a["alarm_id"] for a in payload["alarms"]}


# --- reading alarms -----------------------------------------------------------------------


def test_health_and_full_list(served):
    assert served.call("GET", "/health")[:2] == (200, {"ok": True})
    status, payload, headers = served.call("GET", "/alarms")
    assert status == 200
    assert payload == {"alarms": ALARMS}
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("site=yard", {0, 1, 2}),
        ("site=port", {3}),
        ("asset=crane-01", {0, 2}),
        ("state=active_acked", {1}),
        ("state=active_unacked&state=active_acked", {0, 1}),
        ("active=true", {0, 1}),
        ("active=false", {2, 3}),
        ("site=yard&active=false", {2}),
        ("site=yard&asset=crane-02&active=true", {1}),
        ("site=nowhere", set()),
    ],
)
def test_list_filters(served, query, expected):
    status, payload, _ = served.call("GET", f"/alarms?{query}")
    assert status == 200
    assert ids(payload) == {ALARMS[i]["alarm_id"] for i in expected}


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("active=maybe", "active must be true or false"),
        ("priority=high", "unknown filter priority"),
    ],
)
def test_bad_filters_are_400(served, query, error):
    status, payload, _ = served.call("GET", f"/alarms?{query}")
    assert status == 400
    assert error in payload["error"]


@pytest.mark.parametrize("path_id", [OVERLOAD, quote(OVERLOAD, safe="")])
def test_get_one_alarm_raw_or_percent_encoded(served, path_id):
    assert "%3A" in quote(OVERLOAD, safe="")
    status, payload, _ = served.call("GET", f"/alarms/{path_id}")
    assert status == 200
    assert payload == ALARMS[0]


def test_unknown_alarm_and_unknown_route_are_404(served):
    status, payload, _ = served.call("GET", "/alarms/no_such:yard:crane-01:lmi")
    assert status == 404
    assert "no_such:yard:crane-01:lmi" in payload["error"]
    status, payload, _ = served.call("GET", "/nothing/here")
    assert status == 404
    assert "no endpoint" in payload["error"]


def test_bad_alarm_id_is_400(served):
    status, payload, _ = served.call("GET", "/alarms/" + quote("a/b:c", safe=""))
    assert status == 400
    assert "bad alarm id" in payload["error"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/alarms", "GET"),
        ("POST", "/alarms", "GET"),
        ("POST", f"/alarms/{OVERLOAD}", "GET"),
        ("GET", f"/alarms/{OVERLOAD}/acknowledge", "POST"),
        ("PUT", "/health", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(served, method, path, allow):
    status, payload, headers = served.call(method, path)
    assert status == 405
    assert headers["Allow"] == allow
    assert allow in payload["error"]
    assert served.commands == []


# --- commands -----------------------------------------------------------------------------


def test_command_reaches_the_callback_and_its_answer_comes_back(served):
    body = {"who": "j.smith", "comment": "crane stopped", "duration_s": 900, "request_id": "r-1"}
    with capture_logs() as logs:
        status, payload, _ = served.call("POST", f"/alarms/{OVERLOAD}/shelve", body)
    assert status == 200
    (command,) = served.commands
    assert (command.alarm_id, command.action, command.who) == (OVERLOAD, "shelve", "j.smith")
    assert (command.comment, command.duration_s, command.request_id) == (
        "crane stopped",
        900.0,
        "r-1",
    )
    assert payload == accepted(command)[1].model_dump(mode="json")
    lines = [entry for entry in logs if entry["event"] == "alarm api command"]
    assert len(lines) == 1
    assert {k: lines[0][k] for k in ("alarm_id", "action", "who", "status")} == {
        "alarm_id": OVERLOAD,
        "action": "shelve",
        "who": "j.smith",
        "status": 200,
    }


def test_callback_status_and_refusal_are_passed_through():
    def refuse(command: AlarmCommand) -> tuple[int, AlarmCommandResult]:
        return 409, AlarmCommandResult(
            request_id=command.request_id,
            alarm_id=command.alarm_id,
            action=command.action,
            ok=False,
            reason="alarm is out of service",
            state="out_of_service",
            ts_ns=7,
        )

    with Served(refuse) as server:
        status, payload, _ = server.call(
            "POST", f"/alarms/{quote(OVERLOAD, safe='')}/acknowledge", {"who": "op"}
        )
    assert status == 409
    assert payload["ok"] is False
    assert payload["reason"] == "alarm is out of service"
    assert payload["state"] == "out_of_service"
    assert payload["alarm_id"] == OVERLOAD
    assert payload["request_id"] == server.commands[0].request_id != ""


def test_who_from_header_and_a_generated_request_id(served):
    status, payload, _ = served.call(
        "POST",
        f"/alarms/{OVERLOAD}/acknowledge",
        headers={"X-Derrick-User": "night-shift"},
    )
    assert status == 200
    (command,) = served.commands
    assert command.who == "night-shift"
    assert command.request_id
    assert payload["request_id"] == command.request_id


def test_who_in_body_wins_over_header(served):
    served.call(
        "POST",
        f"/alarms/{OVERLOAD}/reset",
        {"who": "a.body"},
        headers={"X-Derrick-User": "a.header"},
    )
    assert [c.who for c in served.commands] == ["a.body"]


@pytest.mark.parametrize(
    ("action", "body", "error"),
    [
        ("acknowledge", {}, "who is required"),
        ("acknowledge", b'{"who": "op",', "body is not valid JSON"),
        ("acknowledge", b"[1, 2]", "body must be a JSON object"),
        ("acknowledge", b'{"who": "op", "duration_s": NaN}', "not valid JSON"),
        ("shelve", {"who": "op", "duration_s": -5}, "duration_s"),
        ("shelve", {"who": "op", "duration_s": "soon"}, "duration_s"),
        ("shelve", b'{"who": "op", "duration_s": 1e999}', "duration_s must be a finite"),
        ("explode", {"who": "op"}, "action"),
        ("acknowledge", {"who": ""}, "who"),
        ("acknowledge", {"who": "op", "action": "reset"}, "unknown body key action"),
    ],
)
def test_invalid_commands_are_400_and_never_reach_the_callback(served, action, body, error):
    status, payload, _ = served.call("POST", f"/alarms/{OVERLOAD}/{action}", body)
    assert status == 400
    assert error in payload["error"]
    assert served.commands == []


def test_oversized_body_is_413(served):
    just_over = json.dumps({"who": "op", "comment": "x" * (64 * 1024)}).encode()
    status, payload, _ = served.call("POST", f"/alarms/{OVERLOAD}/acknowledge", just_over)
    assert status == 413
    assert "64 KiB" in payload["error"]
    assert served.commands == []
    assert served.call("GET", "/health")[0] == 200


def test_a_large_body_still_gets_its_413_instead_of_a_reset(served):
    """The server drains what the client still sends before closing; closing with unread
    data would reset the connection under the answer (seen: 12 resets in 20 at 3 MB)."""
    for _ in range(5):
        status, _, _ = served.call("POST", f"/alarms/{OVERLOAD}/reset", b"x" * 3_000_000)
        assert status == 413
    assert served.commands == []


def test_a_callback_that_raises_is_500_and_the_server_keeps_serving():
    def explode(command: AlarmCommand) -> None:
        raise RuntimeError("state store is read-only")

    with Served(explode) as server, capture_logs() as logs:
        status, payload, _ = server.call("POST", f"/alarms/{OVERLOAD}/reset", {"who": "op"})
        assert status == 500
        assert "request_id" in payload
        assert "read-only" not in payload["error"]  # internals stay in the log
        assert server.call("GET", "/alarms")[0] == 200
        assert server.call("POST", f"/alarms/{OVERLOAD}/reset", {"who": "op"})[0] == 500
    failures = [e for e in logs if e["event"] == "alarm api command" and e["status"] == 500]
    assert len(failures) == 2
    assert failures[0]["exc_info"] is True


def test_a_callback_that_does_not_answer_in_time_is_504_and_logged_when_done():
    release = asyncio.Event()  # set on the server's loop

    async def slow(command: AlarmCommand) -> tuple[int, AlarmCommandResult]:
        await release.wait()
        return accepted(command)

    def finished(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in logs if e["event"] == "alarm api command finished after 504"]

    async def until_finished(logs: list[dict[str, Any]]) -> None:
        for _ in range(3000):  # up to 30 s: the log line comes from a done-callback
            if finished(logs):
                return
            await asyncio.sleep(0.01)

    with Served(slow, timeout_s=0.2) as server, capture_logs() as logs:
        status, payload, _ = server.call("POST", f"/alarms/{OVERLOAD}/acknowledge", {"who": "op"})
        assert status == 504
        assert "may still take effect" in payload["error"]
        assert payload["request_id"] == server.commands[0].request_id
        assert server.call("GET", "/health")[0] == 200
        assert not finished(logs)
        server.loop.call_soon_threadsafe(release.set)
        server.run(until_finished(logs))
    assert [(e["status"], e["ok"], e["alarm_id"]) for e in finished(logs)] == [
        (200, True, OVERLOAD)
    ]


# --- token --------------------------------------------------------------------------------


def test_bearer_token(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cret-token")
    with Served(host="127.0.0.1", token_env=TOKEN_ENV) as server, capture_logs() as logs:
        assert server.call("GET", "/health")[0] == 200  # monitoring needs no token
        status, payload, headers = server.call("GET", "/alarms")
        assert status == 401
        assert "Bearer" in headers["WWW-Authenticate"]
        assert "Bearer <token> required" in payload["error"]
        wrong = {"Authorization": "Bearer s3cret-tokeN"}
        assert server.call("GET", "/alarms", headers=wrong)[:2] == (
            401,
            {"error": "token not accepted"},
        )
        basic = {"Authorization": "Basic czNjcmV0LXRva2Vu"}
        assert server.call("GET", "/alarms", headers=basic)[0] == 401
        posted = server.call("POST", f"/alarms/{OVERLOAD}/acknowledge", {"who": "op"}, wrong)
        assert posted[0] == 401
        assert server.commands == []
        right = {"Authorization": "Bearer s3cret-token"}
        assert server.call("GET", "/alarms", headers=right)[:2] == (200, {"alarms": ALARMS})
        posted = server.call("POST", f"/alarms/{OVERLOAD}/acknowledge", {"who": "op"}, right)
        assert posted[0] == 200
        assert [c.who for c in server.commands] == ["op"]
    assert logs
    assert "s3cret" not in repr(logs)


def test_a_missing_or_empty_token_stops_the_start(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(HttpApiError, match=f"environment variable {TOKEN_ENV} is not set"):
        Served(token_env=TOKEN_ENV).__enter__()
    monkeypatch.setenv(TOKEN_ENV, "  ")
    with pytest.raises(HttpApiError, match="token is empty"):
        Served(token_env=TOKEN_ENV).__enter__()


def test_a_port_in_use_is_an_api_error(served):
    with pytest.raises(
        HttpApiError, match=f"cannot listen for the alarm API on 127.0.0.1:{served.port}"
    ):
        Served(port=served.port).__enter__()


# --- clients that misbehave --------------------------------------------------------------


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    "partial",
    [
        b"POST /alarms/" + OVERLOAD.encode() + b"/acknowledge HTTP/1.1\r\nHost: x\r\n"
        b'Content-Length: 40\r\n\r\n{"who"',
        b"GET /alarms HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    ],
    ids=["half-a-body", "half-a-head"],
)
def test_a_stalled_client_gets_408_and_others_are_served_meanwhile(partial):
    with Served(timeout_s=0.3) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as stalled:
            stalled.sendall(partial)
            assert server.call("GET", "/alarms")[0] == 200
            answer = read_all(stalled)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"request not complete within 0.3 s" in answer
        assert server.call("GET", "/health")[0] == 200
        assert server.commands == []


def test_close_ends_open_connections_without_asyncio_errors(caplog):
    with (
        Served(timeout_s=30) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as stalled,
    ):
        stalled.sendall(b"GET /alarms HTTP/1.1\r\n")
        assert server.call("GET", "/health")[0] == 200  # the stalled one is being read
        server.run(server.api.close())
        assert read_all(stalled) == b""
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_garbage_and_a_vanishing_client_do_not_stop_the_server(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(b"HELLO\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(b"POST /alarms/a:b/reset HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(b"GET /alarms HTTP/1.1\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 400 ")  # uvicorn: a head above 8 KiB
    assert served.call("GET", "/alarms")[0] == 200
    assert served.commands == []


def test_expect_100_continue_as_curl_sends_it(served):
    body = json.dumps({"who": "op", "comment": "c" * 2000}).encode()
    head = (
        f"POST /alarms/{OVERLOAD}/acknowledge HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")
    assert [c.comment for c in served.commands] == ["c" * 2000]


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "collector.example"])
def test_listening_beyond_loopback_needs_a_token(host):
    with pytest.raises(
        ValidationError,
        match="needs users or a token when it listens beyond loopback",
    ):
        HttpApiSettings(enabled=True, host=host)
    assert HttpApiSettings(enabled=True, host=host, token_env=TOKEN_ENV).host == host
    assert HttpApiSettings(enabled=True, host=host, users_file="users.yaml").host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_needs_no_token(host):
    assert HttpApiSettings(enabled=True, host=host).token() is None


def test_settings_defaults_and_bounds():
    settings = HttpApiSettings()
    assert (settings.enabled, settings.host, settings.port) == (False, "127.0.0.1", 8470)
    assert (settings.max_body_kb, settings.timeout_s) == (64, 10.0)
    for bad in ({"port": 70000}, {"port": -1}, {"timeout_s": 0}, {"max_body_kb": 0}, {"x": 1}):
        with pytest.raises(ValidationError):
            HttpApiSettings(**bad)
    with pytest.raises(ValidationError, match="not both"):
        HttpApiSettings(token_env=TOKEN_ENV, token_file="t")


def test_token_file_is_beside_the_config_and_the_error_names_the_key(tmp_path: Path):
    (tmp_path / "api.token").write_text("from-a-file\n")
    settings = configfile.validate(
        tmp_path / "collector.yaml",
        {"host": "0.0.0.0", "token_file": "api.token"},
        HttpApiSettings,
    )
    assert settings.token_file == tmp_path / "api.token"
    assert settings.token().get_secret_value() == "from-a-file"
    with pytest.raises(configfile.ConfigError) as caught:
        configfile.validate(tmp_path / "collector.yaml", {"host": "0.0.0.0"}, HttpApiSettings)
    assert "needs users or a token when it listens beyond loopback" in str(caught.value)
    assert str(caught.value).startswith(f"{tmp_path / 'collector.yaml'}: ")
