"""Collector ingest with real parts: a live stream through InfluxDB outages, SIGKILL,
three collectors on one shared subscription, and bad messages mixed into good ones.

A publisher thread plays an agent: a steady stream of numbered messages. The proof is
always the same count: every published reading is in InfluxDB 1.6, once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from collector.deadletter import read_dead_letters
from derrick.alarms.ownership import owner_of
from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.wire.payloads import DeviceState, DeviceStatus, Reading, Telemetry, now_ns
from derrick.wire.topics import device_status_topic, telemetry_topic
from devstack.programs import REPO, Program, wait_for, write_yaml

pytestmark = pytest.mark.integration

TAGS = 4


def message(site: str, seq: int) -> bytes:
    ts = now_ns()
    readings = [Reading(tag=f"t{i}", value=float(seq), ts_ns=ts + i) for i in range(TAGS)]
    return (
        Telemetry(
            site=site,
            asset="crane-01",
            device="lmi",
            kind="crane",
            agent="gw",
            boot="b",
            seq=seq,
            readings=readings,
        )
        .model_dump_json()
        .encode()
    )


class Stream:
    """Publishes one message every ``period_s`` until stopped; counts what was acked."""

    def __init__(self, port: int, site: str, period_s: float = 0.02) -> None:
        self.port, self.site, self.period_s = port, site, period_s
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        return self.published

    async def _run(self) -> None:
        client = MqttClient(BrokerSettings(port=self.port), f"pub-{uuid.uuid4().hex[:6]}")
        await client.start()
        await client.wait_connected(10)
        topic = telemetry_topic(self.site, "crane-01", "lmi")
        seq = 0
        while not self._stop.is_set():
            await client.publish(topic, message(self.site, seq), timeout=30)
            seq += 1
            self.published = seq
            await asyncio.sleep(self.period_s)
        await client.stop()


def start_collector(tmp_path: Path, name: str, mosquitto, influx1, db: str, **extra) -> Program:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    config = write_yaml(
        folder / "collector.yaml",
        {
            "collector": {"id": name, **{k: v for k, v in extra.items() if k == "group"}},
            "broker": {"host": "127.0.0.1", "port": mosquitto.port, "reconnect_max_s": 1},
            "influx": {"api": "v1", "url": influx1.url, "database": db, "timeout_s": 2},
            "batch": {"max_lines": 200, "max_delay_s": 0.05},
            "stats_interval_s": 1,
            "log": {"format": "json"},
            **{k: v for k, v in extra.items() if k != "group"},
        },
    )
    program = Program("collector", ["--config", str(config)], folder / "collector.log").start()
    wait_for(
        lambda: "broker connected" in program.log_tail(50), 15, "collector up", program=program
    )
    time.sleep(0.3)  # SUBACK
    return program


def stored(influx1, db: str, site: str) -> int:
    result = influx1.query(f"SELECT count(t0) FROM telemetry WHERE site='{site}'", db=db)
    series = result["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def test_influxdb_stopped_60s_mid_stream_every_reading_stored(
    tmp_path, mosquitto, influx1, influx_db
):
    site = f"t{uuid.uuid4().hex[:8]}"
    collector = start_collector(tmp_path, f"col-{site}", mosquitto, influx1, influx_db)
    try:
        with Stream(mosquitto.port, site) as stream:
            wait_for(lambda: stored(influx1, influx_db, site) >= 50, 20, "first readings")
            influx1.stop()
            try:
                time.sleep(60)
            finally:
                influx1.start()
            time.sleep(3)
            published = stream.stop()
        wait_for(
            lambda: stored(influx1, influx_db, site) == published,
            60,
            f"all {published} messages",
            program=collector,
        )
        log = collector.log_tail(400)
        assert log.count('"influxdb unavailable, spooling to disk"') == 1, log
        assert '"spool replayed into influxdb"' in log
    finally:
        assert collector.stop() == 0, collector.log_tail()
    assert published > 60 / 0.02 * 0.5  # the stream really ran through the outage


def test_collector_killed_mid_stream_and_restarted_loses_nothing(
    tmp_path, mosquitto, influx1, influx_db
):
    site = f"t{uuid.uuid4().hex[:8]}"
    name = f"col-{site}"
    first = start_collector(tmp_path, name, mosquitto, influx1, influx_db)
    second = None
    try:
        with Stream(mosquitto.port, site) as stream:
            wait_for(lambda: stored(influx1, influx_db, site) >= 50, 20, "first readings")
            first.kill()
            time.sleep(2)
            second = start_collector(tmp_path, name, mosquitto, influx1, influx_db)
            time.sleep(2)
            published = stream.stop()
        wait_for(
            lambda: stored(influx1, influx_db, site) == published,
            60,
            f"all {published} messages",
            program=second,
        )
    finally:
        if second is not None:
            assert second.stop() == 0, second.log_tail()


def test_three_collectors_on_one_shared_subscription_split_the_load(
    tmp_path, mosquitto, influx1, influx_db
):
    site = f"t{uuid.uuid4().hex[:8]}"
    group = f"g{uuid.uuid4().hex[:6]}"
    collectors = [
        start_collector(tmp_path, f"col{i}-{site}", mosquitto, influx1, influx_db, group=group)
        for i in range(3)
    ]
    try:
        with Stream(mosquitto.port, site, period_s=0.005) as stream:
            time.sleep(6)
            published = stream.stop()
        wait_for(lambda: stored(influx1, influx_db, site) == published, 30, f"all {published}")
        time.sleep(1.5)  # one more stats interval
        shares = {}
        for program in collectors:
            name = program.args[1].split("/")[-2]
            result = influx1.query(
                f"SELECT sum(readings) FROM collector WHERE collector='{name}'", db=influx_db
            )  # readings, not messages: retained status of other tests' devices comes too
            shares[name] = result["results"][0]["series"][0]["values"][0][1] / TAGS
    finally:
        for program in collectors:
            assert program.stop() == 0, program.log_tail()
    assert sum(shares.values()) == published, shares  # each message went to one collector
    assert all(share >= published / 6 for share in shares.values()), shares  # split


def test_bad_messages_are_dead_lettered_and_good_ones_stored(
    tmp_path, mosquitto, influx1, influx_db
):
    site = f"t{uuid.uuid4().hex[:8]}"
    name = f"col-{site}"
    collector = start_collector(tmp_path, name, mosquitto, influx1, influx_db)
    topic = telemetry_topic(site, "crane-01", "lmi")
    good = json.loads(message(site, 0))
    bad = {
        "json": b'{"v": 1, "site": ',
        "oversized": b"x" * 1_100_000,
        "schema": json.dumps({**good, "seq": "three"}).encode(),
        "version": json.dumps({**good, "v": 2}).encode(),
        "mismatch": message(site, 999),  # sent on another asset's topic
    }

    async def send() -> None:
        client = MqttClient(BrokerSettings(port=mosquitto.port), f"pub-{uuid.uuid4().hex[:6]}")
        await client.start()
        await client.wait_connected(10)
        for seq in range(100):
            await client.publish(topic, message(site, seq))
            if seq % 20 == 10:
                kind = list(bad)[seq // 20]
                other = telemetry_topic(site, "crane-02", "lmi")
                where = other if kind == "mismatch" else topic
                await client.publish(where, bad[kind])
        await client.stop()

    try:
        asyncio.run(send())
        wait_for(
            lambda: stored(influx1, influx_db, site) == 100, 30, "all good ones", program=collector
        )
        letters = wait_for(
            lambda: (
                (found := read_dead_letters(tmp_path / name / "state" / f"deadletter-{name}"))
                and len(found) == len(bad)
                and found
            ),
            10,
            "dead letters",
            program=collector,
        )
    finally:
        assert collector.stop() == 0, collector.log_tail()
    assert sorted(letter["kind"] for letter in letters) == sorted(bad)
    assert all(letter["reason"] for letter in letters)
    version = next(letter for letter in letters if letter["kind"] == "version")
    assert "version 2" in version["reason"]


def test_a_site_named_agents_has_its_device_status_stored(tmp_path, mosquitto, influx1, influx_db):
    """``derrick/v1/agents/<asset>/<device>/status`` is a device's status (6 levels), not
    an agent's (``derrick/v1/agents/<agent>/status``, 5): stored, nothing dead-lettered."""
    asset = f"a{uuid.uuid4().hex[:8]}"
    name = f"col-{asset}"
    collector = start_collector(tmp_path, name, mosquitto, influx1, influx_db)
    ts = now_ns()
    down = DeviceStatus(
        site="agents",
        asset=asset,
        device="lmi",
        agent="gw",
        state=DeviceState.DOWN,
        reason="timeout",
        ts_ns=ts,
    )
    up = down.model_copy(update={"state": DeviceState.UP, "reason": "", "ts_ns": ts + 1})

    async def send() -> None:
        client = MqttClient(BrokerSettings(port=mosquitto.port), f"pub-{uuid.uuid4().hex[:6]}")
        await client.start()
        await client.wait_connected(10)
        for status in (down, up):  # not retained: later tests' collectors need not see it
            await client.publish(
                device_status_topic("agents", asset, "lmi"), status.model_dump_json().encode()
            )
        await client.stop()

    def rows() -> list[list]:
        result = influx1.query(
            f"SELECT up, reason FROM device_status WHERE site='agents' AND asset='{asset}'",
            db=influx_db,
        )
        series = result["results"][0].get("series")
        return [value[1:] for value in series[0]["values"]] if series else []

    try:
        asyncio.run(send())
        stored_rows = wait_for(
            lambda: len(found := rows()) == 2 and found, 20, "both statuses", program=collector
        )
    finally:
        assert collector.stop() == 0, collector.log_tail()
    assert stored_rows == [[False, "timeout"], [True, ""]]
    letters = read_dead_letters(tmp_path / name / "state" / f"deadletter-{name}")
    # (retained messages other tests left on the broker may be dead-lettered too)
    assert [letter for letter in letters if asset in (letter["topic"] or "")] == []


