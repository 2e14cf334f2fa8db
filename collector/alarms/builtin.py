"""The built-in notification channels: MQTT alarm events and state, InfluxDB journal.

Their senders take the outbox's messages like the configured channels' senders
(:class:`~derrick.wire.payloads.AlarmNotice`, or for the state channels
:class:`~derrick.wire.payloads.AlarmStateMessage`) and raise :class:`DeliveryError` the
same way, so one delivery loop serves them all.
"""

from __future__ import annotations

import asyncio

from collector.influx import DataRejected, StoreError, Writer
from collector.lineproto import encode_alarm, encode_alarm_state
from derrick.mqtt.client import MqttClient, MqttError
from derrick.notify.settings import DeliveryError
from derrick.wire.payloads import AlarmNotice, AlarmStateMessage
from derrick.wire.topics import alarm_events_topic, alarm_state_topic

PUBACK_WAIT_S = 10.0


class _MqttSender:
    """Publishes a message as JSON, QoS 1, and waits for its PUBACK.

    A publish that is not acknowledged in time stays with paho, which sends it again
    after a reconnect; the retry waits for that same publish instead of making a
    second one, so a slow broker does not see the notice twice.
    """

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def _publish(self, topic: str, payload: str, *, retain: bool) -> None:
        future = self._waiting.get(payload)
        if future is None or future.cancelled():
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


class MqttEventsSender(_MqttSender):
    """Each notice on its asset's ``alarm-events`` topic."""

    async def send(self, notice: AlarmNotice) -> None:
        topic = alarm_events_topic(notice.site, notice.asset)
        await self._publish(topic, notice.model_dump_json(), retain=False)


class MqttStateSender(_MqttSender):
    """Each alarm state, retained on the alarm's own topic."""

    async def send(self, state: AlarmStateMessage) -> None:
        topic = alarm_state_topic(state.site, state.asset, state.device, state.rule)
        await self._publish(topic, state.model_dump_json(), retain=True)


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
