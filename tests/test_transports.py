"""Modbus transports end to end: Modbus TCP, RTU over TCP and serial RTU on a pty pair.

The server is the simulator (as ``derrick-sim`` or in-process on loopback), the client
the agent's Modbus boundary; values are decoded with the codec and compared with what
the simulator says it serves. The serial line is a socat pty pair (Debian ``socat``,
installed by scripts/setup.sh); a Linux pty takes parity N only, so the serial tests
use 19200 8N1. mbpoll (a Modbus master that is not pymodbus) checks the RTU framing of
both RTU transports.

One test plays a misbehaving RTU device with a scripted socket peer: a reply that comes
after the client gave up cannot be produced on cue by the simulator.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.config import Device, connection_key
from agent.modbus import (
    BadReply,
    DeviceTimeout,
    DeviceUnreachable,
    ExceptionReply,
    ModbusConnection,
)
from derrick.plc.profile import Register, Table, load_profile
from derrick.plc.registers import decode, scaled
from devstack.programs import Program, http_json, wait_for
from devstack.services import free_port, free_port_block
from simulators import modbus_server
from simulators.crane import EXACT_VALUES, CraneModel
from simulators.modbus_server import SerialEndpoint, TcpEndpoint
from simulators.plc import SimulatedPlc

pytestmark = pytest.mark.integration

CRANE = load_profile("crane")
GATEWAY_NO_RESPONSE = 0x0B


async def read_tag(connection: ModbusConnection, reg: Register, unit_id: int) -> float | bool:
    data = await connection.read(reg.table, reg.address, reg.count, unit_id)
    assert not isinstance(data, ExceptionReply), (reg.tag, data)
    if reg.table.is_bits:
        return bool(data[0])
    return scaled(decode(data, reg.type, reg.byte_order, reg.word_order), reg.scale, reg.offset)


async def read_crane(connection: ModbusConnection, unit_id: int) -> dict[str, float | bool]:
    return {reg.tag: await read_tag(connection, reg, unit_id) for reg in CRANE.registers}


def pins(hook_load: float) -> dict[str, float | bool]:
    """The exact crane values with a hook load (and what it drives) of our own."""
    return EXACT_VALUES | {"hook_load": hook_load, "utilisation": hook_load * 4}


def crane_plc(seed: int, hook_load: float | None = None) -> SimulatedPlc:
    plc = SimulatedPlc(CRANE, CraneModel(seed=seed, demo_overload=False))
    if hook_load is not None:
        plc.hold(pins(hook_load))
    return plc


# --- the connection API ------------------------------------------------------------------


def test_connection_keys_say_which_devices_share_a_connection(tmp_path):
    link = tmp_path / "bus"
    link.symlink_to("/dev/null")
    assert connection_key(host="GW1", port=502) == connection_key(host="gw1", port=502)
    assert connection_key(host="gw1", port=502) != connection_key(host="gw1", port=503)
    assert connection_key(host="gw1", port=502) != connection_key(
        host="gw1", port=502, framer="rtu"
    )
    assert connection_key(serial_port=str(link)) == connection_key(serial_port="/dev/null")
    for bad in ({}, {"host": "gw1", "serial_port": "/dev/null"}):
        with pytest.raises(ValueError, match=r"host \(TCP\) or serial_port"):
            connection_key(**bad)
    with pytest.raises(ValueError):
        connection_key(host="gw1", framer="ascii")


def test_a_devices_link_key_is_the_key_of_the_connection_it_is_read_by(tmp_path):
    """agent.main shares one connection per Device.link_key: it must be the key the
    connection itself has (one definition, agent.config.connection_key)."""
    link = tmp_path / "bus"
    link.symlink_to("/dev/null")
    pairs = [
        ({"host": "GW1"}, ModbusConnection.tcp("gw1", 502, 1.0)),
        (
            {"transport": "rtu-over-tcp", "host": "gw1", "port": 4001},
            ModbusConnection.tcp("GW1", 4001, 1.0, framer="rtu"),
        ),
        ({"transport": "rtu", "serial_port": str(link)}, ModbusConnection.serial("/dev/null", 1.0)),
    ]
    for link_settings, connection in pairs:
        device = Device(name="d", asset="a", profile=CRANE, **link_settings)
        assert device.link_key == connection.key, link_settings


def test_endpoints_name_the_transport():
    """Built outside any event loop: the pymodbus client comes with connect()."""
    assert ModbusConnection("10.0.0.5", 502, 1.0).endpoint == "10.0.0.5:502"
    tcp = ModbusConnection.tcp("10.0.0.5", 502, 1.0)
    assert (tcp.endpoint, tcp.key, tcp.rtu) == ("10.0.0.5:502", "tcp://10.0.0.5:502", False)
    rtu = ModbusConnection.tcp("10.0.0.5", 4001, 1.0, framer="rtu")
    assert (rtu.endpoint, rtu.rtu) == ("rtu-over-tcp 10.0.0.5:4001", True)
    line = ModbusConnection.serial("/dev/ttyUSB0", 1.0)
    assert (line.endpoint, line.rtu) == ("/dev/ttyUSB0 19200 8E1", True)
    line = ModbusConnection.serial("/dev/ttyUSB0", 1.0, 9600, "N", 2)
    assert line.endpoint == "/dev/ttyUSB0 9600 8N2"
    with pytest.raises(ValueError, match="parity"):
        ModbusConnection.serial("/dev/ttyUSB0", 1.0, parity="X")


def test_missing_serial_port_is_unreachable(tmp_path):
    async def scenario():
        connection = ModbusConnection.serial(str(tmp_path / "nope"), 0.5, parity="N")
        with pytest.raises(DeviceUnreachable, match="cannot open the serial port"):
            await connection.connect()
        assert not connection.connected
        with pytest.raises(DeviceUnreachable):
            await connection.read(Table.HOLDING, 0, 2, 1)

    asyncio.run(scenario())


# --- RTU over TCP: the program -----------------------------------------------------------


@pytest.fixture
def rtu_sim(tmp_path):
    """derrick-sim --framer rtu: two cranes behind one port (units 1, 2), pinned apart."""
    port, control = free_port(), free_port_block(2)
    program = Program(
        "sim",
        [
            *("--framer", "rtu", "--cranes", "2", "--units-per-port", "2", "--port", str(port)),
            *("--control-port", str(control), "--no-demo-overload", "--log-format", "json"),
        ],
        tmp_path / "sim.log",
    ).start()
    urls = [f"http://127.0.0.1:{control + i}" for i in range(2)]
    for url in urls:
        wait_for(lambda url=url: http_json(f"{url}/health"), 30, "simulator", program=program)
    for url, hook_load in zip(urls, (11.25, 22.5), strict=True):
        http_json(f"{url}/hold", pins(hook_load))
    yield port, urls, program
    assert program.stop() == 0, program.log_tail()


def test_crane_over_rtu_over_tcp_reads_what_the_simulator_serves(rtu_sim):
    port, urls, program = rtu_sim

    async def scenario():
        connection = ModbusConnection.tcp("127.0.0.1", port, 2.0, framer="rtu")
        await connection.connect()
        try:
            return [await read_crane(connection, unit) for unit in (1, 2)]
        finally:
            connection.close()

    got = asyncio.run(scenario())
    for values, url in zip(got, urls, strict=True):
        assert values == pytest.approx(http_json(f"{url}/values"))
    assert (got[0]["hook_load"], got[1]["hook_load"]) == (11.25, 22.5)
    ready = [line for line in program.log_tail().splitlines() if "simulator ready" in line]
    assert len(ready) == 2
    assert all(f'"port": {port}, "framer": "rtu"' in line for line in ready)


def test_mbpoll_reads_rtu_over_tcp_through_a_pty_bridge(rtu_sim, tmp_path):
    """A transparent serial server's other side: socat turns the TCP port into a tty."""
    port, _, _ = rtu_sim
    socat, mbpoll = need("socat"), need("mbpoll")
    tty = tmp_path / "bridge"
    bridge = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={tty}", f"tcp:127.0.0.1:{port}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(tty.exists, 10, "socat pty bridge")
        for unit, hook_load in ((1, 11.25), (2, 22.5)):
            assert mbpoll_rtu(mbpoll, tty, unit, "4:float", 0, 2, "-B") == [hook_load, 25.0]
    finally:
        bridge.terminate()
        bridge.wait(10)


