"""Drilling rig simulator: the model as tables, then every register read by real clients.

The integration tests serve the rig profile in-process on a loopback port and read every
register with mbpoll (Debian package ``mbpoll``) and with the agent's own reader
(connection, read plan, decoder); nothing here mocks Modbus.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import shutil
import subprocess

import pytest

from agent.decode import decode_request
from agent.modbus import ExceptionReply, ModbusConnection
from agent.plan import ReadRequest, plan_reads
from derrick.plc.profile import Register, Table, load_profile
from derrick.plc.registers import DataType, Order, decode, encode, scaled, unscaled
from simulators import modbus_server, rig
from simulators.plc import SimulatedPlc, register_words
from simulators.rig import EXACT_VALUES, RigModel, RigState, Status

RIG = load_profile("rig")
PINNED = EXACT_VALUES
SEEDS = [0, 1, 7, 12345]
TWO_HOURS = 7200.0
GAP = range(37, 40)  # holding addresses the profile leaves undefined

_UNSIGNED = {DataType.UINT16, DataType.UINT32, DataType.UINT64}
# Signed quantities: pit gain (a loss is negative) and a temperature.
_SIGNED_TAGS = {"pit_gain", "mud_temperature_out"}


def run_model(model: RigModel, start: float, stop: float, step: float = 1.0):
    """(t, values) every ``step`` seconds over [start, stop)."""
    n = round((stop - start) / step)
    return [(start + i * step, model.values(start + i * step)) for i in range(n)]


def steady_drilling(model: RigModel, length: float, after: float = 60.0) -> float:
    """A time from which the rig drills steadily (pumps and rotation settled) for ``length`` s."""
    t = after
    while True:
        seg = model.segment(t)
        settled = seg.start + rig.RAMP_S + 1.0
        if seg.step.state is RigState.DRILLING and seg.end - max(settled, t) > length + 5.0:
            return max(settled, t)
        t = seg.end


def status_bit(values, bit: Status) -> bool:
    return bool(int(values["status_word"]) >> bit & 1)


# --- the model -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_model_is_deterministic_per_seed(seed):
    times = [0.0, 0.05, 7.3, 32.5, 250.0, 3600.5, 9000.0, 86_400.25]
    first, second = RigModel(seed), RigModel(seed)
    assert [first.values(t) for t in times] == [second.values(t) for t in times]
    # asking in another order (the plan is built lazily) gives the same answers
    assert [RigModel(seed).values(t) for t in reversed(times)][::-1] == [
        first.values(t) for t in times
    ]


def test_seeds_give_different_runs():
    runs = {seed: RigModel(seed).values(600.0) for seed in SEEDS}
    for tag in ("hole_depth", "pit_volume", "flow_in", "top_drive_rpm", "serial_number"):
        assert len({run[tag] for run in runs.values()}) == len(SEEDS), tag


def test_model_gives_every_profile_tag_with_its_type():
    values = RigModel(0).values(12.0)
    assert set(values) == {reg.tag for reg in RIG.registers} == set(rig.TAGS)
    for reg in RIG.registers:
        value = values[reg.tag]
        assert isinstance(value, bool) == (reg.type is DataType.BOOL), reg.tag
        assert isinstance(value, str) == (reg.type is DataType.STRING), reg.tag
    assert values["serial_number"] == "DRK-RIG-0000"
    assert len(values["serial_number"]) == RIG.register("serial_number").length


def test_profile_layout():
    """The data types the agent meets in the field, in every table, with one gap."""
    types = {(reg.table, reg.type, reg.word_order) for reg in RIG.registers}
    for wanted in [
        (Table.HOLDING, DataType.FLOAT32, Order.BIG),
        (Table.HOLDING, DataType.FLOAT32, Order.LITTLE),
        (Table.HOLDING, DataType.FLOAT64, Order.BIG),
        (Table.HOLDING, DataType.UINT16, Order.BIG),
        (Table.HOLDING, DataType.UINT32, Order.LITTLE),
        (Table.HOLDING, DataType.INT32, Order.BIG),
        (Table.HOLDING, DataType.STRING, Order.BIG),
        (Table.INPUT, DataType.UINT16, Order.BIG),
        (Table.INPUT, DataType.INT16, Order.BIG),
        (Table.COIL, DataType.BOOL, Order.BIG),
        (Table.DISCRETE, DataType.BOOL, Order.BIG),
    ]:
        assert wanted in types, wanted
    plc = SimulatedPlc(RIG, RigModel(0))
    holding = plc.addresses(Table.HOLDING)
    assert holding == frozenset(range(52)) - set(GAP)
    assert [(r.table, r.address, r.count) for r in plan_reads(RIG.registers)] == [
        (Table.HOLDING, 0, 37),
        (Table.HOLDING, 40, 12),
        (Table.INPUT, 0, 3),
        (Table.COIL, 0, 2),
        (Table.DISCRETE, 0, 6),
    ]


def test_first_connection_within_two_minutes_and_the_cycle_repeats():
    run = run_model(RigModel(0, demo_overload=False), 0.0, 3 * 3600.0, 2.0)
    states = [RigState(int(v["rig_state"])) for _, v in run]
    changes = [state for state, _ in itertools.groupby(states)]
    assert states[0] is RigState.DRILLING
    first_connection = next(t for t, v in run if v["rig_state"] == RigState.CONNECTION)
    assert first_connection <= 120.0
    assert set(changes) == set(RigState), "drilling, connection, tripping and circulating"
    # drilling always ends in a connection, possibly after circulating and a trip
    allowed = {
        (RigState.DRILLING, RigState.CONNECTION),
        (RigState.DRILLING, RigState.CIRCULATING),
        (RigState.CIRCULATING, RigState.CONNECTION),
        (RigState.CIRCULATING, RigState.TRIPPING),
        (RigState.TRIPPING, RigState.CONNECTION),
        (RigState.CONNECTION, RigState.DRILLING),
    }
    assert set(itertools.pairwise(changes)) <= allowed
    assert changes.count(RigState.DRILLING) >= 6


@pytest.mark.parametrize("seed", SEEDS)
def test_drilling_physics(seed):
    """Hook load = string weight - WOB; the bit makes hole only while drilling."""
    model = RigModel(seed, demo_overload=False)
    run = run_model(model, 0.0, TWO_HOURS, 2.0)
    for t, v in run:
        state = RigState(int(v["rig_state"]))
        if state is RigState.DRILLING and v["hook_load"] > rig.TRAVELLING_T + 10:
            hanging = rig.TRAVELLING_T + rig.string_weight(v["bit_depth"])
            assert v["hook_load"] + v["weight_on_bit"] == pytest.approx(hanging), t
        assert v["bit_depth"] <= v["hole_depth"] + 1e-9, t
        if v["rate_of_penetration"] > 0:
            assert state is RigState.DRILLING
            assert v["bit_depth"] == pytest.approx(v["hole_depth"], abs=1e-9)
        if state is RigState.DRILLING and v["weight_on_bit"] > 0.5:
            assert v["top_drive_rpm"] > 50.0 and v["flow_in"] > 3000.0, t
    holes = [v["hole_depth"] for _, v in run]
    assert holes == sorted(holes)
    drilled = holes[-1] - holes[0]
    assert 4 * rig.JOINT_M < drilled < 12 * rig.JOINT_M


def test_connection_stops_pumps_and_rotation_and_sets_slips():
    model = RigModel(3, demo_overload=False)
    run = run_model(model, 0.0, 1800.0, 1.0)
    connection = [v for _, v in run if v["rig_state"] == RigState.CONNECTION]
    assert min(v["top_drive_rpm"] for v in connection) == 0.0
    assert min(v["flow_in"] for v in connection) == 0.0
    in_slips = [v for v in connection if status_bit(v, Status.IN_SLIPS)]
    assert in_slips
    # the hook carries the travelling equipment alone
    assert min(v["hook_load"] for v in in_slips) == pytest.approx(rig.TRAVELLING_T)
    assert all(v["hook_load"] < rig.TRAVELLING_T + rig.SLIPS_MARGIN_T for v in in_slips)
    # drainback: the pit gains the mud of the surface lines while the pumps are off, and
    # the drainback-compensated pit gain does not call it a kick
    drilling_pit = run[10][1]["pit_volume"]
    assert max(v["pit_volume"] for v in connection) - drilling_pit > 1.0
    assert not any(v["pit_gain_alarm"] for _, v in run)


@pytest.mark.parametrize("seed", SEEDS)
def test_motion_is_continuous(seed):
    run = run_model(RigModel(seed, demo_overload=False), 0.0, 3600.0, 1.0)
    largest_step = {
        "hook_load": 10.0,
        "block_position": 1.0,
        "bit_depth": 1.0,
        "standpipe_pressure": 50.0,
        "flow_in": 500.0,
        "flow_out": 500.0,
        "pit_volume": 0.2,
        "top_drive_rpm": 20.0,
    }
    for (_, before), (t, now) in itertools.pairwise(run):
        for tag, limit in largest_step.items():
            assert abs(now[tag] - before[tag]) < limit, f"{tag} jumps at t={t}"
        assert 0 <= now["pump_strokes_total"] - before["pump_strokes_total"] <= 5


@pytest.mark.parametrize("seed", SEEDS)
def test_derived_values_are_consistent(seed):
    model = RigModel(seed)
    model.kick(True, at=900.0)
    model.h2s_release(True, at=1500.0)
    for _, v in run_model(model, 0.0, TWO_HOURS, 3.0):
        assert v["hook_load_utilisation"] == pytest.approx(
            100.0 * v["hook_load"] / v["rated_hook_load"]
        )
        assert v["flow_in"] == pytest.approx(rig.pump_flow(v["pump1_spm"], v["pump2_spm"]))
        assert v["pump1_running"] == (v["pump1_spm"] > 1.0)
        assert v["pump2_running"] == (v["pump2_spm"] > 1.0)
        assert v["overpull_alarm"] == (v["hook_load_utilisation"] >= 100.0)
        assert v["gas_alarm"] == (v["h2s"] >= 10.0 or v["combustible_gas"] >= 20.0)
        assert v["pit_gain_alarm"] == (v["pit_gain"] >= rig.PIT_GAIN_ALARM_M3)
        assert int(v["status_word"]) == v["status_word"]
        assert status_bit(v, Status.ON_BOTTOM) == (v["weight_on_bit"] >= 1.0)
        assert status_bit(v, Status.ROTATING) == (v["top_drive_rpm"] >= 5.0)
        assert status_bit(v, Status.PUMPS_ON) == (v["pump1_running"] or v["pump2_running"])
        assert status_bit(v, Status.PIT_GAIN_ALARM) == v["pit_gain_alarm"]
        assert status_bit(v, Status.GAS_ALARM) == v["gas_alarm"]
        assert status_bit(v, Status.OVERPULL_ALARM) == v["overpull_alarm"]
        assert status_bit(v, Status.BOP_CLOSED) == v["bop_closed"]


@pytest.mark.parametrize(
    ("seed", "scenarios"),
    [(seed, False) for seed in SEEDS] + [(seed, True) for seed in SEEDS],
)
def test_every_value_fits_its_register_over_two_hours(seed, scenarios):
    """Unsigned registers never go negative, scaled integers stay in range, no overflow."""
    model = RigModel(seed)
    if scenarios:  # all at once, left running: the worst case for ranges
        model.kick(True, at=300.0)
        model.pump_washout(True, at=600.0)
        model.h2s_release(True, at=900.0)
    for t, v in run_model(model, 0.0, TWO_HOURS, 2.0):
        for reg in RIG.registers:
            value = v[reg.tag]
            if reg.type in (DataType.BOOL, DataType.STRING):
                continue
            assert math.isfinite(value), (reg.tag, t)
            register_words(reg, value)  # CodecError when it does not fit
            raw = round(unscaled(value, reg.scale, reg.offset))
            if reg.type in _UNSIGNED or reg.tag not in _SIGNED_TAGS:
                assert value >= 0.0 and raw >= 0, (reg.tag, t, value)
        assert v["h2s"] < 100.0 and v["combustible_gas"] < 100.0
        assert v["hook_load_utilisation"] < 100.0 or 25.0 < t < 40.0


def test_normal_run_raises_no_alarm_and_demo_overpull_does_once():
    quiet = run_model(RigModel(5, demo_overload=False), 0.0, TWO_HOURS, 2.0)
    assert max(v["hook_load_utilisation"] for _, v in quiet) < 70.0
    for tag in ("overpull_alarm", "gas_alarm", "pit_gain_alarm", "bop_closed"):
        assert not any(v[tag] for _, v in quiet), tag
    demo = run_model(RigModel(5), 0.0, 120.0, 0.25)
    over = [t for t, v in demo if v["overpull_alarm"]]
    assert over, "no overpull in the first minute"
    assert rig.DEMO_START_S < over[0] < over[-1] < rig.DEMO_END_S
    assert max(v["hook_load_utilisation"] for _, v in demo) == pytest.approx(105.0)
    assert all(v["rig_state"] == RigState.CONNECTION for t, v in demo if t in over)
    assert over == [t for t, _ in demo if over[0] <= t <= over[-1]], "one overpull"
    assert max(v["hook_load_utilisation"] for t, v in demo if t >= rig.DEMO_END_S) < 70.0


@pytest.mark.parametrize("t", [0.0, 30.0, 100.0, 3600.0, 5000.0])
def test_overpull_command_forces_110_percent_until_released(t):
    model, reference = RigModel(3, demo_overload=False), RigModel(3, demo_overload=False)
    model.overload(True)
    forced = model.values(t)
    assert model.overload_forced
    assert forced["hook_load"] == pytest.approx(1.10 * rig.RATED_HOOK_LOAD_T)
    assert forced["hook_load_utilisation"] == pytest.approx(110.0)
    assert forced["overpull_alarm"] is True
    assert status_bit(forced, Status.OVERPULL_ALARM)
    model.overload(False)
    assert model.values(t) == reference.values(t)


@pytest.mark.parametrize("seed", SEEDS)
def test_kick_raises_pit_volume_and_flow_out_at_constant_flow_in(seed):
    model, reference = RigModel(seed), RigModel(seed)
    t0 = steady_drilling(model, 300.0)
    model.kick(True, at=t0)
    window = run_model(model, t0, t0 + 300.0, 5.0)
    assert model.values(t0 - 10.0) == reference.values(t0 - 10.0)
    flow_in = {v["flow_in"] for _, v in window}
    assert flow_in == {reference.values(t0)["flow_in"]}, "flow in changed"
    start, end = window[0][1], window[-1][1]
    assert end["pit_volume"] - start["pit_volume"] >= 1.0
    gain_at_3_min = model.values(t0 + 180.0)["pit_volume"] - start["pit_volume"]
    assert gain_at_3_min >= 1.0
    assert end["flow_out"] - start["flow_out"] >= 500.0
    assert end["flow_out"] > end["flow_in"]
    assert not start["pit_gain_alarm"]
    assert end["pit_gain_alarm"] and status_bit(end, Status.PIT_GAIN_ALARM)
    assert end["pit_gain"] == pytest.approx(end["pit_volume"] - start["pit_volume"], abs=0.05)
    model.kick(False)
    assert model.values(t0 + 200.0) == reference.values(t0 + 200.0)


def test_scenario_without_a_start_time_starts_at_the_next_reading():
    model = RigModel(0)
    t0 = steady_drilling(model, 300.0)
    model.kick(True)
    assert model.scenarios == {"kick": None}
    model.values(t0)
    assert model.scenarios == {"kick": t0}
    explicit = RigModel(0)
    explicit.kick(True, at=t0)
    assert model.values(t0 + 120.0) == explicit.values(t0 + 120.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_pump_washout_drops_standpipe_pressure_at_constant_strokes(seed):
    model, reference = RigModel(seed), RigModel(seed)
    t0 = steady_drilling(model, 200.0)
    model.pump_washout(True, at=t0)
    window = run_model(model, t0, t0 + 180.0, 5.0)
    for t, v in window:
        expected = reference.values(t)
        for tag in ("pump1_spm", "pump2_spm", "flow_in", "pump_strokes_total"):
            assert v[tag] == expected[tag], (tag, t)
    start, end = window[0][1], window[-1][1]
    assert end["standpipe_pressure"] <= 0.8 * start["standpipe_pressure"]
    assert end["pump1_pressure"] < start["pump1_pressure"]
    assert end["flow_out"] < 0.9 * end["flow_in"]
    model.pump_washout(False)
    assert model.values(t0 + 100.0) == reference.values(t0 + 100.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_h2s_release_climbs_above_20_ppm(seed):
    model, reference = RigModel(seed), RigModel(seed)
    before = model.values(1000.0)
    assert before["h2s"] < 1.5 and not before["gas_alarm"]
    model.h2s_release(True, at=1000.0)
    after = model.values(1000.0 + rig.GAS_RAMP_S + 10.0)
    assert after["h2s"] > 20.0
    assert after["combustible_gas"] >= before["combustible_gas"] + 10.0
    assert after["gas_alarm"] and status_bit(after, Status.GAS_ALARM)
    early = model.values(1030.0)["h2s"]
    assert before["h2s"] < early < after["h2s"], "H2S climbs, it does not jump"
    model.h2s_release(False)
    assert model.values(1100.0) == reference.values(1100.0)


@pytest.mark.parametrize("t", [0.0, 32.5, 777.7, 4000.0])
def test_hold_pins_exact_values_over_overpull_and_scenarios(t):
    model = RigModel(0)
    model.overload(True)
    model.kick(True, at=0.0)
    model.h2s_release(True, at=0.0)
    model.hold(PINNED)
    assert model.values(t) == PINNED
    assert model.held == PINNED
    model.release()
    model.overload(False)
    model.kick(False)
    model.h2s_release(False)
    assert model.values(t) == RigModel(0).values(t)


@pytest.mark.parametrize(
    ("pins", "derived"),
    [
        (
            {"hook_load": 330.0, "rated_hook_load": 300.0},
            {"hook_load_utilisation": 110.0, "overpull_alarm": True},
        ),
        ({"hook_load": 150.0}, {"hook_load_utilisation": 50.0, "overpull_alarm": False}),
        ({"h2s": 25.0}, {"gas_alarm": True}),
        ({"combustible_gas": 20.0, "h2s": 0.0}, {"gas_alarm": True}),
        ({"pit_gain": 2.5}, {"pit_gain_alarm": True}),
        ({"pump1_spm": 0.0, "pump2_spm": 0.0}, {"pump1_running": False, "pump2_running": False}),
        (
            {"weight_on_bit": 0.0, "top_drive_rpm": 0.0, "pump1_spm": 0.0, "pump2_spm": 0.0},
            {"status_word": 0.0},
        ),
        ({"bop_closed": True, "hook_load": 38.0}, {"status_word": 7 + 64 + 128.0}),
        ({"status_word": 3.0, "h2s": 50.0}, {"status_word": 3.0, "gas_alarm": True}),
    ],
)
def test_held_measurements_drive_derived_tags(pins, derived):
    model = RigModel(0, demo_overload=False)
    model.hold(pins)
    values = model.values(10.0)  # drilling: on bottom, rotating, pumps on
    assert {tag: values[tag] for tag in pins} == pins
    assert {tag: values[tag] for tag in derived} == pytest.approx(derived)


@pytest.mark.parametrize(
    ("pins", "error"),
    [
        ({"hook_lod": 1.0}, "unknown tag 'hook_lod'"),
        ({"hook_load": True}, "hook_load must be a number"),
        ({"hook_load": "12"}, "hook_load must be a number"),
        ({"hook_load": math.inf}, "hook_load must be finite"),
        ({"gas_alarm": 1}, "gas_alarm must be true or false"),
        ({"rated_hook_load": 0}, "rated_hook_load must be above 0"),
        ({"rig_state": 4}, "rig_state must be one of 0, 1, 2, 3"),
        ({"rig_state": 1.5}, "rig_state must be one of 0, 1, 2, 3"),
        ({"status_word": -1}, "status_word must be a whole number"),
        ({"pump_strokes_total": 10.5}, "pump_strokes_total must be a whole number"),
        ({"serial_number": 42}, "serial_number must be printable ASCII"),
        ({"serial_number": "RIG-Ü"}, "serial_number must be printable ASCII"),
        ({"serial_number": "ABCDEFGHIJKLM"}, "at most 12 characters"),
        ({"hook_load": 1.0, "nope": 2.0}, "unknown tag 'nope'"),
    ],
)
def test_hold_rejects_bad_values_and_pins_nothing(pins, error):
    model = RigModel(0)
    with pytest.raises(ValueError, match=re.escape(error)):
        model.hold(pins)
    assert model.held == {}


# --- the PLC image -----------------------------------------------------------------------


def expected_words(reg: Register, value) -> list[int]:
    if reg.type is DataType.STRING:
        return encode(value, reg.type, reg.byte_order, reg.word_order, reg.length)
    return encode(unscaled(value, reg.scale, reg.offset), reg.type, reg.byte_order, reg.word_order)


def decoded(reg: Register, words: list[int]):
    raw = decode(words, reg.type, reg.byte_order, reg.word_order)
    return raw if isinstance(raw, str) else scaled(raw, reg.scale, reg.offset)


def test_exact_values_survive_encoding_bit_for_bit_and_are_consistent():
    assert set(PINNED) == set(rig.TAGS)
    for reg in RIG.registers:
        if not reg.table.is_bits:
            assert decoded(reg, expected_words(reg, PINNED[reg.tag])) == PINNED[reg.tag], reg.tag
    assert rig.derived(PINNED).items() <= PINNED.items()
    assert PINNED["flow_in"] == rig.pump_flow(PINNED["pump1_spm"], PINNED["pump2_spm"])


def test_image_encodes_pinned_values_with_the_profile_codec():
    plc = SimulatedPlc(RIG, RigModel(0))
    plc.hold(PINNED)
    for table in Table:
        expected: dict[int, int | bool] = {}
        for reg in plc.registers(table):
            if table.is_bits:
                expected[reg.address] = PINNED[reg.tag]
            else:
                words = expected_words(reg, PINNED[reg.tag])
                expected.update(
                    zip(range(reg.address, reg.address + reg.count), words, strict=True)
                )
        assert plc.image(table) == expected, table


def test_plc_refuses_pins_that_do_not_fit_their_register():
    plc = SimulatedPlc(RIG, RigModel(0))
    with pytest.raises(ValueError, match=re.escape("h2s: 7000.0 does not fit its uint16")):
        plc.hold({"h2s": 7000.0})
    with pytest.raises(ValueError, match=re.escape("pit_gain: 3000000.0 does not fit its int32")):
        plc.hold({"pit_gain": 3_000_000.0})
    assert plc.held == {}


# --- real Modbus clients: mbpoll and the agent's reader ------------------------------------

MBPOLL_TABLE = {Table.COIL: "0", Table.DISCRETE: "1", Table.INPUT: "3", Table.HOLDING: "4"}


def mbpoll_run(port: int, table: Table, address: int, count: int = 1, fmt: str = "", *opts: str):
    exe = shutil.which("mbpoll")
    if exe is None:
        pytest.fail("mbpoll not found: install the Debian package (apt-get install mbpoll)")
    cmd = [exe, "-m", "tcp", "-a", "1", "-0", "-1", "-o", "2", "-p", str(port)]
    cmd += ["-r", str(address), "-c", str(count), "-t", MBPOLL_TABLE[table] + fmt, *opts]
    return subprocess.run(
        [*cmd, "127.0.0.1"], capture_output=True, text=True, timeout=15, check=False
    )


def printed(done: subprocess.CompletedProcess) -> dict[int, str]:
    """mbpoll's ``[address]: value`` lines; asserts the read succeeded.

    A 16-bit register above 32767 prints as ``65411 (-125)``: unsigned, then signed.
    """
    assert done.returncode == 0, f"{done.args}: {done.stderr.strip()}"
    found = re.findall(r"^\[(\d+)\]:\s+(\S+(?: \(-\d+\))?)$", done.stdout, re.MULTILINE)
    return {int(addr): value for addr, value in found}


def mbpoll_value_read(reg: Register) -> tuple[str, tuple[str, ...]] | None:
    """How mbpoll itself decodes a tag (format, options); None: hex words and our codec."""
    big = reg.word_order is Order.BIG
    if reg.table.is_bits or reg.type in (DataType.UINT16, DataType.INT16):
        return "", ()
    if reg.byte_order is Order.BIG and reg.type in (DataType.FLOAT32, DataType.INT32):
        return (":float" if reg.type is DataType.FLOAT32 else ":int"), ("-B",) if big else ()
    if reg.type is DataType.UINT32 and reg.byte_order is Order.BIG:  # below 2**31 as :int
        return ":int", ("-B",) if big else ()
    return None


def mbpoll_reads(port: int, reg: Register) -> tuple[list[int] | None, float | bool]:
    """(hex words or None for bits, value in engineering units) of one tag via mbpoll."""
    if reg.table.is_bits:
        return None, printed(mbpoll_run(port, reg.table, reg.address))[reg.address] == "1"
    hexes = printed(mbpoll_run(port, reg.table, reg.address, reg.count, ":hex"))
    words = [int(hexes[a], 16) for a in range(reg.address, reg.address + reg.count)]
    how = mbpoll_value_read(reg)
    if how is None:
        return words, decoded(reg, words)
    fmt, opts = how
    raw_text = printed(mbpoll_run(port, reg.table, reg.address, 1, fmt, *opts))[reg.address]
    unsigned, _, signed = raw_text.partition(" ")
    raw = float(signed.strip("()") if signed and reg.type is DataType.INT16 else unsigned)
    return words, scaled(raw, reg.scale, reg.offset)


def serve(plc: SimulatedPlc, work):
    """Run ``await work(port)`` while ``plc`` is served on a loopback port."""

    async def scenario():
        async with modbus_server.serving(plc, "127.0.0.1", 0) as port:
            return await work(port)

    return asyncio.run(scenario())


async def agent_read(port: int, requests) -> list:
    """Read ``requests`` with the agent's connection; each answer as the agent gets it."""
    connection = ModbusConnection("127.0.0.1", port, timeout_s=5)
    await connection.connect()
    try:
        return [await connection.read(r.table, r.address, r.count, 1) for r in requests]
    finally:
        connection.close()