def test_sequence_gaps_and_duplicates_are_counted_and_logged(
    tmp_path, mosquitto, influx1, influx_db
):
    site = f"t{uuid.uuid4().hex[:8]}"
    name = f"col-{site}"
    collector = start_collector(tmp_path, name, mosquitto, influx1, influx_db, sequence_grace_s=1)
    numbers = [*range(50), *range(60, 100), *range(10)]  # 50-59 never sent, 0-9 twice

    async def send() -> None:
        client = MqttClient(BrokerSettings(port=mosquitto.port), f"pub-{uuid.uuid4().hex[:6]}")
        await client.start()
        await client.wait_connected(10)
        topic = telemetry_topic(site, "crane-01", "lmi")
        for seq in numbers:
            await client.publish(topic, message(site, seq))
        await client.stop()

    def totals():
        result = influx1.query(
            f"SELECT sum(seq_gaps), sum(seq_duplicates) FROM collector WHERE collector='{name}'",
            db=influx_db,
        )
        series = result["results"][0].get("series")
        return series and series[0]["values"][0][1:] == [10, 10]

    try:
        asyncio.run(send())
        wait_for(
            totals, 20, "10 gaps and 10 duplicates in the collector's counters", program=collector
        )
        log = collector.log_tail(300)
    finally:
        assert collector.stop() == 0, collector.log_tail()
    assert log.count('"sequence gap: messages never arrived"') == 1, log
    assert '"where": "seq 50..59"' in log


