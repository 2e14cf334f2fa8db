"""Alarm notification channels: deliver one :class:`AlarmNotice` by webhook or e-mail.

Every sender has one face: ``await sender.send(notice)`` returns when the receiver has
taken the notice, or raises :class:`DeliveryError`, whose ``retryable`` tells the
delivery worker whether trying again later can help (a receiver that is down, busy or
slow) or not (a refused request: a wrong URL, a bad token, an unknown mailbox). Library
errors never leave this module unconverted; ``asyncio.CancelledError`` always does.

The same notice may be sent more than once (a retry after a crash between sending and
recording it): every request carries the notice's idempotency key (webhook header
``Idempotency-Key``, e-mail ``X-Derrick-Key`` and a ``Message-ID`` derived from it), so
a receiver can recognise the repeat.

Secrets (bearer token, SMTP password) are read from an environment variable or a file at
each send, so a rotated file is picked up without a restart; they never appear in a log
line or an error message. Neither does a webhook URL's path or query: Slack and Teams
put their secret there, so errors name only ``scheme://host:port``.

Standard library only: ``http.client`` and ``smtplib`` in worker threads with
``timeout_s`` on the connect and on every read. Each sender has its own small thread
pool, not asyncio's default one, so a receiver that hangs never delays the InfluxDB
writes that share the default pool. A cancelled send returns at once; its thread ends
by itself within the timeout. One connection per notice: notices are rare, and a fresh
connection never finds a stale one.
"""

from __future__ import annotations

import email.policy
import email.utils
import hashlib
import http.client
import json
import smtplib
import ssl
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

import structlog
from pydantic import SecretStr

from derrick.notify.settings import DeliveryError, EmailChannel, WebhookChannel
from derrick.plumbing.threads import DaemonThreads
from derrick.wire.payloads import AlarmNotice

log = structlog.get_logger(__name__)

__all__ = [
    "EmailSender",
    "Sender",
    "WebhookSender",
    "make_sender",
    "message_id",
    "render_text",
]

SUBJECT_MAX = 120
LIST_MAX = 50  # flood members listed in a text rendering; the json format carries all
REPLY_EXCERPT = 300  # characters of a refusing receiver's answer quoted in the error
_REPLY_READ = 4096  # bytes of an answer read at most: the rest is never needed


# --------------------------------------------------------------------------- rendering

OFFLINE_REASON = "offline"  # AnnounceReason.OFFLINE: an episode while an agent was cut off
_HEADLINE = {
    "announce": "ALARM",
    "clear": "CLEARED",
    "reminder": "REMINDER",
    "escalation": "ESCALATION",
    "journal": "JOURNAL",
    "flood": "FLOOD",
}


def _number(value: float) -> str:
    return format(value, ".10g")


