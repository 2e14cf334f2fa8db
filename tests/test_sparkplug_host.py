"""The collector as a Sparkplug B host (collector.sparkplug): the same lines as the JSON
path for the same readings, births and deaths as device and agent state, data held
for a birth, rebirth requests, alias tables kept across a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fakes import MemoryMqttClient

from agent.config import Device
from agent.sparkplug import SparkplugNode
from collector.lineproto import encode_telemetry
from collector.receive import Receiver
from collector.sparkplug import Decoded, Refused, SparkplugHost, Unreadable, field_name
from collector.stats import Stats
from collector.validate import DEFAULT_WINDOW, check_readings, validate
from derrick.mqtt.client import InboundMessage
from derrick.spool.store import Spool
from derrick.wire import sparkplug as sp
from derrick.wire.payloads import (
    ConditionMessage,
    DeviceState,
    EdgeRules,
    Quality,
    Reading,
    Telemetry,
)

T0 = 1_764_800_000_123_000_000


class Client:
    """What SparkplugNode needs of the MQTT client: births are recorded, not sent."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish_nowait(self, topic: str, payload: bytes, **_kw: object) -> None:
        self.sent.append((topic, payload))


def crane(name: str = "lmi") -> Device:
    return Device.model_validate(
        {"name": name, "asset": "crane-01", "profile": "crane", "host": "127.0.0.1"}
    )


def spool(path: Path) -> Spool:
    return Spool(path / "spool.db", 1 << 20, 3600.0)


@pytest.fixture
def node(tmp_path: Path) -> SparkplugNode:
    agent_spool = spool(tmp_path / "agent")
    node = SparkplugNode("site1", "gw-1", [crane()], agent_spool, Client())  # type: ignore[arg-type]
    node.bdseq = 3
    node.state["lmi"] = DeviceState.UP
    return node


def every_kind_of_reading(device: Device) -> list[Reading]:
    """One reading per crane tag, of the register's own type; some bad or stale."""
    readings = []
    for i, reg in enumerate(device.selected_registers):
        ts = T0 + (i % 3) * 1_000_000
        if reg.type in {"bool", "bit"}:
            value: object = i % 2 == 0
        elif reg.type == "float32":
            value = [12.300000190734863, -0.5, 1e6][i % 3]
        elif reg.scale != 1.0:
            value = round(i * 10.1, 1)
        else:
            value = i * 1000
        quality = Quality.GOOD
        if i == 4:
            value, quality = None, Quality.BAD
        if i == 7:
            quality = Quality.STALE
        readings.append(Reading(tag=reg.tag, value=value, unit=reg.unit, quality=quality, ts_ns=ts))  # type: ignore[arg-type]
    return readings


def births(node: SparkplugNode) -> list[tuple[str, bytes]]:
    node.client.sent.clear()  # type: ignore[attr-defined]
    node.births()
    return list(node.client.sent)  # type: ignore[attr-defined]


def host_for(tmp_path: Path, asked: list[str] | None = None) -> SparkplugHost:
    requests = asked if asked is not None else []
    return SparkplugHost(spool(tmp_path / "collector"), lambda topic, _p: requests.append(topic))


def feed(host: SparkplugHost, topic: str, payload: bytes, now_s: float = 0.0):
    parsed = sp.parse_sparkplug_topic(topic)
    assert isinstance(parsed, sp.SparkplugTopic)
    return host.read(parsed, payload, now_s, T0)


def test_the_same_readings_are_the_same_lines_on_both_wires(tmp_path, node):
    device = crane()
    readings = every_kind_of_reading(device)
    json_message = Telemetry(
        site="site1",
        asset="crane-01",
        device="lmi",
        kind="crane",
        agent="gw-1",
        boot="b",
        seq=0,
        readings=readings,
    )
    topic = "derrick/v1/site1/crane-01/lmi/telemetry"
    via_json = validate(topic, json_message.model_dump_json().encode())
    assert isinstance(via_json, Telemetry)

    host = host_for(tmp_path)
    for birth_topic, payload in births(node):
        assert isinstance(feed(host, birth_topic, payload), Decoded)
    data_topic, payload = node.data("lmi", readings)  # type: ignore[misc]
    decoded = feed(host, data_topic, sp.with_seq(payload, 2))
    assert isinstance(decoded, Decoded)
    assert decoded.telemetry is not None
    via_sparkplug = check_readings(decoded.telemetry, DEFAULT_WINDOW, None)
    assert isinstance(via_sparkplug, Telemetry)
    assert encode_telemetry(via_sparkplug) == encode_telemetry(via_json)


