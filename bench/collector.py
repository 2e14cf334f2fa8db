"""Collector benchmark (issue 5); prints ``name: value unit`` lines.

Real servers on free loopback ports in a temp dir (devstack.services): mosquitto,
InfluxDB 1.6 and VictoriaMetrics. The collector is the real program, one process,
``batch.max_lines`` 1000 (one line per message here, so ~100,000 field values, ~1 MB
per write), ``max_delay_s`` 0.5, no alarm rules, ``log.level: warning``.

* ``collector_readings_per_s_vm``: sustained readings/s from two MQTT publishers (QoS 1,
  200 publishes in flight each) through mosquitto and one derrick-collector
  (``influx.api: v2``, influxdb-client, against VictoriaMetrics' ``/api/v2/write``) into
  VictoriaMetrics: from the first publish until VictoriaMetrics holds every reading
  (force_flush + export), so it includes the last batch's ``max_delay_s``.
* ``collector_readings_per_s_influx1``: the same into InfluxDB 1.6 (``api: v1``, /write).
* ``collector_cpu_us_per_reading_process``: the collector's CPU (utime + stime from
  /proc, all threads) during that run, per reading.
* ``collector_lines_per_write_influx1``: lines per write it made (its own ``collector``
  measurement: lines_written / batches).
* ``bare_writer_readings_per_s_influx1``: the ceiling: the same readings, encoded in
  advance, POSTed to InfluxDB 1.6 /write in batches of ``max_lines`` over one kept-alive
  connection (the collector has one write in flight too); ``collector_vs_bare_influx1``
  is the collector's rate as a share of it.
* ``collector_readings_per_s_influx1_backlog`` (and ``collector_vs_bare_influx1_backlog``):
  the collector frozen with SIGSTOP while every message is published, then resumed; from
  SIGCONT until InfluxDB holds them all. No publisher shares the cores in that time: the
  rate of one collector draining a backlog (after a restart or a network cut).
* ``cpu_us_per_reading_{influx1,influx1_backlog,bare}_<process>``: CPU per reading of
  every process in each run (collector, mosquitto, database, and this process: the
  publishers, or the bare writer), so the whole machine's budget is visible.
* ``collector_cpu_budget_us_per_reading_80pct``: the CPU per reading a collector could
  spend and still reach 80 % of the bare writer on this machine: the cores' CPU time per
  reading at that rate, less InfluxDB's CPU per reading under the bare writer and
  mosquitto's in the backlog run (the bound most favourable to the collector).
* ``collector_cpu_us_per_reading_{receive,validate,evaluate,encode,write}``: CPU of each
  stage, measured in this process. receive: paho's network thread, the hand-off to the
  event loop and the manual PUBACK, draining messages mosquitto queued for a persistent
  session; validate, evaluate (the shipped crane and rig rules) and encode: the
  collector's functions, message by message (the crane rules watch no tag of these
  messages: evaluate is the cost of an unwatched reading); write: ``V1Writer.write`` of
  ``max_lines`` batches to the real InfluxDB 1.6 (joining, sending, the worker thread).

Environment: ``BENCH_MESSAGES`` (20000 messages of 100 readings per run),
``BENCH_PUBLISHERS`` (2), ``BENCH_MAX_LINES`` (1000), ``BENCH_CONNECTIONS`` (bare writer,
1); ``BENCH_VERBOSE=1`` prints timings and the collector's per-second stats on stderr;
``BENCH_PROFILE=DIR`` records each collector run with py-spy (collapsed stacks).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.config import InfluxV1
from collector.influx import V1Writer
from collector.lineproto import encode_telemetry
from collector.validate import validate
from derrick.alarms.engine import RuleEngine
from derrick.alarms.rules import RuleSet, load_rules
from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.plumbing import logs
from derrick.wire.payloads import Reading, Telemetry
from derrick.wire.topics import telemetry_topic
from devstack.programs import REPO, Program, wait_for, write_yaml
from devstack.services import Influx1, Mosquitto, VictoriaMetrics

TAGS = 100
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "20000"))
PUBLISHERS = int(os.environ.get("BENCH_PUBLISHERS", "2"))
WINDOW = 200  # QoS 1 publishes in flight per publisher
# One line per message (its readings share a timestamp): a batch of 1000 lines is
# 100,000 field values, ~1 MB of line protocol.
MAX_LINES = int(os.environ.get("BENCH_MAX_LINES", "1000"))
MAX_DELAY_S = 0.5
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "1"))
STAGE_MESSAGES = 5000
COLLECTOR_ID = "bench-collector"


def message(site: str, seq: int, ts_ns: int, tags: int = TAGS) -> Telemetry:
    return Telemetry(
        site=site,
        asset="crane-01",
        device="lmi",
        kind="crane",
        agent="bench",
        boot="b",
        seq=seq,
        readings=[
            Reading(tag=f"t{i}", value=seq + i / 10, unit="t", ts_ns=ts_ns) for i in range(tags)
        ],
    )


def payloads(site: str, count: int = MESSAGES, tags: int = TAGS) -> list[bytes]:
    """``count`` messages of ``tags`` readings 1 ms apart (VictoriaMetrics stores
    milliseconds), ending now."""
    base = time.time_ns() - count * 1_000_000
    return [
        message(site, seq, base + seq * 1_000_000, tags).model_dump_json().encode()
        for seq in range(count)
    ]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _note(text: str) -> None:
    """Diagnostics for whoever profiles this (BENCH_VERBOSE=1), on stderr."""
    if os.environ.get("BENCH_VERBOSE"):
        sys.stderr.write(f"# {text}\n")


# -- publishing ---------------------------------------------------------------------------


async def _publish_share(broker: BrokerSettings, name: str, topic: str, share: list[bytes]) -> None:
    client = MqttClient(broker, client_id=name, persistent=False)
    await client.start()
    await client.wait_connected(10)
    window = asyncio.Semaphore(WINDOW)
    pending: list[asyncio.Future[None]] = []
    for payload in share:
        await window.acquire()
        future = client.publish_nowait(topic, payload)
        future.add_done_callback(lambda _f: window.release())
        pending.append(future)
    await asyncio.gather(*pending)
    await client.stop()


async def publish_all(broker: BrokerSettings, topic: str, messages: list[bytes]) -> None:
    """Publish from PUBLISHERS clients at once, each with WINDOW QoS 1 publishes in flight."""
    shares = [messages[i::PUBLISHERS] for i in range(PUBLISHERS)]
    await asyncio.gather(
        *(_publish_share(broker, f"bench-pub-{i}", topic, share) for i, share in enumerate(shares))
    )


# -- what the databases hold ----------------------------------------------------------------


def influx_count(influx: Influx1, db: str, site: str) -> int:
    """Messages stored: every message is one line, so count one of its fields."""
    result = influx.query(f"SELECT count(t0) FROM telemetry WHERE site='{site}'", db=db)
    series = result["results"][0].get("series")
    return series[0]["values"][0][1] if series else 0


def influx_fields_complete(influx: Influx1, db: str, site: str) -> bool:
    result = influx.query(f"SELECT count(*) FROM telemetry WHERE site='{site}'", db=db)
    counts = result["results"][0]["series"][0]["values"][0][1:]
    return len(counts) == TAGS and all(count == MESSAGES for count in counts)


def vm_count(vm: VictoriaMetrics, site: str, tag: str = "t0") -> int:
    series = vm.export(f'telemetry_{tag}{{site="{site}"}}')
    return sum(len(s["values"]) for s in series)


def vm_fields_complete(vm: VictoriaMetrics, site: str) -> bool:
    series = vm.export(f'{{__name__=~"telemetry_t[0-9]+",site="{site}"}}')
    return len(series) == TAGS and all(len(s["values"]) == MESSAGES for s in series)


def batch_sizes(influx: Influx1, db: str) -> float:
    """Lines per InfluxDB write, from the collector's own ``collector`` measurement."""
    result = influx.query("SELECT sum(lines_written), sum(batches) FROM collector", db=db)
    series = result["results"][0].get("series")
    if not series:
        return float("nan")
    if os.environ.get("BENCH_VERBOSE"):
        rows = influx.query(
            "SELECT messages, readings_per_s, batches, lines_written, "
            "batch_latency_ms, queue_depth FROM collector",
            db=db,
            epoch="ms",
        )
        for row in rows["results"][0]["series"][0]["values"]:
            _note(f"collector stats: {row}")
    lines, batches = series[0]["values"][0][1:]
    return lines / batches if batches else float("nan")


