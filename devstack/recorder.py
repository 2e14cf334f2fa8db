"""A recording Modbus proxy: sits between a Modbus master (the agent) and a device (a
simulator), forwards every byte both ways unchanged and records every request.

The read-only tests (tests/test_read_only.py, docs/read-only.md) point the agent at a
:class:`Recorder` instead of the simulator and then look at what it recorded: the
function code, unit id and start address / count of every request that left the agent.

Two framings, as the agent speaks them (``transport`` in the agent's device config):

* ``framer="socket"``: Modbus TCP. Each request is framed by its MBAP header
  (transaction id, protocol id 0, length, unit id); the function code is the first
  byte of the PDU, after the unit id.
* ``framer="rtu"``: RTU over TCP (``transport: rtu-over-tcp``). No header and no length:
  a frame is unit id, function code (byte 1), data, CRC-16. Its length follows from the
  function code (fixed for reads and single writes, a byte count for the multiple
  writes); the CRC is checked.

Bytes that cannot be framed (an MBAP header no Modbus TCP frame has, an RTU frame whose
CRC is wrong or whose function code has no known length) are still forwarded, and
recorded as a request with ``well_formed`` False and the function code where that
framing puts it: a test that allows only read codes then still sees a write hiding in
garbage. An MBAP stream that could not be framed once is not framed again on that
connection: every later chunk is recorded that way too.

The proxy runs its own event loop (asyncio streams) on a thread of its own, listens on
a free loopback port (``port``, known once started) and opens one connection to the
device for each connection it accepts; when either side closes or resets, the other is
closed too. Records are read from any thread (a lock guards them).

    with Recorder(sim.port) as recorder:          # Modbus TCP
        ... agent config: host 127.0.0.1, port recorder.port ...
    assert set(recorder.function_codes()) <= {1, 2, 3, 4}
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

Framer = Literal["socket", "rtu"]

_MBAP_HEADER = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_MBAP_MAX_LENGTH = 254  # unit id + the longest PDU (253 bytes)
_READ_CHUNK = 65536

# RTU request lengths (unit id + PDU + CRC) by function code: fixed ones, and those
# that carry a byte count (its offset in the frame, and the bytes besides the counted).
_RTU_FIXED = {1: 8, 2: 8, 3: 8, 4: 8, 5: 8, 6: 8, 7: 4, 8: 8, 11: 4, 12: 4, 17: 4, 22: 10, 24: 6}
_RTU_COUNTED = {15: (6, 9), 16: (6, 9), 20: (2, 5), 21: (2, 5), 23: (10, 13)}


@dataclass(frozen=True, slots=True)
class ModbusRequest:
    """One request that went from the master to the device."""

    connection: int  # 1, 2, ...: which accepted connection it came on
    transaction_id: int | None  # MBAP only; RTU frames have none
    unit_id: int | None
    function_code: int | None  # None only for a fragment too short to have one
    address: int | None  # the PDU's first 16-bit field (start address, for reads)
    count: int | None  # its second (quantity for reads; the value for writes 5 and 6)
    frame: bytes  # as it was forwarded
    well_formed: bool  # MBAP header valid / RTU length known and CRC right
    at: float  # time.monotonic() when it was framed


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def rtu_request_length(buffer: bytes | bytearray) -> int | None:
    """Length of the RTU request at the start of ``buffer``: 0 when more bytes are needed
    to tell, None when its function code has no known request length."""
    if len(buffer) < 2:
        return 0
    function = buffer[1]
    if function in _RTU_FIXED:
        return _RTU_FIXED[function]
    if function in _RTU_COUNTED:
        offset, besides = _RTU_COUNTED[function]
        return besides + buffer[offset] if len(buffer) > offset else 0
    return None


def _fields(pdu: bytes) -> tuple[int | None, int | None]:
    """The PDU's (function code first) first two 16-bit fields, where it has them."""
    address = int.from_bytes(pdu[1:3], "big") if len(pdu) >= 3 else None
    count = int.from_bytes(pdu[3:5], "big") if len(pdu) >= 5 else None
    return address, count


class _Framing:
    """Frames the requests of one connection off its byte stream, one chunk at a time."""

    def __init__(self, framer: Framer, connection: int) -> None:
        self.framer = framer
        self.connection = connection
        self.buffer = bytearray()
        self.broken = False  # MBAP: lost the frame boundaries on this connection

    def feed(self, data: bytes) -> list[ModbusRequest]:
        self.buffer += data
        return self._mbap() if self.framer == "socket" else self._rtu()

    def _mbap(self) -> list[ModbusRequest]:
        out: list[ModbusRequest] = []
        buffer = self.buffer
        while buffer:
            if self.broken:
                out.append(self._garbage(bytes(buffer), function_at=7))
                buffer.clear()
                break
            if len(buffer) < _MBAP_HEADER.size:
                break
            tid, protocol_id, length, unit = _MBAP_HEADER.unpack_from(buffer)
            if protocol_id != 0 or not 2 <= length <= _MBAP_MAX_LENGTH:
                self.broken = True
                continue
            end = 6 + length
            if len(buffer) < end:
                break
            frame = bytes(buffer[:end])
            del buffer[:end]
            out.append(self._framed(tid, unit, frame[7:], frame))
        return out

    def _rtu(self) -> list[ModbusRequest]:
        out: list[ModbusRequest] = []
        buffer = self.buffer
        while buffer:
            length = rtu_request_length(buffer)
            if length == 0 or (length is not None and len(buffer) < length):
                break  # the rest of the frame is still on its way
            if length is None:
                out.append(self._garbage(bytes(buffer), function_at=1))
                buffer.clear()
                break
            frame = bytes(buffer[:length])
            if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                out.append(self._garbage(bytes(buffer), function_at=1))  # resync: drop all
                buffer.clear()
                break
            del buffer[:length]
            out.append(self._framed(None, frame[0], frame[1:-2], frame))
        return out

    def _framed(self, tid: int | None, unit: int, pdu: bytes, frame: bytes) -> ModbusRequest:
        """A whole request frame, as read."""
        address, count = _fields(pdu)
        return ModbusRequest(
            self.connection, tid, unit, pdu[0], address, count, frame, True, time.monotonic()
        )

    def _garbage(self, chunk: bytes, function_at: int) -> ModbusRequest:
        unit_at = function_at - 1
        return ModbusRequest(
            self.connection,
            None,
            chunk[unit_at] if len(chunk) > unit_at else None,
            chunk[function_at] if len(chunk) > function_at else None,
            None,
            None,
            chunk,
            False,
            time.monotonic(),
        )

    def leftover(self) -> ModbusRequest | None:
        """What is left unframed when the connection ends (a request cut short)."""
        if not self.buffer:
            return None
        return self._garbage(bytes(self.buffer), function_at=7 if self.framer == "socket" else 1)


