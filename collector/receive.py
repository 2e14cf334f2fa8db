"""Receive and validate stages: broker messages -> store queue, and the alarm service.

Every message is either stored (and acknowledged after the write) or rejected (logged
with its reason, counted, dead-lettered, and acknowledged at once so the broker does not
send it again forever). A bad message never stops the good ones behind it:

* what the contract refuses is rejected with the reason (:mod:`collector.validate`);
* an unexpected exception while handling one message dead-letters *that message* as
  kind ``internal``, with the exception, and the stage goes on;
* a message the broker sends again (DUP) is counted in the redelivery ledger first, and
  set aside as ``poison`` once it has come ``ingest.max_deliveries`` times without being
  stored or rejected: it killed the collector each time (:mod:`collector.redelivery`).

Alarm inputs take one of two paths. A collector alone (no ``collector.group``) gives
the alarm service the telemetry it validates for storage. In a shared-subscription
group each collector sees only a share of the stream, so a second MQTT session reads
the whole stream for alarms (:func:`Receiver.feed_alarms`) and skips, before parsing,
every asset this collector does not own. An alarm evaluation that raises is logged and
counted; the message is still stored.

Each session parses a message's topic once (:func:`derrick.wire.topics.parse_topic`) and
routes on its kind; the storage session rejects a topic outside the scheme as kind
``topic``.

Sparkplug B (``spBv1.0/...``) is read by :class:`collector.sparkplug.SparkplugHost`
into the same messages, then checked, stored and fed to the alarms like JSON telemetry
(the storage session; see that module for births, held data and rebirth requests).

Lost messages (:mod:`collector.loss`): the broker's drop counter (``$SYS``) and agent
metrics reporting an empty spool while messages of theirs are missing raise the
built-in loss alarms (or, without alarm rules, an error in the log).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial

import structlog
from pydantic import ValidationError

from collector.alarms.authority import CommandAuthority, redacted
from collector.alarms.service import AlarmService
from collector.deadletter import DeadLetters
from collector.fieldtypes import FieldTypes
from collector.lineproto import encode_agent_metrics, encode_device_status, encode_telemetry
from collector.loss import LossWatch
from collector.redelivery import Redeliveries
from collector.sequence import SequenceTracker
from collector.sparkplug import Decoded, Refused, SparkplugHost, Unreadable
from collector.stats import Stats
from collector.store import Batchable
from collector.validate import (
    DEFAULT_WINDOW,
    Rejected,
    Window,
    check_condition,
    check_rows,
    classify,
    read_telemetry,
    validate_condition,
    validate_telemetry,
)
from derrick.alarms.engine import ConditionChange
from derrick.mqtt.client import InboundMessage, MqttClient, MqttError
from derrick.wire import sparkplug as sp
from derrick.wire.payloads import (
    AgentMetrics,
    AgentStatus,
    AlarmCommand,
    AlarmCommandResult,
    ConditionMessage,
    DeviceStatus,
    Telemetry,
    now_ns,
)
from derrick.wire.topics import (
    AgentMetricsTopic,
    AgentStatusTopic,
    AlarmCommandsTopic,
    BrokerDroppedTopic,
    ConditionTopic,
    DeviceStatusTopic,
    TelemetryTopic,
    Topic,
    TopicError,
    alarm_replies_topic,
    parse_topic,
)

log = structlog.get_logger(__name__)

TOPIC = "topic"  # the collector.validate kind of a topic outside the scheme
_SPARKPLUG = sp.NAMESPACE + "/"
INTERNAL = "internal"
POISON = "poison"
MAX_REASON = 300


@dataclass
class Receiver:
    """The receive and validate stages of one collector (both MQTT sessions)."""

    client: MqttClient
    store_queue: asyncio.Queue[Batchable]
    stats: Stats
    dead_letters: DeadLetters | None = None
    alarms: AlarmService | None = None
    """Set when the storage session also feeds the alarms (a collector alone)."""
    sequences: SequenceTracker | None = None
    """Gaps and duplicates of every agent; fed by the session that sees whole streams."""
    storage_tracks: bool = True
    """The storage session feeds ``sequences`` (False: an alarm session of a group does)."""
    window: Window = DEFAULT_WINDOW
    fields: FieldTypes | None = None
    redeliveries: Redeliveries | None = None
    losses: LossWatch | None = None
    """Turns drop counters and certain gaps into loss alarms; None: not watched."""
    loss_settle_s: float = 5.0
    loss_alarms: AlarmService | None = None
    """Where loss conditions go (either session's alarm service)."""
    sparkplug: SparkplugHost | None = None
    """Reads Sparkplug B edge nodes; None: their topics are not subscribed."""
    alarm_sparkplug: SparkplugHost | None = None
    """The alarm session's own reader of them (a group: it sees every node's stream)."""
    authority: CommandAuthority | None = None
    """Vets operator commands (collector.alarms.authority); None: taken as they come."""

    def __post_init__(self) -> None:
        self._alarm_failure = ""

    async def run(self) -> None:
        """The storage stream: every message stored or rejected, in arrival order."""
        await self._guarded(self.client, self._handle, counted=True)

    async def feed_alarms(self, client: MqttClient, alarms: AlarmService) -> None:
        """The alarm session of a collector in a group: the whole stream, owned assets only.

        Each message is acknowledged once the alarm state it changed is saved (the service
        commits before it returns), so a killed collector misses no alarm input either.
        Seeing the whole stream, it also keeps the sequence accounting of the agents this
        collector owns (by the same hash, on ``agents/<agent>``), so a group counts every
        agent's gaps and duplicates once.
        """

        async def handle(inbound: InboundMessage) -> None:
            if inbound.topic.startswith(_SPARKPLUG):
                self._sparkplug_alarms(client, inbound, alarms)
            else:
                await self._feed_one(client, inbound, alarms)

        await self._guarded(client, handle, counted=False)

    # -- the guard ----------------------------------------------------------------------

    async def _guarded(
        self,
        client: MqttClient,
        handle: Callable[[InboundMessage], Awaitable[None]],
        *,
        counted: bool,
    ) -> None:
        """Hand each message to ``handle``, which acknowledges it as its last step; if it
        raises (before that step), the message is dead-lettered and acknowledged here.
        ``counted``: the storage session counts messages; the alarm session sees them
        again."""
        while True:
            inbound = await client.inbox.get()
            if counted:
                self.stats.messages += 1
            if inbound.dup and self._poisoned(client, inbound):
                continue
            try:
                await handle(inbound)
            except Exception as exc:  # noqa: BLE001 - one message must not stop ingest
                self._internal(client, inbound, exc)
            self.stats.progress_receive = time.monotonic()

    def _poisoned(self, client: MqttClient, inbound: InboundMessage) -> bool:
        self.stats.redelivered += 1
        if self.redeliveries is None:
            return False
        deliveries = self.redeliveries.count(client.client_id, inbound.topic, inbound.payload)
        if deliveries < self.redeliveries.max_deliveries:
            return False
        self.stats.poison += 1
        reason = (
            f"delivered {deliveries} times without being stored or rejected: the collector "
            "stopped while handling it each time (ingest.max_deliveries "
            f"{self.redeliveries.max_deliveries})"
        )
        self._reject(client, inbound, Rejected(reason, POISON))
        return True

    def _internal(self, client: MqttClient, inbound: InboundMessage, exc: Exception) -> None:
        """Handling raised: dead-letter this message with the exception, acknowledge it."""
        self.stats.internal_errors += 1
        detail = f"{type(exc).__name__}: {exc}"[:MAX_REASON]
        log.error(
            "message handling failed, dead-lettered",
            topic=inbound.topic,
            error=detail,
            exc_info=exc,
        )
        self._reject(client, inbound, Rejected(f"collector error: {detail}", INTERNAL), quiet=True)

    # -- the storage session -----------------------------------------------------------

    async def _handle(self, inbound: InboundMessage) -> None:
        if inbound.topic.startswith(_SPARKPLUG):
            await self._sparkplug(inbound)
            return
        try:
            topic = parse_topic(inbound.topic)
        except TopicError as exc:
            self._reject(self.client, inbound, Rejected(str(exc), TOPIC))
            return
        match topic:
            case TelemetryTopic():
                await self._telemetry(inbound, topic)
            case DeviceStatusTopic() | AgentMetricsTopic():
                await self._status_or_metrics(inbound, topic)
            case AgentStatusTopic() | AlarmCommandsTopic():
                self._alarm_topic(self.client, inbound, topic, self.alarms)
            case ConditionTopic():
                tracks = self.storage_tracks
                self._condition(self.client, inbound, topic, self.alarms, lambda _agent: tracks)
            case BrokerDroppedTopic():
                self._broker_drops(self.client, inbound)
            case _:
                self._reject(self.client, inbound, _not_read(inbound, topic))

    async def _telemetry(self, inbound: InboundMessage, topic: TelemetryTopic) -> None:
        result = read_telemetry(topic, inbound.payload, self.window, self.fields)
        if isinstance(result, Rejected):
            self._reject(self.client, inbound, result)
            return
        lines = encode_telemetry(result)
        self.stats.readings += len(result.rows)
        if self.storage_tracks and self.sequences is not None:
            self.sequences.observe(result.agent, result.boot, result.seq, time.monotonic())
        if self.alarms is not None:
            self._evaluate(inbound.topic, self.alarms.observe_telemetry, result.telemetry())
        await self.store_queue.put(Batchable(lines, inbound))

    async def _sparkplug(self, inbound: InboundMessage) -> None:
        """An edge node's message: read by the host, then stored like JSON telemetry;
        one that waits for its device's birth is held, unacknowledged."""
        try:
            topic = sp.parse_sparkplug_topic(inbound.topic)
        except TopicError as exc:
            self._reject(self.client, inbound, Rejected(str(exc), TOPIC))
            return
        host = self.sparkplug
        if host is None or not isinstance(topic, sp.SparkplugTopic):
            self.client.ack(inbound)  # a host's STATE: nothing to store
            return
        now_s = time.monotonic()
        outcome = host.read(topic, inbound.payload, now_s, now_ns())
        if isinstance(outcome, Refused):
            self._reject(self.client, inbound, Rejected(outcome.reason, outcome.kind))
        elif isinstance(outcome, Unreadable):
            if not host.hold(inbound, now_s, outcome.why):
                why = f"{outcome.why}, and {host.max_held} messages already wait for births"
                self._reject(self.client, inbound, Rejected(why, "schema"))
        else:
            await self._store_decoded(inbound, outcome)
        if topic.type is sp.MessageType.DBIRTH and topic.device is not None:
            for held in host.released(topic.group, topic.node, topic.device):
                await self._sparkplug(held)
        self.expire_held(now_s)

    def expire_held(self, now_s: float) -> None:
        """Dead-letter data that waited ``sparkplug.hold_s`` for a birth in vain."""
        if self.sparkplug is not None:
            for held, why in self.sparkplug.expired(now_s):
                self._reject(self.client, held, Rejected(why, "schema"))

    async def _store_decoded(self, inbound: InboundMessage, decoded: Decoded) -> None:
        conditions = self._checked_conditions(decoded)
        if isinstance(conditions, Rejected):
            self._reject(self.client, inbound, conditions)
            return
        rows = decoded.rows
        checked = None if rows is None else check_rows(rows, self.window, self.fields)
        if isinstance(checked, Rejected):
            self._reject(self.client, inbound, checked)
            return
        lines: list[str] = []
        for status in decoded.statuses:  # a device up before its readings are evaluated
            lines.append(encode_device_status(status))
            if self.alarms is not None:
                self._evaluate(inbound.topic, self.alarms.observe_device, status)
        if checked is not None:
            lines += encode_telemetry(checked)
            self.stats.readings += len(checked.rows)
            if self.alarms is not None:
                self._evaluate(inbound.topic, self.alarms.observe_telemetry, checked.telemetry())
        if decoded.agent is not None and self.alarms is not None:
            self.alarms.observe_agent(decoded.agent)
        if self.alarms is not None:  # committed before they return (see _condition)
            for condition in conditions:
                self.alarms.observe_condition(condition)
        if lines:
            await self.store_queue.put(Batchable(lines, inbound))
        else:
            self.client.ack(inbound)

    def _checked_conditions(self, decoded: Decoded) -> list[ConditionMessage] | Rejected:
        """A Sparkplug message's edge condition changes, each in the time window."""
        for condition in decoded.conditions:
            checked = check_condition(condition, self.window)
            if isinstance(checked, Rejected):
                return checked
        return list(decoded.conditions)

    async def _status_or_metrics(
        self, inbound: InboundMessage, topic: DeviceStatusTopic | AgentMetricsTopic
    ) -> None:
        """Device status and agent metrics are stored (agent status and commands go to
        the alarms)."""
        try:
            if isinstance(topic, AgentMetricsTopic):
                metrics = AgentMetrics.model_validate_json(inbound.payload)
                line = encode_agent_metrics(metrics)
                if self.storage_tracks:
                    self._agent_report(metrics)
            else:
                status = DeviceStatus.model_validate_json(inbound.payload)
                line = encode_device_status(status)
                if self.alarms is not None:
                    self._evaluate(inbound.topic, self.alarms.observe_device, status)
        except ValidationError as exc:
            self._reject(self.client, inbound, classify(inbound.payload, exc))
            return
        await self.store_queue.put(Batchable([line], inbound))

    def _evaluate(
        self,
        topic: str,
        observe: Callable[[Telemetry], None] | Callable[[DeviceStatus], None],
        message: Telemetry | DeviceStatus,
    ) -> None:
        """Feed the alarms; a failure there is logged once per reason and counted, and the
        message is still stored."""
        try:
            observe(message)  # type: ignore[arg-type]
        except Exception as exc:  # storage goes on whatever the alarms do
            self.stats.alarm_errors += 1
            reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON]
            if reason != self._alarm_failure:
                log.error("alarm evaluation failed", topic=topic, error=reason, exc_info=exc)
                self._alarm_failure = reason
            return
        self._alarm_failure = ""

    # -- the alarm session -------------------------------------------------------------

    async def _feed_one(
        self,
        client: MqttClient,
        inbound: InboundMessage,
        alarms: AlarmService,
    ) -> None:
        try:
            topic = parse_topic(inbound.topic)
        except TopicError as exc:  # telemetry, status, metrics: the storage session rejects it
            log.warning("topic outside the scheme", topic=inbound.topic, reason=str(exc))
            client.ack(inbound)
            return
        match topic:
            case TelemetryTopic(site=site, asset=asset):
                if self.sequences is not None:
                    _count_sequence(inbound.payload, alarms, self.sequences)
                if not alarms.evaluates(site, asset):
                    client.ack(inbound)
                    return
                result = validate_telemetry(topic, inbound.payload, self.window)
                if not isinstance(result, Rejected):  # else: the storage session dead-letters it
                    self._evaluate(inbound.topic, alarms.observe_telemetry, result)
                client.ack(inbound)
            case DeviceStatusTopic():
                try:
                    status = DeviceStatus.model_validate_json(inbound.payload)
                except ValidationError:  # the storage session dead-letters it
                    client.ack(inbound)
                    return
                self._evaluate(inbound.topic, alarms.observe_device, status)
                client.ack(inbound)
            case AgentMetricsTopic():
                try:
                    metrics = AgentMetrics.model_validate_json(inbound.payload)
                except ValidationError:  # the storage session dead-letters it
                    client.ack(inbound)
                    return
                self._agent_report(metrics)
                client.ack(inbound)
            case AgentStatusTopic() | AlarmCommandsTopic():
                self._alarm_topic(client, inbound, topic, alarms)
            case ConditionTopic():
                self._condition(client, inbound, topic, alarms, partial(alarms.evaluates, "agents"))
            case _:
                self._reject(client, inbound, _not_read(inbound, topic))

    def _sparkplug_alarms(
        self, client: MqttClient, inbound: InboundMessage, alarms: AlarmService
    ) -> None:
        """An edge node's message in the alarm session of a group: births, deaths and data
        of the assets this collector owns go to the alarms, then it is acknowledged (the
        storage session stores, rejects or holds its own copy)."""
        host = self.alarm_sparkplug
        try:
            topic = sp.parse_sparkplug_topic(inbound.topic)
        except TopicError:
            topic = None
        if host is not None and isinstance(topic, sp.SparkplugTopic):
            outcome = host.read(topic, inbound.payload, time.monotonic(), now_ns())
            if isinstance(outcome, Decoded):
                self._feed_decoded(inbound.topic, outcome, alarms)
        client.ack(inbound)

    def _feed_decoded(self, topic: str, decoded: Decoded, alarms: AlarmService) -> None:
        for status in decoded.statuses:  # a device up before its readings are evaluated
            if alarms.evaluates(status.site, status.asset):
                self._evaluate(topic, alarms.observe_device, status)
        rows = decoded.rows
        if rows is not None and alarms.evaluates(rows.site, rows.asset):
            checked = check_rows(rows, self.window, None)
            if not isinstance(checked, Rejected):
                self._evaluate(topic, alarms.observe_telemetry, checked.telemetry())
        if decoded.agent is not None:
            alarms.observe_agent(decoded.agent)
        conditions = self._checked_conditions(decoded)
        if not isinstance(conditions, Rejected):  # else: the storage session dead-letters it
            for condition in conditions:
                alarms.observe_condition(condition)

    def _condition(
        self,
        client: MqttClient,
        inbound: InboundMessage,
        topic: ConditionTopic,
        alarms: AlarmService | None,
        tracks: Callable[[str], bool],
    ) -> None:
        """An edge agent's condition change: into the alarms (which commit it before
        they return), then acknowledged. Numbered with its agent's telemetry, it counts
        in the sequence accounting (``tracks(agent)``: this session keeps it). A failure in
        the alarms dead-letters it (the guard), so it is never acknowledged unkept."""
        result = validate_condition(topic, inbound.payload, self.window)
        if isinstance(result, Rejected):
            self._reject(client, inbound, result)
            return
        if self.sequences is not None and tracks(result.agent):
            self.sequences.observe(result.agent, result.boot, result.seq, time.monotonic())
        if alarms is not None:
            alarms.observe_condition(result)
        client.ack(inbound)

    # -- lost messages (collector.loss) ---------------------------------------------------

    def _broker_drops(self, client: MqttClient, inbound: InboundMessage) -> None:
        """The broker's drop counter: a rise is loss."""
        try:
            total = int(inbound.payload)
        except ValueError:
            log.warning("broker drop counter unreadable", topic=inbound.topic)
            total = None
        if self.losses is not None and total is not None:
            if not self.losses.watching_broker:
                log.info("watching the broker's drop counter", topic=inbound.topic, dropped=total)
            self._lost(self.losses.broker_counter(total, now_ns()))
        client.ack(inbound)

    def _agent_report(self, metrics: AgentMetrics) -> None:
        """A live report of an empty spool makes this agent's settled holes certain."""
        if self.sequences is None or metrics.historical or metrics.queue.depth:
            return
        self.sequences.confirm(metrics.agent, metrics.boot, time.monotonic(), self.loss_settle_s)
        self.report_losses()

    def report_losses(self) -> None:
        """Gaps the sequence tracker found since the last call, and loss alarms due to
        clear."""
        if self.losses is None:
            return
        now = now_ns()
        changes = []
        for gap in self.sequences.drain_lost() if self.sequences is not None else []:
            changes += self.losses.messages_lost(gap.agent, gap.boot, gap.count, gap.where, now)
        self._lost(changes)
        self._lost(self.losses.tick(now))

    def _lost(self, changes: list[ConditionChange]) -> None:
        for change in changes:
            if change.active:
                log.error("messages lost", alarm=change.rule, detail=change.message)
            else:
                log.info("message loss over", alarm=change.rule, detail=change.message)
        if self.losses is not None:
            self.stats.messages_lost = self.losses.lost_total
        if self.loss_alarms is not None and changes:
            self._evaluate("loss", self.loss_alarms.observe_conditions, changes)

    def _alarm_topic(
        self,
        client: MqttClient,
        inbound: InboundMessage,
        topic: AgentStatusTopic | AlarmCommandsTopic,
        alarms: AlarmService | None,
    ) -> None:
        """Agent birth / last will, and operator commands."""
        model = AlarmCommand if isinstance(topic, AlarmCommandsTopic) else AgentStatus
        try:
            message = model.model_validate_json(inbound.payload)
        except ValidationError as exc:
            rejected = classify(inbound.payload, exc)
            if model is AlarmCommand:  # a dead letter must not keep a user's token
                inbound = replace(inbound, payload=redacted(inbound.payload))
            self._reject(client, inbound, rejected)
            return
        if alarms is not None:
            if isinstance(message, AgentStatus):
                alarms.observe_agent(message)
            else:
                _command(client, inbound.topic, topic, message, alarms, authority=self.authority)
        client.ack(inbound)

    # -- rejections ----------------------------------------------------------------------

    def _reject(
        self, client: MqttClient, inbound: InboundMessage, rejected: Rejected, *, quiet=False
    ) -> None:
        """Count, log (never the payload), keep in the dead-letter store, then acknowledge."""
        self.stats.rejected += 1
        if not quiet:
            log.warning(
                "message rejected",
                topic=inbound.topic,
                kind=rejected.kind,
                reason=rejected.reason,
                bytes=len(inbound.payload),
            )
        if self.dead_letters is not None:
            self.dead_letters.put(inbound.topic, inbound.payload, rejected.kind, rejected.reason)
        client.ack(inbound)
        self.stats.acked += 1


