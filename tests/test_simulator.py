"""Crane simulator: the model as tables, then the real program read by a real Modbus client.

The integration tests start ``python -m simulators.main`` on free loopback ports and read
every register of the crane profile with mbpoll (Debian package ``mbpoll``); nothing
here mocks Modbus.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from derrick.plc.profile import Profile, Register, Table, load_profile
from derrick.plc.registers import DataType, Order, decode, encode, scaled, unscaled
from devstack.programs import Program, http_json, wait_for
from devstack.services import free_port
from simulators import control, crane, modbus_server
from simulators.crane import EXACT_VALUES, CraneModel
from simulators.generic import GenericModel
from simulators.hold import Pins
from simulators.plc import SimulatedPlc, register_words
from simulators.rig import RigModel

CRANE = load_profile("crane")

PINNED = EXACT_VALUES
SEEDS = [0, 1, 7, 12345]


def run_model(model: CraneModel, start: float, stop: float, step: float = 0.1):
    """(t, values) every ``step`` seconds over [start, stop)."""
    n = round((stop - start) / step)
    return [(start + i * step, model.values(start + i * step)) for i in range(n)]


# --- the model -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_model_is_deterministic_per_seed(seed):
    times = [0.0, 0.05, 7.3, 25.0, 29.9, 61.0, 3600.5, 86_400.25]
    first, second = CraneModel(seed), CraneModel(seed)
    assert [first.values(t) for t in times] == [second.values(t) for t in times]


def test_seeds_give_different_runs():
    runs = {seed: CraneModel(seed).values(45.0) for seed in SEEDS}
    assert len({run["wind_speed"] for run in runs.values()}) == len(SEEDS)
    assert len({run["hook_load"] for run in runs.values()}) == len(SEEDS)


def test_model_gives_every_profile_tag_with_its_type():
    values = CraneModel(0).values(12.0)
    assert set(values) == {reg.tag for reg in CRANE.registers} == set(crane.TAGS)
    for reg in CRANE.registers:
        assert isinstance(values[reg.tag], bool) == (reg.type is DataType.BOOL), reg.tag


@pytest.mark.parametrize("seed", SEEDS)
def test_demo_overload_goes_above_100_within_first_minute_and_back(seed):
    run = run_model(CraneModel(seed), 0.0, 60.0)
    over = [t for t, v in run if v["utilisation"] > 100.0]
    assert over, "no overload in the first minute"
    assert 20.0 <= over[0] < over[-1] <= 40.0
    assert max(v["utilisation"] for _, v in run) == pytest.approx(108.0)
    after = [v["utilisation"] for t, v in run if t > over[-1]]
    assert max(after) < 100.0
    assert min(after) < 90.0
    assert all(v["overload_cutout"] == (v["utilisation"] >= 100.0) for _, v in run)


@pytest.mark.parametrize(
    ("seed", "demo"), [(seed, demo) for seed in SEEDS for demo in (False, True)]
)
def test_normal_lifts_stay_at_or_below_85_percent(seed, demo):
    model = CraneModel(seed, demo_overload=demo)
    normal = [
        (t, v)
        for t, v in run_model(model, 0.0, 900.0, 0.25)
        if not (demo and crane.DEMO_SLOT * crane.SLOT_S <= t < (crane.DEMO_SLOT + 1) * crane.SLOT_S)
    ]
    assert max(v["utilisation"] for _, v in normal) <= 85.0 + 1e-9
    assert not any(v["overload_cutout"] for _, v in normal)
    # every slot really lifts something: utilisation peaks above 50 % in each
    for slot in range(45):
        if demo and slot == crane.DEMO_SLOT:
            continue
        peak = max(v["utilisation"] for t, v in normal if slot * 20 <= t < slot * 20 + 20)
        assert peak > 50.0, f"slot {slot}"


@pytest.mark.parametrize("seed", SEEDS)
def test_motion_is_continuous_and_plausible(seed):
    run = run_model(CraneModel(seed), 0.0, 120.0, 0.01)
    largest_step = {
        "hook_load": 0.1,
        "boom_angle": 0.3,
        "safe_working_load": 0.3,
        "wind_speed": 0.1,
        "wind_gust": 0.1,
        "radius": 0.3,
        "slew_angle": 1.0,
        "hoist_speed": 0.05,
        "hydraulic_pressure": 2.0,
        "hoist_motor_current": 5.0,
        "hydraulic_oil_temperature": 0.05,
        "gearbox_vibration": 0.1,
    }
    for (_, before), (t, now) in itertools.pairwise(run):
        for tag, limit in largest_step.items():
            assert abs(now[tag] - before[tag]) < limit, f"{tag} jumps at t={t:.2f}"
    for _, v in run:
        assert 30.0 <= v["boom_angle"] <= 85.0
        assert v["hook_load"] >= crane.HOOK_BLOCK_T - 1e-9
        assert 0.0 <= v["wind_speed"] < 30.0
    winds = [v["wind_speed"] for _, v in run]
    assert max(winds) - min(winds) > 1.0, "wind without gusts"


def test_load_chart_falls_as_the_boom_lowers():
    angles = [85.0 - 0.5 * i for i in range(120)]  # 85 down to 25.5 degrees
    radii = [crane.radius(a) for a in angles]
    loads = [crane.safe_working_load(r) for r in radii]
    assert radii == sorted(radii)
    assert loads == sorted(loads, reverse=True)
    assert loads[0] > 2 * loads[-1]


@pytest.mark.parametrize("t", [0.0, 5.0, 10.0, 29.0, 100.3, 3600.0])
def test_overload_command_pushes_utilisation_above_100_until_released(t):
    model, reference = CraneModel(3, demo_overload=False), CraneModel(3, demo_overload=False)
    model.overload(True)
    forced = model.values(t)
    assert forced["utilisation"] == pytest.approx(115.0)
    assert forced["hook_load"] == pytest.approx(1.15 * forced["safe_working_load"])
    assert forced["overload_cutout"] is True
    assert model.overload_forced
    model.overload(False)
    assert model.values(t) == reference.values(t)


@pytest.mark.parametrize("t", [0.0, 29.0, 777.7])
def test_hold_pins_exact_values_even_over_a_forced_overload(t):
    model = CraneModel(0)
    model.overload(True)
    model.hold(PINNED)
    assert model.values(t) == PINNED
    model.release()
    model.overload(False)
    assert model.values(t) == CraneModel(0).values(t)


@pytest.mark.parametrize(
    ("pins", "derived"),
    [
        (
            {"hook_load": 30.0, "safe_working_load": 20.0},
            {"utilisation": 150.0, "overload_cutout": True},
        ),
        (
            {"hook_load": 10.0, "safe_working_load": 40.0},
            {"utilisation": 25.0, "overload_cutout": False},
        ),
        ({"hook_load": 10.0, "overload_cutout": True}, {"overload_cutout": True}),
        ({"boom_length": 30.0, "boom_angle": 60.0}, {"radius": 17.0}),
        (
            {"power_on": True, "estop": True, "lmi_bypass": True, "brake_engaged": False},
            {"status_word": 11.0},
        ),
        ({"hook_load": 30.0, "safe_working_load": 20.0, "power_on": False}, {"status_word": 20.0}),
        ({"status_word": 0.0, "radius": 10.0}, {"status_word": 0.0, "radius": 10.0}),
    ],
)
def test_held_measurements_drive_derived_tags(pins, derived):
    model = CraneModel(0)
    model.hold(pins)
    values = model.values(50.0)
    assert {tag: values[tag] for tag in pins} == pins
    assert {tag: values[tag] for tag in derived} == pytest.approx(derived)


@pytest.mark.parametrize(
    ("pins", "error"),
    [
        ({"hook_lod": 1.0}, "unknown tag 'hook_lod'"),
        ({"hook_load": True}, "hook_load must be a number"),
        ({"hook_load": "12"}, "hook_load must be a number"),
        ({"hook_load": math.nan}, "hook_load must be finite"),
        ({"overload_cutout": 1}, "overload_cutout must be true or false"),
        ({"safe_working_load": 0}, "safe_working_load must be above 0"),
        ({"hook_load": 1.0, "nope": 2.0}, "unknown tag 'nope'"),
        ({"brake_engaged": "yes"}, "brake_engaged must be true or false"),
        ({"boom_length": 0.0}, "boom_length must be above 0"),
        ({"lift_count": 12.5}, "lift_count must be a whole number"),
        ({"status_word": 3.5}, "status_word must be a whole number"),
        ({"running_hours": -1.0}, "running_hours must be >= 0"),
    ],
)
def test_hold_rejects_bad_values_and_pins_nothing(pins, error):
    model = CraneModel(0)
    with pytest.raises(ValueError, match=re.escape(error)):
        model.hold(pins)
    assert model.held == {}


def _float_tags(profile: Profile) -> list[str]:
    return [r.tag for r in profile.registers if r.type in (DataType.FLOAT32, DataType.FLOAT64)]


@pytest.mark.parametrize(
    ("model", "first", "second"),
    [
        (CraneModel(0), {"hook_load": 12.5}, {"wind_speed": 3.0}),
        (RigModel(0), {"hook_load": 120.0}, {"pit_volume": 60.0}),
        (
            GenericModel(load_profile("bench100"), 0),
            {_float_tags(load_profile("bench100"))[0]: 1.5},
            {_float_tags(load_profile("bench100"))[1]: 2.5},
        ),
    ],
    ids=["crane", "rig", "generic"],
)
def test_every_model_pins_through_the_one_pins_mixin(model, first, second):
    assert isinstance(model, Pins)
    model.hold(first)
    model.hold(second)  # added to what is pinned
    assert model.held == first | second
    with pytest.raises(ValueError, match="unknown tag 'nope'"):
        model.hold({**first, "nope": 1.0})  # all or nothing
    assert model.held == first | second
    model.held.clear()  # a copy: the pins stay
    assert {tag: model.values(5.0)[tag] for tag in first | second} == first | second
    model.release()
    assert model.held == {}


# --- the wider signal set ------------------------------------------------------------------


def test_exact_values_are_consistent():
    v = EXACT_VALUES
    assert v["utilisation"] == 100.0 * v["hook_load"] / v["safe_working_load"]
    assert v["radius"] == pytest.approx(crane.radius(v["boom_angle"], v["boom_length"]), abs=0.01)
    assert v["status_word"] == crane.status_word(v)
    assert v["hoist_motor_current"] == crane.motor_current(v["hook_load"], v["hoist_speed"])
    assert v["hydraulic_pressure"] == pytest.approx(
        crane.luffing_pressure(v["hook_load"], v["radius"], v["boom_angle"], v["boom_length"]),
        abs=0.1,
    )
    assert v["wind_gust"] >= v["wind_speed"]
    assert v["brake_engaged"] == (v["hoist_speed"] == 0.0)
    assert v["overload_cutout"] == (v["utilisation"] >= 100.0)
    # every pinned value fits its register exactly: encode, decode, scale back
    for reg in CRANE.registers:
        if not reg.table.is_bits:
            raw = decode(register_words(reg, v[reg.tag]), reg.type, reg.byte_order, reg.word_order)
            assert scaled(raw, reg.scale, reg.offset) == v[reg.tag], reg.tag


@pytest.mark.parametrize("seed", SEEDS)
def test_a_lift_raises_hook_load_motor_current_and_pressure_together(seed):
    model = CraneModel(seed, demo_overload=False)
    for slot in (0, 3, 17):
        start = slot * crane.SLOT_S
        empty = model.values(start + 1.0)  # before the pick: empty hook
        loaded = model.values(start + crane.LIFT_START_S + 0.5 * crane.LIFT_S)  # mid-lift
        assert loaded["hook_load"] > empty["hook_load"] + 5.0
        assert loaded["hoist_motor_current"] > empty["hoist_motor_current"] + 40.0
        assert loaded["hydraulic_pressure"] > empty["hydraulic_pressure"] + 40.0
    run = run_model(model, 0.0, 200.0, 0.1)
    for tag in ("hoist_motor_current", "hydraulic_pressure"):
        loads = [v["hook_load"] for _, v in run]
        other = [v[tag] for _, v in run]
        n = len(run)
        mean_l, mean_o = sum(loads) / n, sum(other) / n
        cov = sum((a - mean_l) * (b - mean_o) for a, b in zip(loads, other, strict=True))
        var_l = sum((a - mean_l) ** 2 for a in loads)
        var_o = sum((b - mean_o) ** 2 for b in other)
        assert cov / math.sqrt(var_l * var_o) > 0.8, tag


@pytest.mark.parametrize("seed", SEEDS)
def test_hoist_moves_only_with_the_brake_released(seed):
    run = run_model(CraneModel(seed), 0.0, 200.0, 0.05)
    for t, v in run:
        if v["brake_engaged"]:
            assert v["hoist_speed"] == 0.0, t
        assert v["status_word"] == crane.status_word(v)
    moving = [v for _, v in run if not v["brake_engaged"]]
    assert moving
    assert max(v["hoist_speed"] for v in moving) > 1.0  # hoisting the load up
    assert min(v["hoist_speed"] for v in moving) < -1.0  # and setting it down
    # while hoisting, the motor draws more than with the same load held on the brake
    for slot in range(5):
        into = slot * crane.SLOT_S + crane.LIFT_START_S
        hoisting = CraneModel(seed).values(into + 0.1 * crane.LIFT_S)
        assert hoisting["hoist_motor_current"] > crane.motor_current(hoisting["hook_load"], 0.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_radius_follows_boom_length_and_angle_and_sets_the_chart_capacity(seed):
    model = CraneModel(seed, demo_overload=False)
    for t, v in run_model(model, 0.0, 300.0, 0.7):
        expected = crane.PEDESTAL_OFFSET_M + v["boom_length"] * math.cos(
            math.radians(v["boom_angle"])
        )
        assert v["radius"] == pytest.approx(expected), t
        assert v["safe_working_load"] == pytest.approx(crane.safe_working_load(v["radius"])), t
        assert v["utilisation"] == pytest.approx(100 * v["hook_load"] / v["safe_working_load"])


@pytest.mark.parametrize("seed", SEEDS)
def test_counters_count_up_and_one_lift_per_slot(seed):
    model = CraneModel(seed)
    run = run_model(model, 0.0, 7200.0, 0.5)
    hours = [v["running_hours"] for _, v in run]
    lifts = [v["lift_count"] for _, v in run]
    assert hours == sorted(hours)
    assert lifts == sorted(lifts)
    assert hours[-1] - hours[0] == pytest.approx(2.0, abs=0.11)
    assert lifts[-1] - lifts[0] == 7200 / crane.SLOT_S  # t = 7199.5: the last one set down
    assert all(h == round(h, 1) and n == int(n) for h, n in zip(hours, lifts, strict=True))
    # the counter steps when the load is set down, not before
    slot_end = crane.LIFT_START_S + crane.LIFT_S
    assert (
        model.values(slot_end + 0.01)["lift_count"]
        == model.values(slot_end - 0.01)["lift_count"] + 1
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_every_value_fits_its_register_for_two_hours(seed):
    plc_regs = [reg for reg in CRANE.registers if not reg.table.is_bits]
    model = CraneModel(seed)
    low = dict.fromkeys((r.tag for r in plc_regs), math.inf)
    high = dict.fromkeys((r.tag for r in plc_regs), -math.inf)
    for _, v in run_model(model, 0.0, 7200.0, 1.3):
        for reg in plc_regs:
            register_words(reg, v[reg.tag])  # raises CodecError when out of range
            low[reg.tag] = min(low[reg.tag], v[reg.tag])
            high[reg.tag] = max(high[reg.tag], v[reg.tag])
        assert v["wind_gust"] >= v["wind_speed"]
        assert v["power_on"] and not v["estop"] and not v["lmi_bypass"]
    plausible = {
        "hook_load": (crane.HOOK_BLOCK_T - 1e-9, 60.0),
        "safe_working_load": (10.5, 50.0),
        "boom_angle": (30.0, 85.0),
        "wind_speed": (0.0, 30.0),
        "utilisation": (0.0, 110.0),
        "boom_length": (crane.BOOM_LENGTH_M, crane.BOOM_LENGTH_M),
        "radius": (2.0, 42.0),
        "slew_angle": (0.0, 360.0),
        "hoist_speed": (-1.5, 1.5),
        "wind_gust": (0.0, 35.0),
        "hydraulic_pressure": (30.0, 320.0),
        "hoist_motor_current": (30.0, 900.0),
        "hydraulic_oil_temperature": (20.0, 60.0),
        "status_word": (0.0, 31.0),
        "running_hours": (1000.0, 40_003.0),
        "lift_count": (5000.0, 200_400.0),
        "gearbox_vibration": (0.5, 5.0),
    }
    assert set(plausible) == set(low)
    for tag, (lo, hi) in plausible.items():
        assert lo <= low[tag] <= high[tag] <= hi, (tag, low[tag], high[tag])
    for tag in ("slew_angle", "hoist_speed", "hydraulic_pressure", "gearbox_vibration"):
        assert high[tag] - low[tag] > 0.5, f"{tag} does not move"


@pytest.mark.parametrize("seed", SEEDS)
def test_oil_warms_up_towards_its_running_temperature(seed):
    model = CraneModel(seed)
    temps = [model.values(t)["hydraulic_oil_temperature"] for t in (0.0, 1800.0, 7200.0)]
    assert temps[0] < temps[1] < temps[2]
    assert temps[2] - temps[0] > 8.0


def test_forced_overload_raises_pressure_and_current_and_sets_status_bit():
    model, reference = CraneModel(3, demo_overload=False), CraneModel(3, demo_overload=False)
    model.overload(True)
    forced, normal = model.values(10.0), reference.values(10.0)
    assert forced["hydraulic_pressure"] > normal["hydraulic_pressure"]
    assert forced["hoist_motor_current"] > normal["hoist_motor_current"]
    assert int(forced["status_word"]) & (1 << crane.Status.OVERLOAD_CUTOUT)
    assert not int(normal["status_word"]) & (1 << crane.Status.OVERLOAD_CUTOUT)


# --- the PLC image -----------------------------------------------------------------------


def mixed_profile() -> Profile:
    """Every table, both orders, scale and offset: what the crane profile does not use."""
    regs = [
        {
            "tag": "hook_load",
            "table": "input",
            "address": 0,
            "type": "float32",
            "word_order": "little",
        },
        {
            "tag": "safe_working_load",
            "table": "input",
            "address": 2,
            "type": "float64",
            "byte_order": "little",
        },
        {"tag": "boom_angle", "table": "holding", "address": 10, "type": "int16", "scale": 0.01},
        {
            "tag": "wind_speed",
            "table": "holding",
            "address": 12,
            "type": "uint32",
            "scale": 0.001,
            "offset": -5.0,
        },
        {"tag": "utilisation", "table": "holding", "address": 20, "type": "uint16", "scale": 0.1},
        {"tag": "overload_cutout", "table": "coil", "address": 3, "type": "bool"},
    ]
    return Profile.model_validate({"kind": "crane", "registers": regs})


def expected_words(reg: Register, value: float) -> list[int]:
    return encode(unscaled(value, reg.scale, reg.offset), reg.type, reg.byte_order, reg.word_order)


@pytest.mark.parametrize("profile", [CRANE, mixed_profile()], ids=["crane", "mixed"])
def test_image_encodes_pinned_values_with_the_profile_codec(profile):
    plc = SimulatedPlc(profile, CraneModel(0))
    plc.hold(PINNED)
    for table in Table:
        image = plc.image(table)
        expected: dict[int, int | bool] = {}
        for reg in (r for r in profile.registers if r.table is table):
            if table.is_bits:
                expected[reg.address] = PINNED[reg.tag]
            else:
                words = expected_words(reg, PINNED[reg.tag])
                expected.update(
                    zip(range(reg.address, reg.address + reg.count), words, strict=True)
                )
                got = [image[a] for a in range(reg.address, reg.address + reg.count)]
                raw = decode(got, reg.type, reg.byte_order, reg.word_order)
                assert scaled(raw, reg.scale, reg.offset) == pytest.approx(PINNED[reg.tag])
        assert image == expected, table


def test_image_saturates_integers_and_hold_refuses_what_does_not_fit():
    plc = SimulatedPlc(CRANE, CraneModel(0))
    plc.hold({"hook_load": 1e6, "safe_working_load": 1.0})  # utilisation 1e8 %
    assert plc.image(Table.HOLDING)[8] == 65535
    with pytest.raises(ValueError, match=re.escape("utilisation: 7000.0 does not fit its uint16")):
        plc.hold({"utilisation": 7000.0})
    with pytest.raises(ValueError, match=re.escape("hook_load: 1e+39 does not fit its float32")):
        plc.hold({"hook_load": 1e39})
    assert plc.held == {"hook_load": 1e6, "safe_working_load": 1.0}


def test_plc_clock_and_profile_check():
    now = [100.0]
    plc = SimulatedPlc(CRANE, CraneModel(5), clock=lambda: now[0])
    now[0] = 129.0
    assert plc.now() == 29.0
    assert plc.values() == CraneModel(5).values(29.0)
    other = Profile.model_validate(
        {
            "kind": "crane",
            "registers": [{"tag": "jib_length", "table": "holding", "address": 0, "type": "int16"}],
        }
    )
    with pytest.raises(ValueError, match="jib_length"):
        SimulatedPlc(other, CraneModel(0))


# --- a real Modbus client: mbpoll ---------------------------------------------------------

MBPOLL_TABLE = {Table.COIL: "0", Table.DISCRETE: "1", Table.INPUT: "3", Table.HOLDING: "4"}


def mbpoll(
    port: int, table: Table, address: int, count: int = 1, fmt: str = "", *opts: str, unit: int = 1
) -> list[str]:
    """One mbpoll read (0-based addresses); the printed values. Fails on a Modbus error."""
    done = mbpoll_run(port, table, address, count, fmt, *opts, unit=unit)
    assert done.returncode == 0, f"{done.args}: {done.stderr.strip()}"
    found = dict(re.findall(r"^\[(\d+)\]:\s+(\S+)$", done.stdout, re.MULTILINE))
    step = 2 if fmt in (":float", ":int") else 1
    return [found[str(a)] for a in range(address, address + count * step, step)]


def mbpoll_run(port, table, address, count=1, fmt="", *opts, unit=1, writes=()):
    exe = shutil.which("mbpoll")
    if exe is None:
        pytest.fail("mbpoll not found: install the Debian package (apt-get install mbpoll)")
    cmd = [exe, "-m", "tcp", "-a", str(unit), "-0", "-1", "-o", "2", "-p", str(port)]
    cmd += ["-r", str(address), "-t", MBPOLL_TABLE[table] + fmt, *opts]
    cmd += [] if writes else ["-c", str(count)]
    cmd += ["127.0.0.1", *writes]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)


def read_words(port: int, reg: Register, unit: int = 1) -> list[int]:
    return [
        int(word, 16) for word in mbpoll(port, reg.table, reg.address, reg.count, ":hex", unit=unit)
    ]


def read_value(port: int, reg: Register) -> float | bool:
    """The tag in engineering units, decoded by mbpoll where it can, else by our codec."""
    if reg.table.is_bits:
        return mbpoll(port, reg.table, reg.address)[0] == "1"
    if reg.type is DataType.FLOAT32 and reg.byte_order is Order.BIG:
        order = ["-B"] if reg.word_order is Order.BIG else []
        raw = float(mbpoll(port, reg.table, reg.address, 1, ":float", *order)[0])
    elif reg.type is DataType.UINT16:
        raw = int(mbpoll(port, reg.table, reg.address)[0])
    else:
        raw = decode(read_words(port, reg), reg.type, reg.byte_order, reg.word_order)
    return scaled(raw, reg.scale, reg.offset)


def request(url: str, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def start_sim(tmp_path, *args: str, control: bool = True) -> tuple[Program, int, str]:
    port, control_port = free_port(), free_port()
    extra = ["--control-port", str(control_port)] if control else []
    program = Program(
        "sim", ["--port", str(port), *extra, "--log-format", "json", *args], tmp_path / "sim.log"
    ).start()
    url = f"http://127.0.0.1:{control_port}"
    if control:
        wait_for(lambda: http_json(f"{url}/health"), 30, "simulator control", program=program)
    else:
        wait_for(lambda: "simulator ready" in program.log_tail(), 30, "simulator", program=program)
    return program, port, url


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """One simulator (seed 7, no demo overload): (Modbus port, control URL)."""
    program, port, url = start_sim(
        tmp_path_factory.mktemp("sim"), "--no-demo-overload", "--seed", "7"
    )
    try:
        yield port, url
    finally:
        program.stop(timeout=10)  # SIGTERM, bounded wait, SIGKILL


@pytest.fixture
def clean_sim(sim):
    """The module's simulator with nothing pinned or forced, before and after the test."""
    _, url = sim
    http_json(f"{url}/release", {})
    http_json(f"{url}/overload", {"active": False})
    yield sim
    http_json(f"{url}/release", {})
    http_json(f"{url}/overload", {"active": False})


