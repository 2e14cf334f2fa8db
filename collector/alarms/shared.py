"""Alarm records and the notice outbox in etcd, where a successor can read them.

The same two jobs as :mod:`collector.alarms.state` and :mod:`collector.alarms.outbox`
(same interfaces, so the lifecycle, the router and the deliverers do not change), for
collectors that fail over (:mod:`collector.alarms.ha`). Keys under the prefix ``P``:

* ``P/alarms/<site>/<asset>/<alarm id>``: the alarm's record (JSON);
* ``P/outbox/<channel>/<site>/<asset>/<notice key>``: a notice to deliver (JSON: the
  row as the SQLite outbox keeps it);
* ``P/sent/<channel>/<site>/<asset>/<notice key>``: delivered (or refused) at, kept
  ``keep_delivered_h`` so the key is recognised if made again.

Every write for an asset is one transaction whose first compare is the owner's fence
(:meth:`Coordinator.fence`): records and the notices their change caused go together
or not at all, and only while this member holds the asset. A notice is inserted only if
neither its outbox key nor its sent key exists (a nested transaction each), so making
it twice - a retried commit, a reminder made again by a successor - inserts it once.

A successor reads the asset's records when it takes the asset, and delivers the
asset's pending notices - committed by a member that died before delivering them -
with their keys unchanged: the receiver can tell a repeat (webhook ``Idempotency-Key``,
e-mail ``Message-ID``) if the dead member had sent one and died before marking it.

:class:`HaStateStore` and :class:`HaOutbox` put the two sides together: the alarms of
the collector itself (``coordination_lost``, ``unowned_assets``: site ``collectors``)
and the edge agents' births stay in the local SQLite file, because they must work while
etcd does not; every asset's alarms go to etcd.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from pydantic import ValidationError

from collector.alarms.ha import COLLECTORS_SITE, Asset, Coordinator
from collector.alarms.outbox import RANKS, NewNotice, Outbox, Pending, read_message, with_payloads
from collector.alarms.state import AlarmStateStore
from collector.etcd import Compare, Delete, Etcd, EtcdError, Put, Txn
from derrick.alarms.lifecycle import AlarmRecord, RecordError
from derrick.wire.ids import AlarmId

log = structlog.get_logger(__name__)


def asset_of(alarm_id: str) -> Asset:
    """(site, asset) of an alarm id (``rule:site:asset:device``)."""
    parsed = AlarmId.parse(alarm_id)
    return parsed.site, parsed.asset


def is_local(alarm_id: str) -> bool:
    try:
        return asset_of(alarm_id)[0] == COLLECTORS_SITE
    except ValueError:
        return True  # a malformed id names no asset: it stays where it was found


class SharedState:
    """Alarm records in etcd, written under the owner's fence."""

    def __init__(self, etcd: Etcd, coordinator: Coordinator, prefix: str) -> None:
        self.etcd = etcd
        self.coordinator = coordinator
        self.prefix = prefix

    def record_key(self, alarm_id: str) -> str:
        site, asset = asset_of(alarm_id)
        return f"{self.prefix}/alarms/{site}/{asset}/{alarm_id}"

    def load(self, assets: Iterable[Asset]) -> dict[str, AlarmRecord]:
        """The stored records of these assets (a record that does not load is skipped
        with one error line, as in the SQLite store)."""
        records: dict[str, AlarmRecord] = {}
        for site, asset in assets:
            entries = self.etcd.block(self.etcd.get_prefix(f"{self.prefix}/alarms/{site}/{asset}/"))
            for entry in entries:
                alarm_id = entry.key.rpartition("/")[2]
                try:
                    records[alarm_id] = AlarmRecord.from_dict(json.loads(entry.value))
                except (ValueError, RecordError) as exc:
                    log.error("stored alarm state skipped", alarm_id=alarm_id, reason=str(exc))
        return records

    def load_all(self) -> dict[str, AlarmRecord]:
        """Every asset's stored records (what any member's operator API lists); none
        while etcd is out of reach."""
        if not self.coordinator.reachable:
            return {}
        try:
            entries = self.etcd.block(self.etcd.get_prefix(f"{self.prefix}/alarms/"))
        except EtcdError as exc:
            log.warning("stored alarms not listed: etcd", reason=str(exc))
            return {}
        records: dict[str, AlarmRecord] = {}
        for entry in entries:
            try:
                records[entry.key.rpartition("/")[2]] = AlarmRecord.from_dict(
                    json.loads(entry.value)
                )
            except (ValueError, RecordError):
                continue  # logged when its owner loads it
        return records

    def save(
        self, records: Iterable[AlarmRecord], rows: list[tuple[NewNotice, str]]
    ) -> frozenset[str]:
        """Store records and notices, one fenced transaction per asset; the alarm ids
        whose asset this member does not own (or etcd did not take): not stored."""
        by_asset: dict[Asset, tuple[list[AlarmRecord], list[tuple[NewNotice, str]]]] = {}
        for record in records:
            by_asset.setdefault(asset_of(record.alarm_id), ([], []))[0].append(record)
        for notice, payload in rows:
            by_asset.setdefault(asset_of(notice.alarm_id), ([], []))[1].append((notice, payload))
        refused: set[str] = set()
        for asset, (asset_records, asset_rows) in by_asset.items():
            if not self._commit(asset, asset_records, asset_rows):
                refused.update(r.alarm_id for r in asset_records)
                refused.update(n.alarm_id for n, _ in asset_rows)
        return frozenset(refused)

    def _commit(
        self, asset: Asset, records: list[AlarmRecord], rows: list[tuple[NewNotice, str]]
    ) -> bool:
        if not self.coordinator.reachable:  # no waiting on etcd in the event loop
            log.warning("alarm change not stored: etcd out of reach", asset="/".join(asset))
            return False
        fence = self.coordinator.fence(*asset) if self.coordinator.owns(*asset) else None
        if fence is None:
            log.warning("alarm change not stored: asset not owned here", asset="/".join(asset),
                        alarms=sorted({r.alarm_id for r in records}))  # fmt: skip
            return False
        puts: list[Put | Delete | Txn] = [
            Put(self.record_key(r.alarm_id), _json(r.to_dict())) for r in records
        ]
        puts += [self._insert(notice, payload) for notice, payload in rows]
        try:
            done = self.etcd.block(self.etcd.txn(Txn([fence], puts)))
        except EtcdError as exc:
            log.error("alarm change not stored: etcd", asset="/".join(asset), reason=str(exc))
            return False
        if not done:
            log.warning("alarm change not stored: asset taken over", asset="/".join(asset))
        return done

    def _insert(self, notice: NewNotice, payload: str) -> Txn:
        """A notice's row, unless its key is pending or sent already."""
        pending, sent = self.outbox_key(notice), self.sent_key(notice)
        row = {
            "alarm_id": notice.alarm_id, "event": notice.event,
            "rank": RANKS.get(notice.priority, 2), "grp": notice.group, "payload": payload,
            "created_ns": notice.created_ns, "due_ns": notice.due_ns, "attempts": 0,
            "held": False,
        }  # fmt: skip
        return Txn(
            [Compare(pending, "create", "==", 0), Compare(sent, "create", "==", 0)],
            [Put(pending, _json(row))],
        )

    def outbox_key(self, notice: NewNotice) -> str:
        site, asset = asset_of(notice.alarm_id)
        return f"{self.prefix}/outbox/{notice.channel}/{site}/{asset}/{notice.key}"

    def sent_key(self, notice: NewNotice) -> str:
        site, asset = asset_of(notice.alarm_id)
        return f"{self.prefix}/sent/{notice.channel}/{site}/{asset}/{notice.key}"


