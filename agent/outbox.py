"""Queue stage: messages from the filter stage (readings) and the pollers (device
status) into the durable spool, for the publish stage (:mod:`agent.publish`).

Every message is committed to the on-disk spool (SQLite, :mod:`derrick.spool.store`) the moment
it is made, in one short transaction, before its sequence number counts as given: a
``kill -9`` can lose a poll that was in progress, never a message that had a number.
Then the publisher is woken. Sequence numbers are given here, in spool order, so the
collector sees every drop as a gap.

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


class Outbox:
    def __init__(self, agent_id: str, site: str, spool: Spool) -> None:
        self.agent_id = agent_id
        self.site = site
        self.spool = spool
        self.boot = uuid.uuid4().hex
        self.spool_dropped = {priority: 0 for priority in Priority}
        self.stored_callback: Callable[[], None] = lambda: None  # after every message stored
        self.encode_data: Callable[[str, list[Reading]], tuple[str, bytes] | None] | None = None
        """Sparkplug (:mod:`agent.sparkplug`): a device's readings -> (topic, payload)."""
        self._seq = 0
        self._dropping = False
        self._drop_reason = ""
        self._unannounced = dict.fromkeys(Priority, 0)
        self._announced_at = 0.0

    # -- producers ----------------------------------------------------------------------

    def put_readings(self, asset: str, device: str, kind: str, readings: list[Reading]) -> None:
        if self.encode_data is not None:
            encoded = self.encode_data(device, readings)
            if encoded is not None:
                self.put(*encoded, Priority.TELEMETRY)
            return
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
        self.put(topic, message.model_dump_json().encode(), Priority.TELEMETRY)

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
        entry_id = self.spool.last_id() + 1  # AUTOINCREMENT: one more than ever given
        item = (
            condition_topic(self.site, change.asset, change.device),
            message.model_dump_json().encode(),
            Priority.ALARM,
            False,
            now_ns(),
        )
        self._account(self.spool.append([item], retract=retract or (), notes=notes))
        self.stored_callback()
        return entry_id

    def put(self, topic: str, payload: bytes, priority: Priority, *, retain: bool = False) -> None:
        """Commit one message to the spool now; SpoolError if the disk refuses."""
        self._account(self.spool.append([(topic, payload, priority, retain, now_ns())]))
        self.stored_callback()

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
