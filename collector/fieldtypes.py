"""Field types: which value type each telemetry field holds, learned and then enforced.

InfluxDB 1.x fixes a field's type per measurement and shard: once ``hook_load`` was
written as a float, a string ``hook_load`` in the same measurement is refused
(``field type conflict``), in whatever series it comes. So the type belongs to the
field key of measurement ``telemetry`` - the reading's tag, or ``<tag>_q`` for its
quality mark - not to one device. A collector that knows the types can reject the one
message that contradicts them *before* writing, naming topic, tag and both types,
instead of having InfluxDB refuse part of a batch.

Types come from three places, the first one that speaks winning:

* InfluxDB's own field keys at start-up (``SHOW FIELD KEYS FROM telemetry``, v1 API);
* a refusal that names a field's stored type (a write that raced the seeding, or a
  database changed behind the collector's back): :meth:`FieldTypes.learn_from_refusal`;
* the first accepted value of a field this collector has not seen.

Integers are written as floats (see :mod:`collector.lineproto`), so the three types
are ``float``, ``boolean`` and ``string`` - InfluxDB's own names. A field InfluxDB
already holds as ``integer`` (written by another program) accepts none of ours, and
every message carrying it is rejected with that reason.
"""

from __future__ import annotations

import re

FLOAT = "float"
BOOLEAN = "boolean"
STRING = "string"

_REFUSAL = re.compile(
    r'input field \\?"(?P<field>[^"\\]+)\\?" on measurement \\?"(?P<measurement>[^"\\]+)\\?" '
    r"is type (?P<sent>\w+), already exists as type (?P<stored>\w+)"
)


def value_type(value: object) -> str:
    """The InfluxDB field type a (validated, not None) reading value is written as."""
    if value.__class__ is bool:
        return BOOLEAN
    if value.__class__ is str:
        return STRING
    return FLOAT


class FieldTypes:
    """The type of each field key of measurement ``telemetry``; one per collector."""

    def __init__(self) -> None:
        self.types: dict[str, str] = {}
        """Field key -> type, read directly on the validate stage's hot path; the type
        names are this module's constants, so ``is`` compares them."""
        self._sources: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.types)

    def get(self, field: str) -> str | None:
        return self.types.get(field)

    def source(self, field: str) -> str:
        """Where the type of ``field`` was learned, for a rejection's reason."""
        return self._sources.get(field, "")

    def learn(self, field: str, field_type: str, source: str) -> None:
        """Take ``field_type`` unless the field already has one."""
        if field not in self.types:
            self.types[field] = field_type
            self._sources[field] = source

    def seed(self, stored: dict[str, set[str]], source: str = "influxdb field keys") -> int:
        """Types as the database reports them; a field stored with two types (in different
        shards) is left to be learned. Returns how many fields were taken."""
        taken = 0
        for field, types in stored.items():
            if len(types) == 1:
                self.types[field] = _interned(next(iter(types)))
                self._sources[field] = source
                taken += 1
        return taken

    def learn_from_refusal(self, reason: str) -> list[str]:
        """The fields whose stored type a refusal names (``telemetry`` only), now known
        with that type; returns them."""
        fields = []
        for found in _REFUSAL.finditer(reason):
            if found["measurement"] == "telemetry":
                self.types[found["field"]] = _interned(found["stored"])
                self._sources[found["field"]] = "an influxdb refusal"
                fields.append(found["field"])
        return fields


_CONSTANTS = {FLOAT: FLOAT, BOOLEAN: BOOLEAN, STRING: STRING}


def _interned(name: str) -> str:
    """This module's constant for a type name InfluxDB gives (``is`` on the hot path)."""
    return _CONSTANTS.get(name, name)


def refused_fields(reason: str) -> list[tuple[str, str, str]]:
    """``(measurement, field, type sent)`` of each field type conflict an InfluxDB error
    names."""
    return [
        (found["measurement"], found["field"], found["sent"]) for found in _REFUSAL.finditer(reason)
    ]


def line_field_type(line: str, field: str) -> str | None:
    """The type ``field`` has in a line of line protocol (None: not in it).

    For our own lines only: identifiers need no escaping, and a string value is the only
    place a quote, space or comma can hide, so the first ``␣field=`` or ``,field=`` after
    the series is the field."""
    _series, _, rest = line.partition(" ")
    for mark in (f" {field}=", f",{field}="):
        at = f" {rest}".find(mark)
        if at >= 0:
            first = rest[at + len(mark) - 1 : at + len(mark)]
            break
    else:
        return None
    if first == '"':
        return STRING
    if first in "tTfF":
        return BOOLEAN
    value = rest[at + len(mark) - 1 :].split(",", 1)[0].split(" ", 1)[0]
    return "integer" if value.endswith("i") else FLOAT