NEGATIVE = PINNED | {"mud_temperature_out": -12.5, "pit_gain": -0.75, "bop_closed": True}


@pytest.mark.integration
@pytest.mark.parametrize("pins", [PINNED, NEGATIVE], ids=["exact", "negative"])
def test_mbpoll_reads_every_register_of_the_profile(pins):
    plc = SimulatedPlc(RIG, RigModel(7))
    plc.hold(pins)

    async def work(port):
        # mbpoll blocks: each read runs in a thread while the server runs in the loop
        tags = [await asyncio.to_thread(mbpoll_reads, port, reg) for reg in RIG.registers]
        blocks = [
            await asyncio.to_thread(mbpoll_run, port, r.table, r.address, r.count, ":hex")
            for r in plan_reads(RIG.registers)
            if not r.table.is_bits
        ]
        bits = [
            await asyncio.to_thread(mbpoll_run, port, table, 0, len(plc.registers(table)))
            for table in (Table.COIL, Table.DISCRETE)
        ]
        return tags, blocks, bits

    tags, blocks, bits = serve(plc, work)
    for reg, (words, value) in zip(RIG.registers, tags, strict=True):
        if words is not None:
            assert words == expected_words(reg, pins[reg.tag]), reg.tag
        assert value == pins[reg.tag], reg.tag
    # one request per block of consecutive registers: one consistent snapshot
    for done, table in zip(blocks, [Table.HOLDING, Table.HOLDING, Table.INPUT], strict=True):
        words = printed(done)
        for addr, word in plc.image(table).items():
            if addr in words:
                assert int(words[addr], 16) == word, (table, addr)
    assert sum(len(printed(done)) for done in blocks) == 37 + 12 + 3
    for done, table in zip(bits, [Table.COIL, Table.DISCRETE], strict=True):
        got = {addr: value == "1" for addr, value in printed(done).items()}
        assert got == {reg.address: pins[reg.tag] for reg in plc.registers(table)}, table