# --- several unit ids on one connection --------------------------------------------------


@pytest.mark.parametrize("framer", ["socket", "rtu"])
def test_two_units_read_concurrently_get_their_own_answers(framer):
    units = {1: crane_plc(1, 11.25), 2: crane_plc(2, 22.5)}

    async def reader(connection, unit_id, rounds=20):
        hook = CRANE.register("hook_load")
        return [await read_tag(connection, hook, unit_id) for _ in range(rounds)]

    async def scenario():
        async with modbus_server.serve(units, TcpEndpoint("127.0.0.1", 0, framer)) as bound:
            connection = ModbusConnection.tcp("127.0.0.1", bound.port, 2.0, framer=framer)
            await connection.connect()
            try:
                return await asyncio.gather(reader(connection, 1), reader(connection, 2))
            finally:
                connection.close()

    one, two = asyncio.run(scenario())
    assert (set(one), set(two)) == ({11.25}, {22.5})


@pytest.mark.parametrize("framer", ["socket", "rtu"])
def test_a_silent_unit_times_out_and_costs_the_others_nothing_but_time(framer):
    """Unit 2 hangs (silence fault); five of its requests queue ahead of unit 1's.

    Each request's timeout starts when it gets the connection, so unit 1's read, which
    waits behind five timeouts (longer than its own timeout), still succeeds. The
    connection is still up (pymodbus alone would close it after the fifth request in a
    row without an answer) and, once unit 2 wakes and its late replies arrive, every
    answer still goes to the request it belongs to.
    """
    silent = crane_plc(2, 22.5)
    silent.faults.silent = True
    units = {1: crane_plc(1, 11.25), 2: silent}
    hook = CRANE.register("hook_load")

    async def scenario():
        async with modbus_server.serve(units, TcpEndpoint("127.0.0.1", 0, framer)) as bound:
            connection = ModbusConnection.tcp("127.0.0.1", bound.port, 0.3, framer=framer)
            await connection.connect()
            try:
                queued = await asyncio.gather(
                    *(read_tag(connection, hook, 2) for _ in range(5)),
                    read_tag(connection, hook, 1),
                    return_exceptions=True,
                )
                still_up = connection.connected
                silent.faults.silent = False  # the hung requests are answered now, late
                await asyncio.sleep(0.2)
                after = [await read_crane(connection, unit) for unit in (1, 2, 1)]
                return queued, still_up, after
            finally:
                connection.close()

    queued, still_up, after = asyncio.run(scenario())
    assert [type(r) for r in queued[:5]] == [DeviceTimeout] * 5
    assert "unit 2: no reply within 0.3 s" in str(queued[0])
    assert queued[5] == 11.25
    assert still_up
    assert [values["hook_load"] for values in after] == [11.25, 22.5, 11.25]
    assert after[1] == pytest.approx(pins(22.5))


