"""Device options for awkward PLCs, each against the simulator fault that needs it.

Real parts: the simulator's Modbus server on a loopback socket (Modbus TCP, and RTU over
TCP where the agent's pymodbus path differs), its faults switched through the control
API's ``/fault`` route, and the agent's own link (``agent.main.open_link``) and poller
(:class:`agent.poll.DevicePoller`), in-process as in tests/test_poll.py. Each fault makes
the device fail without its option (bad readings, the device down, failed cycles
counted) and work with it (good readings, up).

The devices here have ``retries: 0``: a retry after a timeout comes late enough to pass
a pause or the deaf seconds after connect, so the default retry hides those faults at
the cost of a timeout per request; without it they show at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from agent.config import AgentConfig, Device
from agent.main import open_link
from agent.poll import DevicePoller
from derrick.plc.profile import Table, load_profile
from derrick.plumbing.configfile import ConfigError, validate
from derrick.wire.payloads import DeviceState, Quality, Reading
from devstack.programs import http_json
from simulators import control, modbus_server
from simulators.control import HttpError
from simulators.crane import CraneModel
from simulators.faults import DROP, ILLEGAL_DATA_VALUE, Faults, Session
from simulators.plc import SimulatedPlc

TIMEOUT_S = 0.25


def crane_plc() -> SimulatedPlc:
    return SimulatedPlc(load_profile("crane"), CraneModel(seed=3, demo_overload=False))


@asynccontextmanager
async def awkward_crane(faults: dict[str, object], framer: str = "socket") -> AsyncIterator[int]:
    """A crane PLC with ``faults`` switched on through its control API; yields its port."""
    plc = crane_plc()
    async with (
        modbus_server.serving(plc, "127.0.0.1", 0, framer=framer) as port,
        control.serving(plc, "127.0.0.1", 0) as control_port,
    ):
        url = f"http://127.0.0.1:{control_port}/fault"
        answer = await asyncio.to_thread(http_json, url, faults)
        assert {key: answer[key] for key in faults} == faults
        yield port


def crane(port: int, framer: str = "socket", name: str = "lmi", **options: object) -> Device:
    return Device.model_validate(
        {
            "name": name,
            "asset": "crane-01",
            "profile": "crane",
            "transport": "tcp" if framer == "socket" else "rtu-over-tcp",
            "host": "127.0.0.1",
            "port": port,
            "retries": 0,
            "timeout_s": TIMEOUT_S,
            **options,
        }
    )


async def poll(device: Device, cycles: int) -> tuple[DevicePoller, list[list[Reading]]]:
    """``cycles`` poll cycles back to back on a new link to ``device``."""
    connection = open_link(device)
    poller = DevicePoller(device, connection, lambda _readings: None)
    try:
        return poller, [await poller.poll_once() for _ in range(cycles)]
    finally:
        connection.close()


def qualities(readings: list[Reading]) -> set[Quality]:
    return {reading.quality for reading in readings}


def assert_fails(poller: DevicePoller, cycles: list[list[Reading]], failed: int) -> None:
    assert poller.state is DeviceState.DOWN
    assert poller.counters.cycles_failed == failed
    assert sum(Quality.BAD in qualities(readings) for readings in cycles) == failed
    assert "no reply within" in poller.last_failure


def assert_works(poller: DevicePoller, cycles: list[list[Reading]]) -> None:
    assert poller.state is DeviceState.UP, poller.last_failure
    assert poller.counters.cycles_failed == 0
    assert poller.counters.cycles_ok == len(cycles)
    for readings in cycles:
        assert len(readings) == len(poller.device.selected_registers)
        assert qualities(readings) == {Quality.GOOD}


# -- pause between requests ----------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("framer", ["socket", "rtu"])
def test_a_device_that_needs_a_pause_between_requests_fails_without_it_works_with_it(framer):
    """The PLC drops a request that comes less than 0.1 s after its previous answer."""

    async def scenario():
        async with awkward_crane({"min_request_gap_s": 0.1}, framer) as port:
            bare = await poll(crane(port, framer), 2)
            paused = await poll(crane(port, framer, pause_between_requests_s=0.12), 2)
        return bare, paused

    (bare, bare_cycles), (paused, paused_cycles) = asyncio.run(scenario())
    assert_fails(bare, bare_cycles, failed=2)  # the second request of each cycle is dropped
    assert bare.counters.requests == 2 * 2
    assert_works(paused, paused_cycles)
    assert paused.counters.requests == 2 * 4
    assert paused.counters.last_cycle_ms >= 3 * 120  # paused before requests 2, 3 and 4


# -- delay after connect -------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("framer", ["socket", "rtu"])
def test_a_device_that_needs_a_delay_after_connect_fails_without_it_works_with_it(framer):
    """The gateway ignores requests in the first 0.3 s of a connection."""

    async def scenario():
        async with awkward_crane({"deaf_after_connect_s": 0.3}, framer) as port:
            bare = await poll(crane(port, framer), 1)
            delayed = await poll(crane(port, framer, delay_after_connect_s=0.35), 1)
        return bare, delayed

    (bare, bare_cycles), (delayed, delayed_cycles) = asyncio.run(scenario())
    assert_fails(bare, bare_cycles, failed=1)
    assert_works(delayed, delayed_cycles)
    assert delayed.counters.last_cycle_ms >= 350  # the delay is part of the first cycle


# -- reconnect every cycle -----------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("framer", ["socket", "rtu"])
def test_a_device_that_locks_its_sessions_needs_a_reconnect_every_cycle(framer):
    """The PLC answers only 4 requests per connection (one cycle's worth)."""

    async def scenario():
        async with awkward_crane({"requests_per_connection": 4}, framer) as port:
            bare = await poll(crane(port, framer), 3)
            fresh = await poll(crane(port, framer, reconnect_every_cycle=True), 3)
        return bare, fresh

    (bare, bare_cycles), (fresh, fresh_cycles) = asyncio.run(scenario())
    assert qualities(bare_cycles[0]) == {Quality.GOOD}  # the first connection's 4 requests
    assert_fails(bare, bare_cycles, failed=2)
    assert_works(fresh, fresh_cycles)


@pytest.mark.integration
def test_a_slow_waking_gateway_that_locks_sessions_needs_the_delay_on_every_reconnect():
    """Both faults at once: each cycle's new connection is deaf for its first 0.2 s."""

    async def scenario():
        faults = {"requests_per_connection": 4, "deaf_after_connect_s": 0.2}
        async with awkward_crane(faults) as port:
            bare = await poll(crane(port, reconnect_every_cycle=True), 3)
            both = await poll(
                crane(port, reconnect_every_cycle=True, delay_after_connect_s=0.25), 3
            )
        return bare, both

    (bare, bare_cycles), (both, both_cycles) = asyncio.run(scenario())
    assert_fails(bare, bare_cycles, failed=3)  # every cycle on a new, still deaf connection
    assert_works(both, both_cycles)


@pytest.mark.integration
@pytest.mark.parametrize("framer", ["socket", "rtu"])
def test_reconnect_every_cycle_on_a_shared_gateway_fails_no_other_unit(framer):
    """Two units behind one gateway that answers 8 requests per connection, polled at
    the same time: each one's reconnect comes between requests, and a request of the
    other that queued meanwhile opens the link again instead of failing."""

    async def scenario(reconnect: bool):
        plcs = {1: crane_plc(), 2: crane_plc()}
        for plc in plcs.values():
            plc.faults.requests_per_connection = 8
        endpoint = modbus_server.TcpEndpoint("127.0.0.1", 0, framer)
        async with modbus_server.serve(plcs, endpoint) as bound:
            devices = [
                crane(
                    bound.port, framer, f"lmi{unit}", unit_id=unit, reconnect_every_cycle=reconnect
                )
                for unit in plcs
            ]
            connection = open_link(devices[0])
            pollers = [
                DevicePoller(device, connection, lambda _r: None, shares_link=True)
                for device in devices
            ]
            try:
                cycles = [
                    await asyncio.gather(*(poller.poll_once() for poller in pollers))
                    for _ in range(3)
                ]
            finally:
                connection.close()
        return pollers, cycles

    pollers, cycles = asyncio.run(scenario(reconnect=False))
    assert any(poller.state is DeviceState.DOWN for poller in pollers)
    assert any(Quality.BAD in qualities(readings) for pair in cycles for readings in pair)
    pollers, cycles = asyncio.run(scenario(reconnect=True))
    for index, poller in enumerate(pollers):
        assert_works(poller, [pair[index] for pair in cycles])


# -- max registers / bits per request --------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("limit", "value", "table"),
    [("max_registers", 8, Table.HOLDING), ("max_bits", 4, Table.DISCRETE)],
)
def test_a_device_below_the_protocol_limits_needs_max_registers_or_max_bits(limit, value, table):
    """The crane's plan reads holding 0+9 and 10+20 and discrete 0+5; this PLC refuses a
    longer read than ``value`` with exception 03: those tags are bad, the device is up."""

    async def scenario():
        async with awkward_crane({limit: value}) as port:
            bare = await poll(crane(port), 2)
            bounded = await poll(crane(port, **{limit: value}), 2)
        return bare, bounded

    (bare, bare_cycles), (bounded, bounded_cycles) = asyncio.run(scenario())
    refused = {reg.tag for reg in bare.device.selected_registers if reg.table is table}
    for readings in bare_cycles:
        bad = {r.tag for r in readings if r.quality is Quality.BAD}
        assert bad == refused
    assert bare.state is DeviceState.UP  # an exception reply is an answer
    assert bare.refused_spans  # logged once as refused by the device
    assert_works(bounded, bounded_cycles)
    spans = [req for group in bounded.groups for req in group.plan if req.table is table]
    assert len(spans) >= 2 and max(req.count for req in spans) <= value


