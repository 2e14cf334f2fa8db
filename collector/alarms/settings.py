"""The ``alarms:`` section of the collector config (rules, state, routes, channels, API)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from collector.alarms.authority import MqttCommands
from collector.alarms.httpapi import HttpApiSettings
from collector.alarms.notify import FloodSettings, RetrySettings, RouteSettings
from derrick.alarms.kpi import KpiSettings
from derrick.alarms.rules import RuleSet, load_rule_files, rule_files_for_config
from derrick.notify.settings import ChannelSettings
from derrick.plumbing import configfile
from derrick.plumbing.configfile import StrictModel
from derrick.wire.ids import Ident


class OutboxSettings(StrictModel):
    max_pending: int = Field(
        default=100_000,
        ge=100,
        description="undelivered notices kept per channel; beyond it the oldest, lowest "
        "priority first, are dropped (logged and counted)",
    )
    keep_delivered_h: float = Field(
        default=168.0, gt=0, description="delivered notices are kept this long, then purged"
    )


class AlarmSettings(StrictModel):
    """Alarm rules, their persisted state, notification routes and the operator API."""

    rules: list[Path] = Field(
        default_factory=list,
        description="rule files (config/alarm-rules/*.yaml), relative to this config; "
        "none: no alarms",
    )
    state: Path = Field(
        default=Path("state") / "alarms.db",
        description="alarm records and the notification outbox (SQLite); default "
        "state/alarms-<collector.id>.db beside the config",
    )
    members: list[Ident] = Field(
        default_factory=list,
        description="ids of every collector sharing the alarm work (the same list on each); "
        "each asset's alarms belong to one of them by a stable hash; none: this one alone",
    )
    tick_s: float = Field(
        default=1.0, gt=0, le=60, description="timer resolution: delays, staleness, reminders"
    )
    channels: dict[Ident, ChannelSettings] = Field(
        default_factory=dict, description="notification channels by name (webhook, email)"
    )
    routes: list[RouteSettings] = Field(
        default_factory=list, description="which notices reach which channels"
    )
    flood: FloodSettings = FloodSettings()
    retry: RetrySettings = RetrySettings()
    outbox: OutboxSettings = OutboxSettings()
    http: HttpApiSettings = HttpApiSettings()
    mqtt_commands: MqttCommands = Field(
        default="auto",
        description="operator commands over MQTT: verified (a user's API token in each "
        "command), open (who as given; deprecated), off; auto: verified when "
        "http.users_file is set, else open",
    )
    kpi: KpiSettings = KpiSettings()
    _ruleset: RuleSet = PrivateAttr(default_factory=RuleSet)

    @field_validator("rules", "state")
    @classmethod
    def _beside_config(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, list):
            return [configfile.beside_config(item, info) for item in value]
        return configfile.beside_config(value, info)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _known_channels(self) -> Self:
        names = set(self.channels)
        for index, route in enumerate(self.routes):
            for name in [*route.channels, *route.escalate_to]:
                if name not in names:
                    known = ", ".join(sorted(names)) or "none defined"
                    raise ValueError(
                        f"routes[{index}] ({route.name}): unknown channel {name!r} "
                        f"(alarms.channels: {known})"
                    )
        configfile.require_unique([route.name for route in self.routes], "route names")
        if self.mqtt_commands == "verified" and self.http.users_file is None:
            raise ValueError(
                "mqtt_commands: verified checks each command's token against named users: "
                "set http.users_file"
            )
        self._ruleset = rule_files_for_config(self.rules)
        return self

    @property
    def ruleset(self) -> RuleSet:
        """The rules as loaded with the config."""
        return self._ruleset

    def load_rules(self) -> RuleSet:
        """Read every rule file again (start-up and reload), merged into one set.

        Raises ConfigError naming the file, key and reason; ValueError when a rule name
        appears in two files.
        """
        return load_rule_files(self.rules)
