"""Validate and dead-letter micro-benchmark; prints ``name: value unit`` lines.

CPU time (``process_time``), best of several rounds, in process:

* ``validate_good_us_per_msg``: a good 100-reading telemetry message (about 9 kB): the
  collector's fast path, which must not get slower when rejection reasons improve.
* ``validate_reject_<kind>_us_per_msg``: one rejected message of each kind (the
  classification only runs on this path).
* ``deadletter_put_us`` / ``deadletter_put_64kb_us``: appending one rejected 9 kB
  message / one truncated 1 MB message to the dead-letter store (wall clock, temp dir).

``--against FILE`` also times another copy of ``collector/validate.py`` (e.g. the one
before a change) interleaved with the current one, and prints both and the ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector import validate as current
from collector.deadletter import DeadLetters
from derrick.wire.payloads import Reading, Telemetry, now_ns
from derrick.wire.topics import telemetry_topic

TAGS = 100
TOPIC = telemetry_topic("bench", "crane-01", "lmi")
ROUNDS = 7


def good_payload(seq: int = 1) -> bytes:
    ts = now_ns()
    readings = [Reading(tag=f"t{i}", value=seq + i / 10, unit="t", ts_ns=ts) for i in range(TAGS)]
    return (
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
        .model_dump_json()
        .encode()
    )


def changed(**fields: object) -> bytes:
    data = json.loads(good_payload())
    data.update(fields)
    return json.dumps(data).encode()


def bad_value() -> bytes:
    data = json.loads(good_payload())
    data["readings"][50]["value"] = {"a": 1}
    return json.dumps(data).encode()


REJECTS: dict[str, tuple[str, bytes]] = {
    "topic": ("derrick/v1/bench/telemetry", good_payload()),
    "oversized": (TOPIC, b" " * (current.MAX_PAYLOAD_BYTES + 1)),
    "json": (TOPIC, good_payload()[:-20]),
    "version": (TOPIC, changed(v=2)),
    "schema": (TOPIC, bad_value()),
    "mismatch": (telemetry_topic("bench", "crane-02", "lmi"), good_payload()),
}


def us_per_call(call: Callable[[], object], count: int) -> float:
    """Best round, so a scheduler hiccup does not count."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(count):
            call()
        best = min(best, time.process_time() - started)
    return best / count * 1e6


def good_us(module: ModuleType, payloads: list[bytes]) -> float:
    validate = module.validate

    def run() -> None:
        for payload in payloads:
            validate(TOPIC, payload)

    return us_per_call(run, 1) / len(payloads)


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_against", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def deadletter_us(payload: bytes, count: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        letters = DeadLetters(Path(tmp), max_mb=1000)
        started = time.perf_counter()
        for _ in range(count):
            letters.put(TOPIC, payload, "schema", "readings[50].value: bench")
        elapsed = time.perf_counter() - started
        letters.close()
    return elapsed / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another validate.py to compare with")
    args = parser.parse_args()
    payloads = [good_payload(i) for i in range(500)]
    if args.against:
        other = load(args.against)
        mine, theirs = [], []
        for _ in range(5):  # interleaved, so drift in CPU clock affects both alike
            mine.append(good_us(current, payloads))
            theirs.append(good_us(other, payloads))
        print(f"validate_good_us_per_msg: {min(mine):.2f} us")
        print(f"validate_good_against_us_per_msg: {min(theirs):.2f} us")
        print(f"validate_good_ratio: {min(mine) / min(theirs):.3f} x")
    else:
        print(f"validate_good_us_per_msg: {good_us(current, payloads):.2f} us")
    for kind, (topic, payload) in REJECTS.items():
        result = current.validate(topic, payload)
        assert getattr(result, "kind", kind) == kind, (kind, result)
        value = us_per_call(lambda t=topic, p=payload: current.validate(t, p), 200)
        print(f"validate_reject_{kind}_us_per_msg: {value:.2f} us")
    print(f"deadletter_put_us: {deadletter_us(good_payload(), 2000):.2f} us")
    print(f"deadletter_put_64kb_us: {deadletter_us(REJECTS['oversized'][1], 500):.2f} us")


if __name__ == "__main__":
    main()
