"""Receive and validate stages: broker messages -> store queue and evaluate.

Every message is either stored (and acknowledged after the write) or rejected (logged
with its reason, counted, and acknowledged at once so the broker does not send it again
forever). A bad message never stops the good ones behind it.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from pydantic import ValidationError

from collector.deadletter import DeadLetters
from collector.evaluate import Evaluator
from collector.lineproto import encode_agent_metrics, encode_device_status, encode_telemetry
from collector.sequence import SequenceTracker
from collector.stats import Stats
from collector.store import Batchable
from collector.validate import Rejected, classify, validate
from derrick.contract import AgentMetrics, AlarmEvent, DeviceStatus
from derrick.mqtt import InboundMessage, MqttClient

log = structlog.get_logger(__name__)

TELEMETRY_SUFFIX = "/telemetry"


async def receive_forever(
    client: MqttClient,
    store_queue: asyncio.Queue[Batchable],
    evaluator: Evaluator,
    events: asyncio.Queue[AlarmEvent],
    stats: Stats,
    *,
    dead_letters: DeadLetters | None = None,
    sequences: SequenceTracker | None = None,
) -> None:
    while True:
        inbound = await client.inbox.get()
        stats.messages += 1
        if not inbound.topic.endswith(TELEMETRY_SUFFIX):
            await _receive_health(client, inbound, store_queue, stats, dead_letters)
            continue
        result = validate(inbound.topic, inbound.payload)
        if isinstance(result, Rejected):
            _reject(client, inbound, result, stats, dead_letters)
            continue
        stats.readings += len(result.readings)
        if sequences is not None:
            sequences.observe(result.agent, result.boot, result.seq, time.monotonic())
        for event in evaluator.evaluate(result):
            _queue_event(events, event, stats)
        await store_queue.put(Batchable(encode_telemetry(result), inbound))


async def _receive_health(
    client: MqttClient,
    inbound: InboundMessage,
    store_queue: asyncio.Queue[Batchable],
    stats: Stats,
    dead_letters: DeadLetters | None,
) -> None:
    """Device status and agent metrics: stored as their own measurements."""
    try:
        if inbound.topic.endswith("/metrics"):
            line = encode_agent_metrics(AgentMetrics.model_validate_json(inbound.payload))
        else:
            line = encode_device_status(DeviceStatus.model_validate_json(inbound.payload))
    except ValidationError as exc:
        _reject(client, inbound, classify(inbound.payload, exc), stats, dead_letters)
        return
    await store_queue.put(Batchable([line], inbound))


def _reject(
    client: MqttClient,
    inbound: InboundMessage,
    rejected: Rejected,
    stats: Stats,
    dead_letters: DeadLetters | None,
) -> None:
    """Count, log (never the payload), keep in the dead-letter store, then acknowledge."""
    stats.rejected += 1
    log.warning(
        "message rejected",
        topic=inbound.topic,
        kind=rejected.kind,
        reason=rejected.reason,
        bytes=len(inbound.payload),
    )
    if dead_letters is not None:
        dead_letters.put(inbound.topic, inbound.payload, rejected.kind, rejected.reason)
    client.ack(inbound)


def _queue_event(events: asyncio.Queue[AlarmEvent], event: AlarmEvent, stats: Stats) -> None:
    """Hand an alarm transition to notify; if the broker has been away that long, say so."""
    try:
        events.put_nowait(event)
    except asyncio.QueueFull:
        stats.alarms_dropped += 1
        log.error(
            "alarm queue full, event dropped",
            event_id=event.event_id,
            dropped_total=stats.alarms_dropped,
        )
