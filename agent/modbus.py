"""The Modbus boundary of the agent: the only agent module that imports pymodbus.

pymodbus errors become our small error tree, chained ``from exc``, in one place: the
table :data:`MODBUS_EXC_MAP` and the context manager :func:`map_modbus_errors` that
applies it. A Modbus exception reply (the PLC answered "illegal data address", say) is
data, returned as :class:`ExceptionReply`, not raised: the device is up, one span is not
readable.

Three transports, one class:

* Modbus TCP (MBAP header, ``ModbusConnection.tcp(host, port, t)``): a PLC, or a
  TCP-to-RTU gateway with several unit ids behind one socket. Read by
  :class:`MbapProtocol`, written here by hand (see below).
* RTU over TCP (``ModbusConnection.tcp(host, port, t, framer="rtu")``): RTU frames with
  their CRC on a TCP socket, as transparent serial-to-Ethernet converters pass them.
* Serial RTU (``ModbusConnection.serial(path, t, ...)``): an RS-485 bus on a tty.

Sharing. One connection serves every unit id behind its endpoint (use
:func:`connection_key` to find the one to share). :meth:`ModbusConnection.read` may be
called from several asyncio tasks at once: requests are serialised by an asyncio.Lock
and the timeout of a request starts only once it holds the lock, so waiting for the
other units never counts against it. A silent unit therefore costs the others at most
its own ``timeout_s`` per request while they queue (on RTU plus the drain below:
``drain_s``, longer only while bytes keep arriving, ``timeout_s`` more at most). The
first request of a task that queued behind it still gets its full ``timeout_s``.

Why Modbus TCP is not read through pymodbus. The agent only reads (function codes 1-4,
:data:`_FUNCTION_CODE`), and a read over MBAP is one 12-byte request and one reply
framed by its own length field: nothing to negotiate, no CRC, no inter-frame timing.
pymodbus' general client (transaction manager, PDU class registry, framer, logging and
trace hooks, ``wait_for`` per request) cost 110 us of CPU per request on the machine
where issue 16 measured it, where an asyncio protocol that frames the reply itself costs
54 us, most of it the socket system calls and the event loop's wake-up
(``bench/modbus_client.py`` prints both). On a small PLC read in four requests per poll
that is a fifth of the agent's CPU. pymodbus stays where it earns its place: RTU framing
(CRC, frames without a length, inter-frame silence) over TCP and on serial lines, with
pyserial under it.

After a timeout:

* Modbus TCP: the connection stays open. A late reply carries the transaction id of a
  request nobody waits for and is skipped, as is a reply whose unit id is not the one
  asked, so the other unit ids are not affected. Whether a timeout means a dead link is
  the caller's decision. A byte stream that cannot be framed (protocol id not 0, a
  length no MBAP frame has) closes the connection: nothing after it can be trusted.
* RTU (serial or over TCP): frames have no transaction id, so a late reply could be
  taken for the answer to the next request. The connection stays open, but the request
  keeps the lock until the line has been quiet for ``drain_s`` (default
  :data:`RTU_DRAIN_S`; a reply still streaming in extends it, by at most ``timeout_s``)
  and everything received meanwhile is discarded. A reply later than that from another
  unit id is skipped by pymodbus (unit id mismatch); one from the same unit would have
  to match the next request's function code and length to pass, which :meth:`read`
  checks. Closing instead would not help on serial (the bytes are still on the wire) and
  a transparent converter forwards late bytes to the next TCP session too.

Awkward devices (the agent's device options, docs/config.md). All are off by default,
and off they cost nothing: no timer, no await, one attribute test per request at most.

* ``pause_s``: before a request, wait until the link has been quiet this long since the
  previous request ended (answered or timed out), for PLCs and RS-485 converters that
  drop a request following an answer too soon. The pause is taken holding the lock and
  before the request's timeout starts.
* ``delay_after_connect_s``: after the connection (or serial port) opens, wait this long
  before the first request, holding the lock, for gateways that need it.
* :meth:`ModbusConnection.recycle`: close between two requests; the next request opens
  the connection again itself (delay included), so units sharing the link that queue
  meanwhile are not failed by it. The agent's ``reconnect_every_cycle``.
* ``timeout_s`` of :meth:`ModbusConnection.read`: one request's own timeout, for a
  unit that answers slower than the others behind its gateway.

A link shared by several units takes the largest pause and delay any of them needs
(:meth:`ModbusConnection.require`): both are about the line and what is on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import cast

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from agent.config import Framer, connection_key
from derrick.plc.profile import Table
from derrick.plumbing.serial import TtyError, close_refused_port

# Line quiet time that ends an RTU drain after a timeout (see module docstring).
RTU_DRAIN_S = 0.1
# pymodbus closes a TCP connection after this many requests in a row without an answer;
# with one connection shared by several unit ids that is our decision, not pymodbus'.
_NEVER = 2**31

_FUNCTION_CODE = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
# MBAP: transaction id, protocol id (0), length of what follows (unit id + PDU), unit id;
# a read request's PDU is function, first address, count.
_MBAP_HEADER = struct.Struct(">HHH")
_MBAP_READ = struct.Struct(">HHHBBHH")
_MBAP_MAX_LENGTH = 254  # unit id + the longest PDU (253 bytes)
_EXCEPTION_FLAG = 0x80


class ModbusError(Exception):
    """The device could not be read."""


class DeviceUnreachable(ModbusError):
    """No connection to the device (refused, reset, host down, serial port missing)."""


class DeviceTimeout(ModbusError):
    """Connected, but no reply within the timeout."""


class BadReply(ModbusError):
    """A reply that does not fit the request (wrong length or function)."""


@dataclass(frozen=True, slots=True)
class ExceptionReply:
    """The PLC answered with a Modbus exception code (02 = illegal data address)."""

    code: int


ReadResult = list[int] | list[bool] | ExceptionReply


# What pymodbus (and the transport under it) raises -> our error. Most specific first: the
# first entry the exception is an instance of wins (TimeoutError is an OSError, and both
# pymodbus entries are ModbusExceptions).
MODBUS_EXC_MAP: dict[type[Exception], type[ModbusError]] = {
    TimeoutError: DeviceTimeout,  # our asyncio.timeout guard around pymodbus' own
    ModbusIOException: DeviceTimeout,  # "No response received" (also a stray reply's ids)
    ConnectionException: DeviceUnreachable,  # not connected, or the connection went
    TtyError: DeviceUnreachable,  # the tty refuses the line settings (not an OSError)
    OSError: DeviceUnreachable,  # refused, reset, host down, serial port missing
    ModbusException: BadReply,  # any other pymodbus complaint about a request or reply
}


@contextmanager
def map_modbus_errors(endpoint: str, *, timed_out: str = "no reply") -> Iterator[None]:
    """Raise what pymodbus raises in the block as our error (:data:`MODBUS_EXC_MAP`).

    The message is ``endpoint: detail``: ``timed_out`` for a DeviceTimeout, else the
    library's text. Chained ``from`` the original. Anything not in the table passes
    untouched, as do cancellation, KeyboardInterrupt and SystemExit (not Exceptions).
    A tty that refused its settings has its half-opened port closed first (see
    :func:`derrick.plumbing.serial.close_refused_port`).
    """
    try:
        yield
    except Exception as exc:
        mapped = next(
            (ours for theirs, ours in MODBUS_EXC_MAP.items() if isinstance(exc, theirs)), None
        )
        if mapped is None:
            raise
        if mapped is DeviceTimeout:
            detail = timed_out
        elif isinstance(exc, TtyError):
            close_refused_port(exc)
            detail = f"the tty refuses these line settings: {exc}"
        else:
            detail = str(exc)
        raise mapped(f"{endpoint}: {detail}") from exc


class _QuietPymodbus(logging.Filter):
    """Drop pymodbus' per-request error lines for what read() reports itself.

    Timeouts and skipped late replies are raised as DeviceTimeout (or silently drained)
    here, and the poller logs state changes once; pymodbus would log each one at ERROR.
    """

    HANDLED = (
        "No response received",  # a timeout: DeviceTimeout
        "received pdu without a corresponding request",  # late reply, drained
        "request ask for",  # late reply of another unit id / transaction, skipped
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.HANDLED)


logging.getLogger("pymodbus.logging").addFilter(_QuietPymodbus())


class _Unframeable(ValueError):
    """The byte stream from the device is not Modbus TCP (see MbapProtocol)."""


class MbapProtocol(asyncio.Protocol):
    """Modbus TCP replies framed off the byte stream, each handed to the request awaiting it.

    One request at a time is awaited (ModbusConnection serialises them): a reply is
    taken when its transaction id and unit id are that request's, and skipped otherwise
    (a late reply to a request that timed out, a gateway answering for another unit),
    counted in ``skipped``. A header no Modbus TCP frame has closes the connection and
    fails the awaited request with :class:`_Unframeable`: after garbage, where the next
    frame starts is anyone's guess.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._awaited: tuple[int, int, asyncio.Future[bytes]] | None = None
        self.skipped = 0

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def request(self, frame: bytes, tid: int, unit_id: int) -> asyncio.Future[bytes]:
        """Send ``frame``; the future gets the reply with ``tid`` and ``unit_id``."""
        assert self._transport is not None
        future = asyncio.get_running_loop().create_future()
        self._awaited = (tid, unit_id, future)
        self._transport.write(frame)
        return future

    def forget(self, future: asyncio.Future[bytes]) -> None:
        """The request of ``future`` is over (answered, timed out or cancelled)."""
        if self._awaited is not None and self._awaited[2] is future:
            self._awaited = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()  # connection_lost fails the awaited request
            self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _MBAP_HEADER.size:
            tid, protocol_id, length = _MBAP_HEADER.unpack_from(buffer)
            if protocol_id != 0 or not 2 <= length <= _MBAP_MAX_LENGTH:
                self._unframeable(
                    f"not a Modbus TCP reply (protocol id {protocol_id}, length {length})"
                )
                return
            end = 6 + length
            if len(buffer) < end:
                return
            frame = bytes(buffer[:end])
            del buffer[:end]
            awaited = self._awaited
            if awaited is not None and awaited[0] == tid and awaited[1] == frame[6]:
                if not awaited[2].done():
                    awaited[2].set_result(frame)
            else:
                self.skipped += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(ConnectionResetError("connection lost"))

    def _unframeable(self, why: str) -> None:
        self._buffer.clear()
        self._fail(_Unframeable(why))
        self.close()

    def _fail(self, exc: Exception) -> None:
        awaited, self._awaited = self._awaited, None
        if awaited is not None and not awaited[2].done():
            awaited[2].set_exception(exc)


