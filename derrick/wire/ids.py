"""Identifiers of the wire contract: the schema version, the names in topics, alarm ids.

Identifiers (site, asset, device, agent, rule, tag) are restricted to
``[A-Za-z0-9_.-]`` so they are safe both as MQTT topic levels (no ``/``, ``+``, ``#``)
and as InfluxDB tag values and field keys.
"""

from __future__ import annotations

import re
from typing import Annotated, NamedTuple

from pydantic import StringConstraints

SCHEMA_VERSION = 1

Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]
"""A name usable as an MQTT topic level, an InfluxDB tag value and a field key."""

_IDENT = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # fullmatch: an Ident, as above
ALARM_ID_PARTS = ("rule", "site", "asset", "device")


class AlarmId(NamedTuple):
    """One alarm: one rule on one device (an agent's alarms name the agent as asset and
    device).

    Wherever an alarm id leaves the code - MQTT and JSON payloads, the alarm state file,
    the notification outbox, InfluxDB tags, the operator API - it is the string
    ``rule:site:asset:device`` (``str(alarm_id)``), read back with :meth:`parse`. A
    tuple, so it unpacks as ``rule, site, asset, device = alarm_id`` and equals the plain
    ``(rule, site, asset, device)`` keys of the rule engine and the loss alarms.
    """

    rule: str
    site: str
    asset: str
    device: str

    def __str__(self) -> str:
        return f"{self.rule}:{self.site}:{self.asset}:{self.device}"

    @classmethod
    def parse(cls, text: str) -> AlarmId:
        """``rule:site:asset:device`` -> its parts; ValueError naming ``text`` unless it
        is four identifiers (:data:`Ident`) joined by colons."""
        parts = text.split(":")
        if len(parts) != len(ALARM_ID_PARTS) or not all(map(_IDENT.fullmatch, parts)):
            raise ValueError(
                f"malformed alarm id {text[:300]!r}: want rule:site:asset:device, "
                "each of [A-Za-z0-9_.-]"
            )
        return cls(*parts)

    @staticmethod
    def parts_of(text: str) -> dict[str, str]:
        """What can be read of an id that may be malformed (one stored by hand or by an
        older version), by name: ``rule``, ``site``, ``asset``, ``device`` as far as
        there are colon-separated parts; empty parts left out, a fourth colon stays in
        ``device``. For labelling only (InfluxDB tags), never to act on an alarm."""
        parts = text.split(":", len(ALARM_ID_PARTS) - 1)
        return {key: value for key, value in zip(ALARM_ID_PARTS, parts, strict=False) if value}