# -- timeout per device --------------------------------------------------------------


@pytest.mark.integration
def test_a_slow_device_needs_a_longer_timeout():
    async def scenario():
        async with awkward_crane({"latency_s": 0.3}) as port:
            short = await poll(crane(port, timeout_s=0.15), 1)
            long = await poll(crane(port, timeout_s=1.0), 1)
        return short, long

    (short, short_cycles), (long, long_cycles) = asyncio.run(scenario())
    assert_fails(short, short_cycles, failed=1)
    assert_works(long, long_cycles)


@pytest.mark.integration
@pytest.mark.parametrize("framer", ["socket", "rtu"])
def test_each_device_behind_one_gateway_keeps_its_own_timeout(framer):
    """The link is opened with the first device's timeout (0.15 s); the second unit
    answers 0.3 s late, and is read with its own timeout_s."""

    async def scenario(slow_timeout_s: float):
        fast, slow = crane_plc(), crane_plc()
        slow.faults.latency_s = 0.3
        endpoint = modbus_server.TcpEndpoint("127.0.0.1", 0, framer)
        async with modbus_server.serve({1: fast, 2: slow}, endpoint) as bound:
            devices = [
                crane(bound.port, framer, unit_id=1, timeout_s=0.15),
                crane(bound.port, framer, "slow", unit_id=2, timeout_s=slow_timeout_s),
            ]
            connection = open_link(devices[0])
            assert connection.timeout_s == 0.15
            pollers = [
                DevicePoller(device, connection, lambda _r: None, shares_link=True)
                for device in devices
            ]
            try:
                cycles = [[await poller.poll_once()] for poller in pollers]
                cycles[0].append(await pollers[0].poll_once())  # after the slow one
            finally:
                connection.close()
        return pollers, cycles

    pollers, cycles = asyncio.run(scenario(slow_timeout_s=0.15))
    assert_fails(pollers[1], cycles[1], failed=1)
    pollers, cycles = asyncio.run(scenario(slow_timeout_s=1.0))
    for poller, polled in zip(pollers, cycles, strict=True):
        assert_works(poller, polled)


