"""Payload models of the wire contract: what agents and collectors put in MQTT messages.

The agent builds payloads with these models, the collector validates with the same ones,
so a change to the wire format is a change in :mod:`derrick.wire` and nowhere else.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict

from derrick.wire.ids import SCHEMA_VERSION, Ident

ReadingValue = bool | int | float | str | None
"""A reading's value as Python code passes it around (see :data:`WireValue` for the wire)."""

INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
MAX_STRING_VALUE = 1024
"""Characters in a string reading: PLC strings are at most 240 (derrick.plc.profile)."""

Flag = Annotated[bool, Strict()]
"""``true`` or ``false``: not ``1``, not ``"true"``."""
Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
"""A measured figure an agent reports (seconds, milliseconds): finite."""

WireValue = (
    Flag
    | Annotated[int, Strict(), Field(ge=-(2**63), le=UINT64_MAX)]
    | Finite
    | Annotated[str, Strict(), Field(max_length=MAX_STRING_VALUE)]
    | None
)
"""A reading's value as the contract accepts it, with no coercion: JSON ``true`` is a
boolean, ``1`` an integer (any int64 or uint64: what a PLC register can hold), ``1.5``
a finite float (NaN and Infinity are not JSON and have no place in a float field),
``"1"`` a string and stays one. A larger integer literal is taken as the float it is
close to, when that is finite. Strings are bounded: a tag is a PLC value, not a file."""


Count = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX)]
"""A non-negative integer InfluxDB can hold: an agent's counter, a sequence number."""
SeqNumber = Count
TimestampNs = Count
"""UTC nanoseconds since the epoch, an integer that InfluxDB can hold (up to 2262);
the collector narrows it further to a sane window (``ingest.ts_min`` / ``ts_max``)."""


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
    value: WireValue
    unit: str = Field(default="", max_length=16)
    quality: Quality = Quality.GOOD
    ts_ns: TimestampNs = Field(description="UTC, nanoseconds since the Unix epoch")


_READING_FIELDS = frozenset(("tag", "value", "unit", "quality", "ts_ns"))
_set_attr = object.__setattr__


def trusted_reading(
    tag: str, value: ReadingValue, unit: str, quality: Quality, ts_ns: int
) -> Reading:
    """A Reading from values the agent made itself, without validation.

    What ``Reading.model_construct`` does, without its generic per-call work (about
    0.7 us instead of 1.8 us; an agent builds one per tag per poll). tests/test_contract.py
    checks it stays equal to a validated Reading, field set and JSON included.
    """
    reading = Reading.__new__(Reading)
    _set_attr(
        reading,
        "__dict__",
        {"tag": tag, "value": value, "unit": unit, "quality": quality, "ts_ns": ts_ns},
    )
    _set_attr(reading, "__pydantic_fields_set__", set(_READING_FIELDS))
    _set_attr(reading, "__pydantic_extra__", None)
    _set_attr(reading, "__pydantic_private__", None)
    return reading


class Telemetry(_Frozen):
    """One message: the readings of one device from one poll.

    ``historical`` is true when the message waited in the agent's store-and-forward
    queue through a broker outage (or an agent restart) and is replayed late. It is the
    second field on purpose: the agent flips it in the stored JSON bytes on replay
    (see :func:`mark_historical`) instead of parsing and re-serialising every message.
    """

    v: Literal[1] = SCHEMA_VERSION
    historical: Flag = False
    site: Ident
    asset: Ident
    device: Ident
    kind: Ident = Field(description="equipment kind from the device profile, e.g. crane")
    agent: Ident
    boot: str = Field(min_length=1, max_length=64, description="agent boot id")
    seq: SeqNumber = Field(description="per agent and boot, +1 per message")
    readings: list[Reading] = Field(min_length=1, max_length=4096)


AlarmPriority = Literal["critical", "high", "medium", "low"]
AlarmAction = Literal[
    "acknowledge", "reset", "shelve", "unshelve", "remove_from_service", "return_to_service"
]
NoticeEvent = Literal["announce", "clear", "reminder", "escalation", "journal", "flood"]


