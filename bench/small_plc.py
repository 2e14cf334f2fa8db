"""Small-PLC agent benchmark (issue 16): one derrick-agent polling 20 PLCs of 11 tags.

bench/agent.py's 50 PLCs x 100 tags spread each request's and each message's cost over
many readings. Here every device is small, as most in the field are: profile
``small11`` (config/profiles/small11.yaml: 4 float32 in both word orders, a scaled
int16, a uint32, three bits of a holding register and two coils), four Modbus requests
per poll, one telemetry message of 11 readings per poll. Real parts: derrick-sim (the
generic model, values wandering so every poll differs), mosquitto, the agent as its own
process with its SQLite spool, every tag published every poll (the profile has no
deadband or heartbeat, as bench100), polled every 0.5 s; a tap subscribed to ``#``
records what reaches the broker (only the agent publishes there: ``derrick/v1/...``, and
``spBv1.0/...`` in Sparkplug). After the first readings and a warm-up, one window of
``BENCH_SECONDS`` is measured. Prints ``name: value unit`` lines:

* ``agent_cpu_us_per_reading_small``: agent CPU time (utime + stime from /proc, all
  threads) per reading published in the window;
* ``agent_cpu_us_per_request``: the same CPU per Modbus request in the window (requests
  from the agent's own metrics: requests per reading published between its first and
  last metrics message in the window, times the readings in the window): all of the
  agent's CPU (publishing, spool, decoding included) over the requests, so 11/4 of the
  figure per reading here; what the request path alone costs is
  bench/modbus_client.py's ``modbus_cpu_us_per_request_derrick``;
* ``agent_cpu_system_share_small``: the share of that CPU spent in the kernel (stime):
  socket sends and receives, epoll wake-ups, SQLite writes;
* ``agent_requests_per_poll_small``: requests per poll cycle (the same metrics: requests
  over cycles): 4, the scenario's shape; ``agent_failed_polls_small`` should be 0;
* ``agent_readings_per_s_small``, ``agent_rss_mb_small`` (peak resident set);
* ``wire_bytes_per_reading_json``: bytes on the wire per reading: every MQTT message the
  agent published in the window (telemetry, and the device status, agent metrics and
  events it sends among them, amortised over the readings; births fall before the
  window), each counted as a QoS 1 PUBLISH packet of MQTT 3.1.1 (the agent's protocol;
  a QoS 0 message, as Sparkplug's DBIRTH, has 2 bytes less): fixed header 1 byte +
  remaining length 1-4 bytes (2 bytes in all below 128 bytes of topic and payload, 3
  below 16 kB) + topic length 2 + topic + packet id 2 + payload. Not counted: the
  broker's PUBACKs (4 bytes per message), TCP/IP headers, TLS. For a reader:
  ``wire_bytes_per_telemetry_message_json`` and ``wire_share_other_json`` (the share of
  the bytes that is not telemetry; Sparkplug's telemetry is its DDATA);
* ``cpu_us_per_reading_small_{mosquitto,sim}``: mosquitto's and the simulator's CPU per
  reading in the window, so a reader can judge the machine; the machine-speed yardstick
  is bench/simulator_fleet.py's ``sim_fleet_cpu_ms_per_poll`` (a separate bench, not
  repeated here);
* ``load_average``: the machine's 1-minute load at the start and at the end.

``BENCH_FORMATS`` (``json``) lists wire formats to run the same scenario with, one agent
run each (:func:`run_scenario`), each set as the agent config's ``format`` key;
``json,sparkplug`` adds ``wire_bytes_per_reading_sparkplug``; ``sparkplug-compact`` is
Sparkplug with ``sparkplug.compact: true`` (no metric timestamp equal to its message's).
Every figure of a run other than json gets the suffix ``_<format>``; its telemetry is
told apart and its readings counted by its entry in :data:`FORMATS_READ`. A format the
agent's config refuses is skipped with a note on stderr.

``BENCH_EVENT_LOOPS`` (``auto``) lists the agent's ``event_loop`` settings to run each
format on (``asyncio,uvloop`` compares the two in one session); a run on one other than
``auto`` ends its figures' names with it (``agent_cpu_us_per_reading_small_asyncio``).

Environment: ``BENCH_SECONDS`` (60), ``BENCH_WARMUP_S`` (5), ``BENCH_SMALL_DEVICES``
(20), ``BENCH_SMALL_INTERVAL_S`` (0.5), ``BENCH_FORMATS`` (``json``, comma-separated);
``BENCH_PROFILE=DIR`` records the agent during the window with py-spy (collapsed stacks
in ``DIR/small_plc_<format>.txt``; ``pip install py-spy`` into the venv first).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import load_config
from bench.agent import cpu_seconds, peak_rss_mb
from bench.collector import profiled
from derrick.plc.profile import load_profile
from derrick.plumbing import logs
from derrick.plumbing.configfile import ConfigError
from derrick.wire import sparkplug
from derrick.wire.payloads import AgentMetrics
from derrick.wire.topics import TOPIC_ROOT, agent_metrics_topic
from devstack.programs import Program, wait_for, write_yaml
from devstack.services import Mosquitto, free_port_block
from devstack.tap import Received, Tap

PROFILE = "small11"
DEVICES = int(os.environ.get("BENCH_SMALL_DEVICES", "20"))
INTERVAL_S = float(os.environ.get("BENCH_SMALL_INTERVAL_S", "0.5"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "60"))
WARMUP_S = float(os.environ.get("BENCH_WARMUP_S", "5"))
FORMATS = [f.strip() for f in os.environ.get("BENCH_FORMATS", "json").split(",") if f.strip()]
LOOPS = [x.strip() for x in os.environ.get("BENCH_EVENT_LOOPS", "auto").split(",") if x.strip()]
AGENT_ID = "gw-small"


@dataclass(frozen=True)
class WireFormat:
    """How to read one wire format off the tap: which topics are telemetry, and how many
    readings a telemetry payload holds."""

    is_telemetry: Callable[[str], bool]
    readings_of: Callable[[bytes], int]

    def telemetry(self, messages: Sequence[Received]) -> list[Received]:
        return [m for m in messages if self.is_telemetry(m.topic)]

    def readings(self, messages: Sequence[Received]) -> int:
        return sum(self.readings_of(m.payload) for m in self.telemetry(messages))


FORMATS_READ = {
    "json": WireFormat(
        lambda topic: topic.startswith(f"{TOPIC_ROOT}/") and topic.endswith("/telemetry"),
        lambda payload: len(json.loads(payload)["readings"]),
    ),
    "sparkplug": WireFormat(
        lambda topic: topic.startswith(f"{sparkplug.NAMESPACE}/") and "/DDATA/" in topic,
        lambda payload: len(sparkplug.decode_payload(payload).metrics),
    ),
}
FORMATS_READ["sparkplug-compact"] = FORMATS_READ["sparkplug"]


def publish_packet_bytes(topic: str, payload: bytes) -> int:
    """One QoS 1 PUBLISH of MQTT 3.1.1: fixed header (1 byte, then the remaining length
    in 1-4 bytes), topic length (2), topic, packet id (2), payload."""
    remaining = 2 + len(topic.encode()) + 2 + len(payload)
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3
    if remaining >= 2_097_152:
        length_bytes = 4
    return 1 + length_bytes + remaining


def system_seconds(pid: int) -> float:
    """CPU time in the kernel (stime) of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def metrics_in(messages: Sequence[Received]) -> list[AgentMetrics]:
    topic = agent_metrics_topic(AGENT_ID)
    return [AgentMetrics.model_validate_json(m.payload) for m in messages if m.topic == topic]


