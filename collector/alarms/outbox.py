"""Durable notification outbox: every notice is committed before anyone is told.

Notices live in the alarm state file (same SQLite connection), and are inserted in the
same transaction as the alarm records whose change caused them, so a crash can leave
neither a changed alarm without its notices nor notices for a change that was lost.

One row per (notice key, channel). A delivery worker per channel takes due rows in
order, sends them, and marks them delivered; a failure leaves them for a retry with
backoff. A crash between sending and marking sends that row again with the same
idempotency key, which the receiver can recognise (webhook ``Idempotency-Key``, e-mail
``Message-ID``); nothing else is ever sent twice, because keys are unique in the table
and generated notices (reminders, escalations) have keys derived from the alarm's
history (``INSERT OR IGNORE``).

Bounded: delivered rows are kept ``keep_delivered_h`` (to recognise keys again), then
purged; undelivered rows beyond ``max_pending`` per channel are dropped oldest first,
lowest priority first, each drop logged and counted.

Rows hold :class:`~derrick.wire.payloads.AlarmNotice` s and, for event ``state``,
:class:`~derrick.wire.payloads.AlarmStateMessage` s. This module is where they become the
JSON stored in the table (:func:`insert_rows`) and where that JSON becomes objects again
(:meth:`Outbox.pending`): the rest of the notify stage, and every channel, handles the
objects.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from pydantic import ValidationError

from derrick.plumbing.configfile import one_line
from derrick.wire.payloads import AlarmNotice, AlarmStateMessage

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    channel TEXT NOT NULL,
    alarm_id TEXT NOT NULL,
    event TEXT NOT NULL,
    rank INTEGER NOT NULL,
    grp TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    due_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0,
    delivered_ns INTEGER,
    failed TEXT,
    UNIQUE (key, channel)
);
CREATE INDEX IF NOT EXISTS notices_pending ON notices (channel, delivered_ns, id);
CREATE INDEX IF NOT EXISTS notices_alarm ON notices (alarm_id, event, created_ns);
"""

# Lower rank is dropped first when a channel's backlog is at its bound.
RANKS = {"low": 0, "medium": 1, "high": 2, "critical": 3}
STATE_EVENT = "state"  # the event of a row holding an AlarmStateMessage

Message = AlarmNotice | AlarmStateMessage
"""What a row holds and its channel's sender gets."""


class OutboxError(Exception):
    """The outbox table cannot be used; sqlite3 errors are chained."""


@dataclass(frozen=True, slots=True)
class NewNotice:
    """A row to insert: ``message`` is what the channel's sender gets (an AlarmNotice,
    or an AlarmStateMessage when ``event`` is ``state``)."""

    key: str
    channel: str
    alarm_id: str
    event: str
    priority: str
    group: str  # flood-control group, ``site/asset``
    message: Message
    created_ns: int
    due_ns: int

    def row(self, payload: str) -> tuple[object, ...]:
        """The parameters of :data:`INSERT`, the message stored as ``payload``."""
        return (
            self.key, self.channel, self.alarm_id, self.event, RANKS.get(self.priority, 2),
            self.group, payload, self.created_ns, self.due_ns,
        )  # fmt: skip


