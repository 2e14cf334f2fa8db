"""Validate stage: raw MQTT message -> Telemetry, or a reason why not."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from derrick.contract import Telemetry, TopicError, parse_telemetry_topic

MAX_PAYLOAD_BYTES = 1_000_000


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str


def validate(topic: str, payload: bytes) -> Telemetry | Rejected:
    """Check topic shape, size and schema, and that the topic agrees with the payload."""
    try:
        site, asset, device = parse_telemetry_topic(topic)
    except TopicError as exc:
        return Rejected(str(exc))
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejected(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        message = Telemetry.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        return Rejected(f"{where}: {first['msg']} ({exc.error_count()} errors)")
    if (message.site, message.asset, message.device) != (site, asset, device):
        return Rejected(
            f"topic names {site}/{asset}/{device}, payload "
            f"{message.site}/{message.asset}/{message.device}"
        )
    return message
