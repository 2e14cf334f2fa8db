"""Agent configuration: pydantic models, the one source of truth for every key.

Every key is documented in docs/config.md; every YAML in config/ is validated by the
tests.

A device's *effective* register map (:attr:`Device.selected_registers`) is its profile
(or inline ``registers``) with the site's ``overrides`` applied and re-validated, cut
down to ``tags``, with the device-level ``deadband`` / ``heartbeat_s`` filled in for tags
that set none. It is computed once, at validation, so every error is a start-up error.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from derrick.alarms.rules import AgentOfflineRule, Rule, RuleSet, rule_files_for_config
from derrick.mqtt.settings import BrokerSettings
from derrick.notify.settings import ChannelSettings
from derrick.plc.profile import (
    DEFAULT_GROUP,
    DeadbandSetting,
    Profile,
    Register,
    load_profile,
    map_problems,
)
from derrick.plc.registers import Order
from derrick.plumbing import configfile
from derrick.plumbing.configfile import StrictModel
from derrick.plumbing.logs import LogSettings
from derrick.plumbing.loops import EventLoopChoice
from derrick.spool.settings import SpoolSettings, default_spool_path
from derrick.wire.ids import Ident
from derrick.wire.payloads import AlarmPriority

Transport = Literal["tcp", "rtu-over-tcp", "rtu"]
TCP_TRANSPORTS = ("tcp", "rtu-over-tcp")
SERIAL_KEYS = ("baudrate", "parity", "stopbits", "bytesize")
BAUDRATES = (300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400)
Interval = Annotated[float, Field(ge=0.05, le=3600)]


class Framer(StrEnum):
    """How Modbus frames travel on a TCP socket."""

    SOCKET = "socket"  # Modbus TCP: MBAP header with transaction id
    RTU = "rtu"  # RTU over TCP: unit id, PDU, CRC


def connection_key(
    *,
    host: str | None = None,
    port: int = 502,
    framer: str = "socket",
    serial_port: str | None = None,
) -> str:
    """The identity of an endpoint: devices with the same key must share one connection.

    TCP: ``tcp://host:port`` or ``rtu-over-tcp://host:port``. Serial: ``serial://`` and
    the resolved path, so a /dev/serial/by-id link and its /dev/ttyUSB0 are one bus (a
    serial port opens exclusively: a second connection to it would fail).

    Pure (no pymodbus): :attr:`Device.link_key` and :mod:`agent.modbus` both use it.
    """
    if (host is None) == (serial_port is None):
        raise ValueError("connection_key needs host (TCP) or serial_port, not both")
    if serial_port is not None:
        return f"serial://{os.path.realpath(serial_port)}"
    scheme = "tcp" if Framer(framer) is Framer.SOCKET else "rtu-over-tcp"
    return f"{scheme}://{host.lower()}:{port}"


class RegisterOverride(StrictModel):
    """Per-site changes to one profile tag (a PLC programmed differently on this site).

    Only the keys given change. ``deadband: null`` / ``heartbeat_s: null`` remove the
    profile's value (the device default then applies).
    """

    address: int | None = Field(default=None, ge=0, le=65535)
    protocol_address: bool | None = None
    byte_order: Order | None = None
    word_order: Order | None = None
    scale: float | None = None
    offset: float | None = None
    unit: str | None = Field(default=None, max_length=16)
    description: str | None = None
    deadband: DeadbandSetting = None
    heartbeat_s: float | None = Field(default=None, gt=0)
    group: Ident | None = None

    def changes(self) -> dict[str, object]:
        """The keys this override sets (explicit nulls only where null means something)."""
        return {
            key: getattr(self, key)
            for key in self.model_fields_set
            if getattr(self, key) is not None or key in ("deadband", "heartbeat_s")
        }


def _apply(reg: Register, override: RegisterOverride) -> Register:
    """``reg`` with ``override`` applied, validated again as a whole register."""
    try:
        return Register.model_validate({**reg.model_dump(exclude_unset=True), **override.changes()})
    except ValidationError as exc:
        raise ValueError(f"override of tag {reg.tag!r}: {configfile.one_line(exc)}") from None


class Device(StrictModel):
    """One PLC (one Modbus unit id) and what to read from it."""

    name: Ident
    asset: Ident
    transport: Transport = "tcp"
    host: str | None = Field(default=None, min_length=1, description="tcp, rtu-over-tcp")
    port: int | None = Field(default=None, ge=1, le=65535, description="default 502")
    serial_port: str | None = Field(default=None, min_length=1, description="rtu: /dev/ttyS0")
    baudrate: int = 19200
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(default=1, ge=0, le=255)
    interval_s: Interval = 1.0
    poll_groups: dict[Ident, Interval] = Field(
        default_factory=dict, description="group name -> interval; 'default' is interval_s"
    )
    timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="seconds to wait for the answer to one request of this device (also "
        "on a link shared with other devices, each of which keeps its own)",
    )
    retries: int = Field(default=1, ge=0, le=5)
    breaker_failures: int = Field(default=3, ge=1, le=1000)
    breaker_open_s: float = Field(default=30.0, ge=1, le=3600)
    max_registers: int = Field(
        default=125,
        ge=1,
        le=125,
        description="most registers one read asks for (the protocol's limit is 125)",
    )
    max_bits: int = Field(
        default=2000,
        ge=1,
        le=2000,
        description="most coils or discrete inputs one read asks for (protocol: 2000)",
    )
    max_gap: int = Field(default=0, ge=0, le=124)
    pause_between_requests_s: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="quiet time between the end of one request (its answer, or its "
        "timeout) and the next on this device's link; 0: none",
    )
    delay_after_connect_s: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="wait this long after the TCP connection (or the serial port) opens "
        "before the first request; 0: none",
    )
    reconnect_every_cycle: bool = Field(
        default=False,
        description="close the connection after every poll cycle and open it again for "
        "the next (devices that leak or lock sessions)",
    )
    profile: Profile | None = None
    kind: Ident | None = None
    registers: list[Register] | None = None
    tags: list[Ident] | None = Field(default=None, description="subset of the profile's tags")
    overrides: dict[Ident, RegisterOverride] = Field(default_factory=dict)
    deadband: DeadbandSetting = None
    heartbeat_s: float | None = Field(default=None, gt=0)

    _selected: tuple[Register, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: object) -> object:
        """TCP transports default to port 502; a serial device has no port."""
        if (
            isinstance(data, dict)
            and data.get("transport", "tcp") in TCP_TRANSPORTS
            and data.get("port") is None
        ):
            return {**data, "port": 502}
        return data

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
            raise ValueError(configfile.nested(f"profile {value!r}:", exc)) from None

    @field_validator("baudrate")
    @classmethod
    def _standard_baudrate(cls, value: int) -> int:
        if value not in BAUDRATES:
            raise ValueError(
                f"baudrate {value} is not a standard rate: {', '.join(map(str, BAUDRATES))}"
            )
        return value

    @field_validator("poll_groups")
    @classmethod
    def _no_default_group(cls, value: dict[str, float]) -> dict[str, float]:
        if DEFAULT_GROUP in value:
            raise ValueError(f"the {DEFAULT_GROUP!r} group's interval is interval_s")
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        self._check_link()
        if (self.profile is None) == (self.registers is None):
            raise ValueError("give either 'profile' (a register map by name) or 'registers'")
        if self.registers is not None and self.kind is None:
            raise ValueError("a device with inline 'registers' needs 'kind' (e.g. crane)")
        regs = self._overridden(self._all_registers())
        problems = map_problems(regs)
        if problems:
            raise ValueError("\n".join(problems))
        if self.tags is not None:
            known = {reg.tag for reg in regs}
            unknown = sorted(set(self.tags) - known)
            if unknown:
                raise ValueError(f"tags not in the register map: {', '.join(unknown)}")
            wanted = set(self.tags)
            regs = [reg for reg in regs if reg.tag in wanted]
        self._selected = tuple(self._with_defaults(reg) for reg in regs)
        self._check_groups()
        return self

    def _check_link(self) -> None:
        given = self.model_fields_set
        if self.transport in TCP_TRANSPORTS:
            if self.host is None:
                raise ValueError(f"transport {self.transport} needs host")
            serial = [key for key in ("serial_port", *SERIAL_KEYS) if key in given]
            if serial:
                raise ValueError(
                    f"{', '.join(serial)}: only for transport rtu (a serial line), "
                    f"not {self.transport}"
                )
        else:
            if self.serial_port is None:
                raise ValueError("transport rtu needs serial_port (e.g. /dev/ttyS0)")
            tcp = [key for key in ("host", "port") if key in given]
            if tcp:
                raise ValueError(f"{', '.join(tcp)}: not for transport rtu (use serial_port)")
        if self.transport != "tcp" and not 1 <= self.unit_id <= 247:
            raise ValueError(
                f"unit_id {self.unit_id}: a serial (RTU) slave address is 1..247 "
                "(0 is broadcast and never answers)"
            )

    def _overridden(self, regs: list[Register]) -> list[Register]:
        known = {reg.tag for reg in regs}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise ValueError(f"overrides for tags not in the register map: {', '.join(unknown)}")
        return [
            _apply(reg, self.overrides[reg.tag]) if reg.tag in self.overrides else reg
            for reg in regs
        ]

    def _with_defaults(self, reg: Register) -> Register:
        update: dict[str, object] = {}
        if reg.deadband is None and self.deadband is not None:
            update["deadband"] = self.deadband
        if reg.heartbeat_s is None and self.heartbeat_s is not None:
            update["heartbeat_s"] = self.heartbeat_s
        return reg.model_copy(update=update) if update else reg

    def _check_groups(self) -> None:
        known = {DEFAULT_GROUP, *self.poll_groups}
        problems = [
            f"tag {reg.tag!r} is in poll group {reg.group!r}, which device {self.name!r} "
            f"does not define (poll_groups: {', '.join(sorted(self.poll_groups)) or 'none'})"
            for reg in self._selected
            if reg.group not in known
        ]
        if problems:
            raise ValueError("\n".join(problems))

    def _all_registers(self) -> list[Register]:
        return list(self.profile.registers if self.profile else self.registers or [])

    @property
    def equipment_kind(self) -> str:
        return self.profile.kind if self.profile else str(self.kind)

    @property
    def selected_registers(self) -> list[Register]:
        """The registers this agent reads, as it reads them: the profile's (or the chosen
        ``tags``), with ``overrides`` applied and the device's default deadband and
        heartbeat filled in."""
        return list(self._selected)

    def group_intervals(self) -> dict[str, float]:
        """Poll interval per group that has at least one selected tag."""
        intervals = {DEFAULT_GROUP: self.interval_s, **self.poll_groups}
        used = {reg.group for reg in self._selected}
        return {name: interval for name, interval in intervals.items() if name in used}

    def registers_in_group(self, name: str) -> list[Register]:
        """Selected registers polled in group ``name``; KeyError for an undefined group."""
        if name != DEFAULT_GROUP and name not in self.poll_groups:
            raise KeyError(name)
        return [reg for reg in self._selected if reg.group == name]

    @property
    def link_key(self) -> str:
        """The physical link: devices with the same key share one TCP connection (a
        gateway) or one serial port, and are told apart by unit_id.

        ``tcp://host:port``, ``rtu-over-tcp://host:port`` or ``serial://`` and the resolved
        port path: :func:`connection_key` of this device, the key
        :class:`agent.modbus.ModbusConnection` gives the connection it opens.
        """
        if self.transport == "rtu":
            return connection_key(serial_port=str(self.serial_port))
        return connection_key(host=str(self.host), port=self.port or 502, framer=self.framer)

    @property
    def framer(self) -> Framer:
        """How frames travel on the TCP socket (RTU over TCP, or Modbus TCP); a serial
        device's frames are RTU."""
        return Framer.SOCKET if self.transport == "tcp" else Framer.RTU

    @property
    def endpoint(self) -> str:
        """Where the device is, for logs: ``host:port`` or the serial port."""
        if self.transport == "rtu":
            return str(self.serial_port)
        return f"{self.host}:{self.port}"


