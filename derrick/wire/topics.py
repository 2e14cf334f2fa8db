"""MQTT topic scheme of the wire contract: topic builders, subscriptions, parsing.

Topic scheme (schema version 1)::

    derrick/v1/<site>/<asset>/<device>/telemetry    agent -> collector, QoS 1
    derrick/v1/<site>/<asset>/<device>/status       device up/down, retained
    derrick/v1/<site>/<asset>/alarm/<device>/<rule> alarm state, retained (collector)
    derrick/v1/<site>/<asset>/alarm-events          alarm notices (collector -> crews)
    derrick/v1/<site>/<asset>/alarm-commands        acknowledge, reset, shelve... (operators)
    derrick/v1/<site>/<asset>/alarm-replies         command results (collector)
    derrick/v1/agents/<agent>/status                agent birth / last will, retained
    derrick/v1/agents/<agent>/metrics               agent health, on an interval
    derrick/v1/agents/<agent>/events                agent notices (store-and-forward drops)
"""

from __future__ import annotations

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


def agent_status_topic(agent: str) -> str:
    return f"{TOPIC_ROOT}/agents/{agent}/status"


def agent_metrics_topic(agent: str) -> str:
    return f"{TOPIC_ROOT}/agents/{agent}/metrics"


AGENT_METRICS_SUBSCRIPTION = f"{TOPIC_ROOT}/agents/+/metrics"

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


def parse_telemetry_topic(topic: str) -> tuple[str, str, str]:
    """Return (site, asset, device) of a telemetry topic, or raise TopicError."""
    parts = topic.split("/")
    if len(parts) != 6 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[5] != "telemetry":
        raise TopicError(f"not a {TOPIC_ROOT} telemetry topic: {topic!r}")
    return parts[2], parts[3], parts[4]