def test_unit_nobody_serves_modbus_tcp_answers_0b_rtu_stays_silent():
    units = {1: crane_plc(1, 11.25)}

    async def scenario():
        results = {}
        for framer in ("socket", "rtu"):
            async with modbus_server.serve(units, TcpEndpoint("127.0.0.1", 0, framer)) as bound:
                connection = ModbusConnection.tcp("127.0.0.1", bound.port, 0.3, framer=framer)
                await connection.connect()
                try:
                    try:
                        results[framer] = await connection.read(Table.HOLDING, 0, 2, 7)
                    except DeviceTimeout as exc:
                        results[framer] = exc
                    results[framer, "then"] = await read_tag(
                        connection, CRANE.register("hook_load"), 1
                    )
                finally:
                    connection.close()
        return results

    results = asyncio.run(scenario())
    assert results["socket"] == ExceptionReply(GATEWAY_NO_RESPONSE)
    assert isinstance(results["rtu"], DeviceTimeout)
    assert results["socket", "then"] == results["rtu", "then"] == 11.25


def crc16(frame: bytes) -> bytes:
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


def rtu_reply(unit: int, words: list[int]) -> bytes:
    body = bytes([unit, 3, 2 * len(words)]) + struct.pack(f">{len(words)}H", *words)
    return body + crc16(body)