class LocalAnnunciation(StrictModel):
    """``alarms.local`` of an agent: who on the site LAN hears of its edge alarms
    (:mod:`agent.annunciate`)."""

    channel: ChannelSettings = Field(
        description="a webhook (type: webhook, url, ...) or e-mail relay (type: email, "
        "...) on the site network; the keys of the collector's alarms.channels"
    )
    priorities: list[AlarmPriority] = Field(
        default=["critical", "high"], min_length=1, description="alarm priorities announced"
    )
    when: Literal["offline", "always"] = Field(
        default="offline",
        description="offline: only alarms that start while the broker is unreachable; "
        "always: every alarm (the crews may then hear of it twice: here and centrally)",
    )
    retry_min_s: float = Field(default=1.0, gt=0, description="first retry after a failure")
    retry_max_s: float = Field(default=30.0, gt=0, description="longest wait between retries")
    max_pending: int = Field(
        default=1000, ge=10, description="notices waiting for the receiver; beyond, the oldest go"
    )


class EdgeAlarmSettings(StrictModel):
    """Alarm rules the agent evaluates itself, at the edge (see :mod:`agent.alarms`)."""

    rules: list[Path] = Field(
        min_length=1,
        description="rule files (the collector's format, config/alarm-rules/*.yaml), "
        "relative to this config; every rule must apply to a device of this agent",
    )
    tick_s: float = Field(
        default=1.0, gt=0, le=60, description="timer resolution: delays, staleness"
    )
    local: LocalAnnunciation | None = Field(
        default=None, description="a receiver on the site LAN told of these alarms directly"
    )
    _ruleset: RuleSet = PrivateAttr(default_factory=RuleSet)

    @field_validator("rules")
    @classmethod
    def _beside_config(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        return [configfile.beside_config(item, info) for item in value]  # type: ignore[misc]

    @model_validator(mode="after")
    def _load(self) -> Self:
        self._ruleset = rule_files_for_config(self.rules)
        return self

    @property
    def ruleset(self) -> RuleSet:
        """The rules as loaded with the config."""
        return self._ruleset


def edge_rules(rules: RuleSet, site: str, device: Device) -> list[Rule]:
    """The rules of ``rules`` that apply to ``device`` (of an agent at ``site``)."""
    return [
        rule
        for rule in rules.rules
        if not isinstance(rule, AgentOfflineRule)
        and rule.matches(site, device.asset, device.name, device.equipment_kind)
    ]


def edge_rule_problems(rules: RuleSet, site: str, devices: list[Device]) -> list[str]:
    """Why rules cannot be evaluated by this agent: each must apply to one of its
    devices at least, and every tag it reads must be polled on each device it applies to.
    Agent-offline rules stay with the collector (an agent cannot see itself go away)."""
    problems = []
    for rule in rules.rules:
        if isinstance(rule, AgentOfflineRule):
            problems.append(
                f"rule {rule.name!r} ({rule.type}) stays with the collector: an agent "
                "cannot report its own absence"
            )
            continue
        devices_of_rule = [dev for dev in devices if rule in edge_rules(rules, site, dev)]
        if not devices_of_rule:
            listed = ", ".join(f"{d.name} ({d.asset}, kind {d.equipment_kind})" for d in devices)
            problems.append(
                f"rule {rule.name!r} applies to no device of this agent (site {site!r}, "
                f"devices {listed}); leave it to the collector"
            )
        for dev in devices_of_rule:
            polled = {reg.tag for reg in dev.selected_registers}
            missing = sorted(rule.reads() - polled)
            if missing:
                problems.append(
                    f"rule {rule.name!r} reads {', '.join(missing)}, which device "
                    f"{dev.name!r} does not poll"
                )
    return problems


class AgentIdentity(StrictModel):
    id: Ident = Field(description="unique per gateway; the MQTT client id and payload 'agent'")
    site: Ident


class SparkplugEdgeSettings(StrictModel):
    """The agent as a Sparkplug B edge node (``format: sparkplug``; agent.sparkplug)."""

    primary_host: Ident | None = Field(
        default=None,
        description="host application id: publish only while its STATE says online, hold "
        "messages in the spool while it is offline (store and forward)",
    )
    compact: bool = Field(
        default=False,
        description="data metrics without timestamps, a poll's readings stamped with the "
        "poll's time, the message's (about 7 bytes less per reading; not what the spec "
        "says: for hosts that read a missing metric timestamp as the message's, as "
        "Derrick's collector does)",
    )


class AgentConfig(StrictModel):
    agent: AgentIdentity
    broker: BrokerSettings = BrokerSettings()
    format: Literal["json", "sparkplug"] = Field(
        default="sparkplug",
        description="the wire: Sparkplug B 3.0 (agent.sparkplug), or Derrick's JSON contract",
    )
    sparkplug: SparkplugEdgeSettings = SparkplugEdgeSettings()
    devices: list[Device] = Field(min_length=1)
    align_polls: bool = Field(
        default=True,
        description="poll on the wall clock's grid of each interval, a fleet together; "
        "false: each device's first poll at random within its first interval",
    )
    event_loop: EventLoopChoice = Field(
        default="auto",
        description="uvloop (libuv, in C: about a fifth less CPU on small PLCs) or "
        "asyncio's own loop; auto: uvloop where it is installed",
    )
    publish_timeout_s: float = Field(default=10.0, gt=0)
    publish_window: int = Field(
        default=20, ge=1, le=100, description="messages awaiting PUBACK at once"
    )
    spool: SpoolSettings = SpoolSettings()
    metrics_interval_s: float = Field(default=30.0, ge=5, le=3600)
    log: LogSettings = LogSettings()
    alarms: EdgeAlarmSettings | None = Field(
        default=None, description="alarm rules evaluated at the edge; none: the collector's"
    )

    @field_validator("alarms")
    @classmethod
    def _edge_rules_fit(
        cls, alarms: EdgeAlarmSettings | None, info: ValidationInfo
    ) -> EdgeAlarmSettings | None:
        """Every rule applies to a device of this agent, on tags it polls."""
        agent, devices = info.data.get("agent"), info.data.get("devices")
        if alarms is None or agent is None or devices is None:
            return alarms  # those keys have their own errors
        problems = edge_rule_problems(alarms.ruleset, agent.site, devices)
        if problems:
            raise ValueError("\n".join(problems))
        return alarms

    @field_validator("devices")
    @classmethod
    def _devices_fit_together(cls, devices: list[Device]) -> list[Device]:
        configfile.require_unique([dev.name for dev in devices], "device names")
        problems = _shared_link_problems(devices)
        if problems:
            raise ValueError("\n".join(problems))
        return devices

    @model_validator(mode="before")
    @classmethod
    def _default_spool_path(cls, data: object, info: ValidationInfo) -> object:
        """The spool defaults to ``state/derrick-agent-<agent.id>.db`` beside the config."""
        agent = data.get("agent") if isinstance(data, dict) else None
        return default_spool_path(
            data, "agent", agent.get("id") if isinstance(agent, dict) else None
        )


def _shared_link_problems(devices: list[Device]) -> list[str]:
    """Devices on one link need distinct unit ids; on one serial port, the same settings."""
    problems = []
    first: dict[str, Device] = {}
    by_unit: dict[tuple[str, int], Device] = {}
    for dev in devices:
        key = dev.link_key
        other = by_unit.setdefault((key, dev.unit_id), dev)
        if other is not dev:
            problems.append(
                f"devices {other.name!r} and {dev.name!r} are both unit_id {dev.unit_id} "
                f"on {key}: devices sharing a link need distinct unit ids"
            )
        leader = first.setdefault(key, dev)
        if dev.transport == "rtu" and leader is not dev:
            differ = [
                f"{setting} {getattr(leader, setting)} vs {getattr(dev, setting)}"
                for setting in SERIAL_KEYS
                if getattr(leader, setting) != getattr(dev, setting)
            ]
            if differ:
                problems.append(
                    f"devices {leader.name!r} and {dev.name!r} share serial port "
                    f"{dev.serial_port} but differ in {', '.join(differ)}"
                )
    return problems


def load_config(path: Path | str) -> AgentConfig:
    return configfile.load(path, AgentConfig)
