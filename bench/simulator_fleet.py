"""Simulator fleet under load; prints ``name: value unit`` lines.

Fifty crane PLCs in one derrick-sim process, every device polled once a second (all its
Modbus requests, as the agent plans them) for CYCLES seconds by concurrent clients:
reply latency p50/p99, failed polls, and the simulator's CPU per poll.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.modbus import ModbusConnection, ModbusError
from agent.plan import plan_reads
from derrick.plc.profile import load_profile
from derrick.plumbing import logs
from devstack.programs import Program, wait_for
from devstack.services import free_port_block

DEVICES = 50
CYCLES = 20
PLAN = plan_reads(load_profile("crane").registers)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def poll_device(port: int, latencies: list[float], failures: list[int]) -> None:
    connection = ModbusConnection("127.0.0.1", port, timeout_s=1.0)
    await connection.connect()
    loop = asyncio.get_running_loop()
    next_cycle = loop.time()
    try:
        for _ in range(CYCLES):
            started = time.perf_counter()
            try:
                for request in PLAN:
                    await connection.read(request.table, request.address, request.count, 1)
                latencies.append(time.perf_counter() - started)
            except ModbusError:
                failures.append(port)
            next_cycle += 1.0
            await asyncio.sleep(max(0.0, next_cycle - loop.time()))
    finally:
        connection.close()


async def poll_fleet(base: int) -> tuple[list[float], list[int]]:
    latencies: list[float] = []
    failures: list[int] = []
    await asyncio.gather(*(poll_device(base + i, latencies, failures) for i in range(DEVICES)))
    return latencies, failures


def main() -> None:
    logs.configure("console", "warning")
    base = free_port_block(DEVICES)
    log_dir = Path(tempfile.mkdtemp(prefix="derrick-bench-fleet-"))
    with Program(
        "sim",
        ["--cranes", str(DEVICES), "--port", str(base), "--log-format", "json"],
        log_dir / "fleet.log",
    ) as sim:
        wait_for(lambda: '"fleet ready"' in sim.log_tail(5), 60, "fleet ready", program=sim)
        cpu_before = cpu_seconds(sim.process.pid)
        latencies, failures = asyncio.run(poll_fleet(base))
        cpu = cpu_seconds(sim.process.pid) - cpu_before
    polls = len(latencies) + len(failures)
    cuts = statistics.quantiles(latencies, n=100)
    print(f"sim_fleet_devices: {DEVICES} devices")
    print(f"sim_fleet_requests_per_poll: {len(PLAN)} requests")
    print(f"sim_fleet_poll_latency_p50_ms: {cuts[49] * 1000:.2f} ms")
    print(f"sim_fleet_poll_latency_p99_ms: {cuts[98] * 1000:.2f} ms")
    print(f"sim_fleet_failed_polls: {len(failures)} of {polls}")
    print(f"sim_fleet_cpu_ms_per_poll: {cpu / polls * 1000:.3f} ms")


if __name__ == "__main__":
    main()
