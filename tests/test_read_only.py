"""Read-only by design (issue 19, docs/read-only.md): no Modbus write ever leaves the agent.

Three layers of proof:

* The Modbus boundary (agent/modbus.py) cannot express a write: requests are built from
  the four register tables only, a function code of a write is refused before a byte
  goes out, and the connection has no method that writes.
* No agent code calls a pymodbus method that sends anything but the four reads, imports
  a pymodbus PDU class of another function code, or spells a write's function code
  where function codes are chosen (an AST scan, against the installed pymodbus).
* A whole run of the real agent (its own process, Sparkplug wire, edge alarm rules)
  against a crane, a rig and a generic PLC (derrick-sim; the generic one over RTU over
  TCP), through :class:`devstack.recorder.Recorder`, while every scenario, sensor fault
  and link fault the simulators offer is switched on and off and a Sparkplug host sends
  Rebirth and write commands: every request that left the agent is a read (1-4), and
  there were plenty of them.
* The probe (``derrick-agent probe``, agent/probe.py), which reads every address of all
  four tables it can find, through the recorder over both framings: reads only.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import json
import re
import time
import urllib.error
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

import agent.modbus as boundary
from agent import probe
from agent.modbus import ModbusConnection
from derrick.plc.profile import Table, load_profile
from derrick.wire import sparkplug as sp
from devstack.programs import Program, Simulator, http_json, start_simulator, wait_for, write_yaml
from devstack.recorder import ModbusRequest, Recorder
from devstack.tap import Received, Tap
from simulators import modbus_server
from simulators.crane import CraneModel
from simulators.generic import GenericModel
from simulators.modbus_server import TcpEndpoint
from simulators.plc import SimulatedPlc
from simulators.rig import RigModel

REPO = Path(__file__).resolve().parent.parent
AGENT_DIR = REPO / "agent"

READ_CODES = frozenset({1, 2, 3, 4})
WRITE_CODES = (5, 6, 15, 16, 22, 23)  # single/multiple coils and registers, mask, read/write
TABLE_CODES = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
READ_METHODS = frozenset(
    {"read_coils", "read_discrete_inputs", "read_holding_registers", "read_input_registers"}
)


def table_codes(profile: str) -> set[int]:
    """The function codes reading every table the profile has registers in."""
    return {TABLE_CODES[reg.table] for reg in load_profile(profile).registers}


def assert_only_reads(requests: list[ModbusRequest], where: str) -> Counter[int | None]:
    codes = Counter(request.function_code for request in requests)
    assert requests, f"{where}: no request recorded at all"
    not_reads = [r for r in requests if r.function_code not in READ_CODES]
    assert not not_reads, f"{where}: requests other than reads left the agent: {not_reads[:5]}"
    malformed = [r for r in requests if not r.well_formed]
    assert not malformed, f"{where}: bytes that are no Modbus request: {malformed[:5]}"
    return codes


# --- the recorder sees what it must see ---------------------------------------------------


@pytest.mark.parametrize("framer", ["socket", "rtu"])
def test_the_recorder_records_writes_when_they_are_sent(framer):
    """The negative control: pymodbus' own writes through the recorder are recorded with
    their function codes, unit and address, framed as pymodbus frames them (the
    recorder checks the RTU CRC). Nothing answers: the device is a sink."""

    async def scenario() -> list[ModbusRequest]:
        sinks: list[asyncio.StreamWriter] = []
        sink_started = asyncio.Event()

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sinks.append(writer)
            sink_started.set()
            with contextlib.suppress(ConnectionError):
                while await reader.read(4096):
                    pass

        server = await asyncio.start_server(sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with Recorder(port, framer=framer) as recorder:
            client = AsyncModbusTcpClient(
                "127.0.0.1",
                port=recorder.port,
                framer=FramerType.RTU if framer == "rtu" else FramerType.SOCKET,
                timeout=1,
                retries=0,
            )
            assert await client.connect()
            quiet = {"device_id": 7, "no_response_expected": True}
            await client.write_coil(100, True, **quiet)
            await client.write_register(101, 0xBEEF, **quiet)
            await client.write_coils(102, [True, False, True], **quiet)
            await client.write_registers(103, [1, 2, 3, 4], **quiet)
            await client.mask_write_register(address=104, and_mask=0xF0F0, or_mask=1, **quiet)
            await client.readwrite_registers(
                read_address=105, read_count=2, write_address=106, values=[9, 9], **quiet
            )
            await client.read_holding_registers(107, count=2, **quiet)
            await asyncio.to_thread(
                wait_for, lambda: recorder.count() >= 7, 10, "seven requests recorded"
            )
            await asyncio.wait_for(sink_started.wait(), 10)  # accepted: closed below
            client.close()
            requests = recorder.requests()
        server.close()
        for writer in sinks:
            writer.transport.abort()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # the aborted sockets close on the next loop turns
        return requests

    requests = asyncio.run(scenario())
    assert [r.function_code for r in requests] == [5, 6, 15, 16, 22, 23, 3]
    assert [r.address for r in requests] == [100, 101, 102, 103, 104, 105, 107]
    assert {r.unit_id for r in requests} == {7}
    assert all(r.well_formed for r in requests)
    assert requests[1].count == 0xBEEF  # a single write's second field is its value
    assert requests[-1].count == 2
    if framer == "socket":
        assert len({r.transaction_id for r in requests}) == 7
    else:
        assert {r.transaction_id for r in requests} == {None}


# --- the boundary -------------------------------------------------------------------------


def test_the_tables_are_the_only_requests_the_boundary_knows():
    """Four tables, four read codes: the module's function code table has nothing else."""
    assert set(Table) == set(TABLE_CODES)
    assert boundary._FUNCTION_CODE == TABLE_CODES


