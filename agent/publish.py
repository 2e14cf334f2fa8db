"""Publish stage: from the durable spool to the broker, QoS 1; a message leaves the spool
only when the broker acknowledged it (PUBACK).

Up to ``window`` messages are in flight at once. While the broker is away nothing new is
handed to paho (paho keeps and resends what is already in flight), so the backlog waits
on disk, bounded, instead of in memory.

After every (re)connect the spool is two streams, cut at its last id at that instant:

* **live**: messages stored since; sent first, so the crews see the present at once;
* **backlog**: what waited through the outage (or an agent restart); sent in order in
  the room live data leaves, each payload marked ``"historical": true``.

Alarm conditions (priority ALARM, :mod:`agent.alarms`) are the exception to "live
first": the backlog's go out before anything else (historical, in order), so no live
change of a condition ever overtakes an older one of the same alarm.

Retained messages (device status) are the exception to "send everything": a backlog
status older than one already published on its topic is still sent, but not retained,
so history cannot overwrite the current state.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Callable

import structlog

from derrick.mqtt.client import MqttClient, MqttError
from derrick.spool.store import Entry, Priority, Spool
from derrick.wire.payloads import AgentStatus, EdgeRules, mark_historical, now_ns

log = structlog.get_logger(__name__)

REFILL_EVERY_S = 1.0
EARLY_MAX = 10_000  # backlog alarm messages sent first; beyond it they keep their place


class Gate:
    """Whether the publisher may send now (open unless someone closed it)."""

    def __init__(self, *, is_open: bool = True) -> None:
        self._open = asyncio.Event()
        self._closed = asyncio.Event()
        (self._open if is_open else self._closed).set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def open(self) -> None:
        self._closed.clear()
        self._open.set()

    def close(self) -> None:
        self._open.clear()
        self._closed.set()

    async def wait_open(self) -> None:
        await self._open.wait()

    async def wait_closed(self) -> None:
        await self._closed.wait()


class Publisher:
    def __init__(
        self,
        spool: Spool,
        client: MqttClient,
        *,
        window: int = 20,
        ack_wait_s: float = 10.0,
        on_published: Callable[[Entry], None] | None = None,
        stamp: Callable[[str, bytes, bool], bytes | None] | None = None,
        on_connected: Callable[[], None] | None = None,
        gate: Gate | None = None,
    ) -> None:
        """``stamp(topic, payload, historical)``: a stored message as it leaves (default:
        the JSON contract's :func:`mark_historical` on replay; None drops it).
        ``on_connected``: what goes out first on every connection (Sparkplug births).
        ``gate``: closed, nothing is sent, as while disconnected (a Sparkplug primary
        host that is offline); each opening is a new start, births first."""
        self.spool = spool
        self.client = client
        self.window = window
        self.ack_wait_s = ack_wait_s
        self.on_published = on_published or (lambda _entry: None)
        self.stamp = stamp or _json_stamp
        self.on_connected = on_connected or (lambda: None)
        self.gate = gate or Gate()
        self.published = 0
        self.replayed = 0
        self.latencies_ms: deque[float] = deque(maxlen=2048)
        self._inflight: dict[int, tuple[Entry, float]] = {}
        self._sent_before: set[int] = set()  # sent on a connection that ended unconfirmed
        self._acked: list[int] = []
        self._retained_id: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._live_after = 0
        self._backlog_after = 0
        self._boundary = 0
        self._early: dict[int, Entry] = {}  # the backlog's alarm messages, to send first
        self._sent_early: set[int] = set()
        self._stalled = False
        self._replaying = False

    def wake(self) -> None:
        """New messages are in the spool (called by the queue stage after each batch)."""
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def in_flight(self, entry_id: int) -> bool:
        """Whether that message was handed to the broker and is not settled yet: it
        may have arrived, so it must not be taken back (:mod:`agent.alarms`). A backlog
        alarm message read to go first counts too: it is on its way."""
        return (
            entry_id in self._inflight
            or entry_id in self._acked
            or entry_id in self._early
            or entry_id in self._sent_before
        )

    async def run(self) -> None:
        while True:
            await self.client.wait_connected(timeout=float("inf"))
            if not await self._gate_opens():
                continue
            self.on_connected()
            self._boundary = self._live_after = self.spool.last_id()
            self._backlog_after = 0
            self._early = {
                entry.id: entry
                for entry in self.spool.read(
                    limit=EARLY_MAX, up_to_id=self._boundary, priority=Priority.ALARM
                )
            }
            self._sent_early = set()
            backlog = self.spool.depth
            self._replaying = backlog > 0
            if backlog:
                log.info("replaying stored messages", backlog=backlog, window=self.window)
            await self._serve_connection()

    async def _gate_opens(self) -> bool:
        """Wait for the gate while connected; False when the connection ended first."""
        if self.gate.is_open:
            return True
        opened = asyncio.ensure_future(self.gate.wait_open())
        disconnected = asyncio.ensure_future(self.client.wait_disconnected())
        await asyncio.wait({opened, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        disconnected.cancel()
        return self.gate.is_open and self.client.connected

    async def _serve_connection(self) -> None:
        disconnected = asyncio.ensure_future(self.client.wait_disconnected())
        closed = asyncio.ensure_future(self.gate.wait_closed())
        try:
            while not disconnected.done() and not closed.done():
                self.settle()
                self._fill()
                self._check_stalled()
                self._wake.clear()
                woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    {woken, disconnected, closed},
                    timeout=REFILL_EVERY_S,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                woken.cancel()
        finally:
            disconnected.cancel()
            closed.cancel()

    def settle(self) -> None:
        """Remove acknowledged messages from the spool, in one transaction."""
        if self._acked:
            self.spool.remove(self._acked)
            self._sent_before.difference_update(self._acked)
            self._acked = []

    def _fill(self) -> None:
        room = self.window - len(self._inflight)
        while room > 0 and self._early:
            entry = self._early.pop(next(iter(self._early)))
            self._sent_early.add(entry.id)
            if entry.id not in self._inflight:  # else paho resends it itself
                self._send(entry, historical=True)
                room -= 1
        if room <= 0:
            return
        for entry in self.spool.read(after_id=self._live_after, limit=room):
            self._send(entry, historical=False)
            self._live_after = entry.id
            room -= 1
        if room <= 0 or self._backlog_after >= self._boundary:
            return
        wanted = room + len(self._inflight)
        candidates = self.spool.read(
            after_id=self._backlog_after, limit=wanted, up_to_id=self._boundary
        )
        for entry in candidates:
            if room <= 0:
                break
            self._backlog_after = entry.id
            if entry.id in self._inflight or entry.id in self._sent_early:
                continue  # paho resends what is in flight after a reconnect
            self._send(entry, historical=True)
            room -= 1
        else:
            if len(candidates) < wanted:  # the backlog is drained
                self._backlog_after = self._boundary
                if self._replaying:
                    log.info("stored messages replayed", replayed=self.replayed)
                self._replaying = False

    def _send(self, entry: Entry, *, historical: bool) -> None:
        payload = self.stamp(entry.topic, entry.payload, historical)
        if payload is None:  # nothing of it is left to send (the stamp logged why)
            self._acked.append(entry.id)
            return
        retain = entry.retain and self._retained_id.get(entry.topic, 0) < entry.id
        if retain:
            self._retained_id[entry.topic] = entry.id
        try:
            puback = self.client.publish_nowait(entry.topic, payload, qos=1, retain=retain)
        except MqttError as exc:
            log.error(
                "message refused by the MQTT client, dropped", topic=entry.topic, error=str(exc)
            )
            self._acked.append(entry.id)
            return
        self._inflight[entry.id] = (entry, time.monotonic())
        self.replayed += historical
        puback.add_done_callback(lambda future, key=entry.id: self._on_puback(key, future))

    def _on_puback(self, key: int, future: asyncio.Future[None]) -> None:
        entry, sent = self._inflight.pop(key, (None, 0.0))
        if entry is None:
            return
        if future.cancelled():  # the client dropped it with its connection: send again
            self._sent_before.add(key)
            return
        self._acked.append(key)
        self.published += 1
        self.latencies_ms.append((time.monotonic() - sent) * 1000)
        self.on_published(entry)
        self._wake.set()

    def _check_stalled(self) -> None:
        """Log once when the oldest message in flight waits longer than ``ack_wait_s``."""
        oldest = min((sent for _entry, sent in self._inflight.values()), default=None)
        stalled = oldest is not None and time.monotonic() - oldest > self.ack_wait_s
        if stalled and not self._stalled:
            log.warning(
                "waiting for broker to acknowledge",
                inflight=len(self._inflight),
                waited_s=self.ack_wait_s,
            )
        elif self._stalled and not stalled:
            log.info("broker acknowledging again")
        self._stalled = stalled

    def latency_summary(self) -> tuple[float | None, float | None]:
        """(p50, max) publish latency in ms since the last call."""
        if not self.latencies_ms:
            return None, None
        values = list(self.latencies_ms)
        self.latencies_ms.clear()
        return statistics.median(values), max(values)


def _json_stamp(_topic: str, payload: bytes, historical: bool) -> bytes:
    return mark_historical(payload) if historical else payload


def status_payload(
    agent_id: str,
    boot: str,
    state: str,
    site: str | None = None,
    edge: list[EdgeRules] | None = None,
) -> bytes:
    """The agent's birth message or last will; ``edge``: the rules it evaluates itself."""
    status = AgentStatus(
        agent=agent_id, state=state, boot=boot, ts_ns=now_ns(), site=site, edge=edge or []
    )
    return status.model_dump_json().encode()


async def announce_forever(client: MqttClient, topic: str, birth: Callable[[], bytes]) -> None:
    """Publish the retained 'online' birth message after every (re)connect.

    The broker publishes our last will ('offline', retained) when we vanish; the next
    birth message replaces it. Birth is about this connection, so it goes straight to
    the broker rather than through the spool: replayed later it would be a lie.
    """
    while True:
        await client.wait_connected(timeout=float("inf"))
        client.publish_nowait(topic, birth(), retain=True)
        await client.wait_disconnected()