def test_births_and_deaths_are_device_and_agent_state(tmp_path, node):
    host = host_for(tmp_path)
    (nbirth_topic, nbirth), (dbirth_topic, dbirth) = births(node)
    born = feed(host, nbirth_topic, nbirth)
    assert isinstance(born, Decoded)
    assert born.agent is not None
    assert (born.agent.agent, born.agent.state, born.agent.site) == ("gw-1", "online", "site1")
    device_born = feed(host, dbirth_topic, dbirth)
    assert isinstance(device_born, Decoded)
    assert [(s.device, s.asset, s.state) for s in device_born.statuses] == [
        ("lmi", "crane-01", DeviceState.UP)
    ]
    stale = sp.encode_node_death(2, T0)  # an older connection's will
    ndeath = sp.sparkplug_topic("site1", sp.MessageType.NDEATH, "gw-1")
    assert feed(host, ndeath, stale) == Decoded()
    died = feed(host, ndeath, sp.encode_node_death(3, T0))
    assert isinstance(died, Decoded)
    assert died.agent is not None
    assert died.agent.state == "offline"
    assert [(s.device, s.state) for s in died.statuses] == [("lmi", DeviceState.DOWN)]


@pytest.mark.parametrize("death", ["NDEATH", "DDEATH"])
def test_data_after_a_death_whose_births_were_missed_is_the_device_up(tmp_path, node, death):
    """Births go at QoS 0: a host away when a node came back (a broker restart) misses
    them, then reads its data. The device it holds down is up again (else its alarms
    stay suppressed), and it asks for the births it missed."""
    asked: list[str] = []
    host = host_for(tmp_path, asked)
    for topic, payload in births(node):
        feed(host, topic, payload)
    if death == "NDEATH":
        dead = sp.sparkplug_topic("site1", sp.MessageType.NDEATH, "gw-1")
        feed(host, dead, sp.encode_node_death(3, T0))
    else:
        dead = sp.sparkplug_topic("site1", sp.MessageType.DDEATH, "gw-1", "lmi")
        feed(host, dead, sp.with_seq(sp.encode_device_death(T0), 2))
    data_topic, payload = node.data("lmi", every_kind_of_reading(crane()))  # type: ignore[misc]
    first = feed(host, data_topic, sp.with_seq(payload, 9), 1.0)
    assert isinstance(first, Decoded)
    assert first.telemetry is not None
    [status] = first.statuses
    assert (status.device, status.asset, status.state) == ("lmi", "crane-01", DeviceState.UP)
    assert "missed" in status.reason
    again = feed(host, data_topic, sp.with_seq(payload, 10), 2.0)
    assert isinstance(again, Decoded)
    assert again.statuses == ()
    assert asked == ["spBv1.0/site1/NCMD/gw-1"]  # once per rebirth_every_s


def test_a_birth_before_the_first_poll_stores_no_readings_its_later_ones_do(tmp_path, node):
    """A node born before its first poll has nothing to say of its tags (null, bad in the
    birth): no reading is stored, as the JSON path sends none. Born after a poll, its
    birth's readings are stored."""
    host = host_for(tmp_path)
    (nbirth_topic, nbirth), (dbirth_topic, dbirth) = births(node)
    feed(host, nbirth_topic, nbirth)
    early = feed(host, dbirth_topic, dbirth)
    assert isinstance(early, Decoded)
    assert early.rows is None  # nothing to store
    assert early.statuses  # the device is up all the same
    node.data("lmi", every_kind_of_reading(crane()))  # a poll: the next birth carries it
    (_, nbirth), (_, dbirth) = births(node)
    feed(host, nbirth_topic, nbirth)
    later = feed(host, dbirth_topic, dbirth)
    assert isinstance(later, Decoded)
    assert later.telemetry is not None
    assert {r.tag for r in later.telemetry.readings} == {
        r.tag for r in every_kind_of_reading(crane()) if r.value is not None
    }


def test_data_before_its_birth_asks_for_a_rebirth_once_and_waits(tmp_path, node):
    asked: list[str] = []
    host = host_for(tmp_path, asked)
    data_topic, payload = node.data("lmi", every_kind_of_reading(crane()))  # type: ignore[misc]
    for now in (0.0, 1.0):
        outcome = feed(host, data_topic, sp.with_seq(payload, 5), now)
        assert isinstance(outcome, Unreadable)
        assert "no DBIRTH" in outcome.why
    assert asked == ["spBv1.0/site1/NCMD/gw-1"]  # once per rebirth_every_s
    inbound = InboundMessage(data_topic, payload, 1, 7, False, False)
    assert host.hold(inbound, 0.0, "no birth")
    assert host.expired(10.0) == []
    (_, dbirth_topic_payload) = births(node)
    assert isinstance(feed(host, *dbirth_topic_payload), Decoded)
    assert host.released("site1", "gw-1", "lmi") == [inbound]
    assert host.held == 0


