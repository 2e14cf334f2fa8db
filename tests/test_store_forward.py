"""Store-and-forward with real parts: the agent's durable spool through broker outages and
``kill -9``.

Every poll is one telemetry message with a per-agent sequence number and a boot id. A
recording subscriber (persistent session) sees what reaches the broker; after
de-duplication by (boot, seq) every sequence must be complete, with no hole in the
readings' timestamps, and what waited on disk must arrive marked historical.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from derrick.spool.store import Spool
from derrick.wire.payloads import DeviceStatus, Telemetry
from derrick.wire.topics import TOPIC_ROOT
from devstack.programs import Program, start_simulator, write_yaml
from devstack.tap import Received, Tap

pytestmark = pytest.mark.integration

INTERVAL_S = 0.2


def write_agent_config(tmp_path: Path, broker_port: int, plc_port: int) -> tuple[Path, str]:
    site = f"t{uuid.uuid4().hex[:8]}"
    path = write_yaml(
        tmp_path / "agent.yaml",
        {
            "agent": {"id": f"gw-{site}", "site": site},
            "format": "json",
            "broker": {"host": "127.0.0.1", "port": broker_port, "reconnect_max_s": 1},
            "devices": [
                {
                    "name": "lmi",
                    "asset": "crane-01",
                    "profile": "crane",
                    "host": "127.0.0.1",
                    "port": plc_port,
                    "interval_s": INTERVAL_S,
                    "timeout_s": 0.5,
                }
            ],
            "spool": {"path": str(tmp_path / "spool.db")},
            "metrics_interval_s": 5,
            "log": {"format": "json"},
        },
    )
    return path, site


def start_agent(config: Path, tmp_path: Path, name: str = "agent") -> Program:
    return Program("agent", ["--config", str(config)], tmp_path / f"{name}.log").start()


def telemetry(messages: list[Received]) -> list[Telemetry]:
    return [
        Telemetry.model_validate_json(m.payload) for m in messages if m.topic.endswith("/telemetry")
    ]


def unique_by_boot(messages: list[Telemetry]) -> dict[str, dict[int, Telemetry]]:
    by_boot: dict[str, dict[int, Telemetry]] = defaultdict(dict)
    for message in messages:
        by_boot[message.boot].setdefault(message.seq, message)
    return by_boot


def holes(seqs) -> list[int]:
    seqs = sorted(seqs)
    return sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs)) if seqs else []


def poll_stamps(messages) -> list[int]:
    """The instant of every poll: the hook_load reading's timestamp, one per message."""
    return sorted(r.ts_ns for m in messages for r in m.readings if r.tag == "hook_load")


def complete_after(instant_ns: int):
    """Predicate: every boot's sequence has no hole and live data got past ``instant_ns``."""

    def check(received: list[Received]) -> bool:
        by_boot = unique_by_boot(telemetry(received))
        if not by_boot or any(holes(seqs) for seqs in by_boot.values()):
            return False
        stamps = poll_stamps(m for seqs in by_boot.values() for m in seqs.values())
        return bool(stamps) and stamps[-1] > instant_ns

    return check


def assert_in_order(messages: list[Telemetry]) -> None:
    """Within each stream (live, replayed) and boot, messages arrive in sequence order."""
    for historical in (False, True):
        for boot in {m.boot for m in messages}:
            seqs = [m.seq for m in messages if m.historical is historical and m.boot == boot]
            first_seen = list(dict.fromkeys(seqs))  # ignore redeliveries
            assert first_seen == sorted(first_seen), f"historical={historical} out of order"


def assert_no_time_holes(stamps: list[int], allowed: tuple[int, int] | None = None) -> None:
    """No gap between polls beyond 1.5 intervals, except inside ``allowed`` (ns range)."""
    for a, b in itertools.pairwise(stamps):
        if allowed and allowed[0] <= a and b <= allowed[1]:
            continue
        assert b - a < 1.5 * INTERVAL_S * 1e9, f"{(b - a) / 1e9:.2f} s without a reading"


def retained_status(mosquitto_port: int, site: str) -> dict:
    """The retained device status a newcomer gets."""
    with Tap(mosquitto_port, f"{TOPIC_ROOT}/{site}/+/+/status") as tap:
        received = tap.wait(lambda m: m, 10, "retained device status")
    return json.loads(received[-1].payload)