def counter_delta(first: AgentMetrics, last: AgentMetrics, name: str) -> int:
    """Growth of one per-device counter between two metrics messages, over all devices."""
    return sum(
        getattr(last.devices[d], name) - getattr(first.devices[d], name) for d in last.devices
    )


def agent_settings(
    fmt: str, broker_port: int, base: int, work: Path, event_loop: str = "auto"
) -> dict:
    settings: dict = {
        "agent": {"id": AGENT_ID, "site": "bench"},
        "broker": {"host": "127.0.0.1", "port": broker_port},
        "devices": [
            {
                "name": f"plc{i:02d}",
                "asset": f"skid-{i:02d}",
                "profile": PROFILE,
                "host": "127.0.0.1",
                "port": base + i,
                "interval_s": INTERVAL_S,
                "timeout_s": 2.0,
            }
            for i in range(DEVICES)
        ],
        "spool": {"path": str(work / "spool.db")},
        "metrics_interval_s": 5,
        "log": {"format": "json", "level": "warning"},
    }
    settings["format"] = fmt.removesuffix("-compact")  # always said: the default moved
    settings["event_loop"] = event_loop
    if fmt.endswith("-compact"):
        settings["sparkplug"] = {"compact": True}
    return settings


def run_scenario(fmt: str, work: Path, event_loop: str = "auto") -> dict[str, float] | None:
    """One agent run in wire format ``fmt`` on ``event_loop``: the figures by name
    (without the format suffix), or None when the agent's config refuses the format."""
    work.mkdir(parents=True, exist_ok=True)
    base = free_port_block(DEVICES)
    with Mosquitto(work / "mosquitto") as broker:
        config = write_yaml(
            work / "agent.yaml", agent_settings(fmt, broker.port, base, work, event_loop)
        )
        try:
            load_config(config)
        except ConfigError as exc:
            sys.stderr.write(f"# format {fmt}: the agent refuses its config, skipped: {exc}\n")
            return None
        wire_format = FORMATS_READ[fmt]
        sim = Program(
            "sim",
            ["--profile", PROFILE, "--count", str(DEVICES), "--port", str(base),
             "--log-format", "json", "--log-level", "warning"],
            work / "sim.log",
        ).start()  # fmt: skip
        try:
            with Tap(broker.port, "#") as tap:
                agent = Program("agent", ["--config", str(config)], work / "agent.log").start()
                assert agent.process is not None and sim.process is not None
                assert broker.pid is not None
                pids = {"agent": agent.process.pid, "mosquitto": broker.pid}
                pids["sim"] = sim.process.pid
                wait_for(
                    lambda: wire_format.readings(tap.messages()) > 0,
                    60,
                    "first readings",
                    program=agent,
                )
                time.sleep(WARMUP_S)
                with profiled(pids["agent"], f"small_plc_{fmt}_{event_loop}"):
                    seen = len(tap.messages())
                    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    system0 = system_seconds(pids["agent"])
                    time.sleep(SECONDS)
                    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    system1 = system_seconds(pids["agent"])
                    window = tap.messages()[seen:]
                rss = peak_rss_mb(pids["agent"])
                agent.stop()
        finally:
            sim.stop()
    readings = wire_format.readings(window)
    metrics = metrics_in(window)
    if len(metrics) < 2:
        raise RuntimeError(f"{len(metrics)} agent metrics messages in the window: make it longer")
    first, last = metrics[0], metrics[-1]
    requests = counter_delta(first, last, "requests")
    cycles = counter_delta(first, last, "cycles_ok") + counter_delta(first, last, "cycles_failed")
    per_reading = requests / counter_delta(first, last, "readings_published")
    used = {name: cpu1[name] - cpu0[name] for name in pids}
    telemetry = wire_format.telemetry(window)
    wire = sum(publish_packet_bytes(m.topic, m.payload) for m in window)
    wire_telemetry = sum(publish_packet_bytes(m.topic, m.payload) for m in telemetry)
    return {
        "agent_cpu_us_per_reading_small": used["agent"] / readings * 1e6,
        "agent_cpu_us_per_request": used["agent"] / (readings * per_reading) * 1e6,
        "agent_cpu_system_share_small": (system1 - system0) / used["agent"] * 100,
        "agent_requests_per_poll_small": requests / cycles,
        "agent_failed_polls_small": counter_delta(first, last, "cycles_failed"),
        "agent_readings_per_s_small": readings / SECONDS,
        "agent_rss_mb_small": rss,
        "wire_bytes_per_reading": wire / readings,
        "wire_bytes_per_telemetry_message": wire_telemetry / len(telemetry),
        "wire_share_other": (wire - wire_telemetry) / wire * 100,
        "cpu_us_per_reading_small_mosquitto": used["mosquitto"] / readings * 1e6,
        "cpu_us_per_reading_small_sim": used["sim"] / readings * 1e6,
    }


