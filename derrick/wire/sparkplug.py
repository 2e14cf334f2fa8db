"""Sparkplug B 3.0 on the wire: topic namespace, payload codec, alias tables.

Eclipse Sparkplug B (3.0) carries the same readings as Derrick's JSON contract
(:mod:`derrick.wire.payloads`) in protobuf: births (NBIRTH, DBIRTH) name every metric
once with its alias, datatype, unit and quality; data messages (DDATA) carry aliases and
values. Derrick maps its identities onto the namespace so that any Sparkplug host can
read an agent and Derrick's collector can read any edge node::

    spBv1.0/<site>/NBIRTH/<agent>            the agent's birth (bdSeq, Node Control/Rebirth)
    spBv1.0/<site>/NDEATH/<agent>            its last will (bdSeq of the connection)
    spBv1.0/<site>/DBIRTH/<agent>/<device>   a device's metrics, aliases, units, values
    spBv1.0/<site>/DDATA/<agent>/<device>    readings by alias (what changed or is due)
    spBv1.0/<site>/DDEATH/<agent>/<device>   the device stopped answering
    spBv1.0/<site>/NCMD/<agent>              host commands: only Rebirth is honoured
    spBv1.0/STATE/<host>                     a host application's online state (JSON)

A device's asset and equipment kind travel in its DBIRTH as the metrics
``Properties/asset`` and ``Properties/kind`` (a third party's device without them is
its own asset, of kind ``sparkplug``).

Alarm conditions an agent evaluates at the edge (:class:`~derrick.wire.payloads.ConditionMessage`)
travel as Boolean metrics ``Alarms/<rule>`` of their device: born in the DBIRTH (marked
by the metric property ``Derrick: condition``, so a third party's ``Alarms/...`` tag stays
a reading), and each change a DDATA of its own whose metric is true while the condition
holds, with the rest of the change (state, priority, limit, value, peak, times...) in
its properties (:func:`encode_condition`, :func:`decode_condition`).

Protobuf: the spec's ``sparkplug_b.proto`` (beside this module, from the Sparkplug 3.0
specification, EPL-2.0) compiled by ``scripts/gen_sparkplug.sh`` into
``sparkplug_b_pb2.py``; the runtime is Google's ``protobuf`` (upb). Births, deaths and
everything read are built and parsed with it. Data messages are the exception:
:class:`DataEncoder` writes their bytes directly, because building a protobuf message
object per reading costs about 1.7 us per reading on these machines, more than the
rest of the agent's per-reading work; the hand-written encoder only emits the fields
the proto declares, and tests/test_sparkplug.py checks every type against the protobuf
parser.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import NamedTuple

from google.protobuf.message import DecodeError
from pydantic import ValidationError

from derrick.wire import sparkplug_b_pb2 as pb
from derrick.wire.payloads import (
    ConditionMessage,
    ConditionState,
    Quality,
    Reading,
    ReadingRow,
    ReadingValue,
    trusted_reading,
)
from derrick.wire.topics import TopicError

NAMESPACE = "spBv1.0"
SUBSCRIPTION = f"{NAMESPACE}/#"
DATA_SUBSCRIPTION = f"{NAMESPACE}/+/DDATA/+/+"
"""What a host reads as data (shared among the collectors of a group)."""
SESSION_SUBSCRIPTIONS = (
    f"{NAMESPACE}/+/NBIRTH/+",
    f"{NAMESPACE}/+/NDEATH/+",
    f"{NAMESPACE}/+/DBIRTH/+/+",
    f"{NAMESPACE}/+/DDEATH/+/+",
)
"""Births and deaths: every host needs them all (alias tables, who is online)."""

BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
ASSET = "Properties/asset"
KIND = "Properties/kind"
EDGE = "Properties/edge"
"""NBIRTH: the alarm rules the agent evaluates itself, per device (JSON, as the JSON
wire's :class:`~derrick.wire.payloads.AgentStatus` ``edge``)."""
ALARMS_FOLDER = "Alarms/"
"""A device's edge alarm conditions: the metric ``Alarms/<rule>``."""
CONDITION_MARK = ("Derrick", "condition")
"""The DBIRTH property that makes an ``Alarms/<rule>`` metric a condition, not a tag."""
UNIT_PROPERTY = "engUnit"
QUALITY_PROPERTY = "Quality"
THIRD_PARTY_KIND = "sparkplug"

_NS_PER_MS = 1_000_000
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


class SparkplugError(ValueError):
    """A Sparkplug message that cannot be read: says which and why."""


class MessageType(StrEnum):
    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    NDATA = "NDATA"
    DDATA = "DDATA"
    NCMD = "NCMD"
    DCMD = "DCMD"


_NODE_TYPES = frozenset(
    {MessageType.NBIRTH, MessageType.NDEATH, MessageType.NDATA, MessageType.NCMD}
)


class MetricType(IntEnum):
    """The spec's ``DataType`` numbers (the scalar ones Derrick reads and writes)."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14


# Quality codes of the spec (0 bad, 192 good, 500 stale) and OPC's "uncertain" (64),
# which the spec does not name; any other code a third party sends reads as uncertain.
QUALITY_CODES = {Quality.BAD: 0, Quality.GOOD: 192, Quality.STALE: 500, Quality.UNCERTAIN: 64}
_QUALITY_OF_CODE = {code: quality for quality, code in QUALITY_CODES.items()}


# -- topics ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SparkplugTopic:
    """``spBv1.0/<group>/<type>/<node>[/<device>]``; ``device`` None for node messages."""

    group: str
    type: MessageType
    node: str
    device: str | None = None

    def __str__(self) -> str:
        return sparkplug_topic(self.group, self.type, self.node, self.device)


@dataclass(frozen=True, slots=True)
class HostStateTopic:
    """``spBv1.0/STATE/<host>``: a host application's retained online state."""

    host: str


def sparkplug_topic(group: str, kind: MessageType, node: str, device: str | None = None) -> str:
    base = f"{NAMESPACE}/{group}/{kind.value}/{node}"
    return base if device is None else f"{base}/{device}"


def host_state_topic(host: str) -> str:
    return f"{NAMESPACE}/STATE/{host}"


def parse_sparkplug_topic(topic: str) -> SparkplugTopic | HostStateTopic:
    """The parts of a Sparkplug topic, or TopicError naming the topic and why not."""
    parts = topic.split("/")
    if parts[0] != NAMESPACE:
        raise _topic_error(topic, f"it does not start with {NAMESPACE}/")
    if "" in parts:
        raise _topic_error(topic, f"level {parts.index('') + 1} is empty")
    if len(parts) == 3 and parts[1] == "STATE":
        return HostStateTopic(parts[2])
    if len(parts) not in {4, 5}:
        raise _topic_error(topic, f"{len(parts)} levels; want <group>/<type>/<node>[/<device>]")
    try:
        kind = MessageType(parts[2])
    except ValueError:
        raise _topic_error(topic, f"unknown message type {parts[2]!r}") from None
    device = parts[4] if len(parts) == 5 else None
    if (device is None) != (kind in _NODE_TYPES):
        want = "no device level" if kind in _NODE_TYPES else "a device level"
        raise _topic_error(topic, f"{kind.value} takes {want}")
    return SparkplugTopic(parts[1], kind, parts[3], device)


def _topic_error(topic: str, why: str) -> TopicError:
    return TopicError(f"topic {topic[:300]!r} is not a Sparkplug B topic: {why}")


# -- births and deaths (protobuf) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric of a device: its name (the tag), alias, type and engineering unit."""

    name: str
    alias: int
    type: MetricType
    unit: str = ""


def _set_value(metric: pb.Payload.Metric, kind: MetricType, value: ReadingValue) -> None:
    if value is None:
        metric.is_null = True
    elif kind is MetricType.BOOLEAN:
        metric.boolean_value = bool(value)
    elif kind is MetricType.FLOAT:
        metric.float_value = float(value)  # type: ignore[arg-type]
    elif kind is MetricType.DOUBLE:
        metric.double_value = float(value)  # type: ignore[arg-type]
    elif kind in _INT_TYPES:
        metric.int_value = int(value) & _U32  # type: ignore[arg-type]
    elif kind in _LONG_TYPES:
        metric.long_value = int(value) & _U64  # type: ignore[arg-type]
    else:
        metric.string_value = str(value)


def _property(props: pb.Payload.PropertySet, key: str, value: int | str) -> None:
    props.keys.append(key)
    prop = props.values.add()
    if isinstance(value, int):
        prop.type = MetricType.INT32
        prop.int_value = value
    else:
        prop.type = MetricType.STRING
        prop.string_value = value


def encode_node_birth(
    bdseq: int, ts_ns: int, seq: int = 0, properties: dict[str, str] | None = None
) -> bytes:
    """NBIRTH: seq (0 after every connect), bdSeq, the Rebirth control a host may set,
    and the node's ``properties`` as String metrics (e.g. :data:`EDGE`)."""
    payload = pb.Payload(timestamp=ts_ns // _NS_PER_MS, seq=seq)
    ms = payload.timestamp
    payload.metrics.add(name=BDSEQ, timestamp=ms, datatype=MetricType.INT64, long_value=bdseq)
    payload.metrics.add(
        name=REBIRTH, timestamp=ms, datatype=MetricType.BOOLEAN, boolean_value=False
    )
    for name, text in (properties or {}).items():
        payload.metrics.add(name=name, timestamp=ms, datatype=MetricType.STRING, string_value=text)
    return payload.SerializeToString()


def node_property(message: pb.Payload, name: str) -> str | None:
    """A String metric of an NBIRTH (a node property), if it has it."""
    for metric in message.metrics:
        if metric.name == name and metric.WhichOneof("value") == "string_value":
            return str(metric.string_value)
    return None


def encode_node_death(bdseq: int, ts_ns: int) -> bytes:
    """NDEATH (the last will): only bdSeq, no seq, as the spec says."""
    payload = pb.Payload(timestamp=ts_ns // _NS_PER_MS)
    payload.metrics.add(name=BDSEQ, datatype=MetricType.INT64, long_value=bdseq)
    return payload.SerializeToString()


def encode_device_birth(
    specs: Sequence[MetricSpec],
    values: dict[str, Reading],
    ts_ns: int,
    *,
    asset: str,
    kind: str,
    property_aliases: tuple[int, int] | None = None,
    conditions: Sequence[tuple[MetricSpec, bool | None]] = (),
) -> bytes:
    """DBIRTH without seq (see :func:`with_seq`): every metric with name, alias, type,
    unit, timestamp and its last reading (null and bad until there is one), the edge
    alarm ``conditions`` (each spec with whether it holds, None: not known yet), then the
    device's asset and kind (with ``property_aliases``, when the node uses aliases: the
    spec wants every birth metric to have one then)."""
    payload = pb.Payload(timestamp=ts_ns // _NS_PER_MS)
    for spec in specs:
        reading = values.get(spec.name)
        metric = payload.metrics.add(name=spec.name, alias=spec.alias, datatype=spec.type)
        metric.timestamp = (reading.ts_ns if reading else ts_ns) // _NS_PER_MS
        _set_value(metric, spec.type, reading.value if reading else None)
        quality = reading.quality if reading else Quality.BAD
        if spec.unit:
            _property(metric.properties, UNIT_PROPERTY, spec.unit)
        _property(metric.properties, QUALITY_PROPERTY, QUALITY_CODES[quality])
    for spec, holds in conditions:
        metric = payload.metrics.add(
            name=spec.name,
            alias=spec.alias,
            datatype=MetricType.BOOLEAN,
            timestamp=ts_ns // _NS_PER_MS,
        )
        _set_value(metric, MetricType.BOOLEAN, holds)
        _property(metric.properties, *CONDITION_MARK)
    for index, (name, text) in enumerate(((ASSET, asset), (KIND, kind))):
        metric = payload.metrics.add(
            name=name, timestamp=payload.timestamp, datatype=MetricType.STRING, string_value=text
        )
        if property_aliases is not None:
            metric.alias = property_aliases[index]
    return payload.SerializeToString()


# -- edge alarm conditions (protobuf: a few per hour, not a hot path) --------------------


def condition_spec(rule: str, alias: int) -> MetricSpec:
    """The metric of one edge alarm rule on a device."""
    return MetricSpec(ALARMS_FOLDER + rule, alias, MetricType.BOOLEAN)


_HOLDS = frozenset({ConditionState.ACTIVE, ConditionState.SUPPRESSED})
# ConditionMessage field -> metric property (what the topic, the birth and the metric's
# own value and timestamp do not say already)
_CONDITION_PROPERTIES = {
    "state": "State",
    "priority": "Priority",
    "type": "Type",
    "value": "Value",
    "limit": "Limit",
    "peak": "Peak",
    "latched": "Latched",
    "message": "Message",
    "since_ns": "SinceNs",
    "ts_ns": "TimeNs",
    "boot": "Boot",
    "seq": "Seq",
}


def encode_condition(spec: MetricSpec, message: ConditionMessage) -> bytes:
    """The DDATA (without seq, see :func:`with_seq`) of one condition change: the
    rule's metric, true while the condition holds (active or suppressed), at the
    change's event time, with the change in its properties (``TimeNs`` the exact time;
    a field with nothing to say is left out)."""
    ms = message.ts_ns // _NS_PER_MS
    payload = pb.Payload(timestamp=ms)
    metric = payload.metrics.add(
        alias=spec.alias,
        timestamp=ms,
        datatype=MetricType.BOOLEAN,
        boolean_value=message.state in _HOLDS,
    )
    for field_name, key in _CONDITION_PROPERTIES.items():
        value = getattr(message, field_name)
        if value is None or value == "":
            continue
        metric.properties.keys.append(key)
        _set_property(metric.properties.values.add(), value)
    return payload.SerializeToString()


def _set_property(prop: pb.Payload.PropertyValue, value: object) -> None:
    if isinstance(value, bool):
        prop.type, prop.boolean_value = MetricType.BOOLEAN, value
    elif isinstance(value, int):
        prop.type, prop.long_value = MetricType.INT64, value & _U64
    elif isinstance(value, float):
        prop.type, prop.double_value = MetricType.DOUBLE, value
    else:
        prop.type, prop.string_value = MetricType.STRING, str(value)


def _property_value(prop: pb.Payload.PropertyValue) -> ReadingValue:
    return metric_value(prop, metric_type_of(prop.type))


@dataclass(frozen=True, slots=True)
class ConditionSource:
    """Where a condition metric comes from: the names its message carries."""

    site: str
    asset: str
    device: str
    kind: str
    agent: str


def decode_condition(
    metric: pb.Payload.Metric, rule: str, source: ConditionSource, default_ms: int
) -> ConditionMessage:
    """The condition change a metric of :func:`encode_condition` says, or
    SparkplugError naming the rule and what is wrong with it."""
    props = metric.properties
    fields: dict[str, object] = {
        name: _property_value(props.values[index])
        for index, key in enumerate(props.keys[: len(props.values)])
        if (name := _CONDITION_FIELDS.get(key)) is not None
    }
    if fields.get("ts_ns") is None:
        ms = metric.timestamp if metric.HasField("timestamp") else default_ms
        fields["ts_ns"] = ms * _NS_PER_MS
    fields.setdefault("boot", "sparkplug")
    fields.setdefault("seq", 0)
    try:
        return ConditionMessage.model_validate(
            {
                **fields,
                "historical": metric.is_historical,
                "site": source.site,
                "asset": source.asset,
                "device": source.device,
                "kind": source.kind,
                "agent": source.agent,
                "rule": rule,
            }
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(_CONDITION_PROPERTIES.get(str(part), str(part)) for part in error["loc"])
        raise SparkplugError(f"condition {rule!r}: {where}: {error['msg']}"[:500]) from exc


_CONDITION_FIELDS = {key: name for name, key in _CONDITION_PROPERTIES.items()}


def encode_device_death(ts_ns: int) -> bytes:
    """DDEATH without seq: the device stopped answering."""
    return pb.Payload(timestamp=ts_ns // _NS_PER_MS).SerializeToString()


def with_seq(payload: bytes, seq: int, sent_ns: int | None = None) -> bytes:
    """``payload`` with its sequence number (0-255) appended, and with ``sent_ns`` the
    time it is sent as the message's timestamp.

    Protobuf reads the fields of a message in any order, and of a field given twice the
    last one counts, so a message stored without ``seq`` gets it at send time, when the
    connection's count is known, and a stored message's timestamp (the spec's "time at
    which the message was published") is replaced the same way: a few bytes appended,
    no re-encoding."""
    sent = b"" if sent_ns is None else b"\x08" + _varint(sent_ns // _NS_PER_MS)
    return payload + sent + b"\x18" + _varint(seq)


def as_historical(payload: bytes) -> bytes:
    """A stored data message, replayed late: every metric flagged ``is_historical``."""
    message = decode_payload(payload)
    for metric in message.metrics:
        metric.is_historical = True
    return message.SerializeToString()


# -- data messages (hand-written encoder) --------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(tag: bytes, body: bytes) -> bytes:
    return tag + _varint(len(body)) + body


def _quality_property(code: int) -> bytes:
    """Field 9 of a Metric: properties {Quality: Int32 code}."""
    value = b"\x08" + _varint(MetricType.INT32) + b"\x18" + _varint(code)
    props = _length_delimited(b"\x0a", QUALITY_PROPERTY.encode()) + _length_delimited(
        b"\x12", value
    )
    return _length_delimited(b"\x4a", props)


_INT_TYPES = frozenset(
    {MetricType.INT8, MetricType.INT16, MetricType.INT32}
    | {MetricType.UINT8, MetricType.UINT16, MetricType.UINT32}
)
_LONG_TYPES = frozenset({MetricType.INT64, MetricType.UINT64, MetricType.DATETIME})
_FLOAT = struct.Struct("<f").pack
_DOUBLE = struct.Struct("<d").pack
_NULL = b"\x38\x01"
_QUALITY = {quality: _quality_property(code) for quality, code in QUALITY_CODES.items()}


def _value_writer(kind: MetricType) -> Callable[[ReadingValue], bytes]:
    """What writes the ``oneof value`` field of a Metric of type ``kind``."""
    if kind is MetricType.FLOAT:
        return lambda value: b"\x65" + _FLOAT(value)
    if kind is MetricType.DOUBLE:
        return lambda value: b"\x69" + _DOUBLE(value)
    if kind is MetricType.BOOLEAN:
        return lambda value: b"\x70\x01" if value else b"\x70\x00"
    if kind in _INT_TYPES:
        return lambda value: b"\x50" + _varint(int(value) & _U32)  # type: ignore[arg-type]
    if kind in _LONG_TYPES:
        return lambda value: b"\x58" + _varint(int(value) & _U64)  # type: ignore[arg-type]
    return lambda value: _length_delimited(b"\x7a", str(value).encode())


@dataclass(slots=True)
class _Slot:
    head: bytes  # field 2 (alias), ready to prefix
    write: Callable[[ReadingValue], bytes]
    last_quality: Quality = Quality.GOOD


@dataclass
class DataEncoder:
    """The DDATA payloads of one device, written byte by byte (see the module docstring).

    A metric is its alias, timestamp (ms) and value; ``Quality`` only when not good, or
    good again after it was not (so hosts that keep the last quality see it return). A
    value the metric's type cannot hold is sent as null, bad. The message's timestamp
    is its first reading's (the sender replaces it, see :func:`with_seq`).

    ``compact``: no metric timestamps; every reading of the message takes the message's,
    which is the poll's (its first reading's time: the others were read within the
    poll, a few ms later on a LAN). About 7 bytes less per reading, or 4 of every 7 of a
    float reading's bytes with the others. The spec wants every data metric to carry a
    timestamp, so this is for hosts that read a missing one as the message's, as
    Derrick's collector does.
    """

    specs: Sequence[MetricSpec]
    compact: bool = False
    _slots: dict[str, _Slot] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._slots = {
            spec.name: _Slot(b"\x10" + _varint(spec.alias), _value_writer(spec.type))
            for spec in self.specs
        }

    def encode(self, readings: Iterable[Reading]) -> bytes | None:
        """The payload (without seq) of these readings; None when none is a metric here."""
        parts: list[bytes] = []
        message_ms = last_ms = -1
        stamp = b""
        good = Quality.GOOD
        for reading in readings:
            slot = self._slots.get(reading.tag)
            if slot is None:
                continue
            ms = reading.ts_ns // _NS_PER_MS
            if message_ms < 0:
                message_ms = last_ms = ms
                parts.append(b"\x08" + _varint(ms))
                stamp = b"" if self.compact else b"\x18" + _varint(ms)
            elif ms != last_ms and not self.compact:  # a request's readings share a time
                last_ms = ms
                stamp = b"\x18" + _varint(ms)
            quality = reading.quality
            value = reading.value
            if value is None:
                metric = slot.head + stamp + _NULL
            else:
                try:
                    metric = slot.head + stamp + slot.write(value)
                except (TypeError, ValueError, struct.error, OverflowError):
                    metric = slot.head + stamp + _NULL
                    quality = Quality.BAD
            if quality is not good or slot.last_quality is not good:
                metric += _QUALITY[quality]
            slot.last_quality = quality
            size = len(metric)
            parts.append((_SHORT[size] if size < 128 else b"\x12" + _varint(size)) + metric)
        return b"".join(parts) if message_ms >= 0 else None


_SHORT = [b"\x12" + bytes((size,)) for size in range(128)]
"""Field 2 (a metric) with its one-byte length, for every length below 128."""


# -- reading (host side) -------------------------------------------------------------------


def decode_payload(payload: bytes) -> pb.Payload:
    """The protobuf message, or SparkplugError saying why it is not one."""
    message = pb.Payload()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise SparkplugError(f"not a Sparkplug B payload ({len(payload)} bytes): {exc}") from exc
    return message


def metric_value(
    metric: pb.Payload.Metric | pb.Payload.PropertyValue, kind: MetricType
) -> ReadingValue:
    """A metric's (or a property's) value as Derrick holds it (signed integers from two's
    complement); None for null and for what is not a reading (bytes, datasets,
    templates, property sets)."""
    which = None if metric.is_null else metric.WhichOneof("value")
    if which not in _SCALAR_FIELDS:
        return None
    value = getattr(metric, which)
    if which == "int_value" and kind in _SIGNED_32 and value >= 2**31:
        value -= 2**32
    elif which == "long_value" and kind is MetricType.INT64 and value >= 2**63:
        value -= 2**64
    return value  # type: ignore[no-any-return]


_SCALAR_FIELDS = frozenset(
    {"int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value"}
)
_SIGNED_32 = frozenset({MetricType.INT8, MetricType.INT16, MetricType.INT32})


def metric_properties(metric: pb.Payload.Metric) -> dict[str, ReadingValue]:
    """A metric's scalar properties by key (engUnit, Quality, a condition's State...)."""
    if not metric.HasField("properties"):
        return {}
    props = metric.properties
    return {
        key: _property_value(value) for key, value in zip(props.keys, props.values, strict=False)
    }


def quality_of(code: object) -> Quality:
    if isinstance(code, int):
        return _QUALITY_OF_CODE.get(code, Quality.UNCERTAIN)
    return Quality.GOOD


@dataclass
class DeviceTable:
    """What a host knows of one device from its DBIRTH: metrics by alias and by name,
    the asset and kind it belongs to, and its edge alarm conditions (the rule of each
    condition metric, by alias and by name)."""

    asset: str
    kind: str
    by_alias: dict[int, MetricSpec]
    by_name: dict[str, MetricSpec]
    conditions: dict[int | str, str] = field(default_factory=dict)

    @classmethod
    def from_birth(cls, message: pb.Payload, device: str) -> DeviceTable:
        by_alias: dict[int, MetricSpec] = {}
        by_name: dict[str, MetricSpec] = {}
        conditions: dict[int | str, str] = {}
        asset, kind = device, THIRD_PARTY_KIND
        for metric in message.metrics:
            if metric.name == ASSET and metric.WhichOneof("value") == "string_value":
                asset = metric.string_value
                continue
            if metric.name == KIND and metric.WhichOneof("value") == "string_value":
                kind = metric.string_value
                continue
            if not metric.name:
                raise SparkplugError("a DBIRTH metric without a name")
            props = metric_properties(metric)
            if _is_condition(metric.name, props):
                rule = metric.name[len(ALARMS_FOLDER) :]
                conditions[metric.name] = rule
                if metric.HasField("alias"):
                    conditions[metric.alias] = rule
                continue
            unit = props.get(UNIT_PROPERTY, "")
            spec = MetricSpec(
                metric.name,
                metric.alias if metric.HasField("alias") else -1,
                metric_type_of(metric.datatype),
                str(unit),
            )
            by_name[spec.name] = spec
            if spec.alias >= 0:
                by_alias[spec.alias] = spec
        return cls(asset, kind, by_alias, by_name, conditions)

    def readings(self, message: pb.Payload) -> tuple[list[Reading], list[int | str]]:
        """The readings of a DBIRTH or DDATA, and the aliases or names it does not know
        (a host asks for a rebirth then). Metrics that are not readings (the device's
        properties, its alarm conditions) are left out."""
        data = self.rows(message)
        return [trusted_reading(*row) for row in data.rows], data.unknown

    def rows(self, message: pb.Payload) -> DataRows:
        """:meth:`readings` as rows (``(tag, value, unit, quality, ts_ns)``), whether
        any metric of the message is historical, and its condition metrics with their
        rules: one pass over the metrics.

        A host's hot path: every attribute of a protobuf metric read from Python costs
        about 0.1 us, so the common metric (a scalar value, no properties) is read with
        as few as the answer needs; anything else takes :func:`metric_value`."""
        rows: list[ReadingRow] = []
        unknown: list[int | str] = []
        conditions: list[tuple[str, pb.Payload.Metric]] = []
        historical = False
        default_ms = message.timestamp
        by_name, by_alias = self.by_name, self.by_alias
        good, bad = Quality.GOOD, Quality.BAD
        plain = _PLAIN_FIELDS
        for metric in message.metrics:
            if metric.is_historical:
                historical = True
            name = metric.name
            spec = by_name.get(name) if name else by_alias.get(metric.alias)
            if spec is None:
                rule = self.conditions.get(name or metric.alias)
                if rule is not None:
                    conditions.append((rule, metric))
                elif name not in {ASSET, KIND}:
                    unknown.append(name or metric.alias)
                continue
            which = metric.WhichOneof("value")
            if which in plain and not metric.is_null:
                value = getattr(metric, which)
            else:
                value = metric_value(metric, spec.type)
            quality = good
            if metric.HasField("properties"):
                quality = quality_of(metric_properties(metric).get(QUALITY_PROPERTY))
            if value is None and quality is good:
                quality = bad
            ms = metric.timestamp
            if not ms and not metric.HasField("timestamp"):
                ms = default_ms
            rows.append((spec.name, value, spec.unit, quality, ms * _NS_PER_MS))
        return DataRows(rows, unknown, historical, conditions)


class DataRows(NamedTuple):
    """What :meth:`DeviceTable.rows` reads of a DBIRTH or DDATA."""

    rows: list[ReadingRow]
    unknown: list[int | str]  # aliases or names the birth does not have
    historical: bool  # any metric flagged is_historical
    conditions: list[tuple[str, pb.Payload.Metric]]  # (rule, metric) of each condition


def _is_condition(name: str, props: dict[str, ReadingValue]) -> bool:
    key, mark = CONDITION_MARK
    return (
        name.startswith(ALARMS_FOLDER) and len(name) > len(ALARMS_FOLDER) and props.get(key) == mark
    )


_PLAIN_FIELDS = frozenset({"double_value", "float_value", "boolean_value", "string_value"})
"""Value fields read as they are (integers may need their sign: :func:`metric_value`)."""


def metric_type_of(number: int) -> MetricType:
    """The spec's type of a ``datatype`` number (UNKNOWN for one Derrick does not read)."""
    try:
        return MetricType(number)
    except ValueError:
        return MetricType.UNKNOWN


def node_bdseq(message: pb.Payload) -> int | None:
    """The bdSeq metric of an NBIRTH or NDEATH, if it has one."""
    for metric in message.metrics:
        if metric.name == BDSEQ and metric.WhichOneof("value") in {"long_value", "int_value"}:
            return int(getattr(metric, metric.WhichOneof("value")))  # type: ignore[arg-type]
    return None


def rebirth_requested(message: pb.Payload) -> bool:
    """An NCMD that asks for a rebirth (``Node Control/Rebirth`` true)."""
    return any(
        metric.name == REBIRTH
        and metric.WhichOneof("value") == "boolean_value"
        and metric.boolean_value
        for metric in message.metrics
    )


def encode_rebirth_request(ts_ns: int) -> bytes:
    """The NCMD a host sends to make an edge node publish its births again."""
    payload = pb.Payload(timestamp=ts_ns // _NS_PER_MS)
    payload.metrics.add(name=REBIRTH, datatype=MetricType.BOOLEAN, boolean_value=True)
    return payload.SerializeToString()


def host_state_payload(online: bool, ts_ns: int) -> bytes:
    """``STATE`` (spec 3.0): JSON ``{"online": ..., "timestamp": ms}``."""
    return json.dumps({"online": online, "timestamp": ts_ns // _NS_PER_MS}).encode()


def parse_host_state(payload: bytes) -> tuple[bool, int]:
    """(online, timestamp ms) of a STATE message, or SparkplugError."""
    try:
        state = json.loads(payload)
        online, stamp = state["online"], state["timestamp"]
    except (ValueError, TypeError, KeyError) as exc:
        raise SparkplugError(f"not a Sparkplug STATE payload: {exc}") from exc
    if not isinstance(online, bool) or not isinstance(stamp, int):
        raise SparkplugError("STATE wants a boolean 'online' and an integer 'timestamp'")
    return online, stamp
