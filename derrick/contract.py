"""The contract between agent and collector: MQTT topic scheme and payload models.

This module is the only place where topics and payloads are defined. The agent builds
payloads with these models, the collector validates with the same ones, so a change to
the wire format is a change here and nowhere else.

Topic scheme (schema version 1)::

    derrick/v1/<site>/<asset>/<device>/telemetry    agent -> collector, QoS 1
    derrick/v1/<site>/<asset>/alarm/<rule>          collector -> crews, QoS 1
    derrick/v1/agents/<agent>/status                agent birth / last will, retained

Identifiers (site, asset, device, agent, rule, tag) are restricted to
``[A-Za-z0-9_.-]`` so they are safe both as MQTT topic levels (no ``/``, ``+``, ``#``)
and as InfluxDB tag values and field keys.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1
TOPIC_ROOT = f"derrick/v{SCHEMA_VERSION}"

Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]
"""A name usable as an MQTT topic level, an InfluxDB tag value and a field key."""

ReadingValue = bool | int | float | str | None


class Quality(StrEnum):
    """How far a reading can be trusted; carried through to InfluxDB."""

    GOOD = "good"
    BAD = "bad"  # the PLC did not answer, or answered with an exception
    STALE = "stale"  # last known value, older than its poll interval
    UNCERTAIN = "uncertain"  # answered, but out of the instrument's range


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reading(_Frozen):
    """One value of one tag at one instant."""

    tag: Ident
    value: ReadingValue
    unit: str = Field(default="", max_length=16)
    quality: Quality = Quality.GOOD
    ts_ns: int = Field(ge=0, description="UTC, nanoseconds since the Unix epoch")


class Telemetry(_Frozen):
    """One message: the readings of one device from one poll."""

    v: Literal[1] = SCHEMA_VERSION
    site: Ident
    asset: Ident
    device: Ident
    kind: Ident = Field(description="equipment kind from the device profile, e.g. crane")
    agent: Ident
    boot: str = Field(min_length=1, max_length=64, description="agent boot id")
    seq: int = Field(ge=0, description="per agent and boot, +1 per message")
    readings: list[Reading] = Field(max_length=4096)


class AlarmState(StrEnum):
    RAISED = "raised"
    CLEARED = "cleared"


class AlarmEvent(_Frozen):
    """A transition of one alarm rule on one asset."""

    v: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(description="stable id: rule, asset and transition instant")
    rule: Ident
    site: Ident
    asset: Ident
    device: Ident
    state: AlarmState
    priority: str
    message: str
    value: float
    limit: float
    ts_ns: int = Field(ge=0)


class AgentStatus(_Frozen):
    """Retained birth message and last will of an agent."""

    v: Literal[1] = SCHEMA_VERSION
    agent: Ident
    state: Literal["online", "offline"]
    boot: str = ""
    ts_ns: int = 0


def now_ns() -> int:
    """Current UTC time in nanoseconds since the epoch."""
    return time.time_ns()


def telemetry_topic(site: str, asset: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{asset}/{device}/telemetry"


TELEMETRY_SUBSCRIPTION = f"{TOPIC_ROOT}/+/+/+/telemetry"


def alarm_topic(site: str, asset: str, rule: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{asset}/alarm/{rule}"


ALARM_SUBSCRIPTION = f"{TOPIC_ROOT}/+/+/alarm/+"


def agent_status_topic(agent: str) -> str:
    return f"{TOPIC_ROOT}/agents/{agent}/status"


class TopicError(ValueError):
    """A topic that does not follow the scheme."""


def parse_telemetry_topic(topic: str) -> tuple[str, str, str]:
    """Return (site, asset, device) of a telemetry topic, or raise TopicError."""
    parts = topic.split("/")
    if len(parts) != 6 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[5] != "telemetry":
        raise TopicError(f"not a {TOPIC_ROOT} telemetry topic: {topic!r}")
    return parts[2], parts[3], parts[4]
