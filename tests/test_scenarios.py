"""Scenario files and sensor faults: validated, played on time, seen by a real client."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.decode import decode_request
from agent.modbus import ModbusConnection
from agent.plan import plan_reads
from derrick.plc.profile import load_profile
from derrick.plumbing.configfile import ConfigError
from devstack.programs import REPO
from simulators import modbus_server
from simulators.crane import CraneModel
from simulators.plc import OUT_OF_RANGE, SimulatedPlc
from simulators.rig import RigModel
from simulators.scenario import Script, check, load_script, play

SCENARIOS = sorted((REPO / "config" / "scenarios").glob("*.yaml"))
MODELS = {"crane": CraneModel, "rig": RigModel}


def plc_of(kind: str, speed: float = 1.0) -> SimulatedPlc:
    return SimulatedPlc(load_profile(kind), MODELS[kind](seed=1, demo_overload=False), speed=speed)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_fits_its_equipment(path):
    script = load_script(path)
    check(script, plc_of(script.kind))


def test_bad_scenario_files_name_file_step_and_reason(tmp_path):
    two = tmp_path / "two.yaml"
    two.write_text(
        "name: x\nkind: crane\nsteps:\n  - {at_s: 1, scenario: overload, fault: {silent: true}}\n"
    )
    with pytest.raises(ConfigError, match=r"two\.yaml: steps\[0\]: .*exactly one of"):
        load_script(two)
    script = Script.model_validate(
        {"name": "x", "kind": "crane", "steps": [{"at_s": 1, "scenario": "kick"}]}
    )
    with pytest.raises(ValueError, match=r"steps\[0\]: no scenario .kick. for crane"):
        check(script, plc_of("crane"))


def test_steps_are_played_in_order_never_early():
    plc = plc_of("crane", speed=50)  # 10 simulated seconds in 0.2 s
    script = Script.model_validate(
        {
            "name": "t",
            "kind": "crane",
            "steps": [
                {"at_s": 8, "scenario": "overload", "active": False},
                {"at_s": 2, "scenario": "overload"},
                {"at_s": 5, "sensor": {"tag": "wind_speed", "stuck": True}},
            ],
        }
    )
    with capture_logs() as logs:
        asyncio.run(play(plc, script))
    steps = [entry for entry in logs if entry["event"] == "scenario step"]
    assert [entry["at_s"] for entry in steps] == [2, 5, 8]
    assert all(entry["t"] >= entry["at_s"] for entry in steps)
    assert not plc.overload_forced
    assert plc.sensor_faults() == {"stuck": ["wind_speed"], "out_of_range": []}


def test_sensor_faults_as_a_real_client_reads_them():
    plc = plc_of("crane", speed=20)
    profile = plc.profile

    async def read_twice() -> list[dict[str, object]]:
        async with modbus_server.serving(plc, "127.0.0.1", 0) as port:
            connection = ModbusConnection("127.0.0.1", port, timeout_s=2)
            await connection.connect()
            reads = []
            try:
                for _ in range(2):
                    values = {}
                    for request in plan_reads(profile.registers):
                        data = await connection.read(
                            request.table, request.address, request.count, 1
                        )
                        values |= {r.tag: r.value for r in decode_request(request, data, 0)}
                    reads.append(values)
                    await asyncio.sleep(0.5)  # 10 simulated seconds
            finally:
                connection.close()
            return reads

    plc.stick("wind_speed", True)
    plc.out_of_range("hook_load", True)
    first, second = asyncio.run(read_twice())
    assert first["wind_speed"] == second["wind_speed"]
    assert first["hook_load"] == second["hook_load"] == OUT_OF_RANGE
    assert first["boom_angle"] != second["boom_angle"]  # the rest lives on
    with pytest.raises(ValueError, match="'overload_cutout' is not a numeric tag"):
        plc.stick("overload_cutout", True)


def run_sim(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulators.main", "--port", "0", "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


@pytest.mark.integration
def test_cli_plays_a_scenario_file_at_speed():
    script = Path("config/scenarios/kick.yaml")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.main",
            "--profile",
            "rig",
            "--port",
            "0",
            "--speed",
            "200",
            "--scenario",
            str(script),
            "--log-format",
            "json",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = ""
        for line in proc.stderr:
            out += line
            if '"scenario done"' in line:
                break
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()
    assert out.count('"scenario step"') == 2, out
    assert '"scenario": "kick"' in out


@pytest.mark.integration
def test_cli_refuses_a_scenario_for_other_equipment():
    done = run_sim("--scenario", "config/scenarios/kick.yaml", timeout=30)
    assert done.returncode == 2
    assert "scenario 'kick' is for rig: no such device" in done.stderr


def test_models_offer_only_what_they_declare():
    assert plc_of("crane").scenarios() == ["overload", "high_wind", "hydraulic_overheat"]
    assert plc_of("rig").scenarios() == ["overload", "kick", "pump_washout", "h2s_release"]
    with pytest.raises(ValueError, match="no scenario 'wind_gust' for crane"):
        plc_of("crane").scenario("wind_gust", True)  # a method of the model, not a scenario


def test_high_wind_signature():
    model = CraneModel(seed=2, demo_overload=False)
    calm = model.values(30.0)
    model.high_wind(True)
    squall = model.values(30.0)
    assert squall["wind_gust"] > 20 > calm["wind_gust"]
    assert squall["wind_speed"] >= calm["wind_speed"] + 10
    model.high_wind(False)
    assert model.values(30.0) == calm


def test_hydraulic_overheat_signature():
    model = CraneModel(seed=2, demo_overload=False)
    running = model.values(600.0)["hydraulic_oil_temperature"]
    model.hydraulic_overheat(True)
    start = model.values(600.0)["hydraulic_oil_temperature"]
    hot = [model.values(600.0 + s)["hydraulic_oil_temperature"] for s in (30, 60, 120, 180)]
    assert start == pytest.approx(running)
    assert hot == sorted(hot)
    assert hot[-1] >= 90 > running
    model.hydraulic_overheat(False)
    assert model.values(900.0)["hydraulic_oil_temperature"] < 90