@pytest.mark.integration
def test_every_register_reads_back_the_pinned_value(clean_sim):
    port, url = clean_sim
    answer = http_json(f"{url}/hold", PINNED)
    assert answer["held"] == PINNED
    assert http_json(f"{url}/values") == PINNED
    for reg in CRANE.registers:
        if not reg.table.is_bits:
            assert read_words(port, reg) == expected_words(reg, PINNED[reg.tag]), reg.tag
        assert read_value(port, reg) == pytest.approx(PINNED[reg.tag]), reg.tag
    # one request across all holding registers: one consistent snapshot
    for start, count in ((0, 9), (10, 20)):
        words = [int(w, 16) for w in mbpoll(port, Table.HOLDING, start, count, ":hex")]
        block = [
            reg
            for reg in CRANE.registers
            if reg.table is Table.HOLDING and start <= reg.address < start + count
        ]
        assert words == [w for reg in block for w in expected_words(reg, PINNED[reg.tag])]
        assert sum(reg.count for reg in block) == count
    bits = mbpoll(port, Table.DISCRETE, 0, 5)
    assert bits == ["1" if PINNED[r.tag] else "0" for r in CRANE.registers if r.table.is_bits]


@pytest.mark.integration
def test_overload_command_takes_effect_before_the_answer(clean_sim):
    port, url = clean_sim
    utilisation, cutout = CRANE.register("utilisation"), CRANE.register("overload_cutout")
    assert read_value(port, utilisation) < 100.0
    answer = http_json(f"{url}/overload", {"active": True})
    assert answer["active"] is True
    assert answer["took_effect_ns"] <= time.time_ns()
    assert read_value(port, utilisation) > 100.0
    assert read_value(port, cutout) is True
    hook = read_value(port, CRANE.register("hook_load"))
    swl = read_value(port, CRANE.register("safe_working_load"))
    assert hook / swl == pytest.approx(1.15, rel=0.01)
    assert http_json(f"{url}/overload", {"active": False})["active"] is False
    assert read_value(port, utilisation) < 100.0
    assert read_value(port, cutout) is False