def test_held_data_without_a_birth_expires_with_the_reason(tmp_path):
    host = SparkplugHost(None, lambda *_a: None, hold_s=5.0)
    inbound = InboundMessage("spBv1.0/s/DDATA/n/d", b"", 1, 7, False, False)
    host.hold(inbound, 0.0, "no DBIRTH of d seen yet")
    assert host.expired(4.9) == []
    ((message, why),) = host.expired(5.0)
    assert message is inbound
    assert why == "no DBIRTH of d seen yet within 5 s"


def test_a_sequence_gap_not_filled_in_time_asks_for_a_rebirth(tmp_path, node):
    asked: list[str] = []
    host = SparkplugHost(None, lambda topic, _p: asked.append(topic), reorder_s=2.0)
    for topic, payload in births(node):
        feed(host, topic, payload)
    data_topic, payload = node.data("lmi", every_kind_of_reading(crane()))  # type: ignore[misc]
    feed(host, data_topic, sp.with_seq(payload, 2), 0.0)
    feed(host, data_topic, sp.with_seq(payload, 4), 0.5)  # 3 is missing
    assert asked == []
    feed(host, data_topic, sp.with_seq(payload, 5), 1.0)
    assert asked == []
    feed(host, data_topic, sp.with_seq(payload, 6), 2.6)
    assert asked == ["spBv1.0/site1/NCMD/gw-1"]


def test_alias_tables_outlive_a_collector_restart(tmp_path, node):
    host = host_for(tmp_path)
    for topic, payload in births(node):
        feed(host, topic, payload)
    host.spool.close()  # type: ignore[union-attr]
    restarted = host_for(tmp_path)
    data_topic, payload = node.data("lmi", every_kind_of_reading(crane()))  # type: ignore[misc]
    decoded = feed(restarted, data_topic, sp.with_seq(payload, 9))
    assert isinstance(decoded, Decoded)
    assert decoded.telemetry is not None
    assert decoded.telemetry.asset == "crane-01"
    # ...and which devices an NDEATH takes down, and which bdSeq is current
    ndeath = sp.sparkplug_topic("site1", sp.MessageType.NDEATH, "gw-1")
    assert feed(restarted, ndeath, sp.encode_node_death(2, T0)) == Decoded()  # stale
    died = feed(restarted, ndeath, sp.encode_node_death(3, T0))
    assert isinstance(died, Decoded)
    assert [(s.device, s.state) for s in died.statuses] == [("lmi", DeviceState.DOWN)]


