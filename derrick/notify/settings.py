"""Notification channel settings: where notices go (webhook, e-mail) and how the
secrets are read; :class:`DeliveryError`, the one error every sender raises.

Apart from the senders (:mod:`derrick.notify.channels`) so a program can validate its
config without loading ``http.client``, ``smtplib`` and ``email.message`` (about 2 MB
on a gateway that has no local annunciation).
"""

from __future__ import annotations

import email.utils
import os
import re
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from derrick.plumbing import configfile
from derrick.plumbing.configfile import StrictModel, beside_config


class DeliveryError(Exception):
    """A notice was not delivered. ``retryable``: trying again later may succeed.

    ``retry_after_s`` is the receiver's own ``Retry-After`` (HTTP 429 / 503), if it gave
    one, for the worker's backoff.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after_s: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


# ---------------------------------------------------------------------------- settings

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Set by the sender itself: a static header must not replace them.
_OWN_HEADERS = frozenset(
    {"content-type", "content-length", "host", "idempotency-key", "x-derrick-event",
     "transfer-encoding", "connection"}
)  # fmt: skip
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+$")


def _env_is_set(name: str | None) -> str | None:
    if name is not None and name not in os.environ:
        raise ValueError(f"environment variable {name} is not set")
    return name


def _read_secret(env: str | None, file: Path | None, what: str) -> SecretStr | None:
    """The secret now (rotation-friendly); ``DeliveryError`` when it cannot be read.

    Retryable: the value is read again at every send, so fixing the variable or the
    file fixes delivery without a restart.
    """
    try:
        if env:
            if not os.environ[env]:
                raise ValueError(f"environment variable {env} is empty")
            return SecretStr(os.environ[env])
        if file:
            text = file.read_text(encoding="utf-8").strip()
            if not text:
                raise ValueError(f"{what} file {file} is empty")
            return SecretStr(text)
    except KeyError as exc:
        raise DeliveryError(f"environment variable {env} is not set", retryable=True) from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DeliveryError(f"cannot read the {what}: {exc}", retryable=True) from exc
    return None


def _address(value: str) -> str:
    """An e-mail address, optionally with a display name: ``Crane crew <crew@example.com>``."""
    if "\r" in value or "\n" in value:
        raise ValueError("an address cannot contain a line break")
    _name, addr = email.utils.parseaddr(value)
    if not _ADDRESS.match(addr):
        raise ValueError(f"{value!r} is not an e-mail address (name@domain)")
    return value


class WebhookChannel(StrictModel):
    """POST every notice as JSON to an HTTP(S) endpoint: a custom receiver, Slack, Teams."""

    type: Literal["webhook"] = Field(description="webhook")
    url: str = Field(
        repr=False,
        description="http:// or https:// address the notices are POSTed to. Slack and "
        "Teams webhook URLs are secrets themselves: write ${VARIABLE}, not the URL",
    )
    format: Literal["json", "slack", "teams"] = Field(
        default="json",
        description="json: the notice itself (AlarmNotice); slack: Slack incoming webhook "
        '{"text"}; teams: {"text"} for an Office 365 connector or a Workflow reading text',
    )
    token_env: str | None = Field(
        default=None,
        description="environment variable holding a token sent as 'Authorization: Bearer'",
    )
    token_file: Path | None = Field(
        default=None,
        description="file holding that token (relative to the config file); read at each send",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description="extra static request headers, e.g. {X-Api-Key: ${API_KEY}}",
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA certificate(s) an https receiver's certificate must chain to; "
        "default: the system's trusted CAs",
    )
    timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="limit on the connect and on each read"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # The URL is never quoted back: Slack and Teams URLs carry a secret.
        if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("the url contains spaces or control characters")
        if not value.isascii():
            raise ValueError(
                "the url must be ASCII: percent-encode other characters, a host in punycode"
            )
        parts = urlsplit(value)
        if parts.scheme.lower() not in ("http", "https"):
            shown = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
            raise ValueError(f"{shown}: the url must start with http:// or https://")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the url's port is not a number from 1 to 65535") from None
        if not parts.hostname or port == 0:
            raise ValueError("the url names no host" if not parts.hostname else "port 0")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "credentials in the url are not supported: use token_env, token_file or headers"
            )
        return value

    @field_validator("token_env")
    @classmethod
    def _token_env_set(cls, value: str | None) -> str | None:
        return _env_is_set(value)

    @field_validator("token_file", "ca_file", mode="before")
    @classmethod
    def _relative_to_config(cls, value: object, info: ValidationInfo) -> object:
        return beside_config(value, info)

    @field_validator("token_file", "ca_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        return configfile.readable_file(value)

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _OWN_HEADERS:
                raise ValueError(f"header {name} is set by the sender and cannot be replaced")
            if any(ch in text for ch in "\r\n\0"):
                raise ValueError(f"header {name}: a value cannot contain a line break")
            try:
                text.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"header {name}: the value must be latin-1 text") from None
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> Self:
        if self.token_env and self.token_file:
            raise ValueError("give token_env or token_file, not both")
        if (self.token_env or self.token_file) and any(
            name.lower() == "authorization" for name in self.headers
        ):
            raise ValueError("an Authorization header and token_env/token_file: give one")
        return self

    def token(self) -> SecretStr | None:
        """The bearer token, read now; raises :class:`DeliveryError` when unreadable."""
        return _read_secret(self.token_env, self.token_file, "token")

    @property
    def origin(self) -> str:
        """``scheme://host:port`` of the URL: what logs and errors may show."""
        parts = urlsplit(self.url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        return f"{scheme}://{host}:{port}"


class EmailChannel(StrictModel):
    """Send every notice as a plain-text e-mail through an SMTP server."""

    type: Literal["email"] = Field(description="email")
    host: str = Field(default="127.0.0.1", min_length=1, description="SMTP server")
    port: int = Field(
        default=25, ge=1, le=65535, description="25; usually 587 with starttls, 465 with tls"
    )
    security: Literal["none", "starttls", "tls"] = Field(
        default="none",
        description="none: plain SMTP; starttls: upgrade after connecting (and refuse a "
        "server that cannot); tls: TLS from the first byte (SMTPS)",
    )
    username: str | None = Field(default=None, description="SMTP login, if the server needs one")
    password_env: str | None = Field(
        default=None, description="environment variable holding the SMTP password"
    )
    password_file: Path | None = Field(
        default=None,
        description="file holding the SMTP password (relative to the config file)",
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA certificate(s) the server's certificate must chain to (starttls, "
        "tls); default: the system's trusted CAs",
    )
    sender: str = Field(
        description="From address, e.g. 'Derrick alarms <derrick@example.com>'; also the "
        "envelope sender"
    )
    to: list[str] = Field(description="recipient addresses, at least one")
    timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="limit on the connect and on each reply"
    )

    @field_validator("sender")
    @classmethod
    def _sender_address(cls, value: str) -> str:
        return _address(value)

    @field_validator("to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one recipient address")
        return [_address(item) for item in value]

    @field_validator("password_env")
    @classmethod
    def _password_env_set(cls, value: str | None) -> str | None:
        return _env_is_set(value)

    @field_validator("password_file", "ca_file", mode="before")
    @classmethod
    def _relative_to_config(cls, value: object, info: ValidationInfo) -> object:
        return beside_config(value, info)

    @field_validator("password_file", "ca_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        return configfile.readable_file(value)

    @model_validator(mode="after")
    def _login(self) -> Self:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        has_password = bool(self.password_env or self.password_file)
        if self.username and not has_password:
            raise ValueError("username needs password_env or password_file")
        if has_password and not self.username:
            raise ValueError("a password needs a username")
        return self

    def password(self) -> SecretStr | None:
        """The SMTP password, read now; raises :class:`DeliveryError` when unreadable."""
        return _read_secret(self.password_env, self.password_file, "password")


ChannelSettings = Annotated[WebhookChannel | EmailChannel, Field(discriminator="type")]
"""The delivery channels built here; the MQTT channel joins this union elsewhere."""
