"""Alarm condition engine micro-benchmark; prints ``name: value unit`` lines.

500 rules over 100 tags (per tag: high_high, high, low, low_low with deadbands and
delays, and a rate_of_change), all matching one crane; messages of 100 readings whose
values wander across the limits so conditions change. CPU time (``process_time``), best
of several rounds, in process:

* ``alarm_eval_us_per_reading_rule``: time of ``RuleEngine.observe`` + ``tick`` per
  (reading, rule reading that tag) pair: 500 pairs per message here. Target <= 5 us.
* ``alarm_eval_us_per_msg``: the same per 100-reading message.
* ``alarm_rules_loaded``: rules in the set, loaded and validated from a YAML file.
* ``alarm_rules_load_ms``: loading and validating that file.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from derrick.alarms.engine import RuleEngine
from derrick.alarms.rules import load_rules
from derrick.wire.payloads import Reading, Telemetry

TAGS = 100
MESSAGES = 400
ROUNDS = 5
S = 1_000_000_000


def rule_file(folder: Path) -> Path:
    rules = []
    for i in range(TAGS):
        tag = f"t{i}"
        rules += [
            {"name": f"{tag}_hh", "type": "high_high", "tag": tag, "limit": 90, "deadband": "2%"},
            {"name": f"{tag}_h", "type": "high", "tag": tag, "limit": 70, "signal": "pressure",
             "suppress_when": [{"tag": "t0", "below": -1000}]},
            {"name": f"{tag}_l", "type": "low", "tag": tag, "limit": 30, "deadband": 1,
             "on_delay_s": 2},
            {"name": f"{tag}_ll", "type": "low_low", "tag": tag, "limit": 10},
            {"name": f"{tag}_roc", "type": "rate_of_change", "tag": tag, "window_s": 60,
             "rise": 40},
        ]  # fmt: skip
    path = folder / "bench-rules.yaml"
    path.write_text(yaml.safe_dump({"rules": rules}))
    return path


def messages() -> list[Telemetry]:
    out = []
    for seq in range(MESSAGES):
        readings = [
            Reading(tag=f"t{i}", value=50 + 48 * math.sin(seq / 20 + i), unit="bar", ts_ns=seq)
            for i in range(TAGS)
        ]
        out.append(
            Telemetry(
                site="bench",
                asset="crane-01",
                device="lmi",
                kind="crane",
                agent="bench",
                boot="b",
                seq=seq,
                readings=readings,
            )
        )
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = rule_file(Path(tmp))
        start = time.perf_counter()
        rules = load_rules(path)
        load_ms = (time.perf_counter() - start) * 1000
    batch = messages()
    pairs = len(batch[0].readings) * (len(rules.rules) // TAGS)  # rules per tag here: 5
    best = math.inf
    changes = 0
    for _ in range(ROUNDS):
        engine = RuleEngine(rules)
        engine.observe(batch[0], 0)  # first sight of the device: rule matching, cached
        start = time.process_time()
        for n, message in enumerate(batch, 1):
            now = n * S
            changes += len(engine.observe(message, now)) + len(engine.tick(now))
        best = min(best, (time.process_time() - start) / len(batch))
    assert changes, "the bench values must cross the limits"
    print(f"alarm_eval_us_per_reading_rule: {best * 1e6 / pairs:.2f} us")
    print(f"alarm_eval_us_per_msg: {best * 1e6:.0f} us")
    print(f"alarm_changes_per_msg: {changes / ROUNDS / len(batch):.1f}")
    print(f"alarm_rules_loaded: {len(rules.rules)}")
    print(f"alarm_rules_load_ms: {load_ms:.0f} ms")


if __name__ == "__main__":
    main()