def test_rtu_late_reply_is_drained_not_taken_for_the_next_answer():
    """A device that answers request 1 only after the client gave up on it.

    The scripted peer answers request 1 (words 1, 1) 0.75 s after receiving it, after
    the client's 0.5 s timeout and before request 2's would end; then it answers request
    2 (same unit, function and length) with (2, 2). The client holds the line after a
    timeout until it has been quiet for drain_s, so the late frame is thrown away and
    request 2 gets (2, 2); without the drain it would get (1, 1), the answer to another
    question.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def device():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            first = conn.recv(64)
            assert first[:2] == b"\x05\x03" and first[-2:] == crc16(first[:-2])
            time.sleep(0.75)
            conn.sendall(rtu_reply(5, [1, 1]))
            conn.recv(64)
            conn.sendall(rtu_reply(5, [2, 2]))
            conn.recv(64)  # until the client closes

    peer = threading.Thread(target=device, daemon=True)
    peer.start()

    async def scenario():
        connection = ModbusConnection.tcp("127.0.0.1", port, 0.5, framer="rtu", drain_s=1.5)
        await connection.connect()
        try:
            with pytest.raises(DeviceTimeout):
                await connection.read(Table.HOLDING, 0, 2, 5)
            return await connection.read(Table.HOLDING, 10, 2, 5)
        finally:
            connection.close()

    try:
        assert asyncio.run(scenario()) == [2, 2]
    finally:
        peer.join(10)
        listener.close()


def mbap_read(tid: int, unit: int, address: int, count: int) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, 3, address, count)


def test_a_slow_reply_keeps_its_own_transaction_and_unit_id():
    """Two pipelined Modbus TCP requests; unit 2 answers 0.3 s late (latency fault).

    The quick answer to request 2 comes first; the late one must still carry request
    1's transaction id and unit id (pymodbus' own handler stamped it with those of the
    newest request, so a client would take unit 2's data for unit 1's).
    """
    slow = crane_plc(2, 22.5)
    slow.faults.latency_s = 0.3
    units = {1: crane_plc(1, 11.25), 2: slow}

    async def scenario():
        async with modbus_server.serve(units, TcpEndpoint("127.0.0.1", 0)) as bound:
            reader, writer = await asyncio.open_connection("127.0.0.1", bound.port)
            writer.write(mbap_read(101, 2, 0, 2))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(mbap_read(102, 1, 0, 2))
            await writer.drain()
            replies = [await asyncio.wait_for(reader.readexactly(13), 5) for _ in range(2)]
            writer.close()
            await writer.wait_closed()
            return replies

    replies = asyncio.run(scenario())
    got = [struct.unpack(">HHHBBBf", reply) for reply in replies]
    assert [(tid, unit, value) for tid, _, _, unit, _, _, value in got] == [
        (102, 1, 11.25),
        (101, 2, 22.5),
    ]


def test_reply_of_another_function_is_a_bad_reply():
    """A same-unit RTU frame for another function is refused, not returned as data."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def device():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            conn.recv(64)
            body = bytes([5, 4, 4, 0, 1, 0, 2])  # read input registers, asked: holding
            conn.sendall(body + crc16(body))
            conn.recv(64)

    peer = threading.Thread(target=device, daemon=True)
    peer.start()

    async def scenario():
        connection = ModbusConnection.tcp("127.0.0.1", port, 1.0, framer="rtu")
        await connection.connect()
        try:
            with pytest.raises(BadReply, match="asked function 3, the reply is for function 4"):
                await connection.read(Table.HOLDING, 0, 2, 5)
        finally:
            connection.close()

    try:
        asyncio.run(scenario())
    finally:
        peer.join(10)
        listener.close()


# --- serial RTU on a pty pair ------------------------------------------------------------


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (scripts/setup.sh installs it)")
    return path


@pytest.fixture
def pty_pair(tmp_path):
    """Two linked ttys from socat: (the PLC's end, the agent's end)."""
    socat = need("socat")
    plc_end, agent_end = tmp_path / "plc", tmp_path / "agent"
    with (tmp_path / "socat.log").open("wb") as log:
        process = subprocess.Popen(
            [
                socat,
                "-d",
                "-d",
                f"pty,raw,echo=0,link={plc_end}",
                f"pty,raw,echo=0,link={agent_end}",
            ],
            stderr=log,
        )
    try:
        wait_for(lambda: plc_end.exists() and agent_end.exists(), 10, "socat pty pair")
        yield plc_end, agent_end
    finally:
        process.terminate()
        process.wait(10)


