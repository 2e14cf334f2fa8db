"""The built-in notification channels: MQTT alarm events and state, InfluxDB journal.

They take outbox payloads (JSON) like the configured channels and raise
:class:`DeliveryError` the same way, so one delivery loop serves them all.
"""

from __future__ import annotations

import asyncio

from collector.alarms.channels import DeliveryError
from collector.influx import DataRejected, StoreError, Writer
from collector.lineproto import encode_alarm, encode_alarm_state
from derrick.mqtt.client import MqttClient, MqttError
from derrick.wire.payloads import AlarmNotice, AlarmStateMessage
from derrick.wire.topics import alarm_events_topic, alarm_state_topic

PUBACK_WAIT_S = 10.0


class MqttSender:
    """Publishes a payload (QoS 1) and waits for its PUBACK.

    A publish that is not acknowledged in time stays with paho, which sends it again
    after a reconnect; the retry waits for that same publish instead of making a
    second one, so a slow broker does not see the notice twice.
    """

    def __init__(self, client: MqttClient, *, state: bool) -> None:
        self.client = client
        self.state = state
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def send(self, payload: str) -> None:
        future = self._waiting.get(payload)
        if future is None or future.cancelled():
            topic, retain = self._topic(payload)
            try:
                future = self.client.publish_nowait(topic, payload.encode(), retain=retain)
            except MqttError as exc:
                raise DeliveryError(str(exc), retryable=True) from exc
            self._waiting[payload] = future
        try:
            await asyncio.wait_for(asyncio.shield(future), PUBACK_WAIT_S)
        except TimeoutError as exc:
            raise DeliveryError("broker did not acknowledge yet", retryable=True) from exc
        del self._waiting[payload]

    def _topic(self, payload: str) -> tuple[str, bool]:
        if self.state:
            state = AlarmStateMessage.model_validate_json(payload)
            return alarm_state_topic(state.site, state.asset, state.device, state.rule), True
        notice = AlarmNotice.model_validate_json(payload)
        return alarm_events_topic(notice.site, notice.asset), False


class JournalSender:
    """Writes every notice to InfluxDB as measurement ``alarms`` (the alarm timeline)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    async def send(self, payload: str) -> None:
        line = encode_alarm(AlarmNotice.model_validate_json(payload))
        await self._write(line)

    async def _write(self, line: str) -> None:
        try:
            await self.writer.write([line])
        except DataRejected as exc:
            raise DeliveryError(str(exc), retryable=False) from exc
        except StoreError as exc:
            raise DeliveryError(str(exc), retryable=True) from exc


class HistorySender(JournalSender):
    """Writes every alarm state change to InfluxDB as measurement ``alarm_state``, so a
    dashboard's "state now" is exact even for changes that notify nobody (latching,
    suppression, a shelf ending while the process is normal)."""

    async def send(self, payload: str) -> None:
        await self._write(encode_alarm_state(AlarmStateMessage.model_validate_json(payload)))
