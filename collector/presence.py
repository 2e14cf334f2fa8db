"""A collector says whether it is online: a retained status, and its last will.

``derrick/v1/collectors/<id>/status`` holds a :class:`CollectorStatus`: ``online``
after every connect, ``offline`` on a clean stop and, as the broker's last will, when
the collector dies. Agents that annunciate alarms locally (``alarms.local``, when:
offline) take "no collector online" as the uplink being down (agent.presence), and an
operations engineer sees at a glance which collectors run (``mosquitto_sub -t
'derrick/v1/collectors/+/status' -v``).

A session of its own (client id ``<id>-status``, no subscriptions): an MQTT connection
has one will, and the storage session's may be the Sparkplug host's STATE.
"""

from __future__ import annotations

import structlog

from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.wire.payloads import CollectorStatus, now_ns
from derrick.wire.topics import collector_status_topic

log = structlog.get_logger(__name__)


class Presence:
    """The status session; :meth:`announce_forever` runs as a task."""

    def __init__(self, broker: BrokerSettings, collector_id: str) -> None:
        self.collector_id = collector_id
        self.topic = collector_status_topic(collector_id)
        self.client = MqttClient(
            broker, client_id=f"{collector_id}-status", persistent=False, will=self._will
        )

    def _payload(self, state: str) -> bytes:
        status = CollectorStatus(collector=self.collector_id, state=state, ts_ns=now_ns())  # type: ignore[arg-type]
        return status.model_dump_json().encode()

    def _will(self) -> tuple[str, bytes, bool]:
        return self.topic, self._payload("offline"), True

    async def start(self) -> None:
        await self.client.start()

    async def announce_forever(self) -> None:
        """``online``, retained, after every connect."""
        while True:
            await self.client.wait_connected(timeout=float("inf"))
            self.client.publish_nowait(self.topic, self._payload("online"), retain=True)
            await self.client.wait_disconnected()

    async def stop(self) -> None:
        """``offline``, retained, then a clean disconnect (the will is for a crash)."""
        await self.client.stop(final=(self.topic, self._payload("offline")))
