"""Modbus TCP client CPU per request (issue 16): pymodbus against Derrick's own.

The agent read Modbus TCP through pymodbus' ``AsyncModbusTcpClient`` until issue 16; it
now reads it through :class:`agent.modbus.MbapProtocol` (RTU over TCP and serial RTU
still go through pymodbus). This measures what a request costs the client, each way,
against the same real server: ``derrick-sim --profile small11`` (pymodbus' server) on
loopback, in its own process. The clients run in this process; the figure is this
process's CPU (utime + stime, all threads) per request, runs alternated, one per client
and pattern:

* ``modbus_cpu_us_per_request_{derrick,pymodbus}``: the small-PLC pattern of
  bench/small_plc.py: ``BENCH_SMALL_DEVICES`` (20) devices, each read every 0.5 s on the
  same grid with small11's four requests (input 0-7, holding 0-2, holding 10, coils 0-1),
  one after the other, one connection per device;
* ``modbus_cpu_us_per_request_tight_{derrick,pymodbus}``: one device read back to back
  (the client's cost when the loop never sleeps: its floor);
* ``..._derrick_uvloop``: Derrick's client again on uvloop, the agent's event loop where
  it is installed (derrick/plumbing/loops.py); the others run on asyncio's own;
* ``modbus_requests_{derrick,pymodbus}``: requests in the window (every one answered);
* ``load_average``: the machine's 1-minute load at the start and at the end.

The pymodbus client is driven as the agent drove it (one ``asyncio.Lock`` per
connection, an ``asyncio.timeout`` around each call, the reply's function code
checked); Derrick's through ``ModbusConnection.read``.

Environment: ``BENCH_SECONDS`` (20: each windowed run), ``BENCH_SMALL_DEVICES`` (20),
``BENCH_TIGHT_REQUESTS`` (5000), ``BENCH_ROUNDS`` (2: runs of each, alternated).
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymodbus.client import AsyncModbusTcpClient

from agent.modbus import ModbusConnection
from agent.plan import plan_reads
from derrick.plc.profile import Table, load_profile
from derrick.plumbing import loops
from devstack.programs import start_simulator
from devstack.services import free_port_block

SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
DEVICES = int(os.environ.get("BENCH_SMALL_DEVICES", "20"))
TIGHT = int(os.environ.get("BENCH_TIGHT_REQUESTS", "5000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
INTERVAL_S = 0.5
TIMEOUT_S = 2.0
PLAN = [(r.table, r.address, r.count) for r in plan_reads(list(load_profile("small11").registers))]

Read = Callable[[Table, int, int], Awaitable[object]]


class PymodbusReader:
    """One device read with pymodbus as agent.modbus did before issue 16."""

    def __init__(self, port: int) -> None:
        self.client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=TIMEOUT_S, retries=0)
        self.lock = asyncio.Lock()

    async def open(self) -> None:
        if not await self.client.connect():
            raise RuntimeError("pymodbus cannot connect to the simulator")

    async def read(self, table: Table, address: int, count: int) -> object:
        call = {
            Table.HOLDING: self.client.read_holding_registers,
            Table.INPUT: self.client.read_input_registers,
            Table.COIL: self.client.read_coils,
            Table.DISCRETE: self.client.read_discrete_inputs,
        }[table]
        async with self.lock, asyncio.timeout(TIMEOUT_S * 2):
            reply = await call(address, count=count, device_id=1)
        if reply.isError() or int(reply.function_code) & 0x7F == 0:
            raise RuntimeError(f"refused: {reply}")
        return reply.bits[:count] if table.is_bits else list(reply.registers)

    def close(self) -> None:
        self.client.close()


class DerrickReader:
    def __init__(self, port: int) -> None:
        self.connection = ModbusConnection.tcp("127.0.0.1", port, TIMEOUT_S)

    async def open(self) -> None:
        await self.connection.connect()

    async def read(self, table: Table, address: int, count: int) -> object:
        return await self.connection.read(table, address, count, 1)

    def close(self) -> None:
        self.connection.close()


CLIENTS = {"derrick": DerrickReader, "pymodbus": PymodbusReader}
# each client on asyncio's own loop, Derrick's also on uvloop (derrick/plumbing/loops.py)
RUNS = [("derrick", "asyncio"), ("derrick", "uvloop"), ("pymodbus", "asyncio")]


async def polled(client: str, base: int) -> tuple[float, int]:
    """CPU s and requests of DEVICES devices polled on one 0.5 s grid for SECONDS."""
    readers = [CLIENTS[client](base + i) for i in range(DEVICES)]
    for reader in readers:
        await reader.open()
    requests = 0
    counting = False

    async def device(reader) -> None:
        nonlocal requests
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            await asyncio.sleep(math.ceil(now / INTERVAL_S) * INTERVAL_S - now)
            for table, address, count in PLAN:
                await reader.read(table, address, count)
                requests += counting

    tasks = [asyncio.create_task(device(reader)) for reader in readers]
    try:
        await asyncio.sleep(2 * INTERVAL_S)  # every connection warm
        counting = True
        cpu0 = time.process_time()
        await asyncio.sleep(SECONDS)
        cpu = time.process_time() - cpu0
        counting = False
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for reader in readers:
            reader.close()
    failures = [r for r in results if not isinstance(r, asyncio.CancelledError)]
    if failures:
        raise RuntimeError(f"{client}: a device task failed: {failures[0]!r}")
    return cpu, requests


async def tight(client: str, port: int) -> tuple[float, int]:
    """CPU s and requests of one device read back to back, TIGHT requests."""
    reader = CLIENTS[client](port)
    await reader.open()
    try:
        for table, address, count in PLAN:  # warm
            await reader.read(table, address, count)
        cpu0 = time.process_time()
        for n in range(TIGHT):
            table, address, count = PLAN[n % len(PLAN)]
            await reader.read(table, address, count)
        return time.process_time() - cpu0, TIGHT
    finally:
        reader.close()


def main() -> None:
    load_start = os.getloadavg()[0]
    base = free_port_block(DEVICES)
    with tempfile.TemporaryDirectory() as tmp:
        sim = start_simulator(
            Path(tmp), "--profile", "small11", "--count", str(DEVICES), "--log-level", "warning",
            port=base,
        )  # fmt: skip
        try:
            figures: dict[str, list[float]] = {}
            counts: dict[str, int] = {}
            for _ in range(ROUNDS):
                for client, event_loop in RUNS:
                    name = client if event_loop == "asyncio" else f"{client}_{event_loop}"
                    factory = loops.loop_factory(event_loop)  # type: ignore[arg-type]
                    with asyncio.Runner(loop_factory=factory) as runner:
                        cpu, requests = runner.run(polled(client, base))
                    figures.setdefault(f"modbus_cpu_us_per_request_{name}", []).append(
                        cpu / requests * 1e6
                    )
                    counts[name] = counts.get(name, 0) + requests
                    with asyncio.Runner(loop_factory=factory) as runner:
                        cpu, requests = runner.run(tight(client, base))
                    figures.setdefault(f"modbus_cpu_us_per_request_tight_{name}", []).append(
                        cpu / requests * 1e6
                    )
        finally:
            sim.program.stop()
    print(f"# {DEVICES} devices x {len(PLAN)} requests every {INTERVAL_S} s, {SECONDS:.0f} s "
          f"window; tight: {TIGHT} requests; {ROUNDS} rounds, alternated")  # fmt: skip
    for name, values in figures.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name}: {min(values):.1f} us  # lowest of runs {runs}")
    for client, requests in counts.items():
        print(f"modbus_requests_{client}: {requests} requests")
    print(f"load_average: {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (1 min)")


if __name__ == "__main__":
    main()
