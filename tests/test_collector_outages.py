"""The collector acknowledges a message only after it is stored: outages lose nothing.

Real mosquitto, real InfluxDB 1.6, the real collector process; the test publishes
telemetry as an agent would and counts what InfluxDB holds.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.wire.payloads import Reading, Telemetry, now_ns
from derrick.wire.topics import telemetry_topic
from devstack.programs import Program, wait_for, write_yaml

pytestmark = pytest.mark.integration

TAGS = 5


def payloads(site: str, first: int, count: int) -> list[bytes]:
    out = []
    for seq in range(first, first + count):
        ts = now_ns()
        out.append(
            Telemetry(
                site=site,
                asset="crane-01",
                device="lmi",
                kind="crane",
                agent="gw",
                boot="b",
                seq=seq,
                readings=[Reading(tag=f"t{i}", value=seq + i, ts_ns=ts) for i in range(TAGS)],
            )
            .model_dump_json()
            .encode()
        )
        time.sleep(0.0005)  # distinct timestamps
    return out


def publish(port: int, site: str, messages: list[bytes]) -> None:
    async def run() -> None:
        client = MqttClient(
            BrokerSettings(host="127.0.0.1", port=port),
            client_id=f"pub-{uuid.uuid4().hex[:6]}",
            persistent=False,
        )
        await client.start()
        await client.wait_connected(10)
        topic = telemetry_topic(site, "crane-01", "lmi")
        await asyncio.gather(*(client.publish_nowait(topic, m) for m in messages))
        await client.stop()

    asyncio.run(run())


def stored_seqs(influx1, db: str, site: str) -> list[float]:
    result = influx1.query(f"SELECT t0 FROM telemetry WHERE site='{site}'", db=db)
    series = result["results"][0].get("series")
    return [row[1] for row in series[0]["values"]] if series else []


def collector(tmp_path, mosquitto, influx1, db: str, client_id: str) -> Program:
    config = write_yaml(
        tmp_path / "collector.yaml",
        {
            "collector": {"id": client_id},
            "broker": {"host": "127.0.0.1", "port": mosquitto.port},
            "influx": {
                "api": "v1",
                "url": influx1.url,
                "database": db,
                "create_database": True,
                "timeout_s": 2,
            },
            "batch": {"max_lines": 50, "max_delay_s": 0.05},
            "log": {"format": "json"},
        },
    )
    return Program("collector", ["--config", str(config)], tmp_path / "collector.log")


def wait_subscribed(program: Program) -> None:
    wait_for(
        lambda: "broker connected" in program.log_tail(50),
        15,
        "collector connected",
        program=program,
    )


def test_influxdb_outage_loses_nothing(tmp_path, mosquitto, influx1, influx_db):
    site = f"t{uuid.uuid4().hex[:8]}"
    program = collector(tmp_path, mosquitto, influx1, influx_db, f"col-{site}").start()
    try:
        wait_subscribed(program)
        publish(mosquitto.port, site, payloads(site, 0, 100))
        wait_for(lambda: len(stored_seqs(influx1, influx_db, site)) == 100, 20, "first 100")
        influx1.stop()
        try:
            publish(mosquitto.port, site, payloads(site, 100, 200))
            time.sleep(3)  # the collector is retrying by now
        finally:
            influx1.start()
        seqs = wait_for(
            lambda: (s := stored_seqs(influx1, influx_db, site)) and len(s) == 300 and s,
            60,
            "all 300 after the outage",
            program=program,
        )
        assert sorted(seqs) == [float(i) for i in range(300)]
        assert "influxdb unavailable, spooling to disk" in program.log_tail(200)
        assert "influxdb writable again" in program.log_tail(200)
    finally:
        assert program.stop() == 0, program.log_tail()


def test_collector_killed_with_spooled_messages_loses_nothing(
    tmp_path, mosquitto, influx1, influx_db
):
    site = f"t{uuid.uuid4().hex[:8]}"
    client_id = f"col-{site}"
    first = collector(tmp_path, mosquitto, influx1, influx_db, client_id).start()
    wait_subscribed(first)
    influx1.stop()
    try:
        publish(mosquitto.port, site, payloads(site, 0, 150))
        time.sleep(1)  # received, spooled to disk (and only then acknowledged)
        first.kill()
    finally:
        influx1.start()
    assert stored_seqs(influx1, influx_db, site) == []
    second = collector(tmp_path, mosquitto, influx1, influx_db, client_id).start()
    try:
        seqs = wait_for(
            lambda: (s := stored_seqs(influx1, influx_db, site)) and len(s) == 150 and s,
            60,
            "replayed from the spool after SIGKILL",
            program=second,
        )
        assert sorted(seqs) == [float(i) for i in range(150)]
    finally:
        assert second.stop() == 0, second.log_tail()


def test_collector_started_while_influxdb_is_down_waits_for_it(tmp_path, mosquitto, influx1):
    site = f"t{uuid.uuid4().hex[:8]}"
    db = f"db_{uuid.uuid4().hex[:8]}"  # the collector itself must create it
    influx1.stop()
    try:
        program = collector(tmp_path, mosquitto, influx1, db, f"col-{site}").start()
        wait_subscribed(program)
        publish(mosquitto.port, site, payloads(site, 0, 20))
        time.sleep(1)
        assert program.alive, program.log_tail()
    finally:
        influx1.start()
    try:
        # The first write after InfluxDB returns finds no database: the collector creates
        # it and writes, instead of dropping the points as bad data.
        seqs = wait_for(
            lambda: (s := stored_seqs(influx1, db, site)) and len(s) == 20 and s,
            60,
            "stored once InfluxDB is up",
            program=program,
        )
        assert sorted(seqs) == [float(i) for i in range(20)]
        assert "could not create database" in program.log_tail(100)
    finally:
        assert program.stop() == 0, program.log_tail()