# -- unset options cost nothing ------------------------------------------------------


class BareLink:
    """Only the face of ModbusConnection the poller used before the options existed."""

    endpoint = "fake:502"
    connected = True

    def __init__(self) -> None:
        self.reads: list[tuple] = []

    async def connect(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.connected = False

    async def read(self, table, address, count, unit_id):
        self.reads.append((table, address, count, unit_id))
        return [False] * count if table.is_bits else [0] * count


def test_unset_options_change_nothing():
    device = Device(name="lmi", asset="crane-01", profile="crane", host="127.0.0.1")
    assert device.pause_between_requests_s == 0
    assert device.delay_after_connect_s == 0
    assert device.reconnect_every_cycle is False
    assert (device.max_registers, device.max_bits, device.timeout_s) == (125, 2000, 1.0)
    link = BareLink()
    poller = DevicePoller(device, link, lambda _r: None)  # type: ignore[arg-type]
    readings = asyncio.run(poller.poll_once())
    assert len(link.reads) == 4 and link.connected  # no pause, no reconnect, no timeout arg
    assert len(readings) == len(device.selected_registers)
    connection = open_link(device)
    assert (connection.pause_s, connection.delay_after_connect_s) == (0, 0)


def test_a_shared_link_takes_the_largest_pause_and_delay_of_its_devices():
    first = Device(name="a", asset="c", profile="crane", host="gw", pause_between_requests_s=0.2)
    second = first.model_copy(
        update={"name": "b", "pause_between_requests_s": 0.05, "delay_after_connect_s": 1.0}
    )
    connection = open_link(first)
    for device in (first, second):
        DevicePoller(device, connection, lambda _r: None, shares_link=True)
    assert (connection.pause_s, connection.delay_after_connect_s) == (0.2, 1.0)


# -- config validation ---------------------------------------------------------------


def agent_config(**options: object) -> dict[str, object]:
    device = {"name": "lmi", "asset": "crane-01", "profile": "crane", "host": "10.0.0.5"}
    return {"agent": {"id": "gw-1", "site": "s"}, "devices": [{**device, **options}]}


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("pause_between_requests_s", -0.1, "greater than or equal to 0"),
        ("delay_after_connect_s", -1, "greater than or equal to 0"),
        ("pause_between_requests_s", 11, "less than or equal to 10"),
        ("delay_after_connect_s", 61, "less than or equal to 60"),
        ("reconnect_every_cycle", "sometimes", "valid boolean"),
        ("max_registers", 0, "greater than or equal to 1"),
        ("max_registers", 126, "less than or equal to 125"),
        ("max_bits", 2001, "less than or equal to 2000"),
        ("timeout_s", 0, "greater than 0"),
        ("timeout_s", -1, "greater than 0"),
    ],
)
def test_bad_device_options_are_refused_naming_the_key(key, value, reason):
    with pytest.raises(ConfigError) as caught:
        validate("agent.yaml", agent_config(**{key: value}), AgentConfig)
    (line,) = str(caught.value).splitlines()
    assert line.startswith(f"agent.yaml: devices[0] (lmi).{key}: ")
    assert reason in line


