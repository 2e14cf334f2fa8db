"""Store stage: batch lines, write them to InfluxDB, then acknowledge their messages.

A message is acknowledged to the broker only after its lines are written, so a collector
that dies mid-batch loses nothing: the broker delivers the unacknowledged messages again
and the rewritten points overwrite themselves (series + timestamp is their identity).
While InfluxDB is away the batch is retried with backoff, the queue before this stage
fills, and backpressure reaches the broker, which holds the rest.
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

log = structlog.get_logger(__name__)

RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class Batchable:
    """Lines to store, and the message to acknowledge once they are (None: our own)."""

    lines: list[str]
    message: InboundMessage | None


class Store:
    def __init__(
        self,
        writer: Writer,
        ack: Callable[[InboundMessage], None],
        stats: Stats,
        max_lines: int,
        max_delay_s: float,
    ) -> None:
        self.writer = writer
        self.ack = ack
        self.stats = stats
        self.max_lines = max_lines
        self.max_delay_s = max_delay_s
        self.available = True

    async def run(self, queue: asyncio.Queue[Batchable]) -> None:
        while True:
            items = await self._collect(queue)
            lines = [line for item in items for line in item.lines]
            if lines:
                await self._write(lines)
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

    async def _write(self, lines: list[str]) -> None:
        delay = RETRY_MIN_S
        while True:
            started = time.perf_counter()
            try:
                await self.writer.write(lines)
            except StoreUnavailable as exc:
                self._set_available(False, str(exc))
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            except DataRejected as exc:
                self.stats.lines_refused += len(lines)
                log.error("influxdb refused points", lines=len(lines), reason=str(exc))
                return
            self._set_available(True, "")
            self.stats.write_ms += (time.perf_counter() - started) * 1000
            self.stats.lines_written += len(lines)
            self.stats.batches += 1
            return

    def _set_available(self, available: bool, reason: str) -> None:
        if available != self.available:
            if available:
                log.info("influxdb writable again", url=self.writer.url)
            else:
                log.warning("influxdb unavailable, retrying", url=self.writer.url, reason=reason)
        self.available = available