@pytest.mark.integration
def test_agent_reader_decodes_every_tag_with_the_profile_types():
    plc = SimulatedPlc(RIG, RigModel(7))
    plc.hold(NEGATIVE)
    plan = plan_reads(RIG.registers)
    answers = serve(plc, lambda port: agent_read(port, plan))
    readings = {}
    for request, data in zip(plan, answers, strict=True):
        assert not isinstance(data, ExceptionReply), request
        for reading in decode_request(request, data, 0):
            readings[reading.tag] = reading
    assert {tag: r.value for tag, r in readings.items()} == NEGATIVE
    assert {tag: r.unit for tag, r in readings.items()} == {r.tag: r.unit for r in RIG.registers}
    assert {r.quality for r in readings.values()} == {"good"}
    assert isinstance(readings["serial_number"].value, str)
    assert isinstance(readings["bop_closed"].value, bool)


@pytest.mark.integration
def test_live_values_match_the_model_through_the_agent_reader():
    """Unpinned, mid-kick at a fixed instant: the agent reads what the model says."""
    now = [1000.0]
    plc = SimulatedPlc(RIG, RigModel(12345), clock=lambda: now[0])
    plc.model.kick(True, at=100.0)
    now[0] += 400.0
    plan = plan_reads(RIG.registers)
    answers = serve(plc, lambda port: agent_read(port, plan))
    expected = RigModel(12345)
    expected.kick(True, at=100.0)
    model = expected.values(400.0)
    assert model["pit_gain_alarm"] is True
    for request, data in zip(plan, answers, strict=True):
        for reading in decode_request(request, data, 0):
            reg, want = RIG.register(reading.tag), model[reading.tag]
            if reg.type is DataType.FLOAT32:
                assert reading.value == pytest.approx(want, rel=1e-6), reading.tag
            elif reg.type in (DataType.BOOL, DataType.STRING, DataType.FLOAT64):
                assert reading.value == want, reading.tag
            else:  # integers: within half a step of the scale
                assert abs(reading.value - want) <= reg.scale / 2 + 1e-9, reading.tag