@pytest.mark.integration
def test_values_change_over_time(clean_sim):
    port, _ = clean_sim
    wind = CRANE.register("wind_speed")
    first = read_words(port, wind)
    time.sleep(0.3)
    assert read_words(port, wind) != first


@pytest.mark.integration
def test_read_only_image_and_other_unit_ids_refused(clean_sim):
    port, _ = clean_sim
    hook = CRANE.register("hook_load")
    cases = [
        (mbpoll_run(port, Table.HOLDING, 0, writes=["5"]), "Illegal data address"),
        (mbpoll_run(port, Table.COIL, 0, writes=["1"]), "Illegal data address"),
        (mbpoll_run(port, Table.INPUT, 1), "Illegal data address"),  # only input 0
        (mbpoll_run(port, Table.DISCRETE, 5), "Illegal data address"),
        (mbpoll_run(port, Table.HOLDING, 0, 10, ":hex"), "Illegal data address"),  # 9: gap
        (mbpoll_run(port, Table.HOLDING, 28, 3, ":hex"), "Illegal data address"),
        (mbpoll_run(port, Table.HOLDING, 0, unit=2), "Target device failed to respond"),
    ]
    for done, error in cases:
        assert done.returncode != 0, done.args
        assert error in done.stderr, (done.args, done.stderr)
    assert len(read_words(port, hook)) == 2  # still serving


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/hold", b"{bad", 400, "not valid JSON"),
        ("POST", "/hold", b'{"hook_load": NaN}', 400, "NaN is not a JSON number"),
        ("POST", "/hold", b'{"hook_lod": 1}', 400, "unknown tag 'hook_lod'"),
        ("POST", "/hold", b'{"utilisation": 7000}', 400, "does not fit its uint16"),
        ("POST", "/hold", b"[]", 400, "JSON object of tag: value"),
        ("POST", "/overload", b'{"active": 1}', 400, '{"active": true}'),
        ("POST", "/release", b'{"x": 1}', 400, "empty or {}"),
        ("GET", "/nope", b"", 404, "no endpoint '/nope'"),
        ("GET", "/health/", b"", 404, "no endpoint '/health/'"),
        ("GET", "/hold", b"", 405, "/hold takes POST"),
        ("POST", "/hold", b" " * 70_000, 413, "body above 65536 bytes"),
    ],
)
def test_control_refuses_bad_requests(clean_sim, method, path, body, status, error):
    _, url = clean_sim
    got, answer = request(url, method, path, body)
    assert (got, error in answer["error"]) == (status, True), answer
    assert http_json(f"{url}/values")["utilisation"] < 100.0  # nothing pinned or forced


