"""Agent configuration: pydantic models, the one source of truth for every key.

Every key is documented in docs/config.md; config/agent.example.yaml is validated by the
tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from derrick import configfile
from derrick.broker import BrokerSettings
from derrick.configfile import StrictModel
from derrick.contract import Ident
from derrick.logs import LogSettings
from derrick.profile import Profile, Register, load_profile


class Device(StrictModel):
    """One PLC (one Modbus unit id) and what to read from it."""

    name: Ident
    asset: Ident
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    interval_s: float = Field(default=1.0, ge=0.05, le=3600)
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    max_registers: int = Field(default=125, ge=1, le=125)
    max_bits: int = Field(default=2000, ge=1, le=2000)
    profile: Profile | None = None
    kind: Ident | None = None
    registers: list[Register] | None = None
    tags: list[Ident] | None = Field(default=None, description="subset of the profile's tags")

    @field_validator("profile", mode="before")
    @classmethod
    def _load_profile(cls, value: object, info: ValidationInfo) -> object:
        """A profile given by name is read from the profiles dir next to the config file."""
        if not isinstance(value, str):
            return value
        config_path = (info.context or {}).get("config_path")
        try:
            return load_profile(value, Path(config_path).parent if config_path else None)
        except configfile.ConfigError as exc:
            raise ValueError(f"profile {value!r}: {exc}") from None

    @model_validator(mode="after")
    def _profile_or_registers(self) -> Self:
        if (self.profile is None) == (self.registers is None):
            raise ValueError("give either 'profile' (a register map by name) or 'registers'")
        if self.registers is not None and self.kind is None:
            raise ValueError("a device with inline 'registers' needs 'kind' (e.g. crane)")
        if self.registers is not None:
            Profile(kind=self.kind or "x", registers=self.registers)  # same overlap checks
        if self.tags is not None:
            known = {reg.tag for reg in self._all_registers()}
            unknown = sorted(set(self.tags) - known)
            if unknown:
                raise ValueError(f"tags not in the register map: {', '.join(unknown)}")
        return self

    def _all_registers(self) -> list[Register]:
        return list(self.profile.registers if self.profile else self.registers or [])

    @property
    def equipment_kind(self) -> str:
        return self.profile.kind if self.profile else str(self.kind)

    @property
    def selected_registers(self) -> list[Register]:
        """The registers this agent reads: the profile's, or the chosen subset."""
        regs = self._all_registers()
        if self.tags is None:
            return regs
        wanted = set(self.tags)
        return [reg for reg in regs if reg.tag in wanted]


class AgentIdentity(StrictModel):
    id: Ident = Field(description="unique per gateway; the MQTT client id and payload 'agent'")
    site: Ident


class AgentConfig(StrictModel):
    agent: AgentIdentity
    broker: BrokerSettings = BrokerSettings()
    devices: list[Device] = Field(min_length=1)
    queue_size: int = Field(
        default=1000, ge=1, le=1_000_000, description="messages held between poll and publish"
    )
    publish_timeout_s: float = Field(default=10.0, gt=0)
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _unique_devices(self) -> Self:
        names = [dev.name for dev in self.devices]
        dupes = sorted({name for name in names if names.count(name) > 1})
        if dupes:
            raise ValueError(f"device names must be unique: {', '.join(dupes)}")
        return self


def load_config(path: Path | str) -> AgentConfig:
    return configfile.load(path, AgentConfig)