def test_serial_rtu_in_process_two_units_and_a_missing_one(pty_pair):
    plc_end, agent_end = pty_pair
    units = {1: crane_plc(1, 11.25), 2: crane_plc(2, 22.5)}
    hook = CRANE.register("hook_load")

    async def scenario():
        async with modbus_server.serve(units, SerialEndpoint(str(plc_end), parity="N")):
            connection = ModbusConnection.serial(str(agent_end), 0.5, parity="N")
            await connection.connect()
            try:
                both = await asyncio.gather(
                    *(read_tag(connection, hook, unit) for unit in (1, 2, 9, 1, 2)),
                    return_exceptions=True,
                )
                full = await read_crane(connection, 2)
                connection.close()  # and open again: the line still works
                await connection.connect()
                again = await read_tag(connection, hook, 1)
                return both, full, again
            finally:
                connection.close()

    both, full, again = asyncio.run(scenario())
    assert [both[i] for i in (0, 1, 3, 4)] == [11.25, 22.5, 11.25, 22.5]
    assert isinstance(both[2], DeviceTimeout)
    assert full == pytest.approx(pins(22.5))
    assert again == 11.25


def test_serial_port_refusing_the_line_settings_is_unreachable_and_released(pty_pair):
    _, agent_end = pty_pair

    async def scenario():
        even = ModbusConnection.serial(str(agent_end), 0.5)  # 8E1: a pty refuses parity
        with pytest.raises(DeviceUnreachable, match="refuses these line settings"):
            await even.connect()
        plain = ModbusConnection.serial(str(agent_end), 0.5, parity="N")
        await plain.connect()  # the refused attempt left the port unlocked
        plain.close()

    asyncio.run(scenario())


def test_derrick_sim_serial_is_read_by_the_agent_client_and_mbpoll(pty_pair, tmp_path):
    plc_end, agent_end = pty_pair
    control = free_port_block(2)
    program = Program(
        "sim",
        [
            *("--serial", str(plc_end), "--parity", "N", "--cranes", "2", "--unit-id", "3"),
            *("--control-port", str(control), "--no-demo-overload", "--log-format", "json"),
        ],
        tmp_path / "sim.log",
    ).start()
    try:
        urls = [f"http://127.0.0.1:{control + i}" for i in range(2)]
        for url, hook_load in zip(urls, (11.25, 22.5), strict=True):
            wait_for(lambda url=url: http_json(f"{url}/health"), 30, "simulator", program=program)
            http_json(f"{url}/hold", pins(hook_load))

        async def scenario():
            connection = ModbusConnection.serial(str(agent_end), 1.0, parity="N")
            await connection.connect()
            try:
                return await asyncio.gather(read_crane(connection, 3), read_crane(connection, 4))
            finally:
                connection.close()

        got = asyncio.run(scenario())
        for values, url in zip(got, urls, strict=True):
            assert values == pytest.approx(http_json(f"{url}/values"))
        assert (got[0]["hook_load"], got[1]["hook_load"]) == (11.25, 22.5)
        mbpoll = need("mbpoll")
        assert mbpoll_rtu(mbpoll, agent_end, 4, "4:float", 0, 2, "-B") == [22.5, 25.0]
        assert mbpoll_rtu(mbpoll, agent_end, 3, "1", 0, 5) == [
            float(EXACT_VALUES[r.tag]) for r in CRANE.registers if r.table is Table.DISCRETE
        ]
        log = program.log_tail()
        assert f'"serial": "{plc_end} 19200 8N1"' in log
        assert '"unit_id": 4' in log
    finally:
        assert program.stop() == 0, program.log_tail()


def test_derrick_sim_exits_1_when_the_tty_refuses_parity(pty_pair, tmp_path):
    plc_end, _ = pty_pair
    program = Program(
        "sim", ["--serial", str(plc_end), "--log-format", "json"], tmp_path / "sim.log"
    ).start()
    assert program.process.wait(30) == 1
    assert "refuses the line settings" in program.log_tail()


