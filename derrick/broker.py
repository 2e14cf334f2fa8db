"""MQTT broker connection settings, shared by agent and collector configs.

Kept apart from :mod:`derrick.mqtt` so a config can be validated without paho installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator

from derrick.configfile import StrictModel


class BrokerSettings(StrictModel):
    """Where the broker is and how to log in. Secrets come from the environment or a file."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_env: str | None = Field(
        default=None, description="name of the environment variable holding the password"
    )
    password_file: Path | None = Field(default=None, description="file holding the password")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    reconnect_min_s: int = Field(default=1, ge=1)
    reconnect_max_s: int = Field(default=30, ge=1)

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
            value = os.environ.get(self.password_env)
            if value is None:
                raise ValueError(f"environment variable {self.password_env} is not set")
            return SecretStr(value)
        if self.password_file:
            return SecretStr(self.password_file.read_text(encoding="utf-8").strip())
        return None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"
