"""derrick-agent probe: address search, word orders, --expect and the draft profile.

The unit tests check the pieces (address forms, spans, hints, usage errors). The
integration tests probe real devices over real TCP: derrick-sim serving the crane profile
and the generic small11 profile (CDAB floats, a hole in holding 3-9), a generated
profile with far-apart ranges, and a small asyncio Modbus TCP device in this file for the
behaviours no simulator has (a count limit, silence on missing addresses, a link that
dies, and a record of every function code it received).

Both simulators answer exception 02 for every register address their profile does not
define, so the holes are the profile's. Their bit tables answer a read that starts at a
defined bit with the rest of its 16-bit word padded, and refuse those padding bits read
alone; the probe reads each run's last address alone, so it reports the profile's bits.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import struct
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import yaml

from agent import probe
from agent.decode import decode_value
from agent.modbus import ModbusConnection
from agent.probe import (
    Expectation,
    ProbeSettings,
    TableScan,
    add_span,
    draft_profile,
    interpretations,
    main,
    parse_expect,
    remove_span,
    span_text,
    value_rows,
)
from derrick.plc.profile import Profile, Table, load_profile
from derrick.plc.registers import DataType, Order, encode
from derrick.plumbing import logs
from devstack.programs import Simulator, http_json, start_simulator
from devstack.services import free_port
from simulators.crane import EXACT_VALUES

CRANE = load_profile("crane")
SMALL = load_profile("small11")


_CONFIGURE = logs.configure  # the real one: the fixture below puts this in its place


def _log_to_stderr(_fmt: str = "console", level: str = "info") -> None:
    _CONFIGURE("console", level)


@pytest.fixture(autouse=True)
def logs_to_stderr(monkeypatch):
    """The probe logs to stderr as its CLI sets up, in the readable format (conftest puts
    the logging set-up back after each test)."""
    monkeypatch.setattr(probe.logs, "configure", _log_to_stderr)
    _log_to_stderr()


# --- unit: the pieces ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tables", "address", "value"),
    [
        ("hook_load=40001:12.5", (Table.HOLDING,), 0, 12.5),
        ("x=49999:1", (Table.HOLDING,), 9998, 1.0),
        ("x=400001:1", (Table.HOLDING,), 0, 1.0),
        ("x=465536:1", (Table.HOLDING,), 65535, 1.0),
        ("flow=30005:-31.25", (Table.INPUT,), 4, -31.25),
        ("flow=input:4:31.25", (Table.INPUT,), 4, 31.25),
        ("x=holding:40001:2", (Table.HOLDING,), 40001, 2.0),
        ("cut=10001:1", (Table.DISCRETE,), 0, True),
        ("pump=coil:0:on", (Table.COIL,), 0, True),
        ("pump=coils:7:false", (Table.COIL,), 7, False),
        ("x=12:3.5", (Table.HOLDING, Table.INPUT), 12, 3.5),
        ("x=0:1e3", (Table.HOLDING, Table.INPUT), 0, 1000.0),
    ],
)
def test_expect_takes_the_address_forms_of_a_profile_and_modicon(text, tables, address, value):
    expectation = parse_expect(text)
    assert (expectation.tables, expectation.address, expectation.value) == (
        tables,
        address,
        value,
    )


def test_expect_tolerance_is_one_percent_or_the_displays_rounding():
    assert parse_expect("a=40001:12.5").tolerance == pytest.approx(0.125)
    assert parse_expect("a=40001:0.25").half_unit == pytest.approx(0.005)
    assert parse_expect("a=40001:0").tolerance == pytest.approx(0.5)  # "0": 0.5 rounds to it
    assert parse_expect("a=40001:0.00").tolerance == pytest.approx(0.005)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("hook_load", "TAG=ADDRESS:VALUE"),
        ("hook_load=12.5", "TAG=ADDRESS:VALUE"),
        ("hook load=40001:1", "TAG=ADDRESS:VALUE"),
        ("x=drum:3:1", "no table 'drum'"),
        ("x=4000a:1", "not an address"),
        ("x=holding:70000:1", "0-65535"),
        ("x=70000:1", "neither 0-based nor Modicon"),
        ("x=40001:twelve", "not a number"),
        ("x=40001:nan", "finite"),
        ("x=coil:0:2", "1/0"),
    ],
)
def test_a_bad_expect_says_what_is_wrong(text, says):
    with pytest.raises(probe.UsageError, match=says):
        parse_expect(text)


def test_spans_merge_split_and_read_as_a_technician_writes_them():
    spans: list[tuple[int, int]] = []
    for start, end in [(10, 20), (0, 5), (5, 9), (20, 21), (30, 31)]:
        add_span(spans, start, end)
    assert spans == [(0, 9), (10, 21), (30, 31)]
    assert span_text(spans) == "0-8, 10-20, 30"
    remove_span(spans, 3, 12)
    assert spans == [(0, 3), (12, 21), (30, 31)]
    assert span_text([]) == "none"


def scan_of(table: Table, first: dict[int, int], again: dict[int, int] | None = None) -> TableScan:
    scan = TableScan(table, 100, 125, words=dict(first), again=dict(again or first))
    for address in first:
        add_span(scan.answering, address, address + 1)
    return scan


def words_of(value: float, datatype: DataType, order: str) -> list[int]:
    byte_order, word_order = probe.ORDERS[order]
    return encode(value, datatype, byte_order, word_order)


@pytest.mark.parametrize("order", list(probe.ORDERS))
def test_a_float_reads_plausibly_and_stably_only_in_its_own_order(order):
    first = words_of(1234.5678, DataType.FLOAT32, order)
    again = words_of(1234.9, DataType.FLOAT32, order)  # moved a little between the reads
    scan = scan_of(Table.HOLDING, dict(enumerate(first)), dict(enumerate(again)))
    found = interpretations(scan, 0, 2)
    best = found[0]
    assert (best.type, best.order) == (DataType.FLOAT32, order)
    assert best.value == pytest.approx(1234.5678, rel=1e-6)
    assert best.hints == ("plausible", "stable")
    assert all(i.score < best.score for i in found[1:])
    (row,) = value_rows(scan)
    assert (row.width, row.best.order) == (2, order)


def test_the_value_table_lists_each_value_once_or_every_span_when_asked():
    words = words_of(12.5, DataType.FLOAT32, "ABCD") + words_of(-7.25, DataType.FLOAT32, "ABCD")
    scan = scan_of(Table.HOLDING, dict(enumerate(words)))
    report = probe.ProbeReport("127.0.0.1:1", ProbeSettings(), {Table.HOLDING: scan})
    rows = [line.split()[1] for line in probe.value_lines(report, 0)[3:]]
    assert rows == ["0-1", "2-3"]
    every = [line.split()[1] for line in probe.value_lines(report, 0, every_span=True)[3:]]
    assert every[:2] == ["0-1", "2-3"] and sorted(every[2:]) == ["0-3", "1-2"]
    capped = probe.value_lines(report, 1, every_span=True)
    assert capped[-1] == "  ... 3 more rows (--show 0 lists them all)"


def test_hints_name_what_is_wrong_with_an_interpretation():
    scan = scan_of(Table.INPUT, {0: 0x7FC0, 1: 0x0000, 2: 0x0001, 3: 0x0000})
    (nan,) = [i for i in interpretations(scan, 0, 2) if (i.type, i.order) == ("float32", "ABCD")]
    assert nan.hints == ("not finite",) and not nan.plausible
    tiny = next(i for i in interpretations(scan, 2, 2) if i.order == "ABCD" and i.type == "float32")
    assert not tiny.plausible  # 9.2e-41: what a wrong order or an integer read as float gives
    assert "out of range" in tiny.hints
    whole = scan_of(Table.INPUT, dict(enumerate(words_of(40.0, DataType.FLOAT32, "ABCD"))))
    assert interpretations(whole, 0, 2)[0].hints == ("plausible", "stable", "whole")


@pytest.mark.parametrize(
    ("words", "said", "picked"),
    [
        (words_of(12.5, DataType.FLOAT32, "CDAB"), "12.5", ("float32", "CDAB", 1.0)),
        (words_of(-3.75, DataType.FLOAT32, "DCBA"), "-3.75", ("float32", "DCBA", 1.0)),
        ([1053, 0], "105.3", ("uint16", "ABCD", 0.1)),  # a display showing 105.3 %
        ([0xFF85, 0], "-12.3", ("int16", "ABCD", 0.1)),  # negative: signed
        ([0x0001, 0xE240], "123456", ("uint32", "ABCD", 1.0)),
        ([0xE240, 0x0001], "123456", ("uint32", "CDAB", 1.0)),
        ([0, 1], "0", ("uint16", "ABCD", 1.0)),  # not the float 1.4e-45 ABCD reads
    ],
)
def test_expect_picks_the_type_order_and_scale_that_read_the_display(words, said, picked):
    scan = scan_of(Table.HOLDING, dict(enumerate(words)))
    found = probe.matches(parse_expect(f"x=40001:{said}"), {Table.HOLDING: scan})
    best = found[0]
    assert (best.type, best.order, best.scale) == picked
    assert best.register()["address"] == 0


def test_expect_of_a_bit_matches_its_state_only():
    scan = TableScan(Table.COIL, 10, 2000, answering=[(0, 2)], words={0: True, 1: False})
    on = probe.matches(parse_expect("p=coil:0:1"), {Table.COIL: scan})
    assert [(m.type, m.value) for m in on] == [(DataType.BOOL, True)]
    assert probe.matches(parse_expect("p=coil:1:1"), {Table.COIL: scan}) == []
    assert probe.matches(parse_expect("p=coil:5:1"), {Table.COIL: scan}) == []  # no answer


def test_a_draft_without_any_expected_tag_reads_every_answering_address_raw():
    coils = TableScan(Table.COIL, 10, 2000, answering=[(0, 2)], words={0: True, 1: False})
    holding = scan_of(Table.HOLDING, {0: 1, 1: 2, 5: 3})
    scans = {Table.HOLDING: holding, Table.COIL: coils}
    report = probe.ProbeReport("127.0.0.1:1", ProbeSettings(), scans)
    profile = Profile.model_validate(yaml.safe_load(draft_profile(report, kind="mystery")))
    assert profile.kind == "mystery"
    assert [(r.tag, r.table, r.address, r.type) for r in profile.registers] == [
        ("holding_0", Table.HOLDING, 0, DataType.UINT16),
        ("holding_1", Table.HOLDING, 1, DataType.UINT16),
        ("holding_5", Table.HOLDING, 5, DataType.UINT16),
        ("coil_0", Table.COIL, 0, DataType.BOOL),
        ("coil_1", Table.COIL, 1, DataType.BOOL),
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "give --host"),
        (["--host", "h", "--serial", "/dev/ttyS0"], "one of them"),
        (["--host", "h", "--unit", "248"], "a unit id is 0-247"),
        (["--host", "h", "--unit", "-1"], "a unit id is 0-247"),
        (["--host", "h", "--framer", "rtu", "--unit", "0"], "broadcast"),
        (["--serial", "/dev/ttyS0", "--unit", "0"], "broadcast"),
        (["--serial", "/dev/ttyS0", "--baud", "12345"], "standard rates"),
        (["--host", "h", "--port", "0"], "a TCP port is 1-65535"),
        (["--host", "h", "--tables", "holding,drums"], "drums"),
        (["--host", "h", "--max-address", "65536"], "an address is 0-65535"),
        (["--host", "h", "--timeout-s", "0"], "more than 0"),
        (["--host", "h", "--max-requests", "5"], "10-1000000"),
        (["--host", "h", "--expect", "x=40001"], "TAG=ADDRESS:VALUE"),
        (["--host", "h", "--expect", "x=40001:1", "--expect", "x=40003:2"], "more than once"),
        (["--host", "h", "--tables", "coils", "--expect", "x=40001:1"], "not in --tables"),
        (["--host", "h", "--kind", "a b"], "--kind"),
    ],
)
def test_usage_errors_exit_2_and_say_why(args, says, capsys):
    assert main(["probe", *args]) == 2
    assert says in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["probe", "--help"]) == 0
    assert "--expect" in capsys.readouterr().out


def test_a_device_that_cannot_be_reached_exits_1(capsys):
    port = free_port()  # nothing listens there
    assert main(["probe", "--host", "127.0.0.1", "--port", str(port), "--timeout-s", "0.5"]) == 1
    assert "cannot reach the device" in capsys.readouterr().err


# --- helpers for the integration tests -------------------------------------------------------


def defined_spans(profile: Profile, table: Table) -> list[tuple[int, int]]:
    """The addresses the profile defines in ``table``, as merged spans."""
    spans: list[tuple[int, int]] = []
    for reg in profile.registers:
        if reg.table is table:
            add_span(spans, reg.address, reg.address + reg.count)
    return spans


def holes(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(a[1], b[0]) for a, b in itertools.pairwise(spans)]


def run_probe(port: int, settings: ProbeSettings, timeout_s: float = 1.0) -> probe.ProbeReport:
    async def go() -> probe.ProbeReport:
        connection = ModbusConnection.tcp("127.0.0.1", port, timeout_s)
        await connection.connect()
        try:
            return await probe.probe(connection, settings)
        finally:
            connection.close()

    return asyncio.run(go())


def read_words(port: int, table: Table, address: int, count: int) -> list:
    async def go() -> list:
        connection = ModbusConnection.tcp("127.0.0.1", port, 2.0)
        await connection.connect()
        try:
            result = await connection.read(table, address, count, 1)
        finally:
            connection.close()
        assert isinstance(result, list), result
        return result

    return asyncio.run(go())


def same_values(draft: Profile, shipped: Profile, port: int) -> dict[str, object]:
    """Decode every draft tag's registers with the draft and with the shipped profile;
    the values, which must be the same."""
    values = {}
    for reg in draft.registers:
        mine = shipped.register(reg.tag)
        assert (reg.table, reg.address) == (mine.table, mine.address), reg.tag
        data = read_words(port, reg.table, reg.address, max(reg.count, mine.count))
        ours, theirs = decode_value(reg, data, 0), decode_value(mine, data, 0)
        assert ours == theirs, (reg.tag, ours, theirs)
        values[reg.tag] = ours
    return values


@contextmanager
def simulator(tmp_path: Path, *args: str) -> Iterator[Simulator]:
    sim = start_simulator(tmp_path, "--no-demo-overload", *args)
    try:
        yield sim
    finally:
        sim.program.stop()


# --- integration: the simulators -------------------------------------------------------------

CRANE_EXPECT = [
    "hook_load=40001:12.5",
    "safe_working_load=40003:25",
    "boom_angle=holding:4:55.25",
    "wind_speed=40007:7.75",
    "utilisation=40009:50.0",
    "boom_length=400011:40",
    "radius=40013:24.8",
    "slew_angle=14:135.5",
    "wind_gust=40019:10.25",
    "hydraulic_pressure=40021:169.25",
    "hoist_motor_current=40023:147.5",
    "hydraulic_oil_temperature=40025:48.5",
    "status_word=40026:17",
    "running_hours=40027:12345.5",
    "lift_count=40029:48213",
    "gearbox_vibration=30001:2.25",
    "overload_cutout=10001:0",
    "power_on=discrete:1:1",
]


@pytest.mark.integration
def test_the_crane_probed_gives_its_ranges_holes_and_a_draft_that_reads_as_the_profile(
    tmp_path, capsys
):
    with simulator(tmp_path) as sim:
        http_json(f"{sim.control}/hold", dict(EXACT_VALUES))
        out = tmp_path / "crane-draft.yaml"
        args = ["probe", "--host", "127.0.0.1", "--port", str(sim.port), "--max-address", "99"]
        args += [f"--expect={e}" for e in CRANE_EXPECT] + ["--output", str(out)]
        assert main(args) == 0
        printed = capsys.readouterr().out
        draft = load_profile(str(out))  # the agent's own loader takes it as it is
        values = same_values(draft, CRANE, sim.port)
    assert "holding  answering  0-8, 10-29" in printed
    assert "refused    9, 30-45" in printed  # the hole, then the tail read alone ...
    assert "sampled" in printed  # ... and sampled
    assert "input    answering  0\n" in printed
    assert "discrete answering  0-4\n" in printed
    assert "coil     answering  none" in printed
    assert "Summary:" in printed and "requests" in printed
    assert {reg.tag for reg in draft.registers} == {e.split("=")[0] for e in CRANE_EXPECT}
    for reg in draft.registers:
        shipped = CRANE.register(reg.tag)
        assert (reg.byte_order, reg.word_order, reg.scale) == (
            shipped.byte_order,
            shipped.word_order,
            shipped.scale,
        ), reg.tag
    assert values["hook_load"] == 12.5 and values["running_hours"] == 12345.5
    assert values["utilisation"] == 50.0 and values["power_on"] is True


def test_crane_ranges_match_the_profile_exactly():
    """What the crane test asserts as text, from the profile: so the profile and the
    expected ranges cannot drift apart unnoticed."""
    assert defined_spans(CRANE, Table.HOLDING) == [(0, 9), (10, 30)]
    assert holes(defined_spans(CRANE, Table.HOLDING)) == [(9, 10)]
    assert defined_spans(CRANE, Table.INPUT) == [(0, 1)]
    assert defined_spans(CRANE, Table.DISCRETE) == [(0, 5)]
    assert defined_spans(CRANE, Table.COIL) == []


SMALL_PINS = {
    "pressure_1": 12.5,
    "pressure_2": -3.75,
    "flow_1": 31.25,
    "flow_2": 1234.5,
    "temperature": -12.3,
    "counter": 123456,
    "running": True,
    "fault": False,
    "remote": True,
    "pump_enable": True,
    "heater_enable": False,
}
SMALL_EXPECT = [
    "pressure_1=30001:12.5",
    "pressure_2=input:2:-3.75",
    "flow_1=300005:31.25",
    "flow_2=input:6:1234.5",
    "temperature=40001:-12.3",
    "counter=holding:1:123456",
    "pump_enable=coil:0:1",
    "heater_enable=coil:1:off",
]


@pytest.mark.integration
def test_small_plc_with_cdab_floats_and_a_hole_every_order_found(tmp_path):
    with simulator(tmp_path, "--profile", "small11") as sim:
        http_json(f"{sim.control}/hold", SMALL_PINS)
        settings = ProbeSettings(
            max_address=63,
            expectations=tuple(parse_expect(e) for e in SMALL_EXPECT),
            settle_s=0.2,
        )
        report = run_probe(sim.port, settings)
        draft_text = draft_profile(report, kind="small")
        path = tmp_path / "small-draft.yaml"
        path.write_text(draft_text)
        draft = load_profile(str(path))
        values = same_values(draft, SMALL, sim.port)
    for table in Table:
        assert report.scans[table].answering == defined_spans(SMALL, table), table
    holding = report.scans[Table.HOLDING]
    assert holes(holding.answering) == [(3, 10)]
    assert holding.refused[0] == (3, 10)  # the hole, every address read alone
    assert not report.cut and not report.failure
    chosen = {m.expectation.tag: m for m in report.chosen}
    assert set(chosen) == {e.split("=")[0] for e in SMALL_EXPECT}
    for reg in draft.registers:
        shipped = SMALL.register(reg.tag)
        assert (reg.type, reg.byte_order, reg.word_order, reg.scale) == (
            shipped.type,
            shipped.byte_order,
            shipped.word_order,
            shipped.scale,
        ), reg.tag
    assert chosen["flow_1"].order == "CDAB" and chosen["pressure_1"].order == "ABCD"
    assert values == {tag: SMALL_PINS[tag] for tag in values}
    # the value table, without --expect: each input float's likeliest reading is its order
    rows = {row.address: row for row in value_rows(report.scans[Table.INPUT])}
    assert {a: (rows[a].best.type, rows[a].best.order) for a in rows} == {
        0: (DataType.FLOAT32, "ABCD"),
        2: (DataType.FLOAT32, "ABCD"),
        4: (DataType.FLOAT32, "CDAB"),
        6: (DataType.FLOAT32, "CDAB"),
    }
    # the hints left in the draft: holding 10 (the status word) answers, not identified
    assert "# - {tag: holding_10, table: holding, address: 10, type: uint16}" in draft_text


@pytest.mark.integration
def test_rtu_over_tcp_is_probed_and_a_unit_nobody_serves_fails_with_exit_1(tmp_path, capsys):
    with simulator(tmp_path, "--framer", "rtu") as sim:
        args = ["probe", "--host", "127.0.0.1", "--port", str(sim.port), "--framer", "rtu"]
        args += ["--tables", "holding", "--max-address", "40", "--settle-s", "0"]
        assert main([*args, "--output", str(tmp_path / "draft.yaml")]) == 0
        found = capsys.readouterr().out
        assert main([*args, "--unit", "7", "--timeout-s", "0.1"]) == 1
        failed = capsys.readouterr().out
    assert "holding  answering  0-8, 10-29" in found
    assert "Probe failed: unit 7 does not answer (8 requests in a row: no reply)" in failed


def spread_profile(path: Path) -> Path:
    """holding 0-9 (uint16), 20-27 (4 x float32 CDAB), 500-531 (32 x uint16): two holes
    and a range deep in a refused stretch, which only sampling reaches cheaply."""
    regs = [{"tag": f"a{i}", "table": "holding", "address": i, "type": "uint16"} for i in range(10)]
    cdab = {"table": "holding", "type": "float32", "word_order": "little"}
    regs += [{"tag": f"f{i}", "address": 20 + 2 * i, **cdab} for i in range(4)]
    regs += [
        {"tag": f"b{i}", "table": "holding", "address": 500 + i, "type": "uint16"}
        for i in range(32)
    ]
    regs.append({"tag": "c0", "table": "coil", "address": 3, "type": "bool"})
    path.write_text(yaml.safe_dump({"kind": "spread", "registers": regs}, sort_keys=False))
    return path


@pytest.mark.integration
def test_a_range_deep_in_a_refused_stretch_is_found_by_sampling_with_exact_edges(tmp_path):
    profile = spread_profile(tmp_path / "spread.yaml")
    with simulator(tmp_path, "--profile", str(profile)) as sim:
        report = run_probe(sim.port, ProbeSettings(max_address=999, settle_s=0))
        exhaustive = run_probe(
            sim.port, ProbeSettings(tables=(Table.HOLDING,), max_address=599, stride=1, settle_s=0)
        )
    holding = report.scans[Table.HOLDING]
    assert holding.answering == [(0, 10), (20, 28), (500, 532)]
    assert report.scans[Table.COIL].answering == [(3, 4)]
    assert report.scans[Table.INPUT].answering == []
    assert (10, 20) in holding.refused  # a short hole: every address read alone
    assert (499, 500) in holding.refused  # the address before a sampled run, exactly
    assert holding.sampled and not holding.unprobed
    assert report.requests < 600  # 4 tables x 1000 addresses, one by one, would be 4000
    assert exhaustive.scans[Table.HOLDING].answering == holding.answering
    assert exhaustive.scans[Table.HOLDING].sampled == []  # stride 1: every address alone


# --- integration: a Modbus TCP device of this file ---------------------------------------------


class Device:
    """A Modbus TCP device on loopback: ``valid`` addresses per table answer (a register
    holds its address, a bit is on at multiples of 3); others get exception 02, or no
    reply at all with ``silent``. ``max_count``: larger reads get ``too_many`` (03, or 02
    as some devices answer). ``requests`` records (function, address, count) of each."""

    def __init__(
        self,
        valid: dict[Table, set[int]],
        *,
        max_count: int = 0,
        too_many: int = 3,
        silent: bool = False,
        die_after: int = 0,
    ) -> None:
        self.valid = valid
        self.max_count = max_count
        self.too_many = too_many
        self.silent = silent
        self.die_after = die_after
        self.requests: list[tuple[int, int, int]] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task, asyncio.StreamWriter] = {}

    @asynccontextmanager
    async def serving(self):
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for writer in self._handlers.values():
                writer.close()  # each handler sees its connection end, and returns
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            await self._answer_all(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer_all(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        while True:
            tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
            pdu = await reader.readexactly(length - 1)
            self.requests.append((pdu[0], *struct.unpack(">HH", pdu[1:5])))
            if self.die_after and len(self.requests) >= self.die_after:
                assert self._server is not None
                self._server.close()  # nobody can connect again
                return
            answer = self._answer(pdu)
            if answer is not None:
                writer.write(struct.pack(">HHHB", tid, 0, len(answer) + 1, unit) + answer)

    def _answer(self, pdu: bytes) -> bytes | None:
        function, address, count = pdu[0], *struct.unpack(">HH", pdu[1:5])
        table = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}.get(function)
        if table is None:
            return bytes([function | 0x80, 1])
        if self.max_count and count > self.max_count:
            return bytes([function | 0x80, self.too_many])
        if not all(a in self.valid.get(table, ()) for a in range(address, address + count)):
            return None if self.silent else bytes([function | 0x80, 2])
        if table.is_bits:
            bits = sum(1 << i for i in range(count) if (address + i) % 3 == 0)
            data = bits.to_bytes((count + 7) // 8, "little")
        else:
            data = struct.pack(f">{count}H", *range(address, address + count))
        return bytes([function, len(data)]) + data


def probe_device(device: Device, settings: ProbeSettings, timeout_s: float = 1.0):
    async def go() -> probe.ProbeReport:
        async with device.serving():
            connection = ModbusConnection.tcp("127.0.0.1", device.port, timeout_s)
            await connection.connect()
            try:
                return await probe.probe(connection, settings)
            finally:
                connection.close()

    return asyncio.run(go())


@pytest.mark.integration
@pytest.mark.parametrize("too_many", [3, 2])
def test_a_device_that_reads_few_registers_at_once_is_read_in_smaller_blocks(too_many):
    device = Device(
        {Table.HOLDING: set(range(300)) - {100}, Table.COIL: set(range(50))},
        max_count=20,
        too_many=too_many,
    )
    report = probe_device(device, ProbeSettings(max_address=399, settle_s=0))
    assert report.scans[Table.HOLDING].answering == [(0, 100), (101, 300)]
    assert report.scans[Table.HOLDING].refused[0] == (100, 101)
    assert report.scans[Table.COIL].answering == [(0, 50)]
    assert 10 <= report.scans[Table.HOLDING].max_count <= 20  # halved from 125 on 03
    note = "exception 03 for" if too_many == 3 else "reads of more than 20 refused"
    assert any(note in text for text in report.scans[Table.HOLDING].notes)
    assert max(count for _f, _a, count in device.requests[-10:]) <= 20
    assert not report.failure


@pytest.mark.integration
def test_only_read_function_codes_leave_the_probe():
    device = Device({t: set(range(40)) - {7, 8} for t in Table})
    expectations = (parse_expect("x=40001:0"), parse_expect("y=coil:0:1"))
    report = probe_device(device, ProbeSettings(max_address=99, expectations=expectations))
    assert {function for function, _a, _c in device.requests} == {1, 2, 3, 4}
    for table in Table:
        assert report.scans[table].answering == [(0, 7), (9, 40)]


@pytest.mark.integration
def test_a_device_silent_on_missing_addresses_is_probed_and_its_silence_reported():
    device = Device({Table.HOLDING: set(range(10)) | set(range(20, 30))}, silent=True)
    settings = ProbeSettings(tables=(Table.HOLDING,), max_address=35, settle_s=0)
    report = probe_device(device, settings, timeout_s=0.05)
    holding = report.scans[Table.HOLDING]
    assert holding.answering == [(0, 10), (20, 30)]
    assert holding.silent == [(10, 20), (30, 36)]
    assert not report.failure and report.silent_seen
    assert any("silent" in line for line in probe.summary_lines(report))


@pytest.mark.integration
def test_a_device_that_goes_away_mid_probe_is_reported_not_a_crash():
    device = Device({Table.HOLDING: set(range(1000))}, die_after=5)
    settings = ProbeSettings(tables=(Table.HOLDING,), max_address=999, stride=1, settle_s=0)
    report = probe_device(device, settings)
    assert "link lost" in report.failure
    assert report.scans[Table.HOLDING].answering == [(0, 500)]  # 4 blocks of 125 read
    assert report.scans[Table.HOLDING].unprobed == [(500, 1000)]
    lines = probe.report_lines(report)
    assert any(line.startswith("Probe failed: link lost") for line in lines)


@pytest.mark.integration
def test_the_request_budget_cuts_the_search_and_says_what_was_not_probed():
    device = Device({Table.HOLDING: set(range(10)), Table.COIL: set(range(10))})
    settings = ProbeSettings(max_address=9999, stride=1, max_requests=100, settle_s=0)
    report = probe_device(device, settings)
    assert report.requests <= 100
    assert "request budget" in report.cut
    for table in Table:
        scan = report.scans[table]
        assert scan.unprobed and scan.unprobed[0][1] == 10_000, table
    assert report.scans[Table.HOLDING].answering == [(0, 10)]
    assert any("Search cut short: request budget" in line for line in probe.report_lines(report))


@pytest.mark.integration
def test_an_expected_value_nothing_reads_exits_3_and_says_so(capsys):
    device = Device({Table.HOLDING: set(range(4))})

    async def go() -> int:
        async with device.serving():
            args = ["probe", "--host", "127.0.0.1", "--port", str(device.port)]
            args += ["--tables", "holding", "--max-address", "20", "--settle-s", "0"]
            args += ["--expect", "speed=40002:99.5", "--expect", "far=40011:1"]
            return await asyncio.to_thread(main, args)

    assert asyncio.run(go()) == 3
    out = capsys.readouterr().out
    assert "speed = 99.5 at holding 1 (40002): NO MATCH: no type" in out
    assert "far = 1 at holding 10 (40011): NO MATCH: the address does not answer" in out
    assert out.splitlines()[0].startswith("# Addresses")  # stdout is the draft: report commented
    draft = yaml.safe_load(out)
    assert draft["kind"] == "probed" and len(draft["registers"]) == 4  # raw words


def test_expectation_where_names_the_modicon_number():
    assert parse_expect("a=40001:1").where == "holding 0 (40001)"
    assert parse_expect("a=30010:1").where == "input 9 (30010)"
    assert parse_expect("a=coil:4:1").where == "coil 4"
    assert parse_expect("a=4:1").where == "address 4 (holding or input)"
    assert isinstance(parse_expect("a=4:1"), Expectation)
    assert math.isclose(parse_expect("a=4:1").tolerance, 0.5)


def test_orders_are_the_codecs_byte_and_word_orders():
    assert probe.ORDERS["CDAB"] == (Order.BIG, Order.LITTLE)
    assert probe.ORDERS["BADC"] == (Order.LITTLE, Order.BIG)
