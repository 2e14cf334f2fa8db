"""Validate stage: raw MQTT message -> Telemetry, or a classified reason why not.

On the collector's hot path (:func:`read_telemetry`) a good message of the common shape
costs one JSON parse and a few comparisons per reading
(:func:`derrick.wire.payloads.parse_telemetry_rows`, :func:`check_rows`); any other
message goes through ``Telemetry.model_validate_json``, the validator of record, and
everything below that call (working out *why* a message failed) runs only for rejected
ones, so it may be slow and thorough. A rejection has a ``kind`` (for counting and for
the dead-letter store) and a ``reason`` written for the person who has to fix the sender:

=============  ==========================================================================
kind           when
=============  ==========================================================================
``topic``      the topic does not follow ``derrick/v1/<site>/<asset>/<device>/telemetry``
``oversized``  the payload is over :data:`MAX_PAYLOAD_BYTES` (checked before parsing)
``json``       not UTF-8, or not well-formed JSON
``version``    well-formed, but ``v`` is not a schema version this collector speaks
``schema``     wrong type, missing or unknown field, a number out of range, no
               readings, or one field twice at one instant; the reason names the field
               path, e.g. ``readings[3].value: ...``
``mismatch``   site/asset/device in the payload differ from the topic
``timestamp``  a reading's ``ts_ns`` outside the collector's window (``ingest.ts_min`` /
               ``ts_max``, default 2000 to 2100): a clock that is off, or not nanoseconds
``value``      a ``good`` reading without a value (null is for bad, stale, uncertain)
``type``       a value of another type than its field holds (see
               :mod:`collector.fieldtypes`): InfluxDB would refuse it
=============  ==========================================================================

The contract's models are strict (:mod:`derrick.wire`): no string is taken for a
number, no float for an integer, numbers must fit what InfluxDB and the agent can hold
and be finite. So whatever passes can be encoded and stored (``tests/test_fuzz_ingest.py``
holds the collector to that).

Reasons never quote payload values (they go to the logs), except a short ``v``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from collector.fieldtypes import BOOLEAN, FLOAT, STRING, FieldTypes, value_type
from derrick.wire.ids import SCHEMA_VERSION
from derrick.wire.payloads import (
    ConditionMessage,
    Quality,
    Reading,
    ReadingRow,
    Telemetry,
    TelemetryRows,
    parse_telemetry_rows,
)
from derrick.wire.topics import (
    TOPIC_ROOT,
    ConditionTopic,
    TelemetryTopic,
    TopicError,
    parse_topic,
)

MAX_PAYLOAD_BYTES = 1_000_000

REJECT_KINDS = (
    "topic",
    "oversized",
    "json",
    "version",
    "schema",
    "mismatch",
    "timestamp",
    "value",
    "type",
)
"""Every ``Rejected.kind`` of this stage, in the order :func:`validate` checks them."""

_GOOD = Quality.GOOD
# A value's field type by its class; None (no value) matches no field, so a null takes
# the slow path, where it is judged.
_TYPE_OF: dict[type, str | None] = {
    float: FLOAT,
    int: FLOAT,
    bool: BOOLEAN,
    str: STRING,
    type(None): None,
}


def day_ns(day: date) -> int:
    """``day`` at 00:00 UTC, in nanoseconds since the epoch."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000_000


def epoch_ns(year: int) -> int:
    """1 January of ``year``, 00:00 UTC, in nanoseconds since the epoch."""
    return day_ns(date(year, 1, 1))


@dataclass(frozen=True, slots=True)
class Window:
    """The timestamps a collector takes: ``min_ns <= ts_ns < max_ns``."""

    min_ns: int = epoch_ns(2000)
    max_ns: int = epoch_ns(2100)


DEFAULT_WINDOW = Window()

_UNION_MEMBERS = frozenset(
    ("bool", "int", "float", "str", "none", "constrained-int", "constrained-str")
)
_KEY_ERRORS = frozenset(("missing", "extra_forbidden"))


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    kind: str  # one of REJECT_KINDS


