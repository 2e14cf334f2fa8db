"""MQTT broker connection settings, shared by agent and collector configs.

Kept apart from :mod:`derrick.mqtt.client` so a config can be validated without paho installed.

Files named in the ``broker`` section (``password_file``, ``tls.*_file``) are resolved
relative to the config file that names them, like profiles and rules; a model built in
code (no config file) takes them as given.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Self

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from derrick.plumbing import configfile
from derrick.plumbing.configfile import StrictModel, beside_config

MQTT_PORT = 1883
MQTTS_PORT = 8883


_resolve = beside_config


class BrokerTls(StrictModel):
    """TLS towards the broker (``mqtts``). An empty mapping trusts the system CAs."""

    ca_file: Path | None = Field(
        default=None, description="CA certificate(s) the broker's certificate must chain to"
    )
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(
        default=None, description="client private key, when not inside cert_file"
    )
    key_password_env: str | None = Field(
        default=None, description="environment variable holding the client key's passphrase"
    )
    server_hostname_check: bool = Field(
        default=True, description="the broker certificate must name the host we connect to"
    )

    @field_validator("ca_file", "cert_file", "key_file", mode="before")
    @classmethod
    def _relative_to_config(cls, value: object, info: ValidationInfo) -> object:
        return _resolve(value, info)

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        return configfile.readable_file(value)

    @model_validator(mode="after")
    def _key_needs_cert(self) -> Self:
        if (self.key_file or self.key_password_env) and not self.cert_file:
            raise ValueError("key_file / key_password_env need cert_file")
        return self

    def context(self) -> ssl.SSLContext:
        """A client SSLContext: TLS 1.2 or newer, broker certificate always verified.

        Reads the key passphrase from the environment now; raises ValueError (unset
        variable) or ssl.SSLError / OSError (unusable certificate or key).
        """
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = self.server_hostname_check
        ctx.verify_mode = ssl.CERT_REQUIRED
        if self.cert_file:
            passphrase = _env_secret(self.key_password_env) if self.key_password_env else ""
            # Always a passphrase: with None, OpenSSL would prompt on the terminal for an
            # encrypted key; "" makes such a key fail to load instead.
            ctx.load_cert_chain(self.cert_file, self.key_file, password=passphrase)
        return ctx


def _env_secret(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"environment variable {name} is not set")
    return value


class BrokerSettings(StrictModel):
    """Where the broker is and how to log in. Secrets come from the environment or a file."""

    host: str = "127.0.0.1"
    port: int = Field(default=MQTT_PORT, ge=1, le=65535, description="1883, or 8883 with tls")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_env: str | None = Field(
        default=None, description="name of the environment variable holding the password"
    )
    password_file: Path | None = Field(default=None, description="file holding the password")
    tls: BrokerTls | None = Field(default=None, description="connect with TLS (mqtts)")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    reconnect_min_s: int = Field(default=1, ge=1)
    reconnect_max_s: int = Field(default=30, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _tls_default_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("tls") is not None and "port" not in data:
            return {**data, "port": MQTTS_PORT}
        return data

    @field_validator("password_file", mode="before")
    @classmethod
    def _relative_to_config(cls, value: object, info: ValidationInfo) -> object:
        return _resolve(value, info)

    @field_validator("password_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        return configfile.readable_file(value)

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    def password(self) -> SecretStr | None:
        """Read the password when connecting; never stored in the model or logged."""
        if self.password_env:
            return SecretStr(_env_secret(self.password_env))
        if self.password_file:
            return SecretStr(self.password_file.read_text(encoding="utf-8").strip())
        return None

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"
