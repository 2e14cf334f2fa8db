"""The Modbus boundary of the agent: the only agent module that imports pymodbus.

pymodbus errors become our small error tree, chained ``from exc``. A Modbus exception
reply (the PLC answered "illegal data address", say) is data, returned as
:class:`ExceptionReply`, not raised: the device is up, one span is not readable.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from derrick.profile import Table


class ModbusError(Exception):
    """The device could not be read."""


class DeviceUnreachable(ModbusError):
    """No TCP connection to the device (refused, reset, host down)."""


class DeviceTimeout(ModbusError):
    """Connected, but no reply within the timeout."""


class BadReply(ModbusError):
    """A reply that does not fit the request (wrong length)."""


@dataclass(frozen=True, slots=True)
class ExceptionReply:
    """The PLC answered with a Modbus exception code (02 = illegal data address)."""

    code: int


ReadResult = list[int] | list[bool] | ExceptionReply


class ModbusConnection:
    """One TCP connection to a device (or a gateway with several unit ids behind it).

    pymodbus' own retries and reconnects are off: the poller decides when to retry, so
    a dead device costs one timeout per cycle, not ``retries x timeout``.
    """

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.endpoint = f"{host}:{port}"
        self.timeout_s = timeout_s
        self._client = AsyncModbusTcpClient(
            host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0
        )

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def connect(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                ok = await self._client.connect()
        except TimeoutError as exc:
            raise DeviceTimeout(f"{self.endpoint}: connect timed out") from exc
        except (ModbusException, OSError) as exc:
            raise DeviceUnreachable(f"{self.endpoint}: {exc}") from exc
        if not ok:
            raise DeviceUnreachable(f"{self.endpoint}: connection refused or unreachable")

    def close(self) -> None:
        self._client.close()

    async def read(self, table: Table, address: int, count: int, unit_id: int) -> ReadResult:
        """Read one span. Returns words, bits, or the PLC's exception reply."""
        call = {
            Table.HOLDING: self._client.read_holding_registers,
            Table.INPUT: self._client.read_input_registers,
            Table.COIL: self._client.read_coils,
            Table.DISCRETE: self._client.read_discrete_inputs,
        }[table]
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                reply = await call(address, count=count, device_id=unit_id)
        except TimeoutError as exc:
            raise DeviceTimeout(f"{self.endpoint}: no reply within {self.timeout_s} s") from exc
        except ModbusIOException as exc:
            raise DeviceTimeout(f"{self.endpoint}: {exc}") from exc
        except (ConnectionException, OSError) as exc:
            raise DeviceUnreachable(f"{self.endpoint}: {exc}") from exc
        except ModbusException as exc:
            raise BadReply(f"{self.endpoint}: {exc}") from exc
        if reply.isError():
            return ExceptionReply(int(getattr(reply, "exception_code", 0)))
        values = reply.bits[:count] if table.is_bits else list(reply.registers)
        if len(values) != count:
            raise BadReply(f"{self.endpoint}: asked {count} values of {table}, got {len(values)}")
        return values