# -- the collector runs ----------------------------------------------------------------------


@contextmanager
def collector(work: Path, broker: Mosquitto, influx: dict) -> Iterator[Program]:
    """One derrick-collector process, subscribed and ready."""
    work.mkdir(parents=True, exist_ok=True)
    config = write_yaml(
        work / "collector.yaml",
        {
            "collector": {"id": COLLECTOR_ID},
            "broker": {"host": "127.0.0.1", "port": broker.port},
            "influx": influx,
            "batch": {"max_lines": MAX_LINES, "max_delay_s": MAX_DELAY_S},
            "stats_interval_s": 1.0,
            "log": {"format": "json", "level": "warning"},
        },
    )
    with Program("collector", ["--config", str(config)], work / "collector.log") as program:
        yield program


@contextmanager
def profiled(pid: int, name: str) -> Iterator[None]:
    """With BENCH_PROFILE=DIR, py-spy samples the collector into DIR/<name>.txt (collapsed
    stacks: one line per stack, then its sample count)."""
    folder = os.environ.get("BENCH_PROFILE")
    if not folder:
        yield
        return
    spy = Path(sys.executable).parent / "py-spy"
    out = Path(folder) / f"{name}.txt"
    proc = subprocess.Popen(
        [
            str(spy),
            "record",
            "-p",
            str(pid),
            "-f",
            "raw",
            "-r",
            "250",
            "--nonblocking",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attached
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        _note(f"profile: {out}")


@dataclass
class Run:
    """One timed run: wall seconds, and the CPU seconds each process spent in it."""

    seconds: float
    cpu: dict[str, float]

    def cpu_us_per_reading(self) -> dict[str, float]:
        return {name: used / (MESSAGES * TAGS) * 1e6 for name, used in self.cpu.items()}


class CpuMeter:
    """CPU seconds (utime + stime, all threads) of named processes since creation."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.own = time.process_time()

    def used(self, own_name: str) -> dict[str, float]:
        used = {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}
        return {**used, own_name: time.process_time() - self.own}


def settings_of(broker: Mosquitto) -> BrokerSettings:
    return BrokerSettings(host="127.0.0.1", port=broker.port)


def warm_up(broker: Mosquitto, site: str, program: Program, count: Callable[[str], int]) -> None:
    """A few messages, stored: the collector is subscribed and has made its first write."""
    settings = settings_of(broker)
    warm = f"{site}warm"
    warm_topic = telemetry_topic(warm, "crane-01", "lmi")

    def warmed() -> bool:
        asyncio.run(publish_all(settings, warm_topic, payloads(warm, 10)))
        return count(warm) > 0

    wait_for(warmed, 60, "collector subscribed and writing", interval=1.0, program=program)


def wait_stored(site: str, program: Program, count: Callable[[str], int]) -> None:
    wait_for(
        lambda: count(site) >= MESSAGES,
        120,
        f"{site}: all readings stored",
        interval=0.05,
        program=program,
    )


def timed_run(
    broker: Mosquitto, site: str, program: Program, count: Callable[[str], int], store_pid: int
) -> Run:
    """Publish every message, wait until all are stored.

    The clock runs from the first publish: the publishers (this process) share the
    two cores with mosquitto, the collector and the database, as agents would not.
    """
    warm_up(broker, site, program, count)
    messages = payloads(site)
    assert program.process is not None and broker.pid is not None
    pids = {"collector": program.process.pid, "mosquitto": broker.pid, "database": store_pid}
    meter = CpuMeter(pids)
    with profiled(program.process.pid, site):
        started = time.perf_counter()
        asyncio.run(
            publish_all(settings_of(broker), telemetry_topic(site, "crane-01", "lmi"), messages)
        )
        published = time.perf_counter() - started
        wait_stored(site, program, count)
        seconds = time.perf_counter() - started
    _note(f"{site}: published in {published:.2f} s, all stored after {seconds:.2f} s")
    return Run(seconds, meter.used("publishers"))


def backlog_run(
    broker: Mosquitto, site: str, program: Program, count: Callable[[str], int], store_pid: int
) -> Run:
    """The collector frozen (SIGSTOP) while every message is published, then thawed:
    the clock runs from SIGCONT until all are stored. Only mosquitto, the collector
    and the database work in that time: the rate of one collector draining a backlog,
    as after a restart or a network cut."""
    warm_up(broker, site, program, count)
    messages = payloads(site)
    assert program.process is not None and broker.pid is not None
    pid = program.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        asyncio.run(
            publish_all(settings_of(broker), telemetry_topic(site, "crane-01", "lmi"), messages)
        )
    finally:
        meter = CpuMeter({"collector": pid, "mosquitto": broker.pid, "database": store_pid})
        started = time.perf_counter()
        os.kill(pid, signal.SIGCONT)
    wait_stored(site, program, count)
    seconds = time.perf_counter() - started
    _note(f"{site}: backlog stored {seconds:.2f} s after the collector resumed")
    return Run(seconds, meter.used("bench"))


def run_vm(work: Path, broker: Mosquitto, vm: VictoriaMetrics) -> float:
    site = "benchvm"
    influx = {"api": "v2", "url": vm.url, "org": "derrick", "bucket": "derrick"}
    assert vm.pid is not None
    with collector(work / "vm", broker, influx) as program:
        run = timed_run(broker, site, program, lambda s: vm_count(vm, s), vm.pid)
    if not vm_fields_complete(vm, site):
        raise RuntimeError("VictoriaMetrics: not every field of every message stored")
    return MESSAGES * TAGS / run.seconds


def run_influx1(work: Path, broker: Mosquitto, influx: Influx1) -> tuple[Run, Run, float]:
    """(the publish-and-store run, the backlog run, lines per write)."""
    site, db = "benchinflux", "bench_collector"
    settings = {"api": "v1", "url": influx.url, "database": db, "create_database": True}
    assert influx.pid is not None

    def count(s: str) -> int:
        return influx_count(influx, db, s)

    with collector(work / "influx1", broker, settings) as program:
        run = timed_run(broker, site, program, count, influx.pid)
        time.sleep(1.2)  # one more stats interval, for the batch sizes
        lines_per_write = batch_sizes(influx, db)
        if not influx_fields_complete(influx, db, site):
            raise RuntimeError("InfluxDB: not every field of every message stored")
        backlog = backlog_run(broker, f"{site}backlog", program, count, influx.pid)
        if not influx_fields_complete(influx, db, f"{site}backlog"):
            raise RuntimeError("InfluxDB: not every field of every backlog message stored")
    return run, backlog, lines_per_write


# -- the bare writer -----------------------------------------------------------------------------


def bare_writer(influx: Influx1, batch_lines: int, connections: int = CONNECTIONS) -> Run:
    """Plain POSTs of pre-encoded batches on kept-alive connections."""
    site, db = "benchbare", "bench_bare"
    influx.create_database(db)
    lines = [
        line
        for payload in payloads(site)
        for line in encode_telemetry(validate(telemetry_topic(site, "crane-01", "lmi"), payload))
    ]  # type: ignore[arg-type]
    bodies = [
        "\n".join(lines[i : i + batch_lines]).encode() for i in range(0, len(lines), batch_lines)
    ]
    path = f"/write?db={db}&precision=ns"
    errors: list[str] = []

    def post(share: list[bytes]) -> None:
        conn = http.client.HTTPConnection(influx.host, influx.port, timeout=30)
        try:
            for body in share:
                conn.request(
                    "POST", path, body=body, headers={"Content-Type": "text/plain; charset=utf-8"}
                )
                response = conn.getresponse()
                text = response.read()
                if response.status != 204:
                    errors.append(f"HTTP {response.status}: {text[:200]!r}")
        finally:
            conn.close()

    threads = [
        threading.Thread(target=post, args=(bodies[i::connections],)) for i in range(connections)
    ]
    assert influx.pid is not None
    meter = CpuMeter({"database": influx.pid})
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    used = meter.used("writer")
    if errors:
        raise RuntimeError(f"bare writer: {errors[0]}")
    if influx_count(influx, db, site) != MESSAGES:
        raise RuntimeError("bare writer: not every message stored")
    return Run(seconds, used)


# -- CPU per stage, in this process ----------------------------------------------------------------


async def receive_cpu(broker: Mosquitto) -> float:
    """CPU per reading of paho receiving, handing to the loop, and the manual PUBACK."""
    settings = settings_of(broker)
    site = "benchreceive"
    topic = telemetry_topic(site, "crane-01", "lmi")

    def subscriber() -> MqttClient:
        return MqttClient(
            settings, client_id="bench-receive", manual_ack=True, inbox_size=STAGE_MESSAGES + 10
        )

    first = subscriber()
    await first.subscribe(topic)
    await first.start()
    await first.wait_subscribed(10)
    await first.stop()  # the session stays: mosquitto queues what follows for it
    messages = payloads(site, STAGE_MESSAGES)
    await publish_all(settings, topic, messages)
    client = subscriber()
    started = time.process_time()
    await client.start()
    for _ in range(STAGE_MESSAGES):
        inbound = await asyncio.wait_for(client.inbox.get(), 30)
        client.ack(inbound)
    used = time.process_time() - started
    await client.stop()
    return used / (STAGE_MESSAGES * TAGS) * 1e6


def stage_cpu() -> tuple[dict[str, float], list[str]]:
    """CPU us per reading of validate, evaluate and encode, and the encoded lines.

    Message by message, as the collector does: a validated message is dropped once
    encoded (holding thousands of them would make the garbage collector's passes
    longer than the work measured).
    """
    site = "benchstage"
    topic = telemetry_topic(site, "crane-01", "lmi")
    rule_files = [REPO / "config" / "alarm-rules" / f"{kind}.yaml" for kind in ("crane", "rig")]
    engine = RuleEngine(RuleSet(rules=[r for f in rule_files for r in load_rules(f).rules]))
    clock = time.process_time_ns
    spent = {"validate": 0, "evaluate": 0, "encode": 0}
    lines: list[str] = []
    for payload in payloads(site, STAGE_MESSAGES):
        started = clock()
        message = validate(topic, payload)
        validated = clock()
        engine.observe(message, started)  # type: ignore[arg-type]
        evaluated = clock()
        encoded = encode_telemetry(message)  # type: ignore[arg-type]
        done = clock()
        spent["validate"] += validated - started
        spent["evaluate"] += evaluated - validated
        spent["encode"] += done - evaluated
        lines += encoded
    readings_ns = STAGE_MESSAGES * TAGS * 1000
    return {stage: ns / readings_ns for stage, ns in spent.items()}, lines


async def write_cpu(influx: Influx1, lines: list[str], batch_lines: int) -> float:
    db = "bench_stage_write"
    writer = V1Writer(InfluxV1(api="v1", url=influx.url, database=db, create_database=True))
    await writer.create_database()
    batches = [lines[i : i + batch_lines] for i in range(0, len(lines), batch_lines)]
    started = time.process_time()
    for batch in batches:
        await writer.write(batch)
    used = time.process_time() - started
    await writer.close()
    return used / (STAGE_MESSAGES * TAGS) * 1e6


# -- main ------------------------------------------------------------------------------------------


def collector_budget_us(bare: Run, backlog: Run) -> float:
    """CPU per reading the collector could spend and still reach 80 % of the bare writer.

    At that rate this machine's cores give (cores / rate) CPU seconds per reading. Of
    them InfluxDB takes at least what it took per reading from the bare writer (its
    cheapest: full batches, a short window), and mosquitto what it took in the backlog
    run (no publisher on the machine): the bound most favourable to the collector.
    """
    cores = len(os.sched_getaffinity(0))
    target_rate = 0.8 * MESSAGES * TAGS / bare.seconds
    database_us = bare.cpu_us_per_reading()["database"]
    mosquitto_us = backlog.cpu_us_per_reading()["mosquitto"]
    return cores / target_rate * 1e6 - database_us - mosquitto_us


def print_cpu(prefix: str, run: Run) -> None:
    for name, us in run.cpu_us_per_reading().items():
        print(f"{prefix}_{name}: {us:.2f} us")


def main() -> None:
    logs.configure("console", "warning")
    with tempfile.TemporaryDirectory(prefix="derrick-bench-collector-") as tmp:
        work = Path(tmp)
        with Mosquitto(work) as broker, Influx1(work) as influx, VictoriaMetrics(work) as vm:
            vm_rate = run_vm(work, broker, vm)
            print(f"collector_readings_per_s_vm: {vm_rate:.0f} readings/s")
            run, backlog, lines_per_write = run_influx1(work, broker, influx)
            rate = MESSAGES * TAGS / run.seconds
            print(f"collector_readings_per_s_influx1: {rate:.0f} readings/s")
            process_us = run.cpu_us_per_reading()["collector"]
            print(f"collector_cpu_us_per_reading_process: {process_us:.2f} us")
            print(f"collector_lines_per_write_influx1: {lines_per_write:.0f} lines")
            bare = bare_writer(influx, MAX_LINES)
            bare_rate = MESSAGES * TAGS / bare.seconds
            print(f"bare_writer_readings_per_s_influx1: {bare_rate:.0f} readings/s")
            print(f"collector_vs_bare_influx1: {rate / bare_rate * 100:.0f} %")
            backlog_rate = MESSAGES * TAGS / backlog.seconds
            print(f"collector_readings_per_s_influx1_backlog: {backlog_rate:.0f} readings/s")
            print(f"collector_vs_bare_influx1_backlog: {backlog_rate / bare_rate * 100:.0f} %")
            budget = collector_budget_us(bare, backlog)
            print(f"collector_cpu_budget_us_per_reading_80pct: {budget:.2f} us")
            print_cpu("cpu_us_per_reading_influx1", run)
            print_cpu("cpu_us_per_reading_influx1_backlog", backlog)
            print_cpu("cpu_us_per_reading_bare", bare)
            receive_us = asyncio.run(receive_cpu(broker))
            stages, lines = stage_cpu()
            write_us = asyncio.run(write_cpu(influx, lines, MAX_LINES))
    for stage, us in {"receive": receive_us, **stages, "write": write_us}.items():
        print(f"collector_cpu_us_per_reading_{stage}: {us:.3f} us")


if __name__ == "__main__":
    main()
