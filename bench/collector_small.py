"""Collector CPU per reading by message size (issue 16); prints ``name: value unit`` lines.

bench/collector.py measures the collector on messages of 100 readings, which hides its
per-message costs (paho receive and PUBACK, pydantic's setup, one line per message). An
agent's device sends fewer: 20 readings is the common size. This runs the same set-up on
both sizes, in one run: real mosquitto and InfluxDB 1.6 on free loopback ports in a temp
dir (devstack.services), one derrick-collector process per size configured as in
bench/collector.py (``api: v1``, ``batch.max_lines`` 1000, ``max_delay_s`` 0.5, no alarm
rules, ``log.level: warning``). For each size, ``BENCH_MESSAGES`` valid telemetry
messages (bench/collector.py's builder, ``tags`` readings each) are published at QoS 1 by
its publishers (two clients in this process, 200 publishes in flight each); the clock and
the CPU meters run from the first publish until InfluxDB holds every field of every
message.

* ``collector_cpu_us_per_reading_20``: the collector process's CPU (utime + stime from
  /proc, all threads) per reading, on messages of 20 readings;
* ``collector_cpu_us_per_reading_100``: the same on messages of 100 readings (the figure
  bench/collector.py prints as ``collector_cpu_us_per_reading_process``), for comparison;
* ``collector_cpu_us_per_message_{20,100}``: the same CPU per message;
* ``collector_readings_per_s_{20,100}``: readings stored per second, from the first
  publish until all are stored (the publishers share the two cores);
* ``cpu_us_per_reading_{20,100}_{mosquitto,database,publishers}``: the other processes'
  CPU per reading in the same runs (publishers: this process);
* ``load_average``: the machine's 1-minute load at the start and at the end.

With ``sparkplug`` in ``BENCH_WIRES`` (the default), the same runs again with the same
readings as Sparkplug B DDATA (spBv1.0/<site>/DDATA/bench/lmi, Double metrics by alias
with their timestamps, as Derrick's agent writes them; NBIRTH and DBIRTH published
first): the figures end in ``_sparkplug``.

Environment: ``BENCH_MESSAGES`` (20000 messages per size, as bench/collector.py),
``BENCH_SIZES`` (``20,100``: readings per message, one run each, in that order),
``BENCH_WIRES`` (``json,sparkplug``);
``BENCH_PROFILE=DIR`` records each collector run with py-spy (collapsed stacks in
``DIR/small<size>.txt``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.collector import (
    CpuMeter,
    collector,
    influx_count,
    payloads,
    profiled,
    publish_all,
    settings_of,
    warm_up,
)
from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.plumbing import logs
from derrick.wire import sparkplug as sp
from derrick.wire.payloads import Quality, trusted_reading
from derrick.wire.topics import telemetry_topic
from devstack.programs import Program, wait_for
from devstack.services import Influx1, Mosquitto

MESSAGES = int(os.environ.get("BENCH_MESSAGES", "20000"))
SIZES = [int(size) for size in os.environ.get("BENCH_SIZES", "20,100").split(",")]
WIRES = os.environ.get("BENCH_WIRES", "json,sparkplug").split(",")
DB = "bench_collector_small"


def fields_complete(influx: Influx1, site: str, tags: int) -> bool:
    """Each of the ``tags`` fields stored once per message (the measurement also has the
    fields of other sizes' messages: counted 0 here, so they are left out)."""
    result = influx.query(f"SELECT count(*) FROM telemetry WHERE site='{site}'", db=DB)
    series = result["results"][0]["series"][0]
    counts = dict(zip(series["columns"][1:], series["values"][0][1:], strict=True))
    return all(counts.get(f"count_t{i}") == MESSAGES for i in range(tags))


def sparkplug_messages(site: str, tags: int) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """The births and ``MESSAGES`` DDATA of the readings bench/collector.py's builder
    makes (same values, 1 ms apart, ending now), written as Derrick's agent writes them."""
    specs = [sp.MetricSpec(f"t{i}", i + 1, sp.MetricType.DOUBLE, "t") for i in range(tags)]
    encoder = sp.DataEncoder(specs)
    now = time.time_ns()
    births = [
        (sp.sparkplug_topic(site, sp.MessageType.NBIRTH, "bench"), sp.encode_node_birth(0, now)),
        (
            sp.sparkplug_topic(site, sp.MessageType.DBIRTH, "bench", "lmi"),
            sp.with_seq(sp.encode_device_birth(specs, {}, now, asset="crane-01", kind="crane"), 1),
        ),
    ]
    base = now - MESSAGES * 1_000_000
    data = []
    for seq in range(MESSAGES):
        ts = base + seq * 1_000_000
        readings = [
            trusted_reading(f"t{i}", seq + i / 10, "t", Quality.GOOD, ts) for i in range(tags)
        ]
        payload = encoder.encode(readings)
        assert payload is not None
        data.append(sp.with_seq(payload, (seq + 2) % 256, now))
    return births, data


async def publish_births(broker: BrokerSettings, births: list[tuple[str, bytes]]) -> None:
    client = MqttClient(broker, client_id="bench-births", persistent=False)
    await client.start()
    try:
        await client.wait_connected(timeout=10)
        for topic, payload in births:
            await client.publish(topic, payload, timeout=10)
    finally:
        await client.stop()


def run_size(
    work: Path, broker: Mosquitto, influx: Influx1, tags: int, wire: str = "json"
) -> dict[str, float]:
    """One collector, MESSAGES messages of ``tags`` readings: CPU seconds per process and
    the wall seconds (``seconds``), from the first publish until all are stored."""
    site = f"small{tags}" if wire == "json" else f"small{tags}{wire}"
    settings = {"api": "v1", "url": influx.url, "database": DB, "create_database": True}

    def count(s: str) -> int:
        return influx_count(influx, DB, s)

    assert broker.pid is not None and influx.pid is not None
    with collector(work / site, broker, settings) as program:
        warm_up(broker, site, program, count)
        if wire == "sparkplug":
            births, messages = sparkplug_messages(site, tags)
            asyncio.run(publish_births(settings_of(broker), births))
            topic = sp.sparkplug_topic(site, sp.MessageType.DDATA, "bench", "lmi")
        else:
            messages = payloads(site, MESSAGES, tags)
            topic = telemetry_topic(site, "crane-01", "lmi")
        assert program.process is not None
        meter = CpuMeter(
            {"collector": program.process.pid, "mosquitto": broker.pid, "database": influx.pid}
        )
        with profiled(program.process.pid, site):
            started = time.perf_counter()
            asyncio.run(publish_all(settings_of(broker), topic, messages))
            _wait_stored(site, program, count)
            seconds = time.perf_counter() - started
        used = meter.used("publishers")
    if not fields_complete(influx, site, tags):
        raise RuntimeError(f"InfluxDB: not every field of every {tags}-reading message stored")
    return {**used, "seconds": seconds}


def _wait_stored(site: str, program: Program, count) -> None:
    wait_for(
        lambda: count(site) >= MESSAGES,
        300,
        f"{site}: all messages stored",
        interval=0.05,
        program=program,
    )


def main() -> None:
    logs.configure("console", "warning")
    load_start = os.getloadavg()[0]
    results: dict[tuple[int, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="derrick-bench-collector-small-") as tmp:
        work = Path(tmp)
        with Mosquitto(work) as broker, Influx1(work) as influx:
            for wire in WIRES:
                for tags in SIZES:
                    results[tags, wire] = run_size(work, broker, influx, tags, wire)
    load_end = os.getloadavg()[0]
    for (tags, wire), used in results.items():
        readings = MESSAGES * tags
        suffix = "" if wire == "json" else f"_{wire}"
        us = used["collector"] / readings * 1e6
        print(f"collector_cpu_us_per_reading_{tags}{suffix}: {us:.2f} us")
    for (tags, wire), used in results.items():
        suffix = "" if wire == "json" else f"_{wire}"
        per_message = used["collector"] / MESSAGES * 1e6
        print(f"collector_cpu_us_per_message_{tags}{suffix}: {per_message:.1f} us")
        rate = MESSAGES * tags / used["seconds"]
        print(f"collector_readings_per_s_{tags}{suffix}: {rate:.0f} readings/s")
        for name in ("mosquitto", "database", "publishers"):
            us = used[name] / (MESSAGES * tags) * 1e6
            print(f"cpu_us_per_reading_{tags}{suffix}_{name}: {us:.2f} us")
    print(f"load_average: {load_start:.2f} at start, {load_end:.2f} at end (1 min)")


if __name__ == "__main__":
    main()
