"""Agent benchmark: one derrick-agent process polling 50 simulated PLCs x 100 tags.

Real parts: derrick-sim (generic profile ``bench100``, 50 ports), mosquitto, the agent as
its own process with its SQLite spool; a subscriber counts what reaches the broker.
Prints ``name: value unit`` lines:

* ``agent_cpu_us_per_reading``: agent CPU time (user + system, from /proc) per reading
  published, over the measured window;
* ``agent_rss_mb``: the agent's peak resident set (VmHWM);
* ``agent_requests_per_cycle``: Modbus requests per poll cycle, summed over the devices
  (from the agent's own metrics);
* ``agent_plan_min_requests_per_cycle``: the fewest requests that could cover the tags;
* ``agent_cpu_us_per_reading_with_rules``: the same agent with the shipped crane rule
  set evaluated at the edge on every device (:func:`bench_rules`: each rule keeps its
  type, limits, deadband, delays and suppression, and reads bench tags), measured in
  the same run right after the figure without rules, and their ratio (the issue's
  target: at most 1.3); ``..._storm``: the same rules on tags where they keep firing.

Environment: ``BENCH_DEVICES`` (50), ``BENCH_SECONDS`` (30), ``BENCH_INTERVAL_S`` (1.0),
``BENCH_RULES`` (0: no runs with rules), ``BENCH_ROUNDS`` (3: runs without and with the
rules, alternated; medians printed).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.plan import min_requests
from derrick.plc.profile import load_profile
from derrick.plumbing.configfile import read_yaml
from derrick.wire.payloads import AgentMetrics
from derrick.wire.topics import TOPIC_ROOT, agent_metrics_topic
from devstack.programs import REPO, Program, wait_for, write_yaml
from devstack.services import Mosquitto, free_port_block
from devstack.tap import Tap
from simulators.generic import GenericModel

DEVICES = int(os.environ.get("BENCH_DEVICES", "50"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "30"))
INTERVAL_S = float(os.environ.get("BENCH_INTERVAL_S", "1.0"))
WITH_RULES = os.environ.get("BENCH_RULES", "1") != "0"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WARMUP_S = 5.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def readings_in(messages) -> int:
    return sum(
        len(json.loads(m.payload)["readings"]) for m in messages if m.topic.endswith("/telemetry")
    )


def latest_metrics(messages, agent_id: str) -> AgentMetrics | None:
    topic = agent_metrics_topic(agent_id)
    found = [m for m in messages if m.topic == topic]
    return AgentMetrics.model_validate_json(found[-1].payload) if found else None


def requests_per_cycle(metrics: AgentMetrics) -> int:
    """Requests of every device's last complete poll cycle, summed."""
    return sum(device.last_cycle_requests for device in metrics.devices.values())


def bench_rules(path: Path, *, storm: bool = False) -> Path:
    """The shipped crane rule set on bench100's tags, written to ``path``, ``kind`` bench.

    Every rule keeps its type, limits, deadband, delays and suppression, and reads bench
    tags instead of crane ones. Which tags: by default tags on which the rule's condition
    does not change on any simulated device for the first three minutes (read off the
    simulator's own model): below its limit, or where no bench tag stays below it (the
    vibration limits of 2.8 and 4.5), above it throughout, a standing alarm; so the
    figure is what evaluating costs, not what alarming does. A boolean rule
    reads a float with ``active_when: false`` (never 0) and the bit rule bit 15 of a
    uint16 (never set: the model keeps them under 5,500), and suppression reads floats
    (never ``false``). ``storm``: the first tags of each kind instead, on which the
    rules keep firing (about one condition change per device every two polls): the
    cost of an alarm storm, each change an fsynced spool commit.
    """
    registers = load_profile("bench100").registers
    of_type = {kind: [r.tag for r in registers if r.type.value == kind] for kind in
               ("float32", "bool", "uint16", "int16", "int32")}  # fmt: skip
    rules = read_yaml(REPO / "config" / "alarm-rules" / "crane.yaml")["rules"]
    if storm:
        pools = {
            "float": iter(of_type["float32"]),
            "bool": iter(of_type["bool"] * 4),
            "word": iter(of_type["uint16"]),
        }
        for rule in rules:
            rule["kind"] = "bench"
            if "tag" in rule:
                kind = {"boolean": "bool", "bit": "word"}.get(rule["type"], "float")
                rule["tag"] = next(pools[kind])
            if "limit_tag" in rule:
                rule["limit_tag"] = next(pools["float"])
            for condition in rule.get("suppress_when", []):
                condition["tag"] = next(pools["bool"])
        return write_yaml(path, {"rules": rules})
    numeric = of_type["float32"] + of_type["int16"] + of_type["int32"] + of_type["uint16"]
    low, high = _ranges(numeric)
    floats = of_type["float32"]
    for rule in rules:
        rule["kind"] = "bench"
        kind = rule["type"]
        if kind == "boolean":
            rule["tag"], rule["active_when"] = floats[0], False
        elif kind == "bit":
            rule["tag"], rule["bit"] = of_type["uint16"][0], 15
        elif "limit_tag" in rule:
            rule["tag"], rule["limit_tag"] = next(
                (tag, ref) for ref in numeric for tag in numeric
                if tag != ref and low[ref] > 0 and high[tag] < 0.9 * low[ref]
            )  # fmt: skip
        elif "limit" in rule:
            limit = rule["limit"]
            quiet = [tag for tag in numeric if high[tag] < 0.9 * limit]
            standing = [tag for tag in numeric if low[tag] > 1.1 * limit]
            rule["tag"] = (quiet or standing)[0]
        elif "tag" in rule:  # stale, bad quality: read every poll, good
            rule["tag"] = floats[1]
        for condition in rule.get("suppress_when", []):
            condition["tag"] = floats[2]
    return write_yaml(path, {"rules": rules})


