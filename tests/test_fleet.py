"""derrick-sim fleet mode: many PLCs in one process, each on its own port."""

from __future__ import annotations

import asyncio

import pytest

from agent.decode import decode_request
from agent.modbus import ModbusConnection
from agent.plan import plan_reads
from derrick.plc.profile import load_profile
from devstack.programs import Program, http_json, start_fleet, wait_for
from devstack.services import free_port_block

pytestmark = pytest.mark.integration

CRANE = load_profile("crane")


async def read_all(port: int, profile=CRANE) -> dict[str, object]:
    """Every tag of one device, read the way the agent reads it."""
    connection = ModbusConnection("127.0.0.1", port, timeout_s=5)
    await connection.connect()
    try:
        values = {}
        for request in plan_reads(profile.registers):
            data = await connection.read(request.table, request.address, request.count, 1)
            values |= {r.tag: r.value for r in decode_request(request, data, 0)}
        return values
    finally:
        connection.close()


async def read_fleet(base: int, count: int) -> list[dict[str, object]]:
    return await asyncio.gather(*(read_all(base + i) for i in range(count)))


def test_fleet_devices_are_independent(tmp_path):
    program, base, control = start_fleet(tmp_path, 3, "--no-demo-overload")
    try:
        http_json(f"http://127.0.0.1:{control + 1}/overload", {"active": True})
        fleet = asyncio.run(read_fleet(base, 3))
        assert [crane["overload_cutout"] for crane in fleet] == [False, True, False]
        assert fleet[1]["utilisation"] > 100
        # different seeds: different lift plans and wind
        assert len({crane["wind_speed"] for crane in fleet}) == 3
        names = [f"crane-0{i}" for i in range(3)]
        log = program.log_tail(20)
        assert all(f'"device": "{name}"' in log for name in names), log
    finally:
        assert program.stop() == 0, program.log_tail()


def test_fifty_cranes_answer_every_poll(tmp_path):
    program, base, _ = start_fleet(tmp_path, 50, "--no-demo-overload")
    try:
        for _ in range(3):  # three poll cycles of the whole fleet
            fleet = asyncio.run(read_fleet(base, 50))
            assert len(fleet) == 50
            assert all(set(crane) == {r.tag for r in CRANE.registers} for crane in fleet)
            assert all(crane["safe_working_load"] > 0 for crane in fleet)
    finally:
        assert program.stop() == 0, program.log_tail()


def test_fleet_ports_beyond_65535_are_refused(tmp_path):
    done = Program("sim", ["--cranes", "3", "--port", "65534"], tmp_path / "x.log").start()
    assert done.process.wait(30) == 2
    assert "port 65536 is beyond 65535" in done.log_tail()


def test_mixed_fleet_serves_each_kind_its_own_map(tmp_path):
    base = free_port_block(3)
    program = Program(
        "sim",
        ["--cranes", "2", "--rigs", "1", "--port", str(base), "--log-format", "json"],
        tmp_path / "mixed.log",
    ).start()
    try:
        wait_for(lambda: '"fleet ready"' in program.log_tail(5), 60, "fleet ready", program=program)
        rig = load_profile("rig")

        rig_values = asyncio.run(read_all(base + 2, rig))
        assert set(rig_values) == {r.tag for r in rig.registers}
        assert rig_values["rig_state"] in {0.0, 1.0, 2.0, 3.0}
        # bit_depth is float32, hole_depth float64: on bottom they agree to float32 precision
        assert rig_values["hole_depth"] >= rig_values["bit_depth"] - 1e-3
        assert rig_values["bit_depth"] > 0
        cranes = asyncio.run(read_fleet(base, 2))
        assert all("safe_working_load" in crane for crane in cranes)
        assert '"device": "rig-00"' in program.log_tail(10)
    finally:
        assert program.stop() == 0, program.log_tail()