def test_the_connection_has_no_method_for_writing():
    """Neither the class nor its instances (Modbus TCP, RTU over TCP, serial) offer a way
    to send anything but a read: no method is named for a write, a raw frame or a request
    object, none takes values, data or a function code, and read() takes a table."""
    connections = [
        ModbusConnection.tcp("127.0.0.1", 502, 1.0),
        ModbusConnection.tcp("127.0.0.1", 502, 1.0, framer="rtu"),
        ModbusConnection.serial("/dev/ttyS0", 1.0),
    ]
    forbidden = re.compile(r"write|execute|diag|mask|send|raw|pdu|request|command|force")
    payload = re.compile(
        r"^(values?|data|payload|frame|pdu|function(_code)?|codes?|fc|request|registers?|"
        r"bits|coils?|masks?|and_mask|or_mask)$"
    )
    for holder in [ModbusConnection, *connections]:
        public = [name for name in dir(holder) if not name.startswith("_")]
        assert not [name for name in public if forbidden.search(name)], public
        for name in public:
            method = getattr(holder, name)
            if not callable(method):
                continue
            parameters = [p for p in inspect.signature(method).parameters if p != "self"]
            assert not [p for p in parameters if payload.search(p)], (name, parameters)
        assert "read" in public
        read = [p for p in inspect.signature(holder.read).parameters if p != "self"]
        assert read[:4] == [
            "table",
            "address",
            "count",
            "unit_id",
        ]


