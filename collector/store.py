"""Store stage: batch lines, store them durably, then acknowledge their messages.

"Durably" is InfluxDB, or - while InfluxDB cannot take them - the on-disk spool
(:mod:`derrick.spool.store`, SQLite). A message is acknowledged to the broker only after its
lines are in one of the two, so a collector that dies mid-batch loses nothing: the
broker delivers the unacknowledged messages again and the rewritten points overwrite
themselves (series + timestamp is their identity).

While the spool holds anything, new batches join it behind the old ones, and one
replay task drains it into InfluxDB in order, oldest first. The spool is bounded (bytes
and age): at its bound the oldest telemetry goes first, alarm lines last, and every drop
is counted and logged. If the spool itself fails (disk full), the batch is retried
against InfluxDB in place and backpressure reaches the broker, which holds the rest.

A batch is written as soon as it is worth writing, never after a fixed wait alone: when
it is full (``batch.max_lines``), when the broker will send no more until we acknowledge
(:attr:`derrick.mqtt.client.MqttClient.unacked` reached the window the client announced, or
under MQTT 3.1.1 the most the broker has allowed so far), when arrivals pause
(``batch.pause_s`` with nothing new), or at the latest ``batch.max_delay_s`` after its
first message. Holding acknowledgements for a fixed wait stalls a broker's in-flight
window: mosquitto's stock 20 messages per 0.5 s is 40 messages a second. (A shorter
pause costs CPU in more, smaller writes: 5 ms took 22 us per reading at 20,000
readings/s where 50 ms takes 17.)

Exact dead letters: when InfluxDB refuses a write (a line it cannot parse, a field type
conflict), the refused lines are found - the fields the error names are written apart
from the rest, then the failing part halved until single lines remain - and only those
are dead-lettered, one record per message with its topic and the server's reason; every
other line is stored and counted as stored. Writes are idempotent (series + timestamp),
so lines a "partial write" already took are simply written again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from collector.fieldtypes import FieldTypes, line_field_type, refused_fields
from collector.influx import DataRejected, StoreUnavailable, Writer
from collector.lineproto import topic_of_line
from collector.stats import Stats
from derrick.mqtt.client import InboundMessage
from derrick.spool.store import Dropped, Priority, Spool, SpoolError

log = structlog.get_logger(__name__)

RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
SPOOL_TOPIC = "influx"  # spool entries are line-protocol batches, not MQTT messages


@dataclass(frozen=True, slots=True)
class Batchable:
    """Lines to store, and the message to acknowledge once they are (None: our own)."""

    lines: list[str]
    message: InboundMessage | None
    priority: Priority = Priority.TELEMETRY


@dataclass(frozen=True, slots=True)
class Batching:
    """When a batch is written (see the module docstring)."""

    max_lines: int = 5000
    max_delay_s: float = 0.5
    pause_s: float = 0.05


Refused = Callable[[str | None, list[str], str], None]
"""Hands on ``(topic, lines, reason)``: the refused lines of one message (topic None:
the collector's own lines)."""

Origin = tuple[int, str | None]
"""Which message a line came from: a key (one dead letter per key) and its topic."""


def _never_full() -> bool:
    return False


class Store:
    def __init__(  # noqa: PLR0917 - the stage's collaborators, wired once in main
        self,
        writer: Writer,
        ack: Callable[[InboundMessage], None],
        stats: Stats,
        batching: Batching,
        spool: Spool | None = None,
        refused: Refused | None = None,
        *,
        window_full: Callable[[], bool] = _never_full,
        fields: FieldTypes | None = None,
    ) -> None:
        self.writer = writer
        self.ack = ack
        self.stats = stats
        self.batching = batching
        self.spool = spool
        self.refused = refused or (lambda _topic, _lines, _reason: None)
        self.window_full = window_full
        self.fields = fields
        self.available = True
        self.busy_since: float | None = None
        """Monotonic time the batch being stored was taken; None while waiting for one."""
        self._spooled = asyncio.Event()
        self._dropping = False

    async def run(self, queue: asyncio.Queue[Batchable]) -> None:
        while True:
            items = await self._collect(queue)
            self.busy_since = time.monotonic()
            lines = [line for item in items for line in item.lines]
            if lines:
                await self._store(lines, items, max(item.priority for item in items))
            for item in items:
                if item.message is not None:
                    self.ack(item.message)
                    self.stats.acked += 1
            self.stats.progress_store = time.monotonic()
            self.busy_since = None

    async def _collect(self, queue: asyncio.Queue[Batchable]) -> list[Batchable]:
        """Wait for one item, then take more until the batch is worth writing."""
        items = [await queue.get()]
        count = len(items[0].lines)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batching.max_delay_s
        while count < self.batching.max_lines:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                if self.window_full():
                    break  # the broker sends nothing more until we acknowledge
                wait = min(self.batching.pause_s, deadline - loop.time())
                if wait <= 0:
                    break
                try:
                    async with asyncio.timeout(wait):  # no task per wait, as wait_for makes
                        item = await queue.get()
                except TimeoutError:
                    break  # arrivals paused (or the batch is old enough)
            items.append(item)
            count += len(item.lines)
        return items

    async def _store(self, lines: list[str], items: list[Batchable], priority: Priority) -> None:
        """InfluxDB now if it takes them and nothing waits before them; else the spool."""
        if self.spool is None:
            await self._write_until_stored(lines, items)
            return
        if self.spool_depth() == 0:
            try:
                await self._write_once(lines, items)
            except StoreUnavailable as exc:
                self._set_available(False, str(exc))
            else:
                return
        try:
            self._append(lines, priority)
        except SpoolError as exc:
            log.error("spool write failed, holding the batch in memory", reason=str(exc))
            await self._write_until_stored(lines, items)

    async def _write_once(self, lines: list[str], items: list[Batchable] | None) -> None:
        """One write; StoreUnavailable propagates (nothing is dead-lettered then), a
        refusal is narrowed down to the lines refused.

        ``items`` are the messages ``lines`` came from, in order; None (spooled lines)
        derives each line's topic from the line itself
        (:func:`collector.lineproto.topic_of_line`)."""
        started = time.perf_counter()
        try:
            await self.writer.write(lines)
        except DataRejected as exc:
            await self._narrow(lines, _origins(items) if items is not None else None, str(exc))
            return
        self._set_available(True, "")
        self.stats.write_ms += (time.perf_counter() - started) * 1000
        self._stored(len(lines))

    def _stored(self, count: int) -> None:
        self.stats.lines_written += count
        self.stats.batches += 1

    async def _narrow(
        self, lines: list[str], origins: Sequence[Origin] | None, reason: str
    ) -> None:
        """Store every line InfluxDB takes; dead-letter the others, once each finding is
        complete (an outage midway leaves the whole batch to be written again)."""
        if self.fields is not None:
            self.fields.learn_from_refusal(reason)
        named = _naming(lines, reason)
        rest = [i for i in range(len(lines)) if i not in named]
        refused: dict[int, str] = {}
        for part in (rest, sorted(named)):
            if part:
                await self._bisect(lines, part, refused)
        self._set_available(True, "")
        self._dead_letter(lines, origins, refused)

    async def _bisect(self, lines: list[str], part: list[int], refused: dict[int, str]) -> None:
        """Write ``part`` of ``lines``; on refusal, halves until single refused lines."""
        try:
            await self.writer.write([lines[i] for i in part])
        except DataRejected as exc:
            if len(part) == 1:
                refused[part[0]] = str(exc)
                return
            middle = len(part) // 2
            await self._bisect(lines, part[:middle], refused)
            await self._bisect(lines, part[middle:], refused)
            return
        self._stored(len(part))

    def _dead_letter(
        self, lines: list[str], origins: Sequence[Origin] | None, refused: dict[int, str]
    ) -> None:
        """One dead letter per message: its refused lines and the server's reason."""
        groups: dict[object, list[int]] = {}
        for index in sorted(refused):
            key = origins[index][0] if origins is not None else topic_of_line(lines[index])
            groups.setdefault(key, []).append(index)
        for indexes in groups.values():
            first = indexes[0]
            topic = origins[first][1] if origins is not None else topic_of_line(lines[first])
            refused_lines = [lines[i] for i in indexes]
            self.stats.lines_refused += len(refused_lines)
            log.error(
                "influxdb refused points",
                topic=topic,
                lines=len(refused_lines),
                reason=refused[first],
            )
            self.refused(topic, refused_lines, refused[first])

    async def _write_until_stored(self, lines: list[str], items: list[Batchable]) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                await self._write_once(lines, items)
            except StoreUnavailable as exc:
                self._set_available(False, str(exc))
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
            else:
                return

    # -- the spool -----------------------------------------------------------------------

    def spool_depth(self) -> int:
        return self.spool.depth if self.spool else 0

    def _append(self, lines: list[str], priority: Priority) -> None:
        assert self.spool is not None
        payload = "\n".join(lines).encode()
        drops = self.spool.append([(SPOOL_TOPIC, payload, priority, False, time.time_ns())])
        self.stats.lines_spooled += len(lines)
        self._account(drops)
        self._spooled.set()

    async def replay_forever(self, batch_entries: int = 20) -> None:
        """Drain the spool into InfluxDB, oldest first, while InfluxDB takes it."""
        if self.spool is None:
            return
        delay = RETRY_MIN_S
        while True:
            entries = self.spool.read(limit=batch_entries)
            if not entries:
                self._spooled.clear()
                self._account(self.spool.enforce())
                try:
                    async with asyncio.timeout(5.0):
                        await self._spooled.wait()
                except TimeoutError:
                    pass
                continue
            lines = [line for e in entries for line in e.payload.decode().split("\n")]
            try:
                await self._write_once(lines, None)
            except StoreUnavailable as exc:
                self._set_available(False, str(exc))
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            delay = RETRY_MIN_S
            self.spool.remove(entry.id for entry in entries)
            self.stats.lines_replayed += len(lines)
            if self.spool_depth() == 0:
                log.info("spool replayed into influxdb", lines_total=self.stats.lines_replayed)

    def _account(self, drops: list[Dropped]) -> None:
        dropped = sum(drop.total() for drop in drops)
        if dropped:
            self.stats.spool_dropped += dropped
            if not self._dropping:
                log.error(
                    "spool full, oldest batches dropped",
                    reason=drops[0].reason,
                    batches=dropped,
                    policy="telemetry first, alarms last",
                )
            self._dropping = True
        elif self._dropping:
            log.info("spool no longer dropping", batches_dropped_total=self.stats.spool_dropped)
            self._dropping = False

    def _set_available(self, available: bool, reason: str) -> None:
        if available != self.available:
            if available:
                log.info("influxdb writable again", url=self.writer.url)
            else:
                log.warning(
                    "influxdb unavailable, spooling to disk"
                    if self.spool
                    else "influxdb unavailable, retrying",
                    url=self.writer.url,
                    reason=reason,
                )
        self.available = available


def _origins(items: list[Batchable]) -> list[Origin]:
    """Each line's message (a key and its topic), in line order: only a refusal needs it."""
    origins: list[Origin] = []
    for key, item in enumerate(items):
        topic = item.message.topic if item.message is not None else None
        origins.extend([(key, topic)] * len(item.lines))
    return origins


def _naming(lines: list[str], reason: str) -> set[int]:
    """Indexes of the lines that send a field with the type an InfluxDB error names as in
    conflict: likely refused, so written apart from the rest (which then goes in one
    write)."""
    named = refused_fields(reason)
    found = set()
    for index, line in enumerate(lines):
        for measurement, field, sent in named:
            if line.startswith(f"{measurement},") and line_field_type(line, field) == sent:
                found.add(index)
    return found