def validate(
    topic: str,
    payload: bytes,
    window: Window = DEFAULT_WINDOW,
    fields: FieldTypes | None = None,
) -> Telemetry | Rejected:
    """:func:`validate_telemetry` for a message as it arrives, its topic a string."""
    try:
        where = parse_topic(topic)
    except TopicError:
        where = None
    if not isinstance(where, TelemetryTopic):
        return Rejected(f"not a {TOPIC_ROOT} telemetry topic: {topic!r}", "topic")
    return validate_telemetry(where, payload, window, fields)


def validate_telemetry(
    where: TelemetryTopic,
    payload: bytes,
    window: Window = DEFAULT_WINDOW,
    fields: FieldTypes | None = None,
) -> Telemetry | Rejected:
    """Check size and schema, that the topic (parsed once by the receive stage) agrees
    with the payload, and each reading's time, value and (with ``fields``) type.

    ``fields`` learns the types of fields it has not seen from an accepted message."""
    message = _device_message(Telemetry, where, payload)
    if isinstance(message, Rejected):
        return message
    return check_readings(message, window, fields)


def read_telemetry(
    where: TelemetryTopic,
    payload: bytes,
    window: Window = DEFAULT_WINDOW,
    fields: FieldTypes | None = None,
) -> TelemetryRows | Rejected:
    """:func:`validate_telemetry` on the collector's hot path: the same verdict, the
    same reasons, the readings as rows (:class:`~derrick.wire.payloads.TelemetryRows`).

    A payload of the common shape is read by
    :func:`~derrick.wire.payloads.parse_telemetry_rows` and checked by
    :func:`check_rows`; anything else goes through the model (:func:`validate_telemetry`),
    which finds the reason."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return _oversized(payload)
    rows = parse_telemetry_rows(payload)
    if rows is None:
        message = validate_telemetry(where, payload, window, fields)
        return message if isinstance(message, Rejected) else TelemetryRows.of(message)
    if rows.site != where.site or rows.asset != where.asset or rows.device != where.device:
        return _mismatch(where, rows)
    return check_rows(rows, window, fields)


def _oversized(payload: bytes) -> Rejected:
    return Rejected(
        f"payload of {len(payload)} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}",
        "oversized",
    )


def _mismatch(
    where: TelemetryTopic | ConditionTopic, message: Telemetry | ConditionMessage | TelemetryRows
) -> Rejected:
    site, asset, device = where.site, where.asset, where.device
    return Rejected(
        f"topic names {site}/{asset}/{device}, payload "
        f"{message.site}/{message.asset}/{message.device}",
        "mismatch",
    )


_Message = TypeVar("_Message", Telemetry, ConditionMessage)


def _device_message(
    model: type[_Message], where: TelemetryTopic | ConditionTopic, payload: bytes
) -> _Message | Rejected:
    """A device's message by its model: size, schema, and the topic's site, asset and
    device against the payload's."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return _oversized(payload)
    try:
        message = model.model_validate_json(payload)
    except ValidationError as exc:
        return classify(payload, exc)
    if message.site != where.site or message.asset != where.asset or message.device != where.device:
        return _mismatch(where, message)
    return message


def validate_condition(
    where: ConditionTopic, payload: bytes, window: Window = DEFAULT_WINDOW
) -> ConditionMessage | Rejected:
    """An edge agent's condition change: size, schema, topic against payload, and its
    times in the window (the same kinds of rejection as telemetry)."""
    message = _device_message(ConditionMessage, where, payload)
    if isinstance(message, Rejected):
        return message
    return check_condition(message, window)


def check_condition(message: ConditionMessage, window: Window) -> ConditionMessage | Rejected:
    """What the schema cannot say of a condition change (either wire): its times in the
    window, an episode's start before its end."""
    for name, ts in (("ts_ns", message.ts_ns), ("since_ns", message.since_ns)):
        if ts is not None and not window.min_ns <= ts < window.max_ns:
            return Rejected(f"{name} {ts} is outside the collector's time window", "timestamp")
    if message.since_ns is not None and message.since_ns > message.ts_ns:
        return Rejected("since_ns is after ts_ns: an episode ends after it starts", "schema")
    return message


