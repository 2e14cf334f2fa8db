"""PLC faults seen by a real Modbus client: latency, silence, connection reset, exception 02.

The simulator is served in-process on loopback; faults and scenarios are switched through
its HTTP control API; the client is the agent's own Modbus boundary.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error

import pytest

from agent.modbus import DeviceTimeout, DeviceUnreachable, ExceptionReply, ModbusConnection
from derrick.plc.profile import Table, load_profile
from devstack.programs import http_json
from simulators import control, modbus_server
from simulators.crane import CraneModel
from simulators.plc import SimulatedPlc
from simulators.rig import RigModel

pytestmark = pytest.mark.integration


async def with_crane(scenario):
    plc = SimulatedPlc(load_profile("crane"), CraneModel(seed=3, demo_overload=False))
    async with (
        modbus_server.serving(plc, "127.0.0.1", 0) as port,
        control.serving(plc, "127.0.0.1", 0) as control_port,
    ):
        url = f"http://127.0.0.1:{control_port}"
        connection = ModbusConnection("127.0.0.1", port, timeout_s=0.5)
        await connection.connect()
        try:
            return await scenario(connection, url, plc)
        finally:
            connection.close()


async def post(url: str, body: dict) -> dict:
    return await asyncio.to_thread(http_json, url, body)


def test_latency_delays_every_reply():
    async def scenario(connection, url, _plc):
        started = time.monotonic()
        await connection.read(Table.HOLDING, 0, 2, 1)
        quick = time.monotonic() - started
        answer = await post(f"{url}/fault", {"latency_s": 0.3})
        assert answer["latency_s"] == 0.3
        started = time.monotonic()
        await connection.read(Table.HOLDING, 0, 2, 1)
        return quick, time.monotonic() - started

    quick, slow = asyncio.run(with_crane(scenario))
    assert slow >= 0.3 > quick


def test_silent_plc_times_out_then_answers_again():
    async def scenario(connection, url, _plc):
        await post(f"{url}/fault", {"silent": True})
        with pytest.raises(DeviceTimeout):
            await connection.read(Table.HOLDING, 0, 2, 1)
        await post(f"{url}/fault", {"silent": False})
        connection.close()
        await connection.connect()
        return await connection.read(Table.HOLDING, 0, 2, 1)

    assert len(asyncio.run(with_crane(scenario))) == 2


def test_connection_reset_is_seen_and_reconnect_works():
    async def scenario(connection, url, _plc):
        await connection.read(Table.HOLDING, 0, 2, 1)
        answer = await post(f"{url}/fault", {"reset": True})
        assert answer["dropped_connections"] == 1
        await asyncio.sleep(0.1)
        with pytest.raises((DeviceUnreachable, DeviceTimeout)):
            await connection.read(Table.HOLDING, 0, 2, 1)
        connection.close()
        await connection.connect()
        return await connection.read(Table.HOLDING, 0, 2, 1)

    assert len(asyncio.run(with_crane(scenario))) == 2


def test_undefined_address_answers_exception_02():
    async def scenario(connection, _url, plc):
        defined = plc.addresses(Table.HOLDING)
        undefined = next(a for a in range(1, 1000) if a not in defined)
        return await connection.read(Table.HOLDING, undefined, 1, 1)

    assert asyncio.run(with_crane(scenario)) == ExceptionReply(code=2)


def test_scenarios_start_on_command_and_say_when():
    async def scenario(connection, url, plc):
        answer = await post(f"{url}/scenario", {"name": "overload", "active": True})
        assert answer["took_effect_ns"] <= time.time_ns()
        words = await connection.read(Table.HOLDING, 8, 1, 1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            await post(f"{url}/scenario", {"name": "kick", "active": True})
        assert refused.value.code == 400
        refused.value.close()
        return words[0] / 10, plc.scenarios()

    utilisation, offered = asyncio.run(with_crane(scenario))
    assert utilisation > 100
    assert "overload" in offered
    assert "kick" not in offered


def test_rig_offers_its_drilling_scenarios():
    plc = SimulatedPlc(load_profile("rig"), RigModel(seed=1))
    assert {"kick", "pump_washout", "h2s_release", "overload"} <= set(plc.scenarios())
    with pytest.raises(ValueError, match="no scenario 'wind_gust' for rig"):
        plc.scenario("wind_gust", True)
