"""No message can stop the collector (issue 13).

* unit, at the MQTT seam: a message whose handling raises is dead-lettered as
  ``internal`` and the next one is stored; a redelivered message is set aside as
  ``poison`` at ``max_deliveries``;
* real mosquitto, in process: the DUP flag and the ledger across simulated crashes;
* the real collector process: the 401-digit value in a live fleet stream, a restart that
  does not crash-loop, SIGTERM while InfluxDB is frozen mid-write, and ``/health``
  turning 503 while ingest is stuck.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from fakes import MemoryMqttClient

from collector import receive
from collector.deadletter import DeadLetters, read_dead_letters
from collector.receive import Receiver
from collector.redelivery import Redeliveries
from collector.stats import Stats
from collector.store import Batchable
from derrick.mqtt.client import InboundMessage, MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.wire.payloads import Reading, Telemetry, now_ns
from derrick.wire.topics import alarm_events_topic, telemetry_topic
from devstack.programs import Program, wait_for, write_yaml
from devstack.services import free_port
from devstack.tap import Tap

ASSETS = [f"crane-{n:02d}" for n in range(1, 6)]


def message(site: str, asset: str, seq: int, value: float | None = None) -> bytes:
    ts = now_ns()
    readings = [
        Reading(tag=f"t{i}", value=float(seq if value is None else value), ts_ns=ts)
        for i in range(5)
    ]
    return (
        Telemetry(
            site=site,
            asset=asset,
            device="lmi",
            kind="crane",
            agent=f"gw-{asset}",
            boot="b",
            seq=seq,
            readings=readings,
        )
        .model_dump_json()
        .encode()
    )


def huge_value(site: str, asset: str, seq: int) -> bytes:
    """The drill's payload: t0 a JSON integer of 401 digits."""
    data = json.loads(message(site, asset, seq))
    data["readings"][0]["value"] = 10**400
    text = json.dumps(data)
    assert len(str(10**400)) == 401 and str(10**400) in text
    return text.encode()


# -- unit: the guard, at the MQTT seam -------------------------------------------------------


def inbound(mid: int, payload: bytes, *, dup: bool = False, asset: str = "crane-01"):
    return InboundMessage(telemetry_topic("s", asset, "lmi"), payload, 1, mid, False, dup)