@pytest.mark.integration
def test_undefined_addresses_answer_exception_02():
    plc = SimulatedPlc(RIG, RigModel(0))
    merged = plan_reads(RIG.registers, max_gap=len(GAP))
    assert merged[0].table is Table.HOLDING and (merged[0].address, merged[0].count) == (0, 52)
    spans = [
        *((Table.HOLDING, a, 1) for a in GAP),
        (Table.HOLDING, 36, 4),  # the last defined register and the gap
        (Table.HOLDING, 0, 38),
        (Table.HOLDING, 38, 3),
        (Table.HOLDING, 52, 1),
        (Table.INPUT, 3, 1),
        (Table.COIL, 2, 1),
        (Table.DISCRETE, 6, 1),
    ]

    async def work(port):
        requests = [ReadRequest(table, a, n, ()) for table, a, n in spans]
        agent = await agent_read(port, [*requests, merged[0], merged[1]])
        mbpoll = await asyncio.to_thread(mbpoll_run, port, Table.HOLDING, 37, 1, ":hex")
        return agent, mbpoll

    agent, mbpoll = serve(plc, work)
    assert agent[: len(spans) + 1] == [ExceptionReply(code=2)] * (len(spans) + 1)
    assert not isinstance(agent[-1], ExceptionReply)  # the server still answers
    assert mbpoll.returncode != 0
    assert "Illegal data address" in mbpoll.stderr
