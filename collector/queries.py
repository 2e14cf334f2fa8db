"""What the operator console reads back from InfluxDB: the alarm journal and an asset's
latest values (issue 18).

Both are InfluxQL over the writer's ``query`` (:meth:`collector.influx.V1Writer.query`;
a v2 writer raises :class:`collector.influx.StoreError`, which the console shows).
Identifiers in the statements are fixed here; every value that comes from a user goes in
as an InfluxQL string literal made by :func:`literal`, and every number through ``int``,
so no input can change a statement's shape.

The journal is measurement ``alarms`` (:func:`collector.lineproto.encode_alarm`): tags
``asset``, ``device``, ``event``, ``priority``, ``rule``, ``site``; fields ``state``,
``reason``, ``message``, ``value``, ``limit``, ``who``, ``comment``, ``notice_key``,
``duration_s``. Telemetry is measurement ``telemetry``: tags ``site``, ``asset``,
``device``, ``kind``; one field per PLC tag, plus ``<tag>_q`` quality marks.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

JOURNAL_COLUMNS = (
    "site", "asset", "device", "rule", "event", "priority", "state", "reason",
    "who", "comment", "message", "value", "limit", "notice_key", "duration_s",
)  # fmt: skip
"""The keys of a journal row besides ``ts_ns`` (absent fields are None)."""
MAX_LIMIT = 100_000
LATEST_WINDOW_S = 3600
QUALITY_SUFFIX = "_q"
NS_PER_S = 1_000_000_000


class Queryable(Protocol):
    async def query(self, influxql: str) -> list[dict[str, Any]]: ...


def literal(value: str) -> str:
    """``value`` as an InfluxQL single-quoted string literal.

    InfluxQL's scanner knows the escapes ``\\\\``, ``\\'``, ``\\"`` and ``\\n`` inside a
    string, and ends a string at a raw newline (an error): backslash, quote and newline
    are escaped, everything else stands for itself."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def _equal(key: str, value: str | None) -> list[str]:
    """A condition ``"key" = '<value>'`` (``key`` is one of ours), none when no value."""
    return [] if value is None else [f'"{key}" = {literal(str(value))}']


async def journal(
    writer: Queryable,
    *,
    start_ns: int,
    end_ns: int,
    site: str | None = None,
    asset: str | None = None,
    rule: str | None = None,
    who: str | None = None,
    event: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """The journal's notices from ``start_ns`` (inclusive) to ``end_ns`` (exclusive),
    newest first, at most ``limit``; each filter that is not None must match exactly.

    Rows: ``ts_ns`` and :data:`JOURNAL_COLUMNS`."""
    conditions = [f"time >= {int(start_ns)}", f"time < {int(end_ns)}"]
    for key, value in (
        ("site", site), ("asset", asset), ("rule", rule), ("who", who), ("event", event),
    ):  # fmt: skip
        conditions += _equal(key, value)
    count = max(1, min(int(limit), MAX_LIMIT))
    statement = _select("*", "alarms", conditions, f"ORDER BY time DESC LIMIT {count}")
    return [_journal_row(row) for row in await writer.query(statement)]


def _select(what: str, measurement: str, conditions: list[str], tail: str = "") -> str:
    """A SELECT of ours: identifiers fixed here, conditions built by :func:`_equal` or
    from integers."""
    where = " AND ".join(conditions)
    return f'SELECT {what} FROM "{measurement}" WHERE {where} {tail}'.rstrip()  # noqa: S608


def _journal_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"ts_ns": int(row["time"]), **{key: row.get(key) for key in JOURNAL_COLUMNS}}


async def latest(
    writer: Queryable,
    site: str,
    asset: str,
    *,
    now_ns: int | None = None,
    window_s: float = LATEST_WINDOW_S,
) -> dict[str, dict[str, Any]]:
    """The asset's latest readings of the last ``window_s`` (an hour), per device:
    ``{device: {"ts_ns": time of its newest line, "values": {field: last value}}}``,
    devices and fields sorted by name. Quality marks (``<tag>_q``) are left out: the last
    mark of the hour need not be the current quality."""
    end = time.time_ns() if now_ns is None else int(now_ns)
    start = end - int(window_s * NS_PER_S)
    conditions = [*_equal("site", site), *_equal("asset", asset)]
    conditions += [f"time > {start}", f"time <= {end}"]
    values = await writer.query(_select("LAST(*)", "telemetry", conditions, 'GROUP BY "device"'))
    newest = await writer.query(
        _select("*", "telemetry", conditions, 'GROUP BY "device" ORDER BY time DESC LIMIT 1')
    )
    stamps = {row.get("device"): row.get("time") for row in newest}
    found: dict[str, dict[str, Any]] = {}
    for row in sorted(values, key=lambda r: str(r.get("device"))):
        device = str(row.get("device"))
        fields = {
            key.removeprefix("last_"): value
            for key, value in row.items()
            if key.startswith("last_") and not key.endswith(QUALITY_SUFFIX) and value is not None
        }
        found[device] = {"ts_ns": stamps.get(device), "values": dict(sorted(fields.items()))}
    return found
