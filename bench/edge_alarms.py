"""Edge alarm benchmark: what evaluating the shipped rules costs an agent, and how soon
an episode that happened while the broker was down reaches the crews.

Prints ``name: value unit`` lines:

* ``agent_alarm_eval_us_per_reading_rule``: the agent's alarm stage (the shared engine,
  in event time) per reading per rule that reads it, in-process, on the crane and rig
  simulator models' values (shipped ``crane.yaml`` and ``rig.yaml``); with the cost per
  poll and the count of rules, readings and changes that gives it;
* ``offline_episode_notice_s``: real parts (a simulated crane, an agent evaluating the
  crane rules at the edge, mosquitto, the collector, a webhook receiver): the broker is
  stopped for ``BENCH_OUTAGE_S`` (90); during it an overload is lifted and set down;
  the figure is the time from the broker answering again to the webhook receiving the
  "occurred while offline" notice;
* ``agent_alarm_stage_us_per_reading``: the whole alarm stage on a crane, in process:
  the engine and the spool commits (fsynced) of the condition changes it makes.

``agent_cpu_us_per_reading_with_rules`` (the whole agent process with the crane rule set
loaded) is printed by ``bench/agent.py``, beside the figure without rules from the same run.

Environment: ``BENCH_POLLS`` (20000 per model), ``BENCH_OUTAGE_S`` (90),
``BENCH_SKIP_OUTAGE`` (set: in-process figures only).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.alarms import EdgeAlarms
from agent.config import Device
from agent.outbox import Outbox
from derrick.alarms.engine import RuleEngine
from derrick.alarms.rules import load_rules
from derrick.plc.profile import load_profile
from derrick.spool.store import Spool
from derrick.wire.payloads import Quality, trusted_reading
from devstack.alarmstack import AlarmStack, AssetSpec
from devstack.programs import REPO, wait_for
from devstack.receivers import HttpReceiver
from devstack.services import Mosquitto
from simulators.crane import CraneModel
from simulators.rig import RigModel

POLLS = int(os.environ.get("BENCH_POLLS", "20000"))
OUTAGE_S = float(os.environ.get("BENCH_OUTAGE_S", "90"))
NS = 1_000_000_000
POLL_S = 0.5


def polls(model: object, profile: str, count: int) -> list[list]:
    """``count`` polls of a model's values at 0.5 s steps, as the agent decodes them."""
    tags = [reg.tag for reg in load_profile(profile).registers]
    out = []
    for n in range(count):
        values = model.values(n * POLL_S)  # type: ignore[attr-defined]
        ts = 1_790_000_000 * NS + n * int(POLL_S * NS)
        out.append([trusted_reading(tag, values[tag], "", Quality.GOOD, ts) for tag in tags])
    return out


def eval_cost(name: str, model: object, profile: str) -> tuple[float, int, int]:
    """(seconds per poll, rules per device, readings per poll) of the engine, as the
    agent's alarm stage runs it."""
    rules = load_rules(REPO / "config" / "alarm-rules" / f"{name}.yaml")
    engine = RuleEngine(rules)
    kind = load_profile(profile).kind
    batches = polls(model, profile, POLLS)
    changes = 0
    start = time.perf_counter()
    for batch in batches:
        changes += len(engine.observe_readings("s", "a", "d", kind, "gw", batch, batch[-1].ts_ns))
    per_poll = (time.perf_counter() - start) / len(batches)
    applying = [r for r in rules.rules if r.matches("s", "a", "d", kind)]
    print(
        f"  {name}: {per_poll * 1e6:.1f} us per poll of {len(batches[0])} readings "
        f"({per_poll * 1e6 / len(batches[0]):.2f} us per reading), "
        f"{len(applying)} rules, {changes} condition changes in {len(batches)} polls"
    )
    return per_poll, len(applying), len(batches[0])


def stage_cost(model: object, work: Path) -> float:
    """Seconds per reading of the agent's whole alarm stage on a crane (the engine, and
    the spool commits of the changes it makes), as :class:`agent.alarms.EdgeAlarms`."""
    rules = load_rules(REPO / "config" / "alarm-rules" / "crane.yaml")
    device = Device.model_validate(
        {"name": "lmi", "asset": "crane-1", "profile": "crane", "host": "127.0.0.1"}
    )
    batches = polls(model, "crane", POLLS)
    with Spool(work / "spool.db", max_bytes=10**9, max_age_s=10**9) as spool:
        stage = EdgeAlarms("s", "gw", rules, [device], Outbox("gw", "s", spool), spool)
        start = time.perf_counter()
        for batch in batches:
            stage.observe(device, batch)
        seconds = time.perf_counter() - start
    print(f"  crane stage: {stage.changes} condition changes committed in {len(batches)} polls")
    return seconds / (len(batches) * len(batches[0]))


def offline_episode_notice_s() -> float:
    """Broker back -> the webhook has the episode's "occurred while offline" notice."""
    with tempfile.TemporaryDirectory(prefix="derrick-bench-edge-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "mosquitto") as broker, HttpReceiver() as hooks:
            stack = AlarmStack(
                work,
                broker_port=broker.port,
                influx={"api": "v1", "url": "http://127.0.0.1:9", "database": "none"},
                hook_url=hooks.url,
                smtp_port=9,
                assets=[AssetSpec("crane-1", edge=True)],
                interval_s=POLL_S,
            )
            try:
                stack.start()
                wait_for(lambda: stack.api("GET", "/health")[0] == 200, 30, "collector")
                time.sleep(5)  # the agent polling, connected
                broker.stop()
                time.sleep(2)
                stack.control("crane-1", "/overload", {"active": True})
                time.sleep(5)
                stack.control("crane-1", "/overload", {"active": False})
                time.sleep(max(0.0, OUTAGE_S - 7))
                broker.start()
                back = time.monotonic()
                wait_for(
                    lambda: any(
                        isinstance(r.json, dict) and r.json.get("reason") == "offline"
                        for r in hooks.requests
                    ),
                    120,
                    "the offline notice",
                    interval=0.01,
                    program=stack.collector,
                )
                return time.monotonic() - back
            finally:
                stack.stop()


def main() -> None:
    print(f"load average: {os.getloadavg()[0]:.2f}")
    figures = [
        eval_cost("crane", CraneModel(seed=1, demo_overload=True), "crane"),
        eval_cost("rig", RigModel(seed=1), "rig"),
    ]
    per_reading_rule = [cost / (rules * readings) for cost, rules, readings in figures]
    print(
        "agent_alarm_eval_us_per_reading_rule: "
        f"{max(per_reading_rule) * 1e6:.3f} us "
        f"(crane {per_reading_rule[0] * 1e6:.3f}, rig {per_reading_rule[1] * 1e6:.3f})"
    )
    with tempfile.TemporaryDirectory(prefix="derrick-bench-edge-") as tmp:
        per_reading = stage_cost(CraneModel(seed=1, demo_overload=True), Path(tmp))
    print(f"agent_alarm_stage_us_per_reading: {per_reading * 1e6:.2f} us (crane, 16 rules)")
    if not os.environ.get("BENCH_SKIP_OUTAGE"):
        seconds = offline_episode_notice_s()
        print(f"offline_episode_notice_s: {seconds:.2f} s (after a {OUTAGE_S:g} s outage)")


if __name__ == "__main__":
    main()
