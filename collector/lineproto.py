"""InfluxDB line protocol: every measurement the collector writes, through one encoder.

:func:`encode_point` writes one line from a measurement, tags, fields and a time; the
``encode_*`` functions map each message to its point. Telemetry is the collector's hot
path and builds its lines from the same pieces with an inline fast path for the common
reading (a good, finite float).

Telemetry (see README): measurement ``telemetry``; tags ``asset``, ``device``, ``kind``,
``site``; one field per tag holding its value; a string field ``<tag>_q`` only when the
quality is not good, so a gap in the data shows as a quality mark, not as silence.
Readings with the same timestamp share one line.

Tags are written sorted by key (as InfluxDB prefers), empty ones left out, values escaped
(:func:`escape_tag`). Identifiers are restricted by the contract to ``[A-Za-z0-9_.-]``,
so field keys and the tags of messages never need escaping; a collector id, an alarm id
in ``alarm_top`` may.

Field types. A field's type is fixed once InfluxDB 1.x has stored it (another type in
the same shard is refused), so each field always goes out as the same type. A field's
Python type is its type in the line: ``bool`` boolean, ``int`` integer (``12i``),
``float`` float, ``str`` string; ``None`` and non-finite floats are left out. The
measurements that hold counts as floats convert them before (:func:`_numbers_as_floats`)::

    telemetry      <tag> float | boolean | string (a reading's value; integers as
                   floats), <tag>_q string
    device_status  up boolean, reason string
    agent          broker_connected boolean; every other field float
    collector      every field float (counters too)
    alarms         state, reason, message, who, comment, notice_key string;
                   value, limit, duration_s (an episode while offline) float
    alarm_state    state, message string; active, acked boolean; value, limit float
    alarm_kpi      in_flood boolean; flood_s_total float; alarms_per_window, active,
                   unacked, standing, shelved, suppressed, out_of_service,
                   chattering integer
    alarm_top      count integer; chattering boolean

tests/test_lineproto.py pins this table, and writes every measurement to a real
InfluxDB 1.6 to read the types back.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping

from derrick.wire.payloads import (
    AgentMetrics,
    AlarmNotice,
    AlarmStateMessage,
    DeviceState,
    DeviceStatus,
    Quality,
    Telemetry,
    TelemetryRows,
)
from derrick.wire.topics import agent_metrics_topic, device_status_topic, telemetry_topic

_GOOD = Quality.GOOD
_TAG_ESCAPES = str.maketrans(
    {"\\": "/", ",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n", "\r": "\\r"}
)
_TAG_SPECIAL = re.compile(r"[\\,= \n\r]")  # what escape_tag changes
_SERIES_CACHED = 16384  # devices whose telemetry series are kept


def escape_tag(value: str) -> str:
    """A tag value for line protocol: comma, equals sign and space escaped with a backslash.

    A backslash becomes ``/``: InfluxDB 1.x does not unescape ``\\\\`` in a tag value (it
    stores both) and rejects the whole write when a tag value ends in a backslash. Newline and
    carriage return (not allowed at all) are written as ``\\n`` / ``\\r``, which every
    version keeps literally. Identifiers never need it; it keeps an odd collector or alarm
    id from breaking a batch.
    """
    return value if _TAG_SPECIAL.search(value) is None else value.translate(_TAG_ESCAPES)


def encode_point(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, object], ts_ns: int
) -> str:
    """One line: ``measurement,<tags> <fields> <ts_ns>``; fields in the order given, each
    written as the type of its Python value (see the module's table)."""
    return f"{_series(measurement, tags)} {_fields(fields)} {ts_ns}"


def _series(measurement: str, tags: Mapping[str, str]) -> str:
    """``measurement,key=value,...``: tags sorted by key, empty values left out."""
    return measurement + "".join(
        [f",{key}={escape_tag(value)}" for key, value in sorted(tags.items()) if value]
    )


def _fields(values: Mapping[str, object]) -> str:
    encoded = ((key, _field_value(value)) for key, value in values.items())
    return ",".join(f"{key}={value}" for key, value in encoded if value is not None)


def _field_value(value: object) -> str | None:
    """A field value as its Python type says; None: leave the field out."""
    if value is None:
        return None
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else None
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _numbers_as_floats(fields: Mapping[str, object]) -> dict[str, object]:
    """For the measurements that have always stored every number as a float: integers
    (not booleans) become floats, so a count of 3 is the field type 3.5 would be."""
    return {
        key: float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        for key, value in fields.items()
    }


def encode_telemetry(message: Telemetry | TelemetryRows) -> list[str]:
    """One line per distinct timestamp of the message: what :func:`encode_point` writes
    for its readings (integers as floats), built without a dict per line.

    The collector's hot path passes :class:`~derrick.wire.payloads.TelemetryRows`
    (readings as tuples); a :class:`Telemetry` is read into them first."""
    if message.__class__ is not TelemetryRows:
        message = TelemetryRows.of(message)  # type: ignore[arg-type]
    series = _telemetry_series(message.site, message.asset, message.device, message.kind)
    fields_at: dict[int, list[str]] = {}
    fields: list[str] = []
    at = None
    good = _GOOD
    for tag, value, _unit, quality, ts in message.rows:  # type: ignore[union-attr]
        if ts != at:  # readings of one poll share their time: one lookup per message
            at = ts
            fields = fields_at.get(ts)  # type: ignore[assignment]
            if fields is None:
                fields = fields_at[ts] = []
        if value.__class__ is float and quality is good and value - value == 0:
            fields.append(f"{tag}={value!r}")  # the common case, inline: finite float
            continue
        written = float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        encoded = _field_value(written)
        if encoded is not None:
            fields.append(f"{tag}={encoded}")
        mark = quality if encoded is not None else Quality.BAD
        if mark != good:
            fields.append(f'{tag}_q="{mark.value}"')
    return [f"{series}{','.join(fields)} {ts}" for ts, fields in fields_at.items() if fields]


@functools.lru_cache(maxsize=_SERIES_CACHED)
def _telemetry_series(site: str, asset: str, device: str, kind: str) -> str:
    """A device's telemetry series and the space before the fields: made once per device
    (about 3 us), not once per message."""
    tags = {"asset": asset, "device": device, "kind": kind, "site": site}
    return f"{_series('telemetry', tags)} "


def encode_alarm(notice: AlarmNotice) -> str:
    """An alarm notice (announce, clear, reminder, escalation, operator action) as
    measurement ``alarms``: the alarm timeline and the operator journal.

    ``event`` is a tag: a reset's journal entry and the clear it causes share one
    instant, and as fields of one series the second would overwrite the first."""
    tags = {
        "asset": notice.asset, "device": notice.device, "event": notice.event,
        "priority": notice.priority, "rule": notice.rule, "site": notice.site,
    }  # fmt: skip
    fields = {
        "state": notice.state,
        "reason": notice.reason,
        "message": notice.message,
        "value": notice.value,
        "limit": notice.limit,
        "who": notice.who or None,
        "comment": notice.comment or None,
        "notice_key": notice.key,
        "duration_s": None if notice.ended_ns is None else (notice.ended_ns - notice.ts_ns) / 1e9,
    }
    return encode_point("alarms", tags, _numbers_as_floats(fields), notice.ts_ns)


def encode_alarm_state(state: AlarmStateMessage) -> str:
    """One alarm's state after a change, as measurement ``alarm_state``."""
    tags = {
        "asset": state.asset, "device": state.device, "priority": state.priority,
        "rule": state.rule, "site": state.site,
    }  # fmt: skip
    fields = {
        "state": state.state,
        "active": state.active,
        "acked": state.acked,
        "value": state.value,
        "limit": state.limit,
        "message": state.message,
    }
    return encode_point("alarm_state", tags, _numbers_as_floats(fields), state.ts_ns)


def encode_device_status(status: DeviceStatus) -> str:
    """A device going up or down, as measurement ``device_status``."""
    tags = {"asset": status.asset, "device": status.device, "site": status.site}
    fields = {"up": status.state is DeviceState.UP, "reason": status.reason}
    return encode_point("device_status", tags, fields, status.ts_ns)


def encode_agent_metrics(metrics: AgentMetrics) -> str:
    """An agent's health report, as measurement ``agent`` (one line per report)."""
    states = [device.state for device in metrics.devices.values()]
    queue = metrics.queue
    fields = {
        "queue_depth": queue.depth,
        "queue_bytes": queue.bytes,
        "queue_oldest_age_s": queue.oldest_age_s or 0.0,
        "dropped_telemetry": queue.dropped_telemetry,
        "messages_published": metrics.messages_published,
        "publish_latency_ms_p50": metrics.publish_latency_ms_p50,
        "publish_latency_ms_max": metrics.publish_latency_ms_max,
        "devices_up": sum(state is DeviceState.UP for state in states),
        "devices_down": sum(state is DeviceState.DOWN for state in states),
        "poll_overruns": sum(device.poll_overruns for device in metrics.devices.values()),
        "uptime_s": metrics.uptime_s,
        "broker_connected": metrics.broker_connected,
    }
    tags = {"agent": metrics.agent, "site": metrics.site}
    return encode_point("agent", tags, _numbers_as_floats(fields), metrics.ts_ns)


def encode_stats(collector: str, fields: Mapping[str, object], ts_ns: int) -> str:
    """The collector's own counters, as measurement ``collector`` (every number a float)."""
    return encode_point("collector", {"collector": collector}, _numbers_as_floats(fields), ts_ns)


def topic_of_line(line: str) -> str | None:
    """The MQTT topic a line of ours was made from (None: the collector's own lines).

    For a refused line that comes back from the spool, where only the lines were kept:
    the identifiers in its tags name the topic, as validation made sure they agree."""
    measurement, _, rest = line.partition(",")
    tags = dict(pair.split("=", 1) for pair in rest.split(" ", 1)[0].split(",") if "=" in pair)
    try:
        if measurement == "telemetry":
            return telemetry_topic(tags["site"], tags["asset"], tags["device"])
        if measurement == "device_status":
            return device_status_topic(tags["site"], tags["asset"], tags["device"])
        if measurement == "agent":
            return agent_metrics_topic(tags["agent"])
    except KeyError:
        return None
    return None
