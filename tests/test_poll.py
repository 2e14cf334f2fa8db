"""Poll stage with real Modbus over TCP: refused spans, sick PLCs beside healthy ones.

The split test runs the simulator in-process on a loopback socket; the isolation test
runs a simulated fleet and a real agent process, and measures what reached the broker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
import uuid

import pytest
from structlog.testing import capture_logs

from agent.config import Device
from agent.main import open_link
from agent.modbus import ModbusConnection
from agent.poll import DevicePoller, next_on_grid
from derrick.plc.profile import Profile, load_profile
from derrick.plumbing import loops
from derrick.wire.payloads import AgentMetrics, Quality, Telemetry
from derrick.wire.topics import TOPIC_ROOT
from devstack.programs import Program, http_json, start_fleet, write_yaml
from devstack.services import free_port
from devstack.tap import Tap
from simulators import modbus_server
from simulators.crane import CraneModel
from simulators.generic import GenericModel
from simulators.plc import SimulatedPlc

pytestmark = pytest.mark.integration


def crane_plc() -> SimulatedPlc:
    return SimulatedPlc(load_profile("crane"), CraneModel(seed=3, demo_overload=False))


def test_span_refused_with_02_is_split_remembered_and_the_rest_read():
    asyncio.run(_split_scenario())


async def _split_scenario():
    plc = crane_plc()
    async with modbus_server.serving(plc, "127.0.0.1", 0) as port:
        # max_gap 5 reads holding 0-29 in one span, through the undefined register 9.
        device = Device(
            name="lmi", asset="c1", profile="crane", host="127.0.0.1", port=port, max_gap=5
        )
        connection = ModbusConnection.tcp("127.0.0.1", port, 1.0)
        poller = DevicePoller(device, connection, lambda _r: None)
        (group,) = poller.groups
        assert [(r.address, r.count) for r in group.plan if r.table == "holding"] == [(0, 30)]
        try:
            with capture_logs() as logs:
                first = await poller.poll_once()
                second = await poller.poll_once()
        finally:
            connection.close()
    holding = [(r.address, r.count) for r in group.plan if r.table == "holding"]
    assert holding == [(0, 9), (10, 20)]  # cut at the hole, and remembered
    assert {r.quality for r in first + second} == {Quality.GOOD}
    assert len(first) == len(second) == len(device.selected_registers)
    assert poller.counters.requests == 5 + 4  # refused + two halves + input + discrete; then 4
    splits = [e for e in logs if e["event"] == "span refused, split and remembered"]
    assert len(splits) == 1 and splits[0]["exception_code"] == 2


def test_a_single_refused_tag_is_bad_alone_and_the_device_stays_up():
    asyncio.run(_single_tag_scenario())


async def _single_tag_scenario():
    plc = crane_plc()
    registers = [
        {"tag": "hook_load", "table": "holding", "address": 0, "type": "float32"},
        {"tag": "nothing_here", "table": "holding", "address": 9, "type": "uint16"},
    ]
    async with modbus_server.serving(plc, "127.0.0.1", 0) as port:
        device = Device(
            name="lmi", asset="c1", kind="crane", registers=registers, host="127.0.0.1", port=port
        )
        connection = ModbusConnection.tcp("127.0.0.1", port, 1.0)
        poller = DevicePoller(device, connection, lambda _r: None)
        try:
            with capture_logs() as logs:
                cycles = [await poller.poll_once() for _ in range(3)]
        finally:
            connection.close()
    for readings in cycles:
        quality = {r.tag: r.quality for r in readings}
        assert quality == {"hook_load": Quality.GOOD, "nothing_here": Quality.BAD}
    assert poller.state == "up"
    assert [e["event"] for e in logs].count("span refused by device") == 1  # once, not per poll


def test_a_dead_plc_stays_down_however_the_loop_wakes_the_poller():
    """A poller woken before any group is due (uvloop's timers count whole milliseconds)
    asks the device nothing, and an empty cycle is no news of the device: it took the
    PLC for up between two refused connects until this was handled."""
    unused_port = free_port()  # nothing listens: the PLC is off
    device = Device(
        name="lmi", asset="c1", profile="crane", host="127.0.0.1", port=unused_port,
        interval_s=0.05, timeout_s=0.2,
    )  # fmt: skip

    async def scenario() -> DevicePoller:
        connection = ModbusConnection.tcp("127.0.0.1", unused_port, 0.2)
        poller = DevicePoller(device, connection, lambda _r: None, aligned=True)
        await poller.poll_once()
        assert poller.state == "down"
        assert await poller.poll_once([]) == []  # nothing due: no cycle
        assert poller.state == "down" and poller.counters.cycles_ok == 0
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return poller

    for factory, name in ((None, "asyncio"), (loops.loop_factory("uvloop"), "uvloop")):
        with capture_logs() as logs, asyncio.Runner(loop_factory=factory) as runner:
            poller = runner.run(scenario())
        events = [e["event"] for e in logs]
        assert "device up" not in events, name
        assert poller.state == "down" and poller.counters.cycles_ok == 0, name
        assert poller.counters.cycles_failed >= 3, name


INTERVAL_S = 0.5


def test_silent_and_slow_plcs_do_not_delay_the_others(tmp_path, mosquitto):
    fleet, base, control = start_fleet(tmp_path, 4, "--no-demo-overload")
    site = f"t{uuid.uuid4().hex[:8]}"
    devices = [
        {
            "name": f"plc{i}",
            "asset": f"crane-{i}",
            "profile": "crane",
            "host": "127.0.0.1",
            "port": base + i,
            "interval_s": INTERVAL_S,
            "timeout_s": 0.3,
            "breaker_failures": 1000,  # keep the silent one costing its timeouts every cycle
        }
        for i in range(4)
    ]
    config = write_yaml(
        tmp_path / "agent.yaml",
        {
            "agent": {"id": f"gw-{site}", "site": site},
            "format": "json",
            "broker": {"host": "127.0.0.1", "port": mosquitto.port},
            "devices": devices,
            "spool": {"path": str(tmp_path / "spool.db")},
            "metrics_interval_s": 5,
            "log": {"format": "json"},
        },
    )
    http_json(f"http://127.0.0.1:{control + 1}/fault", {"silent": True})
    http_json(f"http://127.0.0.1:{control + 2}/fault", {"latency_s": 0.25})  # slow, not dead
    agent = Program("agent", ["--config", str(config)], tmp_path / "agent.log").start()
    try:
        with Tap(mosquitto.port, f"{TOPIC_ROOT}/#") as tap:
            time.sleep(12)
            received = tap.messages()
    finally:
        code = agent.stop()
        fleet.stop()
    assert code == 0, agent.log_tail()
    received = [m for m in received if site in m.topic]  # also other tests' agents
    telemetry = [
        Telemetry.model_validate_json(m.payload) for m in received if "telemetry" in m.topic
    ]
    for healthy in ("plc0", "plc3"):
        stamps = [
            r.ts_ns
            for m in telemetry
            if m.device == healthy
            for r in m.readings
            if r.tag == "hook_load"
        ]
        intervals = [(b - a) / 1e9 for a, b in itertools.pairwise(stamps[2:])]  # settled
        assert len(intervals) >= 15, healthy
        assert abs(statistics.mean(intervals) - INTERVAL_S) <= 0.02 * INTERVAL_S
        late = [i for i in intervals if abs(i - INTERVAL_S) > 0.1 * INTERVAL_S]
        assert not late, f"{healthy}: intervals off by more than 10 %: {late}"
    silent = [r for m in telemetry if m.device == "plc1" for r in m.readings]
    assert silent and {r.quality for r in silent} == {Quality.BAD}
    slow = [r for m in telemetry if m.device == "plc2" for r in m.readings]
    assert slow and Quality.GOOD in {r.quality for r in slow}
    statuses = [json.loads(m.payload) for m in received if m.topic.endswith("plc1/status")]
    assert statuses and statuses[-1]["state"] == "down"
    metrics = [
        AgentMetrics.model_validate_json(m.payload)
        for m in received
        if m.topic.endswith("/metrics")
    ]
    assert metrics, "no agent metrics within 12 s at metrics_interval_s 5"
    devices = metrics[-1].devices
    assert devices["plc1"].state == "down" and devices["plc1"].cycles_ok == 0
    assert devices["plc1"].cycles_failed >= 5
    assert devices["plc0"].cycles_failed == 0 and devices["plc0"].cycles_ok >= 8
    assert devices["plc0"].last_cycle_requests == 4  # the plan: 4 requests per cycle
    assert metrics[-1].broker_connected and metrics[-1].messages_published > 0


def test_rtu_over_tcp_device_with_bit_tags_reads_what_the_plc_holds():
    asyncio.run(_rtu_bits_scenario())


async def _rtu_bits_scenario():
    registers = [
        {
            "tag": "pressure",
            "table": "holding",
            "address": 0,
            "type": "float32",
            "word_order": "little",
        },
        {"tag": "status", "table": "holding", "address": 2, "type": "uint16"},
        {"tag": "running", "table": "holding", "address": 3, "type": "bit", "bit": 0},
        {"tag": "tripped", "table": "holding", "address": 3, "type": "bit", "bit": 9},
        {
            "tag": "fault",
            "table": "holding",
            "address": 3,
            "type": "bit",
            "bit": 15,
            "byte_order": "little",
        },
    ]
    device = Device(
        name="pump",
        asset="rig-1",
        kind="pump",
        registers=registers,
        transport="rtu-over-tcp",
        host="127.0.0.1",
        port=1,
        unit_id=7,
    )
    profile = Profile(kind="pump", registers=device.selected_registers)
    plc = SimulatedPlc(profile, GenericModel(profile, seed=1))
    held = {"pressure": 151.25, "status": 513, "running": True, "tripped": False, "fault": True}
    plc.hold(held)
    async with modbus_server.serving(plc, "127.0.0.1", 0, unit_id=7, framer="rtu") as port:
        device = device.model_copy(update={"port": port})
        connection = open_link(device)
        assert connection.endpoint.startswith("rtu-over-tcp")
        poller = DevicePoller(device, connection, lambda _r: None)
        try:
            readings = await poller.poll_once()
        finally:
            connection.close()
    assert {r.tag: r.value for r in readings} == held
    assert poller.requests_per_cycle == 1  # the word and its bits in one read


def test_next_on_grid_is_the_next_whole_multiple_of_the_interval_on_the_wall_clock():
    loop_now = time.monotonic()
    for interval in (0.1, 0.5, 1.0, 7.0):
        due = next_on_grid(loop_now, interval)
        wall_due = due + (time.time() - time.monotonic())
        assert 0 < due - loop_now <= interval + 0.01
        phase = wall_due % interval
        assert min(phase, interval - phase) < 0.01, (interval, phase)


def test_aligned_devices_poll_together_on_the_grid():
    """align_polls: two PLCs on their own sockets are read in the same instants, on the
    wall clock's 0.2 s grid (each poll starts within a few ms of it)."""
    aligned = asyncio.run(_aligned_scenario(aligned=True))
    for times in aligned.values():
        assert len(times) >= 4
        phases = [(t / 1e9) % 0.2 for t in times]
        assert all(min(p, 0.2 - p) < 0.05 for p in phases), phases
    first = [times[0] for times in aligned.values()]
    assert abs(first[0] - first[1]) < 50e6, "both devices polled in the same instant"


async def _aligned_scenario(*, aligned: bool) -> dict[str, list[int]]:
    times: dict[str, list[int]] = {"a": [], "b": []}
    async with (
        modbus_server.serving(crane_plc(), "127.0.0.1", 0) as port_a,
        modbus_server.serving(crane_plc(), "127.0.0.1", 0) as port_b,
    ):
        pollers = []
        for name, port in (("a", port_a), ("b", port_b)):
            device = Device(
                name=name, asset="c1", profile="crane", host="127.0.0.1", port=port,
                interval_s=0.2, tags=["hook_load"],
            )  # fmt: skip
            connection = ModbusConnection.tcp("127.0.0.1", port, 1.0)
            sink = lambda readings, name=name: times[name].append(readings[0].ts_ns)  # noqa: E731
            pollers.append(DevicePoller(device, connection, sink, aligned=aligned))
        tasks = [asyncio.create_task(poller.run()) for poller in pollers]
        await asyncio.sleep(1.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return times