class AlarmStateMessage(_Frozen):
    """Retained current state of one alarm (rule on one device): what a panel shows."""

    v: Literal[1] = SCHEMA_VERSION
    alarm_id: str = Field(description="rule:site:asset:device")
    rule: Ident
    site: Ident
    asset: Ident
    device: Ident
    state: str = Field(description="ISA-18.2 state: normal, active_unacked, active_acked, ...")
    active: bool
    acked: bool
    priority: AlarmPriority
    value: float | None = None
    limit: float | None = None
    message: str = ""
    shelved_until_ns: int | None = None
    ts_ns: TimestampNs


class AlarmNotice(_Frozen):
    """One notification: an alarm event for crews, or one group of them (``flood``).

    ``key`` is the idempotency key: the same notice delivered twice (a retry after a
    crash between sending and recording it) carries the same key, so a receiver can
    drop the repeat. ``alarms`` lists the members of a flood group.
    """

    v: Literal[1] = SCHEMA_VERSION
    key: str
    event: NoticeEvent
    alarm_id: str
    rule: Ident
    site: Ident
    asset: Ident
    device: Ident
    priority: AlarmPriority
    state: str
    message: str
    reason: str = Field(default="", description="why: new, reactivated, shelve_expired, ...")
    value: float | None = None
    limit: float | None = None
    who: str = ""
    comment: str = ""
    ts_ns: TimestampNs
    ended_ns: TimestampNs | None = Field(
        default=None,
        description="reason 'offline': the episode happened while the agent's link was "
        "down, from ts_ns to ended_ns",
    )
    alarms: list[AlarmNotice] = Field(default_factory=list, max_length=1000)


class AlarmCommand(_Frozen):
    """An operator's command on one alarm, by MQTT or HTTP."""

    v: Literal[1] = SCHEMA_VERSION
    alarm_id: str = Field(min_length=1, max_length=300)
    action: AlarmAction
    who: str = Field(min_length=1, max_length=100)
    comment: str = Field(default="", max_length=2000)
    duration_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    request_id: str = Field(default="", max_length=100)


class AlarmCommandResult(_Frozen):
    """The answer to an :class:`AlarmCommand`, on the asset's reply topic."""

    v: Literal[1] = SCHEMA_VERSION
    request_id: str
    alarm_id: str
    action: str
    ok: bool
    reason: str = ""
    state: str = ""
    ts_ns: TimestampNs


class DeviceState(StrEnum):
    UP = "up"
    DOWN = "down"


class DeviceStatus(_Frozen):
    """Retained state of one PLC as its agent sees it; published on every change."""

    v: Literal[1] = SCHEMA_VERSION
    historical: Flag = False
    site: Ident
    asset: Ident
    device: Ident
    agent: Ident
    state: DeviceState
    reason: str = ""
    endpoint: str = ""
    ts_ns: TimestampNs


class DeviceCounters(_Frozen):
    """Per-device poll counters since the agent started."""

    state: DeviceState | None = None
    cycles_ok: Count = 0
    cycles_failed: Count = 0
    requests: Count = 0
    readings: Count = 0
    readings_published: Count = 0
    last_cycle_ms: Finite = 0.0
    last_cycle_requests: Count = 0
    poll_overruns: Count = 0
    """Polls skipped because the cycle before ran past their due time (all groups)."""
    overrunning: tuple[Ident, ...] = ()
    """Poll groups that cannot keep their interval now."""


class QueueMetrics(_Frozen):
    depth: Count = 0
    bytes: Count = 0
    oldest_age_s: Finite | None = None
    dropped_telemetry: Count = 0
    dropped_status: Count = 0
    dropped_alarm: Count = 0