def test_good_device_options_load():
    config = validate(
        "agent.yaml",
        agent_config(
            pause_between_requests_s=0.05,
            delay_after_connect_s=2,
            reconnect_every_cycle=True,
            max_registers=32,
            max_bits=256,
            timeout_s=3,
        ),
        AgentConfig,
    )
    (device,) = config.devices
    assert device.pause_between_requests_s == 0.05 and device.delay_after_connect_s == 2
    assert device.reconnect_every_cycle and (device.max_registers, device.max_bits) == (32, 256)


# -- the simulator's faults ----------------------------------------------------------


def test_fault_screen_drops_and_refuses_as_documented():
    faults = Faults()
    assert not faults.screens
    faults.min_request_gap_s, faults.max_registers = 0.1, 8
    session = Session(opened_at=0.0)
    assert faults.screen(session, 0.0, 3, 8) == 0  # no answer yet: no gap to keep
    session.answered_at = 1.0
    assert faults.screen(session, 1.05, 3, 8) == DROP
    assert faults.screen(session, 1.2, 3, 9) == ILLEGAL_DATA_VALUE
    assert faults.screen(session, 1.2, 1, 9) == 0  # bits are max_bits'
    faults = Faults(deaf_after_connect_s=1.0, requests_per_connection=2)
    session = Session(opened_at=10.0)
    assert faults.screen(session, 10.5, 3, 1) == DROP
    assert faults.screen(session, 11.0, 3, 1) == 0
    assert faults.screen(session, 11.0, 3, 1) == DROP  # the third request


@pytest.mark.parametrize(
    "body",
    [
        {"min_request_gap_s": -0.1},
        {"deaf_after_connect_s": "1"},
        {"max_registers": 1.5},
        {"max_registers": 126},
        {"max_bits": True},
        {"requests_per_connection": -1},
    ],
)
def test_the_fault_route_refuses_bad_switches(body):
    plc = crane_plc()
    with pytest.raises(HttpError) as refused:
        control._fault(plc, json.dumps(body).encode())
    assert refused.value.status == 400 and next(iter(body)) in refused.value.message
    assert not plc.faults.screens  # nothing half-applied