INSERT = (
    "INSERT OR IGNORE INTO notices (key, channel, alarm_id, event, rank, grp, payload, "
    "created_ns, due_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def insert_rows(notices: Iterable[NewNotice]) -> list[tuple[object, ...]]:
    """The parameters of :data:`INSERT` for ``notices``, each message stored as JSON."""
    return [notice.row(payload) for notice, payload in with_payloads(notices)]


def with_payloads(notices: Iterable[NewNotice]) -> list[tuple[NewNotice, str]]:
    """Each notice with its message as stored (JSON, made once for a message that goes
    to several channels)."""
    stored: dict[int, tuple[Message, str]] = {}  # id -> (the message, kept alive; JSON)
    pairs: list[tuple[NewNotice, str]] = []
    for n in notices:
        known = stored.get(id(n.message))
        if known is None:
            known = stored[id(n.message)] = (n.message, _stored_form(n.message))
        pairs.append((n, known[1]))
    return pairs


def fingerprint(message: Message) -> str:
    """A short hash of ``message`` as stored: tells two states of one alarm at one
    instant apart in their keys (12 hex digits)."""
    return hashlib.blake2b(_stored_form(message).encode(), digest_size=6).hexdigest()


def _stored_form(message: Message) -> str:
    return message.model_dump_json()


def read_message(event: str, payload: str) -> Message:
    """A stored message back; ValidationError when it does not load."""
    if event == STATE_EVENT:
        return AlarmStateMessage.model_validate_json(payload)
    return AlarmNotice.model_validate_json(payload)


@dataclass(frozen=True, slots=True)
class Pending:
    """A row to deliver: ``message`` is read from the stored JSON, ``payload``. ``id``:
    the SQLite row id, or the etcd key of a row kept there (collector.alarms.shared)."""

    id: int | str
    key: str
    alarm_id: str
    event: str
    rank: int
    group: str
    payload: str
    created_ns: int
    due_ns: int
    attempts: int
    held: bool
    message: Message


class Outbox:
    """Reads and updates the ``notices`` table; inserts go with alarm state saves."""

    def __init__(self, db: sqlite3.Connection, max_pending: int, keep_delivered_s: float):
        self._db = db
        self.max_pending = max_pending
        self.keep_delivered_ns = int(keep_delivered_s * 1e9)
        self.dropped = 0
        self.failed = 0
        self.delivered = 0
        try:
            db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox: {exc}") from exc

    def insert(self, notices: Iterable[NewNotice]) -> None:
        """Insert outside an alarm save (one durable transaction)."""
        rows = insert_rows(notices)
        if rows:
            with self._transaction():
                self._db.executemany(INSERT, rows)

    def pending(self, channel: str, limit: int = 200) -> list[Pending]:
        """Undelivered, not failed rows of a channel, oldest first (due or not).

        A row whose message no longer loads (stored by a newer version, or edited) can
        never be sent: it is marked failed with the reason, logged, and left out."""
        cursor = self._execute(
            "SELECT id, key, alarm_id, event, rank, grp, payload, created_ns, due_ns, attempts, "
            "held FROM notices WHERE channel = ? AND delivered_ns IS NULL AND failed IS NULL "
            "ORDER BY id LIMIT ?",
            (channel, limit),
        )
        rows: list[Pending] = []
        for row in cursor.fetchall():
            try:
                message = read_message(row[3], row[6])
            except ValidationError as exc:
                reason = f"unreadable: {one_line(exc)}"
                log.error("notification unreadable, not sent", channel=channel, key=row[1],
                          reason=reason)  # fmt: skip
                self.mark_failed([row[0]], reason)
                continue
            rows.append(Pending(*row[:-1], held=bool(row[-1]), message=message))
        return rows

    def mark_delivered(self, ids: Iterable[int], now_ns: int) -> None:
        ids = list(ids)
        with self._transaction():
            self._db.executemany(
                "UPDATE notices SET delivered_ns = ?, attempts = attempts + 1 WHERE id = ?",
                [(now_ns, i) for i in ids],
            )
        self.delivered += len(ids)

    def mark_attempt(self, ids: Iterable[int]) -> None:
        """A failed try: counted; the row keeps its place (the channel backs off)."""
        with self._transaction():
            self._db.executemany(
                "UPDATE notices SET attempts = attempts + 1 WHERE id = ?", [(i,) for i in ids]
            )

    def hold(self, ids: Iterable[int], due_ns: int) -> None:
        """Delay rows (flood control) without counting an attempt."""
        with self._transaction():
            self._db.executemany(
                "UPDATE notices SET due_ns = ?, held = 1 WHERE id = ?", [(due_ns, i) for i in ids]
            )

    def mark_failed(self, ids: Iterable[int], reason: str) -> None:
        """A permanent refusal: kept with its reason, never retried."""
        ids = list(ids)
        with self._transaction():
            self._db.executemany(
                "UPDATE notices SET failed = ?, attempts = attempts + 1 WHERE id = ?",
                [(reason[:500], i) for i in ids],
            )
        self.failed += len(ids)

    def last_announced(self) -> dict[str, int]:
        """When each alarm was last announced (for reminders after a restart)."""
        cursor = self._execute(
            "SELECT alarm_id, MAX(created_ns) FROM notices WHERE event = 'announce' "
            "GROUP BY alarm_id",
            (),
        )
        return dict(cursor.fetchall())

    def last_texts(self, channel: str) -> dict[str, str]:
        """The condition text (``message``) of each alarm's newest row on ``channel``:
        the texts after a restart. Read leniently: a row of an older version serves as
        long as it is a JSON object (no ``message``: an empty text)."""
        cursor = self._execute(
            "SELECT alarm_id, payload FROM notices WHERE id IN "
            "(SELECT MAX(id) FROM notices WHERE channel = ? GROUP BY alarm_id)",
            (channel,),
        )
        return {alarm: json.loads(payload).get("message", "") for alarm, payload in cursor}

    def depth(self) -> dict[str, int]:
        """Undelivered rows per channel."""
        cursor = self._execute(
            "SELECT channel, COUNT(*) FROM notices WHERE delivered_ns IS NULL "
            "AND failed IS NULL GROUP BY channel",
            (),
        )
        return dict(cursor.fetchall())

    def enforce(self, now_ns: int) -> int:
        """Purge old delivered rows; drop the oldest, lowest-ranked beyond the bound."""
        dropped = 0
        with self._transaction():
            self._db.execute(
                "DELETE FROM notices WHERE (delivered_ns IS NOT NULL OR failed IS NOT NULL) "
                "AND created_ns < ?",
                (now_ns - self.keep_delivered_ns,),
            )
            for channel, count in self.depth().items():
                excess = count - self.max_pending
                if excess <= 0:
                    continue
                victims = self._db.execute(
                    "SELECT id, key FROM notices WHERE channel = ? AND delivered_ns IS NULL "
                    "AND failed IS NULL ORDER BY rank, id LIMIT ?",
                    (channel, excess),
                ).fetchall()
                self._db.executemany(
                    "UPDATE notices SET failed = 'dropped: outbox full' WHERE id = ?",
                    [(row[0],) for row in victims],
                )
                dropped += len(victims)
                log.error(
                    "notification outbox full, oldest dropped",
                    channel=channel,
                    dropped=len(victims),
                    first_key=victims[0][1] if victims else None,
                    max_pending=self.max_pending,
                )
        self.dropped += dropped
        return dropped

    def _execute(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox: {exc}") from exc

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN``/``COMMIT`` (autocommit connection), sqlite3 errors as OutboxError."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox: {exc}") from exc

    def __exit__(self, kind: object, exc: BaseException | None, _tb: object) -> None:
        if exc is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                self._db.execute("ROLLBACK")
                raise OutboxError(f"outbox: {error}") from error
        else:
            self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise OutboxError(f"outbox: {exc}") from exc
