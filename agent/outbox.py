"""Queue stage: messages from the filter stage (readings) and the pollers (device
status) into the durable spool, for the publish stage (:mod:`agent.publish`).

Every message is committed to the on-disk spool (SQLite, :mod:`derrick.spool.store`)
before its sequence number counts as given: a ``kill -9`` can lose a poll that was in
progress, never a message that had a number. Then the publisher is woken. Sequence
numbers are given here, in spool order, so the collector sees every drop as a gap.

Group commit (``group_per_tick``, as the agent runs it). A transaction costs about as
much as the message in it (65 us on the 2-core dev machine for one telemetry message),
so telemetry is not committed one message at a time: the polls that end within one
``COMMIT_LINGER_S`` of each other (aligned polls of a fleet end together,
:mod:`agent.poll`) are encoded, numbered and committed in one transaction by
:meth:`Outbox.commit_forever`, and the publisher is woken once for all of them. A
telemetry message waits at most that long before it is durable; until then it has no
number, so a ``kill -9`` in that window loses polls in progress, as before. Every other
message (device status, alarm conditions, events) is committed at once, after whatever
telemetry is waiting, so the spool keeps the order things happened in.

The spool is bounded by bytes and age. At its bound it drops the oldest telemetry
first; status and alarm-class messages go last. Every drop is counted, logged when
dropping starts and stops (not per message), and published on the agent's events topic
(at most once a minute while it lasts).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable

import structlog

from derrick.alarms.engine import ConditionChange
from derrick.spool.store import Dropped, Priority, Spool
from derrick.wire.payloads import (
    AgentEvent,
    ConditionMessage,
    ConditionState,
    DeviceState,
    DeviceStatus,
    Reading,
    ReadingValue,
    Telemetry,
    now_ns,
)
from derrick.wire.topics import (
    agent_events_topic,
    condition_topic,
    device_status_topic,
    telemetry_topic,
)

log = structlog.get_logger(__name__)

ANNOUNCE_EVERY_S = 60.0
COMMIT_LINGER_S = 0.01
"""How long the first telemetry message of a group waits for others before the group is
committed (``group_per_tick``)."""


class Outbox:
    def __init__(
        self, agent_id: str, site: str, spool: Spool, *, group_per_tick: bool = False
    ) -> None:
        """``group_per_tick``: telemetry is committed in groups by :meth:`commit_forever`
        (which must then run); else each message at once, in :meth:`put_readings`."""
        self.agent_id = agent_id
        self.site = site
        self.spool = spool
        self.group_per_tick = group_per_tick
        self._pending: list[tuple[str, str, str, list[Reading]]] = []
        self._pending_event = asyncio.Event()
        self.boot = uuid.uuid4().hex
        self.spool_dropped = {priority: 0 for priority in Priority}
        self.stored_callback: Callable[[], None] = lambda: None  # after every message stored
        self.encode_data: Callable[[str, list[Reading]], tuple[str, bytes] | None] | None = None
        """Sparkplug (:mod:`agent.sparkplug`): a device's readings -> (topic, payload)."""
        self.encode_condition: Callable[[ConditionMessage], tuple[str, bytes]] | None = None
        """Sparkplug: a condition change -> (topic, payload)."""
        self._seq = 0
        self._dropping = False
        self._drop_reason = ""
        self._unannounced = dict.fromkeys(Priority, 0)
        self._announced_at = 0.0

    # -- producers ----------------------------------------------------------------------

    def put_readings(self, asset: str, device: str, kind: str, readings: list[Reading]) -> None:
        """One poll's readings of a device: committed now, or with its group."""
        if self.group_per_tick:
            self._pending.append((asset, device, kind, readings))
            self._pending_event.set()
            return
        item = self._telemetry(asset, device, kind, readings)
        if item is not None:
            self._commit([item])

    async def commit_forever(self) -> None:
        """Commit the waiting telemetry in groups (``group_per_tick``)."""
        while True:
            await self._pending_event.wait()
            await asyncio.sleep(COMMIT_LINGER_S)
            self._pending_event.clear()
            self.flush()

    def flush(self) -> None:
        """Number and commit the telemetry waiting for its group, in one transaction."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        items = [self._telemetry(*poll) for poll in pending]
        self._commit([item for item in items if item is not None])

    def _commit(self, items: list[tuple[str, bytes, Priority, bool, int]]) -> None:
        if items:
            self._account(self.spool.append(items))
            self.stored_callback()

    def _telemetry(
        self, asset: str, device: str, kind: str, readings: list[Reading]
    ) -> tuple[str, bytes, Priority, bool, int] | None:
        """One telemetry message as a spool item (its number given here); None when the
        wire has nothing to say of these readings."""
        if self.encode_data is not None:
            encoded = self.encode_data(device, readings)
            if encoded is None:
                return None
            return (*encoded, Priority.TELEMETRY, False, now_ns())
        message = Telemetry.model_construct(
            v=1,
            historical=False,
            site=self.site,
            asset=asset,
            device=device,
            kind=kind,
            agent=self.agent_id,
            boot=self.boot,
            seq=self._seq,
            readings=readings,
        )
        self._seq += 1
        topic = telemetry_topic(self.site, asset, device)
        return (topic, message.model_dump_json().encode(), Priority.TELEMETRY, False, now_ns())

    def put_device_status(
        self, asset: str, device: str, state: DeviceState, reason: str, endpoint: str
    ) -> None:
        status = DeviceStatus(
            site=self.site,
            asset=asset,
            device=device,
            agent=self.agent_id,
            state=state,
            reason=reason[:500],
            endpoint=endpoint,
            ts_ns=now_ns(),
        )
        topic = device_status_topic(self.site, asset, device)
        self.put(topic, status.model_dump_json().encode(), Priority.STATUS, retain=True)

    def put_condition(
        self,
        change: ConditionChange,
        kind: str,
        state: ConditionState,
        *,
        since_ns: int | None = None,
        peak: ReadingValue = None,
        retract: list[int] | None = None,
        notes: dict[str, str | None] | None = None,
    ) -> int:
        """Commit one alarm condition change (:mod:`agent.alarms`), with the alarm
        stage's notes about it and the queued messages it replaces, in one transaction.
        Returns the message's spool id."""
        entry_id = self.next_entry_id()
        message = ConditionMessage(
            site=self.site,
            asset=change.asset,
            device=change.device,
            kind=kind,
            agent=self.agent_id,
            boot=self.boot,
            seq=self._seq,
            rule=change.rule,
            type=change.type,
            state=state,
            value=_wire(change.value),
            limit=_limit(change.limit),
            peak=_wire(peak),
            priority=change.priority,
            latched=change.latched,
            message=change.message[:1000],
            since_ns=since_ns,
            ts_ns=change.ts_ns,
        )
        self._seq += 1
        if self.encode_condition is not None:
            topic, payload = self.encode_condition(message)
        else:
            topic = condition_topic(self.site, change.asset, change.device)
            payload = message.model_dump_json().encode()
        item = (topic, payload, Priority.ALARM, False, now_ns())
        self._account(self.spool.append([item], retract=retract or (), notes=notes))
        self.stored_callback()
        return entry_id

    def next_entry_id(self) -> int:
        """The spool id of the next message committed at once (what waits for its group
        is committed first, so it cannot take that id)."""
        self.flush()
        return self.spool.last_id() + 1  # AUTOINCREMENT: one more than ever given

    def put(self, topic: str, payload: bytes, priority: Priority, *, retain: bool = False) -> None:
        """Commit one message to the spool now, after the telemetry waiting for its
        group; SpoolError if the disk refuses."""
        self.flush()
        self._commit([(topic, payload, priority, retain, now_ns())])

    async def enforce_age_forever(self, every_s: float = 5.0) -> None:
        """Drop what outlived the spool's age bound, even while nothing new arrives; the
        spool also gives disk space back here once it has drained."""
        while True:
            await asyncio.sleep(every_s)
            self._account(self.spool.enforce(), from_append=False)

    def _account(self, drops: list[Dropped], *, from_append: bool = True) -> None:
        dropped_now = [drop for drop in drops if drop.total()]
        for drop in dropped_now:
            self._count(drop)
        if dropped_now and not self._dropping:
            log.warning(
                "spool full, dropping oldest messages",
                reason=self._drop_reason,
                dropped=sum(drop.total() for drop in dropped_now),
                policy="telemetry first, status and alarms last",
            )
            self._dropping = True
            self._announce()
        elif dropped_now and time.monotonic() - self._announced_at >= ANNOUNCE_EVERY_S:
            self._announce()
        elif not dropped_now and from_append and self._dropping:
            log.info("spool no longer dropping", dropped_total=self.dropped_total())
            self._dropping = False
            self._announce()

    def _count(self, drop: Dropped) -> None:
        for priority, count in drop.by_priority.items():
            self.spool_dropped[Priority(priority)] += count
            self._unannounced[Priority(priority)] += count
        if drop.total():
            self._drop_reason = drop.reason

    def dropped_total(self) -> int:
        return sum(self.spool_dropped.values())

    def _announce(self) -> None:
        """Publish the drops not yet announced: at most one event per minute while dropping."""
        if not any(self._unannounced.values()):
            return
        event = AgentEvent(
            agent=self.agent_id,
            site=self.site,
            boot=self.boot,
            event="spool_dropped",
            reason=self._drop_reason,
            dropped_telemetry=self._unannounced[Priority.TELEMETRY],
            dropped_status=self._unannounced[Priority.STATUS],
            dropped_alarm=self._unannounced[Priority.ALARM],
            ts_ns=now_ns(),
        )
        self._unannounced = dict.fromkeys(Priority, 0)
        self._announced_at = time.monotonic()
        item = (agent_events_topic(self.agent_id), event.model_dump_json().encode())
        for drop in self.spool.append([(*item, Priority.STATUS, False, now_ns())]):
            self._count(drop)  # counted, and announced with the next batch of drops
        self.stored_callback()


def _wire(value: object) -> ReadingValue:
    """An engine value as the contract carries it: numbers finite, strings bounded."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value[:1024]
    if isinstance(value, bool | int | float) or value is None:
        return value
    return str(value)[:1024]


def _limit(limit: float | None) -> float | None:
    return float(limit) if isinstance(limit, int | float) and math.isfinite(limit) else None