def control_in_process(scenario):
    """Run ``scenario(port, plc)`` against the control API served in-process on loopback."""
    plc = SimulatedPlc(CRANE, CraneModel(0))

    async def run():
        async with control.serving(plc, "127.0.0.1", 0) as port:
            return await scenario(port, plc)

    return asyncio.run(run())


async def exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes; everything the server answers until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()
        await writer.wait_closed()


def chunked_post(port: int, path: str, chunks: list[bytes]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", path, body=iter(chunks), encode_chunked=True)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_control_reads_a_chunked_body_and_refuses_one_above_the_limit():
    async def scenario(port, plc):
        small = await asyncio.to_thread(chunked_post, port, "/hold", [b'{"hook_load"', b": 12.5}"])
        big = await asyncio.to_thread(chunked_post, port, "/hold", [b" " * 30_000] * 3)
        return small, big, plc.held

    small, big, held = control_in_process(scenario)
    assert small[0] == 200
    assert small[1]["held"] == {"hook_load": 12.5}
    assert big == (413, {"error": "body above 65536 bytes"})
    assert held == {"hook_load": 12.5}


def test_control_refuses_a_declared_body_above_the_limit_before_reading_it():
    async def scenario(port, _plc):
        head = b"POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n"
        return await exchange(port, head)  # and never the body: answered and closed anyway

    answer = control_in_process(scenario)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b'{"error": "body above 65536 bytes"}')


