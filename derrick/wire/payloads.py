"""Payload models of the wire contract: what agents and collectors put in MQTT messages.

The agent builds payloads with these models, the collector validates with the same ones,
so a change to the wire format is a change in :mod:`derrick.wire` and nowhere else.
"""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, SecretStr, Strict
from pydantic_core import from_json

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


ReadingRow = tuple[str, ReadingValue, str, "Quality", int]
"""A reading as the collector's hot path holds it: ``(tag, value, unit, quality, ts_ns)``,
:class:`Reading`'s fields in its order."""


class TelemetryRows(NamedTuple):
    """A :class:`Telemetry` message as the collector's hot path holds it: the same
    fields, each reading a :data:`ReadingRow` tuple instead of a :class:`Reading`.

    A pydantic object per reading costs about 1 us to build (even unvalidated, see
    :func:`trusted_reading`), more than the rest of a reading's way to InfluxDB; a tuple
    costs a twentieth of that (and a named tuple, not a dataclass, for the same reason
    once per message). Whoever needs the model (the alarms, the tests) asks
    :meth:`telemetry` for it. Rows are only made from values the contract accepts
    (:func:`parse_telemetry_rows`, :meth:`of`, a Sparkplug host's alias table)."""

    site: str
    asset: str
    device: str
    kind: str
    agent: str
    boot: str
    seq: int
    historical: bool
    rows: list[ReadingRow]

    @classmethod
    def of(cls, message: Telemetry) -> TelemetryRows:
        d = message.__dict__
        return cls(
            d["site"], d["asset"], d["device"], d["kind"], d["agent"], d["boot"], d["seq"],
            d["historical"],
            [(r.tag, r.value, r.unit, r.quality, r.ts_ns) for r in message.readings],
        )  # fmt: skip

    def telemetry(self) -> Telemetry:
        """The model, built without validating again (the rows were checked)."""
        return Telemetry.model_construct(
            v=SCHEMA_VERSION,
            historical=self.historical,
            site=self.site,
            asset=self.asset,
            device=self.device,
            kind=self.kind,
            agent=self.agent,
            boot=self.boot,
            seq=self.seq,
            readings=[trusted_reading(*row) for row in self.rows],
        )


_IDENT_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # fullmatch: an Ident
_IDENTS_KEPT = 65_536
_idents: set[str] = set()  # strings already found to be identifiers
_QUALITY_BY_NAME: dict[str, Quality] = {q.value: q for q in Quality}
_TELEMETRY_KEYS = frozenset(Telemetry.model_fields)
_TELEMETRY_REQUIRED = frozenset(
    name for name, info in Telemetry.model_fields.items() if info.is_required()
)
_INT_MIN = -(2**63)


def _ident(value: object) -> bool:
    """``value`` is an :data:`~derrick.wire.ids.Ident` (remembered: a device's names
    and tags repeat in every message)."""
    if value.__class__ is not str:
        return False
    if value in _idents:
        return True
    if _IDENT_RE.fullmatch(value) is None:  # type: ignore[arg-type]
        return False
    if len(_idents) >= _IDENTS_KEPT:
        _idents.clear()
    _idents.add(value)  # type: ignore[arg-type]
    return True


def _count(value: object) -> bool:
    return value.__class__ is int and 0 <= value <= INT64_MAX  # type: ignore[operator]


def parse_telemetry_rows(payload: bytes) -> TelemetryRows | None:
    """A telemetry payload of the common shape, read without pydantic; None when it is
    anything else (then ``Telemetry.model_validate_json`` decides, and says why).

    The collector's hot path: the model costs about 1.5 us per reading (its checks and
    a pydantic object per reading), where pydantic's own JSON parser (jiter, through
    ``pydantic_core.from_json``: the same bytes accepted, the same numbers, the last
    of duplicate keys) and these checks cost a third of that. The model stays the
    validator of record: this accepts only what it would accept, with the same values
    (no NaN or Infinity; strict types: a bool is no integer, an integer no string;
    strings ASCII, so no question of what a length counts), and leaves every doubt to
    it (tests/test_fast_paths.py holds the two to the same answers).
    """
    try:
        data = from_json(payload, allow_inf_nan=False, cache_strings="keys")
    except ValueError:  # not UTF-8, not JSON, too deep
        return None
    try:
        return _telemetry_rows(data)
    except (KeyError, TypeError):  # a key missing, an unhashable value where a name goes
        return None


