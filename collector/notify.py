"""Notify stage: alarm events to the MQTT alarm topic, the log and the alarm timeline."""

from __future__ import annotations

import asyncio

import structlog

from collector.lineproto import encode_alarm
from collector.stats import Stats
from collector.store import Batchable
from derrick.contract import AlarmEvent, AlarmState, alarm_topic
from derrick.mqtt import MqttClient
from derrick.spool import Priority

log = structlog.get_logger(__name__)


async def notify_forever(
    events: asyncio.Queue[AlarmEvent],
    client: MqttClient,
    store_queue: asyncio.Queue[Batchable],
    stats: Stats,
) -> None:
    while True:
        event = await events.get()
        raised = event.state is AlarmState.RAISED
        if raised:
            stats.alarms_raised += 1
        else:
            stats.alarms_cleared += 1
        log.warning(
            f"alarm {event.state.value}",
            rule=event.rule,
            site=event.site,
            asset=event.asset,
            device=event.device,
            priority=event.priority,
            value=round(event.value, 3),
            limit=round(event.limit, 3),
            event_id=event.event_id,
        )
        await store_queue.put(Batchable([encode_alarm(event)], None, Priority.ALARM))
        topic = alarm_topic(event.site, event.asset, event.rule)
        future = client.publish_nowait(topic, event.model_dump_json().encode())
        try:
            await asyncio.wait_for(asyncio.shield(future), 10.0)
        except TimeoutError:
            # paho keeps it and sends it on reconnect; the alarm is not dropped.
            log.warning("alarm not yet acknowledged by broker", event_id=event.event_id)