def test_a_group_with_alarms_counts_each_agents_gaps_once(tmp_path, mosquitto, influx1, influx_db):
    """Each collector of a group stores a share, but its alarm session reads everything:
    the owner of ``agents/gw`` counts that agent's numbers, the others do not."""
    site = f"t{uuid.uuid4().hex[:8]}"
    names = [f"col{n}-{site}" for n in range(3)]
    alarms = {
        "rules": [str(REPO / "config" / "alarm-rules" / "crane.yaml")],
        "members": names,
    }
    collectors = [
        start_collector(
            tmp_path,
            name,
            mosquitto,
            influx1,
            influx_db,
            group=f"g-{site}",
            sequence_grace_s=1,
            alarms={**alarms, "state": str(tmp_path / f"{name}.db")},
        )
        for name in names
    ]
    numbers = [*range(50), *range(60, 100), *range(10)]  # 50-59 never sent, 0-9 twice

    async def send() -> None:
        client = MqttClient(BrokerSettings(port=mosquitto.port), f"pub-{uuid.uuid4().hex[:6]}")
        await client.start()
        await client.wait_connected(10)
        for seq in numbers:
            await client.publish(telemetry_topic(site, "crane-01", "lmi"), message(site, seq))
        await client.stop()

    def counts() -> dict[str, list[int]] | None:
        names_re = "|".join(names)
        result = influx1.query(
            "SELECT sum(seq_gaps), sum(seq_duplicates) FROM collector "
            f"WHERE collector =~ /^({names_re})$/ GROUP BY collector",
            db=influx_db,
        )
        series = result["results"][0].get("series") or []
        # A sum is null while a collector's stats rows lack that field (InfluxDB 1.6
        # answered so once, mid-write, in CI): none counted yet.
        found = {
            s["tags"]["collector"]: [value or 0 for value in s["values"][0][1:]] for s in series
        }
        total = [sum(v[0] for v in found.values()), sum(v[1] for v in found.values())]
        return found if total == [10, 10] else None

    try:
        asyncio.run(send())
        found = wait_for(counts, 30, "10 gaps and 10 duplicates across the group")
    finally:
        for collector in collectors:
            assert collector.stop() == 0, collector.log_tail()
    owner = owner_of("agents", "gw", names)
    assert found[owner] == [10, 10]
    assert all(found[name] == [0, 0] for name in names if name != owner)


