"""Encode telemetry as InfluxDB line protocol: the collector's hot path.

Schema (see README): measurement ``telemetry``; tags ``asset``, ``device``, ``kind``,
``site`` (sorted, as InfluxDB prefers); one field per tag holding its value (float,
boolean or string); a string field ``<tag>_q`` only when the quality is not good, so a
gap in the data shows as a quality mark, not as silence. Readings with the same
timestamp share one line.

Identifiers are restricted by the contract to ``[A-Za-z0-9_.-]``, so tag values and
field keys never need escaping; only string field values do.
"""

from __future__ import annotations

import math

from derrick.wire.payloads import (
    AgentMetrics,
    AlarmNotice,
    AlarmStateMessage,
    DeviceState,
    DeviceStatus,
    Quality,
    Telemetry,
)
from derrick.wire.topics import agent_metrics_topic, device_status_topic, telemetry_topic

_GOOD = Quality.GOOD


def _field_value(value: object) -> str | None:
    if value is None:
        return None
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        number = float(value)
        return repr(number) if math.isfinite(number) else None
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def encode_telemetry(message: Telemetry) -> list[str]:
    """One line per distinct timestamp of the message."""
    series = (
        f"telemetry,asset={message.asset},device={message.device},"
        f"kind={message.kind},site={message.site} "
    )
    fields_at: dict[int, list[str]] = {}
    for reading in message.readings:
        fields = fields_at.get(reading.ts_ns)
        if fields is None:
            fields = fields_at[reading.ts_ns] = []
        value = reading.value
        if value.__class__ is float and reading.quality is _GOOD and value - value == 0:
            fields.append(f"{reading.tag}={value!r}")  # the common case, inline: finite float
            continue
        encoded = _field_value(value)
        quality = reading.quality if encoded is not None else Quality.BAD
        if encoded is not None:
            fields.append(f"{reading.tag}={encoded}")
        if quality != _GOOD:
            fields.append(f'{reading.tag}_q="{quality.value}"')
    return [f"{series}{','.join(fields)} {ts}" for ts, fields in fields_at.items() if fields]


def encode_alarm(notice: AlarmNotice) -> str:
    """An alarm notice (announce, clear, reminder, escalation, operator action) as
    measurement ``alarms``: the alarm timeline and the operator journal.

    ``event`` is a tag: a reset's journal entry and the clear it causes share one
    instant, and as fields of one series the second would overwrite the first."""
    fields = {
        "state": notice.state,
        "reason": notice.reason,
        "message": notice.message,
        "value": notice.value,
        "limit": notice.limit,
        "who": notice.who or None,
        "comment": notice.comment or None,
        "notice_key": notice.key,
    }
    return (
        f"alarms,asset={notice.asset},device={notice.device},event={notice.event},"
        f"priority={notice.priority},rule={notice.rule},site={notice.site} "
        f"{_fields(fields)} {notice.ts_ns}"
    )


def encode_alarm_state(state: AlarmStateMessage) -> str:
    """One alarm's state after a change, as measurement ``alarm_state``."""
    fields = {
        "state": state.state,
        "active": state.active,
        "acked": state.acked,
        "value": state.value,
        "limit": state.limit,
        "message": state.message,
    }
    return (
        f"alarm_state,asset={state.asset},device={state.device},priority={state.priority},"
        f"rule={state.rule},site={state.site} {_fields(fields)} {state.ts_ns}"
    )


def encode_device_status(status: DeviceStatus) -> str:
    """A device going up or down, as measurement ``device_status``."""
    up = "true" if status.state is DeviceState.UP else "false"
    return (
        f"device_status,asset={status.asset},device={status.device},site={status.site} "
        f"up={up},reason={_field_value(status.reason)} {status.ts_ns}"
    )


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
        "uptime_s": metrics.uptime_s,
        "broker_connected": metrics.broker_connected,
    }
    return f"agent,agent={metrics.agent},site={metrics.site} {_fields(fields)} {metrics.ts_ns}"


def encode_stats(collector: str, fields: dict[str, object], ts_ns: int) -> str:
    """The collector's own counters, as measurement ``collector``."""
    return f"collector,collector={collector} {_fields(fields)} {ts_ns}"


def _fields(values: dict[str, object]) -> str:
    encoded = ((key, _field_value(value)) for key, value in values.items())
    return ",".join(f"{key}={value}" for key, value in encoded if value is not None)


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
