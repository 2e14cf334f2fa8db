"""Modbus server for simulated PLCs: the only simulator module importing pymodbus.

Transports: Modbus TCP, RTU over TCP (RTU frames with CRC on a TCP socket, as a
transparent serial-to-Ethernet converter passes them) and serial RTU on a tty. One
endpoint may serve several PLCs as different unit ids: the devices behind a gateway, or
the slaves of one RS-485 bus. A unit id nobody serves gets exception 0B (gateway target
failed to respond) on Modbus TCP and no answer at all on RTU (see :class:`_Handler`).

Each PLC is a pymodbus 3.16 ``SimDevice`` with four separate blocks (coils, discrete
inputs, holding, input registers), so every table starts at the profile's own address 0
and a coil or discrete input is addressed per bit, as on a real PLC. The blocks only
mark which addresses exist; their contents are rewritten from the model on every request
by the ``action`` callback, which pymodbus calls with the block's live register list
before it slices out the answer.

The image is read-only: writes get exception 02 (illegal data address), as from a PLC
whose measured values cannot be written.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from derrick.plc.profile import Table
from derrick.plumbing.serial import TtyError, close_refused_port
from simulators.faults import DROP, Session
from simulators.plc import SimulatedPlc

log = structlog.get_logger(__name__)


class ModbusServerError(Exception):
    """The Modbus server could not be built or could not listen."""


# Function code -> table it reads or writes.
_TABLE_OF = {
    1: Table.COIL,
    5: Table.COIL,
    15: Table.COIL,
    2: Table.DISCRETE,
    3: Table.HOLDING,
    6: Table.HOLDING,
    16: Table.HOLDING,
    22: Table.HOLDING,
    23: Table.HOLDING,
    4: Table.INPUT,
}
_BLOCK_ORDER = (Table.COIL, Table.DISCRETE, Table.HOLDING, Table.INPUT)  # SimDevice's tuple


def _block(plc: SimulatedPlc, table: Table) -> list[SimData]:
    """One table's SimData: which addresses exist (contents come from the action)."""
    regs = plc.registers(table)
    if table.is_bits:
        # A bit block cannot be empty nor hold anything but BITS; an empty table gets a
        # placeholder bit that the action refuses (see _serve_request).
        addresses = sorted(reg.address for reg in regs) or [0]
        return [SimData(address=a, values=[False], datatype=DataType.BITS) for a in addresses]
    if not regs:  # placeholder: an INVALID register answers exception 02 before any action
        return [SimData(address=0, datatype=DataType.INVALID)]
    # Bit tags share their word with other bits (and a whole-word tag): one block per
    # address that some tag uses.
    addresses = sorted({a for reg in regs for a in range(reg.address, reg.address + reg.count)})
    return [
        SimData(address=a, values=[0], datatype=DataType.REGISTERS, readonly=True)
        for a in addresses
    ]


