"""``derrick-agent probe``: what a PLC answers, how its registers read, and a draft profile.

A technician onboarding a PLC has its address, a manual (maybe) and a display. The probe
finds which addresses answer in each of the four Modbus tables, shows every 2- and
4-register span under each word order with plausibility hints, picks the type and order
that give a value read off the display (``--expect``), and writes a draft device profile
the agent takes unchanged.

It only reads (function codes 1-4, through :class:`agent.modbus.ModbusConnection`, whose
only request is a read): nothing it does can change a PLC.

The search, per table (all tables at once over the one link: requests interleave, so a
bound cuts every table at about the same depth):

* In a run of answering addresses, read the largest block (125 registers, 2000 bits).
  A refused block ends the run somewhere inside it: bisect the count (``[p, p+k)``
  answers, ``[p, p+2k)`` not...) down to the exact last answering address, about seven
  requests. A device that answers exception 03 (illegal data value: too many at once)
  gets smaller blocks.
* After a run, read addresses one at a time. Only a lone read proves an address refused:
  a refused block of n says only that one of its n addresses is. So a hole of h
  addresses costs h requests and is exact; the first lone address that answers starts
  the next run. The last address of every run is read alone once: a device (and the
  simulator's bit tables) may answer a read that starts at a defined address with the
  rest of a 16-bit word padded, yet refuse those padding bits read alone.
* Past ``EXACT_GAP`` refused addresses in a row, the stretch is sampled: every 2nd, 4th,
  ... ``stride``-th address (default 16) is read alone; when one answers, the start of
  its run is bisected exactly. Every run at least ``stride`` long is found, shorter runs
  deep inside empty stretches may be missed (reported as "sampled"); ``--stride 1`` reads
  every address (exact, one request per address).
* Exception 02 is data. No reply is a refusal too (some devices stay silent on addresses
  they lack) until ``SILENT_LIMIT`` in a row, when a known answering address is read
  again: silence there means the device is gone (exit 1). A dropped link is reconnected
  once. ``--max-requests`` and ``--deadline-s`` bound the search; whatever they cut is
  reported as not probed.

Then the answering holding and input ranges are read once more after ``--settle-s``:
a value is "stable" when both reads agree within 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import structlog
import yaml

from agent.config import BAUDRATES
from agent.modbus import (
    DeviceTimeout,
    DeviceUnreachable,
    ExceptionReply,
    ModbusConnection,
    ModbusError,
)
from derrick.plc.profile import MODICON_PREFIX, Profile, Register, Table, map_problems
from derrick.plc.registers import CodecError, DataType, Order, decode, register_count, scaled
from derrick.plumbing import logs

log = structlog.get_logger(__name__)

PROG = "derrick-agent probe"
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3
RETRIED_CODES = (4, 6)  # device failure, busy: asked once more
GATEWAY_CODES = (0x0A, 0x0B)  # a gateway's "no path" / "target did not respond"
MAX_REGISTERS, MAX_BITS = 125, 2000
EXACT_GAP = 16
"""Refused addresses in a row read one by one before a stretch is sampled."""
SILENT_LIMIT = 8
"""Requests in a row without a reply before the device is checked for life."""
ENGINEERING_MAX = 1e6
TINY = 1e-5
STABLE_REL = 0.1
"""Two reads of a value within 10 % of each other: stable. A live value drifts by a few
percent between them; a wrong order of it (its low word read as the high one) jumps by
orders of magnitude."""
EXPECT_REL = 0.01
SCALES = (1.0, 0.1, 0.01, 0.001, 10.0)
ORDERS: dict[str, tuple[Order, Order]] = {  # name -> (byte_order, word_order)
    "ABCD": (Order.BIG, Order.BIG),
    "CDAB": (Order.BIG, Order.LITTLE),
    "BADC": (Order.LITTLE, Order.BIG),
    "DCBA": (Order.LITTLE, Order.LITTLE),
}
WORD_ORDERS = ("ABCD", "BADC")  # one register: bytes as sent, or swapped
COMMON_ORDERS = ("ABCD", "CDAB")
ROW_SCORE = {2: 4, 4: 8}
"""Least score of a 2- or 4-register reading shown as one value: 32 bits plausible, not
zero, in a common order or stable; 64 bits all of that. A wider reading needs more: by
chance, some order of some type of any four words reads plausibly."""
WIDE_TYPES = {
    2: (DataType.FLOAT32, DataType.UINT32, DataType.INT32),
    4: (DataType.FLOAT64, DataType.UINT64, DataType.INT64),
}
TYPE_PREFERENCE = (
    DataType.FLOAT32,
    DataType.UINT16,
    DataType.INT16,
    DataType.UINT32,
    DataType.INT32,
    DataType.FLOAT64,
    DataType.UINT64,
    DataType.INT64,
)
TYPE_RANK = {t: i for i, t in enumerate(TYPE_PREFERENCE)}
FLOATS = (DataType.FLOAT32, DataType.FLOAT64)
TABLE_ORDER = (Table.COIL, Table.DISCRETE, Table.INPUT, Table.HOLDING)
TABLE_NAMES = {
    "coil": Table.COIL,
    "coils": Table.COIL,
    "discrete": Table.DISCRETE,
    "discretes": Table.DISCRETE,
    "input": Table.INPUT,
    "inputs": Table.INPUT,
    "holding": Table.HOLDING,
    "holdings": Table.HOLDING,
}
MODICON_TABLE = {prefix: Table(name) for name, prefix in MODICON_PREFIX.items()}

Span = tuple[int, int]  # [start, end): addresses start .. end - 1


class UsageError(ValueError):
    """A command line the probe cannot run (exit 2)."""


# --- address spans ------------------------------------------------------------------------


def add_span(spans: list[Span], start: int, end: int) -> None:
    """Add ``[start, end)`` to ``spans`` (sorted, touching spans merged), in place."""
    if start >= end:
        return
    merged: list[Span] = []
    for a, b in sorted([*spans, (start, end)]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    spans[:] = merged


def remove_span(spans: list[Span], start: int, end: int) -> None:
    """Take ``[start, end)`` out of ``spans``, in place."""
    kept: list[Span] = []
    for a, b in spans:
        kept += [(a, min(b, start))] if a < start else []
        kept += [(max(a, end), b)] if b > end else []
    spans[:] = [(a, b) for a, b in kept if a < b]


def span_text(spans: Iterable[Span]) -> str:
    """``0-8, 10-29`` (inclusive, as a technician writes them); ``none``."""
    parts = [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in spans]
    return ", ".join(parts) or "none"


def modicon(table: Table, address: int) -> str:
    """The 1-based Modicon number of an address (``40001`` for holding 0), if it has one."""
    prefix = MODICON_PREFIX.get(table.value)
    if prefix is None:
        return f"{address + 1:05d}" if address < 9999 else ""
    return f"{prefix}{address + 1:04d}" if address < 9999 else f"{prefix}{address + 1:05d}"


# --- what the user asks ---------------------------------------------------------------------


@dataclass(frozen=True)
class Expectation:
    """``--expect TAG=ADDRESS:VALUE``: a value read off the display, and where it lives."""

    tag: str
    tables: tuple[Table, ...]  # one, or holding and input for a bare 0-based address
    address: int
    value: float | bool
    text: str  # as given, for the report
    half_unit: float = 0.0  # the display's rounding: half its last digit

    @property
    def tolerance(self) -> float:
        if isinstance(self.value, bool):
            return 0.0
        return max(EXPECT_REL * abs(self.value), self.half_unit)

    @property
    def where(self) -> str:
        if len(self.tables) > 1:
            return f"address {self.address} (holding or input)"
        table = self.tables[0]
        number = modicon(table, self.address) if table is not Table.COIL else ""
        return f"{table} {self.address}" + (f" ({number})" if number else "")


_EXPECT = re.compile(r"^(?P<tag>[A-Za-z0-9_.-]{1,64})=(?P<where>.+):(?P<value>[^:]+)$")


def parse_expect(text: str) -> Expectation:
    """``hook_load=40001:12.5``, ``flow=input:4:31.2``, ``pump=coil:0:1``, ``x=12:3.5``.

    Addresses as in a profile: 0-based protocol addresses, with the table named
    (``holding:12``) or not (``12``: holding or input, whichever answers); or 1-based
    Modicon numbers (``40013`` = holding 12, ``30001`` = input 0, ``10001`` = discrete 0,
    also 6-digit ``400013``). Coils have no Modicon prefix that tells them apart: write
    ``coil:N``.
    """
    match = _EXPECT.match(text.strip())
    if match is None:
        raise UsageError(f"--expect {text!r}: give TAG=ADDRESS:VALUE, e.g. hook_load=40001:12.5")
    tables, address = _parse_address(match["where"], text)
    if tables[0].is_bits:
        return Expectation(match["tag"], tables, address, _parse_bool(match["value"], text), text)
    value, half_unit = _parse_number(match["value"], text)
    return Expectation(match["tag"], tables, address, value, text, half_unit)


def _parse_address(where: str, text: str) -> tuple[tuple[Table, ...], int]:
    name, _, number = where.rpartition(":")
    if name and name.lower() not in TABLE_NAMES:
        raise UsageError(f"--expect {text!r}: no table {name!r} (holding, input, coil, discrete)")
    try:
        address = int(number)
    except ValueError:
        raise UsageError(f"--expect {text!r}: {number!r} is not an address") from None
    if name:
        if not 0 <= address <= 65535:
            raise UsageError(f"--expect {text!r}: a 0-based address is 0-65535")
        return (TABLE_NAMES[name.lower()],), address
    for prefix, table in MODICON_TABLE.items():
        for base, top in ((prefix * 10_000, 9_999), (prefix * 100_000, 65_536)):
            if base + 1 <= address <= base + top:
                return (table,), address - base - 1
    if not 0 <= address <= 65535:
        raise UsageError(f"--expect {text!r}: {address} is neither 0-based nor Modicon")
    return (Table.HOLDING, Table.INPUT), address


def _parse_bool(value: str, text: str) -> bool:
    word = value.strip().lower()
    if word in ("1", "true", "on"):
        return True
    if word in ("0", "false", "off"):
        return False
    raise UsageError(f"--expect {text!r}: a coil or discrete input is 1/0, on/off, true/false")


def _parse_number(value: str, text: str) -> tuple[float, float]:
    """The value and half its last written digit (``12.5`` -> 0.05: the display's rounding)."""
    try:
        exact = Decimal(value.strip())
    except InvalidOperation:
        raise UsageError(f"--expect {text!r}: {value!r} is not a number") from None
    if not exact.is_finite():
        raise UsageError(f"--expect {text!r}: the value must be finite")
    exponent = exact.as_tuple().exponent
    assert isinstance(exponent, int)
    return float(exact), 0.5 * 10.0**exponent


@dataclass(frozen=True)
class ProbeSettings:
    unit: int = 1
    tables: tuple[Table, ...] = TABLE_ORDER
    max_address: int = 9999
    expectations: tuple[Expectation, ...] = ()
    max_requests: int = 5000
    deadline_s: float = 60.0
    stride: int = 16
    settle_s: float = 0.5
    max_registers: int = MAX_REGISTERS
    max_bits: int = MAX_BITS

    def end(self, table: Table) -> int:
        """First address not probed in ``table``: past --max-address, or past the widest
        value an --expect address could start (so what was asked for is always read)."""
        wanted = [e.address + 4 for e in self.expectations if table in e.tables]
        return min(65536, max([self.max_address + 1, *wanted]))

    def block(self, table: Table) -> int:
        return self.max_bits if table.is_bits else self.max_registers

    @property
    def reserve(self) -> int:
        """Requests kept back from the search for the second read of the ranges found."""
        return max(1, min(self.max_requests // 10, 200))


# --- the link -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One read: values, a Modbus exception code, no reply, or a reply that did not fit."""

    data: list[int] | list[bool] | None = None
    code: int | None = None
    silent: bool = False
    bad: str = ""

    @property
    def ok(self) -> bool:
        return self.data is not None

    @property
    def refusal(self) -> str:
        """Why it is not data, for the report."""
        if self.silent:
            return "no reply"
        return f"exception {self.code:02X}" if self.code is not None else f"bad reply ({self.bad})"


class Reader:
    """Reads for the probe: counts requests, enforces the bounds, survives a dropped link.

    :meth:`read` returns None once the probe must stop (``stop_reason`` says why;
    ``fatal`` when the device is gone rather than a bound reached).
    """

    def __init__(self, connection: ModbusConnection, unit: int) -> None:
        self.connection = connection
        self.unit = unit
        self.requests = 0
        self.max_requests = 0
        self.deadline = math.inf  # loop time
        self.stop_reason = ""
        self.fatal = False
        self.silent_run = 0
        self.silent_seen = False  # a device that stays silent on some addresses
        self.any_reply = False
        self.alive_at: tuple[Table, int] | None = None
        self.where: dict[Table, int] = {}  # each table's frontier, for progress lines
        self._generation = 0
        self._relinking = asyncio.Lock()
        self._progress_at = 0.0

    def bound(self, max_requests: int, seconds: float) -> None:
        """Allow up to ``max_requests`` in all and ``seconds`` from now (clears a bound's stop)."""
        self.max_requests = max_requests
        self.deadline = asyncio.get_running_loop().time() + seconds
        if not self.fatal:
            self.stop_reason = ""

    @property
    def stopped(self) -> bool:
        return bool(self.stop_reason)

    def _out_of_bounds(self) -> bool:
        if self.stopped:
            return True
        if self.requests >= self.max_requests:
            self.stop_reason = f"request budget reached ({self.max_requests} requests)"
        elif asyncio.get_running_loop().time() >= self.deadline:
            self.stop_reason = "deadline reached"
        return self.stopped

    def _fail(self, reason: str) -> None:
        if not self.fatal:
            self.stop_reason, self.fatal = reason, True
            log.error("probe stopped", reason=reason)

    async def read(self, table: Table, address: int, count: int) -> Reply | None:
        """One read, or None when the probe must stop."""
        if self._out_of_bounds():
            return None
        reply = await self._request(table, address, count)
        if reply is not None and reply.code in RETRIED_CODES and not self._out_of_bounds():
            await asyncio.sleep(0.05)
            reply = await self._request(table, address, count)
        if reply is None:
            return None
        await self._watch(reply, table, address)
        self._progress(table, address)
        return None if self.fatal else reply

    async def _request(self, table: Table, address: int, count: int) -> Reply | None:
        for attempt in range(2):
            generation = self._generation
            self.requests += 1
            try:
                result = await self.connection.read(table, address, count, self.unit)
            except DeviceTimeout:
                return Reply(silent=True)
            except DeviceUnreachable as exc:
                if attempt or not await self._relink(generation, exc):
                    self._fail(f"link lost: {exc}")
                    return None
                continue
            except ModbusError as exc:  # a reply that does not fit the request
                return Reply(bad=str(exc))
            if isinstance(result, ExceptionReply):
                return Reply(code=result.code)
            return Reply(data=result)
        return None

    async def _relink(self, generation: int, exc: ModbusError) -> bool:
        """Reconnect once after a dropped link (once for all tables); False if it fails."""
        async with self._relinking:
            if self.fatal:
                return False
            if generation != self._generation:
                return True  # another table's read reconnected meanwhile
            log.warning("link lost, reconnecting", reason=str(exc))
            self.connection.close()
            try:
                await self.connection.connect()
            except ModbusError as again:
                self._fail(f"link lost ({exc}); reconnecting failed: {again}")
                return False
            self._generation += 1
            return True

    async def _watch(self, reply: Reply, table: Table, address: int) -> None:
        """Tell a device that is silent on some addresses from one that is gone."""
        if not (reply.silent or reply.code in GATEWAY_CODES):
            self.silent_run, self.any_reply = 0, True
            if reply.ok:
                self.alive_at = (table, address)
            return
        self.silent_run += 1
        if self.silent_run < SILENT_LIMIT:
            return
        if self.alive_at is None:
            said = "stopped answering" if self.any_reply else "does not answer"
            self._fail(
                f"unit {self.unit} {said} ({self.silent_run} requests in a row: {reply.refusal})"
            )
            return
        check = await self._request(*self.alive_at, 1)
        if check is not None and check.ok:
            self.silent_run, self.silent_seen = 0, True
            return
        self._fail(
            f"unit {self.unit} stopped answering (no reply at {self.alive_at[0]} "
            f"{self.alive_at[1]}, which answered before)"
        )

    def _progress(self, table: Table, address: int) -> None:
        self.where[table] = address
        now = time.monotonic()
        if now - self._progress_at >= 1.0:
            self._progress_at = now
            at = ", ".join(f"{t} {a}" for t, a in self.where.items())
            log.info("probing", requests=self.requests, at=at)


# --- the search -----------------------------------------------------------------------------


@dataclass
class TableScan:
    """What one table answered, address by address, as far as the search went."""

    table: Table
    end: int  # addresses below it were to be probed
    max_count: int
    answering: list[Span] = field(default_factory=list)
    refused: list[Span] = field(default_factory=list)  # read alone: refused
    silent: list[Span] = field(default_factory=list)  # read alone: no reply
    sampled: list[Span] = field(default_factory=list)  # between samples, none answered
    unprobed: list[Span] = field(default_factory=list)
    words: dict[int, int | bool] = field(default_factory=dict)  # first values read
    again: dict[int, int | bool] = field(default_factory=dict)  # the second read
    alone: set[int] = field(default_factory=set)  # answered when read alone
    notes: list[str] = field(default_factory=list)
    unsupported: str = ""

    @property
    def latest(self) -> dict[int, int | bool]:
        """Each address's last value read."""
        return {**self.words, **self.again}

    def answers(self, address: int, count: int = 1) -> bool:
        return any(a <= address and address + count <= b for a, b in self.answering)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            log.info("probe note", table=str(self.table), note=text)


class _Scan:
    """The search of one table (see the module docstring)."""

    def __init__(self, reader: Reader, scan: TableScan, stride: int) -> None:
        self.reader = reader
        self.scan = scan
        self.stride = stride
        self.p = 0
        self.open = False  # address p - 1 answered: p continues a run
        self.gap = 0  # refused lone reads in a row
        self.samples = 0  # sampled reads in a row
        self.edge = 0  # count a refused block bisected down to, until the next lone read
        self.last_lone: tuple[int, Reply] | None = None  # a refused read of one address

    async def run(self) -> None:
        block = True  # the first read of a table is a block
        while self.p < self.scan.end and not self.scan.unsupported:
            outcome = await (self._block() if block else self._lone())
            if outcome is None:
                self.scan.unprobed = [(self.p, self.scan.end)]
                return
            block = outcome
        if not self.reader.stopped:
            await self._confirm_ends()

    async def _read(self, address: int, count: int) -> Reply | None:
        reply = await self.reader.read(self.scan.table, address, count)
        if reply is not None and reply.ok:
            self.scan.words.update(zip(range(address, address + count), reply.data, strict=False))
        elif reply is not None and count == 1 and not reply.silent:
            self.last_lone = (address, reply)
        return reply

    async def _read_alone(self, address: int) -> Reply | None:
        """Read one address, unless the last read was that address alone, refused."""
        last, self.last_lone = self.last_lone, None
        if last is not None and last[0] == address:
            return last[1]
        reply = await self._read(address, 1)
        if reply is not None and reply.silent:
            reply = await self._read(address, 1)  # one lost reply is not a hole
        return reply

    def _answered(self, start: int, end: int) -> None:
        add_span(self.scan.answering, start, end)
        self.p, self.open, self.gap, self.samples = end, True, 0, 0

    async def _block(self) -> bool | None:
        """Read a block at p; True: read a block next, False: lone reads next."""
        count = min(self.scan.max_count, self.scan.end - self.p)
        reply = await self._read(self.p, count)
        if reply is None:
            return None
        if reply.ok:
            self._answered(self.p, self.p + count)
            return True
        if reply.code == ILLEGAL_VALUE and count > 1:
            self.scan.max_count = max(1, count // 2)
            self.scan.note(f"exception 03 for {count} at once: reading {self.scan.max_count}")
            return True
        if reply.code == ILLEGAL_FUNCTION and not self.scan.answering:
            self.scan.unsupported = "exception 01: the device has no such table"
            return True
        if self.open and count > 1:
            longest = await self._longest(count)
            if longest is None:
                return None
            if longest:
                self._answered(self.p, self.p + longest)
                self.edge = longest
        return False

    async def _longest(self, refused: int) -> int | None:
        """The most addresses from p that answer together, below ``refused`` (bisection)."""
        good, bad = 0, refused
        while bad - good > 1:
            middle = (good + bad) // 2
            reply = await self._read(self.p, middle)
            if reply is None:
                return None
            good, bad = (middle, bad) if reply.ok else (good, middle)
        return good

    async def _lone(self) -> bool | None:
        """Read one address alone at p (or, deep in a refused stretch, a sample ahead)."""
        sampling = self.gap >= EXACT_GAP and self.stride > 1
        step = min(self.stride, 2 ** (self.samples + 1)) if sampling else 1
        address = min(self.p + step - 1, self.scan.end - 1)
        reply = await self._read_alone(address)
        if reply is None:
            return None
        if reply.ok:
            return await self._lone_answered(address)
        if reply.code == ILLEGAL_FUNCTION and not self.scan.answering:
            self.scan.unsupported = "exception 01: the device has no such table"
            return True
        if sampling:  # a sample: its stretch is reported as sampled
            add_span(self.scan.sampled, self.p, address + 1)
            self.samples += 1
            self.p, self.open, self.edge = address + 1, False, 0
            return False
        self._refused(address, reply)
        return False

    def _refused(self, address: int, reply: Reply) -> None:
        add_span(self.scan.silent if reply.silent else self.scan.refused, address, address + 1)
        if not reply.silent and reply.code != ILLEGAL_ADDRESS:
            self.scan.note(f"{reply.refusal} (read alone) counted as refused")
        self.p, self.open, self.edge = address + 1, False, 0
        self.gap += 1

    async def _lone_answered(self, address: int) -> bool | None:
        self.scan.alone.add(address)
        if self.edge and address == self.p:  # answers alone, but not in the longer block
            self.scan.max_count = self.edge
            self.scan.note(f"reads of more than {self.edge} refused: reading {self.edge}")
        start = address
        if address > self.p:  # a sample answered: where does its run start?
            start = await self._run_start(address)
            if start is None:
                return None
            add_span(self.scan.sampled, self.p, max(self.p, start - 1))
            if start > self.p:
                add_span(self.scan.refused, start - 1, start)
        self.edge = 0
        self._answered(start, address + 1)
        return True

    async def _run_start(self, last: int) -> int | None:
        """The first address of the run that ends at ``last`` (answering), after p - 1."""
        low, high = self.p, last  # high answers through last
        while low < high:
            middle = (low + high) // 2
            reply = await self._read(middle, last - middle + 1)
            if reply is None:
                return None
            low, high = (low, middle) if reply.ok else (middle + 1, high)
        return high

    async def _confirm_ends(self) -> None:
        """Read each run's last address alone; trim what answers only inside longer reads."""
        for start, end in list(self.scan.answering):
            if end - 1 in self.scan.alone:
                continue
            reply = await self._read(end - 1, 1)
            if reply is None:
                return
            if reply.ok:
                self.scan.alone.add(end - 1)
                continue
            last = await self._last_alone(start, end - 1)
            if last is None:
                return
            remove_span(self.scan.answering, last + 1, end)
            add_span(self.scan.refused, last + 1, end)
            self.scan.note(
                f"{span_text([(last + 1, end)])} answer only inside a read that starts "
                "before them: counted as refused"
            )

    async def _last_alone(self, start: int, refused: int) -> int | None:
        """The last address before ``refused`` that answers alone (start - 1: none)."""
        good, bad = start - 1, refused
        while bad - good > 1:
            middle = (good + bad) // 2
            reply = await self._read(middle, 1)
            if reply is None:
                return None
            good, bad = (middle, bad) if reply.ok else (good, middle)
        return good


async def _read_again(reader: Reader, scan: TableScan) -> None:
    """The second read of a register table's answering ranges (for the stability hint)."""
    for start, end in scan.answering:
        for address in range(start, end, scan.max_count):
            count = min(scan.max_count, end - address)
            reply = await reader.read(scan.table, address, count)
            if reply is None:
                return
            if reply.ok:
                scan.again.update(zip(range(address, address + count), reply.data, strict=False))


# --- reading the values ---------------------------------------------------------------------


@dataclass(frozen=True)
class Interpretation:
    """One span's words read as one type in one order."""

    type: DataType
    order: str
    value: float
    again: float | None

    @property
    def plausible(self) -> bool:
        """Finite, |x| below 1e6, and not a tiny number (what a wrong order mostly gives)."""
        v = self.value
        return math.isfinite(v) and abs(v) < ENGINEERING_MAX and (v == 0 or abs(v) >= TINY)

    @property
    def stable(self) -> bool:
        a, b = self.value, self.again
        if b is None or not (math.isfinite(a) and math.isfinite(b)):
            return False
        return abs(a - b) <= STABLE_REL * max(abs(a), abs(b))

    @property
    def whole(self) -> bool:
        return self.type in FLOATS and math.isfinite(self.value) and self.value == int(self.value)

    @property
    def hints(self) -> tuple[str, ...]:
        if not math.isfinite(self.value):
            return ("not finite",)
        names = ["plausible" if self.plausible else "out of range"]
        names += ["stable"] if self.stable else ["changed"] if self.again is not None else []
        names += ["whole"] if self.whole and self.value else []
        return tuple(names)

    @property
    def score(self) -> int:
        """Higher is likelier: plausible, stable, not zero, and in a common order (ABCD,
        CDAB: PLCs rarely swap the bytes of a word)."""
        if not self.plausible:
            return 0
        common = self.order in COMMON_ORDERS
        return 1 + 4 * self.stable + 2 * (self.value != 0) + common

    def rank(self) -> tuple[int, int, int]:
        return (-self.score, TYPE_RANK[self.type], list(ORDERS).index(self.order))


def _decode(words: list[int], datatype: DataType, order: str) -> float:
    byte_order, word_order = ORDERS[order]
    try:
        return float(decode(words, datatype, byte_order, word_order))  # type: ignore[arg-type]
    except (CodecError, OverflowError):
        return math.nan


def interpretations(scan: TableScan, address: int, width: int) -> list[Interpretation]:
    """Every type and order of the ``width`` words at ``address``, best first."""
    words = [scan.words.get(a) for a in range(address, address + width)]
    if any(w is None for w in words):
        return []
    again = [scan.again.get(a) for a in range(address, address + width)]
    types = WIDE_TYPES.get(width, (DataType.UINT16, DataType.INT16))
    orders = ORDERS if width > 1 else WORD_ORDERS
    found = []
    for datatype in types:
        for order in orders:
            first = _decode(words, datatype, order)  # type: ignore[arg-type]
            second = None if None in again else _decode(again, datatype, order)  # type: ignore[arg-type]
            found.append(Interpretation(datatype, order, first, second))
    return sorted(found, key=Interpretation.rank)


@dataclass(frozen=True)
class Row:
    """A line of the value table: one span, the best type's value in each order."""

    table: Table
    address: int
    width: int
    words: tuple[int, ...]
    best: Interpretation
    others: tuple[Interpretation, ...]  # the best type's other orders
    alternative: Interpretation | None = None  # another type's reading, as likely

    @property
    def where(self) -> str:
        last = self.address + self.width - 1
        return f"{self.table} {self.address}" + (f"-{last}" if self.width > 1 else "")


def value_rows(scan: TableScan, spans: list[Span] | None = None) -> list[Row]:
    """A reading of every answering register: left to right, the most plausible 2- or
    4-register interpretation where one is plausible and not zero, else one register.

    Spans overlapping a chosen one are not listed: in a block of ABCD floats the span
    across two of them reads plausibly as CDAB (the second float's high word leads), and
    listing it would double the table.
    """
    rows: list[Row] = []
    for start, end in scan.answering if spans is None else spans:
        address = start
        while address < end:
            row = _best_row(scan, address, end)
            rows.append(row)
            address += row.width
    return rows


def _best_row(scan: TableScan, address: int, end: int) -> Row:
    candidates = []
    for width in (2, 4):
        if address + width <= end:
            found = interpretations(scan, address, width)
            if found and found[0].score >= ROW_SCORE[width]:
                candidates.append((found[0].rank(), width, found))
    width, found = (1, interpretations(scan, address, 1))
    if candidates:
        _, width, found = min(candidates, key=lambda c: (c[0], c[1]))
    best = found[0]
    others = tuple(i for i in found[1:] if i.type is best.type)
    alternative = next((i for i in found[1:] if i.type is not best.type), None)
    if alternative is not None and (alternative.score < best.score or width == 1):
        alternative = None  # only another type as likely; int16 / uint16 always are
    words = tuple(int(scan.words[a]) for a in range(address, address + width))
    return Row(scan.table, address, width, words, best, others, alternative)


def span_rows(scan: TableScan) -> list[Row]:
    """Every 2- and 4-register span of the answering ranges, as the likeliest type reads it
    (``--every-span``: the rows above leave out the spans that overlap a chosen one)."""
    rows = []
    for start, end in scan.answering:
        for address in range(start, end):
            for width in (2, 4):
                found = interpretations(scan, address, width) if address + width <= end else []
                if found:
                    best = found[0]
                    words = tuple(int(scan.words[a]) for a in range(address, address + width))
                    others = tuple(i for i in found[1:] if i.type is best.type)
                    rows.append(Row(scan.table, address, width, words, best, others))
    return rows


def ranked(rows: Iterable[Row]) -> list[Row]:
    """Wide plausible readings first (most likely first), then the single registers."""
    return sorted(rows, key=lambda r: (r.width == 1, r.best.rank(), str(r.table), r.address))


# --- matching what the display says ---------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """A type, order and scale that read an expected value at its address."""

    expectation: Expectation
    table: Table
    address: int
    type: DataType
    order: str
    scale: float
    value: float | bool

    @property
    def error(self) -> float:
        if isinstance(self.value, bool):
            return 0.0
        return abs(self.value - float(self.expectation.value))

    def rank(self) -> tuple:
        """Within the display's rounding first; no scale; simplest type; ABCD; holding."""
        rounded = self.error <= self.expectation.half_unit * (1 + 1e-9)
        order = list(ORDERS).index(self.order) if self.order in ORDERS else 0
        return (
            not rounded,
            self.scale != 1,
            TYPE_RANK.get(self.type, 0),
            order,
            self.table is not Table.HOLDING,
            self.error,
        )

    def describe(self) -> str:
        if self.type is DataType.BOOL:
            return f"bool reads {int(bool(self.value))}"
        scale = f" x {self.scale:g}" if self.scale != 1 else ""
        wide = register_count(self.type) > 1
        order = f" {self.order}" if wide or self.order != "ABCD" else ""
        return f"{self.type}{order}{scale} at {self.table} {self.address} reads {self.value:.7g}"

    def register(self) -> dict[str, object]:
        """The draft profile's register for this tag."""
        byte_order, word_order = ORDERS.get(self.order, (Order.BIG, Order.BIG))
        reg: dict[str, object] = {
            "tag": self.expectation.tag,
            "table": self.table.value,
            "address": self.address,
            "type": self.type.value,
        }
        if byte_order is Order.LITTLE:
            reg["byte_order"] = "little"
        if word_order is Order.LITTLE:
            reg["word_order"] = "little"
        if self.scale != 1:
            reg["scale"] = self.scale
        reg["description"] = f"probed: display said {self.expectation.text.rsplit(':', 1)[1]}"
        return reg


def _values(scan: TableScan, address: int) -> Iterator[tuple[DataType, str, float, float]]:
    """(type, order, scale, value) of every reading at ``address``, of the words read last."""
    words = scan.latest
    for width, types in ((1, (DataType.UINT16, DataType.INT16)), *WIDE_TYPES.items()):
        span = [words.get(a) for a in range(address, address + width)]
        if None in span or not scan.answers(address, width):
            continue
        for datatype in types:
            for order in ORDERS if width > 1 else WORD_ORDERS:
                raw = _decode(span, datatype, order)  # type: ignore[arg-type]
                if not math.isfinite(raw) or 0 < abs(raw) < TINY:  # a tiny float matches 0
                    continue
                scales = (1.0,) if datatype in FLOATS else SCALES
                for scale in scales:
                    yield (
                        datatype,
                        order,
                        scale,
                        scaled(raw if datatype in FLOATS else int(raw), scale, 0.0),
                    )


def matches(expectation: Expectation, scans: dict[Table, TableScan]) -> list[Match]:
    """Every reading at the expected address within the tolerance, best first."""
    found = []
    for table in expectation.tables:
        scan = scans.get(table)
        if scan is None or not scan.answers(expectation.address):
            continue
        if table.is_bits:
            bit = bool(scan.latest.get(expectation.address))
            if bit is expectation.value:
                found.append(
                    Match(expectation, table, expectation.address, DataType.BOOL, "", 1, bit)
                )
            continue
        for datatype, order, scale, value in _values(scan, expectation.address):
            if abs(value - float(expectation.value)) <= expectation.tolerance:
                found.append(
                    Match(expectation, table, expectation.address, datatype, order, scale, value)
                )
    return sorted(found, key=Match.rank)


# --- the probe as a whole -------------------------------------------------------------------


@dataclass
class ProbeReport:
    """What a probe found: each table's scan, the bounds' and the link's verdicts, and the
    matches of each ``--expect`` (by tag, best first)."""

    endpoint: str
    settings: ProbeSettings
    scans: dict[Table, TableScan]
    requests: int = 0
    seconds: float = 0.0
    search_seconds: float = 0.0  # the search alone, without the second read
    search_requests: int = 0
    cut: str = ""  # a bound that cut the search
    failure: str = ""  # the device gone: exit 1
    silent_seen: bool = False
    found: dict[str, list[Match]] = field(default_factory=dict)  # tag -> matches, best first

    @property
    def chosen(self) -> list[Match]:
        """The best match of each expectation, leaving out one that overlaps an earlier."""
        picked: list[Match] = []
        for candidates in self.found.values():
            for match in candidates[:1]:
                regs = [Register.model_validate(m.register()) for m in [*picked, match]]
                if not map_problems(regs):
                    picked.append(match)
        return picked

    @property
    def answered_anything(self) -> bool:
        return any(scan.answering for scan in self.scans.values())


async def probe(connection: ModbusConnection, settings: ProbeSettings) -> ProbeReport:
    """Search ``settings.tables`` of ``settings.unit`` behind an open ``connection``."""
    reader = Reader(connection, settings.unit)
    scans = {
        table: TableScan(table, settings.end(table), settings.block(table))
        for table in settings.tables
    }
    report = ProbeReport(connection.endpoint, settings, scans)
    started = time.perf_counter()
    reader.bound(settings.max_requests - settings.reserve, settings.deadline_s)
    log.info(
        "probe started",
        endpoint=connection.endpoint,
        unit=settings.unit,
        tables=",".join(map(str, settings.tables)),
        max_address=settings.max_address,
    )
    async with asyncio.TaskGroup() as group:
        for scan in scans.values():
            group.create_task(_Scan(reader, scan, settings.stride).run())
    report.cut = "" if reader.fatal else reader.stop_reason
    report.search_seconds = time.perf_counter() - started
    report.search_requests = reader.requests
    if not reader.fatal:
        await _second_read(reader, scans, settings)
    report.failure = reader.stop_reason if reader.fatal else ""
    report.requests, report.silent_seen = reader.requests, reader.silent_seen
    report.seconds = time.perf_counter() - started
    report.found = {e.tag: matches(e, scans) for e in settings.expectations}
    log.info("probe done", requests=report.requests, seconds=round(report.seconds, 2))
    return report


async def _second_read(reader: Reader, scans: dict[Table, TableScan], settings: ProbeSettings):
    registers = [s for s in scans.values() if not s.table.is_bits and s.answering]
    if not registers:
        return
    await asyncio.sleep(settings.settle_s)
    reader.bound(settings.max_requests, max(10.0, settings.deadline_s / 10))
    for scan in registers:
        await _read_again(reader, scan)
    if reader.stopped and not reader.fatal:
        log.warning("second read cut short", reason=reader.stop_reason)


# --- the report -----------------------------------------------------------------------------


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.7g}" if abs(value) < 1e7 else f"{value:.6g}"


def range_lines(report: ProbeReport) -> list[str]:
    lines = ["Addresses (0-based protocol addresses: holding 0 is 40001, input 0 is 30001)"]
    for table in TABLE_ORDER:
        scan = report.scans.get(table)
        if scan is None:
            continue
        head = f"  {table!s:<9}"
        if scan.unsupported:
            lines.append(f"{head}{scan.unsupported}")
            continue
        lines.append(f"{head}answering  {span_text(scan.answering)}")
        for label, spans in (
            ("refused", scan.refused),
            ("no reply", scan.silent),
            ("sampled", scan.sampled),
            ("not probed", scan.unprobed),
        ):
            if spans:
                lines.append(f"  {'':<9}{label:<11}{span_text(spans)}")
        lines += [f"  {'':<9}note       {note}" for note in scan.notes]
    if any(scan.sampled for scan in report.scans.values()):
        lines.append(
            f"  sampled: refused stretches read every 2nd..{report.settings.stride}th address "
            "alone; a run shorter than that could hide there (--stride 1 reads each)"
        )
    return lines


def expect_lines(report: ProbeReport) -> list[str]:
    if not report.settings.expectations:
        return []
    lines = ["", "Expected values"]
    chosen = {m.expectation.tag for m in report.chosen}
    for e in report.settings.expectations:
        head = f"  {e.tag} = {e.text.rsplit(':', 1)[1]} at {e.where}: "
        found = report.found.get(e.tag, [])
        if not found:
            lines.append(head + _no_match(report, e))
            continue
        if e.tag not in chosen:
            lines.append(head + f"{found[0].describe()}, but it overlaps another tag: left out")
            continue
        lines.append(head + found[0].describe())
        also = [m.describe() for m in found[1:4]]
        if also:
            lines.append(f"    also within {e.tolerance:g}: " + "; ".join(also))
    return lines


def _no_match(report: ProbeReport, e: Expectation) -> str:
    scans = [report.scans[t] for t in e.tables if t in report.scans]
    if not any(scan.answers(e.address) for scan in scans):
        return "NO MATCH: the address does not answer"
    if isinstance(e.value, bool):
        return "NO MATCH: the bit reads the other way"
    return f"NO MATCH: no type, order or scale reads it within {e.tolerance:g}"


def value_lines(report: ProbeReport, show: int, every_span: bool = False) -> list[str]:
    scans = [report.scans[t] for t in (Table.INPUT, Table.HOLDING) if t in report.scans]
    rows = ranked(r for scan in scans for r in value_rows(scan))
    if every_span:
        listed = {(r.table, r.address, r.width) for r in rows}
        spans = [r for scan in scans for r in span_rows(scan)]
        rows += ranked(r for r in spans if (r.table, r.address, r.width) not in listed)
    if not rows:
        return []
    shown = rows if show <= 0 else rows[:show]
    head = f"  {'where':<16}{'words':<21}{'type':<9}"
    head += "".join(f"{o:<15}" for o in ORDERS) + "hints (of the * one)"
    lines = ["", "Values, most plausible first (each order of the likeliest type)", head]
    lines += [_row_line(row) for row in shown]
    if len(shown) < len(rows):
        lines.append(f"  ... {len(rows) - len(shown)} more rows (--show 0 lists them all)")
    return lines


def _row_line(row: Row) -> str:
    by_order = {i.order: i for i in (row.best, *row.others)}
    cells = ""
    for order in ORDERS:
        reading = by_order.get(order)
        text = "" if reading is None else _fmt(reading.value)
        text += "*" if reading is row.best else ""
        cells += f"{text:<15}"
    words = " ".join(f"{w:04x}" for w in row.words)
    hints = ", ".join(row.best.hints)
    other = row.alternative
    if other is not None:
        hints += f"; or {other.type} {other.order} {_fmt(other.value)}"
    return f"  {row.where:<16}{words:<21}{row.best.type!s:<9}{cells}{hints}"


def summary_lines(report: ProbeReport) -> list[str]:
    ranges = sum(len(scan.answering) for scan in report.scans.values())
    addresses = sum(b - a for scan in report.scans.values() for a, b in scan.answering)
    lines = [
        "",
        f"Summary: {report.endpoint} unit {report.settings.unit}: {ranges} answering ranges "
        f"({addresses} addresses) in {len(report.scans)} tables; {report.requests} requests, "
        f"{report.seconds:.1f} s",
    ]
    if report.cut:
        lines.append(
            f"Search cut short: {report.cut}; see 'not probed' above "
            "(raise --max-requests / --deadline-s, or lower --max-address)"
        )
    if report.failure:
        lines.append(f"Probe failed: {report.failure}")
    if report.silent_seen:
        lines.append("The device stays silent on some addresses: a short --timeout-s speeds it up")
    return lines


def report_lines(report: ProbeReport, show: int = 30, every_span: bool = False) -> list[str]:
    return [
        *range_lines(report),
        *expect_lines(report),
        *value_lines(report, show, every_span),
        *summary_lines(report),
    ]


# --- the draft profile ----------------------------------------------------------------------


def _flow(reg: dict[str, object]) -> str:
    return yaml.safe_dump(reg, default_flow_style=True, sort_keys=False, width=10_000).strip()


def draft_profile(report: ProbeReport, kind: str = "probed") -> str:
    """The draft profile YAML: the expected tags as found, the rest as commented hints.

    Without any tag found the answering addresses become raw tags (uint16 words, bools),
    so the draft is still a profile the agent reads.
    """
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    chosen = report.chosen
    entries = [
        (m.register(), _where(m.table, m.address) + f", read {_fmt(m.value)}") for m in chosen
    ]
    raw = not entries
    if raw:
        entries = [(reg, "") for reg in _raw_registers(report)]
    lines = [
        f"# Draft profile from {PROG}, {stamp}: {report.endpoint} unit {report.settings.unit}.",
        "# Addresses are 0-based protocol addresses (holding 0 is 40001 in PLC manuals).",
        *(
            f"#   {table!s:<9} answering {span_text(scan.answering)}"
            for table, scan in report.scans.items()
        ),
        f"kind: {kind}",
        f"description: {json.dumps(f'Draft from {PROG} of {report.endpoint}')}",
        "registers:",
    ]
    if raw:
        lines.append("  # no --expect matched: every answering address as a raw value")
    lines += [f"  - {_flow(reg)}" + (f"  # {note}" if note else "") for reg, note in entries]
    if not raw:
        lines += _hint_lines(report)
    text = "\n".join(lines) + "\n"
    Profile.model_validate(yaml.safe_load(text))  # the agent must take it as it is
    return text


def _where(table: Table, address: int) -> str:
    number = modicon(table, address) if table is not Table.COIL else ""
    return f"{table} {address}" + (f" = {number}" if number else "")


def _raw_registers(report: ProbeReport) -> list[dict[str, object]]:
    regs = []
    for table, scan in report.scans.items():
        datatype = "bool" if table.is_bits else "uint16"
        for start, end in scan.answering:
            regs += [
                {"tag": f"{table}_{a}", "table": table.value, "address": a, "type": datatype}
                for a in range(start, end)
            ]
    return regs


def _hint_lines(report: ProbeReport) -> list[str]:
    """Commented registers for what answers but no tag covers: uncomment and rename."""
    lines = []
    for table, scan in report.scans.items():
        spans = list(scan.answering)
        for m in report.chosen:
            if m.table is table:
                remove_span(spans, m.address, m.address + register_count(m.type))
        free = _bit_rows(scan, spans) if table.is_bits else value_rows(scan, spans)
        if free:
            lines.append(f"  # {table}: answers, not identified (best guess, first read):")
        lines += [f"  # - {_flow(_hint(row))}  # {_fmt(row.best.value)}" for row in free]
    return lines


def _bit_rows(scan: TableScan, spans: list[Span]) -> list[Row]:
    rows = []
    for start, end in spans:
        for a in range(start, end):
            value = float(bool(scan.words.get(a)))
            best = Interpretation(DataType.BOOL, "ABCD", value, None)
            rows.append(Row(scan.table, a, 1, (int(value),), best, ()))
    return rows


def _hint(row: Row) -> dict[str, object]:
    reg: dict[str, object] = {
        "tag": f"{row.table}_{row.address}",
        "table": row.table.value,
        "address": row.address,
        "type": row.best.type.value,
    }
    byte_order, word_order = ORDERS[row.best.order]
    if byte_order is Order.LITTLE:
        reg["byte_order"] = "little"
    if word_order is Order.LITTLE:
        reg["word_order"] = "little"
    return reg


# --- the command line -----------------------------------------------------------------------

EPILOG = """\
addresses: 0-based protocol addresses as in a profile; --expect also takes 1-based Modicon
numbers (40001 = holding 0, 30001 = input 0, 10001 = discrete 0) or table:N (coil:0).

examples:
  derrick-agent probe --host 10.0.0.7 --unit 1
  derrick-agent probe --host 10.0.0.7 --expect hook_load=40001:12.5 --output crane.yaml
  derrick-agent probe --serial /dev/ttyUSB0 --baud 9600 --parity N --unit 3 --tables holding

exit status: 0 done, 1 the device could not be reached (or stopped answering), 2 bad
arguments, 3 an --expect value matched nothing.
"""


def _int_in(low: int, high: int, what: str):
    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{number}: {what} is {low}-{high}")
        return number

    return parse


def _positive(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < number <= 3600:
        raise argparse.ArgumentTypeError(f"{number}: give more than 0, up to 3600 seconds")
    return number


def _tables(text: str) -> tuple[Table, ...]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TABLE_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or text!r}: tables are coils, discrete, input, holding"
        )
    chosen = {TABLE_NAMES[n] for n in names}
    return tuple(t for t in TABLE_ORDER if t in chosen)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Find which addresses of a Modbus PLC answer, show their values in every "
        "word order, match values read off the display (--expect) and write a draft device "
        "profile. Only reads (function codes 1-4).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--host", help="PLC or gateway address (Modbus TCP)")
    add("--port", type=_int_in(1, 65535, "a TCP port"), default=502, help="(default: 502)")
    add(
        "--framer",
        choices=["socket", "rtu"],
        default="socket",
        help="socket: Modbus TCP; rtu: RTU frames over TCP (a serial converter)",
    )
    add("--serial", metavar="TTY", help="serial RTU on this tty instead of --host")
    add("--baud", type=int, default=19200, help="--serial: bits/s (default: 19200)")
    add("--parity", choices=["N", "E", "O"], default="E", help="--serial (default: E)")
    add("--stopbits", type=int, choices=[1, 2], default=1, help="--serial (default: 1)")
    add("--unit", type=_int_in(0, 247, "a unit id"), default=1, help="unit id (default: 1)")
    add(
        "--tables",
        type=_tables,
        default=TABLE_ORDER,
        help="comma-separated: coils,discrete,input,holding (default: all four)",
    )
    add(
        "--max-address",
        type=_int_in(0, 65535, "an address"),
        default=9999,
        help="highest 0-based address probed (default: 9999)",
    )
    add(
        "--expect",
        action="append",
        default=[],
        metavar="TAG=ADDRESS:VALUE",
        help="a value read off the display, e.g. hook_load=40001:12.5; repeatable",
    )
    add("--output", type=Path, help="write the draft profile here (default: stdout)")
    add("--kind", default="probed", help="the draft profile's kind (default: probed)")
    add("--timeout-s", type=_positive, default=1.0, help="per request (default: 1.0)")
    add(
        "--max-requests",
        type=_int_in(10, 1_000_000, "--max-requests"),
        default=5000,
        help="requests in all (default: 5000)",
    )
    add("--deadline-s", type=_positive, default=60.0, help="search time (default: 60)")
    add(
        "--stride",
        type=_int_in(1, 125, "--stride"),
        default=16,
        help="read every Nth address of long refused stretches (default: 16; 1: each)",
    )
    add("--settle-s", type=float, default=0.5, help="pause before the second read (default: 0.5)")
    add("--show", type=int, default=30, help="value rows listed (default: 30; 0: all)")
    add(
        "--every-span",
        action="store_true",
        help="also list the 2- and 4-register spans that overlap the value rows",
    )
    add("--log-format", choices=["auto", "console", "json"], default="auto")
    add("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    return p


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of options, if anything."""
    if bool(args.host) == bool(args.serial):
        return "give --host (Modbus TCP) or --serial (RTU), one of them"
    rtu = bool(args.serial) or args.framer == "rtu"
    if rtu and args.unit == 0:
        return "--unit 0 is broadcast on RTU: nobody answers it (1-247)"
    if args.serial and args.baud not in BAUDRATES:
        return f"--baud {args.baud}: standard rates are {', '.join(map(str, BAUDRATES))}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.kind):
        return f"--kind {args.kind!r}: letters, digits, _ . - only"
    if not 0 <= args.settle_s <= 60:
        return "--settle-s is 0-60"
    return None


def settings_from(args: argparse.Namespace) -> ProbeSettings:
    """Raises UsageError for a bad --expect."""
    expectations = tuple(parse_expect(text) for text in args.expect)
    tags = [e.tag for e in expectations]
    twice = sorted({t for t in tags if tags.count(t) > 1})
    if twice:
        raise UsageError(f"--expect names {', '.join(twice)} more than once")
    tables = set(args.tables)
    missing = [e.text for e in expectations if not tables & set(e.tables)]
    if missing:
        raise UsageError(f"--expect {missing[0]}: its table is not in --tables")
    return ProbeSettings(
        unit=args.unit,
        tables=args.tables,
        max_address=args.max_address,
        expectations=expectations,
        max_requests=args.max_requests,
        deadline_s=args.deadline_s,
        stride=args.stride,
        settle_s=args.settle_s,
    )


def open_connection(args: argparse.Namespace) -> ModbusConnection:
    if args.serial:
        return ModbusConnection.serial(
            args.serial,
            args.timeout_s,
            baudrate=args.baud,
            parity=args.parity,
            stopbits=args.stopbits,
        )
    return ModbusConnection.tcp(args.host, args.port, args.timeout_s, framer=args.framer)


def main(argv: list[str]) -> int:
    """``derrick-agent probe ...``: ``argv`` may start with ``probe``."""
    argv = list(argv[1:] if argv and argv[0] == "probe" else argv)
    cli = parser()
    try:
        args = cli.parse_args(argv)
        problem = check_args(args)
        if problem:
            cli.error(problem)
        settings = settings_from(args)
    except UsageError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    logs.configure(args.log_format, args.log_level)
    try:
        return asyncio.run(_run(args, settings))
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace, settings: ProbeSettings) -> int:
    connection = open_connection(args)
    try:
        await connection.connect()
    except ModbusError as exc:
        sys.stderr.write(f"{PROG}: cannot reach the device: {exc}\n")
        return 1
    try:
        report = await probe(connection, settings)
    finally:
        connection.close()
    return _output(args, report)


def _output(args: argparse.Namespace, report: ProbeReport) -> int:
    """Report to stdout; the draft to --output, or after the report with the report
    commented, so that stdout as a whole is the draft profile."""
    lines = report_lines(report, args.show, args.every_span)
    draft = draft_profile(report, args.kind) if report.answered_anything else ""
    if args.output is None and draft:
        sys.stdout.write("".join(f"# {line}".rstrip() + "\n" for line in lines))
        sys.stdout.write("\n" + draft)
    else:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
    if args.output is not None and draft:
        args.output.write_text(draft)
        sys.stdout.write(f"Draft profile written to {args.output}\n")
    if report.failure or not report.answered_anything:
        if not report.failure:
            sys.stderr.write(f"{PROG}: nothing answered: no draft profile\n")
        return 1
    missed = [e.tag for e in report.settings.expectations if not report.found.get(e.tag)]
    return 3 if missed else 0