def test_control_times_out_a_stalled_body(monkeypatch):
    monkeypatch.setattr(control, "BODY_TIMEOUT_S", 0.2)

    async def scenario(port, _plc):
        started = time.monotonic()
        head = b"POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{"
        answer = await exchange(port, head)  # 19 bytes short, for ever
        return answer, time.monotonic() - started

    answer, waited = control_in_process(scenario)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer.lower()
    assert answer.endswith(b'{"error": "body not complete within 0.2 s"}')
    assert 0.15 < waited < 2.0


def test_stalled_and_oversized_heads_do_not_stop_the_control_api():
    async def scenario(port, _plc):
        stalled_reader, stalled = await asyncio.open_connection("127.0.0.1", port)
        stalled.write(b"GET /health HTTP/1.1\r\n")  # and never the blank line
        await stalled.drain()
        huge = b"GET /health HTTP/1.1\r\nX: " + b"a" * 20_000  # never complete either
        refused = await exchange(port, huge)
        answer = await asyncio.to_thread(request, f"http://127.0.0.1:{port}", "GET", "/health")
        still_open = not stalled_reader.at_eof()
        stalled.close()
        await stalled.wait_closed()
        return refused, answer, still_open

    refused, answer, still_open = control_in_process(scenario)
    assert refused.startswith(b"HTTP/1.1 400 ")  # uvicorn's (h11 hints 431)
    assert answer == (200, {"status": "ok"})
    assert still_open