async def _serve_request(  # noqa: PLR0917 - pymodbus calls it positionally
    plc: SimulatedPlc,
    func_code: int,
    start_address: int,
    address: int,
    _count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """pymodbus ``action``: refuse writes, then fill the block from the model.

    For bit tables pymodbus packs 16 bits per list entry, ``start_address`` is in those
    16-bit units and ``_count`` is a register count, not the bits asked for, so only the
    first requested bit can be checked against the profile.
    """
    await plc.faults.before_reply()
    table = _TABLE_OF[func_code]
    if set_values is not None:
        return ExcCodes.ILLEGAL_ADDRESS
    image = plc.image(table)
    if table.is_bits:
        if address not in image:
            return ExcCodes.ILLEGAL_ADDRESS
        for addr, bit in image.items():
            index, mask = addr // 16 - start_address, 1 << (addr % 16)
            registers[index] = registers[index] | mask if bit else registers[index] & ~mask
        return None
    for addr, word in image.items():
        registers[addr - start_address] = int(word)
    return None


class _Handler(ServerRequestHandler):
    """pymodbus' request handler, with the changes a simulated gateway or bus needs.

    * The request is taken before the datastore is awaited. pymodbus reads
      ``self.last_pdu`` again afterwards for the reply's transaction and unit id, so a
      slow reply (latency or silence fault) went out with the ids of whatever request
      came in meanwhile, and a client took it for the answer to that one.
    * A unit id nobody serves: on Modbus TCP the gateway answers exception 0B (target
      device failed to respond); on RTU (serial or over TCP) nobody answers at all, as
      on an RS-485 bus, and the client times out.
    * One handler per connection (one for a serial line): it keeps the connection's
      :class:`~simulators.faults.Session` for the awkward-device faults, which the PLC's
      :meth:`~simulators.faults.Faults.screen` may drop or refuse a request by.
    """

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.session = Session(opened_at=time.monotonic())

    async def handle_request(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if not pdu:
            return
        server = self.server
        if not server.serves(pdu.dev_id):
            if server.rtu:
                return
            response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        else:
            faults = server.plc_of(pdu.dev_id).faults
            verdict = (
                faults.screen(
                    self.session, time.monotonic(), pdu.function_code, getattr(pdu, "count", 0)
                )
                if faults.screens
                else 0
            )
            if verdict == DROP:
                return
            if verdict:
                response = ExceptionResponse(pdu.function_code, verdict)
            else:
                try:
                    response = await pdu.datastore_update(server.context, pdu.dev_id)
                except Exception as exc:  # noqa: BLE001 - a PLC answers 04, it does not crash
                    log.error("request failed", unit_id=pdu.dev_id, error=repr(exc))
                    response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self.server_send(response, addr)
        self.session.answered_at = time.monotonic()


class _Serving:
    """Mixed into the pymodbus servers: our handler, and which unit ids answer."""

    unit_ids: frozenset[int] = frozenset()
    plcs: Mapping[int, SimulatedPlc] = {}
    rtu: bool = False

    def serves(self, unit_id: int) -> bool:
        """Unit 0 in the set answers every id (pymodbus' fallback device)."""
        return unit_id in self.unit_ids or 0 in self.unit_ids

    def plc_of(self, unit_id: int) -> SimulatedPlc:
        """The PLC that answers ``unit_id`` (one :meth:`serves`)."""
        plc = self.plcs.get(unit_id)
        return self.plcs[0] if plc is None else plc

    def callback_new_connection(self) -> _Handler:
        return _Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class _TcpServer(_Serving, ModbusTcpServer):
    pass


class _SerialServer(_Serving, ModbusSerialServer):
    pass


@dataclass(frozen=True)
class TcpEndpoint:
    """Listen on host:port; ``framer`` "socket" (Modbus TCP) or "rtu" (RTU over TCP)."""

    host: str
    port: int
    framer: str = "socket"

    def __post_init__(self) -> None:
        if self.framer not in FRAMERS:
            raise ValueError(f"framer must be one of {', '.join(FRAMERS)}, not {self.framer!r}")

    def __str__(self) -> str:
        where = f"{self.host}:{self.port}"
        return where if self.framer == "socket" else f"rtu-over-tcp {where}"


@dataclass(frozen=True)
class SerialEndpoint:
    """Serve serial RTU on a tty (a real port, or one end of a socat pty pair)."""

    path: str
    baudrate: int = 19200
    parity: str = "E"
    stopbits: int = 1
    bytesize: int = 8

    def __str__(self) -> str:
        return f"{self.path} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


Endpoint = TcpEndpoint | SerialEndpoint
FRAMERS = {"socket": FramerType.SOCKET, "rtu": FramerType.RTU}


def build_devices(units: Mapping[int, SimulatedPlc]) -> list[SimDevice]:
    """One SimDevice per unit id; unit 0 answers every id."""

    def blocks(plc: SimulatedPlc) -> tuple[list[SimData], ...]:
        return tuple(_block(plc, table) for table in _BLOCK_ORDER)

    try:
        return [
            SimDevice(id=unit_id, simdata=blocks(plc), action=partial(_serve_request, plc))
            for unit_id, plc in units.items()
        ]
    except (TypeError, ValueError) as exc:
        raise ModbusServerError(f"cannot build the Modbus device: {exc}") from exc


def _server(devices: list[SimDevice], endpoint: Endpoint) -> _TcpServer | _SerialServer:
    if isinstance(endpoint, SerialEndpoint):
        server: _TcpServer | _SerialServer = _SerialServer(
            devices,
            framer=FramerType.RTU,
            port=endpoint.path,
            baudrate=endpoint.baudrate,
            parity=endpoint.parity,
            stopbits=endpoint.stopbits,
            bytesize=endpoint.bytesize,
        )
        server.rtu = True
    else:
        server = _TcpServer(
            devices, framer=FRAMERS[endpoint.framer], address=(endpoint.host, endpoint.port)
        )
        server.rtu = endpoint.framer == "rtu"
    return server


@asynccontextmanager
async def serve(units: Mapping[int, SimulatedPlc], endpoint: Endpoint) -> AsyncIterator[Endpoint]:
    """Serve each PLC as its unit id on ``endpoint`` while the context is open.

    Yields the endpoint as bound (a TCP port 0 becomes the port the OS chose). Several
    units on one endpoint are the PLCs behind one gateway, or the slaves of one bus.
    """
    if not units:
        raise ModbusServerError("no unit to serve")
    devices = build_devices(units)
    try:
        server = _server(devices, endpoint)
        server.unit_ids = frozenset(units)
        server.plcs = dict(units)
        await server.serve_forever(background=True)
    except TtyError as exc:
        close_refused_port(exc)
        raise ModbusServerError(
            f"the tty refuses the line settings: {endpoint}: {exc} (a Linux pty takes "
            "parity N only)"
        ) from exc
    except (ModbusException, RuntimeError, OSError) as exc:
        # pymodbus logs the OSError and raises RuntimeError("Could not start listen ...").
        what = (
            "cannot open the serial port (missing, or in use)"
            if isinstance(endpoint, SerialEndpoint)
            else "cannot listen (port in use or address not available)"
        )
        raise ModbusServerError(f"{what}: {endpoint}: {exc}") from exc
    if isinstance(endpoint, TcpEndpoint):
        for plc in units.values():
            plc.faults.on_reset(partial(_reset_connections, server))
        endpoint = replace(endpoint, port=server.transport.sockets[0].getsockname()[1])
    try:
        yield endpoint
    finally:
        await server.shutdown()


@asynccontextmanager
async def serving(
    plc: SimulatedPlc, host: str, port: int, unit_id: int = 1, framer: str = "socket"
) -> AsyncIterator[int]:
    """Serve one ``plc`` as ``unit_id`` on ``host:port``; yields the bound port."""
    async with serve({unit_id: plc}, TcpEndpoint(host, port, framer)) as bound:
        yield bound.port


def _reset_connections(server: _TcpServer) -> int:
    """Abort every client connection with a TCP RST (SO_LINGER 0), as a dropped session."""
    connections = list(server.active_connections.values())
    for connection in connections:
        transport = connection.transport
        if transport is None:
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return len(connections)