UNITS = {
    "agent_cpu_us_per_reading_small": ("us", 1),
    "agent_cpu_us_per_request": ("us", 1),
    "agent_cpu_system_share_small": ("%", 0),
    "agent_requests_per_poll_small": ("requests", 2),
    "agent_failed_polls_small": ("polls", 0),
    "agent_readings_per_s_small": ("readings/s", 0),
    "agent_rss_mb_small": ("MB", 1),
    "wire_bytes_per_reading": ("bytes", 1),
    "wire_bytes_per_telemetry_message": ("bytes", 0),
    "wire_share_other": ("%", 1),
    "cpu_us_per_reading_small_mosquitto": ("us", 1),
    "cpu_us_per_reading_small_sim": ("us", 1),
}


def print_figures(fmt: str, figures: dict[str, float], event_loop: str = "auto") -> None:
    """``name: value unit``; the wire figures always name their format, the others only
    when it is not json; a run on a loop other than ``auto`` ends with its name."""
    for name, value in figures.items():
        unit, digits = UNITS[name]
        shown = f"{name}_{fmt}" if name.startswith("wire_") or fmt != "json" else name
        if event_loop != "auto":
            shown += f"_{event_loop}"
        print(f"{shown}: {value:.{digits}f} {unit}")


def main() -> None:
    logs.configure("console", "warning")
    profile = load_profile(PROFILE)
    load_start = os.getloadavg()[0]
    print(
        f"# {DEVICES} devices x {len(profile.registers)} tags ({PROFILE}) every {INTERVAL_S} s, "
        f"{SECONDS:g} s window after {WARMUP_S:g} s warm-up",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="derrick-bench-small-plc-") as tmp:
        for fmt in FORMATS:
            for turn, event_loop in enumerate(LOOPS):  # a loop named twice: runs twice
                figures = run_scenario(fmt, Path(tmp) / f"{fmt}-{turn}", event_loop)
                if figures is not None:
                    print_figures(fmt, figures, event_loop)
    print(f"load_average: {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (1 min)")


if __name__ == "__main__":
    main()