async def eventually(predicate, timeout: float = 5.0) -> None:
    """Wait until ``predicate()``, a counter another task moves (TimeoutError if not)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - the stage has no event to wait on
            await asyncio.sleep(0.01)


async def drain(receiver: Receiver, client: MemoryMqttClient, count: int) -> None:
    task = asyncio.create_task(receiver.run())
    try:
        await eventually(lambda: receiver.stats.messages >= count and client.inbox.empty())
        await asyncio.sleep(0.05)
    finally:
        task.cancel()


def test_a_message_whose_handling_raises_is_dead_lettered_and_the_next_stored(
    tmp_path, monkeypatch
):
    real = receive.encode_telemetry

    def encode(message: Telemetry) -> list[str]:
        if message.seq == 2:
            raise OverflowError("int too large to convert to float")
        return real(message)

    monkeypatch.setattr(receive, "encode_telemetry", encode)

    async def main() -> tuple[Receiver, MemoryMqttClient, asyncio.Queue[Batchable]]:
        client = MemoryMqttClient()
        queue: asyncio.Queue[Batchable] = asyncio.Queue()
        letters = DeadLetters(tmp_path / "dl")
        receiver = Receiver(client, queue, Stats(), letters)  # type: ignore[arg-type]
        for seq in (1, 2, 3):
            client.inbox.put_nowait(inbound(seq, message("s", "crane-01", seq)))
        await drain(receiver, client, 3)
        letters.close()
        return receiver, client, queue

    receiver, client, queue = asyncio.run(main())
    assert [item.message.mid for item in [queue.get_nowait(), queue.get_nowait()]] == [1, 3]
    assert client.acked_mids == [2], "the failed message is acked, the others wait for storage"
    (letter,) = read_dead_letters(tmp_path / "dl")
    assert letter["kind"] == "internal"
    assert letter["reason"] == "collector error: OverflowError: int too large to convert to float"
    assert letter["topic"] == telemetry_topic("s", "crane-01", "lmi")
    assert receiver.stats.internal_errors == 1


def test_a_redelivered_message_is_set_aside_at_max_deliveries(tmp_path):
    payload = message("s", "crane-01", 7)

    async def deliver(dup: bool) -> tuple[MemoryMqttClient, asyncio.Queue[Batchable], Stats]:
        client = MemoryMqttClient()
        queue: asyncio.Queue[Batchable] = asyncio.Queue()
        ledger = Redeliveries(tmp_path / "deliveries.db", max_deliveries=3)  # reopened: durable
        letters = DeadLetters(tmp_path / "dl")
        receiver = Receiver(client, queue, Stats(), letters, redeliveries=ledger)  # type: ignore[arg-type]
        client.inbox.put_nowait(inbound(1, payload, dup=dup))
        await drain(receiver, client, 1)
        ledger.close()
        letters.close()
        return client, queue, receiver.stats

    first = asyncio.run(deliver(False))
    second = asyncio.run(deliver(True))
    assert first[1].qsize() == second[1].qsize() == 1, "delivered twice: handled twice"
    third = asyncio.run(deliver(True))
    assert third[1].qsize() == 0
    assert third[0].acked_mids == [1]
    assert third[2].poison == 1
    (letter,) = read_dead_letters(tmp_path / "dl")
    assert letter["kind"] == "poison"
    assert letter["reason"].startswith("delivered 3 times without being stored or rejected")


# -- real mosquitto: DUP flags and the ledger across simulated crashes ----------------------


@pytest.mark.integration
def test_a_message_that_kills_the_collector_is_set_aside_on_the_third_delivery(tmp_path, mosquitto):
    """Each round a fresh session takes the message and "dies" handling it (stops without
    acknowledging, as a killed process would); the broker sends it again with DUP."""
    settings = BrokerSettings(port=mosquitto.port, reconnect_max_s=1)
    client_id = f"poison-{uuid.uuid4().hex[:6]}"
    topic = telemetry_topic(f"p{uuid.uuid4().hex[:6]}", "crane-01", "lmi")
    payload = b'{"not": "handled"}'

    async def round_(publish: bool) -> tuple[str, list[dict]]:
        client = MqttClient(settings, client_id, manual_ack=True, receive_maximum=10)
        await client.subscribe(topic)
        await client.start()
        await client.wait_subscribed(10)
        if publish:
            sender = MqttClient(settings, f"{client_id}-pub", persistent=False)
            await sender.start()
            await sender.wait_connected(10)
            await sender.publish(topic, payload)
            await sender.stop()
        ledger = Redeliveries(tmp_path / "deliveries.db", max_deliveries=3)
        letters = DeadLetters(tmp_path / "dl")
        hang = asyncio.Event()

        class Dying(Receiver):
            async def _handle(self, inbound: InboundMessage) -> None:
                await hang.wait()  # wedged on the message, until "killed"

        receiver = Dying(client, asyncio.Queue(), Stats(), letters, redeliveries=ledger)
        task = asyncio.create_task(receiver.run())
        try:
            await eventually(lambda: receiver.stats.messages > 0)
            await asyncio.sleep(0.2)
        except TimeoutError:
            return "nothing delivered", []
        finally:
            task.cancel()
            await client.stop()
            ledger.close()
            letters.close()
        outcome = "set aside" if receiver.stats.poison else "handled"
        return outcome, read_dead_letters(tmp_path / "dl")

    assert asyncio.run(round_(True))[0] == "handled"
    assert asyncio.run(round_(False))[0] == "handled"
    outcome, letters = asyncio.run(round_(False))
    assert outcome == "set aside"
    assert [letter["kind"] for letter in letters] == ["poison"]
    assert asyncio.run(round_(False))[0] == "nothing delivered", "acknowledged: gone"


# -- the real collector process -------------------------------------------------------------


def collector_config(
    tmp_path: Path, name: str, mosquitto, influx1, db: str, api_port: int, **extra
) -> Path:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: t0_high\n"
        "    kind: crane\n"
        "    type: high\n"
        "    tag: t0\n"
        "    limit: 1000000\n"
        "    priority: high\n"
    )
    return write_yaml(
        tmp_path / f"{name}.yaml",
        {
            "collector": {"id": name},
            "broker": {"host": "127.0.0.1", "port": mosquitto.port, "reconnect_max_s": 1},
            "influx": {"api": "v1", "url": influx1.url, "database": db, "timeout_s": 60},
            "batch": {"max_lines": 200, "max_delay_s": 0.05},
            "alarms": {"rules": [str(rules)], "http": {"enabled": True, "port": api_port}},
            "stats_interval_s": 1,
            "log": {"format": "json"},
            **extra,
        },
    )


def stored(influx1, db: str, site: str) -> int:
    result = influx1.query(f"SELECT count(t1) FROM telemetry WHERE site='{site}'", db=db)
    series = result["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


async def publish(port: int, topic_payloads: list[tuple[str, bytes]]) -> None:
    client = MqttClient(BrokerSettings(port=port), f"pub-{uuid.uuid4().hex[:6]}", persistent=False)
    await client.start()
    await client.wait_connected(10)
    for start in range(0, len(topic_payloads), 50):
        chunk = topic_payloads[start : start + 50]
        await asyncio.gather(*(client.publish_nowait(t, p) for t, p in chunk))
    await client.stop()


@pytest.mark.integration
def test_the_401_digit_value_in_a_live_fleet_stream(tmp_path, mosquitto, influx1, influx_db):
    site = f"f{uuid.uuid4().hex[:8]}"
    name = f"col-{site}"
    config = collector_config(tmp_path, name, mosquitto, influx1, influx_db, free_port())
    program = Program("collector", ["--config", str(config)], tmp_path / "collector.log")
    stream = [
        (telemetry_topic(site, asset, "lmi"), message(site, asset, seq))
        for seq in range(100)
        for asset in ASSETS
    ]
    bad_topic = telemetry_topic(site, "crane-03", "lmi")
    stream.insert(250, (bad_topic, huge_value(site, "crane-03", 1000)))
    overload = (telemetry_topic(site, "crane-02", "lmi"), message(site, "crane-02", 101, 2e6))
    letters = tmp_path / "state" / f"deadletter-{name}"
    with Tap(mosquitto.port, alarm_events_topic(site, "+")) as events:
        program.start()
        try:
            wait_for(
                lambda: "collector started" in program.log_tail(50), 20, "started", program=program
            )
            asyncio.run(publish(mosquitto.port, [*stream, overload]))
            wait_for(lambda: stored(influx1, influx_db, site) == 501, 30, "every good message")
            announced = events.wait(
                lambda ms: [m for m in ms if b'"announce"' in m.payload], 20, "the alarm"
            )
            assert b"t0_high" in announced[0].payload
            (letter,) = read_dead_letters(letters)
        finally:
            code = program.stop(timeout=10)
        assert code == 0, program.log_tail()
    assert letter["kind"] == "schema"
    assert letter["topic"] == bad_topic
    assert letter["reason"].startswith("readings[0].value: ")
    # a restart does not crash-loop: nothing is redelivered, nothing more dead-lettered
    program.start()
    try:
        wait_for(
            lambda: "collector started" in program.log_tail(20), 20, "restarted", program=program
        )
        time.sleep(2)
        assert program.alive, program.log_tail()
    finally:
        assert program.stop(timeout=10) == 0, program.log_tail()
    assert len(read_dead_letters(letters)) == 1
    assert stored(influx1, influx_db, site) == 501


def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.integration
def test_frozen_influxdb_health_turns_503_and_sigterm_still_stops_at_once(
    tmp_path, mosquitto, influx1, influx_db
):
    """InfluxDB stopped (SIGSTOP) mid-write: the write hangs up to its 60 s timeout. The
    collector says so on /health within ``stall_s``, and SIGTERM ends it at once anyway:
    nothing it holds is acknowledged, so the broker keeps it."""
    site = f"h{uuid.uuid4().hex[:8]}"
    name = f"col-{site}"
    port = free_port()
    config = collector_config(
        tmp_path, name, mosquitto, influx1, influx_db, port, ingest={"stall_s": 1}
    )
    program = Program("collector", ["--config", str(config)], tmp_path / "collector.log").start()
    topic = telemetry_topic(site, "crane-01", "lmi")
    frozen = False
    try:
        wait_for(lambda: health(port)[0] == 200, 20, "healthy", program=program)
        asyncio.run(publish(mosquitto.port, [(topic, message(site, "crane-01", 0))]))
        wait_for(lambda: stored(influx1, influx_db, site) == 1, 20, "the first message")
        os.kill(influx1.pid, signal.SIGSTOP)
        frozen = True
        asyncio.run(
            publish(mosquitto.port, [(topic, message(site, "crane-01", n)) for n in (1, 2)])
        )
        _, report = wait_for(
            lambda: (h := health(port))[0] == 503 and h, 10, "unhealthy", program=program
        )
        assert report["ok"] is False
        assert "store" in report["stalled"]
        assert "store stage has not moved for" in report["reason"]
        started = time.monotonic()
        code = program.stop(timeout=15)
        took = time.monotonic() - started
    finally:
        if frozen:
            os.kill(influx1.pid, signal.SIGCONT)
        program.stop()
    assert code == 0, program.log_tail()
    assert took < 5, f"SIGTERM took {took:.1f} s"
    # the unacknowledged messages are still the broker's: a restart stores them (the write
    # InfluxDB took before it froze may have landed already; the rest come again)
    program.start()
    try:
        wait_for(lambda: health(port)[0] == 200, 30, "healthy again", program=program)
        wait_for(lambda: stored(influx1, influx_db, site) == 3, 30, "stored after the restart")
        assert "message rejected" not in program.log_tail(200)
    finally:
        assert program.stop() == 0, program.log_tail()
