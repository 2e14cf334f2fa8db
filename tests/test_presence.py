"""Collectors say whether they are online; agents with local channels take "no collector
online" like the uplink being down (collector.presence, agent.presence).

Real parts: mosquitto, InfluxDB 1.6, a crane simulator, a collector process and an
agent process that evaluates the crane rules at the edge and annunciates to a webhook
receiver on the "site LAN" while offline.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from agent.presence import CollectorWatch
from derrick.mqtt.client import InboundMessage, MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.wire.payloads import CollectorStatus
from derrick.wire.topics import COLLECTOR_STATUS_SUBSCRIPTION, collector_status_topic
from devstack.alarmstack import RULES
from devstack.programs import Program, http_json, start_simulator, wait_for, write_yaml
from devstack.receivers import HttpReceiver


def status(collector: str, state: str) -> InboundMessage:
    payload = CollectorStatus(collector=collector, state=state, ts_ns=1).model_dump_json()  # type: ignore[arg-type]
    return InboundMessage(collector_status_topic(collector), payload.encode(), 1, 0, False)


def test_no_collector_heard_counts_as_online_one_online_is_enough():
    watch = CollectorWatch()
    assert watch.any_online  # collectors older than these statuses say nothing
    assert watch.take(status("c1", "offline"))
    assert not watch.any_online
    watch.take(status("c2", "online"))
    assert watch.any_online
    watch.take(status("c2", "offline"))
    assert not watch.any_online


def test_other_topics_and_bad_statuses_change_nothing():
    watch = CollectorWatch()
    watch.take(status("c1", "online"))
    other = InboundMessage("spBv1.0/STATE/host", b"{}", 1, 0, False)
    assert not watch.take(other)
    bad = InboundMessage(collector_status_topic("c1"), b'{"state": "asleep"}', 1, 0, False)
    assert watch.take(bad)  # a collector's status topic, unreadable: logged, ignored
    assert watch.online == {"c1": True}


def retained_statuses(port: int) -> dict[str, str]:
    """The collectors' retained statuses on the broker now."""

    async def read() -> dict[str, str]:
        client = MqttClient(
            BrokerSettings(host="127.0.0.1", port=port),
            client_id=f"t-{uuid.uuid4().hex[:6]}",
            persistent=False,
        )
        await client.subscribe(COLLECTOR_STATUS_SUBSCRIPTION, qos=1)
        await client.start()
        found: dict[str, str] = {}
        try:
            async with asyncio.timeout(1.5):
                while True:
                    message = await client.inbox.get()
                    parsed = CollectorStatus.model_validate_json(message.payload)
                    found[parsed.collector] = parsed.state
        except TimeoutError:
            pass
        finally:
            await client.stop()
        return found

    return asyncio.run(read())


@pytest.mark.integration
def test_an_agent_annunciates_locally_while_no_collector_is_online(
    tmp_path, mosquitto, influx1, influx_db
):
    site = f"t{uuid.uuid4().hex[:8]}"
    broker = {"host": "127.0.0.1", "port": mosquitto.port, "reconnect_max_s": 1}
    sim = start_simulator(tmp_path, "--no-demo-overload")
    collector_id = f"col-{site}"
    collector = Program(
        "collector",
        ["--config", str(write_yaml(tmp_path / "collector.yaml", {
            "collector": {"id": collector_id},
            "broker": broker,
            "influx": {"api": "v1", "url": influx1.url, "database": influx_db},
            "log": {"format": "json"},
        }))],
        tmp_path / "collector.log",
    )  # fmt: skip
    with HttpReceiver() as lan:
        agent = Program(
            "agent",
            ["--config", str(write_yaml(tmp_path / "agent.yaml", {
                "agent": {"id": f"gw-{site}", "site": site},
                "format": "json",
                "broker": broker,
                "devices": [{"name": "lmi", "asset": "crane-1", "profile": "crane",
                             "host": "127.0.0.1", "port": sim.port, "interval_s": 0.5}],
                "spool": {"path": str(tmp_path / "spool.db")},
                "alarms": {"rules": [str(RULES[0])], "tick_s": 0.5,
                           "local": {"channel": {"type": "webhook", "url": lan.url}}},
                "log": {"format": "json"},
            }))],
            tmp_path / "agent.log",
        )  # fmt: skip
        try:
            collector.start()
            wait_for(lambda: retained_statuses(mosquitto.port).get(collector_id) == "online",
                     30, "the collector's retained online status", program=collector)  # fmt: skip
            agent.start()
            time.sleep(3)  # polling, connected, the collector online
            sim_overload(sim.control, True)
            time.sleep(3)
            assert lan.requests == []  # a collector hears it: nothing on the site LAN
            sim_overload(sim.control, False)
            time.sleep(2)
            collector.kill()  # its last will says offline
            wait_for(lambda: retained_statuses(mosquitto.port).get(collector_id) == "offline",
                     10, "the collector's last will")  # fmt: skip
            sim_overload(sim.control, True)
            notices = wait_for(lambda: _overloads(lan), 20, "a local overload notice",
                               program=agent)  # fmt: skip
            assert notices[0]["reason"] == "edge"
            assert "no collector online" in agent.log_path.read_text()
        finally:
            codes = {"agent": agent.stop(), "sim": sim.program.stop()}
            collector.stop()
    assert codes == {"agent": 0, "sim": 0}, agent.log_tail()


def sim_overload(control: str, active: bool) -> None:
    http_json(f"{control}/overload", {"active": active})


def _overloads(lan: HttpReceiver) -> list[dict]:
    return [
        r.json
        for r in lan.requests
        if isinstance(r.json, dict)
        and r.json.get("rule") == "crane_overload"
        and r.json.get("event") == "announce"
    ]
