"""Poll stage: one asyncio task per device (per unit id behind a gateway).

Each poll cycle reads the device's planned spans (:mod:`agent.plan`), decodes them
(:mod:`agent.decode`) and hands the readings downstream, to the device's filter stage
(:mod:`agent.filter`); state changes (up, down) go to ``on_state``.

Each device reads its poll groups on their own intervals. With ``aligned`` (the agent's
``align_polls``, default) every group polls on its interval's grid of the wall clock (0.5
s: at :00.0, :00.5, ...), as Telegraf's ``round_interval`` does: the polls of a fleet
start and end together, so the event loop wakes once for many replies and the outbox
commits their messages in one transaction (a third less CPU per reading measured on 20
small PLCs), and readings of different devices carry comparable times. Without it each
device's first poll is put at random within its first interval (a second at most),
which spreads the load of a fleet instead. A dead or slow device costs
its own task its timeouts and nobody else anything: devices on different links share
nothing, and devices behind one gateway share only the link, one request at a time.

While a device fails, every cycle still yields its readings with quality ``bad`` and no
value, so the outage is visible downstream instead of silent. A circuit breaker per unit
id stops hammering a device that failed ``breaker_failures`` cycles in a row: it stays
open (no requests, bad readings) for a backoff that doubles up to ``breaker_open_s``,
with jitter, then lets one probe cycle through.

A span the device refuses with exception 02 (illegal data address) is split in two and
read again at once; the split is remembered for the rest of the run, so a hole in the
map costs one extra request per cycle, not a refused span every cycle.

A group whose cycle outlasts its interval cannot keep it: the due times that passed
meanwhile are skipped (the group stays on its grid, never runs back to back to catch
up), counted (``poll_overruns``) and logged once when the overrun starts and once when
the group has kept its interval for ``OVERRUN_CLEAR_CYCLES`` cycles in a row again.

Device options for awkward PLCs (docs/config.md): ``pause_between_requests_s`` and
``delay_after_connect_s`` are the link's (:meth:`ModbusConnection.require`, the largest a
device on the link needs); ``reconnect_every_cycle`` recycles the connection after each
cycle; on a shared link each device's requests keep its own ``timeout_s``;
``max_registers`` and ``max_bits`` bound the plan. Unset, none of them costs anything.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent.config import Device
from agent.decode import decode_request, failed_request
from agent.modbus import DeviceUnreachable, ExceptionReply, ModbusConnection, ModbusError
from agent.plan import ReadRequest, plan_reads, split_request
from derrick.wire.payloads import DeviceState, Reading, now_ns

log = structlog.get_logger(__name__)

ILLEGAL_DATA_ADDRESS = 2
OVERRUN_CLEAR_CYCLES = 3
"""Cycles in a row on time that end a group's overrun (a group on the edge logs once)."""
ReadingsSink = Callable[[list[Reading]], None]  # the next stage: FilterStage.put
StateSink = Callable[[DeviceState, str], None]


@dataclass(slots=True)
class PollCounters:
    """What one device's task did since start; read by the metrics stage."""

    cycles_ok: int = 0
    cycles_failed: int = 0
    requests: int = 0
    readings: int = 0
    last_cycle_ms: float = 0.0
    last_cycle_requests: int = 0
    poll_overruns: int = 0
    """Due times of any group skipped because the cycle before ran past them (device up)."""


@dataclass(slots=True)
class Breaker:
    """Circuit breaker of one unit id: closed, open until ``reopen_at``, or half-open."""

    failures_to_open: int
    max_open_s: float
    base_open_s: float
    failures: int = 0
    opened: int = 0
    reopen_at: float = 0.0

    def allows(self, now: float) -> bool:
        return self.failures < self.failures_to_open or now >= self.reopen_at

    def success(self) -> None:
        self.failures = 0
        self.opened = 0

    def failure(self, now: float) -> bool:
        """Count a failed cycle; True when this failure opened (or re-opened) the breaker."""
        self.failures += 1
        if self.failures < self.failures_to_open:
            return False
        open_s = min(self.max_open_s, self.base_open_s * 2**self.opened)
        self.opened = min(self.opened + 1, 20)
        self.reopen_at = now + open_s * random.uniform(0.5, 1.0)
        return True


@dataclass(slots=True)
class PollGroup:
    name: str
    interval_s: float
    plan: list[ReadRequest]
    due: float = 0.0
    overrun: bool = False
    """Cannot keep its interval: set at the first skipped due time, cleared after
    OVERRUN_CLEAR_CYCLES cycles in a row on time."""
    overrun_since: float = 0.0
    overrun_skipped: int = 0  # due times skipped in the current overrun
    on_time: int = 0  # cycles in a row on time during an overrun