def check_readings(
    message: Telemetry, window: Window, fields: FieldTypes | None
) -> Telemetry | Rejected:
    """What the schema cannot say alone: time window, good means a value, one field once
    per instant, and each field's type. Learns new fields only from an accepted message.

    The common reading (good, in the window, a field of known type) costs a few
    comparisons and one dict lookup (:func:`_common`); everything else takes
    :func:`_check_slowly`, which also finds the reason."""
    if _common(TelemetryRows.of(message).rows, window, fields):
        return message
    return _check_slowly(message, window, fields)


def check_rows(
    message: TelemetryRows, window: Window, fields: FieldTypes | None
) -> TelemetryRows | Rejected:
    """:func:`check_readings` for rows, on the collector's hot path: the same verdict and
    reasons, and the same fields learned; anything uncommon is judged by
    :func:`_check_slowly` on the model."""
    if _common(message.rows, window, fields):
        return message
    checked = _check_slowly(message.telemetry(), window, fields)
    return checked if isinstance(checked, Rejected) else message


def _common(rows: list[ReadingRow], window: Window, fields: FieldTypes | None) -> bool:
    """Every row good, in the window, a field of known type, each tag once: nothing
    :func:`_check_slowly` would refuse or learn."""
    low, high = window.min_ns, window.max_ns
    held = fields.types if fields is not None else None
    good = _GOOD
    type_of = _TYPE_OF
    tags = set()
    for tag, value, _unit, quality, ts in rows:
        kind = type_of[value.__class__]
        if (
            ts < low
            or ts >= high
            or kind is None
            or quality is not good
            or (held is not None and held.get(tag) is not kind)
        ):
            return False
        tags.add(tag)
    return len(tags) == len(rows)


def _check_slowly(
    message: Telemetry, window: Window, fields: FieldTypes | None
) -> Telemetry | Rejected:
    """:func:`check_readings` for a message off the common path, reading by reading."""
    low, high = window.min_ns, window.max_ns
    learned = fields.get if fields is not None else None
    seen: set[tuple[int, str]] = set()
    new: dict[str, str] = {}
    for index, reading in enumerate(message.readings):
        ts = reading.ts_ns
        if not low <= ts < high:
            return _outside(index, reading, window)
        good = reading.quality is _GOOD
        value = reading.value
        if value is None and good:
            return Rejected(
                f"readings[{index}] ({reading.tag}): quality good needs a value "
                "(null is for bad, stale or uncertain readings)",
                "value",
            )
        written = [] if value is None else [(reading.tag, value_type(value))]
        if not good:
            written.append((f"{reading.tag}_q", STRING))
        for field, kind in written:
            if (ts, field) in seen:
                return Rejected(
                    f"readings[{index}] ({reading.tag}): field {field!r} twice at ts_ns {ts}",
                    "schema",
                )
            seen.add((ts, field))
            if learned is not None:
                holds = learned(field) or new.setdefault(field, kind)
                if holds != kind:
                    return _conflict(index, reading, field, kind, holds, fields)
    if fields is not None:
        where = f"{message.site}/{message.asset}/{message.device}"
        for field, kind in new.items():
            fields.learn(field, kind, f"the first value, from {where}")
    return message


def _outside(index: int, reading: Reading, window: Window) -> Rejected:
    def year(ns: int) -> str:
        return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d")

    when = year(reading.ts_ns)
    return Rejected(
        f"readings[{index}].ts_ns ({reading.tag}): {reading.ts_ns} is {when}, outside "
        f"{year(window.min_ns)} .. {year(window.max_ns)} (UTC nanoseconds since the epoch)"
        f"{_unit_hint(reading.ts_ns, window)}",
        "timestamp",
    )


def _unit_hint(ts: int, window: Window) -> str:
    """Name the unit a too-small timestamp seems to be in: the usual mistake."""
    for unit, scale in (("seconds", 10**9), ("milliseconds", 10**6), ("microseconds", 10**3)):
        if window.min_ns <= ts * scale < window.max_ns:
            return f"; it looks like {unit}"
    return ""


