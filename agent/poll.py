"""Poll stage: one asyncio task per device, on its own interval.

A dead device costs its own task one timeout per cycle and nobody else anything. While
it is down every cycle still yields readings, with quality ``bad`` and no value, so the
outage is visible downstream instead of silent. Reconnects back off exponentially, with
jitter, up to ``MAX_BACKOFF_S``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import structlog

from agent.config import Device
from agent.decode import decode_request, failed_request
from agent.modbus import ExceptionReply, ModbusConnection, ModbusError
from agent.plan import ReadRequest, plan_reads
from derrick.contract import Reading, now_ns

log = structlog.get_logger(__name__)

MAX_BACKOFF_S = 30.0
Sink = Callable[[list[Reading]], None]


class DevicePoller:
    def __init__(self, device: Device, sink: Sink) -> None:
        self.device = device
        self.sink = sink
        self.plan: list[ReadRequest] = plan_reads(
            device.selected_registers, device.max_registers, device.max_bits
        )
        self.connection = ModbusConnection(device.host, device.port, device.timeout_s)
        self.up: bool | None = None  # None until the first poll tells
        self.failures = 0
        self.next_connect = 0.0
        self.refused_spans: set[tuple[str, int, int]] = set()

    async def run(self) -> None:
        """Poll forever on a fixed schedule; a late cycle skips ahead, it never bunches up."""
        loop = asyncio.get_running_loop()
        interval = self.device.interval_s
        deadline = loop.time()
        try:
            while True:
                self.sink(await self.poll_once())
                deadline += interval
                now = loop.time()
                if deadline < now:
                    deadline = now + interval - (now - deadline) % interval
                await asyncio.sleep(deadline - now)
        finally:
            self.connection.close()

    async def poll_once(self) -> list[Reading]:
        """Read every planned span once; never raises for a device fault."""
        if not await self._ensure_connected():
            ts = now_ns()
            return [r for req in self.plan for r in failed_request(req, ts)]
        readings: list[Reading] = []
        for index, request in enumerate(self.plan):
            try:
                result = await self.connection.read(
                    request.table, request.address, request.count, self.device.unit_id
                )
            except ModbusError as exc:
                self._went_down(str(exc))
                ts = now_ns()
                readings += [r for req in self.plan[index:] for r in failed_request(req, ts)]
                return readings
            readings += self._readings_of(request, result)
        self._came_up()
        return readings

    def _readings_of(
        self, request: ReadRequest, result: list[int] | list[bool] | ExceptionReply
    ) -> list[Reading]:
        ts = now_ns()
        span = (str(request.table), request.address, request.count)
        if isinstance(result, ExceptionReply):
            if span not in self.refused_spans:
                self.refused_spans.add(span)
                log.warning(
                    "span refused by device",
                    table=span[0],
                    address=span[1],
                    count=span[2],
                    exception_code=result.code,
                    device=self.device.name,
                )
            return failed_request(request, ts)
        self.refused_spans.discard(span)
        return decode_request(request, result, ts)

    async def _ensure_connected(self) -> bool:
        if self.connection.connected:
            return True
        loop = asyncio.get_running_loop()
        if loop.time() < self.next_connect:
            return False
        try:
            await self.connection.connect()
        except ModbusError as exc:
            self._went_down(str(exc))
            return False
        return True

    def _went_down(self, reason: str) -> None:
        self.connection.close()
        self.failures += 1
        backoff = min(MAX_BACKOFF_S, self.device.interval_s * 2 ** min(self.failures, 10))
        self.next_connect = asyncio.get_running_loop().time() + backoff * random.uniform(0.5, 1.0)
        if self.up is not False:
            log.warning("device down", device=self.device.name, reason=reason)
        self.up = False

    def _came_up(self) -> None:
        if self.up is not True:
            log.info(
                "device up",
                device=self.device.name,
                endpoint=self.connection.endpoint,
                requests_per_cycle=len(self.plan),
            )
        self.up = True
        self.failures = 0
