"""Loss that happens anyway raises an alarm within seconds of being certain (issue 13).

A stock mosquitto (1,000 queued per client) and a collector frozen, with 500 messages in
flight to it, while 3,000 arrive: the broker drops what does not fit. Its drop counter
rises, and the agent's next live metrics report an empty spool while some 1,500 of its
numbers are missing: both become announced alarms, each within seconds, and both clear
when the losses stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid

import pytest

from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.wire.payloads import AgentMetrics, QueueMetrics, Reading, Telemetry, now_ns
from derrick.wire.topics import agent_metrics_topic, telemetry_topic
from devstack.programs import Program, wait_for, write_yaml
from devstack.services import Mosquitto
from devstack.tap import Tap

pytestmark = pytest.mark.integration


def telemetry(site: str, agent: str, seq: int) -> bytes:
    ts = now_ns()
    return (
        Telemetry(
            site=site,
            asset="crane-01",
            device="lmi",
            kind="crane",
            agent=agent,
            boot="b",
            seq=seq,
            readings=[Reading(tag="t0", value=float(seq), ts_ns=ts)],
        )
        .model_dump_json()
        .encode()
    )


def metrics(site: str, agent: str, depth: int) -> bytes:
    return (
        AgentMetrics(
            agent=agent,
            site=site,
            boot="b",
            ts_ns=now_ns(),
            uptime_s=10.0,
            broker_connected=True,
            devices={},
            queue=QueueMetrics(depth=depth),
            messages_published=0,
        )
        .model_dump_json()
        .encode()
    )


async def publish(port: int, items: list[tuple[str, bytes]]) -> None:
    client = MqttClient(BrokerSettings(port=port), f"pub-{uuid.uuid4().hex[:6]}", persistent=False)
    await client.start()
    await client.wait_connected(10)
    for start in range(0, len(items), 200):
        await asyncio.gather(*(client.publish_nowait(t, p) for t, p in items[start : start + 200]))
    await client.stop()


def notices(tap: Tap, rule: str, event: str) -> list[dict]:
    found = []
    for message in tap.messages():
        notice = json.loads(message.payload)
        if notice["rule"] == rule and notice["event"] == event:
            found.append(notice)
    return found


def test_broker_drops_and_certain_gaps_are_announced_and_cleared(tmp_path, influx1, influx_db):
    site = f"l{uuid.uuid4().hex[:8]}"
    agent = f"gw-{site}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - {name: t0_high, kind: crane, type: high, tag: t0, limit: 1.0e12,"
        " priority: low}\n"
    )
    with Mosquitto(tmp_path / "broker", stock=True, extra_config="sys_interval 1") as broker:
        config = write_yaml(
            tmp_path / "collector.yaml",
            {
                "collector": {"id": f"col-{site}"},
                "broker": {"host": "127.0.0.1", "port": broker.port, "reconnect_max_s": 1},
                "influx": {"api": "v1", "url": influx1.url, "database": influx_db},
                # a small window, so that 3,000 messages overflow window and stock queue
                "ingest": {"loss_settle_s": 1, "loss_clear_s": 4, "receive_maximum": 500},
                "alarms": {"rules": [str(rules)], "tick_s": 0.5},
                "stats_interval_s": 1,
                "log": {"format": "json"},
            },
        )
        program = Program("collector", ["--config", str(config)], tmp_path / "collector.log")
        with Tap(broker.port, "derrick/v1/+/+/alarm-events") as tap:
            program.start()
            try:
                wait_for(lambda: "collector started" in program.log_tail(30), 20, "up")
                time.sleep(2)  # SUBACK, and a first value of the drop counter
                topic = telemetry_topic(site, "crane-01", "lmi")
                asyncio.run(publish(broker.port, [(topic, telemetry(site, agent, 0))]))
                os.kill(program.process.pid, signal.SIGSTOP)
                try:
                    batch = [(topic, telemetry(site, agent, seq)) for seq in range(1, 3001)]
                    asyncio.run(publish(broker.port, batch))
                finally:
                    os.kill(program.process.pid, signal.SIGCONT)
                resumed = time.monotonic()
                tap.wait(
                    lambda _m: notices(tap, "broker_messages_dropped", "announce"),
                    15,
                    "the broker-drop alarm",
                )
                dropped_after = time.monotonic() - resumed
                # The broker dropped the newest: the agent's next message shows the hole,
                # and its next metrics, once the hole settled, an empty spool.
                asyncio.run(publish(broker.port, [(topic, telemetry(site, agent, 3001))]))
                time.sleep(1.5)
                asyncio.run(
                    publish(broker.port, [(agent_metrics_topic(agent), metrics(site, agent, 0))])
                )
                reported = time.monotonic()
                tap.wait(
                    lambda _m: notices(tap, "agent_messages_lost", "announce"),
                    10,
                    "the lost-messages alarm",
                )
                lost_after = time.monotonic() - reported
                tap.wait(
                    lambda _m: (
                        notices(tap, "broker_messages_dropped", "clear")
                        and notices(tap, "agent_messages_lost", "clear")
                    ),
                    20,
                    "both alarms cleared",
                )
            finally:
                assert program.stop() == 0, program.log_tail()
    (dropped,) = notices(tap, "broker_messages_dropped", "announce")
    (lost,) = notices(tap, "agent_messages_lost", "announce")
    assert dropped["priority"] == "high"
    assert (dropped["site"], dropped["asset"]) == ("derrick", "broker")
    assert dropped["value"] >= 1400, "about 1,500 of the 3,000 fit neither window nor queue"
    assert dropped_after < 10
    assert (lost["site"], lost["asset"]) == ("agents", agent)
    result = influx1.query(f"SELECT count(t0) FROM telemetry WHERE site='{site}'", db=influx_db)
    stored = result["results"][0]["series"][0]["values"][0][1]
    assert lost["value"] == 3002 - stored, "exactly the agent's messages that never came"
    assert dropped["value"] >= lost["value"], "the broker counts every client's drops"
    assert lost_after < 5
    assert "its spool empty" in lost["message"]
