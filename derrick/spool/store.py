"""Spool: a durable store-and-forward queue (SQLite, WAL, stdlib ``sqlite3``).

Every message the agent publishes is appended here first and leaves only when the broker
has acknowledged it (MQTT QoS 1 PUBACK): ``append`` -> ``read`` -> publish -> ``remove``.
The collector uses the same queue for points InfluxDB could not take yet.
Messages therefore survive broker outages and a ``kill -9`` of the agent, and go out in
insertion order (``Entry.id``: strictly increasing, never reused, even after a restart).

Bounds. ``max_bytes`` counts topic + payload bytes of queued messages (a running total,
not a ``SUM()`` per append). Over it, the oldest TELEMETRY goes first; STATUS only when no
telemetry is left; ALARM last. Entries older than ``max_age_s`` go whatever their
priority. Each append or ``enforce`` reports what it removed as ``Dropped`` records, and
cumulative counts per priority are persisted in the ``meta`` table.

Durability (the choice made here). The file is in WAL mode:

* ``synchronous=NORMAL``: a commit is a ``write()`` of the WAL frames into the OS page
  cache; the WAL is fsynced only at checkpoints. A process crash or ``kill -9`` loses
  nothing that was committed (the kernel still has the pages). A power loss or kernel
  panic can roll back the most recent commits (those since the last checkpoint the
  kernel has not written back yet: seconds, at most ~30 s with default Linux writeback
  settings) but never corrupts the file.
* ``synchronous=FULL``: every commit also fsyncs the WAL, so it survives power loss too;
  the price is one fsync per commit: tens of microseconds on a server SSD, 2-30 ms on
  the SD cards and cheap eMMC of small gateways, i.e. far more than the 1 ms/message
  budget when messages are appended one at a time.

Both are switched per transaction (``PRAGMA synchronous`` is read at commit time). By
default (``fsync_from=Priority.ALARM``) an append whose batch holds an ALARM is committed
with FULL, everything else with NORMAL: alarms survive a power cut, and since the fsync
covers the whole WAL, so does everything committed before them; telemetry can lose its
last seconds, which the power cut would have interrupted anyway. ``fsync_from=
Priority.TELEMETRY`` fsyncs every append, ``None`` never. Removals are always NORMAL:
a removal lost to a power cut only means the message is published again, which QoS 1
(at-least-once) allows anyway.

Single owner. The connection uses ``locking_mode=EXCLUSIVE``: no ``-shm`` file, slightly
cheaper transactions, and a second agent pointed at the same file gets a clear
``SpoolError`` instead of sharing (and corrupting the ordering of) one queue. The
catch: the ``sqlite3`` shell cannot open the file while the agent runs.

Disk space. ``journal_size_limit`` keeps the WAL near 4 MiB after each (automatic)
checkpoint. The database is created with ``auto_vacuum=INCREMENTAL``: pages freed by
removals go to a free list and are reused by later appends (so a steady queue does not
churn the file). Once a backlog has drained (queued bytes under ``keep_free_bytes``),
``enforce`` - which the agent calls on a timer - gives the free pages beyond
``keep_free_bytes`` back to the file system, ``reclaim_step_bytes`` per call, followed by
``wal_checkpoint(TRUNCATE)``; so a 500 MB backlog shrinks in short steps, never in one
long blocking ``VACUUM``.

Notes. Beside the queue, a small key/value table (:meth:`Spool.notes`) holds what a
producer must know after a restart about messages it queued, written in the same
transaction as them (``append(..., notes=...)``), together with any queued message it
takes back (``retract``): the agent's edge alarms keep their condition state there.

Clock. ``created_ns`` is wall-clock time (as in the messages), so the age bound follows
the wall clock: a gateway without an RTC whose clock jumps forward at NTP sync sees its
older entries age at once.

Unreadable file. If the file is not a database, fails ``PRAGMA quick_check`` or has a
schema this code does not know, it is renamed to ``<name>.corrupt-<UTC timestamp>``
(its ``-wal`` alongside), one error is logged naming both paths, and the spool starts
empty: an unattended gateway must keep working. The new file starts ids at 1 again. A
file that is merely locked, or a directory that cannot be written, raises ``SpoolError``.

Threading. Meant for one asyncio thread making short calls; no threads inside. The
connection is opened with ``check_same_thread=False`` so that the (slower) opening can
run in ``asyncio.to_thread``; calls must still never overlap.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import IntEnum
from itertools import islice
from pathlib import Path
from typing import Literal

import structlog

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    size INTEGER NOT NULL,           -- len(topic as UTF-8) + len(payload): the byte bound
    topic TEXT NOT NULL,
    payload BLOB NOT NULL            -- last: small columns stay in the row's first page
);
-- Byte bound: oldest id of a priority, with its size, without touching the table.
CREATE INDEX messages_priority ON messages (priority, id, size);
-- Age bound and oldest_age_s.
CREATE INDEX messages_created ON messages (created_ns);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
# Added after version 1 without changing its meaning: a file of an older agent gets it
# when opened (and an older agent ignores it).
_NOTES = (
    "CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID"
)

_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_IN_CHUNK = 500  # ids per "IN (...)": under SQLite's old 999-variable limit
_DROP_CHUNK = 1000  # (id, size) rows read per step while freeing bytes
_WAL_LIMIT = 4 * 1024 * 1024


class Priority(IntEnum):
    TELEMETRY = 0  # readings and agent metrics: dropped first
    STATUS = 1  # device/agent status, drop notices
    ALARM = 2  # last to go


_PRIORITY_BY_VALUE = tuple(Priority)


@dataclass(frozen=True, slots=True)
class Entry:
    id: int  # strictly increasing insertion order, never reused
    topic: str
    payload: bytes
    priority: Priority
    retain: bool
    created_ns: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """What one append/enforce call removed to stay within one bound.

    ``by_priority`` lists only priorities with a non-zero count. ``from_batch`` is how many
    of them were messages of the batch just appended (a batch larger than ``max_bytes`` on
    its own, or already older than ``max_age_s``); 0 for ``enforce``.
    """

    by_priority: dict[Priority, int]
    reason: Literal["bytes", "age"]
    from_batch: int = 0

    def total(self) -> int:
        return sum(self.by_priority.values())


@dataclass(frozen=True, slots=True)
class SpoolStats:
    depth: int  # messages queued
    bytes: int  # topic + payload bytes queued (what max_bytes bounds)
    oldest_age_s: float | None  # None when empty; 0.0 if the clock went back
    dropped: dict[Priority, int]  # cumulative since the file was created, every priority
    last_id: int
    file_bytes: int  # database + WAL on disk


class SpoolError(Exception):
    """The spool cannot do what was asked; sqlite3 errors are chained as ``__cause__``."""


class SpoolCorrupt(SpoolError):
    """SQLite found the open file corrupt; close and reopen the spool to move it aside."""


@dataclass(slots=True)
class _State:
    depth: int
    bytes: int
    last_id: int
    dropped: dict[Priority, int] = field(default_factory=dict)


class _Unreadable(Exception):
    """Internal: the file at the path is not a usable spool (corrupt, foreign, newer)."""


class Spool:
    """Durable FIFO of MQTT messages with priority-aware size and age bounds."""

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        max_age_s: float,
        *,
        fsync_from: Priority | None = Priority.ALARM,
        quick_check: bool = True,
        keep_free_bytes: int = 4 * 1024 * 1024,
        reclaim_step_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        """Open or create the spool at ``path`` (parent dirs are created).

        ``fsync_from``: batches holding a message of this priority or higher are committed
        with ``synchronous=FULL`` (see the module doc); ``None``: never. ``quick_check``:
        verify every page at open (15 ms for 28 MB on the 2-core dev machine, warm cache;
        proportional to the file) so that a damaged file is moved aside now instead of
        failing appends later.
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be positive (inf: no age bound), not {max_age_s}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.fsync_from = fsync_from
        self.keep_free_bytes = keep_free_bytes
        self.reclaim_step_bytes = reclaim_step_bytes
        self._quick_check = quick_check
        self._full_sync = False
        self._page_size = 4096
        self._conn: sqlite3.Connection | None = None
        self._open()

    # ---------------------------------------------------------------- public API

    def append(
        self,
        items: Sequence[tuple[str, bytes, Priority, bool, int]],
        *,
        retract: Sequence[int] = (),
        notes: dict[str, str | None] | None = None,
    ) -> list[Dropped]:
        """Queue ``(topic, payload, priority, retain, created_ns)`` items in one transaction.

        The bounds are enforced in the same transaction (age first, then bytes), so the
        batch and the drops it causes are committed together. Returns the non-empty drops.

        In the same transaction, ``retract`` removes queued messages that must not be
        sent any more (the caller makes sure they are not in flight), and ``notes`` sets
        (or, with None, deletes) the caller's notes (:meth:`notes`): what it must know
        after a restart about the messages it queued, committed with them.
        """
        rows = [_row(item) for item in items]
        if not rows and not retract and not notes:
            return []
        durable = bool(rows) and (
            self.fsync_from is not None and max(row[0] for row in rows) >= self.fsync_from
        )
        state = self._copy_state()
        first_new = state.last_id + 1
        with self._transaction(durable=durable) as conn:
            if retract:
                self._delete(conn, state, list(retract))
            if notes:
                self._write_notes(conn, notes)
            if rows:
                conn.executemany(
                    "INSERT INTO messages (priority, created_ns, retain, size, topic, payload)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                state.last_id = _sequence(conn)
            state.depth += len(rows)
            state.bytes += sum(row[3] for row in rows)
            drops = self._enforce_in(conn, state, time.time_ns(), first_new)
        self._state = state
        return drops

    def read(
        self,
        after_id: int = 0,
        limit: int = 100,
        up_to_id: int | None = None,
        priority: Priority | None = None,
    ) -> list[Entry]:
        """Up to ``limit`` entries with ``after_id < id`` (and ``id <= up_to_id``, and of
        that ``priority``), in id order."""
        conn = self._connection()
        sql = "SELECT id, topic, payload, priority, retain, created_ns FROM messages WHERE id > ?"
        params: tuple[int, ...] = (after_id,)
        if up_to_id is not None:
            sql += " AND id <= ?"
            params += (up_to_id,)
        if priority is not None:
            sql += " AND priority = ?"
            params += (int(priority),)
        try:
            rows = conn.execute(f"{sql} ORDER BY id LIMIT ?", (*params, limit)).fetchall()
        except sqlite3.Error as exc:
            raise _error("read", exc) from exc
        by_value = _PRIORITY_BY_VALUE
        return [Entry(i, t, p, by_value[pr], bool(r), c) for i, t, p, pr, r, c in rows]

    def remove(self, ids: Iterable[int]) -> int:
        """Delete acknowledged messages; ids that are not queued (any more) are ignored.
        Returns how many were deleted."""
        wanted = [int(i) for i in ids]
        if not wanted:
            return 0
        state = self._copy_state()
        with self._transaction(durable=False) as conn:
            removed = self._delete(conn, state, wanted)
        self._state = state
        return removed

    def holds(self, entry_id: int) -> bool:
        """Whether message ``entry_id`` is queued (not yet acknowledged, nor dropped)."""
        conn = self._connection()
        try:
            row = conn.execute("SELECT 1 FROM messages WHERE id = ?", (entry_id,)).fetchone()
        except sqlite3.Error as exc:
            raise _error("read", exc) from exc
        return row is not None

    def notes(self, prefix: str = "") -> dict[str, str]:
        """The caller's notes whose key starts with ``prefix`` (see :meth:`append`)."""
        conn = self._connection()
        try:
            rows = conn.execute(
                "SELECT key, value FROM notes WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
            ).fetchall()
        except sqlite3.Error as exc:
            raise _error("read", exc) from exc
        return dict(rows)

    def write_notes(self, notes: dict[str, str | None]) -> None:
        """Set (None: delete) notes on their own, in one transaction."""
        if not notes:
            return
        with self._transaction(durable=False) as conn:
            self._write_notes(conn, notes)

    @staticmethod
    def _write_notes(conn: sqlite3.Connection, notes: dict[str, str | None]) -> None:
        conn.executemany(
            "DELETE FROM notes WHERE key = ?", [(k,) for k, v in notes.items() if v is None]
        )
        conn.executemany(
            "INSERT OR REPLACE INTO notes (key, value) VALUES (?, ?)",
            [(k, v) for k, v in notes.items() if v is not None],
        )

    @staticmethod
    def _delete(conn: sqlite3.Connection, state: _State, wanted: list[int]) -> int:
        removed = 0
        for chunk in _chunks(wanted, _IN_CHUNK):
            where = "id = ?" if len(chunk) == 1 else f"id IN ({','.join('?' * len(chunk))})"
            count, size = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE {where}",  # noqa: S608 (placeholders only)
                chunk,
            ).fetchone()
            if count:
                conn.execute(f"DELETE FROM messages WHERE {where}", chunk)  # noqa: S608
                state.depth -= count
                state.bytes -= size
                removed += count
        return removed

    def last_id(self) -> int:
        """The highest id ever given (queued or not); 0 when the spool was never used."""
        self._connection()
        return self._state.last_id

    def enforce(self, now_ns: int | None = None) -> list[Dropped]:
        """Apply the age bound (and the byte bound, should ``max_bytes`` have shrunk).

        Call it on a timer (every few seconds): it also returns free disk space after a
        backlog has drained, one bounded step per call (see the module doc).
        """
        now = time.time_ns() if now_ns is None else now_ns
        state = self._copy_state()
        with self._transaction(durable=False) as conn:
            drops = self._enforce_in(conn, state, now, None)
        self._state = state
        self.reclaim()
        return drops

    def reclaim(self, max_bytes: int | None = None) -> int:
        """Shrink the file by free pages beyond ``keep_free_bytes``, once the queue is drained.

        Does nothing while more than ``keep_free_bytes`` are queued (a backlog being sent
        will free its pages itself, and a growing one would only take them back). Frees
        at most ``max_bytes`` (default ``reclaim_step_bytes``); returns the bytes freed.
        """
        conn = self._connection()
        if self._state.bytes > self.keep_free_bytes:
            return 0
        try:
            free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
            excess = free_pages - self.keep_free_bytes // self._page_size
            step = (self.reclaim_step_bytes if max_bytes is None else max_bytes) // self._page_size
            pages = min(excess, step)
            if pages <= 0:
                return 0
            # executescript steps the pragma to the end; execute() would free one page only.
            conn.executescript(f"PRAGMA incremental_vacuum({pages});")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            freed = free_pages - conn.execute("PRAGMA freelist_count").fetchone()[0]
        except sqlite3.Error as exc:
            raise _error("reclaim", exc) from exc
        freed *= self._page_size
        log.debug("spool file shrunk", path=str(self.path), freed_bytes=freed)
        return freed

    @property
    def depth(self) -> int:
        """Messages queued (the running count: no query, cheap enough for every batch)."""
        return self._state.depth

    def stats(self, now_ns: int | None = None) -> SpoolStats:
        conn = self._connection()
        try:
            oldest = conn.execute("SELECT MIN(created_ns) FROM messages").fetchone()[0]
        except sqlite3.Error as exc:
            raise _error("stats", exc) from exc
        age = None
        if oldest is not None:
            now = time.time_ns() if now_ns is None else now_ns
            age = max(0.0, (now - oldest) / 1e9)
        state = self._state
        return SpoolStats(
            depth=state.depth,
            bytes=state.bytes,
            oldest_age_s=age,
            dropped={p: state.dropped.get(p, 0) for p in Priority},
            last_id=state.last_id,
            file_bytes=sum(_size(self.path.with_name(self.path.name + s)) for s in ("", "-wal")),
        )

    def close(self) -> None:
        """Close the file (SQLite checkpoints and deletes the WAL). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.close()
        except sqlite3.Error as exc:
            raise _error("close", exc) from exc

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- bounds

    def _enforce_in(
        self, conn: sqlite3.Connection, state: _State, now_ns: int, first_new: int | None
    ) -> list[Dropped]:
        """Both bounds inside the caller's transaction; updates ``state`` and ``meta``."""
        first = state.last_id + 1 if first_new is None else first_new
        drops = [
            drop
            for drop in (
                self._drop_old(conn, state, now_ns, first),
                self._drop_for_bytes(conn, state, first),
            )
            if drop is not None
        ]
        for drop in drops:
            for priority, count in drop.by_priority.items():
                state.dropped[priority] = state.dropped.get(priority, 0) + count
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                    (f"dropped.{int(priority)}", count),
                )
        return drops

    def _drop_old(
        self, conn: sqlite3.Connection, state: _State, now_ns: int, first_new: int
    ) -> Dropped | None:
        if math.isinf(self.max_age_s):
            return None
        cutoff = now_ns - int(self.max_age_s * 1e9)
        oldest = conn.execute("SELECT MIN(created_ns) FROM messages").fetchone()[0]
        if oldest is None or oldest >= cutoff:
            return None  # the common case: one index probe
        groups = conn.execute(
            # Without the hint the planner (no ANALYZE stats) scans the priority index.
            "SELECT priority, COUNT(*), SUM(size), SUM(id >= ?)"
            " FROM messages INDEXED BY messages_created WHERE created_ns < ? GROUP BY priority",
            (first_new, cutoff),
        ).fetchall()
        conn.execute("DELETE FROM messages WHERE created_ns < ?", (cutoff,))
        state.depth -= sum(g[1] for g in groups)
        state.bytes -= sum(g[2] for g in groups)
        return Dropped(
            {_PRIORITY_BY_VALUE[g[0]]: g[1] for g in groups}, "age", sum(g[3] for g in groups)
        )

    def _drop_for_bytes(
        self, conn: sqlite3.Connection, state: _State, first_new: int
    ) -> Dropped | None:
        excess = state.bytes - self.max_bytes
        if excess <= 0:
            return None
        counts: dict[Priority, int] = {}
        from_batch = 0
        for priority in Priority:  # ascending: TELEMETRY, STATUS, ALARM
            while excess > 0:
                rows = conn.execute(
                    "SELECT id, size FROM messages WHERE priority = ? ORDER BY id LIMIT ?",
                    (int(priority), _DROP_CHUNK),
                ).fetchall()
                if not rows:
                    break
                freed = taken = 0
                for row_id, size in rows:
                    freed += size
                    taken += 1
                    from_batch += row_id >= first_new
                    if freed >= excess:
                        break
                conn.execute(
                    "DELETE FROM messages WHERE priority = ? AND id <= ?",
                    (int(priority), rows[taken - 1][0]),
                )
                counts[priority] = counts.get(priority, 0) + taken
                state.depth -= taken
                state.bytes -= freed
                excess -= freed
        return Dropped(counts, "bytes", from_batch)

    # ---------------------------------------------------------------- plumbing

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError(f"spool {self.path} is closed")
        return self._conn

    def _copy_state(self) -> _State:
        self._connection()
        return replace(self._state, dropped=dict(self._state.dropped))

    @contextmanager
    def _transaction(self, *, durable: bool) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE .. COMMIT; rolled back on any error, sqlite3 errors wrapped.

        The caller applies its new in-memory state only after this block has committed.
        """
        conn = self._connection()
        try:
            if durable != self._full_sync:
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._full_sync = durable
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        except sqlite3.Error as exc:
            raise _error("write", exc) from exc

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.path.parent}: {exc}") from exc
        try:
            self._conn = self._connect()
        except _Unreadable as exc:
            aside = self._move_aside()
            log.error(
                "spool file unreadable, moved aside; starting an empty spool",
                path=str(self.path),
                moved_to=str(aside),
                reason=str(exc),
            )
            try:
                self._conn = self._connect()
            except _Unreadable as again:
                raise SpoolError(f"new spool {self.path} unreadable: {again}") from again
        state = self._state
        log.info(
            "spool opened",
            path=str(self.path),
            depth=state.depth,
            bytes=state.bytes,
            last_id=state.last_id,
        )

    def _connect(self) -> sqlite3.Connection:
        """Open, check, create or load; raises ``_Unreadable`` for a file to move aside."""
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0
            )
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        try:
            self._prepare(conn)
        except sqlite3.Error as exc:
            conn.close()
            if exc.sqlite_errorcode & 0xFF in _CORRUPT_CODES:
                raise _Unreadable(str(exc)) from exc
            if exc.sqlite_errorcode & 0xFF in _BUSY_CODES:
                raise SpoolError(f"spool {self.path} is in use by another process") from exc
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # before the first access to the WAL
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                raise _Unreadable("an SQLite database that is not a spool")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only effective before tables
        elif version != SCHEMA_VERSION:
            raise _Unreadable(f"schema version {version}, this agent knows {SCHEMA_VERSION}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise SpoolError(f"spool {self.path}: cannot use WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
        if version == 0:
            # One transaction: a crash here leaves an empty file, never half a schema.
            conn.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
        elif self._quick_check:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise _Unreadable("quick_check: " + "; ".join(problems))
        conn.execute(_NOTES)
        self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        depth, size = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages"  # covering index scan
        ).fetchone()
        dropped = {
            _PRIORITY_BY_VALUE[int(key.split(".")[1])]: value
            for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE 'dropped.%'")
        }
        self._state = _State(depth=depth, bytes=size, last_id=_sequence(conn), dropped=dropped)

    def _move_aside(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            for suffix in ("", "-wal", "-shm", "-journal"):
                source = self.path.with_name(self.path.name + suffix)
                if source.exists():
                    os.replace(source, aside.with_name(aside.name + suffix))
        except OSError as exc:
            raise SpoolError(f"spool {self.path} unreadable and cannot be moved: {exc}") from exc
        return aside


def _row(item: tuple[str, bytes, Priority, bool, int]) -> tuple[int, int, int, int, str, bytes]:
    topic, payload, priority, retain, created_ns = item
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    size = len(topic.encode()) + len(payload)
    return (int(Priority(priority)), int(created_ns), int(bool(retain)), size, topic, payload)


def _sequence(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
    return 0 if row is None else row[0]


def _chunks(values: list[int], size: int) -> Iterator[list[int]]:
    it = iter(values)
    while chunk := list(islice(it, size)):
        yield chunk


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _error(action: str, exc: sqlite3.Error) -> SpoolError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    kind = SpoolCorrupt if code in _CORRUPT_CODES else SpoolError
    detail = " (disk full)" if code == sqlite3.SQLITE_FULL else ""
    return kind(f"spool {action} failed{detail}: {exc}")