# The agent writes these three fields in this order (derrick.wire.payloads.Telemetry), so
# the numbers can be read without parsing a message whose asset another collector owns.
_SEQUENCE = re.compile(rb'"agent":"([A-Za-z0-9_.-]+)","boot":"([^"\\]{1,64})","seq":(\d+)')
_SEQUENCE_WINDOW = 600  # bytes from the start of the payload where they are


def _count_sequence(payload: bytes, alarms: AlarmService, sequences: SequenceTracker) -> None:
    found = _SEQUENCE.search(payload, 0, _SEQUENCE_WINDOW)
    if found is None:
        return
    agent = found[1].decode()
    if alarms.evaluates("agents", agent):
        sequences.observe(agent, found[2].decode(), int(found[3]), time.monotonic())


def _not_read(inbound: InboundMessage, topic: Topic) -> Rejected:
    """A topic of the scheme that no subscription of the collector asks for."""
    return Rejected(
        f"{topic.kind} topic {inbound.topic!r}: the collector does not read these", TOPIC
    )


def _command(
    client: MqttClient,
    name: str,
    topic: AlarmCommandsTopic,
    command: AlarmCommand,
    alarms: AlarmService,
    *,
    authority: CommandAuthority | None,
) -> None:
    """Run an operator command from MQTT (``name``: its topic, for the log); the owner
    answers on the reply topic."""
    site, asset = topic.site, topic.asset
    if not alarms.owns(site, asset):
        return  # the owner of this asset answers
    vetted = authority.vet(command) if authority is not None else command
    if isinstance(vetted, str):
        log.warning("alarm command refused", topic=name, alarm_id=command.alarm_id,
                    action=command.action, reason=vetted)  # fmt: skip
        result = AlarmCommandResult(
            request_id=command.request_id, alarm_id=command.alarm_id, action=command.action,
            ok=False, reason=vetted, ts_ns=now_ns(),
        )  # fmt: skip
    else:
        status, result = alarms.command(vetted)
        if status == 421:
            log.warning("alarm command for another asset", topic=name, alarm_id=command.alarm_id)
    try:
        client.publish_nowait(alarm_replies_topic(site, asset), result.model_dump_json().encode())
    except MqttError as exc:
        log.warning("command reply not sent", alarm_id=command.alarm_id, reason=str(exc))
