"""Collector configuration: pydantic models, the one source of truth for every key."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from collector.alarms.settings import AlarmSettings
from collector.validate import Window, day_ns
from derrick.mqtt.settings import BrokerSettings
from derrick.plumbing import configfile
from derrick.plumbing.configfile import StrictModel
from derrick.plumbing.logs import LogSettings
from derrick.spool.settings import SpoolSettings, default_spool_path
from derrick.wire.ids import Ident


class _Secret(StrictModel):
    """A secret is named by an environment variable or a file, never written in config."""

    def _secret(self, env: str | None, file: Path | None) -> SecretStr | None:
        if env:
            if env not in os.environ:
                raise ValueError(f"environment variable {env} is not set")
            return SecretStr(os.environ[env])
        if file:
            return SecretStr(file.read_text(encoding="utf-8").strip())
        return None


class InfluxV1(_Secret):
    """InfluxDB 1.x ``/write`` API (every 1.x, and VictoriaMetrics)."""

    api: Literal["v1"]
    url: str = "http://127.0.0.1:8086"
    database: Ident = "derrick"
    retention_policy: str = ""
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    create_database: bool = Field(default=False, description="CREATE DATABASE at start-up")
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("password_file")
    @classmethod
    def _beside_config(cls, value: Path | None, info: ValidationInfo) -> object:
        return configfile.beside_config(value, info)

    def password(self) -> SecretStr | None:
        return self._secret(self.password_env, self.password_file)


class InfluxV2(_Secret):
    """InfluxDB v2 write API through influxdb-client (2.x, 3.x, Cloud, 1.8+)."""

    api: Literal["v2"]
    url: str = "http://127.0.0.1:8086"
    org: str = Field(default="-", description="'-' for InfluxDB 1.8+")
    bucket: str = Field(default="derrick", description="'database/retention' for 1.8+")
    token_env: str | None = None
    token_file: Path | None = None
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("token_file")
    @classmethod
    def _beside_config(cls, value: Path | None, info: ValidationInfo) -> object:
        return configfile.beside_config(value, info)

    def token(self) -> SecretStr | None:
        return self._secret(self.token_env, self.token_file)


InfluxSettings = Annotated[InfluxV1 | InfluxV2, Field(discriminator="api")]


class BatchSettings(StrictModel):
    """When a batch of lines is written (see collector.store)."""

    max_lines: int = Field(default=5000, ge=1, le=100_000)
    max_delay_s: float = Field(
        default=0.5, gt=0, le=60, description="write at the latest this long after the first"
    )
    pause_s: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="write as soon as nothing new arrived for this long (arrivals paused)",
    )


class IngestSettings(StrictModel):
    """How strictly messages are taken, and how the broker may feed the collector."""

    ts_min: date = Field(
        default=date(2000, 1, 1), description="readings stamped before this day are rejected"
    )
    ts_max: date = Field(
        default=date(2100, 1, 1), description="readings stamped on or after it are rejected"
    )
    field_types: bool = Field(
        default=True,
        description="learn each telemetry field's type (InfluxDB's field keys, first value) "
        "and reject a message that contradicts it before writing",
    )
    mqtt_version: Literal["5", "3.1.1"] = Field(
        default="5",
        description="5 announces receive_maximum to the broker; 3.1.1 is held to the "
        "broker's own in-flight limit (mosquitto: max_inflight_messages, 20 by default)",
    )
    receive_maximum: int = Field(
        default=10_000,
        ge=1,
        le=65535,
        description="unacknowledged messages the broker may send at once (MQTT 5): "
        "what arrives while a write to InfluxDB takes long waits here, not in the "
        "broker's queue (1,000 by default, then dropped)",
    )
    max_deliveries: int = Field(
        default=3,
        ge=2,
        le=100,
        description="a message redelivered this often without being stored or rejected is "
        "dead-lettered as poison",
    )
    deliveries: Path = Field(
        default=Path("state") / "deliveries.db",
        description="redelivery ledger; default state/deliveries-<collector.id>.db",
    )
    stall_s: float = Field(
        default=30.0,
        gt=0,
        description="/health is unhealthy when a stage has not moved this long while "
        "messages wait for it",
    )
    broker_drops: bool = Field(
        default=True,
        description="watch the broker's drop counter ($SYS/broker/publish/messages/"
        "dropped, mosquitto) and alarm when it rises",
    )
    loss_settle_s: float = Field(
        default=5.0,
        gt=0,
        description="a missing message is lost for certain when its agent reports an "
        "empty spool this long after the hole appeared",
    )
    loss_clear_s: float = Field(
        default=300.0, gt=0, description="a loss alarm clears after this long without loss"
    )

    @field_validator("deliveries")
    @classmethod
    def _relative_to_config(cls, value: Path, info: ValidationInfo) -> object:
        return configfile.beside_config(value, info)

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.ts_max <= self.ts_min:
            raise ValueError("ts_max must be after ts_min")
        return self

    def window(self) -> Window:
        return Window(day_ns(self.ts_min), day_ns(self.ts_max))


class SparkplugHostSettings(StrictModel):
    """Reading Sparkplug B edge nodes (collector.sparkplug), beside the JSON contract."""

    enabled: bool = Field(default=True, description="subscribe to spBv1.0 births, data, deaths")
    host_id: Ident | None = Field(
        default=None,
        description="publish a retained STATE as this primary host application (edge nodes "
        "configured with it publish only while it is online)",
    )
    reorder_s: float = Field(
        default=2.0, gt=0, le=60, description="a seq gap not filled this long asks for a rebirth"
    )
    rebirth_every_s: float = Field(
        default=10.0, gt=0, le=3600, description="at most one rebirth request per node this often"
    )
    hold_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="data waiting for its device's birth this long is dead-lettered",
    )
    max_held: int = Field(
        default=10_000,
        ge=0,
        le=1_000_000,
        description="data messages held unacknowledged for a birth, at most",
    )


class CollectorIdentity(StrictModel):
    id: Ident = Field(description="MQTT client id; keep it stable so the session persists")
    group: Ident | None = Field(
        default=None,
        description="MQTT shared-subscription group: collectors of one group split the "
        "messages between them; none (the default): one collector takes everything",
    )


class DeadLetterSettings(StrictModel):
    """Where rejected messages and refused points are kept, and how much of them."""

    dir: Path = Field(
        default=Path("state") / "deadletter",
        description="default state/deadletter-<collector.id>/ next to the config file",
    )
    max_mb: float = Field(default=100, gt=0)
    file_mb: float | None = Field(default=None, gt=0)
    max_payload_kb: int = Field(default=64, ge=1, le=1000)

    @field_validator("dir")
    @classmethod
    def _relative_to_config(cls, value: Path, info: ValidationInfo) -> object:
        return configfile.beside_config(value, info)


class EtcdSettings(_Secret):
    """Collectors that fail over (docs/failover.md): membership, asset owners, alarm
    records and notices in etcd. Without this section a collector runs alone on its
    SQLite files."""

    endpoints: list[str] = Field(
        min_length=1, description="etcd client endpoints, host:port, every member of the cluster"
    )
    prefix: str = Field(
        default="/derrick",
        pattern=r"^/[A-Za-z0-9_./-]*[^/]$",
        description="key prefix; collectors sharing one prefix share their alarms",
    )
    ttl_s: int = Field(
        default=10,
        ge=2,
        le=300,
        description="lease TTL: a dead collector's assets move to the others this long "
        "after its last keepalive (plus refresh_s)",
    )
    refresh_s: float = Field(
        default=0.5, gt=0, le=5, description="how often members and owners are read again"
    )
    timeout_s: float = Field(default=2.0, gt=0, le=30, description="per request and endpoint")
    api_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="how the other collectors reach this one's operator API to pass "
        "commands on; default http://<alarms.http.host>:<port>, the host name when it "
        "listens on every address",
    )
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _timing(self) -> Self:
        if self.refresh_s * 3 > self.ttl_s:
            raise ValueError(f"refresh_s ({self.refresh_s}) must be at most ttl_s / 3")
        for endpoint in self.endpoints:
            host, _, port = endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"endpoint {endpoint!r} is not host:port")
        return self

    def password(self) -> SecretStr | None:
        return self._secret(self.password_env, self.password_file)


class CollectorConfig(StrictModel):
    collector: CollectorIdentity
    broker: BrokerSettings = BrokerSettings()
    influx: InfluxSettings
    batch: BatchSettings = BatchSettings()
    ingest: IngestSettings = IngestSettings()
    sparkplug: SparkplugHostSettings = SparkplugHostSettings()
    alarms: AlarmSettings = AlarmSettings()
    spool: SpoolSettings = SpoolSettings(max_mb=1024)
    dead_letter: DeadLetterSettings = DeadLetterSettings()
    etcd: EtcdSettings | None = Field(
        default=None, description="fail-over through etcd; none: this collector alone"
    )
    queue_size: int = Field(
        default=20_000,
        ge=1,
        le=1_000_000,
        description="messages held between the stages (inbox, store queue); at least "
        "ingest.receive_maximum",
    )
    stats_interval_s: float = Field(default=10.0, gt=0)
    sequence_grace_s: float = Field(
        default=300.0,
        gt=0,
        description="a message number still missing this long after a later one arrived "
        "is a gap (agents replay their backlog after live data)",
    )
    log: LogSettings = LogSettings()

    @model_validator(mode="before")
    @classmethod
    def _default_spool_path(cls, data: object) -> object:
        """The spool defaults to ``state/derrick-collector-<collector.id>.db`` beside the
        config, 1 GB."""
        collector = data.get("collector") if isinstance(data, dict) else None
        ident = collector.get("id") if isinstance(collector, dict) else None
        data = default_spool_path(data, "collector", ident)
        if isinstance(data, dict) and isinstance(data.get("spool"), dict):
            data["spool"].setdefault("max_mb", 1024)
        letters = data.get("dead_letter") if isinstance(data, dict) else None
        if isinstance(ident, str) and (letters is None or isinstance(letters, dict)):
            letters = dict(letters or {})
            letters.setdefault("dir", Path("state") / f"deadletter-{ident}")
            data = {**data, "dead_letter": letters}
        ingest = data.get("ingest") if isinstance(data, dict) else None
        if isinstance(ident, str) and (ingest is None or isinstance(ingest, dict)):
            ingest = dict(ingest or {})
            ingest.setdefault("deliveries", Path("state") / f"deliveries-{ident}.db")
            data = {**data, "ingest": ingest}
        alarms = data.get("alarms") if isinstance(data, dict) else None
        if isinstance(ident, str) and (alarms is None or isinstance(alarms, dict)):
            alarms = dict(alarms or {})
            alarms.setdefault("state", Path("state") / f"alarms-{ident}.db")
            data = {**data, "alarms": alarms}
        return data

    @model_validator(mode="after")
    def _inbox_holds_the_window(self) -> Self:
        if self.ingest.receive_maximum > self.queue_size:
            raise ValueError(
                f"ingest.receive_maximum ({self.ingest.receive_maximum}) must not exceed "
                f"queue_size ({self.queue_size}): the broker would send more than fits"
            )
        return self

    @model_validator(mode="after")
    def _member_of_alarms(self) -> Self:
        members = self.alarms.members
        if self.etcd is not None and self.collector.group is None:
            raise ValueError(
                "etcd needs collector.group: collectors that fail over share the "
                "telemetry through one shared subscription"
            )
        if members and self.etcd is not None:
            raise ValueError(
                "give alarms.members or etcd, not both: with etcd the live collectors "
                "share the assets among themselves"
            )
        if members and self.collector.id not in members:
            raise ValueError(
                f"alarms.members {members} must include this collector's id {self.collector.id!r}"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: object) -> object:
        if isinstance(data, dict) and "rules" in data:
            raise ValueError(
                "'rules' moved to 'alarms.rules': a list of rule files such as "
                "alarm-rules/crane.yaml (see docs/alarm-rules.md)"
            )
        return data


def load_config(path: Path | str) -> CollectorConfig:
    return configfile.load(path, CollectorConfig)
