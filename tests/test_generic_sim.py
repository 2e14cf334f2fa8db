"""The generic simulator: any profile served with slowly wandering values (benchmarks).

The model is checked as tables; then ``derrick-sim --profile bench100 --count N`` runs
as a program and is read back over Modbus TCP with the agent's client and the codec.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import subprocess
import sys
import time

import pytest

from agent.modbus import ModbusConnection
from derrick.plc.profile import Profile, Register, Table, load_profile
from derrick.plc.registers import DataType, decode, scaled
from devstack.programs import REPO, Program, http_json, wait_for
from devstack.services import free_port_block
from simulators.generic import GenericModel
from simulators.plc import SimulatedPlc, register_words

BENCH = load_profile("bench100")
# bench100's layout (config/profiles/bench100.yaml): three requests read every tag.
BENCH_SPANS = [(Table.HOLDING, 0, 120), (Table.INPUT, 0, 46), (Table.DISCRETE, 0, 10)]


def every_type_profile() -> Profile:
    """One tag of each type, with scale and offset, in both word orders."""
    regs = [
        {"tag": "f32", "table": "holding", "address": 0, "type": "float32"},
        {"tag": "f64", "table": "holding", "address": 2, "type": "float64"},
        {"tag": "u16", "table": "holding", "address": 6, "type": "uint16", "scale": 0.1},
        {"tag": "i16", "table": "holding", "address": 7, "type": "int16", "offset": -40},
        {"tag": "u32", "table": "input", "address": 0, "type": "uint32", "word_order": "little"},
        {"tag": "i32", "table": "input", "address": 2, "type": "int32", "scale": 0.001},
        {"tag": "u64", "table": "input", "address": 4, "type": "uint64"},
        {"tag": "i64", "table": "input", "address": 8, "type": "int64"},
        {"tag": "name", "table": "input", "address": 12, "type": "string", "length": 8},
        {"tag": "on", "table": "coil", "address": 0, "type": "bool"},
        {"tag": "alarm", "table": "discrete", "address": 0, "type": "bool"},
    ]
    return Profile.model_validate({"kind": "test_rig", "registers": regs})


# --- the model ---------------------------------------------------------------------------


def test_bench100_is_100_tags_in_three_known_spans():
    assert len(BENCH.registers) == 100
    types = [reg.type for reg in BENCH.registers]
    assert types.count(DataType.FLOAT32) == 70
    assert types.count(DataType.BOOL) == 10
    assert {DataType.UINT16, DataType.INT16, DataType.INT32} < set(types)
    for table, start, count in BENCH_SPANS:
        regs = sorted((r for r in BENCH.registers if r.table is table), key=lambda r: r.address)
        covered = [a for reg in regs for a in range(reg.address, reg.address + reg.count)]
        assert covered == list(range(start, start + count)), table  # contiguous, no gap


@pytest.mark.parametrize("seed", [0, 1, 99])
def test_model_is_deterministic_per_seed_and_seeds_differ(seed):
    times = [0.0, 0.5, 17.25, 3600.0]
    first, second = GenericModel(BENCH, seed), GenericModel(BENCH, seed)
    assert [first.values(t) for t in times] == [second.values(t) for t in times]
    other = GenericModel(BENCH, seed + 1).values(17.25)
    assert sum(other[tag] != value for tag, value in first.values(17.25).items()) > 80


def test_adding_a_tag_does_not_change_the_others():
    fewer = Profile.model_validate(
        {"kind": "bench", "registers": [r.model_dump() for r in BENCH.registers[1:]]}
    )
    full, part = GenericModel(BENCH, 3).values(42.0), GenericModel(fewer, 3).values(42.0)
    assert {tag: full[tag] for tag in part} == part


@pytest.mark.parametrize("profile", [BENCH, every_type_profile()], ids=["bench100", "types"])
def test_every_value_has_its_type_and_fits_its_register_for_an_hour(profile):
    model = GenericModel(profile, 5)
    for t in (i * 7.3 for i in range(500)):  # one hour
        values = model.values(t)
        assert set(values) == {reg.tag for reg in profile.registers}
        for reg in profile.registers:
            value = values[reg.tag]
            if reg.type is DataType.BOOL:
                assert isinstance(value, bool), reg.tag
                continue
            if reg.type is DataType.STRING:
                assert value == reg.tag[: reg.length]
                continue
            assert math.isfinite(value), reg.tag
            register_words(reg, value)  # CodecError when out of the type's range
            raw = (value - reg.offset) / reg.scale
            if reg.type not in (DataType.FLOAT32, DataType.FLOAT64):
                assert raw == pytest.approx(round(raw), abs=1e-6), reg.tag  # whole raw


def served(reg: Register, value: float) -> float:
    """What a client decodes for ``value`` from the register words."""
    words = register_words(reg, value)
    return scaled(decode(words, reg.type, reg.byte_order, reg.word_order), reg.scale, reg.offset)


def test_values_wander_slowly_and_bools_hold_for_a_while():
    model = GenericModel(BENCH, 0)
    run = [model.values(i * 0.1) for i in range(6000)]  # ten minutes, every 100 ms
    numbers = [r for r in BENCH.registers if r.type is not DataType.BOOL]
    for reg in numbers:
        series = [values[reg.tag] for values in run]
        spread = max(series) - min(series)
        assert spread > 0, f"{reg.tag} does not move"
        largest_step = max(abs(b - a) for a, b in itertools.pairwise(series))
        assert largest_step < 0.05 * spread + 1.5 * reg.scale, reg.tag  # no jumps
    for reg in (r for r in BENCH.registers if r.type is DataType.BOOL):
        series = [values[reg.tag] for values in run]
        flips = sum(a != b for a, b in itertools.pairwise(series))
        assert flips <= 30, f"{reg.tag} chatters"  # on or off for 20 s on average at least
    assert any(
        len({values[r.tag] for values in run}) == 2 for r in BENCH.registers if r.table.is_bits
    ), "no bool ever switches"


def test_hold_pins_values_and_refuses_bad_ones():
    model = GenericModel(every_type_profile(), 0)
    model.hold({"f32": 1.5, "on": True, "name": "PUMP", "u16": 12})
    assert {k: model.values(10.0)[k] for k in ("f32", "on", "name", "u16")} == {
        "f32": 1.5,
        "on": True,
        "name": "PUMP",
        "u16": 12.0,
    }
    for bad, error in [
        ({"nope": 1}, "unknown tag 'nope'"),
        ({"on": 1}, "on must be true or false"),
        ({"f32": True}, "f32 must be a number"),
        ({"f32": math.inf}, "f32 must be finite"),
        ({"name": 3}, "name must be a string"),
    ]:
        with pytest.raises(ValueError, match=error):
            model.hold(bad)
    model.release()
    assert model.held == {}
    assert model.values(10.0)["f32"] != 1.5


def test_plc_image_of_a_generic_profile_decodes_to_the_model_values():
    profile = every_type_profile()
    plc = SimulatedPlc(profile, GenericModel(profile, 2), clock=lambda: 100.0)
    values = plc.values()
    for table in Table:
        image = plc.image(table)
        for reg in (r for r in profile.registers if r.table is table):
            if table.is_bits:
                assert image[reg.address] == values[reg.tag]
                continue
            words = [image[a] for a in range(reg.address, reg.address + reg.count)]
            raw = decode(words, reg.type, reg.byte_order, reg.word_order)
            if reg.type is DataType.STRING:
                assert raw == values[reg.tag]
            else:
                decoded = scaled(raw, reg.scale, reg.offset)
                assert decoded == pytest.approx(values[reg.tag], rel=1e-6), reg.tag


# --- the program -------------------------------------------------------------------------


async def read_device(port: int, unit_id: int = 1) -> dict[str, object]:
    """Every bench100 tag of one device in three requests, decoded with the codec."""
    connection = ModbusConnection.tcp("127.0.0.1", port, timeout_s=5)
    await connection.connect()
    try:
        spans = {}
        for table, start, count in BENCH_SPANS:
            spans[table] = (start, await connection.read(table, start, count, unit_id))
    finally:
        connection.close()
    values: dict[str, object] = {}
    for reg in BENCH.registers:
        start, data = spans[reg.table]
        words = data[reg.address - start : reg.address - start + reg.count]
        if reg.table.is_bits:
            values[reg.tag] = bool(words[0])
        else:
            raw = decode(words, reg.type, reg.byte_order, reg.word_order)
            values[reg.tag] = scaled(raw, reg.scale, reg.offset)
    return values


def start_bench(tmp_path, count: int, *extra: str) -> tuple[Program, int, int]:
    base, control = free_port_block(count), free_port_block(count)
    program = Program(
        "sim",
        [
            "--profile",
            "bench100",
            "--count",
            str(count),
            "--port",
            str(base),
            "--control-port",
            str(control),
            "--log-format",
            "json",
            *extra,
        ],
        tmp_path / "bench.log",
    ).start()
    for i in range(count):
        url = f"http://127.0.0.1:{control + i}/health"
        wait_for(lambda url=url: http_json(url), 30, "bench simulator", program=program)
    return program, base, control


@pytest.mark.integration
def test_bench100_fleet_serves_every_tag_on_its_own_port(tmp_path):
    program, base, control = start_bench(tmp_path, 3)
    try:
        pinned = {
            reg.tag: (i % 2 == 0) if reg.type is DataType.BOOL else float(i + 1)
            for i, reg in enumerate(BENCH.registers)
        }
        pinned["tilt_01"] = -12.34  # signed, scaled
        pinned["position_02"] = 1234.567  # int32 x 0.001
        http_json(f"http://127.0.0.1:{control + 1}/hold", pinned)
        fleet = asyncio.run(read_all(base, 3))
        assert fleet[1] == pytest.approx(pinned)
        for device in (fleet[0], fleet[2]):  # not pinned: wandering values of their own
            assert set(device) == set(pinned)
            assert all(isinstance(device[r.tag], bool) for r in BENCH.registers if r.table.is_bits)
        assert sum(fleet[0][tag] != fleet[2][tag] for tag in pinned) > 80  # seeds differ
        log = program.log_tail(10)
        assert all(f'"device": "bench100-0{i}"' in log for i in range(3)), log
        assert '"model": "generic"' in log
    finally:
        assert program.stop() == 0, program.log_tail()


async def read_all(base: int, count: int) -> list[dict[str, object]]:
    return await asyncio.gather(*(read_device(base + i) for i in range(count)))


@pytest.mark.integration
def test_unpinned_values_match_the_model_and_change(tmp_path):
    program, base, control = start_bench(tmp_path, 1, "--speed", "50")
    try:
        first = asyncio.run(read_device(base))
        model = http_json(f"http://127.0.0.1:{control}/values")
        for reg in BENCH.registers:  # same values, up to the drift between two reads
            if reg.table.is_bits:
                continue
            assert first[reg.tag] == pytest.approx(model[reg.tag], rel=0.02, abs=2 * reg.scale)
        time.sleep(0.5)  # 25 simulated seconds
        second = asyncio.run(read_device(base))
        moved = [r.tag for r in BENCH.registers if first[r.tag] != second[r.tag]]
        assert len(moved) > 80, moved
    finally:
        assert program.stop() == 0, program.log_tail()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--profile", "bench100", "--overload"], "has no load"),
        (["--cranes", "2", "--count", "2"], "--count is for --profile"),
        (["--serial", "/dev/null", "--framer", "rtu"], "--framer is for TCP ports"),
        (["--count", "2", "--units-per-port", "2", "--unit-id", "0"], "unit 0 answers every"),
        (["--serial", "/dev/null", "--cranes", "3", "--unit-id", "246"], "RTU ends at 247"),
        (["--serial", "/dev/null", "--units-per-port", "2"], "--units-per-port is for TCP"),
    ],
)
def test_bad_option_combinations_exit_2(args, error):
    done = subprocess.run(
        [sys.executable, "-m", "simulators.main", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert error in done.stderr
