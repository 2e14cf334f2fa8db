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

from derrick.contract import AlarmEvent, Quality, Telemetry

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
        encoded = _field_value(reading.value)
        quality = reading.quality if encoded is not None else Quality.BAD
        if encoded is not None:
            fields.append(f"{reading.tag}={encoded}")
        if quality != _GOOD:
            fields.append(f'{reading.tag}_q="{quality.value}"')
    return [f"{series}{','.join(fields)} {ts}" for ts, fields in fields_at.items() if fields]


def encode_alarm(event: AlarmEvent) -> str:
    """Alarm transitions as measurement ``alarms`` for the alarm timeline."""
    message = _field_value(event.message)
    return (
        f"alarms,asset={event.asset},device={event.device},priority={event.priority},"
        f'rule={event.rule},site={event.site} state="{event.state.value}",'
        f"value={_field_value(event.value)},limit={_field_value(event.limit)},"
        f"message={message} {event.ts_ns}"
    )