def test_broker_stopped_60s_every_reading_arrives_once_in_order(tmp_path, mosquitto):
    sim = start_simulator(tmp_path, "--no-demo-overload")
    config, site = write_agent_config(tmp_path, mosquitto.port, sim.port)
    with Tap(mosquitto.port, f"{TOPIC_ROOT}/{site}/#") as tap:
        agent = start_agent(config, tmp_path)
        try:
            tap.wait(lambda m: len(telemetry(m)) >= 10, 30, "first telemetry")
            mosquitto.stop()
            outage = (time.time_ns(), 0)
            try:
                time.sleep(60)
            finally:
                # The end of the outage is when the broker starts, not when start() returns:
                # the agent may be back, publishing live, before it does.
                outage = (outage[0], time.time_ns())
                mosquitto.start()
            received = tap.wait(complete_after(time.time_ns() + 2 * 10**9), 90, "replay")
            assert agent.alive, agent.log_tail()
        finally:
            code = agent.stop()
            sim.program.stop()
    assert code == 0, agent.log_tail()
    messages = telemetry(received)
    by_boot = unique_by_boot(messages)
    assert len(by_boot) == 1
    (seqs,) = by_boot.values()
    assert min(seqs) == 0 and not holes(seqs)
    assert_in_order(messages)
    stamps = poll_stamps(seqs.values())
    assert_no_time_holes(stamps)
    during = [m for m in seqs.values() if outage[0] + 2e9 < m.readings[0].ts_ns < outage[1]]
    assert len(during) >= 0.8 * (60 - 2) / INTERVAL_S, "polls during the outage are missing"
    assert all(m.historical for m in during), "stored messages must arrive marked historical"
    log = agent.log_tail(400)
    assert log.count('"replaying stored messages"') == 1, log
    assert retained_status(mosquitto.port, site)["state"] == "up"


def stored_seqs(spool_path: Path) -> dict[str, set[int]]:
    """(boot -> seqs) of the telemetry committed to a (dead) agent's spool."""
    spool = Spool(spool_path, max_bytes=10**9, max_age_s=10**6)
    try:
        found: dict[str, set[int]] = defaultdict(set)
        for entry in spool.read(after_id=0, limit=10**6):
            if entry.topic.endswith("/telemetry"):
                message = Telemetry.model_validate_json(entry.payload)
                found[message.boot].add(message.seq)
        return found
    finally:
        spool.close()


def test_agent_killed_during_outage_loses_nothing(tmp_path, mosquitto):
    sim = start_simulator(tmp_path, "--no-demo-overload")
    config, site = write_agent_config(tmp_path, mosquitto.port, sim.port)
    with Tap(mosquitto.port, f"{TOPIC_ROOT}/{site}/#") as tap:
        first = start_agent(config, tmp_path, "agent1")
        second = None
        try:
            tap.wait(lambda m: len(telemetry(m)) >= 10, 30, "first telemetry")
            mosquitto.stop()
            outage_ns = time.time_ns()
            try:
                time.sleep(4)
                first.kill()  # kill -9 while the broker is away
                killed_ns = time.time_ns()
                on_disk = stored_seqs(tmp_path / "spool.db")
                second = start_agent(config, tmp_path, "agent2")
                time.sleep(4)
            finally:
                mosquitto.start()
            restarted_ns = time.time_ns()
            received = tap.wait(complete_after(restarted_ns + 2 * 10**9), 60, "replay")
        finally:
            codes = [first.stop()] + ([second.stop()] if second else [])
            sim.program.stop()
    assert codes[-1] == 0, second.log_tail() if second else ""
    messages = telemetry(received)
    by_boot = unique_by_boot(messages)
    assert len(by_boot) == 2, "one sequence per boot"
    (boot1,) = on_disk  # only the killed agent had stored anything
    assert len(on_disk[boot1]) >= 4 / INTERVAL_S * 0.8, "the outage's polls were not on disk"
    assert on_disk[boot1] <= set(by_boot[boot1]), "a message committed to disk never arrived"
    for seqs in by_boot.values():
        assert min(seqs) == 0 and not holes(seqs)
    assert_in_order(messages)
    stamps = poll_stamps(m for seqs in by_boot.values() for m in seqs.values())
    assert_no_time_holes(stamps, allowed=(killed_ns - 10**9, killed_ns + 10 * 10**9))
    replayed = [
        m
        for m in by_boot[boot1].values()
        if m.seq in on_disk[boot1] and m.readings[0].ts_ns > outage_ns + 10**9
    ]
    assert replayed and all(m.historical for m in replayed)
    assert DeviceStatus.model_validate(retained_status(mosquitto.port, site)).state == "up"
