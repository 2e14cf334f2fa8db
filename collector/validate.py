"""Validate stage: raw MQTT message -> Telemetry, or a classified reason why not.

A good message costs one ``Telemetry.model_validate_json``; everything below that call
(working out *why* a message failed) runs only for rejected ones, so it may be slow and
thorough. A rejection has a ``kind`` (for counting and for the dead-letter store) and a
``reason`` written for the person who has to fix the sender:

=============  ==========================================================================
kind           when
=============  ==========================================================================
``topic``      the topic does not follow ``derrick/v1/<site>/<asset>/<device>/telemetry``
``oversized``  the payload is over :data:`MAX_PAYLOAD_BYTES` (checked before parsing)
``json``       not UTF-8, or not well-formed JSON
``version``    well-formed, but ``v`` is not a schema version this collector speaks
``schema``     wrong type, missing or unknown field; the reason names the field path,
               e.g. ``readings[3].value: ...``
``mismatch``   site/asset/device in the payload differ from the topic
=============  ==========================================================================

Reasons never quote payload values (they go to the logs), except a short ``v``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from derrick.contract import SCHEMA_VERSION, Telemetry, TopicError, parse_telemetry_topic

MAX_PAYLOAD_BYTES = 1_000_000

REJECT_KINDS = ("topic", "oversized", "json", "version", "schema", "mismatch")
"""Every ``Rejected.kind``, in the order :func:`validate` checks them."""

_UNION_MEMBERS = frozenset(("bool", "int", "float", "str", "none"))
_KEY_ERRORS = frozenset(("missing", "extra_forbidden"))


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    kind: str  # one of REJECT_KINDS


def validate(topic: str, payload: bytes) -> Telemetry | Rejected:
    """Check topic shape, size and schema, and that the topic agrees with the payload."""
    try:
        site, asset, device = parse_telemetry_topic(topic)
    except TopicError as exc:
        return Rejected(str(exc), "topic")
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejected(
            f"payload of {len(payload)} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}",
            "oversized",
        )
    try:
        message = Telemetry.model_validate_json(payload)
    except ValidationError as exc:
        return classify(payload, exc)
    if message.site != site or message.asset != asset or message.device != device:
        return Rejected(
            f"topic names {site}/{asset}/{device}, payload "
            f"{message.site}/{message.asset}/{message.device}",
            "mismatch",
        )
    return message


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
    if len(first) == 1:
        text = first[0]["msg"]
    else:  # a union such as a reading's value: one message per member type
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
