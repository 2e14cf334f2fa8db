"""The built-in notification channels: MQTT alarm events and state, InfluxDB journal.

Their senders take the outbox's messages like the configured channels' senders
(:class:`~derrick.wire.payloads.AlarmNotice`, or for the state channels
:class:`~derrick.wire.payloads.AlarmStateMessage`) and raise :class:`DeliveryError` the
same way, so one delivery loop serves them all.
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
    """Publishes a notice (``state``: an alarm state, retained) as JSON, QoS 1, and waits
    for its PUBACK.

    A publish that is not acknowledged in time stays with paho, which sends it again
    after a reconnect; the retry waits for that same publish instead of making a
    second one, so a slow broker does not see the notice twice.
    """

    def __init__(self, client: MqttClient, *, state: bool) -> None:
        self.client = client
        self.state = state
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def send(self, message: AlarmNotice | AlarmStateMessage) -> None:
        payload = message.model_dump_json()
        future = self._waiting.get(payload)
        if future is None or future.cancelled():
            topic, retain = self._topic(message)
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

    def _topic(self, message: AlarmNotice | AlarmStateMessage) -> tuple[str, bool]:
        if self.state:
            assert isinstance(message, AlarmStateMessage), type(message).__name__
            topic = alarm_state_topic(message.site, message.asset, message.device, message.rule)
            return topic, True
        assert isinstance(message, AlarmNotice), type(message).__name__
        return alarm_events_topic(message.site, message.asset), False


class _InfluxSender:
    """Writes one line per message to InfluxDB."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    async def _write(self, line: str) -> None:
        try:
            await self.writer.write([line])
        except DataRejected as exc:
            raise DeliveryError(str(exc), retryable=False) from exc
        except StoreError as exc:
            raise DeliveryError(str(exc), retryable=True) from exc


class JournalSender(_InfluxSender):
    """Writes every notice to InfluxDB as measurement ``alarms`` (the alarm timeline)."""

    async def send(self, notice: AlarmNotice) -> None:
        await self._write(encode_alarm(notice))


class HistorySender(_InfluxSender):
    """Writes every alarm state change to InfluxDB as measurement ``alarm_state``, so a
    dashboard's "state now" is exact even for changes that notify nobody (latching,
    suppression, a shelf ending while the process is normal)."""

    async def send(self, state: AlarmStateMessage) -> None:
        await self._write(encode_alarm_state(state))