def mbpoll_rtu(exe: str, tty: Path, unit: int, kind: str, address: int, count: int, *opts: str):
    """One mbpoll RTU read at 19200 8N1; the printed values."""
    done = subprocess.run(
        [
            *(exe, "-m", "rtu", "-b", "19200", "-P", "none", "-a", str(unit), "-0", "-1"),
            *("-o", "2", "-t", kind, "-r", str(address), "-c", str(count), *opts, str(tty)),
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [float(v) for v in re.findall(r"^\[\d+\]:\s+(\S+)$", done.stdout, re.MULTILINE)]


# --- Modbus TCP replies that are not what was asked (agent.modbus.MbapProtocol) ---------


def mbap_reply(tid: int, unit: int, pdu: bytes, protocol_id: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, protocol_id, len(pdu) + 1, unit) + pdu


def scripted_mbap(answer):
    """A Modbus TCP peer on loopback: ``answer(tid, unit, function, address, count)`` gives
    the bytes to send back (b"" for nothing, None to hang up). Returns (port, stop)."""

    async def handle(reader, writer):
        try:
            while True:
                request = await reader.readexactly(12)
                tid, _, _, unit, function, address, count = struct.unpack(">HHHBBHH", request)
                reply = answer(tid, unit, function, address, count)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    return handle


async def read_from(answer, table, count, unit=1, timeout_s=0.5, then=None):
    server = await asyncio.start_server(scripted_mbap(answer), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = ModbusConnection.tcp("127.0.0.1", port, timeout_s)
    try:
        await connection.connect()
        try:
            result = await connection.read(table, 0, count, unit)
        except Exception as exc:  # the test looks at what was raised
            result = exc
        await asyncio.sleep(0.05)
        after = connection.connected
        if then is not None:
            await connection.connect()
            return result, after, await connection.read(*then)
        return result, after, None
    finally:
        connection.close()
        server.close()
        await server.wait_closed()


def test_mbap_reply_of_another_unit_is_skipped_and_the_right_one_taken():
    def answer(tid, unit, function, address, count):
        other = mbap_reply(tid, unit + 1, bytes([function, 2, 0, 9]))
        return other + mbap_reply(tid, unit, bytes([function, 2, 0, 7]))

    result, connected, _ = asyncio.run(read_from(answer, Table.HOLDING, 1))
    assert result == [7] and connected


def test_mbap_exception_reply_is_data_and_bits_come_lsb_first():
    def answer(tid, unit, function, address, count):
        if function == 3:
            return mbap_reply(tid, unit, bytes([0x83, 2]))
        return mbap_reply(tid, unit, bytes([function, 2, 0b00000101, 0b1]))

    refused, connected, coils = asyncio.run(
        read_from(answer, Table.HOLDING, 2, then=(Table.COIL, 0, 9, 1))
    )
    assert refused == ExceptionReply(2) and connected
    assert coils == [True, False, True, False, False, False, False, False, True]


@pytest.mark.parametrize(
    ("pdu", "message"),
    [
        (bytes([3, 4, 0, 1]), "asked 2 values of holding (4 bytes), the reply has 2 bytes"),
        (bytes([3, 2, 0, 1]), "asked 2 values of holding (4 bytes), the reply has 2 bytes"),
        (bytes([4, 4, 0, 1, 0, 2]), "asked function 3, the reply is for function 4"),
        (bytes([3]), "a reply of function 3 without data"),
    ],
)
def test_mbap_reply_that_does_not_fit_the_request_is_a_bad_reply(pdu, message):
    result, connected, _ = asyncio.run(
        read_from(lambda tid, unit, *_: mbap_reply(tid, unit, pdu), Table.HOLDING, 2)
    )
    assert isinstance(result, BadReply) and message in str(result), result
    assert connected, "one bad reply is one bad reply: the link stays"


def test_mbap_garbage_closes_the_link_and_the_next_connect_reads_again():
    """A peer that is not Modbus TCP at first (an HTTP server on the port, say): the
    request fails as a bad reply and the link is closed; connected again, it reads."""
    calls = []

    def answer(tid, unit, function, address, count):
        calls.append(tid)
        if len(calls) == 1:
            return b"HTTP/1.1 400 Bad Request\r\n\r\n"
        return mbap_reply(tid, unit, bytes([function, 2, 0, 42]))

    result, connected, again = asyncio.run(
        read_from(answer, Table.HOLDING, 1, then=(Table.HOLDING, 0, 1, 1))
    )
    assert isinstance(result, BadReply) and "not a Modbus TCP reply" in str(result)
    assert not connected
    assert again == [42]


def test_mbap_peer_hanging_up_mid_request_is_a_lost_connection():
    result, connected, _ = asyncio.run(read_from(lambda *_: None, Table.HOLDING, 1))
    assert isinstance(result, DeviceUnreachable) and "connection lost" in str(result)
    assert not connected