def _utc(ts_ns: int) -> str:
    try:
        return datetime.fromtimestamp(ts_ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"ts_ns {ts_ns}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _where(notice: AlarmNotice) -> str:
    return f"{notice.site}/{notice.asset}/{notice.device}"


def _summary(notice: AlarmNotice) -> str:
    """What happened, in a few words: the message, or for a journal entry who did what."""
    if notice.event == "journal":
        action = (notice.reason or notice.state).replace("_", " ")
        return f"{action} by {notice.who}" if notice.who else action
    if notice.event == "flood":
        return notice.message or f"{len(notice.alarms)} alarms"
    return notice.message


def _when(notice: AlarmNotice) -> str:
    if notice.ended_ns is None:
        return _utc(notice.ts_ns)
    return f"{_utc(notice.ts_ns)} to {_utc(notice.ended_ns)} (while offline)"


def _headline(notice: AlarmNotice) -> str:
    if notice.reason == OFFLINE_REASON:
        return "ALARM WHILE OFFLINE"
    return _HEADLINE[notice.event]


def _member_line(member: AlarmNotice) -> str:
    figures = ""
    if member.value is not None:
        figures += f" value {_number(member.value)}"
    if member.limit is not None:
        figures += f" limit {_number(member.limit)}"
    text = _one_line(member.message)
    return (
        f"- {member.priority.upper()} {_headline(member)} {member.rule} "
        f"{_where(member)}: {text}{figures} ({_utc(member.ts_ns)})"
    )


def render_text(notice: AlarmNotice) -> tuple[str, str]:
    """``(subject, body)`` for people: short lines, the important words first.

    The subject is one line of at most :data:`SUBJECT_MAX` characters, e.g.
    ``CRITICAL ALARM crane_overload demo-yard/crane-01/lmi: hook_load 16.04 above ...``.
    A flood notice lists up to :data:`LIST_MAX` members, one line each.
    """
    headline = f"{notice.priority.upper()} {_headline(notice)}"
    if notice.event == "flood":
        subject = f"{headline} {len(notice.alarms)} alarms at {notice.site}/{notice.asset}"
    else:
        subject = f"{headline} {notice.rule} {_where(notice)}"
    summary = _one_line(_summary(notice))
    if summary:
        subject += f": {summary}"
    if len(subject) > SUBJECT_MAX:
        subject = subject[: SUBJECT_MAX - 1] + "…"

    lines = [headline, f"rule: {notice.rule}"]
    lines.append(f"site: {notice.site}  asset: {notice.asset}  device: {notice.device}")
    if notice.message:
        lines.append(f"message: {notice.message}")
    if notice.value is not None:
        lines.append(f"value: {_number(notice.value)}")
    if notice.limit is not None:
        lines.append(f"limit: {_number(notice.limit)}")
    state = notice.state + (f" ({notice.reason})" if notice.reason else "")
    if state:
        lines.append(f"state: {state}")
    if notice.who:
        lines.append(f"by: {notice.who}")
    if notice.comment:
        lines.append(f"comment: {notice.comment}")
    lines.append(f"time: {_when(notice)}")
    if notice.alarms:
        lines.append(f"alarms ({len(notice.alarms)}):")
        lines += [_member_line(member) for member in notice.alarms[:LIST_MAX]]
        if len(notice.alarms) > LIST_MAX:
            lines.append(f"... and {len(notice.alarms) - LIST_MAX} more")
    lines.append(f"alarm id: {notice.alarm_id}")
    return subject, "\n".join(lines)


# ----------------------------------------------------------------------------- senders


class Sender(Protocol):
    """What the delivery worker drives, one per channel."""

    async def send(self, notice: AlarmNotice) -> None:
        """Deliver ``notice`` or raise :class:`DeliveryError`."""
        ...

    async def close(self) -> None:
        """Release what the sender holds; a later ``send`` still works."""
        ...


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _header_safe(text: str) -> str:
    """``text`` as a header value: printable ASCII kept, anything else percent-encoded."""
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe="")


def _excerpt(data: bytes, secrets: list[str | None]) -> str:
    """The start of a receiver's answer, on one line, with anything we sent that may be a
    secret (the token, a static header value of 8+ characters) masked: some receivers
    echo the request back."""
    text = _one_line(data.decode("utf-8", errors="replace"))
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "***")
    return text[:REPLY_EXCERPT]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _tls_failure(exc: ssl.SSLCertVerificationError) -> str:
    return f"certificate not trusted: {exc.verify_message or exc.reason or exc}"