def _ranges(tags: list[str], seconds: int = 180) -> tuple[dict[str, float], dict[str, float]]:
    """(lowest, highest) value of each tag on any of the bench's simulated devices
    (seed i for device i, as ``derrick-sim --count``) over its first ``seconds``."""
    profile = load_profile("bench100")
    low = dict.fromkeys(tags, float("inf"))
    high = dict.fromkeys(tags, float("-inf"))
    for seed in range(DEVICES):
        model = GenericModel(profile, seed=seed)
        for t in range(seconds):
            values = model.values(float(t))
            for tag in tags:
                value = float(values[tag])
                low[tag] = min(low[tag], value)
                high[tag] = max(high[tag], value)
    return low, high


def measure(work: Path, rules: Path | None) -> tuple[float, float, float, int]:
    """One agent run: (CPU us per reading, peak RSS MB, readings per s, requests per
    cycle)."""
    work.mkdir(parents=True, exist_ok=True)
    base = free_port_block(DEVICES)
    with Mosquitto(work / "mosquitto") as broker:
        sim = Program(
            "sim",
            ["--profile", "bench100", "--count", str(DEVICES), "--port", str(base),
             "--log-format", "json", "--log-level", "warning"],
            work / "sim.log",
        ).start()  # fmt: skip
        agent_id = "gw-bench"
        settings = {
            "agent": {"id": agent_id, "site": "bench"},
            "format": os.environ.get("BENCH_FORMAT", "json"),
            "broker": {"host": "127.0.0.1", "port": broker.port},
            "devices": [
                {
                    "name": f"plc{i:02d}",
                    "asset": f"unit-{i:02d}",
                    "profile": "bench100",
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
        if rules is not None:
            settings["alarms"] = {"rules": [str(rules)]}
        config = write_yaml(work / "agent.yaml", settings)
        try:
            with Tap(broker.port, f"{TOPIC_ROOT}/#") as tap:
                agent = Program("agent", ["--config", str(config)], work / "agent.log").start()
                pid = agent.process.pid
                wait_for(
                    lambda: readings_in(tap.messages()) > 0, 60, "first readings", program=agent
                )
                time.sleep(WARMUP_S)
                seen, cpu0 = len(tap.messages()), cpu_seconds(pid)
                time.sleep(SECONDS)
                cpu1, window = cpu_seconds(pid), tap.messages()
                readings = readings_in(window[seen:])
                rss = peak_rss_mb(pid)
                metrics1 = latest_metrics(window, agent_id)
                agent.stop()
        finally:
            sim.stop()
    cycle = requests_per_cycle(metrics1) if metrics1 else -1
    return (cpu1 - cpu0) / readings * 1e6, rss, readings / SECONDS, cycle


def main() -> None:
    profile = load_profile("bench100")
    print(f"load average: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="derrick-bench-agent-") as tmp:
        work = Path(tmp)
        rules = bench_rules(work / "rules.yaml") if WITH_RULES else None
        plain: list[tuple[float, float, float, int]] = []
        quiet: list[tuple[float, float, float, int]] = []
        # Alternated, so the machine's swings (up to 2x here) hit both alike; the ratio
        # is taken per round, from two runs a minute apart.
        for n in range(ROUNDS if rules else 1):
            plain.append(measure(work / f"plain{n}", None))
            if rules is not None:
                quiet.append(measure(work / f"rules{n}", rules))
        storm = None
        if rules is not None:
            storm = measure(work / "storm", bench_rules(work / "storm.yaml", storm=True))
    cpu = statistics.median(run[0] for run in plain)
    _, rss, per_s, cycle = plain[-1]
    plan_min = DEVICES * min_requests(profile.registers)
    print(f"agent_cpu_us_per_reading: {cpu:.1f} us (runs: {_figures(plain)})")
    print(f"agent_rss_mb: {rss:.1f} MB")
    print(f"agent_requests_per_cycle: {cycle} requests")
    print(f"agent_plan_min_requests_per_cycle: {plan_min} requests")
    print(
        f"agent_readings_per_s: {per_s:.0f} readings/s "
        f"({DEVICES} devices x {len(profile.registers)} tags every {INTERVAL_S} s)"
    )
    if quiet and storm is not None:
        ratios = [q[0] / p[0] for p, q in zip(plain, quiet, strict=True)]
        print(
            f"agent_cpu_us_per_reading_with_rules: "
            f"{statistics.median(run[0] for run in quiet):.1f} us "
            f"(runs: {_figures(quiet)}; x {statistics.median(ratios):.2f} without, median of "
            f"{', '.join(f'{r:.2f}' for r in ratios)}; 16 crane rules per device, quiet; "
            f"RSS {quiet[-1][1]:.1f} MB)"
        )
        print(
            f"agent_cpu_us_per_reading_with_rules_storm: {storm[0]:.1f} us "
            f"(x {storm[0] / cpu:.2f} the median without; the same rules firing all the time)"
        )


def _figures(runs: list[tuple[float, float, float, int]]) -> str:
    return ", ".join(f"{run[0]:.1f}" for run in runs)


if __name__ == "__main__":
    main()
