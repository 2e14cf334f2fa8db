"""Operator HTTP API and console of the collector's alarms (issues 6 and 18): settings
and the server's life.

The routes, who may use them and what they answer are in :mod:`collector.web`
(:mod:`collector.web.api` for the JSON API); the app is served by uvicorn inside the
collector's own loop (:class:`derrick.plumbing.asgi.AsgiServer`). With ``users_file``
set, named users log in to the console and use per-user API tokens; the shared token
(``token_env`` / ``token_file``) keeps working as a deprecated machine identity.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Self

import structlog
from pydantic import (
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from collector.alarms.forward import Forwarder
from collector.users import UsersError, UserStore
from collector.web.api import Commands, ListAlarms, RunCommand
from collector.web.app import Backend, Web, build_app
from collector.web.security import Authenticator, LoginThrottle, Sessions
from derrick.plumbing import configfile
from derrick.plumbing.asgi import AsgiError, AsgiServer
from derrick.plumbing.configfile import StrictModel

log = structlog.get_logger(__name__)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; any other name counts as beyond."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpApiSettings(StrictModel):
    """Operator HTTP API of the alarms: list, acknowledge, shelve... (off by default)."""

    enabled: bool = Field(default=False, description="serve the alarm API")
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address to listen on; anything but loopback needs a token",
    )
    port: int = Field(default=8470, ge=0, le=65535, description="TCP port; 0: any free port")
    token_env: str | None = Field(
        default=None, description="environment variable holding the bearer token"
    )
    token_file: Path | None = Field(
        default=None, description="file holding the bearer token, relative to the config file"
    )
    max_body_kb: int = Field(
        default=64, ge=1, le=1024, description="larger request bodies are refused (413)"
    )
    timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="a client must send its request within this (else 408); a command not "
        "answered within this gets 504",
    )

    users_file: Path | None = Field(
        default=None,
        description="named users, their roles, password hashes and API tokens (written by "
        "`derrick-collector users`), relative to the config file; turns on the console, "
        "logins and per-user tokens",
    )
    session_hours: float = Field(
        default=12.0, gt=0, le=168, description="a console login lasts this long (one shift)"
    )
    secure_cookies: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="mark the session cookie Secure: auto does so when the API serves TLS "
        "itself; always behind a TLS reverse proxy",
    )
    tls_cert_file: Path | None = Field(
        default=None, description="serve HTTPS with this certificate (PEM), beside the config"
    )
    tls_key_file: Path | None = Field(
        default=None, description="the certificate's private key (PEM), beside the config"
    )
    grafana_url: str | None = Field(
        default=None,
        description="the Grafana asset dashboard's URL; the console links each asset to it "
        "with var-site and var-asset filled in",
    )
    login_attempts: int = Field(
        default=5,
        ge=1,
        le=100,
        description="failed logins of one name or address before each further attempt is "
        "slowed down (429 with Retry-After, doubling up to 5 minutes)",
    )

    @field_validator("token_file", "users_file", "tls_cert_file", "tls_key_file")
    @classmethod
    def _beside_config(cls, value: Path | None, info: ValidationInfo) -> object:
        return configfile.beside_config(value, info)

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> Self:
        if self.token_env and self.token_file:
            raise ValueError("give token_env or token_file, not both")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("give both tls_cert_file and tls_key_file, or neither")
        if not is_loopback(self.host) and not (
            self.token_env or self.token_file or self.users_file
        ):
            raise ValueError(
                "an API that changes alarm state needs users or a token when it listens "
                "beyond loopback: set users_file (or the deprecated token_env / token_file), "
                f"or listen on 127.0.0.1 (host {self.host!r})"
            )
        return self

    def cookies_secure(self) -> bool:
        """Whether the session cookie carries the Secure flag."""
        if self.secure_cookies == "auto":
            return self.tls_cert_file is not None
        return self.secure_cookies == "always"

    def token(self) -> SecretStr | None:
        """The bearer token, read now; ValueError / OSError when it cannot be read."""
        if self.token_env:
            if self.token_env not in os.environ:
                raise ValueError(f"environment variable {self.token_env} is not set")
            return SecretStr(os.environ[self.token_env].strip())
        if self.token_file:
            return SecretStr(self.token_file.read_text(encoding="utf-8").strip())
        return None


class HttpApiError(Exception):
    """The API cannot start: no token or users to check, or the address cannot be
    listened on."""


class AlarmApi:
    """The operator API (and, with users, the console) over the collector's alarms.

    ``list_alarms`` returns the alarms as JSON-ready dicts (keys ``alarm_id``, ``site``,
    ``asset``, ``state``, ``active``... as in :class:`derrick.wire.payloads.AlarmStateMessage`);
    ``command`` carries out one command and returns the HTTP status and the result. The
    caller decides whether to serve at all (``settings.enabled``).
    """

    def __init__(
        self,
        settings: HttpApiSettings,
        *,
        list_alarms: ListAlarms,
        command: RunCommand,
        health: Callable[[], dict[str, Any]] | None = None,
        users: UserStore | None = None,
        **console: Any,
    ) -> None:
        self._settings = settings
        self._backend = Backend(
            list_alarms=list_alarms,
            command=command,
            health=health or (lambda: {"ok": True}),
            **console,
        )
        self._users = users
        self._peer_secret: SecretStr | None = None
        self.forwarder: Forwarder | None = None  # commands for other members' alarms
        self._web: Web | None = None
        self._server: AsgiServer | None = None
        self.port = 0

    @property
    def web(self) -> Web | None:
        return self._web

    def peer_secret(self, secret: SecretStr) -> None:
        """Accept commands other members of the group pass on with this secret."""
        self._peer_secret = secret
        if self._web is not None:
            self._web.auth.set_peer_secret(secret)

    async def start(self) -> int:
        """Listen; returns the bound port. HttpApiError when the token or the users
        cannot be read (or the token is empty) or the address cannot be listened on."""
        settings = self._settings
        try:
            secret = settings.token()
        except (ValueError, OSError) as exc:
            raise HttpApiError(f"alarm API token: {exc}") from exc
        if secret is not None and not secret.get_secret_value():
            raise HttpApiError("alarm API token is empty")
        users = self._users
        if users is None and settings.users_file is not None:
            users = UserStore(settings.users_file)
        if users is not None:
            try:
                count = users.load()
            except UsersError as exc:
                raise HttpApiError(f"alarm API users: {exc}") from exc
            log.info("alarm api users", users=count, file=str(settings.users_file))
        if secret is not None:
            log.warning("alarm api shared token is deprecated: give each user or machine "
                        "its own token (derrick-collector users token NAME)")  # fmt: skip
        sessions = Sessions(settings.session_hours * 3600)
        auth = Authenticator(users, secret, sessions, self._peer_secret)
        self._web = Web(
            settings=settings,
            backend=self._backend,
            auth=auth,
            throttle=LoginThrottle(settings.login_attempts),
            commands=Commands(self._backend.command, settings.timeout_s),
        )
        self._server = AsgiServer(
            build_app(self._web),
            settings.host,
            settings.port,
            name="alarm api",
            grace_s=settings.timeout_s + 1.0,
            head_timeout_s=settings.timeout_s,
            tls_cert=settings.tls_cert_file,
            tls_key=settings.tls_key_file,
        )
        try:
            self.port = await self._server.start()
        except AsgiError as exc:
            self._server = None
            message = str(exc).replace("cannot listen on", "cannot listen for the alarm API on")
            raise HttpApiError(message) from exc
        return self.port

    async def close(self) -> None:
        """Stop listening; live streams end, requests still open get ``timeout_s``, and
        commands still running after a 504 are cancelled."""
        if self._server is None or self._web is None:
            return
        self._web.closing.set()
        await self._server.close()
        await self._web.commands.close()
        self._server = None
