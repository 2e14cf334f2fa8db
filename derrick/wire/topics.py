"""MQTT topic scheme of the wire contract: topic builders, subscriptions, parsing.

Topic scheme (schema version 1)::

    derrick/v1/<site>/<asset>/<device>/telemetry    agent -> collector, QoS 1
    derrick/v1/<site>/<asset>/<device>/status       device up/down, retained
    derrick/v1/<site>/<asset>/<device>/condition    alarm condition changes (edge agent), QoS 1
    derrick/v1/<site>/<asset>/alarm/<device>/<rule> alarm state, retained (collector)
    derrick/v1/<site>/<asset>/alarm-events          alarm notices (collector -> crews)
    derrick/v1/<site>/<asset>/alarm-commands        acknowledge, reset, shelve... (operators)
    derrick/v1/<site>/<asset>/alarm-replies         command results (collector)
    derrick/v1/agents/<agent>/status                agent birth / last will, retained
    derrick/v1/agents/<agent>/metrics               agent health, on an interval
    derrick/v1/agents/<agent>/events                agent notices (store-and-forward drops)

:func:`parse_topic` tells these apart by the number of levels first: a device topic has 6,
an alarm state 7, an asset's alarm streams and an agent's topics 5, where the last level
decides (``alarm-*`` for an asset, ``status``, ``metrics`` or ``events`` under ``agents``).
So ``agents`` need not be a reserved site name: ``derrick/v1/agents/<asset>/<device>/status``
is the status of a device of the site ``agents``, never an agent's status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from derrick.wire.ids import SCHEMA_VERSION

TOPIC_ROOT = f"derrick/v{SCHEMA_VERSION}"


def telemetry_topic(site: str, asset: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{asset}/{device}/telemetry"


TELEMETRY_SUBSCRIPTION = f"{TOPIC_ROOT}/+/+/+/telemetry"


def alarm_state_topic(site: str, asset: str, device: str, rule: str) -> str:
    """Retained :class:`AlarmStateMessage` of one alarm."""
    return f"{TOPIC_ROOT}/{site}/{asset}/alarm/{device}/{rule}"


ALARM_STATE_SUBSCRIPTION = f"{TOPIC_ROOT}/+/+/alarm/+/+"


def alarm_events_topic(site: str, asset: str) -> str:
    """The stream of :class:`AlarmNotice` s of one asset (not retained)."""
    return f"{TOPIC_ROOT}/{site}/{asset}/alarm-events"


ALARM_EVENTS_SUBSCRIPTION = f"{TOPIC_ROOT}/+/+/alarm-events"


def alarm_commands_topic(site: str, asset: str) -> str:
    """:class:`AlarmCommand` s for the alarms of one asset."""
    return f"{TOPIC_ROOT}/{site}/{asset}/alarm-commands"


ALARM_COMMANDS_SUBSCRIPTION = f"{TOPIC_ROOT}/+/+/alarm-commands"


def alarm_replies_topic(site: str, asset: str) -> str:
    """:class:`AlarmCommandResult` s for commands on one asset's alarms."""
    return f"{TOPIC_ROOT}/{site}/{asset}/alarm-replies"


AGENT_STATUS_SUBSCRIPTION = f"{TOPIC_ROOT}/agents/+/status"