def _conflict_among_good_ones(
    tmp_path, mosquitto, influx1, influx_db, **extra
) -> tuple[str, list[dict], Program]:
    """200 good messages and, in their midst, one whose t0 is a string: t0 is a float
    field already. Returns the site, the dead letters and the (stopped) collector."""
    site = f"t{uuid.uuid4().hex[:8]}"
    name = f"col-{site}"
    collector = start_collector(tmp_path, name, mosquitto, influx1, influx_db, **extra)
    good = [message(site, seq) for seq in range(1, 201)]
    conflicting = json.loads(message(site, 1000))
    conflicting["readings"][0]["value"] = "not a number"
    batch = [*good[:100], json.dumps(conflicting).encode(), *good[100:]]

    async def send(payloads: list[bytes]) -> None:
        client = MqttClient(BrokerSettings(port=mosquitto.port), f"pub-{uuid.uuid4().hex[:6]}")
        await client.start()
        await client.wait_connected(10)
        topic = telemetry_topic(site, "crane-01", "lmi")
        await asyncio.gather(*(client.publish_nowait(topic, p) for p in payloads))
        await client.stop()

    letters_dir = tmp_path / name / "state" / f"deadletter-{name}"
    try:
        asyncio.run(send([message(site, 0)]))
        wait_for(lambda: stored(influx1, influx_db, site) == 1, 20, "the first message")
        asyncio.run(send(batch))
        wait_for(lambda: stored(influx1, influx_db, site) == 201, 30, "every good message")
        wait_for(lambda: read_dead_letters(letters_dir), 20, "a dead letter", program=collector)
        time.sleep(1)  # nothing more comes
        assert collector.alive
    finally:
        assert collector.stop() == 0, collector.log_tail()
    return site, read_dead_letters(letters_dir), collector


def _count(influx1, db: str, site: str, field: str) -> int:
    result = influx1.query(f"SELECT count({field}) FROM telemetry WHERE site='{site}'", db=db)
    series = result["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def test_a_type_conflict_is_rejected_before_writing_naming_topic_tag_and_types(
    tmp_path, mosquitto, influx1, influx_db
):
    site, letters, _ = _conflict_among_good_ones(tmp_path, mosquitto, influx1, influx_db)
    (letter,) = letters
    assert letter["kind"] == "type"
    assert letter["topic"] == telemetry_topic(site, "crane-01", "lmi")
    assert letter["reason"].startswith(
        "readings[0] (t0): string value for field 't0', which holds float"
    )
    assert '"not a number"' in letter["payload"]
    # the whole message is rejected (before any of it was written); every good one stored
    assert _count(influx1, influx_db, site, "t1") == 201


def test_points_influxdb_refuses_are_found_and_only_they_dead_lettered(
    tmp_path, mosquitto, influx1, influx_db
):
    """With the collector's own type check off, InfluxDB refuses part of a batch: the
    refused line is found among the batch's lines and dead-lettered alone, with its
    message's topic and the server's reason; every other line, of that message too, is
    stored."""
    site, letters, collector = _conflict_among_good_ones(
        tmp_path, mosquitto, influx1, influx_db, ingest={"field_types": False}
    )
    (letter,) = letters
    assert letter["kind"] == "refused"
    assert letter["topic"] == telemetry_topic(site, "crane-01", "lmi")
    assert "field type conflict" in letter["reason"]
    assert 'input field \\"t0\\" on measurement \\"telemetry\\" is type string' in letter["reason"]
    assert letter["lines"] == 1
    assert letter["payload"].count("\n") == 0
    assert 't0="not a number"' in letter["payload"]
    assert _count(influx1, influx_db, site, "t0") == 201
    # the conflicting message's other readings (own lines: ts + i) were stored
    assert _count(influx1, influx_db, site, "t1") == 202
    events = [json.loads(line) for line in collector.log_path.read_text().splitlines()]
    refused = [e for e in events if e.get("event") == "influxdb refused points"]
    assert [(e["topic"], e["lines"]) for e in refused] == [(letter["topic"], 1)]