class AgentMetrics(_Frozen):
    """An agent's own health, published every ``metrics_interval_s``."""

    v: Literal[1] = SCHEMA_VERSION
    historical: Flag = False
    agent: Ident
    site: Ident
    boot: str
    ts_ns: TimestampNs
    uptime_s: Finite
    broker_connected: Flag
    devices: dict[str, DeviceCounters]
    queue: QueueMetrics
    messages_published: Count
    publish_latency_ms_p50: Finite | None = None
    publish_latency_ms_max: Finite | None = None


class AgentEvent(_Frozen):
    """A notice from an agent that a consumer must not miss, e.g. dropped telemetry."""

    v: Literal[1] = SCHEMA_VERSION
    historical: Flag = False
    agent: Ident
    site: Ident
    boot: str
    event: Literal["spool_dropped"]
    reason: str
    dropped_telemetry: Count = 0
    dropped_status: Count = 0
    dropped_alarm: Count = 0
    ts_ns: TimestampNs


class ConditionState(StrEnum):
    """What a :class:`ConditionMessage` says of its rule's condition on its device."""

    ACTIVE = "active"  # holds (after deadband and delays), not suppressed
    SUPPRESSED = "suppressed"  # holds, withheld by machine state or bad input
    CLEARED = "cleared"  # no longer holds
    EPISODE = "episode"  # held from since_ns to ts_ns, and nobody was told it started


class ConditionMessage(_Frozen):
    """One change of one alarm condition, evaluated by the agent at the edge.

    Sent through the agent's spool like telemetry (same ``boot`` and ``seq`` numbering,
    replayed late with ``historical`` true), so conditions that change while the
    uplink is down still reach the collector, in order, with their own times.
    ``ts_ns`` is the event time of the change (the reading that caused it). An
    ``episode`` is a condition that became active at ``since_ns`` and cleared at
    ``ts_ns`` before its activation left the agent: the agent sends it instead of that
    activation and its clear, so the collector can record and announce it once, as
    having happened while the link was down. ``peak`` is the most extreme value
    while the condition held (threshold and rate-of-change rules).
    """

    v: Literal[1] = SCHEMA_VERSION
    historical: Flag = False
    site: Ident
    asset: Ident
    device: Ident
    kind: Ident
    agent: Ident
    boot: str = Field(min_length=1, max_length=64)
    seq: SeqNumber
    rule: Ident
    type: str = Field(default="", max_length=32, description="the rule's type")
    state: ConditionState
    value: WireValue = None
    limit: Finite | None = None
    peak: WireValue = None
    priority: AlarmPriority
    latched: Flag = False
    message: str = Field(default="", max_length=1000)
    since_ns: TimestampNs | None = Field(default=None, description="episode: its start")
    ts_ns: TimestampNs


class EdgeRules(_Frozen):
    """The rules an agent evaluates at the edge for one of its devices."""

    asset: Ident
    device: Ident
    rules: list[Ident] = Field(max_length=1000)


class AgentStatus(_Frozen):
    """Retained birth message and last will of an agent.

    ``edge`` lists, per device, the alarm rules the agent evaluates itself and sends as
    :class:`ConditionMessage` s: the collector does not evaluate those on the
    device's telemetry. Empty (older agents too): the collector evaluates everything.
    """

    v: Literal[1] = SCHEMA_VERSION
    agent: Ident
    state: Literal["online", "offline"]
    boot: str = ""
    ts_ns: TimestampNs = 0
    site: Ident | None = None
    edge: list[EdgeRules] = Field(default_factory=list, max_length=4096)


def now_ns() -> int:
    """Current UTC time in nanoseconds since the epoch."""
    return time.time_ns()


_LIVE = b'"historical":false'
_REPLAYED = b'"historical":true'


def mark_historical(payload: bytes) -> bytes:
    """The stored JSON of a message, flagged as replayed late.

    Every agent model puts ``historical`` right after ``v``, so the first occurrence of
    the key is that field; payloads without it are returned unchanged.
    """
    return payload.replace(_LIVE, _REPLAYED, 1)