@pytest.mark.parametrize("framer", ["socket", "rtu"])
def test_the_boundary_builds_only_read_requests(framer):
    """Against an in-process rig PLC (all four tables) through the recorder: each table
    is read with its own read code; a write's function code in place of a table is
    refused before anything is sent, and the connection is still fine afterwards."""
    profile = load_profile("rig")
    refused: dict[object, str] = {}

    async def scenario() -> tuple[list[list[ModbusRequest]], list[ModbusRequest]]:
        plc = SimulatedPlc(profile, RigModel(seed=0, demo_overload=False))
        async with modbus_server.serve({1: plc}, TcpEndpoint("127.0.0.1", 0, framer)) as bound:
            with Recorder(bound.port, framer=framer) as recorder:
                connection = ModbusConnection.tcp("127.0.0.1", recorder.port, 2.0, framer=framer)
                await connection.connect()
                try:
                    per_table = []
                    for table in TABLE_CODES:
                        before = recorder.count()
                        result = await connection.read(table, 0, 2, 1)
                        assert isinstance(result, list), (table, result)
                        await asyncio.to_thread(
                            wait_for, lambda n=before: recorder.count() > n, 5, f"{table} read"
                        )
                        per_table.append(recorder.requests()[before:])
                    before = recorder.count()
                    for code in [*WRITE_CODES, *(str(c) for c in WRITE_CODES), "write", None]:
                        try:
                            await connection.read(code, 0, 1, 1)  # type: ignore[arg-type]
                        except Exception as exc:
                            refused[code] = type(exc).__name__
                    await asyncio.sleep(0.2)  # anything sent would be recorded by now
                    assert recorder.count() == before, recorder.requests()[before:]
                    assert isinstance(await connection.read(Table.HOLDING, 0, 2, 1), list)
                    await asyncio.to_thread(
                        wait_for, lambda: recorder.count() > before, 5, "the read after"
                    )
                    return per_table, recorder.requests()
                finally:
                    connection.close()

    per_table, everything = asyncio.run(scenario())
    assert [[r.function_code for r in requests] for requests in per_table] == [
        [code] for code in TABLE_CODES.values()
    ]
    assert all((r.unit_id, r.address, r.count) == (1, 0, 2) for reqs in per_table for r in reqs)
    assert set(refused) == {*WRITE_CODES, *(str(c) for c in WRITE_CODES), "write", None}
    assert set(refused.values()) == {"ValueError"}  # "the agent only reads (function codes 1-4)"
    assert Counter(r.function_code for r in everything) == {1: 1, 2: 1, 3: 2, 4: 1}
    assert_only_reads(everything, f"boundary over {framer}")


# --- no agent code reaches for a write ----------------------------------------------------


def _request_methods() -> set[str]:
    """The pymodbus client methods that send a request: everything its request mixin
    defines, except the register <-> value converters (which send nothing)."""
    return {
        name
        for name, value in vars(ModbusClientMixin).items()
        if inspect.isfunction(value) and not name.startswith(("_", "convert_"))
    }


def _imports_pymodbus(tree: ast.AST) -> bool:
    return any(
        (
            isinstance(node, ast.Import)
            and any(a.name.split(".")[0] == "pymodbus" for a in node.names)
        )
        or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pymodbus")
        for node in ast.walk(tree)
    )


# Names under which function codes are chosen (not exception codes: RETRIED_CODES = (4, 6)
# in agent/probe.py are "device failure" and "busy" replies).
_FUNCTION_CODE_NAME = re.compile(r"func|(^|_)fcs?($|_)|opcode", re.IGNORECASE)


def _named(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _named(node.value)
    if isinstance(node, ast.Call):
        return _named(node.func)
    return ""


def _write_code_literals(node: ast.AST) -> list[int]:
    return [
        sub.value
        for sub in ast.walk(node)
        if isinstance(sub, ast.Constant)
        and type(sub.value) is int
        and sub.value in {*WRITE_CODES, 21}  # 21: write file record
    ]


def _violations(path: Path, tree: ast.AST, forbidden_methods: set[str]) -> list[str]:
    where = path.relative_to(REPO)
    found = []
    pymodbus_here = _imports_pymodbus(tree)
    # execute() is also sqlite's: it counts only where pymodbus is imported.
    methods = forbidden_methods if pymodbus_here else forbidden_methods - {"execute"}
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and node.attr in methods:
            found.append(f"{where}:{line}: .{node.attr} (a pymodbus request other than a read)")
        elif isinstance(node, ast.Constant) and node.value in methods:
            found.append(f"{where}:{line}: {node.value!r} (getattr of a pymodbus write?)")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pymodbus"):
            module = __import__(node.module, fromlist=["*"])
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if (
                    isinstance(value, type)
                    and issubclass(value, ModbusPDU)
                    and 0 < value.function_code < 0x80
                    and value.function_code not in READ_CODES
                ):
                    found.append(
                        f"{where}:{line}: imports {alias.name} "
                        f"(function code {value.function_code})"
                    )
        # A write's function code where function codes are chosen: assigned to a name
        # that says function/fc/code, passed as such a keyword, or compared with one.
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is not None and any(
                _FUNCTION_CODE_NAME.search(_named(t)) for t in targets
            ):
                found += [f"{where}:{line}: {c} assigned" for c in _write_code_literals(node.value)]
        elif isinstance(node, ast.keyword) and _FUNCTION_CODE_NAME.search(node.arg or ""):
            found += [f"{where}:{line}: {c} passed" for c in _write_code_literals(node.value)]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_FUNCTION_CODE_NAME.search(_named(side)) for side in sides):
                found += [f"{where}:{line}: {c} compared" for c in _write_code_literals(node)]
    return found