@pytest.mark.integration
def test_overload_flag_then_sigterm_exits_zero(tmp_path):
    program, port, _ = start_sim(tmp_path, "--overload", "--no-demo-overload", control=False)
    try:
        assert read_value(port, CRANE.register("overload_cutout")) is True
        ready = next(
            json.loads(line)
            for line in program.log_tail().splitlines()
            if "simulator ready" in line
        )
        assert (ready["port"], ready["control_port"], ready["overload_forced"]) == (
            port,
            None,
            True,
        )
        wait_for(
            lambda: "overload started" in program.log_tail(), 10, "overload log", program=program
        )
        program.process.send_signal(signal.SIGTERM)
        assert program.process.wait(10) == 0
    finally:
        program.kill()
    log = program.log_tail()
    assert log.count("overload started") == 1
    assert "simulator stopping" in log


@pytest.mark.integration
@pytest.mark.parametrize("which", ["--port", "--control-port"])
def test_port_in_use_exits_non_zero_naming_the_port(which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = {"--port": str(free_port()), "--control-port": str(free_port()), which: str(busy)}
        done = subprocess.run(
            [sys.executable, "-m", "simulators.main", *(x for kv in ports.items() for x in kv)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1
    assert f"127.0.0.1:{busy}" in done.stderr


@pytest.mark.integration
def test_other_tables_and_orders_served_in_process():
    """Input registers, coils, little word and byte order, scale and offset over Modbus."""
    profile = mixed_profile()
    plc = SimulatedPlc(profile, CraneModel(0))
    plc.hold(PINNED | {"overload_cutout": True})

    async def scenario():
        # mbpoll_run blocks: each read runs in a thread while the server runs in the loop.
        async with modbus_server.serving(plc, "127.0.0.1", 0) as port:
            reads = [
                await asyncio.to_thread(
                    mbpoll_run,
                    port,
                    reg.table,
                    reg.address,
                    1 if reg.table.is_bits else reg.count,
                    "" if reg.table.is_bits else ":hex",
                )
                for reg in profile.registers
            ]
            little = await asyncio.to_thread(mbpoll_run, port, Table.INPUT, 0, 1, ":float")
            return reads, little

    reads, little = asyncio.run(scenario())
    for reg, done in zip(profile.registers, reads, strict=True):
        assert done.returncode == 0, (reg.tag, done.stderr)
        printed = re.findall(r"^\[\d+\]:\s+(\S+)$", done.stdout, re.MULTILINE)
        if reg.table.is_bits:
            assert printed == ["1"], reg.tag
        else:
            assert [int(w, 16) for w in printed] == expected_words(reg, PINNED[reg.tag]), reg.tag
    assert little.returncode == 0, little.stderr
    assert float(re.findall(r"^\[0\]:\s+(\S+)$", little.stdout, re.MULTILINE)[0]) == 12.5
