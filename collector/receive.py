"""Receive and validate stages: broker messages -> store queue, and the alarm service.

Every message is either stored (and acknowledged after the write) or rejected (logged
with its reason, counted, and acknowledged at once so the broker does not send it again
forever). A bad message never stops the good ones behind it.

Alarm inputs take one of two paths. A collector alone (no ``collector.group``) gives
the alarm service the telemetry it validates for storage. In a shared-subscription
group each collector sees only a share of the stream, so a second MQTT session reads
the whole stream for alarms (:func:`alarm_feed_forever`) and skips, before parsing,
every asset this collector does not own.
"""

from __future__ import annotations

import asyncio
import re
import time

import structlog
from pydantic import ValidationError

from collector.alarms.service import AlarmService
from collector.deadletter import DeadLetters
from collector.lineproto import encode_agent_metrics, encode_device_status, encode_telemetry
from collector.sequence import SequenceTracker
from collector.stats import Stats
from collector.store import Batchable
from collector.validate import Rejected, classify, validate
from derrick.contract import (
    TOPIC_ROOT,
    AgentMetrics,
    AgentStatus,
    AlarmCommand,
    DeviceStatus,
    alarm_replies_topic,
)
from derrick.mqtt import InboundMessage, MqttClient, MqttError

log = structlog.get_logger(__name__)

TELEMETRY_SUFFIX = "/telemetry"
COMMANDS_SUFFIX = "/alarm-commands"
AGENTS_PREFIX = f"{TOPIC_ROOT}/agents/"


async def receive_forever(
    client: MqttClient,
    store_queue: asyncio.Queue[Batchable],
    alarms: AlarmService | None,
    stats: Stats,
    *,
    dead_letters: DeadLetters | None = None,
    sequences: SequenceTracker | None = None,
) -> None:
    """The storage stream; ``alarms`` set when this session also feeds the alarms."""
    while True:
        inbound = await client.inbox.get()
        stats.messages += 1
        topic = inbound.topic
        if not topic.endswith(TELEMETRY_SUFFIX):
            await _receive_other(client, inbound, store_queue, stats, dead_letters, alarms)
            continue
        result = validate(topic, inbound.payload)
        if isinstance(result, Rejected):
            _reject(client, inbound, result, stats, dead_letters)
            continue
        stats.readings += len(result.readings)
        if sequences is not None:
            sequences.observe(result.agent, result.boot, result.seq, time.monotonic())
        if alarms is not None:
            alarms.observe_telemetry(result)
        await store_queue.put(Batchable(encode_telemetry(result), inbound))


async def alarm_feed_forever(
    client: MqttClient,
    alarms: AlarmService,
    stats: Stats,
    dead_letters: DeadLetters | None = None,
    sequences: SequenceTracker | None = None,
) -> None:
    """The alarm session of a collector in a group: the whole stream, owned assets only.

    Each message is acknowledged once the alarm state it changed is saved (the service
    commits before it returns), so a killed collector misses no alarm input either.
    Seeing the whole stream, it also keeps the sequence accounting of the agents this
    collector owns (by the same hash, on ``agents/<agent>``), so a group counts every
    agent's gaps and duplicates once.
    """
    while True:
        inbound = await client.inbox.get()
        topic = inbound.topic
        if topic.endswith(TELEMETRY_SUFFIX):
            if sequences is not None:
                _count_sequence(inbound.payload, alarms, sequences)
            parts = topic.split("/")
            if len(parts) == 6 and not alarms.owns(parts[2], parts[3]):
                client.ack(inbound)
                continue
            result = validate(topic, inbound.payload)
            if isinstance(result, Rejected):  # the storage session dead-letters it
                client.ack(inbound)
                continue
            alarms.observe_telemetry(result)
            client.ack(inbound)
        elif topic.endswith("/status") and not topic.startswith(AGENTS_PREFIX):
            try:
                status = DeviceStatus.model_validate_json(inbound.payload)
            except ValidationError:  # the storage session dead-letters it
                client.ack(inbound)
                continue
            alarms.observe_device(status)
            client.ack(inbound)
        else:
            await _receive_alarm_topic(client, inbound, stats, dead_letters, alarms)


# The agent writes these three fields in this order (derrick.contract.Telemetry), so
# the numbers can be read without parsing a message whose asset another collector owns.
_SEQUENCE = re.compile(rb'"agent":"([A-Za-z0-9_.-]+)","boot":"([^"\\]{1,64})","seq":(\d+)')
_SEQUENCE_WINDOW = 600  # bytes from the start of the payload where they are


def _count_sequence(payload: bytes, alarms: AlarmService, sequences: SequenceTracker) -> None:
    found = _SEQUENCE.search(payload, 0, _SEQUENCE_WINDOW)
    if found is None:
        return
    agent = found[1].decode()
    if alarms.owns("agents", agent):
        sequences.observe(agent, found[2].decode(), int(found[3]), time.monotonic())


async def _receive_other(  # noqa: PLR0917
    client: MqttClient,
    inbound: InboundMessage,
    store_queue: asyncio.Queue[Batchable],
    stats: Stats,
    dead_letters: DeadLetters | None,
    alarms: AlarmService | None,
) -> None:
    """Device status and agent metrics are stored; agent status and commands go to
    the alarms."""
    topic = inbound.topic
    if topic.endswith(COMMANDS_SUFFIX) or (topic.startswith(AGENTS_PREFIX) and topic.endswith(
        "/status"
    )):
        await _receive_alarm_topic(client, inbound, stats, dead_letters, alarms)
        return
    try:
        if topic.endswith("/metrics"):
            line = encode_agent_metrics(AgentMetrics.model_validate_json(inbound.payload))
        else:
            status = DeviceStatus.model_validate_json(inbound.payload)
            line = encode_device_status(status)
            if alarms is not None:
                alarms.observe_device(status)
    except ValidationError as exc:
        _reject(client, inbound, classify(inbound.payload, exc), stats, dead_letters)
        return
    await store_queue.put(Batchable([line], inbound))


async def _receive_alarm_topic(
    client: MqttClient,
    inbound: InboundMessage,
    stats: Stats,
    dead_letters: DeadLetters | None,
    alarms: AlarmService | None,
) -> None:
    """Agent birth / last will, and operator commands."""
    topic = inbound.topic
    model = AlarmCommand if topic.endswith(COMMANDS_SUFFIX) else AgentStatus
    try:
        message = model.model_validate_json(inbound.payload)
    except ValidationError as exc:
        _reject(client, inbound, classify(inbound.payload, exc), stats, dead_letters)
        return
    if alarms is not None:
        if isinstance(message, AgentStatus):
            alarms.observe_agent(message)
        else:
            _command(client, topic, message, alarms)
    client.ack(inbound)


def _command(client: MqttClient, topic: str, command: AlarmCommand, alarms: AlarmService) -> None:
    """Run an operator command from MQTT; the owner answers on the reply topic."""
    parts = topic.split("/")
    site, asset = parts[2], parts[3]
    if not alarms.owns(site, asset):
        return  # the owner of this asset answers
    status, result = alarms.command(command)
    if status == 421:
        log.warning("alarm command for another asset", topic=topic, alarm_id=command.alarm_id)
    try:
        client.publish_nowait(alarm_replies_topic(site, asset), result.model_dump_json().encode())
    except MqttError as exc:
        log.warning("command reply not sent", alarm_id=command.alarm_id, reason=str(exc))


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
