"""The topic scheme parsed once (derrick.wire.topics.parse_topic), and the collector's
receive stage routing on the parsed value: a site may be named ``agents``."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from fakes import MemoryMqttClient
from hypothesis import given
from hypothesis import strategies as st

from collector.deadletter import DeadLetters, read_dead_letters
from collector.receive import Receiver
from collector.stats import Stats
from collector.store import Batchable
from derrick.mqtt.client import InboundMessage
from derrick.wire import topics
from derrick.wire.payloads import (
    AgentStatus,
    DeviceState,
    DeviceStatus,
    Reading,
    Telemetry,
    now_ns,
)
from derrick.wire.topics import (
    AGENT_METRICS_SUBSCRIPTION,
    AGENT_STATUS_SUBSCRIPTION,
    ALARM_COMMANDS_SUBSCRIPTION,
    ALARM_EVENTS_SUBSCRIPTION,
    ALARM_STATE_SUBSCRIPTION,
    BROKER_DROPPED_TOPIC,
    CONDITION_SUBSCRIPTION,
    DEVICE_STATUS_SUBSCRIPTION,
    TELEMETRY_SUBSCRIPTION,
    AgentEventsTopic,
    AgentMetricsTopic,
    AgentStatusTopic,
    AlarmCommandsTopic,
    AlarmEventsTopic,
    AlarmRepliesTopic,
    AlarmStateTopic,
    BrokerDroppedTopic,
    ConditionTopic,
    DeviceStatusTopic,
    TelemetryTopic,
    TopicError,
    agent_events_topic,
    agent_metrics_topic,
    agent_status_topic,
    alarm_commands_topic,
    alarm_events_topic,
    alarm_replies_topic,
    alarm_state_topic,
    condition_topic,
    device_status_topic,
    parse_topic,
    telemetry_topic,
)

# Names as the contract allows them (derrick.wire.ids.Ident), with the scheme's own words
# drawn often: a site, asset, device, rule or agent may be called any of them.
RESERVED_LOOKING = [
    "agents",
    "alarm",
    "status",
    "telemetry",
    "metrics",
    "events",
    "alarm-events",
    "alarm-commands",
    "alarm-replies",
    "condition",
    "derrick",
    "v1",
]
names = st.one_of(
    st.sampled_from(RESERVED_LOOKING), st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
)

SUBSCRIPTIONS = {
    TelemetryTopic: TELEMETRY_SUBSCRIPTION,
    DeviceStatusTopic: DEVICE_STATUS_SUBSCRIPTION,
    ConditionTopic: CONDITION_SUBSCRIPTION,
    AlarmStateTopic: ALARM_STATE_SUBSCRIPTION,
    AlarmEventsTopic: ALARM_EVENTS_SUBSCRIPTION,
    AlarmCommandsTopic: ALARM_COMMANDS_SUBSCRIPTION,
    AgentStatusTopic: AGENT_STATUS_SUBSCRIPTION,
    AgentMetricsTopic: AGENT_METRICS_SUBSCRIPTION,
}


def matches(subscription: str, topic: str) -> bool:
    """MQTT topic filter matching, for filters of ``+`` only."""
    levels, wanted = topic.split("/"), subscription.split("/")
    return len(levels) == len(wanted) and all(
        want in ("+", level) for want, level in zip(wanted, levels, strict=True)
    )


def assert_round_trip(topic: str, expected: object) -> None:
    parsed = parse_topic(topic)
    assert parsed == expected
    assert type(parsed) is type(expected)
    for kind, subscription in SUBSCRIPTIONS.items():
        assert matches(subscription, topic) is (kind is type(expected)), (subscription, topic)


@given(site=names, asset=names, device=names)
def test_device_topics_round_trip(site, asset, device):
    assert_round_trip(telemetry_topic(site, asset, device), TelemetryTopic(site, asset, device))
    assert_round_trip(
        device_status_topic(site, asset, device), DeviceStatusTopic(site, asset, device)
    )
    assert_round_trip(condition_topic(site, asset, device), ConditionTopic(site, asset, device))


@given(site=names, asset=names, device=names, rule=names)
def test_alarm_state_topics_round_trip(site, asset, device, rule):
    assert_round_trip(
        alarm_state_topic(site, asset, device, rule), AlarmStateTopic(site, asset, device, rule)
    )


@given(site=names, asset=names)
def test_asset_topics_round_trip(site, asset):
    assert_round_trip(alarm_events_topic(site, asset), AlarmEventsTopic(site, asset))
    assert_round_trip(alarm_commands_topic(site, asset), AlarmCommandsTopic(site, asset))
    assert_round_trip(alarm_replies_topic(site, asset), AlarmRepliesTopic(site, asset))


@given(agent=names)
def test_agent_topics_round_trip(agent):
    assert_round_trip(agent_status_topic(agent), AgentStatusTopic(agent))
    assert_round_trip(agent_metrics_topic(agent), AgentMetricsTopic(agent))
    assert_round_trip(agent_events_topic(agent), AgentEventsTopic(agent))


def test_the_broker_drop_counter_is_the_one_topic_outside_the_root():
    assert parse_topic(BROKER_DROPPED_TOPIC) == BrokerDroppedTopic()


def test_a_site_named_agents_is_a_site_not_an_agent():
    """Decided by the number of levels: an agent's status has 5, a device's 6."""
    assert parse_topic("derrick/v1/agents/crane-01/lmi/status") == DeviceStatusTopic(
        "agents", "crane-01", "lmi"
    )
    assert parse_topic("derrick/v1/agents/crane-01/lmi/telemetry") == TelemetryTopic(
        "agents", "crane-01", "lmi"
    )
    assert parse_topic("derrick/v1/agents/crane-01/alarm-commands") == AlarmCommandsTopic(
        "agents", "crane-01"
    )
    assert parse_topic("derrick/v1/agents/gw-01/status") == AgentStatusTopic("gw-01")


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("derrick/v2/yard/crane-01/lmi/telemetry", "it does not start with derrick/v1/"),
        ("telemetry/derrick/v1/yard/crane-01/lmi", "it does not start with derrick/v1/"),
        ("$SYS/broker/load/messages/received", "it does not start with derrick/v1/"),
        ("", "it does not start with derrick/v1/"),
        ("derrick/v1", "it does not start with derrick/v1/"),
        ("derrick/v1/yard//lmi/telemetry", "level 4 is empty"),
        ("derrick/v1/yard/crane-01/lmi/", "level 6 is empty"),
        ("derrick/v1/yard/crane-01/lmi/readings", "6 levels end in telemetry, status or condition"),
        ("derrick/v1/yard/crane-01/status", "5 levels are <site>/<asset>/alarm-events"),
        ("derrick/v1/agents/gw-01/telemetry", "or agents/<agent>/status, metrics or events"),
        ("derrick/v1/yard/crane-01/alarms/lmi/overload", "alarm/<device>/<rule>, not 'alarms'"),
        ("derrick/v1/yard/crane-01", "4 levels; the scheme has 5, 6 or 7"),
        ("derrick/v1/yard/crane-01/lmi/x/y/telemetry", "8 levels; the scheme has 5, 6 or 7"),
    ],
)
def test_a_topic_outside_the_scheme_is_refused_naming_it_and_why(topic, why):
    with pytest.raises(TopicError) as raised:
        parse_topic(topic)
    assert str(raised.value).startswith(f"topic {topic!r} does not follow the derrick/v1 scheme: ")
    assert why in str(raised.value)


def test_parsed_topics_are_frozen_values():
    parsed = parse_topic(telemetry_topic("yard", "crane-01", "lmi"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.site = "other"  # type: ignore[misc]
    assert hash(parsed) == hash(TelemetryTopic("yard", "crane-01", "lmi"))
    assert parsed != DeviceStatusTopic("yard", "crane-01", "lmi")


def test_the_memo_of_parsed_topics_is_bounded(monkeypatch):
    monkeypatch.setattr(topics, "_PARSED", {})
    monkeypatch.setattr(topics, "_PARSED_MAX", 4)
    for n in range(10):
        assert parse_topic(telemetry_topic("yard", f"crane-{n}", "lmi")).asset == f"crane-{n}"
        assert len(topics._PARSED) <= 4
    with pytest.raises(TopicError):
        parse_topic("derrick/v1/x")
    assert "derrick/v1/x" not in topics._PARSED


# -- the receive stage routes on the parsed topic ------------------------------------------


def test_the_storage_session_stores_a_device_status_of_a_site_named_agents(tmp_path):
    ts = now_ns()
    status = DeviceStatus(
        site="agents", asset="crane-01", device="lmi", agent="gw", state=DeviceState.UP, ts_ns=ts
    )
    telemetry = Telemetry(
        site="agents",
        asset="crane-01",
        device="lmi",
        kind="crane",
        agent="gw",
        boot="b",
        seq=1,
        readings=[Reading(tag="t0", value=1.0, ts_ns=ts)],
    )
    agent = AgentStatus(agent="gw", state="online", ts_ns=ts)
    sent = [
        (device_status_topic("agents", "crane-01", "lmi"), status),
        (telemetry_topic("agents", "crane-01", "lmi"), telemetry),
        (agent_status_topic("gw"), agent),
        ("derrick/v1/agents//lmi/status", status),  # outside the scheme: an empty level
    ]

    async def main() -> tuple[Receiver, MemoryMqttClient, list[Batchable]]:
        client = MemoryMqttClient()
        queue: asyncio.Queue[Batchable] = asyncio.Queue()
        letters = DeadLetters(tmp_path / "dl")
        receiver = Receiver(client, queue, Stats(), letters)  # type: ignore[arg-type]
        for mid, (topic, message) in enumerate(sent, start=1):
            payload = message.model_dump_json().encode()
            client.inbox.put_nowait(InboundMessage(topic, payload, 1, mid, False))
        task = asyncio.create_task(receiver.run())
        try:
            async with asyncio.timeout(5):
                while receiver.stats.messages < len(sent) or not client.inbox.empty():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
        finally:
            task.cancel()
        letters.close()
        return receiver, client, [queue.get_nowait() for _ in range(queue.qsize())]

    receiver, client, stored = asyncio.run(main())
    assert [item.message.mid for item in stored] == [1, 2]
    assert stored[0].lines[0].startswith("device_status,asset=crane-01,device=lmi,site=agents ")
    assert stored[1].lines[0].startswith("telemetry,")
    assert client.acked_mids == [3, 4], "agent status goes to the alarms, the bad topic is rejected"
    (letter,) = read_dead_letters(tmp_path / "dl")
    assert letter["kind"] == "topic"
    assert letter["topic"] == "derrick/v1/agents//lmi/status"
    assert "'derrick/v1/agents//lmi/status'" in letter["reason"]
    assert "level 4 is empty" in letter["reason"]
    assert receiver.stats.rejected == 1
