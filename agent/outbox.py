"""Queue stage: a bounded queue between pollers and the publisher.

When the broker is away longer than the queue lasts, the oldest message is dropped (and
counted, and logged at powers of two) so that the newest state of every device gets
through first when the link comes back. Sequence numbers are given here, in queue
order, so the collector sees every drop as a gap.
"""

from __future__ import annotations

import asyncio
import uuid

import structlog

from derrick.contract import Reading, Telemetry

log = structlog.get_logger(__name__)


class Outbox:
    def __init__(self, agent_id: str, site: str, maxsize: int) -> None:
        self.agent_id = agent_id
        self.site = site
        self.boot = uuid.uuid4().hex
        self.dropped = 0
        self._seq = 0
        self._queue: asyncio.Queue[Telemetry] = asyncio.Queue(maxsize=maxsize)

    def put(self, asset: str, device: str, kind: str, readings: list[Reading]) -> None:
        message = Telemetry.model_construct(
            v=1,
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
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8 ...: a line, not a flood
                log.warning(
                    "outbox full, oldest message dropped",
                    dropped_total=self.dropped,
                    capacity=self._queue.maxsize,
                )
        self._queue.put_nowait(message)

    async def get(self) -> Telemetry:
        return await self._queue.get()

    def qsize(self) -> int:
        return self._queue.qsize()
