"""Alarm delivery channels (issue 6): webhook and e-mail senders against real receivers.

The receivers are real servers on loopback (devstack.receivers: http.server and aiosmtpd),
TLS uses certificates made here (devstack.certs). Rendering and settings tests need no
server and carry no mark.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from derrick.notify.channels import (
    LIST_MAX,
    SUBJECT_MAX,
    EmailSender,
    WebhookSender,
    make_sender,
    message_id,
    render_text,
)
from derrick.notify.settings import DeliveryError, EmailChannel, WebhookChannel
from derrick.plumbing.configfile import ConfigError, validate
from derrick.wire.payloads import AlarmNotice
from devstack.certs import CertificateAuthority, IssuedCert
from devstack.receivers import HttpReceiver, SmtpReceiver

integration = pytest.mark.integration

# Distinctive, so that a leak into an error text is found by a plain substring search.
TOKEN = "tok-Bearer-9f31c7a2e4"
SMTP_PASSWORD = "smtp-Pw-51d0b7e8"
TOKEN_ENV = "DERRICK_TEST_WEBHOOK_TOKEN"
PASSWORD_ENV = "DERRICK_TEST_SMTP_PASSWORD"
TS = 1_800_000_000_123_456_789  # 2027-01-15T08:00:00.123Z
TS_TEXT = "2027-01-15T08:00:00Z"


def notice(**changes: Any) -> AlarmNotice:
    fields: dict[str, Any] = {
        "key": "n-crane_overload-0001",
        "event": "announce",
        "alarm_id": "crane_overload:demo-yard:crane-01:lmi",
        "rule": "crane_overload",
        "site": "demo-yard",
        "asset": "crane-01",
        "device": "lmi",
        "priority": "critical",
        "state": "active_unacked",
        "message": "hook_load 16.04 above 100 % of safe_working_load (15.02)",
        "reason": "new",
        "value": 16.04,
        "limit": 15.02,
        "ts_ns": TS,
    }
    return AlarmNotice(**{**fields, **changes})


def flood(count: int) -> AlarmNotice:
    members = [
        notice(
            key=f"m{i}",
            rule=f"rule_{i}",
            device=f"dev{i}",
            alarm_id=f"rule_{i}:demo-yard:crane-01:dev{i}",
            priority="high",
            message=f"tag_{i} above its limit",
            value=float(i),
            limit=0.5,
        )
        for i in range(count)
    ]
    return notice(
        key="flood-0001",
        event="flood",
        message=f"{count} alarms in 10 s",
        alarms=members,
        value=None,
        limit=None,
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def failure(sender: Any, item: AlarmNotice) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await sender.send(item)
    return caught.value


def webhook(url: str, **extra: Any) -> WebhookSender:
    return WebhookSender(WebhookChannel(type="webhook", url=url, **extra))


# ---------------------------------------------------------------------------- rendering


def test_render_names_priority_event_place_value_and_utc_time():
    subject, body = render_text(notice())

    assert subject == (
        "CRITICAL ALARM crane_overload demo-yard/crane-01/lmi: "
        "hook_load 16.04 above 100 % of safe_working_load (15.02)"
    )
    lines = body.splitlines()
    assert lines[0] == "CRITICAL ALARM"
    assert "site: demo-yard  asset: crane-01  device: lmi" in lines
    assert "message: hook_load 16.04 above 100 % of safe_working_load (15.02)" in lines
    assert "value: 16.04" in lines
    assert "limit: 15.02" in lines
    assert "state: active_unacked (new)" in lines
    assert f"time: {TS_TEXT}" in lines


@pytest.mark.parametrize(
    ("event", "word"),
    [("clear", "CLEARED"), ("reminder", "REMINDER"), ("escalation", "ESCALATION")],
)
def test_render_headline_says_which_event(event: str, word: str):
    subject, body = render_text(notice(event=event, priority="low"))
    assert subject.startswith(f"LOW {word} crane_overload ")
    assert body.splitlines()[0] == f"LOW {word}"


def test_render_leaves_out_absent_value_and_limit():
    _subject, body = render_text(notice(value=None, limit=None))
    assert "value:" not in body
    assert "limit:" not in body


def test_render_journal_says_who_did_what_and_why():
    subject, body = render_text(
        notice(event="journal", priority="high", reason="acknowledge", who="alice",
               comment="load cell checked, crew informed")
    )  # fmt: skip
    assert subject == "HIGH JOURNAL crane_overload demo-yard/crane-01/lmi: acknowledge by alice"
    assert "by: alice" in body.splitlines()
    assert "comment: load cell checked, crew informed" in body.splitlines()


def test_subject_is_one_line_and_short_whatever_the_message():
    subject, body = render_text(notice(message="first line\nsecond line\t" + "x" * 300))
    assert "\n" not in subject
    assert len(subject) <= SUBJECT_MAX
    assert subject.endswith("…")
    assert "first line second line" in subject
    assert "x" * 300 in body  # the body keeps it whole


def test_flood_lists_each_member_on_its_own_line():
    subject, body = render_text(flood(3))
    assert subject == "CRITICAL FLOOD 3 alarms at demo-yard/crane-01: 3 alarms in 10 s"
    members = [line for line in body.splitlines() if line.startswith("- ")]
    assert members == [
        f"- HIGH ALARM rule_{i} demo-yard/crane-01/dev{i}: tag_{i} above its limit "
        f"value {i} limit 0.5 ({TS_TEXT})"
        for i in range(3)
    ]


def test_flood_listing_is_bounded_in_text():
    _subject, body = render_text(flood(LIST_MAX + 7))
    members = [line for line in body.splitlines() if line.startswith("- ")]
    assert len(members) == LIST_MAX
    assert "... and 7 more" in body.splitlines()


def test_message_id_is_stable_per_key_and_differs_between_keys():
    assert message_id("k1") == message_id("k1")
    assert message_id("k1") != message_id("k2")
    assert message_id("k1").startswith("<") and message_id("k1").endswith("@derrick>")
    assert len(message_id("k1")) == len("<@derrick>") + 32


# ----------------------------------------------------------------------------- settings


def problems(tmp_path: Path, data: dict[str, Any], model: type) -> str:
    with pytest.raises(ConfigError) as caught:
        validate(tmp_path / "collector.yaml", data, model)
    return str(caught.value)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", "scheme 'ftp': the url must start with http:// or https://"),
        ("hooks.example.com/x", "no scheme: the url must start with http:// or https://"),
        ("https:///path-only", "the url names no host"),
        ("http://example.com:99999/", "the url's port is not a number from 1 to 65535"),
        ("https://user:pw@example.com/", "credentials in the url are not supported"),
        ("https://example.com/a b", "the url contains spaces or control characters"),
        ("https://example.com/alarmé", "the url must be ASCII"),
    ],
)
def test_webhook_url_must_be_http_or_https(tmp_path: Path, url: str, reason: str):
    text = problems(tmp_path, {"type": "webhook", "url": url}, WebhookChannel)
    assert f"collector.yaml: url: {reason}" in text
    assert "pw@" not in text  # a URL may hold a secret: never quoted back


def test_unset_token_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    data = {"type": "webhook", "url": "https://example.com/", "token_env": TOKEN_ENV}
    text = problems(tmp_path, data, WebhookChannel)
    assert f"token_env: environment variable {TOKEN_ENV} is not set" in text


def test_token_file_is_found_beside_the_config_file(tmp_path: Path):
    (tmp_path / "hook.token").write_text(f"{TOKEN}\n")
    data = {"type": "webhook", "url": "https://example.com/", "token_file": "hook.token"}
    settings = validate(tmp_path / "collector.yaml", data, WebhookChannel)
    assert settings.token_file == tmp_path / "hook.token"
    token = settings.token()
    assert token is not None and token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)

    missing = {**data, "token_file": "nowhere.token"}
    assert f"token_file: {tmp_path / 'nowhere.token'}: no such file" in problems(
        tmp_path, missing, WebhookChannel
    )


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"headers": {"Idempotency-Key": "x"}}, "header Idempotency-Key is set by the sender"),
        ({"headers": {"Bad Name": "x"}}, "'Bad Name' is not a valid header name"),
        ({"headers": {"X-A": "1\r\nX-B: 2"}}, "header X-A: a value cannot contain a line break"),
        ({"timeout_s": 0}, "timeout_s: Input should be greater than 0"),
        ({"format": "discord"}, "format: Input should be 'json', 'slack' or 'teams'"),
    ],
)
def test_webhook_settings_problems_are_named(tmp_path: Path, extra: dict[str, Any], reason: str):
    data = {"type": "webhook", "url": "https://example.com/", **extra}
    assert reason in problems(tmp_path, data, WebhookChannel)


def test_one_token_source_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    (tmp_path / "hook.token").write_text(TOKEN)
    data = {"type": "webhook", "url": "https://example.com/", "token_env": TOKEN_ENV,
            "token_file": "hook.token"}  # fmt: skip
    text = problems(tmp_path, data, WebhookChannel)
    assert "give token_env or token_file, not both" in text
    assert TOKEN not in text


EMAIL = {"type": "email", "sender": "Derrick <derrick@example.com>", "to": ["crew@example.com"]}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"to": []}, "to: give at least one recipient address"),
        ({"to": ["crew"]}, "to: 'crew' is not an e-mail address (name@domain)"),
        ({"sender": "derrick"}, "sender: 'derrick' is not an e-mail address"),
        ({"sender": "a@b.c\nBcc: x@y.z"}, "sender: an address cannot contain a line break"),
        ({"security": "ssl"}, "security: Input should be 'none', 'starttls' or 'tls'"),
        ({"port": 0}, "port: Input should be greater than or equal to 1"),
        ({"username": "derrick"}, "username needs password_env or password_file"),
        ({"password_env": "HOME"}, "a password needs a username"),
    ],
)
def test_email_settings_problems_are_named(tmp_path: Path, extra: dict[str, Any], reason: str):
    assert reason in problems(tmp_path, {**EMAIL, **extra}, EmailChannel)


def test_email_requires_sender_and_recipients(tmp_path: Path):
    text = problems(tmp_path, {"type": "email"}, EmailChannel)
    assert "collector.yaml: sender: Field required" in text
    assert "collector.yaml: to: Field required" in text


def test_unset_password_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    data = {**EMAIL, "username": "derrick", "password_env": PASSWORD_ENV}
    text = problems(tmp_path, data, EmailChannel)
    assert f"password_env: environment variable {PASSWORD_ENV} is not set" in text


def test_make_sender_picks_the_sender_by_type():
    hook = WebhookChannel(type="webhook", url="http://127.0.0.1:9/")
    mail = EmailChannel.model_validate(EMAIL)
    assert isinstance(make_sender(hook), WebhookSender)
    assert isinstance(make_sender(mail), EmailSender)


# ------------------------------------------------------------------------------ webhook


@pytest.fixture
def hooks() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, IssuedCert]:
    ca = CertificateAuthority(tmp_path_factory.mktemp("pki"), "channels")
    return ca, ca.issue_server("receiver", hosts=["127.0.0.1", "localhost"])


@integration
def test_json_webhook_posts_the_notice_with_key_event_and_token(
    hooks: HttpReceiver, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    sender = webhook(
        hooks.url_for("/derrick/alarms?site=demo-yard"),
        token_env=TOKEN_ENV,
        headers={"X-Tenant": "north"},
    )
    item = notice()
    run(sender.send(item))

    [request] = hooks.wait_for_requests(1, timeout=5)
    assert request.method == "POST"
    assert request.path == "/derrick/alarms?site=demo-yard"
    assert AlarmNotice.model_validate_json(request.body) == item
    assert request.header("Content-Type") == "application/json"
    assert request.header("Idempotency-Key") == item.key
    assert request.header("X-Derrick-Event") == "announce"
    assert request.header("Authorization") == f"Bearer {TOKEN}"
    assert request.header("X-Tenant") == "north"


@integration
def test_the_same_notice_sent_twice_carries_the_same_key(hooks: HttpReceiver):
    sender = webhook(hooks.url)
    run(sender.send(notice(key="k-1")))
    run(sender.send(notice(key="k-1")))
    run(sender.send(notice(key="k-2", event="clear")))
    hooks.wait_for_requests(3, timeout=5)
    assert hooks.keys() == ["k-1", "k-1", "k-2"]
    assert [r.header("X-Derrick-Event") for r in hooks.requests] == [
        "announce",
        "announce",
        "clear",
    ]


@integration
def test_slack_format_is_text_with_subject_first_and_slack_escapes(hooks: HttpReceiver):
    item = notice(message="hook_load > limit & rising <fast>")
    run(webhook(hooks.url, format="slack").send(item))

    [request] = hooks.wait_for_requests(1, timeout=5)
    assert set(request.json) == {"text"}
    text = request.json["text"]
    subject, body = render_text(item)
    assert text.splitlines()[0] == subject.replace("&", "&amp;").replace(">", "&gt;").replace(
        "<", "&lt;"
    )
    assert "message: hook_load &gt; limit &amp; rising &lt;fast&gt;" in text.splitlines()
    assert len(text.splitlines()) == 1 + len(body.splitlines())
    assert request.header("Idempotency-Key") == item.key


@integration
def test_teams_format_is_text_with_paragraph_breaks(hooks: HttpReceiver):
    item = flood(2)
    run(webhook(hooks.url, format="teams").send(item))

    [request] = hooks.wait_for_requests(1, timeout=5)
    assert set(request.json) == {"text"}
    subject, body = render_text(item)
    assert request.json["text"].split("\n\n") == [subject, *body.splitlines()]


@integration
@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_busy_or_failing_receiver_is_retryable(
    hooks: HttpReceiver, monkeypatch: pytest.MonkeyPatch, status: int
):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    hooks.status = status
    hooks.reply_body = b"try again later"
    hooks.reply_headers = {"Retry-After": "7"}
    error = run(failure(webhook(hooks.url, token_env=TOKEN_ENV), notice()))

    assert error.retryable
    assert f"answered {status}" in str(error)
    assert "try again later" in str(error)
    assert error.retry_after_s == 7.0
    assert TOKEN not in str(error)
    assert hooks.requests[0].header("Authorization") == f"Bearer {TOKEN}"


@integration
@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301])
def test_refusing_receiver_is_not_retryable(hooks: HttpReceiver, status: int):
    hooks.status = status
    error = run(failure(webhook(hooks.url), notice()))
    assert not error.retryable
    assert error.retry_after_s is None
    assert f"answered {status}" in str(error)


@integration
def test_refusal_quotes_the_start_of_the_answer_without_the_token(
    hooks: HttpReceiver, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    hooks.status = 400
    # A receiver that echoes the request, token included, and says far too much.
    hooks.reply_body = f'{{"error": "bad payload", "auth": "Bearer {TOKEN}"}} '.encode() + (
        b"z" * 1000
    )
    error = run(failure(webhook(hooks.url_for("/hook/T0/B0/secretpath"), token_env=TOKEN_ENV),
                        notice()))  # fmt: skip

    text = str(error)
    assert not error.retryable
    assert text.startswith(f"webhook http://127.0.0.1:{hooks.port} answered 400 Bad Request: ")
    assert '{"error": "bad payload", "auth": "Bearer ***"}' in text
    assert TOKEN not in text
    assert "secretpath" not in text  # Slack and Teams keep their secret in the path
    assert len(text.split(": ", 1)[1]) <= 300


@integration
def test_receiver_down_is_retryable_and_delivery_resumes_when_it_is_back(hooks: HttpReceiver):
    sender = webhook(hooks.url, timeout_s=5)
    hooks.stop()
    error = run(failure(sender, notice()))
    assert error.retryable
    assert "connection refused" in str(error)
    assert isinstance(error.__cause__, ConnectionRefusedError)

    hooks.start()  # the same port again
    run(sender.send(notice()))
    assert hooks.keys() == [notice().key]


@integration
def test_receiver_that_never_answers_is_retryable_after_the_timeout(hooks: HttpReceiver):
    hooks.hang = True
    error = run(failure(webhook(hooks.url, timeout_s=0.2), notice()))
    assert error.retryable
    assert "no answer within 0.2 s" in str(error)
    assert isinstance(error.__cause__, TimeoutError)
    assert len(hooks.requests) == 1  # it did arrive: the answer is what is missing


@integration
def test_cancelling_a_send_raises_cancelled_not_delivery_error(hooks: HttpReceiver):
    hooks.hang = True
    sender = webhook(hooks.url, timeout_s=30)

    async def scenario() -> None:
        task = asyncio.create_task(sender.send(notice()))
        await asyncio.to_thread(hooks.wait_for_requests, 1, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await sender.close()
        # The worker thread still waits for an answer (up to timeout_s); the receiver
        # going away releases it now.
        hooks.stop()

    run(scenario())


@integration
def test_token_file_is_read_at_each_send(hooks: HttpReceiver, tmp_path: Path):
    token_file = tmp_path / "hook.token"
    token_file.write_text("first-token-aaaa\n")
    sender = webhook(hooks.url, token_file=token_file)
    run(sender.send(notice()))
    token_file.write_text("rotated-token-bbbb\n")
    run(sender.send(notice()))
    assert [r.header("Authorization") for r in hooks.wait_for_requests(2, timeout=5)] == [
        "Bearer first-token-aaaa",
        "Bearer rotated-token-bbbb",
    ]

    token_file.unlink()
    error = run(failure(sender, notice()))
    assert error.retryable  # fixing the file fixes delivery, without a restart
    assert "cannot read the token" in str(error)


@integration
def test_https_receiver_with_our_ca_is_trusted(pki: tuple[CertificateAuthority, IssuedCert]):
    ca, server = pki
    with HttpReceiver(tls=server) as secure:
        run(webhook(secure.url, ca_file=ca.cert).send(notice()))
        assert secure.keys() == [notice().key]

        error = run(failure(webhook(secure.url), notice()))  # system CAs only
        assert not error.retryable
        assert "certificate not trusted" in str(error)


# -------------------------------------------------------------------------------- email


@pytest.fixture
def mailbox() -> Iterator[SmtpReceiver]:
    with SmtpReceiver() as receiver:
        yield receiver


def mailer(receiver: SmtpReceiver, **extra: Any) -> EmailSender:
    settings = {**EMAIL, "to": ["crew@example.com", "Shift lead <lead@example.com>"],
                "port": receiver.port, **extra}  # fmt: skip
    return EmailSender(EmailChannel.model_validate(settings))


@integration
def test_email_arrives_with_subject_body_and_stable_ids(mailbox: SmtpReceiver):
    item = notice(message="hook_load 16.04 ≥ limit, Grüße an die Crew")
    run(mailer(mailbox).send(item))

    [mail] = mailbox.wait_for_messages(1, timeout=5)
    subject, body = render_text(item)
    assert mail.mail_from == "derrick@example.com"
    assert mail.rcpt_tos == ["crew@example.com", "lead@example.com"]
    msg = mail.message
    assert msg["Subject"] == subject
    assert msg["From"] == "Derrick <derrick@example.com>"
    assert msg["To"] == "crew@example.com, Shift lead <lead@example.com>"
    assert msg["Message-ID"] == message_id(item.key)
    assert msg["X-Derrick-Key"] == item.key
    assert msg["X-Derrick-Event"] == "announce"
    assert msg["Importance"] == "high"
    assert msg["Date"].datetime == datetime(2027, 1, 15, 8, 0, 0, tzinfo=UTC)  # the notice's
    assert msg.get_content().rstrip("\n") == body
    assert all(byte < 128 for byte in mail.raw)  # 7-bit clean for any relay


@integration
def test_a_repeated_email_has_the_same_message_id(mailbox: SmtpReceiver):
    sender = mailer(mailbox)
    run(sender.send(notice(key="same")))
    run(sender.send(notice(key="same")))
    run(sender.send(notice(key="other", priority="low")))
    mails = mailbox.wait_for_messages(3, timeout=5)
    ids = [mail.message["Message-ID"] for mail in mails]
    assert ids[0] == ids[1] != ids[2]
    assert mails[2].message["Importance"] is None


@integration
def test_flood_email_lists_every_member(mailbox: SmtpReceiver):
    run(mailer(mailbox).send(flood(4)))
    [mail] = mailbox.wait_for_messages(1, timeout=5)
    text = mail.message.get_content()
    for i in range(4):
        assert f"- HIGH ALARM rule_{i} demo-yard/crane-01/dev{i}: tag_{i} above its limit" in text


@integration
def test_smtp_down_is_retryable_and_delivery_resumes(mailbox: SmtpReceiver):
    sender = mailer(mailbox)
    mailbox.stop()
    error = run(failure(sender, notice()))
    assert error.retryable
    assert "connection refused" in str(error)

    mailbox.start()  # the same port again
    run(sender.send(notice()))
    assert len(mailbox.wait_for_messages(1, timeout=5)) == 1


@integration
@pytest.mark.parametrize(
    ("reply", "retryable"),
    [("451 4.3.0 try again later", True), ("554 5.6.0 message refused", False)],
)
def test_smtp_4xx_is_retryable_and_5xx_is_not(mailbox: SmtpReceiver, reply: str, retryable: bool):
    mailbox.data_reply = reply
    error = run(failure(mailer(mailbox), notice()))
    assert error.retryable is retryable
    assert reply in str(error)


@integration
@pytest.mark.parametrize(
    ("refusal", "retryable"),
    [("450 4.2.1 mailbox busy", True), ("550 5.1.1 no such user", False)],
)
def test_every_recipient_refused(mailbox: SmtpReceiver, refusal: str, retryable: bool):
    mailbox.refuse_rcpt = {"crew@example.com": refusal, "lead@example.com": refusal}
    error = run(failure(mailer(mailbox), notice()))
    assert error.retryable is retryable
    assert f"crew@example.com: {refusal}" in str(error)


@integration
def test_one_recipient_refused_for_good_still_delivers_to_the_others(mailbox: SmtpReceiver):
    mailbox.refuse_rcpt = {"lead@example.com": "550 5.1.1 no such user"}
    run(mailer(mailbox).send(notice()))  # delivered: the refusal is logged
    [mail] = mailbox.wait_for_messages(1, timeout=5)
    assert mail.rcpt_tos == ["crew@example.com"]


@integration
def test_one_recipient_refused_for_now_is_retryable(mailbox: SmtpReceiver):
    mailbox.refuse_rcpt = {"lead@example.com": "452 4.2.2 mailbox full"}
    error = run(failure(mailer(mailbox), notice()))
    assert error.retryable
    assert "lead@example.com: 452 4.2.2 mailbox full" in str(error)
    assert len(mailbox.wait_for_messages(1, timeout=5)) == 1  # crew got it; a retry repeats


@integration
def test_starttls_and_login(
    pki: tuple[CertificateAuthority, IssuedCert], monkeypatch: pytest.MonkeyPatch
):
    ca, server = pki
    monkeypatch.setenv(PASSWORD_ENV, SMTP_PASSWORD)
    with SmtpReceiver(tls=server, users={"derrick": SMTP_PASSWORD}) as secure:
        secured = {"security": "starttls", "ca_file": str(ca.cert), "username": "derrick",
                   "password_env": PASSWORD_ENV}  # fmt: skip
        run(mailer(secure, **secured).send(notice()))
        [mail] = secure.wait_for_messages(1, timeout=5)
        assert mail.login == "derrick"

        monkeypatch.setenv(PASSWORD_ENV, "wrong-" + SMTP_PASSWORD)
        error = run(failure(mailer(secure, **secured), notice()))
        assert not error.retryable
        assert "535" in str(error)
        assert SMTP_PASSWORD not in str(error)

        # Without our CA the server is not trusted: configuration, not a passing problem.
        error = run(failure(mailer(secure, **{**secured, "ca_file": None}), notice()))
        assert not error.retryable
        assert "certificate not trusted" in str(error)


@integration
def test_implicit_tls(pki: tuple[CertificateAuthority, IssuedCert]):
    ca, server = pki
    with SmtpReceiver(tls=server, implicit_tls=True) as secure:
        run(mailer(secure, security="tls", ca_file=str(ca.cert)).send(notice()))
        assert len(secure.wait_for_messages(1, timeout=5)) == 1


@integration
def test_smtp_server_that_never_greets_is_retryable_after_the_timeout():
    # A listening socket nobody accepts from: the kernel completes the connection, and
    # then nothing is ever said.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        settings = EmailChannel.model_validate({**EMAIL, "port": port, "timeout_s": 0.2})
        error = run(failure(EmailSender(settings), notice()))
    assert error.retryable
    assert "timed out" in str(error)


@integration
def test_starttls_required_but_not_offered_is_not_retryable(mailbox: SmtpReceiver):
    error = run(failure(mailer(mailbox, security="starttls"), notice()))
    assert not error.retryable
    assert "STARTTLS" in str(error)
