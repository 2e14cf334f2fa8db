"""Whether any collector is online, from their retained statuses (collector.presence).

An agent that annunciates alarms locally while its uplink is down (``alarms.local``,
``when: offline``) takes "no collector online" the same way: the broker is reachable but
nobody there evaluates and announces the alarms, so the site LAN's receiver must hear
them. Read from ``derrick/v1/collectors/+/status`` (retained: the whole picture comes
with the subscription, after every reconnect).

No status heard from any collector - collectors of a version before these statuses, or
a broker whose retained store was lost and none reconnected yet - counts as online:
the agent then behaves as before, by the broker connection alone.
"""

from __future__ import annotations

import structlog
from pydantic import ValidationError

from derrick.mqtt.client import InboundMessage, MqttClient
from derrick.plumbing.configfile import one_line
from derrick.wire.payloads import CollectorStatus
from derrick.wire.topics import COLLECTOR_STATUS_SUBSCRIPTION

log = structlog.get_logger(__name__)

_PREFIX, _, _SUFFIX = COLLECTOR_STATUS_SUBSCRIPTION.partition("+")


class CollectorWatch:
    """The collectors' last said state, by id."""

    subscription = COLLECTOR_STATUS_SUBSCRIPTION

    def __init__(self) -> None:
        self.online: dict[str, bool] = {}

    @property
    def any_online(self) -> bool:
        return not self.online or any(self.online.values())

    def take(self, inbound: InboundMessage) -> bool:
        """Read a collector's status; False when the message is not one."""
        topic = inbound.topic
        if not (topic.startswith(_PREFIX) and topic.endswith(_SUFFIX)):
            return False
        collector = topic[len(_PREFIX) : -len(_SUFFIX)]
        try:
            status = CollectorStatus.model_validate_json(inbound.payload)
        except ValidationError as exc:
            log.warning("collector status unreadable, ignored", topic=topic,
                        reason=one_line(exc))  # fmt: skip
            return True
        before = self.any_online
        self.online[collector] = status.state == "online"
        if self.any_online != before:
            log.warning(
                "collectors online" if self.any_online else "no collector online",
                collector=collector,
                state=status.state,
            )
        return True

    async def follow(self, client: MqttClient) -> None:
        """Read the inbox (an agent that receives nothing else)."""
        while True:
            self.take(await client.inbox.get())
