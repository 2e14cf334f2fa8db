"""The agent as a Sparkplug B edge node, with real parts: derrick-sim (crane profile),
mosquitto, the agent as its own process; a recording subscriber reads the wire with
protobuf, as any Sparkplug host would."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import paho.mqtt.publish as mqtt_publish
import pytest

from derrick.mqtt.client import MqttClient, MqttError
from derrick.mqtt.settings import BrokerSettings
from derrick.wire import sparkplug as sp
from devstack.programs import Program, start_simulator, write_yaml
from devstack.tap import Received, Tap

pytestmark = pytest.mark.integration


def start_agent(tmp_path, broker_port: int, plc_port: int, site: str) -> Program:
    config = write_yaml(
        tmp_path / "agent.yaml",
        {
            "agent": {"id": "gw-1", "site": site},
            # Reconnects 2 s after a drop: after the test's subscriber (1 s), which must
            # not miss the new NBIRTH (QoS 0, as the spec says: never queued for it).
            "broker": {
                "host": "127.0.0.1",
                "port": broker_port,
                "reconnect_min_s": 2,
                "reconnect_max_s": 2,
            },
            "format": "sparkplug",
            "devices": [
                {
                    "name": "lmi",
                    "asset": "crane-01",
                    "profile": "crane",
                    "host": "127.0.0.1",
                    "port": plc_port,
                    "interval_s": 0.2,
                    "timeout_s": 0.5,
                }
            ],
            "spool": {"path": str(tmp_path / "spool.db")},
            "log": {"format": "json"},
        },
    )
    return Program("agent", ["--config", str(config)], tmp_path / "agent.log").start()


def decoded(messages: list[Received]) -> list[tuple[sp.SparkplugTopic, sp.pb.Payload]]:
    out = []
    for message in messages:
        topic = sp.parse_sparkplug_topic(message.topic)
        assert isinstance(topic, sp.SparkplugTopic)
        out.append((topic, sp.decode_payload(message.payload)))
    return out


def of_type(messages: list[Received], kind: sp.MessageType) -> list[sp.pb.Payload]:
    return [payload for topic, payload in decoded(messages) if topic.type is kind]


def seqs_since_last_birth(messages: list[Received]) -> list[int]:
    """The seq of every message of the current connection, from its NBIRTH on."""
    wire = [
        (topic, payload)
        for topic, payload in decoded(messages)
        if topic.type not in {sp.MessageType.NDEATH, sp.MessageType.NCMD, sp.MessageType.DCMD}
    ]
    starts = [i for i, (topic, _) in enumerate(wire) if topic.type is sp.MessageType.NBIRTH]
    return [payload.seq for _, payload in wire[starts[-1] :]]


def assert_consecutive(seqs: list[int]) -> None:
    assert seqs, "no messages"
    assert seqs[0] == 0
    for before, after in itertools.pairwise(seqs):
        assert after == (before + 1) % 256, seqs


@pytest.fixture
def site() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def test_births_aliases_and_data_read_by_a_protobuf_host(tmp_path, mosquitto, site):
    sim = start_simulator(tmp_path, "--no-demo-overload")
    with Tap(mosquitto.port, f"spBv1.0/{site}/#") as tap:
        agent = start_agent(tmp_path, mosquitto.port, sim.port, site)
        try:
            messages = tap.wait(
                lambda ms: len(of_type(ms, sp.MessageType.DDATA)) >= 10, 30, "ten DDATA"
            )
        finally:
            assert agent.stop() == 0, agent.log_tail()
            sim.program.stop()
        (nbirth,) = of_type(messages, sp.MessageType.NBIRTH)
        assert nbirth.seq == 0
        assert sp.node_bdseq(nbirth) == 0
        (dbirth,) = of_type(messages, sp.MessageType.DBIRTH)
        table = sp.DeviceTable.from_birth(dbirth, "lmi")
        assert (table.asset, table.kind) == ("crane-01", "crane")
        hook = table.by_name["hook_load"]
        assert hook.unit == "t"
        assert hook.type is sp.MetricType.FLOAT  # float32 in the PLC
        assert table.by_name["utilisation"].type is sp.MetricType.DOUBLE  # scaled: a decimal
        assert table.by_name["lift_count"].type is sp.MetricType.UINT32
        assert table.by_name["estop"].type is sp.MetricType.BOOLEAN
        assert len(set(table.by_alias)) == len(table.by_name)  # one alias per metric
        readings = [
            r for data in of_type(messages, sp.MessageType.DDATA) for r in table.readings(data)[0]
        ]
        loads = [r.value for r in readings if r.tag == "hook_load"]
        assert loads
        assert all(isinstance(v, float) and 0 <= v < 1000 for v in loads)
        assert all(
            data.metrics and not data.metrics[0].name
            for data in of_type(messages, sp.MessageType.DDATA)
        )
        assert_consecutive(seqs_since_last_birth(messages))
        # the clean stop says NDEATH with the connection's bdSeq
        (death,) = of_type(
            tap.wait(lambda ms: of_type(ms, sp.MessageType.NDEATH), 10, "NDEATH"),
            sp.MessageType.NDEATH,
        )
        assert sp.node_bdseq(death) == 0


def test_rebirth_is_honoured_and_writes_are_refused(tmp_path, mosquitto, site):
    sim = start_simulator(tmp_path, "--no-demo-overload")
    with Tap(mosquitto.port, f"spBv1.0/{site}/#") as tap:
        agent = start_agent(tmp_path, mosquitto.port, sim.port, site)
        try:
            tap.wait(lambda ms: of_type(ms, sp.MessageType.DDATA), 30, "data")
            ncmd = sp.sparkplug_topic(site, sp.MessageType.NCMD, "gw-1")
            mqtt_publish.single(
                ncmd, sp.encode_rebirth_request(0), hostname="127.0.0.1", port=mosquitto.port
            )
            messages = tap.wait(
                lambda ms: len(of_type(ms, sp.MessageType.NBIRTH)) >= 2, 15, "a second NBIRTH"
            )
            write = sp.pb.Payload()
            write.metrics.add(name="hook_load", datatype=10, double_value=0.0)
            for topic in (sp.sparkplug_topic(site, sp.MessageType.DCMD, "gw-1", "lmi"), ncmd):
                mqtt_publish.single(
                    topic, write.SerializeToString(), hostname="127.0.0.1", port=mosquitto.port
                )
            after = len(messages)
            messages = tap.wait(
                lambda ms: len(of_type(ms[after:], sp.MessageType.DDATA)) >= 5, 15, "data after"
            )
        finally:
            assert agent.stop() == 0, agent.log_tail()
            sim.program.stop()
        births = of_type(messages, sp.MessageType.NBIRTH)
        assert [b.seq for b in births] == [0, 0]
        assert sp.node_bdseq(births[1]) == sp.node_bdseq(births[0])  # same connection
        assert len(of_type(messages, sp.MessageType.DBIRTH)) == 2
        assert_consecutive(seqs_since_last_birth(messages))
        log = agent.log_tail(300)
        assert log.count('"rebirth requested by a host"') == 1, log
        assert log.count('"host command refused"') == 2, log  # once per kind: DCMD, NCMD
        assert "read-only" in log


def test_a_killed_agent_dies_with_its_bdseq_and_a_broker_restart_rebirths(
    tmp_path, mosquitto, site
):
    sim = start_simulator(tmp_path, "--no-demo-overload")
    with Tap(mosquitto.port, f"spBv1.0/{site}/#") as tap:
        agent = start_agent(tmp_path, mosquitto.port, sim.port, site)
        try:
            tap.wait(lambda ms: len(of_type(ms, sp.MessageType.DDATA)) >= 3, 30, "data")
            mosquitto.stop()
            try:
                time.sleep(2)
            finally:
                mosquitto.start()
            messages = tap.wait(
                lambda ms: (
                    len(of_type(ms, sp.MessageType.NBIRTH)) >= 2
                    and any(
                        m.is_historical
                        for d in of_type(ms, sp.MessageType.DDATA)
                        for m in d.metrics
                    )
                    and len(of_type(ms, sp.MessageType.DDATA)) >= 30
                ),
                40,
                "a new birth and the outage's readings, historical",
            )
            births = of_type(messages, sp.MessageType.NBIRTH)
            first, second = (sp.node_bdseq(b) for b in births)
            assert first == 0
            assert second is not None
            assert second > first  # one more per CONNECT (refused attempts count too)
            assert_consecutive(seqs_since_last_birth(messages))
        finally:
            agent.kill()
            sim.program.stop()
        messages = tap.wait(
            lambda ms: second in [sp.node_bdseq(d) for d in of_type(ms, sp.MessageType.NDEATH)],
            15,
            "NDEATH of the killed agent's connection",
        )
        # The stopped broker sent the first connection's will (bdSeq 0, maybe twice: a
        # QoS 1 redelivery); the kill, the current one's, last.
        bdseqs = [sp.node_bdseq(d) for d in of_type(messages, sp.MessageType.NDEATH)]
        assert bdseqs[-1] == second
        assert set(bdseqs) == {first, second}


def test_a_publish_a_reconnect_dropped_is_an_mqtt_error_not_a_cancellation(mosquitto):
    """An edge node's client sends nothing of one connection on the next: a message
    queued while disconnected (the NDEATH of a clean stop during an outage, say) is
    dropped at the reconnect, and whoever waits for it hears MqttError, which it can
    handle, not a CancelledError that ends the program (it exited 1 this way)."""

    async def main() -> None:
        settings = BrokerSettings(host="127.0.0.1", port=mosquitto.port, reconnect_max_s=1)
        client = MqttClient(
            settings, f"node-{uuid.uuid4().hex[:6]}", persistent=False, resend_after_reconnect=False
        )
        await client.start()
        try:
            await client.wait_connected(10)
            mosquitto.stop()
            await client.wait_disconnected()
            waiting = asyncio.create_task(client.publish("spBv1.0/s/NDEATH/n", b"x", timeout=30))
            await asyncio.sleep(0.2)
            mosquitto.start()
            with pytest.raises(MqttError, match="dropped: its connection ended"):
                await asyncio.wait_for(waiting, 20)
            assert client.connected
            await client.publish("spBv1.0/s/NDATA/n", b"y", timeout=10)  # the new one works
        finally:
            await client.stop()

    asyncio.run(main())