@dataclass(slots=True)
class _Cycle:
    readings: list[Reading] = field(default_factory=list)
    failure: str = ""


class DevicePoller:
    def __init__(
        self,
        device: Device,
        connection: ModbusConnection,
        sink: ReadingsSink,
        on_state: StateSink | None = None,
        *,
        shares_link: bool = False,
        aligned: bool = False,
    ) -> None:
        self.device = device
        self.aligned = aligned
        self.connection = connection
        self.sink = sink
        self.on_state = on_state or (lambda _state, _reason: None)
        self.shares_link = shares_link
        self.groups = [
            PollGroup(name, interval, _plan(device, name))
            for name, interval in sorted(device.group_intervals().items())
        ]
        fastest = min(group.interval_s for group in self.groups)
        self.breaker = Breaker(device.breaker_failures, device.breaker_open_s, fastest)
        self.counters = PollCounters()
        self.state: DeviceState | None = None
        self.last_failure = ""
        self.refused_spans: set[tuple[str, int, int]] = set()
        if device.pause_between_requests_s or device.delay_after_connect_s:
            connection.require(
                pause_s=device.pause_between_requests_s,
                delay_after_connect_s=device.delay_after_connect_s,
            )
        self.reconnect_every_cycle = device.reconnect_every_cycle
        # On a link shared with other devices, the connection's timeout is the first
        # device's: this one's requests carry their own.
        self.request_timeout_s = device.timeout_s if shares_link else None

    @property
    def requests_per_cycle(self) -> int:
        return sum(len(group.plan) for group in self.groups)

    @property
    def overrunning(self) -> list[str]:
        """Groups that cannot keep their interval now."""
        return [group.name for group in self.groups if group.overrun]

    async def run(self) -> None:
        """Poll every group on its own schedule; a late cycle skips ahead, never bunches up."""
        loop = asyncio.get_running_loop()
        if self.aligned:
            for group in self.groups:
                group.due = next_on_grid(loop.time(), group.interval_s)
        else:
            start = loop.time() + random.uniform(0, min(1.0, self.groups[0].interval_s))
            for group in self.groups:  # spread a fleet's first polls instead of all at once
                group.due = start
        try:
            while True:
                await asyncio.sleep(max(0.0, min(g.due for g in self.groups) - loop.time()))
                started = loop.time()
                due = [g for g in self.groups if g.due <= started]
                if not due:  # woken a hair early (uvloop's timers count whole ms)
                    continue
                self.sink(await self.poll_once(due))
                now = loop.time()
                for group in due:
                    self.reschedule(group, started, now)
        finally:
            if not self.shares_link:
                self.connection.close()

    def reschedule(self, group: PollGroup, started: float, now: float) -> None:
        """Set ``group.due`` after its cycle that started at ``started`` and ended ``now``.

        The next due time is one interval after the last; due times already past are
        skipped (the group keeps its phase, a late cycle never bunches up), counted, and
        start an overrun. Only cycles of a device that is up are judged: a down device's
        cycles wait out timeouts and its breaker, and its state says so already.
        """
        interval = group.interval_s
        group.due += interval
        skipped = 0
        if group.due < now:
            skipped = int((now - group.due) // interval) + 1
            group.due += skipped * interval
        if self.state is not DeviceState.UP:
            return
        if skipped:
            self.counters.poll_overruns += skipped
            group.on_time = 0
            group.overrun_skipped += skipped
            if not group.overrun:
                group.overrun, group.overrun_since = True, started
                log.warning(
                    "poll overrun",
                    device=self.device.name,
                    group=group.name,
                    interval_s=interval,
                    cycle_s=round(now - started, 3),
                    period_s=round(group.due - started, 3),
                    skipped=skipped,
                )
        elif group.overrun:
            group.on_time += 1
            if group.on_time >= OVERRUN_CLEAR_CYCLES:
                log.info(
                    "poll overrun ended",
                    device=self.device.name,
                    group=group.name,
                    interval_s=interval,
                    cycle_s=round(now - started, 3),
                    overrun_s=round(now - group.overrun_since, 3),
                    skipped=group.overrun_skipped,
                )
                group.overrun, group.on_time, group.overrun_skipped = False, 0, 0

    async def poll_once(self, groups: list[PollGroup] | None = None) -> list[Reading]:
        """Read the spans of ``groups`` (default: all) once; never raises for a device fault.
        No groups: no cycle (one that asked the device nothing says nothing of it)."""
        groups = self.groups if groups is None else groups
        if not groups:
            return []
        started = time.perf_counter()
        requests_before = self.counters.requests
        cycle = _Cycle()
        if not self.breaker.allows(asyncio.get_running_loop().time()):
            ts = now_ns()
            cycle.readings = [r for g in groups for req in g.plan for r in failed_request(req, ts)]
            return cycle.readings  # the open breaker already counted this outage
        for group in groups:
            await self._read_group(group, cycle)
        if self.reconnect_every_cycle:
            await self.connection.recycle()
        self.counters.last_cycle_ms = (time.perf_counter() - started) * 1000
        self.counters.last_cycle_requests = self.counters.requests - requests_before
        self.counters.readings += len(cycle.readings)
        if cycle.failure:
            self._cycle_failed(cycle.failure)
        else:
            self._cycle_ok()
        return cycle.readings

    async def _read_group(self, group: PollGroup, cycle: _Cycle) -> None:
        pending = list(group.plan)
        while pending:
            request = pending.pop(0)
            if cycle.failure:  # the device stopped answering: don't wait out every span
                cycle.readings += failed_request(request, now_ns())
                continue
            result = await self._read(request, cycle)
            if result is None:
                cycle.readings += failed_request(request, now_ns())
            elif isinstance(result, ExceptionReply):
                halves = self._refused(group, request, result)
                if halves:
                    pending[:0] = halves
                else:
                    cycle.readings += failed_request(request, now_ns())
            else:
                self.refused_spans.discard(_span(request))
                cycle.readings += decode_request(request, result, now_ns())

    async def _read(
        self, request: ReadRequest, cycle: _Cycle
    ) -> list[int] | list[bool] | ExceptionReply | None:
        """One span, retried ``device.retries`` times; None (and ``cycle.failure``) if dead."""
        for attempt in range(self.device.retries + 1):
            try:
                if not self.connection.connected:
                    await self.connection.connect()
                self.counters.requests += 1
                if self.request_timeout_s is None:
                    return await self.connection.read(
                        request.table, request.address, request.count, self.device.unit_id
                    )
                return await self.connection.read(
                    request.table,
                    request.address,
                    request.count,
                    self.device.unit_id,
                    self.request_timeout_s,
                )
            except DeviceUnreachable as exc:
                self.connection.close()
                cycle.failure = str(exc)
            except ModbusError as exc:
                cycle.failure = str(exc)
            if attempt < self.device.retries:
                log.debug("retrying request", attempt=attempt + 1, reason=cycle.failure)
                cycle.failure = ""
        return None

    def _refused(
        self, group: PollGroup, request: ReadRequest, reply: ExceptionReply
    ) -> list[ReadRequest]:
        """Split a span refused with exception 02 and remember it; [] when it can't split."""
        span = _span(request)
        halves = split_request(request) if reply.code == ILLEGAL_DATA_ADDRESS else [request]
        if len(halves) > 1:
            index = group.plan.index(request) if request in group.plan else -1
            if index >= 0:
                group.plan[index : index + 1] = halves
            log.warning(
                "span refused, split and remembered",
                table=span[0],
                address=span[1],
                count=span[2],
                exception_code=reply.code,
                into=[f"{h.address}+{h.count}" for h in halves],
            )
            return halves
        if span not in self.refused_spans:
            self.refused_spans.add(span)
            log.warning(
                "span refused by device",
                table=span[0],
                address=span[1],
                count=span[2],
                exception_code=reply.code,
                tags=[reg.tag for reg in request.registers],
            )
        return []

    def _cycle_failed(self, reason: str) -> None:
        self.counters.cycles_failed += 1
        self.last_failure = reason
        opened = self.breaker.failure(asyncio.get_running_loop().time())
        if opened and not self.shares_link:
            self.connection.close()  # a half-dead TCP session gets a fresh start on the probe
        if self.state is not DeviceState.DOWN:
            log.warning("device down", reason=reason, endpoint=self.connection.endpoint)
            self.state = DeviceState.DOWN
            self.on_state(DeviceState.DOWN, reason)

    def _cycle_ok(self) -> None:
        self.counters.cycles_ok += 1
        self.last_failure = ""
        self.breaker.success()
        if self.state is not DeviceState.UP:
            log.info(
                "device up",
                endpoint=self.connection.endpoint,
                requests_per_cycle=self.requests_per_cycle,
            )
            self.state = DeviceState.UP
            self.on_state(DeviceState.UP, "")


def next_on_grid(loop_now: float, interval_s: float) -> float:
    """The next loop time (after ``loop_now``) at which the wall clock is a whole multiple
    of ``interval_s``."""
    offset = time.time() - loop_now  # wall clock minus loop clock, now
    return math.ceil((loop_now + offset) / interval_s) * interval_s - offset


def _plan(device: Device, group: str) -> list[ReadRequest]:
    return plan_reads(
        device.registers_in_group(group), device.max_registers, device.max_bits, device.max_gap
    )


def _span(request: ReadRequest) -> tuple[str, int, int]:
    return (str(request.table), request.address, request.count)