def device_status_topic(site: str, asset: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{asset}/{device}/status"


DEVICE_STATUS_SUBSCRIPTION = f"{TOPIC_ROOT}/+/+/+/status"


def condition_topic(site: str, asset: str, device: str) -> str:
    """:class:`ConditionMessage` s of one device: the alarm conditions its agent
    evaluates at the edge (not retained: a stream of changes, spooled like telemetry)."""
    return f"{TOPIC_ROOT}/{site}/{asset}/{device}/condition"


CONDITION_SUBSCRIPTION = f"{TOPIC_ROOT}/+/+/+/condition"


def agent_status_topic(agent: str) -> str:
    return f"{TOPIC_ROOT}/agents/{agent}/status"


def agent_metrics_topic(agent: str) -> str:
    return f"{TOPIC_ROOT}/agents/{agent}/metrics"


AGENT_METRICS_SUBSCRIPTION = f"{TOPIC_ROOT}/agents/+/metrics"


def collector_status_topic(collector: str) -> str:
    """A collector's retained :class:`CollectorStatus` (online; offline as its last
    will and on a clean stop): agents with local channels take "no collector online"
    as the uplink being down."""
    return f"{TOPIC_ROOT}/collectors/{collector}/status"


COLLECTOR_STATUS_SUBSCRIPTION = f"{TOPIC_ROOT}/collectors/+/status"

BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
"""mosquitto's count of messages it dropped since it started (queues full, too large),
published every ``sys_interval``; collectors alarm on a rise (collector.loss)."""


def shared(group: str | None, subscription: str) -> str:
    """``subscription`` as an MQTT shared subscription of ``group`` (None: not shared).

    The broker hands each message to one member of the group, so several collectors
    split the load of one subscription.
    """
    return f"$share/{group}/{subscription}" if group else subscription


def agent_events_topic(agent: str) -> str:
    return f"{TOPIC_ROOT}/agents/{agent}/events"


class TopicError(ValueError):
    """A topic that does not follow the scheme."""


# -- parsing: one typed value per topic kind ------------------------------------------------


@dataclass(frozen=True, slots=True)
class TelemetryTopic:
    kind: ClassVar[str] = "telemetry"
    site: str
    asset: str
    device: str


@dataclass(frozen=True, slots=True)
class DeviceStatusTopic:
    kind: ClassVar[str] = "device status"
    site: str
    asset: str
    device: str


@dataclass(frozen=True, slots=True)
class ConditionTopic:
    kind: ClassVar[str] = "condition"
    site: str
    asset: str
    device: str


@dataclass(frozen=True, slots=True)
class AlarmStateTopic:
    kind: ClassVar[str] = "alarm state"
    site: str
    asset: str
    device: str
    rule: str


@dataclass(frozen=True, slots=True)
class AlarmEventsTopic:
    kind: ClassVar[str] = "alarm events"
    site: str
    asset: str


@dataclass(frozen=True, slots=True)
class AlarmCommandsTopic:
    kind: ClassVar[str] = "alarm commands"
    site: str
    asset: str


@dataclass(frozen=True, slots=True)
class AlarmRepliesTopic:
    kind: ClassVar[str] = "alarm replies"
    site: str
    asset: str


@dataclass(frozen=True, slots=True)
class AgentStatusTopic:
    kind: ClassVar[str] = "agent status"
    agent: str


@dataclass(frozen=True, slots=True)
class AgentMetricsTopic:
    kind: ClassVar[str] = "agent metrics"
    agent: str


@dataclass(frozen=True, slots=True)
class AgentEventsTopic:
    kind: ClassVar[str] = "agent events"
    agent: str


@dataclass(frozen=True, slots=True)
class BrokerDroppedTopic:
    """:data:`BROKER_DROPPED_TOPIC`."""

    kind: ClassVar[str] = "broker drop counter"


Topic = (
    TelemetryTopic
    | DeviceStatusTopic
    | ConditionTopic
    | AlarmStateTopic
    | AlarmEventsTopic
    | AlarmCommandsTopic
    | AlarmRepliesTopic
    | AgentStatusTopic
    | AgentMetricsTopic
    | AgentEventsTopic
    | BrokerDroppedTopic
)
"""What :func:`parse_topic` returns: one class per kind of topic, with its names."""

_ROOT, _VERSION = TOPIC_ROOT.split("/")
_AGENTS = "agents"
_DEVICE_KINDS: dict[str, type[TelemetryTopic | DeviceStatusTopic | ConditionTopic]] = {
    "telemetry": TelemetryTopic,
    "status": DeviceStatusTopic,
    "condition": ConditionTopic,
}
_ASSET_KINDS: dict[str, type[AlarmEventsTopic | AlarmCommandsTopic | AlarmRepliesTopic]] = {
    "alarm-events": AlarmEventsTopic,
    "alarm-commands": AlarmCommandsTopic,
    "alarm-replies": AlarmRepliesTopic,
}
_AGENT_KINDS: dict[str, type[AgentStatusTopic | AgentMetricsTopic | AgentEventsTopic]] = {
    "status": AgentStatusTopic,
    "metrics": AgentMetricsTopic,
    "events": AgentEventsTopic,
}
_BROKER_DROPPED = BrokerDroppedTopic()

# Parsed topics by topic string. A fleet publishes on a bounded set of topics, so nearly
# every message is a lookup; the values are frozen, so sharing them is safe. Only topics
# that parse are kept, and the whole memo is dropped when full (a bound, not an LRU).
_PARSED: dict[str, Topic] = {}
_PARSED_MAX = 65_536


def parse_topic(topic: str) -> Topic:
    """The kind and names of ``topic``, or TopicError naming the topic and why not.

    Runs once per message on the collector's hot path: a topic seen before costs one dict
    lookup. ``BROKER_DROPPED_TOPIC`` is the one topic outside ``derrick/v1`` it knows.
    """
    parsed = _PARSED.get(topic)
    if parsed is None:
        parsed = _parse(topic)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[topic] = parsed
    return parsed


def _parse(topic: str) -> Topic:
    parts = topic.split("/")
    levels = len(parts)
    if levels < 3 or parts[0] != _ROOT or parts[1] != _VERSION:
        if topic == BROKER_DROPPED_TOPIC:
            return _BROKER_DROPPED
        raise _error(topic, f"it does not start with {TOPIC_ROOT}/")
    if "" in parts:
        raise _error(topic, f"level {parts.index('') + 1} is empty")
    last = parts[-1]
    if levels == 6:
        device_kind = _DEVICE_KINDS.get(last)
        if device_kind is not None:
            return device_kind(parts[2], parts[3], parts[4])
        raise _error(topic, f"6 levels end in telemetry, status or condition, not {last!r}")
    if levels == 5:
        asset_kind = _ASSET_KINDS.get(last)
        if asset_kind is not None:
            return asset_kind(parts[2], parts[3])
        agent_kind = _AGENT_KINDS.get(last) if parts[2] == _AGENTS else None
        if agent_kind is not None:
            return agent_kind(parts[3])
        raise _error(
            topic,
            "5 levels are <site>/<asset>/alarm-events, alarm-commands or alarm-replies, "
            "or agents/<agent>/status, metrics or events",
        )
    if levels == 7:
        if parts[4] == "alarm":
            return AlarmStateTopic(parts[2], parts[3], parts[5], parts[6])
        raise _error(topic, f"7 levels are <site>/<asset>/alarm/<device>/<rule>, not {parts[4]!r}")
    raise _error(topic, f"{levels} levels; the scheme has 5, 6 or 7")


def _error(topic: str, why: str) -> TopicError:
    return TopicError(f"topic {topic!r} does not follow the {TOPIC_ROOT} scheme: {why}")