def test_no_agent_code_calls_a_pymodbus_write_or_spells_a_write_code():
    """An AST scan of agent/ (every module, the boundary included).

    Forbidden: any pymodbus client method that sends a request other than the four
    reads (taken from the installed pymodbus: writes, mask write, read/write, file
    records, diagnostics, execute() of a hand-made PDU) as an attribute or a getattr
    string; importing a pymodbus PDU class of any other function code; a write's
    function code (5, 6, 15, 16, 21, 22, 23) where function codes are chosen. And the
    boundary is the only agent module that imports pymodbus, as its docstring says, and
    the Sparkplug command handler cannot reach it.
    """
    request_methods = _request_methods()
    assert request_methods >= READ_METHODS  # the scan knows pymodbus' names
    assert {"write_register", "write_coil", "execute"} <= request_methods
    forbidden = request_methods - READ_METHODS
    modules = sorted(AGENT_DIR.rglob("*.py"))
    assert AGENT_DIR / "modbus.py" in modules
    violations: list[str] = []
    importers = []
    for path in modules:
        tree = ast.parse(path.read_text(), str(path))
        violations += _violations(path, tree, forbidden)
        if _imports_pymodbus(tree):
            importers.append(path.name)
        if path.name == "sparkplug.py":
            imported = {
                node.module
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module
            } | {
                a.name
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for a in node.names
            }
            assert not {"agent.modbus", "agent.poll"} & imported, imported
    assert not violations, "\n".join(violations)
    assert importers == ["modbus.py"], f"agent modules importing pymodbus: {importers}"


def test_the_scan_finds_a_write_when_there_is_one(tmp_path):
    """The scan's negative control: each kind of write it must catch, caught."""
    source = (
        "from pymodbus.client import AsyncModbusTcpClient\n"
        "from pymodbus.pdu.register_message import WriteSingleRegisterRequest\n"
        "async def f(client):\n"
        "    await client.write_register(0, 1)\n"
        "    await getattr(client, 'write_coils')(0, [True])\n"
        "    await client.execute(False, WriteSingleRegisterRequest())\n"
        "FUNCTION_CODES = {'holding': 3, 'preset': 16}\n"
        "def g(function):\n"
        "    return function == 6\n"
    )
    path = AGENT_DIR / "planted.py"  # only its name is used; nothing is written there
    found = _violations(path, ast.parse(source), _request_methods() - READ_METHODS)
    assert len(found) == 6, found
    for text in ("write_register", "'write_coils'", "execute", "WriteSingleRegisterRequest"):
        assert any(text in line for line in found), (text, found)
    assert any("16 assigned" in line for line in found), found
    assert any("6 compared" in line for line in found), found


# --- a whole run of the agent -------------------------------------------------------------

DWELL_S = 0.5  # a scenario or fault stays on for this long: two polls at 0.2 s and more
EDGE_RULES = {
    "rules": [
        {
            "name": "ro_crane_overload",
            "kind": "crane",
            "type": "high",
            "tag": "utilisation",
            "limit": 100,
            "priority": "critical",
            "message": "overload {value:.0f} %",
        },
        {
            "name": "ro_rig_h2s",
            "kind": "rig",
            "type": "high",
            "tag": "h2s",
            "limit": 10,
            "priority": "high",
            "message": "H2S {value:.1f} ppm",
        },
    ]
}
# name, profile, transport, a numeric tag for the sensor faults
DEVICES = [
    ("lmi", "crane", "tcp", "wind_speed"),
    ("rig", "rig", "tcp", "h2s"),
    ("plc", "small11", "rtu-over-tcp", "pressure_1"),
]
MODELS = {"crane": CraneModel, "rig": RigModel, "small11": GenericModel}


def post(sim: Simulator, path: str, body: dict) -> dict:
    answer = http_json(f"{sim.control}{path}", body)
    assert "took_effect_ns" in answer, (path, body, answer)
    return answer