class ModbusConnection:
    """One connection to a device, or to a gateway / bus with several unit ids behind it.

    pymodbus' own retries and reconnects are off: the poller decides when to retry, so
    a dead device costs one timeout per request, not ``retries x timeout``.

    ``ModbusConnection(host, port, timeout_s)`` is Modbus TCP, the same as
    :meth:`tcp` with the default framer.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout_s: float,
        framer: str = "socket",
        *,
        drain_s: float = RTU_DRAIN_S,
        pause_s: float = 0.0,
        delay_after_connect_s: float = 0.0,
    ) -> None:
        kind = Framer(framer)
        self._setup(
            tcp_address=(host, port) if kind is Framer.SOCKET else None,
            new_client=None
            if kind is Framer.SOCKET
            else partial(
                AsyncModbusTcpClient,
                host,
                port=port,
                framer=FramerType.RTU if kind is Framer.RTU else FramerType.SOCKET,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._traced,
            ),
            endpoint=f"{host}:{port}" if kind is Framer.SOCKET else f"rtu-over-tcp {host}:{port}",
            key=connection_key(host=host, port=port, framer=kind),
            timeout_s=timeout_s,
            rtu=kind is Framer.RTU,
            drain_s=drain_s,
        )
        self.require(pause_s=pause_s, delay_after_connect_s=delay_after_connect_s)

    @classmethod
    def tcp(
        cls,
        host: str,
        port: int,
        timeout_s: float,
        framer: str = "socket",
        *,
        drain_s: float = RTU_DRAIN_S,
        pause_s: float = 0.0,
        delay_after_connect_s: float = 0.0,
    ) -> ModbusConnection:
        """Modbus TCP (``framer="socket"``) or RTU over TCP (``framer="rtu"``)."""
        return cls(
            host,
            port,
            timeout_s,
            framer,
            drain_s=drain_s,
            pause_s=pause_s,
            delay_after_connect_s=delay_after_connect_s,
        )

    @classmethod
    def serial(  # noqa: PLR0917 - the serial line settings, in their usual order
        cls,
        port_path: str,
        timeout_s: float,
        baudrate: int = 19200,
        parity: str = "E",
        stopbits: int = 1,
        bytesize: int = 8,
        *,
        drain_s: float = RTU_DRAIN_S,
        pause_s: float = 0.0,
        delay_after_connect_s: float = 0.0,
    ) -> ModbusConnection:
        """Serial RTU on a tty (RS-485 adapter). 19200 8E1 is the Modbus default."""
        if parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, not {parity!r}")
        self = cls.__new__(cls)
        self._setup(
            new_client=partial(
                AsyncModbusSerialClient,
                port_path,
                framer=FramerType.RTU,
                baudrate=baudrate,
                bytesize=bytesize,
                parity=parity,
                stopbits=stopbits,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._traced,
            ),
            endpoint=f"{port_path} {baudrate} {bytesize}{parity}{stopbits}",
            key=connection_key(serial_port=port_path),
            timeout_s=timeout_s,
            rtu=True,
            drain_s=drain_s,
        )
        self.require(pause_s=pause_s, delay_after_connect_s=delay_after_connect_s)
        return self

    def _setup(
        self,
        *,
        new_client: Callable[[], AsyncModbusTcpClient | AsyncModbusSerialClient] | None,
        tcp_address: tuple[str, int] | None = None,
        endpoint: str,
        key: str,
        timeout_s: float,
        rtu: bool,
        drain_s: float,
    ) -> None:
        """The pymodbus client (RTU; Modbus TCP has ``tcp_address`` and no client) is
        made by the first connect(): it needs a running loop, and a connection may be built
        (and shared) before there is one."""
        self.endpoint = endpoint  # for logs
        self.key = key  # connection_key() of this endpoint
        self.timeout_s = timeout_s
        self.rtu = rtu
        self.drain_s = drain_s
        self._new_client = new_client
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._tcp_address = tcp_address  # Modbus TCP, read by MbapProtocol
        self._mbap: MbapProtocol | None = None
        self._tid = 0
        self._lock = asyncio.Lock()
        self._last_rx = 0.0  # loop time of the last bytes received (RTU drain)
        self.pause_s = 0.0  # see require()
        self.delay_after_connect_s = 0.0
        self._quiet_since = -math.inf  # loop time the last request ended (pause_s only)
        self._reopen = False  # closed by recycle(): the next read opens it again

    def require(self, *, pause_s: float = 0.0, delay_after_connect_s: float = 0.0) -> None:
        """Raise the link's pause between requests and delay after connect to at least
        these (seconds): a link shared by several units takes the largest any of them
        needs. Never lowers them."""
        if pause_s < 0 or delay_after_connect_s < 0:
            raise ValueError("pause_s and delay_after_connect_s cannot be negative")
        self.pause_s = max(self.pause_s, pause_s)
        self.delay_after_connect_s = max(self.delay_after_connect_s, delay_after_connect_s)

    def _traced(self, sending: bool, data: bytes) -> bytes:
        """pymodbus packet trace: remember when bytes last arrived."""
        if not sending:
            self._last_rx = asyncio.get_running_loop().time()
        return data

    @property
    def connected(self) -> bool:
        if self._tcp_address is not None:
            return self._mbap is not None and self._mbap.connected
        return self._client is not None and bool(self._client.connected)

    async def connect(self) -> None:
        """Open the connection; a no-op when it is open (safe from several tasks).

        With ``delay_after_connect_s`` it returns that much after the connection opened
        (and no other task's request goes out before)."""
        async with self._lock:
            if self.connected:
                return
            await self._open()

    async def _open(self) -> None:
        """Open the connection (the lock is held), then wait ``delay_after_connect_s``."""
        self._reopen = False
        if self._tcp_address is not None:
            await self._connect_mbap()
        else:
            if self._client is None:
                self._client = self._new_client()
                self._client.set_max_no_responses(_NEVER)
            with map_modbus_errors(self.endpoint, timed_out="connect timed out"):
                async with asyncio.timeout(self.timeout_s * 2):
                    ok = await self._client.connect()
                _raise_if_cancelled()
            if not ok:
                what = (
                    "cannot open the serial port (missing, in use or no permission)"
                    if self.key.startswith("serial")
                    else "connection refused or unreachable"
                )
                raise DeviceUnreachable(f"{self.endpoint}: {what}")
        if self.delay_after_connect_s:
            await asyncio.sleep(self.delay_after_connect_s)

    async def _connect_mbap(self) -> None:
        assert self._tcp_address is not None
        host, port = self._tcp_address
        loop = asyncio.get_running_loop()
        with map_modbus_errors(self.endpoint, timed_out="connect timed out"):
            async with asyncio.timeout(self.timeout_s * 2):
                _transport, self._mbap = await loop.create_connection(MbapProtocol, host, port)

    def close(self) -> None:
        """Close (idempotent); requests fail with DeviceUnreachable until connect()."""
        self._reopen = False
        if self._mbap is not None:
            self._mbap.close()
        if self._client is not None:
            self._client.close()

    async def recycle(self) -> None:
        """Close the connection once no request is in flight; the next :meth:`read`
        opens it again itself (with ``delay_after_connect_s``), also one that is already
        queued. For devices that leak or lock sessions (``reconnect_every_cycle``)."""
        async with self._lock:
            self.close()
            self._reopen = True

    async def read(
        self,
        table: Table,
        address: int,
        count: int,
        unit_id: int,
        timeout_s: float | None = None,
    ) -> ReadResult:
        """Read one span of unit ``unit_id``: words, bits, or the PLC's exception reply.

        Safe to call from several tasks: they queue, and each request's timeout starts
        when its turn comes (after the link's ``pause_s``). ``timeout_s``: this
        request's own, instead of the connection's.
        """
        if table not in _FUNCTION_CODE:  # read-only by design (docs/read-only.md)
            raise ValueError(f"the agent only reads (function codes 1-4), not {table!r}")
        if self._tcp_address is not None:
            return await self._read_mbap(table, address, count, unit_id, timeout_s)
        client = self._client
        if client is None:
            raise DeviceUnreachable(f"{self.endpoint}: not connected")
        call = {
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
            Table.COIL: client.read_coils,
            Table.DISCRETE: client.read_discrete_inputs,
        }[table]
        timeout = timeout_s or self.timeout_s
        own_timeout = timeout != self.timeout_s
        async with self._lock:
            if self.pause_s:
                await self._pause()
            if self._reopen and not client.connected:
                await self._open()
            if own_timeout:  # pymodbus' reply timeout is the client's: this request's
                client.ctx.comm_params.timeout_connect = timeout
            try:
                with map_modbus_errors(self.endpoint):
                    async with asyncio.timeout(timeout * 2):  # pymodbus times out first
                        reply = await call(address, count=count, device_id=unit_id)
                    _raise_if_cancelled()
            except DeviceTimeout as exc:
                raise await self._timed_out(unit_id, timeout) from exc.__cause__
            finally:
                if own_timeout:
                    client.ctx.comm_params.timeout_connect = self.timeout_s
                if self.pause_s:
                    self._quiet_since = asyncio.get_running_loop().time()
        return self._result(reply, table, count, unit_id)

    async def _read_mbap(
        self, table: Table, address: int, count: int, unit_id: int, timeout_s: float | None
    ) -> ReadResult:
        function = _FUNCTION_CODE[table]
        async with self._lock:
            if self.pause_s:  # first: nothing may await between the check and the send
                await self._pause()
            protocol = self._mbap
            if protocol is None or not protocol.connected:
                protocol = await self._reopened()
            self._tid = self._tid % 0xFFFF + 1
            frame = _MBAP_READ.pack(self._tid, 0, 6, unit_id, function, address, count)
            reply = protocol.request(frame, self._tid, unit_id)
            timeout = timeout_s or self.timeout_s
            # A timer that fails the reply, not asyncio.timeout(): that one's cancel and
            # uncancel of the task cost a third of a request's CPU here.
            expiry = asyncio.get_running_loop().call_later(timeout, _expire, reply)
            try:
                frame = await reply
            except TimeoutError as exc:
                raise await self._timed_out(unit_id, timeout) from exc
            except ConnectionError as exc:
                raise DeviceUnreachable(f"{self.endpoint}: connection lost") from exc
            except _Unframeable as exc:
                raise BadReply(f"{self.endpoint}: unit {unit_id}: {exc}") from exc
            finally:
                expiry.cancel()
                protocol.forget(reply)
                if self.pause_s:
                    self._quiet_since = asyncio.get_running_loop().time()
        return self._mbap_result(frame, table, count, unit_id)

    async def _reopened(self) -> MbapProtocol:
        """The Modbus TCP connection opened again (the lock is held) if recycle() closed
        it; DeviceUnreachable if it is closed otherwise, or will not open."""
        if self._reopen:
            await self._open()
            if self._mbap is not None and self._mbap.connected:
                return self._mbap
        raise DeviceUnreachable(f"{self.endpoint}: not connected")

    async def _pause(self) -> None:
        """Wait (the lock is held) until the link has been quiet for ``pause_s``."""
        wait = self._quiet_since + self.pause_s - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)

    def _mbap_result(self, frame: bytes, table: Table, count: int, unit_id: int) -> ReadResult:
        """The values (or exception code) of one MBAP reply ``frame`` (header included)."""
        function, asked = frame[7], _FUNCTION_CODE[table]
        if function & ~_EXCEPTION_FLAG != asked:
            raise BadReply(
                f"{self.endpoint}: unit {unit_id}: asked function {asked}, "
                f"the reply is for function {function & ~_EXCEPTION_FLAG}"
            )
        if len(frame) < 9:
            raise BadReply(
                f"{self.endpoint}: unit {unit_id}: a reply of function {asked} without data"
            )
        if function & _EXCEPTION_FLAG:
            return ExceptionReply(frame[8])
        size = frame[8]
        wanted = (count + 7) // 8 if table.is_bits else 2 * count
        if size != wanted or len(frame) != 9 + size:
            raise BadReply(
                f"{self.endpoint}: unit {unit_id}: asked {count} values of {table} "
                f"({wanted} bytes), the reply has {len(frame) - 9} bytes saying {size}"
            )
        if table.is_bits:
            bits = int.from_bytes(frame[9:], "little")
            return [bool(bits >> i & 1) for i in range(count)]
        return list(struct.unpack_from(f">{count}H", frame, 9))

    async def _timed_out(self, unit_id: int, timeout_s: float | None = None) -> ModbusError:
        """The error for a request without answer (the message made only then); on RTU,
        drain the line before the next request may go."""
        if not self.connected:  # dropped while waiting: say so, not "timeout"
            return DeviceUnreachable(f"{self.endpoint}: connection lost")
        if self.rtu:
            await self._drain()
        waited = self.timeout_s if timeout_s is None else timeout_s
        return DeviceTimeout(f"{self.endpoint}: unit {unit_id}: no reply within {waited} s")

    async def _drain(self) -> None:
        """Hold the line (the lock is held) until it has been quiet for ``drain_s``."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            now = loop.time()
            quiet = now - max(self._last_rx, start)
            if quiet >= self.drain_s or now - start >= self.drain_s + self.timeout_s:
                break
            await asyncio.sleep(self.drain_s - quiet)
        # pymodbus ignores a complete late frame (its request is gone); a partial one
        # would sit in the receive buffer until the next send clears it. Clear it now.
        if self._client is not None:
            self._client.ctx.recv_buffer = b""

    def _result(self, reply, table: Table, count: int, unit_id: int) -> ReadResult:
        function = int(getattr(reply, "function_code", 0)) & 0x7F
        if function != _FUNCTION_CODE[table]:
            raise BadReply(
                f"{self.endpoint}: unit {unit_id}: asked function {_FUNCTION_CODE[table]}, "
                f"the reply is for function {function}"
            )
        if reply.isError():
            return ExceptionReply(int(getattr(reply, "exception_code", 0)))
        values = reply.bits[:count] if table.is_bits else list(reply.registers)
        if len(values) != count:
            raise BadReply(f"{self.endpoint}: asked {count} values of {table}, got {len(values)}")
        return values


def _expire(reply: asyncio.Future[bytes]) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError())


def _raise_if_cancelled() -> None:
    """Let a cancellation through that pymodbus swallowed.

    pymodbus awaits each reply with ``asyncio.wait_for``, which on Python 3.11 returns
    the reply and drops a cancellation that arrives in the same instant: the polling
    task would go on forever and the agent would never stop (seen: one SIGTERM in six
    with four PLCs at 0.5 s). The task still counts the request (``cancelling()``).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
