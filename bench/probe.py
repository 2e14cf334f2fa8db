"""Probe benchmark (issue 19): ``derrick-agent probe`` on a 1,000-register device with
three holes.

The device is derrick-sim's generic model serving a profile written to a temp dir:
holding 0-1002 minus three single-register holes (250, 501, 752), so 1,000 registers of
float32 (both word orders) and uint16 tags; the other three tables are empty (every
read of them is refused with exception 02). The probe runs in this process, over Modbus
TCP on loopback, as the CLI runs it (:func:`agent.probe.probe`), three times per
setting; the ranges it finds are checked against the profile. Prints ``name: value
unit`` lines:

* ``probe_requests`` / ``probe_s``: the device's holding table up to its last address
  (``--tables holding --max-address 1002``): what finding the map and its holes costs;
  ``probe_s`` is the whole run (median of three), the 0.5 s pause before the second read
  included; ``probe_search_s`` the search alone;
* ``probe_requests_defaults`` / ``probe_s_defaults``: the CLI's defaults (all four tables,
  addresses 0-9999, refused stretches sampled every 16th address): the empty tables and
  the empty tail cost most of it;
* ``probe_requests_exhaustive``: the device's holding table with ``--stride 1`` up to
  1999, every address of the refused tail read alone;
* ``load_average``: the machine's 1-minute load at the start and at the end.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # not bench/agent.py

import yaml

from agent.modbus import ModbusConnection
from agent.probe import ProbeReport, ProbeSettings, add_span, probe
from derrick.plc.profile import Table
from derrick.plumbing import logs
from devstack.programs import start_simulator

LAST = 1002
HOLES = (250, 501, 752)
RUNS = 3


def device_profile(path: Path) -> Path:
    """1,000 holding registers in 0-1002 around three one-register holes."""
    regs: list[dict[str, object]] = []
    address = 0
    while address <= LAST:
        if address in HOLES:
            address += 1
            continue
        wide = address + 1 <= LAST and address + 1 not in HOLES and len(regs) % 3 != 2
        reg: dict[str, object] = {"tag": f"t{address}", "table": "holding", "address": address}
        reg["type"] = "float32" if wide else "uint16"
        if wide and len(regs) % 2:
            reg["word_order"] = "little"
        regs.append(reg)
        address += 2 if wide else 1
    path.write_text(yaml.safe_dump({"kind": "bench1000", "registers": regs}, sort_keys=False))
    return path


def expected_spans() -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for address in range(LAST + 1):
        if address not in HOLES:
            add_span(spans, address, address + 1)
    return spans


async def probe_once(port: int, settings: ProbeSettings) -> ProbeReport:
    connection = ModbusConnection.tcp("127.0.0.1", port, 1.0)
    await connection.connect()
    try:
        return await probe(connection, settings)
    finally:
        connection.close()


def measure(port: int, settings: ProbeSettings) -> tuple[ProbeReport, float, float]:
    """The last report, and the median whole and search times of RUNS runs."""
    reports = [asyncio.run(probe_once(port, settings)) for _ in range(RUNS)]
    report = reports[-1]
    holding = report.scans[Table.HOLDING].answering
    assert holding == expected_spans(), f"probe found {holding}"
    assert not report.cut and not report.failure, (report.cut, report.failure)
    whole = statistics.median(r.seconds for r in reports)
    search = statistics.median(r.search_seconds for r in reports)
    return report, whole, search


def main() -> None:
    logs.configure("console", "warning")  # stdout holds the figures only
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        profile = device_profile(Path(tmp) / "bench1000.yaml")
        sim = start_simulator(Path(tmp), "--profile", str(profile))
        try:
            device = ProbeSettings(tables=(Table.HOLDING,), max_address=LAST)
            report, whole, search = measure(sim.port, device)
            print(f"probe_requests: {report.requests} requests")
            print(f"probe_s: {whole:.3f} s")
            print(f"probe_search_s: {search:.3f} s")
            report, whole, _ = measure(sim.port, ProbeSettings())
            print(f"probe_requests_defaults: {report.requests} requests")
            print(f"probe_s_defaults: {whole:.3f} s")
            exhaustive = ProbeSettings(tables=(Table.HOLDING,), max_address=1999, stride=1)
            report, whole, _ = measure(sim.port, exhaustive)
            print(f"probe_requests_exhaustive: {report.requests} requests")
            print(f"probe_s_exhaustive: {whole:.3f} s")
        finally:
            sim.program.stop()
    print(f"load_average: {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (1 min)")


if __name__ == "__main__":
    main()
