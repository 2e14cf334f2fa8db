"""Store stage: batch lines, store them durably, then acknowledge their messages.

"Durably" is InfluxDB, or - while InfluxDB cannot take them - the on-disk spool
(:mod:`derrick.spool`, SQLite). A message is acknowledged to the broker only after its
lines are in one of the two, so a collector that dies mid-batch loses nothing: the
broker delivers the unacknowledged messages again and the rewritten points overwrite
themselves (series + timestamp is their identity).

While the spool holds anything, new batches join it behind the old ones, and one
replay task drains it into InfluxDB in order, oldest first. The spool is bounded (bytes
and age): at its bound the oldest telemetry goes first, alarm lines last, and every drop
is counted and logged. If the spool itself fails (disk full), the batch is retried
against InfluxDB in place and backpressure reaches the broker, which holds the rest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from collector.influx import DataRejected, StoreUnavailable, Writer
from collector.stats import Stats
from derrick.mqtt import InboundMessage
from derrick.spool import Dropped, Priority, Spool, SpoolError

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


class Store:
    def __init__(  # noqa: PLR0917 - the stage's collaborators, wired once in main
        self,
        writer: Writer,
        ack: Callable[[InboundMessage], None],
        stats: Stats,
        max_lines: int,
        max_delay_s: float,
        spool: Spool | None = None,
        refused: Callable[[list[str], str], None] | None = None,
    ) -> None:
        self.writer = writer
        self.ack = ack
        self.stats = stats
        self.max_lines = max_lines
        self.max_delay_s = max_delay_s
        self.spool = spool
        self.refused = refused or (lambda _lines, _reason: None)
        self.available = True
        self._spooled = asyncio.Event()
        self._dropping = False

    async def run(self, queue: asyncio.Queue[Batchable]) -> None:
        while True:
            items = await self._collect(queue)
            lines = [line for item in items for line in item.lines]
            if lines:
                await self._store(lines, max(item.priority for item in items))
            for item in items:
                if item.message is not None:
                    self.ack(item.message)

    async def _collect(self, queue: asyncio.Queue[Batchable]) -> list[Batchable]:
        """Wait for one item, then take more until the batch is full or old enough."""
        items = [await queue.get()]
        count = len(items[0].lines)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay_s
        while count < self.max_lines:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            items.append(item)
            count += len(item.lines)
        return items

    async def _store(self, lines: list[str], priority: Priority) -> None:
        """InfluxDB now if it takes them and nothing waits before them; else the spool."""
        if self.spool is None:
            await self._write_until_stored(lines)
            return
        if self.spool_depth() == 0:
            try:
                await self._write_once(lines)
            except StoreUnavailable as exc:
                self._set_available(False, str(exc))
            else:
                return
        try:
            self._append(lines, priority)
        except SpoolError as exc:
            log.error("spool write failed, holding the batch in memory", reason=str(exc))
            await self._write_until_stored(lines)

    async def _write_once(self, lines: list[str]) -> None:
        """One write; StoreUnavailable propagates, refused points are handed on."""
        started = time.perf_counter()
        try:
            await self.writer.write(lines)
        except DataRejected as exc:
            self._refused(lines, str(exc))
            return
        self._set_available(True, "")
        self.stats.write_ms += (time.perf_counter() - started) * 1000
        self.stats.lines_written += len(lines)
        self.stats.batches += 1

    async def _write_until_stored(self, lines: list[str]) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                await self._write_once(lines)
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
                await self._write_once(lines)
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

    def _refused(self, lines: list[str], reason: str) -> None:
        self.stats.lines_refused += len(lines)
        log.error("influxdb refused points", lines=len(lines), reason=reason)
        self.refused(lines, reason)

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
