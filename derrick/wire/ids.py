"""Identifiers of the wire contract: the schema version and the names in topics.

Identifiers (site, asset, device, agent, rule, tag) are restricted to
``[A-Za-z0-9_.-]`` so they are safe both as MQTT topic levels (no ``/``, ``+``, ``#``)
and as InfluxDB tag values and field keys.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

SCHEMA_VERSION = 1

Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]
"""A name usable as an MQTT topic level, an InfluxDB tag value and a field key."""
