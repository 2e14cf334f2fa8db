"""Redelivery ledger: a message that keeps coming back is set aside, not retried forever.

The collector acknowledges a message only once it is stored or rejected. A message
that kills the collector outright (the process dies, or hangs until it is killed) is
never acknowledged, so the broker sends it again at every restart: a crash loop that
stops all ingest. Exceptions are caught per message (:mod:`collector.receive`), but a
process can die in ways no ``except`` sees - out of memory, a native crash, a watchdog.

The broker marks a message it sends again with the DUP flag. For those, and only those
(a redelivery is rare: after a restart or a reconnect), this ledger counts deliveries
durably *before* the message is handled. When a message arrives for the
``max_deliveries``-th time it is dead-lettered as ``poison`` instead of handled, and
acknowledged. The first delivery (no DUP flag) costs nothing. Rows are keyed by a hash of
client id, topic and payload and forgotten after :data:`FORGET_S`.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed count survives the process
dying, which is the failure this guards against.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

FORGET_S = 7 * 24 * 3600.0


class RedeliveryError(Exception):
    """The ledger's file cannot be opened."""


class Redeliveries:
    def __init__(self, path: Path, max_deliveries: int = 3) -> None:
        if max_deliveries < 2:
            raise ValueError("max_deliveries must be at least 2 (one delivery and one retry)")
        self.path = path
        self.max_deliveries = max_deliveries
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS deliveries "
                "(key BLOB PRIMARY KEY, count INTEGER NOT NULL, last_s REAL NOT NULL)"
            )
            self._db.execute("DELETE FROM deliveries WHERE last_s < ?", (time.time() - FORGET_S,))
        except sqlite3.Error as exc:
            raise RedeliveryError(f"redelivery ledger {path}: {exc}") from exc

    def count(self, client_id: str, topic: str, payload: bytes) -> int:
        """Record one more delivery of a redelivered (DUP) message; returns how many times
        it has now been delivered, the first (unrecorded) delivery included.

        A ledger that cannot be written counts the message as delivered twice: it is
        handled (never lost to a disk fault), and the failure is logged."""
        key = hashlib.blake2b(
            b"\0".join((client_id.encode(), topic.encode(), payload)), digest_size=16
        ).digest()
        try:
            row = self._db.execute(
                "INSERT INTO deliveries (key, count, last_s) VALUES (?, 2, ?) "
                "ON CONFLICT(key) DO UPDATE SET count = count + 1, last_s = excluded.last_s "
                "RETURNING count",
                (key, time.time()),
            ).fetchone()
        except sqlite3.Error as exc:
            log.error("redelivery ledger not writable", path=str(self.path), reason=str(exc))
            return 2
        return int(row[0])

    def close(self) -> None:
        self._db.close()