def _conflict(  # noqa: PLR0917 - one rejection's facts
    index: int, reading: Reading, field: str, sent: str, held: str, fields: FieldTypes | None
) -> Rejected:
    source = fields.source(field) if fields is not None else ""
    where = f" (learned from {source})" if source else " (earlier in this message)"
    what = "quality mark" if field != reading.tag else "value"
    return Rejected(
        f"readings[{index}] ({reading.tag}): {sent} {what} for field {field!r}, which "
        f"holds {held}{where}",
        "type",
    )


def classify(payload: bytes, exc: ValidationError) -> Rejected:
    """Why ``payload`` failed validation: the failure path only."""
    errors = exc.errors(include_url=False)
    if errors[0]["type"] == "json_invalid":
        return Rejected(_json_reason(payload, errors[0]), "json")
    for error in errors:
        if error["loc"] == ("v",):
            return Rejected(_version_reason(error["input"]), "version")
    return Rejected(_schema_reason(errors), "schema")


def _json_reason(payload: bytes, error: Any) -> str:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"payload is not UTF-8: byte 0x{payload[bad.start]:02x} at offset {bad.start} "
            f"({bad.reason})"
        )
    detail = error.get("ctx", {}).get("error") or error["msg"]
    return f"payload is not valid JSON: {detail}"


def _version_reason(value: object) -> str:
    """Quote ``v`` when it is a short number or string, else only say its type."""
    quoted = json.dumps(value)
    short = _json_type(value) in ("number", "string") and len(quoted) <= 18
    shown = quoted if short else f"of JSON type {_json_type(value)}"
    return f"schema version {shown} is not supported (this collector speaks v{SCHEMA_VERSION})"


def _schema_reason(errors: list[Any]) -> str:
    """The first field in error, all its messages, and how many more fields are wrong."""
    groups: dict[tuple[object, ...], list[Any]] = {}
    for error in errors:
        groups.setdefault(_field_loc(error), []).append(error)
    loc, first = next(iter(groups.items()))
    # In a union (a reading's value), a member whose type matched but whose bound did
    # not (too long, not finite, out of range) is the one that explains the rejection.
    bounds = [e for e in first if not e["type"].endswith("_type")]
    if loc == ("readings",) and first[0]["type"] == "too_short":
        text = "a message must carry at least one reading"
    elif len(first) == 1 or bounds:
        first = bounds[:1] or first
        text = first[0]["msg"]
    else:  # one message per member type
        options = [e["msg"].removeprefix("Input should be ") for e in first]
        text = f"Input should be {', '.join(options[:-1])} or {options[-1]}"
    if first[0]["type"].endswith(("_type", "_parsing")):
        text += f" (got {_json_type(first[0]['input'])})"
    more = len(groups) - 1
    suffix = f"; and {more} more field{'s' if more > 1 else ''} in error" if more else ""
    return f"{_path(loc)}: {text}{suffix}"


def _field_loc(error: Any) -> tuple[object, ...]:
    """The field's location, without the member-type step pydantic adds inside a union.

    ``Reading.value`` is ``bool | int | float | str | None``: a dict there gives four
    errors at ``readings.3.value.bool``, ``...int`` and so on, reported as one field.
    An unknown key that happens to be called ``int`` is ``extra_forbidden``, not a member.
    """
    loc = error["loc"]
    if loc and loc[-1] in _UNION_MEMBERS and error["type"] not in _KEY_ERRORS:
        return loc[:-1]
    return loc


def _path(loc: tuple[object, ...]) -> str:
    """``('readings', 3, 'value')`` -> ``readings[3].value``; the whole payload if empty."""
    out = ""
    for step in loc:
        out += f"[{step}]" if isinstance(step, int) else f".{step}" if out else str(step)
    return out or "payload"


def _json_type(value: object) -> str:
    """The JSON type name of a parsed value: what was sent, without quoting it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