class RecorderError(Exception):
    """The recorder could not start."""


class Recorder:
    """A recording Modbus TCP / RTU-over-TCP proxy in front of ``target_host:target_port``."""

    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = "127.0.0.1",
        framer: Framer = "socket",
        host: str = "127.0.0.1",
    ) -> None:
        if framer not in ("socket", "rtu"):
            raise ValueError(f"framer must be socket or rtu, not {framer!r}")
        self.target = (target_host, target_port)
        self.framer: Framer = framer
        self.host = host
        self.port = 0  # the listening port, once started
        self._lock = threading.Lock()
        self._requests: list[ModbusRequest] = []
        self._connections = 0
        self._upstream_failures = 0
        self._bytes = {"to_device": 0, "to_master": 0}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # -- records (any thread) ----------------------------------------------------------

    def requests(self) -> list[ModbusRequest]:
        """Every request so far, in order of arrival (a copy)."""
        with self._lock:
            return list(self._requests)

    def function_codes(self) -> Counter[int | None]:
        """How many requests of each function code."""
        with self._lock:
            return Counter(request.function_code for request in self._requests)

    def count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def upstream_failures(self) -> int:
        """Accepted connections the device refused (closed at once)."""
        with self._lock:
            return self._upstream_failures

    def bytes_forwarded(self) -> dict[str, int]:
        """Bytes forwarded so far: ``to_device`` and ``to_master``."""
        with self._lock:
            return dict(self._bytes)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, requests: list[ModbusRequest]) -> None:
        if requests:
            with self._lock:
                self._requests.extend(requests)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Recorder:
        if self._thread is not None:
            raise RecorderError("already started")
        self._thread = threading.Thread(
            target=self._main, name=f"modbus-recorder-{self.target[1]}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(15):
            raise RecorderError("the recorder did not start listening within 15 s")
        if self._error is not None:
            raise RecorderError(f"the recorder could not listen: {self._error}")
        return self

    def stop(self) -> None:
        """Close every connection and the listener; idempotent."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop just ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the proxy (its own loop) ------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        handlers: set[asyncio.Task[None]] = set()
        open_writers: set[asyncio.StreamWriter] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Never ends cancelled: asyncio (3.11) logs a cancelled connection handler as an
            # error. stop() aborts the sockets instead, and the handler returns.
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            open_writers.add(writer)
            try:
                await self._proxy(reader, writer, open_writers)
            except asyncio.CancelledError:
                pass
            finally:
                _abort(writer)
                open_writers.discard(writer)
                handlers.discard(task)

        server = await asyncio.start_server(handle, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for writer in list(open_writers):
                _abort(writer)
            if handlers:
                _done, pending = await asyncio.wait(set(handlers), timeout=5)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=5)
            await server.wait_closed()
            await asyncio.sleep(0)  # let the aborted transports close their sockets

    async def _proxy(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        open_writers: set[asyncio.StreamWriter],
    ) -> None:
        with self._lock:
            self._connections += 1
            framing = _Framing(self.framer, self._connections)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            with self._lock:
                self._upstream_failures += 1
            return
        open_writers.add(up_writer)
        to_device = asyncio.ensure_future(self._pump(reader, up_writer, "to_device", framing.feed))
        to_master = asyncio.ensure_future(self._pump(up_reader, writer, "to_master", None))
        reset = True  # unless one side ends cleanly (stop() aborts both)
        try:
            done, _ = await asyncio.wait(
                {to_device, to_master}, return_when=asyncio.FIRST_COMPLETED
            )
            reset = any(task.exception() is not None or task.result() for task in done)
        finally:
            for side in (writer, up_writer):  # a reset on one side is a reset on the other
                if reset:
                    _abort(side)
                else:
                    side.close()
            open_writers.discard(up_writer)
            for task in (to_device, to_master):
                task.cancel()
            await asyncio.wait({to_device, to_master})
            self._record([r for r in [framing.leftover()] if r is not None])

    async def _pump(self, reader, writer, direction: str, frame) -> bool:
        """Forward until EOF (False) or a reset (True)."""
        try:
            while data := await reader.read(_READ_CHUNK):
                if frame is not None:
                    self._record(frame(data))
                writer.write(data)
                with self._lock:
                    self._bytes[direction] += len(data)
                await writer.drain()
        except ConnectionError:
            return True
        return False


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
