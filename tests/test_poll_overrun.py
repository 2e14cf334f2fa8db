"""Poll overrun: a group whose cycle outlasts its interval is counted and logged once.

A fake Modbus connection stands in for the PLC (no sockets); the scheduling itself is
checked on synthetic times, then once in real time through ``DevicePoller.run``.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from agent.config import Device
from agent.metrics import AgentHealth
from agent.poll import OVERRUN_CLEAR_CYCLES, DevicePoller
from derrick.wire.payloads import DeviceCounters, DeviceState

REGISTERS = [
    {"tag": "load", "table": "holding", "address": 0, "type": "int16", "scale": 0.1},
    {"tag": "speed", "table": "holding", "address": 1, "type": "uint16"},
]


class SlowPlc:
    """The face of ``agent.modbus.ModbusConnection`` the poller uses: every read is
    answered with zeros after ``delay_s``."""

    endpoint = "fake:502"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.connected = True
        self.reads = 0

    async def connect(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.connected = False

    async def read(self, table, address, count, unit_id):
        self.reads += 1
        await asyncio.sleep(self.delay_s)
        return [False] * count if table.is_bits else [0] * count


def poller(interval_s: float, plc: SlowPlc | None = None) -> DevicePoller:
    device = Device(
        name="lmi",
        asset="crane-01",
        kind="crane",
        registers=REGISTERS,
        host="127.0.0.1",
        interval_s=interval_s,
    )
    return DevicePoller(device, plc or SlowPlc(), lambda _readings: None)


def overrun_events(logs):
    started = [e for e in logs if e["event"] == "poll overrun"]
    ended = [e for e in logs if e["event"] == "poll overrun ended"]
    return started, ended


def test_skipped_due_times_are_counted_and_the_overrun_logged_once_each_way():
    p = poller(0.5)
    p.state = DeviceState.UP
    (group,) = p.groups
    with capture_logs() as logs:
        p.reschedule(group, started=0.0, now=0.1)  # on time: next at 0.5
        assert (group.due, p.counters.poll_overruns, group.overrun) == (0.5, 0, False)
        p.reschedule(group, started=0.5, now=2.0)  # 1.0, 1.5, 2.0 passed: skipped
        assert (group.due, p.counters.poll_overruns, group.overrun) == (2.5, 3, True)
        for start in (2.5, 3.5, 4.5):  # sustained: 0.9 s cycles, one due time skipped each
            p.reschedule(group, started=start, now=start + 0.9)
            assert group.due == start + 1.0
        assert p.counters.poll_overruns == 6
        p.reschedule(group, started=5.5, now=5.6)  # on the edge: on time, late, on time
        p.reschedule(group, started=6.0, now=6.9)
        p.reschedule(group, started=7.0, now=7.1)
        assert group.overrun and p.overrunning == ["default"]
        p.reschedule(group, started=7.5, now=7.6)
        assert group.overrun  # OVERRUN_CLEAR_CYCLES - 1 in a row
        p.reschedule(group, started=8.0, now=8.1)
        assert not group.overrun and p.overrunning == []
        p.reschedule(group, started=8.5, now=8.6)
    assert OVERRUN_CLEAR_CYCLES == 3
    assert p.counters.poll_overruns == 7
    started, ended = overrun_events(logs)
    assert started == [
        {
            "event": "poll overrun",
            "log_level": "warning",
            "device": "lmi",
            "group": "default",
            "interval_s": 0.5,
            "cycle_s": 1.5,
            "period_s": 2.0,
            "skipped": 3,
        }
    ]
    assert len(ended) == 1
    assert ended[0]["log_level"] == "info"
    assert (ended[0]["device"], ended[0]["group"], ended[0]["interval_s"]) == (
        "lmi",
        "default",
        0.5,
    )
    assert (ended[0]["overrun_s"], ended[0]["skipped"]) == (7.6, 7)


def test_a_down_device_is_not_judged():
    """Its cycles wait out timeouts and the breaker: ``device down`` says so already."""
    p = poller(0.5)
    p.state = DeviceState.DOWN
    (group,) = p.groups
    with capture_logs() as logs:
        p.reschedule(group, started=0.0, now=2.0)
    assert group.due == 2.5  # skipped all the same: never back to back
    assert (p.counters.poll_overruns, group.overrun, logs) == (0, False, [])


def test_next_due_time_is_the_next_one_on_the_groups_grid():
    """The schedule is what it was before overruns were counted."""
    rng = random.Random(16)
    p = poller(1.0)
    p.state = DeviceState.UP
    (group,) = p.groups
    for _ in range(1000):
        interval = rng.choice([0.05, 0.2, 0.5, 1.0, 60.0])
        group.interval_s, group.due = interval, rng.uniform(0, 1000)
        now = group.due + rng.uniform(0, 5 * interval)
        old = group.due + interval
        if old < now:
            old = now + interval - (now - old) % interval
        p.reschedule(group, started=group.due, now=now)
        assert group.due == pytest.approx(old, abs=1e-9)
        assert now <= group.due < now + interval + 1e-9


def test_a_slow_plc_overruns_its_interval_and_recovers():
    asyncio.run(_slow_plc_scenario())


async def _slow_plc_scenario():
    plc = SlowPlc(delay_s=0.5)  # the group's one read takes 0.5 s; its interval is 0.2 s
    p = poller(0.2, plc)
    (group,) = p.groups

    async def until(condition, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():  # noqa: ASYNC110 - the poller has no event to wait on
                await asyncio.sleep(0.01)

    with capture_logs() as logs:
        task = asyncio.create_task(p.run())
        try:
            await until(lambda: p.counters.cycles_ok >= 4, 10)  # sustained: 4 slow cycles
            overruns = p.counters.poll_overruns
            plc.delay_s = 0.0
            await until(lambda: not group.overrun, 5)
            ok = p.counters.cycles_ok
            await until(lambda: p.counters.cycles_ok >= ok + 3, 5)  # and it stays on time
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    started, ended = overrun_events(logs)
    assert len(started) == 1 and len(ended) == 1
    event = started[0]
    assert (event["device"], event["group"], event["interval_s"]) == ("lmi", "default", 0.2)
    assert event["cycle_s"] >= 0.49
    assert event["period_s"] == pytest.approx(0.6, abs=0.05)  # runs every 0.6 s, not 0.2
    assert event["skipped"] == 2
    assert overruns >= 4 * 2  # two due times skipped per 0.5 s cycle
    assert p.counters.poll_overruns == ended[0]["skipped"]
    assert p.overrunning == []


def test_agent_metrics_carry_the_overruns():
    p = poller(0.5)
    p.state = DeviceState.UP
    (group,) = p.groups
    p.reschedule(group, started=0.0, now=1.2)
    health = AgentHealth.__new__(AgentHealth)
    health.filters = {"lmi": SimpleNamespace(published=0)}
    counters = health._device("lmi", p)
    assert (counters.poll_overruns, counters.overrunning) == (2, ("default",))
    assert DeviceCounters.model_validate_json(counters.model_dump_json()) == counters
    assert DeviceCounters().poll_overruns == 0 and DeviceCounters().overrunning == ()
