"""Persisted alarm state: every alarm's lifecycle record, so a restart neither fires an
alarm again nor forgets one that is active.

One SQLite file (WAL), one row per alarm: its id and its record as JSON
(:meth:`AlarmRecord.to_dict`). Alarm transitions are rare and each one matters, so every
save is committed with ``synchronous=FULL``: it survives a power cut, not just a killed
process.

A row that no longer loads (a record from a future version, or one the lifecycle finds
inconsistent after a rule changed) is skipped with one error line naming the alarm and
the reason, so one bad row never keeps the collector from starting; the caller starts
that alarm afresh.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import structlog

from collector.alarms.outbox import INSERT, SCHEMA, NewNotice, insert_rows
from derrick.alarms.lifecycle import AlarmRecord, RecordError

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    alarm_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    updated_ns INTEGER NOT NULL
)
"""


# The births of agents that evaluate rules at the edge (AgentStatus JSON): which rules
# of which devices this collector must not evaluate, known from the first message after
# a restart (the retained birth may come after the device's telemetry).
_EDGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS edge_agents (
    agent TEXT PRIMARY KEY,
    birth TEXT NOT NULL
)
"""


class AlarmStateError(Exception):
    """The alarm state file cannot be used; sqlite3 errors are chained."""


class AlarmStateStore:
    def __init__(self, path: Path | str) -> None:
        self.path = path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            self._db.execute(_EDGE_SCHEMA)
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise AlarmStateError(f"alarm state {path}: {exc}") from exc

    def load(self) -> dict[str, AlarmRecord]:
        """Every stored record that still loads, by alarm id."""
        records: dict[str, AlarmRecord] = {}
        try:
            rows = self._db.execute("SELECT alarm_id, record FROM alarms").fetchall()
        except sqlite3.Error as exc:
            raise AlarmStateError(f"alarm state {self.path}: {exc}") from exc
        for alarm_id, text in rows:
            try:
                records[alarm_id] = AlarmRecord.from_dict(json.loads(text))
            except (ValueError, RecordError) as exc:  # JSONDecodeError is a ValueError
                log.error("stored alarm state skipped", alarm_id=alarm_id, reason=str(exc))
        return records

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, shared with the notification outbox (one transaction for both)."""
        return self._db

    def save(
        self, records: Iterable[AlarmRecord], notices: Iterable[NewNotice] = ()
    ) -> frozenset[str]:
        """Store these records (insert or replace) and the notices their change caused,
        all in one durable transaction. Returns the alarm ids not stored: none here (a
        failure raises); see collector.alarms.shared for a store that can refuse."""
        rows = [
            (r.alarm_id, json.dumps(r.to_dict(), separators=(",", ":")), r.last_transition_ns)
            for r in records
        ]
        notice_rows = insert_rows(notices)
        if not rows and not notice_rows:
            return frozenset()
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO alarms (alarm_id, record, updated_ns) VALUES (?, ?, ?)",
                    rows,
                )
                self._db.executemany(INSERT, notice_rows)
        except sqlite3.Error as exc:
            raise AlarmStateError(f"alarm state {self.path}: {exc}") from exc
        return frozenset()

    def edge_births(self) -> dict[str, str]:
        """The last birth (JSON) of each agent that evaluates rules at the edge."""
        try:
            return dict(self._db.execute("SELECT agent, birth FROM edge_agents").fetchall())
        except sqlite3.Error as exc:
            raise AlarmStateError(f"alarm state {self.path}: {exc}") from exc

    def save_edge_birth(self, agent: str, birth: str | None) -> None:
        """Remember an agent's birth (None: it evaluates nothing at the edge any more)."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                if birth is None:
                    self._db.execute("DELETE FROM edge_agents WHERE agent = ?", (agent,))
                else:
                    self._db.execute(
                        "INSERT OR REPLACE INTO edge_agents (agent, birth) VALUES (?, ?)",
                        (agent, birth),
                    )
        except sqlite3.Error as exc:
            raise AlarmStateError(f"alarm state {self.path}: {exc}") from exc

    def forget(self, alarm_ids: Iterable[str]) -> None:
        """Drop alarms whose rule is gone."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "DELETE FROM alarms WHERE alarm_id = ?", [(i,) for i in alarm_ids]
                )
        except sqlite3.Error as exc:
            raise AlarmStateError(f"alarm state {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()