def offered_scenarios(sim: Simulator) -> list[str]:
    """What the running simulator offers: its answer to a scenario it has not."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        http_json(f"{sim.control}/scenario", {"name": "no-such-scenario", "active": True})
    assert refused.value.code == 400
    error = json.loads(refused.value.read())["error"]
    listed = re.search(r"one of \[(.*?)\]", error)
    assert listed, error
    return re.findall(r"'([^']+)'", listed.group(1))


def exercise(sim: Simulator, profile: str, sensor_tag: str) -> list[str]:
    """Switch on and off every scenario the simulator offers, its overload, two sensor
    faults, and the link faults (late replies, silence, a reset); what was done."""
    done = []
    scenarios = offered_scenarios(sim)
    assert scenarios == list(getattr(MODELS[profile], "SCENARIOS", ())), scenarios
    steps: list[tuple[str, dict, dict]] = [
        ("/scenario", {"name": name, "active": True}, {"name": name, "active": False})
        for name in scenarios
    ]
    if getattr(MODELS[profile], "LOAD_ALARM", None):
        steps.append(("/overload", {"active": True}, {"active": False}))
    for fault in ("stuck", "out_of_range"):
        steps.append(
            ("/sensor", {"tag": sensor_tag, fault: True}, {"tag": sensor_tag, fault: False})
        )
    steps += [
        ("/fault", {"latency_s": 0.8}, {"latency_s": 0}),  # past the agent's 0.5 s timeout
        ("/fault", {"silent": True}, {"silent": False}),
    ]
    for path, on, off in steps:
        post(sim, path, on)
        time.sleep(DWELL_S if path != "/fault" else 2 * DWELL_S)
        post(sim, path, off)
        done.append(f"{path} {on}")
    post(sim, "/fault", {"reset": True})
    done.append("/fault reset")
    return done


def agent_config(tmp_path: Path, broker_port: int, site: str, ports: dict[str, int]) -> Path:
    rules = write_yaml(tmp_path / "edge-rules.yaml", EDGE_RULES)
    devices = [
        {
            "name": name,
            "asset": f"{name}-ro",
            "profile": profile,
            "transport": transport,
            "host": "127.0.0.1",
            "port": ports[name],
            "interval_s": 0.2,
            "timeout_s": 0.5,
            "breaker_open_s": 1,
        }
        for name, profile, transport, _tag in DEVICES
    ]
    return write_yaml(
        tmp_path / "agent.yaml",
        {
            "agent": {"id": "gw-ro", "site": site},
            "broker": {"host": "127.0.0.1", "port": broker_port, "reconnect_max_s": 2},
            "format": "sparkplug",
            "devices": devices,
            "spool": {"path": str(tmp_path / "spool.db")},
            "alarms": {"rules": [str(rules)]},
            "log": {"format": "json"},
        },
    )


def of_type(messages: list[Received], kind: sp.MessageType) -> list[tuple[str, sp.pb.Payload]]:
    out = []
    for message in messages:
        topic = sp.parse_sparkplug_topic(message.topic)
        if isinstance(topic, sp.SparkplugTopic) and topic.type is kind:
            out.append((topic.device or "", sp.decode_payload(message.payload)))
    return out


def log_events(program: Program) -> list[dict]:
    events = []
    for line in program.log_path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def write_commands(site: str, births: dict[str, sp.pb.Payload]) -> list[tuple[str, bytes]]:
    """What a Sparkplug host could send to make an edge node write: DCMD writes of a
    coil, a register and a status by name and by alias, a device Rebirth, NCMD writes,
    and a Rebirth with a write riding along."""
    commands = []
    for device, birth in births.items():
        table = sp.DeviceTable.from_birth(birth, device)
        topic = sp.sparkplug_topic(site, sp.MessageType.DCMD, "gw-ro", device)
        for spec in table.by_name.values():
            by_name = sp.pb.Payload(timestamp=int(time.time() * 1000))
            by_alias = sp.pb.Payload(timestamp=int(time.time() * 1000))
            if spec.type is sp.MetricType.BOOLEAN:
                by_name.metrics.add(name=spec.name, datatype=spec.type, boolean_value=True)
                by_alias.metrics.add(alias=spec.alias, datatype=spec.type, boolean_value=True)
            else:
                by_name.metrics.add(name=spec.name, datatype=10, double_value=0.0)
                by_alias.metrics.add(alias=spec.alias, datatype=10, double_value=0.0)
            commands += [
                (topic, by_name.SerializeToString()),
                (topic, by_alias.SerializeToString()),
            ]
        rebirth = sp.pb.Payload()
        rebirth.metrics.add(name="Device Control/Rebirth", datatype=11, boolean_value=True)
        commands.append((topic, rebirth.SerializeToString()))
    ncmd = sp.sparkplug_topic(site, sp.MessageType.NCMD, "gw-ro")
    node_write = sp.pb.Payload()
    node_write.metrics.add(name="Node Control/Reboot", datatype=11, boolean_value=True)
    node_write.metrics.add(name="lmi/hook_load", datatype=10, double_value=0.0)
    mixed = sp.pb.Payload()
    mixed.metrics.add(name=sp.REBIRTH, datatype=11, boolean_value=True)
    mixed.metrics.add(name="rig/pump1_run", datatype=11, boolean_value=True)
    commands += [(ncmd, node_write.SerializeToString()), (ncmd, mixed.SerializeToString())]
    commands.append((ncmd, b"\xff\x00 not protobuf"))
    return commands


@pytest.mark.integration
def test_a_whole_agent_run_sends_nothing_but_reads(tmp_path, mosquitto):
    site = f"ro{uuid.uuid4().hex[:8]}"
    for name, *_ in DEVICES:
        (tmp_path / name).mkdir()
    sims: dict[str, Simulator] = {}
    recorders: dict[str, Recorder] = {}
    agent: Program | None = None
    try:
        with ThreadPoolExecutor(len(DEVICES)) as pool:  # three processes start at once
            started = {
                name: pool.submit(
                    start_simulator,
                    tmp_path / name,
                    "--profile",
                    profile,
                    "--no-demo-overload",
                    *(("--framer", "rtu") if transport == "rtu-over-tcp" else ()),
                )
                for name, profile, transport, _tag in DEVICES
            }
            for name, future in started.items():
                if future.exception() is None:
                    sims[name] = future.result()
        for future in started.values():
            future.result()  # raises the first failure, once every one that started is kept
        for name, _profile, transport, _tag in DEVICES:
            framer = "rtu" if transport == "rtu-over-tcp" else "socket"
            recorders[name] = Recorder(sims[name].port, framer=framer).start()
        ports = {name: recorder.port for name, recorder in recorders.items()}
        config = agent_config(tmp_path, mosquitto.port, site, ports)
        with Tap(mosquitto.port, f"spBv1.0/{site}/#") as tap:
            agent = Program("agent", ["--config", str(config)], tmp_path / "agent.log").start()
            messages = tap.wait(
                lambda ms: {d for d, _ in of_type(ms, sp.MessageType.DBIRTH)} >= set(recorders),
                40,
                "a DBIRTH of every device",
            )
            births = {d: p for d, p in of_type(messages, sp.MessageType.DBIRTH)}

            # Every scenario and fault of every simulator, the three at once.
            with ThreadPoolExecutor(len(DEVICES)) as pool:
                runs = [
                    pool.submit(exercise, sims[name], profile, tag)
                    for name, profile, _transport, tag in DEVICES
                ]
                done = [step for run in runs for step in run.result()]
            assert len(done) >= 20, done
            after_faults = {name: r.count() for name, r in recorders.items()}
            wait_for(
                lambda: all(r.count() >= after_faults[n] + 10 for n, r in recorders.items()),
                30,
                "every device polled again after the faults",
                program=agent,
            )

            # A Sparkplug host asks for a rebirth, then for writes of every kind.
            ncmd = sp.sparkplug_topic(site, sp.MessageType.NCMD, "gw-ro")
            nbirths = len(of_type(tap.messages(), sp.MessageType.NBIRTH))
            mqtt_publish.single(
                ncmd, sp.encode_rebirth_request(0), hostname="127.0.0.1", port=mosquitto.port
            )
            tap.wait(
                lambda ms: len(of_type(ms, sp.MessageType.NBIRTH)) > nbirths, 15, "the rebirth"
            )
            commands = write_commands(site, births)
            mqtt_publish.multiple(
                [{"topic": topic, "payload": payload} for topic, payload in commands],
                hostname="127.0.0.1",
                port=mosquitto.port,
            )
            after_commands = {name: r.count() for name, r in recorders.items()}
            ddata = len(of_type(tap.messages(), sp.MessageType.DDATA))
            wait_for(
                lambda: all(r.count() >= after_commands[n] + 10 for n, r in recorders.items()),
                20,
                "every device polled after the write commands",
                program=agent,
            )
            tap.wait(
                lambda ms: len(of_type(ms, sp.MessageType.DDATA)) >= ddata + 5, 15, "data after"
            )
            assert agent.stop() == 0, agent.log_tail()
    finally:
        if agent is not None:
            agent.stop()
        for recorder in recorders.values():
            recorder.stop()
        for sim in sims.values():
            sim.program.stop()

    # What left the agent: reads only, of every table each profile has, on unit 1,
    # within the profile's addresses.
    seen = {}
    for name, profile, transport, _tag in DEVICES:
        requests = recorders[name].requests()
        codes = assert_only_reads(requests, f"{name} ({profile} over {transport})")
        assert set(codes) == table_codes(profile), (name, codes)
        assert len(requests) >= 40, (name, codes)  # dozens of polls, every table each time
        assert {r.unit_id for r in requests} == {1}, name
        ends = Counter()
        for reg in load_profile(profile).registers:
            code = TABLE_CODES[reg.table]
            ends[code] = max(ends[code], reg.address + reg.count)
        outside = [r for r in requests if r.address + r.count > ends[r.function_code]]
        assert not outside, (name, outside[:5])
        assert recorders[name].connections >= 2, name  # the reset made it connect again
        seen[name] = dict(sorted(codes.items()))
    print(f"\nrequests per function code: {seen}")

    # The host's commands reached the agent: the rebirth honoured, the writes refused.
    events = log_events(agent)
    assert any(e.get("event") == "rebirth requested by a host" for e in events), agent.log_tail()
    refused = {e.get("kind") for e in events if e.get("event") == "host command refused"}
    assert {"DCMD", "NCMD"} <= refused, refused
    assert any("read-only" in e.get("reason", "") for e in events), agent.log_tail()


@pytest.mark.integration
def test_the_probe_sends_nothing_but_reads(tmp_path, capsys):
    """``derrick-agent probe`` searches all four tables of a rig PLC (Modbus TCP) and a
    generic PLC (RTU over TCP), and fails on a unit nobody serves, through the recorder."""
    runs = [("rig", "rig", "socket"), ("skid", "small11", "rtu")]
    for name, *_ in runs:
        (tmp_path / name).mkdir()
    sims: dict[str, Simulator] = {}
    seen = {}
    try:
        with ThreadPoolExecutor(len(runs)) as pool:
            started = {
                name: pool.submit(
                    start_simulator,
                    tmp_path / name,
                    "--profile",
                    profile,
                    "--no-demo-overload",
                    "--framer",
                    framer,
                )
                for name, profile, framer in runs
            }
            for name, future in started.items():
                if future.exception() is None:
                    sims[name] = future.result()
        for future in started.values():
            future.result()
        for name, profile, framer in runs:
            with Recorder(sims[name].port, framer=framer) as recorder:
                args = ["probe", "--host", "127.0.0.1", "--port", str(recorder.port)]
                args += ["--framer", framer, "--max-address", "199", "--settle-s", "0.1"]
                args += ["--log-format", "json"]
                draft = tmp_path / f"{name}.yaml"
                assert probe.main([*args, "--output", str(draft)]) == 0, capsys.readouterr()
                assert probe.main([*args, "--unit", "7", "--timeout-s", "0.1"]) == 1
                capsys.readouterr()
                requests = recorder.requests()
            codes = assert_only_reads(requests, f"probe of {profile} over {framer}")
            assert set(codes) == {1, 2, 3, 4}, codes  # it searched every table
            assert {r.unit_id for r in requests} == {1, 7}
            assert {reg.table for reg in load_profile(str(draft)).registers} == {
                reg.table for reg in load_profile(profile).registers
            }
            seen[name] = dict(sorted(codes.items()))
    finally:
        for sim in sims.values():
            sim.program.stop()
    print(f"\nprobe requests per function code: {seen}")