def _telemetry_rows(data: object) -> TelemetryRows | None:
    """:func:`parse_telemetry_rows` on the parsed JSON; KeyError or TypeError for some
    of what is not of the model's shape."""
    if data.__class__ is not dict or not data.keys() <= _TELEMETRY_KEYS:
        return None
    if not data.keys() >= _TELEMETRY_REQUIRED:
        return None
    v = data.get("v", SCHEMA_VERSION)
    historical = data.get("historical", False)
    site, asset, device = data["site"], data["asset"], data["device"]
    kind, agent, boot, seq = data["kind"], data["agent"], data["boot"], data["seq"]
    readings = data["readings"]
    idents = _idents
    if (
        v.__class__ is not int
        or v != SCHEMA_VERSION
        or historical.__class__ is not bool
        or not (site in idents or _ident(site))
        or not (asset in idents or _ident(asset))
        or not (device in idents or _ident(device))
        or not (kind in idents or _ident(kind))
        or not (agent in idents or _ident(agent))
        or boot.__class__ is not str
        or not 1 <= len(boot) <= 64
        or not boot.isascii()
        or not _count(seq)
        or readings.__class__ is not list
        or not 1 <= len(readings) <= 4096
    ):
        return None
    rows = _rows(readings)
    if rows is None:
        return None
    return TelemetryRows(site, asset, device, kind, agent, boot, seq, historical, rows)


def _rows(readings: list[object]) -> list[ReadingRow] | None:  # noqa: PLR0911, PLR0912
    """The readings of :func:`parse_telemetry_rows`, or None (or KeyError, TypeError);
    one check per way a reading can differ from the common one."""
    rows: list[ReadingRow] = []
    append = rows.append
    qualities, idents, units = _QUALITY_BY_NAME, _idents, _units
    good, ts_max, int_min, uint_max = Quality.GOOD, INT64_MAX, _INT_MIN, UINT64_MAX
    for reading in readings:
        if reading.__class__ is not dict:
            return None
        if len(reading) == 5:
            tag, value, unit = reading["tag"], reading["value"], reading["unit"]
            quality, ts = qualities[reading["quality"]], reading["ts_ns"]
        else:
            tag, value, ts = reading["tag"], reading["value"], reading["ts_ns"]
            unit = reading.get("unit", "")
            quality = reading.get("quality", good)
            if quality is not good:
                quality = qualities[quality]
            if len(reading) != 3 + ("unit" in reading) + ("quality" in reading):
                return None  # a key the model does not have
        if ts.__class__ is not int or not 0 <= ts <= ts_max:
            return None
        if tag not in idents and not _ident(tag):
            return None
        if unit not in units and not _unit(unit):
            return None
        cls = value.__class__
        if cls is float:
            if value - value != 0:  # NaN or infinity: not JSON the model reads
                return None
        elif cls is int:
            if not int_min <= value <= uint_max:
                return None
        elif cls is str:
            if len(value) > MAX_STRING_VALUE or not value.isascii():
                return None
        elif cls is not bool and value is not None:
            return None
        append((tag, value, unit, quality, ts))
    return rows


_units: set[str] = {""}  # strings already found to be units (Reading.unit)


def _unit(value: object) -> bool:
    if value.__class__ is not str or len(value) > 16 or not value.isascii():
        return False
    if len(_units) >= _IDENTS_KEPT:
        _units.clear()
        _units.add("")
    _units.add(value)  # type: ignore[arg-type]
    return True


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
    who: str = Field(
        default="",
        min_length=1,
        max_length=100,
        description="the operator; over MQTT with users configured, the token's user",
    )
    comment: str = Field(default="", max_length=2000)
    duration_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    request_id: str = Field(default="", max_length=100)
    token: SecretStr | None = Field(
        default=None,
        max_length=200,
        description="over MQTT: a user's API token (collector.alarms.authority); "
        "dropped once checked",
    )


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


class CollectorStatus(_Frozen):
    """Retained status and last will of a collector
    (:func:`~derrick.wire.topics.collector_status_topic`)."""

    v: Literal[1] = SCHEMA_VERSION
    collector: Ident
    state: Literal["online", "offline"]
    ts_ns: TimestampNs = 0


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
