"""Modbus TCP server for a simulated PLC: the only simulator module importing pymodbus.

The device is a pymodbus 3.16 ``SimDevice`` with four separate blocks (coils, discrete
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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from derrick.profile import Table
from simulators.plc import SimulatedPlc


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
    return [
        SimData(
            address=reg.address,
            values=[0] * reg.count,
            datatype=DataType.REGISTERS,
            readonly=True,
        )
        for reg in regs
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


async def _absent_unit(*_args: object) -> ExcCodes:
    """Requests for any other unit id: what a Modbus TCP gateway answers for a silent unit."""
    return ExcCodes.GATEWAY_NO_RESPONSE


def build_devices(plc: SimulatedPlc, unit_id: int = 1) -> list[SimDevice]:
    """The PLC as unit ``unit_id``; 0 answers every unit id.

    pymodbus 3.16 fails an unknown unit id with a logged traceback and exception 04, so
    a catch-all device (id 0) answers 0B (gateway target failed to respond) instead.
    """

    def blocks() -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        coils, discrete, holding, inputs = (_block(plc, table) for table in _BLOCK_ORDER)
        return coils, discrete, holding, inputs

    try:
        devices = [SimDevice(id=unit_id, simdata=blocks(), action=partial(_serve_request, plc))]
        if unit_id != 0:
            devices.append(SimDevice(id=0, simdata=blocks(), action=_absent_unit))
    except (TypeError, ValueError) as exc:
        raise ModbusServerError(f"cannot build the Modbus device: {exc}") from exc
    return devices


@asynccontextmanager
async def serving(plc: SimulatedPlc, host: str, port: int, unit_id: int = 1) -> AsyncIterator[int]:
    """Serve ``plc`` on ``host:port`` while the context is open; yields the bound port."""
    devices = build_devices(plc, unit_id)
    try:
        server = ModbusTcpServer(devices, address=(host, port))
        await server.serve_forever(background=True)
    except (ModbusException, RuntimeError, OSError) as exc:
        # pymodbus logs the OSError and raises RuntimeError("Could not start listen ...").
        raise ModbusServerError(
            f"cannot listen for Modbus TCP on {host}:{port} (port in use or address "
            f"not available): {exc}"
        ) from exc
    plc.faults.on_reset(partial(_reset_connections, server))
    try:
        yield server.transport.sockets[0].getsockname()[1]
    finally:
        await server.shutdown()


def _reset_connections(server: ModbusTcpServer) -> int:
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