def _os_failure(exc: OSError, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {exc.strerror or exc}"


class WebhookSender:
    """POST each notice to :attr:`WebhookChannel.url`.

    Formats: ``json`` is the notice itself (``AlarmNotice`` JSON, schema ``v``);
    ``slack`` is ``{"text": ...}`` for a Slack incoming webhook (``&``, ``<``, ``>``
    escaped as Slack requires); ``teams`` is ``{"text": ...}`` with paragraph breaks, the
    simple text form an Office 365 connector takes, or a Teams Workflow that posts the
    body's ``text``. (The ready-made Workflow "post to a channel when a webhook request
    is received" expects an Adaptive Card instead.)

    2xx is delivered. 408, 425, 429, 5xx, a refused or dropped connection, a timeout,
    a malformed answer: retryable. Any other answer (3xx, 4xx): not retryable, the error
    quotes the status and the start of the answer.
    """

    def __init__(self, settings: WebhookChannel):
        self.settings = settings
        parts = urlsplit(settings.url)
        self._https = parts.scheme.lower() == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._where = f"webhook {settings.origin}"
        self._ssl = _tls_context(settings.ca_file) if self._https else None
        self._threads = DaemonThreads("alarm-webhook", workers=4)

    def body(self, notice: AlarmNotice) -> bytes:
        """The request body for ``notice`` in the channel's format."""
        if self.settings.format == "json":
            return notice.model_dump_json().encode()
        subject, text = render_text(notice)
        if self.settings.format == "slack":
            message = f"{subject}\n{text}"
            for raw, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
                message = message.replace(raw, escaped)
        else:  # teams: markdown, where a single newline is no line break
            message = "\n\n".join([subject, *text.splitlines()])
        return json.dumps({"text": message}, ensure_ascii=False).encode()

    async def send(self, notice: AlarmNotice) -> None:
        token = self.settings.token()
        secret = token.get_secret_value() if token else None
        headers = {
            **self.settings.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": _header_safe(notice.key),
            "X-Derrick-Event": notice.event,
        }
        if secret:
            if not (secret.isascii() and secret.isprintable()):
                raise DeliveryError(
                    f"{self._where}: the token holds characters a header cannot carry",
                    retryable=True,  # read again at every send: fixing it fixes delivery
                )
            headers["Authorization"] = f"Bearer {secret}"
        try:
            status, reason, retry_after, reply = await self._threads.run(
                self._post, self.body(notice), headers
            )
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(f"{self._where}: {_tls_failure(exc)}", retryable=False) from exc
        except http.client.HTTPException as exc:
            # Malformed or cut-off answer: a receiver (or a proxy) in trouble.
            what = f"{type(exc).__name__}: {exc}"[:REPLY_EXCERPT]
            raise DeliveryError(f"{self._where}: bad answer ({what})", retryable=True) from exc
        except OSError as exc:
            failure = _os_failure(exc, self.settings.timeout_s)
            raise DeliveryError(f"{self._where}: {failure}", retryable=True) from exc
        except ValueError as exc:  # http.client refused to build the request
            raise DeliveryError(
                f"{self._where}: cannot build the request: {type(exc).__name__}", retryable=False
            ) from exc
        if 200 <= status < 300:
            return
        retryable = status in (408, 425, 429) or status >= 500
        answer = f"{self._where} answered {status} {reason}".rstrip()
        excerpt = _excerpt(reply, [secret, *self.settings.headers.values()])
        raise DeliveryError(
            f"{answer}: {excerpt}" if excerpt else answer,
            retryable=retryable,
            retry_after_s=_retry_after(retry_after) if retryable else None,
        )

    def _post(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, str, str | None, bytes]:
        """One request on a fresh connection (in a worker thread)."""
        timeout = self.settings.timeout_s
        conn: http.client.HTTPConnection
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.request("POST", self._target, body=body, headers=dict(headers))
            response = conn.getresponse()
            reply = response.read(_REPLY_READ)
            return response.status, response.reason, response.getheader("Retry-After"), reply
        finally:
            conn.close()

    async def close(self) -> None:
        """Release the worker threads (no connection is held between sends)."""
        self._threads.close()


def message_id(key: str) -> str:
    """The e-mail ``Message-ID`` of the notice with idempotency key ``key``: the same key,
    the same id, so a repeated delivery is recognisable (and dropped by many mail stores)."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@derrick>"


def _mail_date(ts_ns: int) -> str:
    try:
        return email.utils.formatdate(ts_ns / 1e9, usegmt=True)
    except (OverflowError, OSError, ValueError):
        return email.utils.formatdate(usegmt=True)


def _smtp_reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return f"{code} {_one_line(text)}"[:REPLY_EXCERPT]


def _permanent(code: int) -> bool:
    """SMTP 5xx is permanent; 4xx (and a connection that died, code -1) is worth a retry."""
    return 500 <= code < 600


class EmailSender:
    """Send each notice as a plain-text e-mail (``render_text``) through SMTP.

    Headers: ``Subject``, ``From``, ``To``, ``Date`` (the notice's time),
    ``Message-ID`` (:func:`message_id` of the key), ``X-Derrick-Key``,
    ``X-Derrick-Event``; critical and high notices are marked important.

    SMTP 4xx answers, refused or dropped connections and timeouts are retryable; 5xx
    answers (and a server without STARTTLS or AUTH when they are configured) are not.
    When the server takes some recipients and refuses others: a temporary refusal
    raises a retryable error (the retry reaches the others again, with the same
    Message-ID); only permanent refusals are logged and the notice counts as delivered.
    """

    def __init__(self, settings: EmailChannel):
        self.settings = settings
        self._ssl = _tls_context(settings.ca_file) if settings.security != "none" else None
        self._envelope_from = email.utils.parseaddr(settings.sender)[1]
        self._envelope_to = [email.utils.parseaddr(item)[1] for item in settings.to]
        self._where = f"smtp {settings.host}:{settings.port}"
        self._threads = DaemonThreads("alarm-email", workers=4)

    def message(self, notice: AlarmNotice) -> EmailMessage:
        """The e-mail for ``notice``."""
        subject, body = render_text(notice)
        # Lines up to SMTP's 998 characters: a long X-Derrick-Key is not folded.
        msg = EmailMessage(policy=email.policy.SMTP.clone(max_line_length=998))
        msg["Subject"] = subject
        msg["From"] = self.settings.sender
        msg["To"] = ", ".join(self.settings.to)
        msg["Date"] = _mail_date(notice.ts_ns)
        msg["Message-ID"] = message_id(notice.key)
        msg["X-Derrick-Key"] = _header_safe(notice.key)
        msg["X-Derrick-Event"] = notice.event
        if notice.priority in ("critical", "high"):
            msg["Importance"] = "high"
            msg["X-Priority"] = "1"
        # quoted-printable keeps non-ASCII text 7-bit clean for any relay.
        msg.set_content(body, cte="7bit" if body.isascii() else "quoted-printable")
        return msg

    async def send(self, notice: AlarmNotice) -> None:
        password = self.settings.password()
        msg = self.message(notice)
        try:
            refused = await self._threads.run(self._deliver, msg, password)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _text in exc.recipients.values()]
            answers = "; ".join(
                f"{rcpt}: {_smtp_reply(code, text)}"
                for rcpt, (code, text) in exc.recipients.items()
            )
            raise DeliveryError(
                f"{self._where}: every recipient refused: {answers}",
                retryable=not all(_permanent(code) for code in codes),
            ) from exc
        except smtplib.SMTPResponseException as exc:
            answer = _smtp_reply(exc.smtp_code, exc.smtp_error)
            raise DeliveryError(
                f"{self._where}: {type(exc).__name__}: {answer}",
                retryable=not _permanent(exc.smtp_code),
            ) from exc
        except smtplib.SMTPServerDisconnected as exc:
            raise DeliveryError(f"{self._where}: disconnected: {exc}", retryable=True) from exc
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(f"{self._where}: {_tls_failure(exc)}", retryable=False) from exc
        except smtplib.SMTPException as exc:
            # STARTTLS or AUTH not offered, no common AUTH mechanism: configuration.
            raise DeliveryError(f"{self._where}: {exc}", retryable=False) from exc
        except OSError as exc:
            failure = _os_failure(exc, self.settings.timeout_s)
            raise DeliveryError(f"{self._where}: {failure}", retryable=True) from exc
        except ValueError as exc:  # e.g. a non-ASCII login smtplib cannot encode
            raise DeliveryError(
                f"{self._where}: cannot build the request: {type(exc).__name__}", retryable=False
            ) from exc
        self._check_partial(refused)

    def _check_partial(self, refused: dict[str, tuple[int, bytes]]) -> None:
        if not refused:
            return
        answers = {rcpt: _smtp_reply(code, text) for rcpt, (code, text) in refused.items()}
        if not all(_permanent(code) for code, _text in refused.values()):
            raise DeliveryError(
                f"{self._where}: recipients refused for now: "
                + "; ".join(f"{rcpt}: {answer}" for rcpt, answer in answers.items()),
                retryable=True,
            )
        log.warning("alarm e-mail refused for some recipients", smtp=self._where, refused=answers)

    def _deliver(
        self, msg: EmailMessage, password: SecretStr | None
    ) -> dict[str, tuple[int, bytes]]:
        """Connect, secure, log in, send (in a worker thread); the refused recipients."""
        settings = self.settings
        smtp: smtplib.SMTP
        if settings.security == "tls":
            smtp = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=settings.timeout_s, context=self._ssl
            )
        else:
            smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)
        with smtp:
            if settings.security == "starttls":
                smtp.starttls(context=self._ssl)
            if settings.username and password is not None:
                smtp.login(settings.username, password.get_secret_value())
            return smtp.send_message(msg, from_addr=self._envelope_from, to_addrs=self._envelope_to)

    async def close(self) -> None:
        """Release the worker threads (no connection is held between sends)."""
        self._threads.close()


def make_sender(settings: WebhookChannel | EmailChannel) -> Sender:
    """The sender for one channel's settings."""
    if isinstance(settings, WebhookChannel):
        return WebhookSender(settings)
    if isinstance(settings, EmailChannel):
        return EmailSender(settings)
    raise TypeError(f"no sender here for {type(settings).__name__}")