def test_a_third_party_names_become_field_keys_and_bad_ids_are_refused(tmp_path):
    assert field_name("Inputs/Temperature") == "Inputs.Temperature"
    assert field_name("Motor speed (rpm)") == "Motor_speed__rpm_"
    assert field_name("ok_name-1.2") == "ok_name-1.2"
    host = SparkplugHost(None, lambda *_a: None)
    birth = sp.pb.Payload(timestamp=T0 // 1_000_000, seq=1)
    birth.metrics.add(name="Inputs/Temperature", alias=1, datatype=10, double_value=20.5)
    decoded = feed(host, "spBv1.0/plant/DBIRTH/edge1/sensor1", birth.SerializeToString())
    assert isinstance(decoded, Decoded)
    assert decoded.telemetry is not None
    assert [(r.tag, r.value) for r in decoded.telemetry.readings] == [("Inputs.Temperature", 20.5)]
    refused = feed(host, "spBv1.0/plant/DBIRTH/edge 1/sensor1", birth.SerializeToString())
    assert isinstance(refused, Refused)
    assert "'edge 1' is not usable" in refused.reason
    garbage = feed(host, "spBv1.0/plant/DDATA/edge1/sensor1", b"\xff\xff")
    assert isinstance(garbage, Refused)
    assert garbage.kind == "schema"


def test_the_rules_an_agent_evaluates_itself_travel_in_its_nbirth(tmp_path):
    edge = [EdgeRules(asset="crane-01", device="lmi", rules=["hook_overload", "wind_high"])]
    node = SparkplugNode(
        "site1",
        "gw-1",
        [crane()],
        spool(tmp_path / "agent"),
        Client(),  # type: ignore[arg-type]
        properties=lambda: {sp.EDGE: json.dumps([e.model_dump(mode="json") for e in edge])},
    )
    host = SparkplugHost(None, lambda *_a: None)
    nbirth_topic, nbirth = births(node)[0]
    born = feed(host, nbirth_topic, nbirth)
    assert isinstance(born, Decoded)
    assert born.agent is not None
    assert born.agent.edge == edge
    garbled = sp.encode_node_birth(0, T0, 0, {sp.EDGE: "[{"})
    born = feed(host, nbirth_topic, garbled)
    assert isinstance(born, Decoded)
    assert born.agent is not None
    assert born.agent.edge == []  # unreadable: the collector evaluates everything


# --- edge alarm conditions in DDATA ----------------------------------------------------------

RULES = {"lmi": ["crane_overload", "wind_high"]}


def change(state: str, rule: str = "crane_overload", **fields: object) -> ConditionMessage:
    values: dict[str, object] = {
        "site": "site1",
        "asset": "crane-01",
        "device": "lmi",
        "kind": "crane",
        "agent": "gw-1",
        "boot": "b0",
        "seq": 4,
        "rule": rule,
        "type": "high",
        "state": state,
        "priority": "critical",
        "ts_ns": T0 + 123_456,  # not a whole ms: the exact time travels too
    }
    return ConditionMessage.model_validate(values | fields)


CHANGES = [
    change("active", value=118.25, limit=110.0, message="load 118 % of SWL", latched=True),
    change("suppressed", value=-7, limit=-5.5, seq=5),
    change("cleared", value=None, limit=None, type="", seq=6),
    change("episode", value=101.0, peak=131.5, since_ns=T0 - 5_000_000_123, seq=7),
    change("active", rule="wind_high", value="gusting", priority="low", seq=8),
    change("active", rule="wind_high", value=True, seq=9),
    change("active", rule="wind_high", value=-(2**40), seq=10),
]


def edge_node(path: Path, rules: dict[str, list[str]] | None = None) -> SparkplugNode:
    node = SparkplugNode(
        "site1",
        "gw-1",
        [crane()],
        spool(path / "agent"),
        Client(),  # type: ignore[arg-type]
        rules=lambda: RULES if rules is None else rules,
    )
    node.state["lmi"] = DeviceState.UP
    return node


def condition_metrics(payload: bytes) -> dict[str, sp.pb.Payload.Metric]:
    message = sp.decode_payload(payload)
    return {m.name: m for m in message.metrics if m.name.startswith(sp.ALARMS_FOLDER)}


def test_edge_conditions_are_born_with_their_device_and_read_back_whole(tmp_path):
    node = edge_node(tmp_path)
    host = host_for(tmp_path)
    sent = births(node)
    [(dbirth_topic, dbirth)] = [(t, p) for t, p in sent if "/DBIRTH/" in t]
    born = condition_metrics(dbirth)
    assert sorted(born) == ["Alarms/crane_overload", "Alarms/wind_high"]
    for metric in born.values():
        assert metric.datatype == sp.MetricType.BOOLEAN
        assert metric.is_null, "not known yet"
        assert sp.metric_properties(metric) == {"Derrick": "condition"}
    for topic, payload in sent:
        birth = feed(host, topic, payload)
        assert isinstance(birth, Decoded)
        assert birth.conditions == ()
        if birth.telemetry is not None:
            assert not {r.tag for r in birth.telemetry.readings} & {"Alarms.crane_overload"}
    for seq, message in enumerate(CHANGES, start=1):
        topic, payload = node.condition(message)
        assert topic == "spBv1.0/site1/DDATA/gw-1/lmi"
        decoded = feed(host, topic, sp.with_seq(payload, seq))
        assert decoded == Decoded(conditions=(message,)), message.state
    # a change replayed after an outage is historical, the same otherwise
    topic, payload = node.condition(CHANGES[0])
    replayed = node.stamp(topic, payload, historical=True)
    assert replayed is not None
    decoded = feed(host, topic, replayed)
    assert isinstance(decoded, Decoded)
    assert decoded.conditions == (CHANGES[0].model_copy(update={"historical": True}),)
    # the next birth says what holds now (the last change of each rule)
    node.condition(CHANGES[2])
    values = {name: m.boolean_value for name, m in condition_metrics(births(node)[1][1]).items()}
    assert values == {"Alarms/crane_overload": False, "Alarms/wind_high": True}
    assert dbirth_topic == births(node)[1][0]


def test_a_rule_new_to_the_node_is_born_before_its_first_change_and_kept(tmp_path):
    node = edge_node(tmp_path, rules={})
    births(node)
    node.client.sent.clear()  # type: ignore[attr-defined]
    topic, payload = node.condition(change("active"))
    [(dbirth_topic, dbirth)] = node.client.sent  # type: ignore[attr-defined]
    assert "/DBIRTH/" in dbirth_topic
    born = condition_metrics(dbirth)["Alarms/crane_overload"]
    [data] = sp.decode_payload(payload).metrics
    assert data.alias == born.alias
    assert (data.boolean_value, born.boolean_value) == (True, True)
    # an agent restarted on the same spool: the same alias, and a stored change replays
    node.spool.close()
    again = SparkplugNode("site1", "gw-1", [crane()], spool(tmp_path / "agent"), Client())  # type: ignore[arg-type]
    assert again.conditions["lmi"]["crane_overload"].alias == born.alias
    replayed = again.stamp(topic, payload, historical=True)
    assert replayed is not None
    assert [m.alias for m in sp.decode_payload(replayed).metrics] == [born.alias]


def test_condition_tables_outlive_a_collector_restart(tmp_path):
    node = edge_node(tmp_path)
    host = host_for(tmp_path)
    for topic, payload in births(node):
        feed(host, topic, payload)
    host.spool.close()  # type: ignore[union-attr]
    topic, payload = node.condition(CHANGES[3])
    decoded = feed(host_for(tmp_path), topic, sp.with_seq(payload, 1))
    assert decoded == Decoded(conditions=(CHANGES[3],))


def test_an_unreadable_condition_is_refused_naming_its_rule_and_property(tmp_path):
    node = edge_node(tmp_path)
    host = host_for(tmp_path)
    for topic, payload in births(node):
        feed(host, topic, payload)
    topic, payload = node.condition(CHANGES[0])
    message = sp.decode_payload(payload)
    props = message.metrics[0].properties
    props.values[list(props.keys).index("State")].string_value = "melted"
    refused = feed(host, topic, message.SerializeToString())
    assert isinstance(refused, Refused)
    assert refused.kind == "schema"
    assert "condition 'crane_overload': State:" in refused.reason


def test_a_third_partys_alarms_folder_is_readings(tmp_path):
    host = SparkplugHost(None, lambda *_a: None)
    birth = sp.pb.Payload(timestamp=T0 // 1_000_000)
    birth.metrics.add(name="Alarms/HighTemp", alias=1, datatype=11, boolean_value=True)
    decoded = feed(host, "spBv1.0/plant/DBIRTH/edge1/oven", birth.SerializeToString())
    assert isinstance(decoded, Decoded)
    assert decoded.conditions == ()
    assert decoded.telemetry is not None
    assert [(r.tag, r.value) for r in decoded.telemetry.readings] == [("Alarms.HighTemp", True)]


class Alarms:
    """What the receive stage gives an alarm service, recorded."""

    def __init__(self) -> None:
        self.conditions: list[ConditionMessage] = []

    def evaluates(self, _site: str, _asset: str) -> bool:
        return True

    def observe_condition(self, message: ConditionMessage) -> None:
        self.conditions.append(message)

    def observe_telemetry(self, _message: object) -> None: ...

    def observe_device(self, _message: object) -> None: ...

    def observe_agent(self, _message: object) -> None: ...


@pytest.mark.parametrize("session", ["storage", "alarm"])
def test_the_receive_stage_gives_conditions_to_the_alarms_then_acknowledges(tmp_path, session):
    """A collector alone feeds its alarms from the storage session; one of a group from
    its alarm session. A change outside the time window is dead-lettered, not applied."""
    node = edge_node(tmp_path)
    old = change("active", ts_ns=T0 - 40 * 365 * 86_400 * 10**9)  # 1985: out of the window
    alarms = Alarms()

    async def main() -> int:
        client = MemoryMqttClient()
        receiver = Receiver(
            client,  # type: ignore[arg-type]
            asyncio.Queue(),
            Stats(),
            alarms=alarms if session == "storage" else None,  # type: ignore[arg-type]
            sparkplug=host_for(tmp_path),
            alarm_sparkplug=host_for(tmp_path / "alarm") if session == "alarm" else None,
        )
        wire = [*births(node), node.condition(CHANGES[0]), node.condition(old)]
        for seq, (topic, payload) in enumerate(wire):
            client.deliver(topic, sp.with_seq(payload, seq))
        if session == "storage":
            task = asyncio.create_task(receiver.run())
        else:
            task = asyncio.create_task(receiver.feed_alarms(client, alarms))  # type: ignore[arg-type]
        async with asyncio.timeout(5):
            while sum("/DDATA/" in m.topic for m in client.acked) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return receiver.stats.rejected

    rejected = asyncio.run(main())
    assert alarms.conditions == [CHANGES[0]]
    assert rejected == (1 if session == "storage" else 0)  # the alarm session leaves it
