"""Publish stage against a real mosquitto: live data first, backlog replayed in order and
marked historical, retained state never overwritten by history, spool emptied on PUBACK."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from agent.publish import Publisher
from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.spool.store import Priority, Spool
from derrick.wire.payloads import now_ns
from devstack.tap import Tap

pytestmark = pytest.mark.integration


def payload(n: int, state: str = "") -> bytes:
    body = {"v": 1, "historical": False, "n": n, "state": state}
    return json.dumps(body, separators=(",", ":")).encode()  # compact, as pydantic writes


async def replay(port: int, spool: Spool, live: list[tuple]) -> Publisher:
    """A publisher over ``spool`` until it is empty; ``live`` items are appended, one
    at a time, once the replay of what was there is under way."""
    client = MqttClient(BrokerSettings(port=port), f"pub-{uuid.uuid4().hex[:6]}")
    publisher = Publisher(spool, client, window=5)
    await client.start()
    await client.wait_connected()
    task = asyncio.create_task(publisher.run())
    await asyncio.sleep(0.05)  # replay under way
    for item in live:
        spool.append([item])
    publisher.wake()
    for _ in range(200):
        if spool.stats().depth == 0 and publisher.inflight == 0:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    await client.stop()
    return publisher


async def publish_all(port: int, spool: Spool, topic: str, backlog: int) -> Publisher:
    publisher = await replay(
        port,
        spool,
        [
            (f"{topic}/status", payload(-1, "up"), Priority.STATUS, True, now_ns()),
            (f"{topic}/data", payload(10_000), Priority.TELEMETRY, False, now_ns()),
        ],
    )
    assert publisher.published == backlog + 2
    return publisher


def test_live_first_backlog_in_order_marked_historical(tmp_path, mosquitto):
    topic = f"t/{uuid.uuid4().hex[:8]}"
    backlog = 2000
    with Spool(tmp_path / "s.db", max_bytes=10**8, max_age_s=10**6) as spool:
        spool.append([(f"{topic}/status", payload(-2, "down"), Priority.STATUS, True, now_ns())])
        spool.append(
            [
                (f"{topic}/data", payload(n), Priority.TELEMETRY, False, now_ns())
                for n in range(backlog - 1)
            ]
        )
        with Tap(mosquitto.port, f"{topic}/#") as tap:
            asyncio.run(publish_all(mosquitto.port, spool, topic, backlog))
            received = tap.wait(lambda m: len(m) >= backlog + 2, 20, "everything")
        assert spool.stats().depth == 0, "acknowledged messages must leave the spool"
    data = [json.loads(m.payload) for m in received if m.topic.endswith("/data")]
    numbers = [d["n"] for d in data]
    assert numbers.index(10_000) < backlog // 2, "live data waited behind the backlog"
    replayed = [d for d in data if d["n"] != 10_000]
    assert [d["n"] for d in replayed] == list(range(backlog - 1)), "backlog out of order"
    assert all(d["historical"] for d in replayed)
    assert not next(d for d in data if d["n"] == 10_000)["historical"]
    with Tap(mosquitto.port, f"{topic}/status") as late:
        (retained,) = late.wait(lambda m: m, 10, "retained status")
    assert json.loads(retained.payload)["state"] == "up", "history overwrote the current state"


def test_backlog_alarm_messages_go_before_live_ones(tmp_path, mosquitto):
    """Edge alarm conditions (priority ALARM) keep their order across live and backlog:
    the backlog's are sent first, so a live change never overtakes an older one."""
    topic = f"t/{uuid.uuid4().hex[:8]}"
    backlog = 1000
    with Spool(tmp_path / "s.db", max_bytes=10**8, max_age_s=10**6) as spool:
        rows = [
            (f"{topic}/data", payload(n), Priority.TELEMETRY, False, now_ns())
            for n in range(backlog)
        ]
        spool.append(rows)
        spool.append(
            [(f"{topic}/condition", payload(0, "active"), Priority.ALARM, False, now_ns())]
        )
        spool.append([(f"{topic}/data", payload(backlog), Priority.TELEMETRY, False, now_ns())])

        live = (f"{topic}/condition", payload(1, "cleared"), Priority.ALARM, False, now_ns())
        with Tap(mosquitto.port, f"{topic}/#") as tap:
            asyncio.run(replay(mosquitto.port, spool, [live]))
            received = tap.wait(lambda m: len(m) >= backlog + 3, 20, "everything")
    order = [(m.topic.rsplit("/", 1)[1], json.loads(m.payload)) for m in received]
    conditions = [(i, body) for i, (kind, body) in enumerate(order) if kind == "condition"]
    assert [body["state"] for _, body in conditions] == ["active", "cleared"]
    first = conditions[0]
    assert first[0] < 5, "the backlog's alarm message waited behind its telemetry"
    assert first[1]["historical"] is True
    assert conditions[1][1]["historical"] is False
    data = [body["n"] for kind, body in order if kind == "data"]
    assert sorted(data) == list(range(backlog + 1)), "a message was lost or sent twice"