@dataclass(slots=True)
class _Row:
    """A pending row as read from etcd: where it lives, and what it says."""

    key: str
    asset: Asset
    data: dict[str, object]


class SharedOutbox:
    """The etcd half of the outbox: rows of the assets this member owns."""

    def __init__(
        self, etcd: Etcd, coordinator: Coordinator, prefix: str, keep_delivered_s: float
    ) -> None:
        self.etcd = etcd
        self.coordinator = coordinator
        self.prefix = prefix
        self.keep_delivered_ns = int(keep_delivered_s * 1e9)
        self._rows: dict[str, _Row] = {}  # handed out by pending(), not yet marked
        # delivered while etcd did not answer: their marks, made when it does
        self._unmarked: dict[str, tuple[_Row, list[Put | Delete | Txn]]] = {}
        self.failed = 0
        self.delivered = 0

    def in_flight(self, asset: Asset) -> bool:
        """A row of the asset was handed to a deliverer and not marked yet (in etcd)."""
        return any(row.asset == asset for row in self._rows.values()) or any(
            row.asset == asset for row, _ in self._unmarked.values()
        )

    def pending(self, channel: str, limit: int = 200) -> list[Pending]:
        """Undelivered rows of ``channel`` for the assets owned here, oldest first."""
        base = f"{self.prefix}/outbox/{channel}/"
        if not self.coordinator.reachable:
            return []
        self._mark_again()
        try:
            entries = self.etcd.block(self.etcd.get_prefix(base))
        except EtcdError as exc:
            log.warning("outbox not read: etcd", channel=channel, reason=str(exc))
            return []
        for key in [k for k, row in self._rows.items() if k.startswith(base)]:
            del self._rows[key]
        found: list[tuple[int, Pending]] = []
        for entry in entries:
            site, asset, key = entry.key[len(base) :].split("/", 2)
            if entry.key in self._unmarked or not self.coordinator.owns(site, asset):
                continue
            pending = self._pending(entry.key, key, entry.value)
            if pending is not None:
                self._rows[entry.key] = _Row(entry.key, (site, asset), json.loads(entry.value))
                found.append((entry.create, pending))
        found.sort(key=lambda item: (item[1].created_ns, item[0]))
        return [pending for _, pending in found[:limit]]

    def _pending(self, etcd_key: str, key: str, value: bytes) -> Pending | None:
        try:
            row = json.loads(value)
            message = read_message(row["event"], row["payload"])
            return Pending(
                id=etcd_key, key=key, alarm_id=row["alarm_id"], event=row["event"],  # type: ignore[arg-type]
                rank=row["rank"], group=row["grp"], payload=row["payload"],
                created_ns=row["created_ns"], due_ns=row["due_ns"], attempts=row["attempts"],
                held=bool(row["held"]), message=message,
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.error("notification unreadable, not sent", key=key, reason=str(exc)[:200])
            return None

    def mark_delivered(self, ids: Iterable[str], now_ns: int) -> None:
        self.delivered += self._finish(ids, {"delivered_ns": now_ns})

    def mark_failed(self, ids: Iterable[str], reason: str) -> None:
        self.failed += self._finish(ids, {"failed": reason[:500], "at_ns": time.time_ns()})

    def mark_attempt(self, ids: Iterable[str]) -> None:
        self._update(ids, lambda data: {**data, "attempts": int(data["attempts"]) + 1})  # type: ignore[call-overload]

    def hold(self, ids: Iterable[str], due_ns: int) -> None:
        self._update(ids, lambda data: {**data, "due_ns": due_ns, "held": True})

    def _finish(self, ids: Iterable[str], outcome: dict[str, object]) -> int:
        """Pending -> sent, under the fence; how many rows."""
        count = 0
        for key in ids:
            row = self._rows.pop(key, None)
            if row is None:
                continue
            sent = key.replace("/outbox/", "/sent/", 1)
            record = _json({**outcome, "created_ns": row.data["created_ns"]})
            marks: list[Put | Delete | Txn] = [Delete(key), Put(sent, record)]
            if self._fenced(row, marks) is None:  # etcd out of reach: marked when back
                self._unmarked[key] = (row, marks)
            count += 1
        return count

    def _update(self, ids: Iterable[str], change: Callable[[dict[str, object]], dict]) -> None:
        for key in ids:
            row = self._rows.get(key)
            if row is not None:
                row.data = change(row.data)
                self._fenced(row, [Put(key, _json(row.data))])

    def _fenced(self, row: _Row, operations: list[Put | Delete | Txn]) -> bool | None:
        """Run ``operations`` under the row's fence: True done, False the asset is not
        ours any more, None etcd did not answer."""
        fence = self.coordinator.fence(*row.asset)
        if fence is None:
            log.warning("notice outcome not stored: asset taken over", key=row.key)
            return False
        if not self.coordinator.reachable:
            log.warning("notice outcome not stored yet: etcd out of reach", key=row.key)
            return None
        try:
            done = self.etcd.block(self.etcd.txn(Txn([fence], operations)))
        except EtcdError as exc:
            log.warning("notice outcome not stored yet: etcd", key=row.key, reason=str(exc))
            return None
        if not done:
            log.warning("notice outcome not stored: asset taken over", key=row.key)
        return done

    def _mark_again(self) -> None:
        """Deliveries etcd did not hear of: marked now, before anything is read (so
        none of them is sent again while this member holds its asset)."""
        for key, (row, marks) in list(self._unmarked.items()):
            if self._fenced(row, marks) is not None:
                del self._unmarked[key]

    def depth(self) -> dict[str, int]:
        """Undelivered rows per channel (every asset's)."""
        if not self.coordinator.reachable:
            return {}
        try:
            entries = self.etcd.block(self.etcd.get_prefix(f"{self.prefix}/outbox/"))
        except EtcdError:
            return {}
        counts: dict[str, int] = {}
        cut = len(self.prefix) + len("/outbox/")
        for entry in entries:
            channel = entry.key[cut:].partition("/")[0]
            counts[channel] = counts.get(channel, 0) + 1
        return counts

    def purge(self, now_ns: int) -> int:
        """Forget sent rows older than ``keep_delivered_h`` (of the assets owned here)."""
        if not self.coordinator.reachable:
            return 0
        try:
            entries = self.etcd.block(self.etcd.get_prefix(f"{self.prefix}/sent/"))
        except EtcdError:
            return 0
        cut = len(self.prefix) + len("/sent/")
        old: dict[Asset, list[Put | Delete | Txn]] = {}
        for entry in entries:
            _channel, site, asset, _key = entry.key[cut:].split("/", 3)
            try:
                created = int(json.loads(entry.value).get("created_ns", 0))
            except (ValueError, AttributeError):
                created = 0
            if created < now_ns - self.keep_delivered_ns and self.coordinator.owns(site, asset):
                old.setdefault((site, asset), []).append(Delete(entry.key))
        purged = 0
        for asset, deletes in old.items():
            fence = self.coordinator.fence(*asset)
            if fence is not None:
                try:
                    if self.etcd.block(self.etcd.txn(Txn([fence], deletes))):
                        purged += len(deletes)
                except EtcdError:
                    break
        return purged


class HaStateStore:
    """The alarm store of a collector that fails over: the collector's own alarms and
    the edge births in SQLite, every asset's alarms in etcd (see the module docstring).
    Same interface as :class:`AlarmStateStore`; :meth:`save` returns the alarm ids it
    could not store (the manager keeps their old records)."""

    def __init__(self, local: AlarmStateStore, shared: SharedState) -> None:
        self.local = local
        self.shared = shared
        self.path = local.path

    @property
    def db(self):  # type: ignore[no-untyped-def] - the local connection, for the outbox
        return self.local.db

    def load(self) -> dict[str, AlarmRecord]:
        """The local records only: an asset's records are read when it is taken."""
        return {k: r for k, r in self.local.load().items() if is_local(k)}

    def save(
        self, records: Iterable[AlarmRecord], notices: Iterable[NewNotice] = ()
    ) -> frozenset[str]:
        records, notices = list(records), list(notices)
        self.local.save(
            [r for r in records if is_local(r.alarm_id)],
            [n for n in notices if is_local(n.alarm_id)],
        )
        return self.shared.save(
            [r for r in records if not is_local(r.alarm_id)],
            with_payloads(n for n in notices if not is_local(n.alarm_id)),
        )

    def edge_births(self) -> dict[str, str]:
        return self.local.edge_births()

    def save_edge_birth(self, agent: str, birth: str | None) -> None:
        self.local.save_edge_birth(agent, birth)

    def forget(self, alarm_ids: Iterable[str]) -> None:
        self.local.forget([i for i in alarm_ids if is_local(i)])

    def close(self) -> None:
        self.local.close()


class HaOutbox:
    """The outbox of a collector that fails over: local rows (int ids) and the owned
    assets' rows in etcd (str ids), one interface for the deliverers."""

    def __init__(self, local: Outbox, shared: SharedOutbox, state: SharedState) -> None:
        self.local = local
        self.shared = shared
        self.shared_state = state  # reminders and escalations go in under the fence
        self.max_pending = local.max_pending

    @property
    def dropped(self) -> int:
        return self.local.dropped

    @property
    def delivered(self) -> int:
        return self.local.delivered + self.shared.delivered

    @property
    def failed(self) -> int:
        return self.local.failed + self.shared.failed

    def insert(self, notices: Iterable[NewNotice]) -> None:
        notices = list(notices)
        self.local.insert(n for n in notices if is_local(n.alarm_id))
        shared = with_payloads(n for n in notices if not is_local(n.alarm_id))
        if shared:
            self.shared_state.save([], shared)

    def pending(self, channel: str, limit: int = 200) -> list[Pending]:
        rows = self.local.pending(channel, limit) + self.shared.pending(channel, limit)
        rows.sort(key=lambda row: row.created_ns)
        return rows[:limit]

    def mark_delivered(self, ids: Iterable[int | str], now_ns: int) -> None:
        self._each_side("mark_delivered", ids, now_ns)

    def mark_attempt(self, ids: Iterable[int | str]) -> None:
        self._each_side("mark_attempt", ids)

    def hold(self, ids: Iterable[int | str], due_ns: int) -> None:
        self._each_side("hold", ids, due_ns)

    def mark_failed(self, ids: Iterable[int | str], reason: str) -> None:
        self._each_side("mark_failed", ids, reason)

    def _each_side(self, method: str, ids: Iterable[int | str], *args: object) -> None:
        """``method`` of the local outbox for the SQLite row ids (ints), of the etcd
        half for the etcd keys (strs); each side called only with ids of its own."""
        local: list[int | str] = []
        shared: list[int | str] = []
        for i in ids:
            (shared if isinstance(i, str) else local).append(i)
        for side, mine in ((self.local, local), (self.shared, shared)):
            if mine:
                getattr(side, method)(mine, *args)

    def last_announced(self) -> dict[str, int]:
        return self.local.last_announced()

    def last_texts(self, channel: str) -> dict[str, str]:
        return self.local.last_texts(channel)

    def depth(self) -> dict[str, int]:
        counts = self.local.depth()
        for channel, count in self.shared.depth().items():
            counts[channel] = counts.get(channel, 0) + count
        return counts

    def enforce(self, now_ns: int) -> int:
        self.shared.purge(now_ns)
        return self.local.enforce(now_ns)


def _json(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()
