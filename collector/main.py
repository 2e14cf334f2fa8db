"""derrick-collector: MQTT telemetry -> InfluxDB; alarms -> MQTT, webhooks and e-mail."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog
from pydantic import SecretStr

from collector import acl, members, queries, usercli
from collector.alarms.authority import CommandAuthority
from collector.alarms.builtin import (
    HistorySender,
    JournalSender,
    MqttEventsSender,
    MqttStateSender,
)
from collector.alarms.forward import Forwarder, forwarded
from collector.alarms.ha import CoordinationError, Coordinator
from collector.alarms.httpapi import AlarmApi, HttpApiError
from collector.alarms.notify import (
    EVENTS_CHANNEL,
    HISTORY_CHANNEL,
    JOURNAL_CHANNEL,
    STATE_CHANNEL,
)
from collector.alarms.outbox import OutboxError
from collector.alarms.service import AlarmService, Send
from collector.alarms.state import AlarmStateError
from collector.config import CollectorConfig, load_config
from collector.deadletter import DeadLetters
from collector.etcd import Etcd, EtcdError
from collector.fieldtypes import FieldTypes
from collector.health import Waiting, health
from collector.influx import StoreError, V1Writer, Writer, make_writer
from collector.lineproto import encode_stats
from collector.loss import LossWatch
from collector.presence import Presence
from collector.receive import Receiver
from collector.redelivery import Redeliveries
from collector.sequence import SequenceTracker
from collector.sparkplug import HostState, SparkplugHost
from collector.stats import Stats, interval_fields
from collector.store import Batchable, Batching, Store
from collector.users import Role, UsersError, UserStore
from derrick.alarms.rules import BROKER_RULE, GAP_RULE
from derrick.mqtt.client import MqttClient, MqttError
from derrick.notify.channels import make_sender
from derrick.plumbing import sdnotify
from derrick.plumbing.cli import Program, run_until_signalled
from derrick.plumbing.configfile import ConfigError
from derrick.spool.store import SpoolError
from derrick.wire.ids import AlarmId
from derrick.wire.payloads import AlarmCommand, AlarmCommandResult, now_ns
from derrick.wire.sparkplug import DATA_SUBSCRIPTION as SPARKPLUG_DATA
from derrick.wire.sparkplug import SESSION_SUBSCRIPTIONS as SPARKPLUG_SESSION
from derrick.wire.topics import (
    AGENT_METRICS_SUBSCRIPTION,
    AGENT_STATUS_SUBSCRIPTION,
    ALARM_COMMANDS_SUBSCRIPTION,
    BROKER_DROPPED_TOPIC,
    CONDITION_SUBSCRIPTION,
    DEVICE_STATUS_SUBSCRIPTION,
    TELEMETRY_SUBSCRIPTION,
    shared,
)

log = structlog.get_logger("collector")

DROP_COUNTER_WITHIN_S = 35.0  # mosquitto publishes $SYS every sys_interval, 10 s by default

# What the session that feeds the alarms reads, unshared (in a group, the metrics too:
# an agent's empty spool is what makes its sequence gaps certain, see collector.loss).
ALARM_INPUTS = (
    TELEMETRY_SUBSCRIPTION,
    DEVICE_STATUS_SUBSCRIPTION,
    AGENT_STATUS_SUBSCRIPTION,
    ALARM_COMMANDS_SUBSCRIPTION,
    CONDITION_SUBSCRIPTION,
    AGENT_METRICS_SUBSCRIPTION,
)


async def report_forever(
    collector_id: str,
    store: Store,
    store_queue: asyncio.Queue[Batchable],
    interval_s: float,
    *,
    sequences: SequenceTracker | None,
    dead_letters: DeadLetters,
    alarms: AlarmService | None = None,
    receiver: Receiver | None = None,
) -> None:
    """Log a summary and store the collector's own counters every ``interval_s``; holes
    past ``sequence_grace_s`` become gaps (and loss alarms) here."""
    loop = asyncio.get_running_loop()
    stats = store.stats
    then, then_t = stats.snapshot(), loop.time()
    while True:
        await asyncio.sleep(interval_s)
        if sequences is not None:
            sequences.expire(time.monotonic())
            stats.seq_gaps, stats.seq_duplicates = sequences.gaps, sequences.duplicates
        if receiver is not None:
            receiver.report_losses()
            receiver.expire_held(time.monotonic())
        stats.dead_letters = dead_letters.counts.get("written", 0)
        if alarms is not None:
            stats.alarms_raised = alarms.counts["announced"]
            stats.alarms_cleared = alarms.counts["cleared"]
            stats.alarms_dropped = alarms.outbox.dropped
        now, now_t = stats.snapshot(), loop.time()
        spool = store.spool.stats() if store.spool else None
        depth, age = (spool.depth, spool.oldest_age_s) if spool else (0, None)
        log.info("ingest summary", queued=store_queue.qsize(), spool_depth=depth, **now)
        fields = interval_fields(now, then, now_t - then_t, store_queue.qsize(), depth, age)
        fields |= stage_gauges(store, receiver)
        then, then_t = now, now_t
        try:  # never wait for room: the counters are the least important lines
            store_queue.put_nowait(Batchable([encode_stats(collector_id, fields, now_ns())], None))
        except asyncio.QueueFull:
            log.debug("store queue full, collector stats not stored")


def window_full(client: MqttClient) -> bool:
    """The broker sends no more until we acknowledge (see collector.store)."""
    return client.unacked >= (client.window or client.peak_unacked)


def stage_gauges(store: Store, receiver: Receiver | None) -> dict[str, object]:
    """Where messages wait now, and how long the store stage has been on one batch: a
    stuck stage shows as work waiting while its count of the interval stays 0."""
    busy = store.busy_since
    gauges: dict[str, object] = {
        "store_busy_s": time.monotonic() - busy if busy is not None else 0.0
    }
    if receiver is not None:
        gauges["inbox_depth"] = receiver.client.inbox.qsize()
        gauges["unacked"] = receiver.client.unacked
    return gauges


def build_alarms(
    config: CollectorConfig,
    client: MqttClient,
    journal: Writer,
    history: Writer,
    coordinator: Coordinator | None = None,
) -> AlarmService | None:
    """The alarm service, or None when no rule files are configured.

    ``journal`` and ``history`` are InfluxDB writers of their own: each delivery loop
    writes on its own connection. ``coordinator``: collectors that fail over.
    """
    settings = config.alarms
    if not settings.rules:
        return None
    senders: dict[str, Send] = {
        EVENTS_CHANNEL: MqttEventsSender(client).send,
        STATE_CHANNEL: MqttStateSender(client).send,
        JOURNAL_CHANNEL: JournalSender(journal).send,
        HISTORY_CHANNEL: HistorySender(history).send,
    }
    closers = []
    for name, channel in settings.channels.items():
        sender = make_sender(channel)
        senders[name] = sender.send
        closers.append(sender.close)
    return AlarmService(
        settings, config.collector.id, senders, closers=closers, coordinator=coordinator
    )


def alarm_api(
    config: CollectorConfig,
    alarms: AlarmService | None,
    ingest_health: Callable[[], dict[str, object]],
    users: UserStore | None = None,
    reader: Writer | None = None,
) -> AlarmApi | None:
    """The operator API and, with users, the console (``alarms.http``); without alarm
    rules it serves /health and an empty alarm list. With fail-over, a command for an
    alarm another member owns is passed on to that member (collector.alarms.forward), once
    the group's peer secret is known (:func:`peer_secret_known`). ``reader``: the InfluxDB
    connection the console's journal and latest values are read over."""
    if not config.alarms.http.enabled:
        return None
    coordinator = alarms.coordinator if alarms is not None else None

    async def command(order: AlarmCommand) -> tuple[int, AlarmCommandResult]:
        if alarms is None:
            return 404, AlarmCommandResult(
                request_id=order.request_id,
                alarm_id=order.alarm_id,
                action=order.action,
                ok=False,
                reason="this collector has no alarm rules",
                ts_ns=now_ns(),
            )
        status, result = alarms.command(order)
        forwarder = served.forwarder  # set once the group's peer secret is known
        if status == 421 and forwarder is not None and not forwarded(order):
            alarm = AlarmId.parse(order.alarm_id)
            owner = coordinator.owner(alarm.site, alarm.asset) if coordinator else None
            api = coordinator.api_of(owner) if coordinator and owner else None
            if api is not None:
                role = role_of(users, order.who)
                return await forwarder.forward(api, order, role) or (status, result)
        return status, result

    console: dict[str, object] = {}
    if alarms is not None:
        console |= {"changes": alarms.changes, "kpis": alarms.kpi_report}
    if reader is not None:
        console |= {
            "journal": partial(queries.journal, reader),
            "latest": partial(queries.latest, reader),
        }
    served = AlarmApi(
        config.alarms.http,
        list_alarms=alarms.list_alarms if alarms is not None else list,
        command=command,
        health=ingest_health,
        users=users,
        **console,
    )
    return served


def role_of(users: UserStore | None, who: str) -> str:
    """The role a forwarded command carries: the user's, or supervisor for the deprecated
    machine identities (whose commands were never checked by role)."""
    info = users.user(who) if users is not None else None
    return info.role.value if info is not None else Role.SUPERVISOR.value


def users_of(config: CollectorConfig) -> UserStore | None:
    """The named users (``alarms.http.users_file``), read once now: a missing or broken
    file stops the start (HttpApiError naming it)."""
    path = config.alarms.http.users_file
    if path is None:
        return None
    users = UserStore(path)
    try:
        users.load()
    except UsersError as exc:
        raise HttpApiError(f"alarm API users: {exc}") from exc
    return users


def broker_note(config: CollectorConfig) -> str:
    """What ``--check`` can say of the broker side, and what it cannot."""
    ingest = config.ingest
    if ingest.mqtt_version == "5":
        window = (
            f"MQTT 5, Receive Maximum {ingest.receive_maximum}: mosquitto sends up to that "
            "many unacknowledged messages (its max_inflight_messages does not apply)"
        )
    else:
        window = (
            "MQTT 3.1.1: held to the broker's max_inflight_messages (mosquitto: 20 unless "
            "set higher)"
        )
    drops = (
        "alarms on the broker's drop counter ($SYS/broker/publish/messages/dropped)"
        if ingest.broker_drops
        else "does not watch the broker's drop counter (ingest.broker_drops: false)"
    )
    return (
        f"broker {config.broker.url}: {window}; {drops}.\n"
        "not checkable over MQTT: the broker's persistence, autosave and per-client queue "
        "(max_queued_messages, 1000 by default): see config/mosquitto/mosquitto.conf\n"
    )


def inbound_client(
    config: CollectorConfig, client_id: str, host: HostState | None = None
) -> MqttClient:
    """A persistent, manually acknowledged session; MQTT 5 with ``ingest.receive_maximum``
    unless ``ingest.mqtt_version`` is 3.1.1. ``host``: its Sparkplug STATE is the will."""
    v5 = config.ingest.mqtt_version == "5"
    return MqttClient(
        config.broker,
        client_id=client_id,
        manual_ack=True,
        inbox_size=config.queue_size,
        receive_maximum=config.ingest.receive_maximum if v5 else None,
        will=host.will if host is not None else None,
    )


async def field_types(config: CollectorConfig, writer: Writer) -> FieldTypes | None:
    """The telemetry field types InfluxDB already holds (``ingest.field_types``); the
    rest are learned from values. InfluxDB down at start-up: learned as they come."""
    if not config.ingest.field_types:
        return None
    fields = FieldTypes()
    try:
        taken = fields.seed(await writer.field_types("telemetry"))
    except StoreError as exc:
        log.warning("field types not read from influxdb, learning them", reason=str(exc))
    else:
        log.info("field types read from influxdb", fields=taken)
    return fields


def reload_on_sighup(config: CollectorConfig, alarms: AlarmService) -> None:
    """SIGHUP: read the rule files again; a bad file is logged and the old rules kept."""

    def reload() -> None:
        try:
            rules = config.alarms.load_rules()
        except (ConfigError, ValueError) as exc:
            log.error("alarm rules not reloaded, keeping the old ones", reason=str(exc))
            return
        alarms.reload(rules)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


class Collector:
    """The stages of one collector process, wired together, and the resources they share.

    :meth:`run` enters every resource into one :class:`~contextlib.AsyncExitStack` as it
    is opened: the InfluxDB writers, the alarm service, the spool, the dead-letter file,
    the redelivery ledger, then the MQTT sessions and the operator API. They are closed
    in reverse, whether the run ends on a signal, a failed stage, or a later resource
    that could not be opened: the API stops, the MQTT sessions stop (nothing more is
    consumed), then the stores close. A message is acknowledged only by the store stage,
    after its lines are stored; what is unacknowledged at shutdown the broker delivers
    again.
    """

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.store_queue: asyncio.Queue[Batchable] = asyncio.Queue(maxsize=config.queue_size)
        host_id = config.sparkplug.host_id if config.sparkplug.enabled else None
        self.host_state = HostState(host_id) if host_id else None
        self.client = inbound_client(config, config.collector.id, self.host_state)
        # In a group, alarms read the whole stream in a session of their own (see receive).
        self.alarm_client = (
            inbound_client(config, f"{config.collector.id}-alarms")
            if config.collector.group and config.alarms.rules
            else None
        )
        self.coordinator: Coordinator | None = None
        self.presence = Presence(config.broker, config.collector.id)
        self._group: asyncio.TaskGroup | None = None
        self._adopted: dict[str, Adopted] = {}  # dead members' sessions drained here
        self._pending_adoptions: list[str] = []

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            await self._open(stack)
            self.stats.progress_receive = self.stats.progress_store = time.monotonic()
            await run_until_signalled(self._start_tasks)
            sdnotify.stopping()
            log.info("collector stopping", **self.stats.snapshot())

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        """Open everything the stages need, in order, and say the collector started."""
        config = self.config
        self.writer = await self._open_writer(stack)
        self.fields = await field_types(config, self.writer)
        self.coordinator = self._open_coordinator(stack)
        self.alarms = self._open_alarms(stack)
        self.spool = stack.enter_context(config.spool.open())
        letters = config.dead_letter
        self.dead_letters = stack.enter_context(
            DeadLetters(letters.dir, letters.max_mb, letters.max_payload_kb * 1000, letters.file_mb)
        )
        self.redeliveries = stack.enter_context(
            contextlib.closing(Redeliveries(config.ingest.deliveries, config.ingest.max_deliveries))
        )
        self.store = self._store(self.client, self.writer)
        self.users = users_of(config)
        self.receiver = self._receiver()
        self.api = alarm_api(
            config, self.alarms, self._ingest_health, self.users, self._console_reader(stack)
        )
        await self._subscribe()
        api_port = await self._start_api(stack)
        await self._join(stack, api_port)  # before connecting: this id's session may be drained
        await self._start_sessions(stack)
        stack.callback(self._forget_sighup)
        self._log_started(api_port)
        sdnotify.ready()  # systemd (Type=notify): started

    async def _open_writer(self, stack: contextlib.AsyncExitStack) -> Writer:
        """The telemetry writer; creates the v1 database if asked (InfluxDB may come
        later: the store stage retries)."""
        writer = make_writer(self.config.influx)
        stack.push_async_callback(writer.close)
        if isinstance(writer, V1Writer) and self.config.influx.create_database:
            try:
                await writer.create_database()
            except StoreError as exc:
                log.warning(
                    "could not create database", database=writer.settings.database, reason=str(exc)
                )
        return writer

    def _open_coordinator(self, stack: contextlib.AsyncExitStack) -> Coordinator | None:
        """With an ``etcd`` section: the etcd client and this member's coordinator
        (it joins once the operator API listens, so the others can name it)."""
        settings = self.config.etcd
        if settings is None:
            return None
        etcd = Etcd.for_settings(settings)
        stack.callback(etcd.stop)
        return Coordinator(
            etcd,
            self.config.collector.id,
            prefix=settings.prefix,
            ttl_s=settings.ttl_s,
            refresh_s=settings.refresh_s,
        )

    async def _join(self, stack: contextlib.AsyncExitStack, api_port: int | None) -> None:
        """Take part: a lease, this member's key, a first share of the assets. At the
        end, leave first (revoking the lease hands the assets over at once)."""
        coordinator = self.coordinator
        if coordinator is None:
            return
        http, settings = self.config.alarms.http, self.config.etcd
        if settings is not None and settings.api_url:
            coordinator.api = settings.api_url
        elif api_port is not None:
            host = socket.gethostname() if http.host in ("0.0.0.0", "::", "") else http.host  # noqa: S104
            coordinator.api = f"http://{host}:{api_port}"
        await coordinator.join()
        stack.push_async_callback(coordinator.leave)
        if self.api is not None:
            await self._peer_forwarding(coordinator, stack)
        coordinator.on_adopt, coordinator.on_release = self._adopt, self._release
        adopter = await coordinator.session_free(coordinator.ttl_s + 4 * coordinator.refresh_s)
        if adopter is not None:
            log.warning("connecting while another collector still drains this one's session",
                        adopter=adopter)  # fmt: skip
        await coordinator.refresh()

    async def _peer_forwarding(
        self, coordinator: Coordinator, stack: contextlib.AsyncExitStack
    ) -> None:
        """Commands for another member's alarms go to it with the group's peer secret."""
        assert self.api is not None
        secret = SecretStr(await coordinator.peer_secret())
        forwarder = Forwarder(secret)
        stack.callback(forwarder.close)
        self.api.forwarder = forwarder
        self.api.peer_secret(secret)

    def _console_reader(self, stack: contextlib.AsyncExitStack) -> Writer | None:
        """An InfluxDB connection of the console's own (journal, latest values), so its
        reads never wait behind the store stage's writes."""
        http = self.config.alarms.http
        if not (http.enabled and http.users_file):
            return None
        reader = make_writer(self.config.influx)
        stack.push_async_callback(reader.close)
        return reader

    # --- dead members' storage sessions (collector.alarms.ha) ---------------------------

    async def _adopt(self, member: str) -> None:
        """Drain a dead member's storage session: its client id, its share of the
        telemetry, stored by a receive and store stage of its own."""
        if self._group is None:  # before the tasks run: started with them
            self._pending_adoptions.append(member)
            return
        config = self.config
        client = inbound_client(config, member)
        queue: asyncio.Queue[Batchable] = asyncio.Queue(maxsize=config.queue_size)
        writer = make_writer(config.influx)
        store = self._store(client, writer)
        receiver = Receiver(
            client, queue, self.stats, self.dead_letters, storage_tracks=False,
            window=config.ingest.window(), fields=self.fields, redeliveries=self.redeliveries,
            sparkplug=self._sparkplug_host(False),
        )  # fmt: skip
        await self._subscribe_storage(client)
        await client.start()
        group = self._group
        tasks = [group.create_task(receiver.run()), group.create_task(store.run(queue))]
        clients = [client]
        if self.alarm_client is not None:
            # its alarm session: copies this member reads in its own; acknowledged unread,
            # so the broker's queue for it does not overflow (and count as drops)
            copies = inbound_client(config, f"{member}-alarms")
            await copies.start()
            tasks.append(group.create_task(_discard_forever(copies)))
            clients.append(copies)
        self._adopted[member] = Adopted(clients, writer, tasks)

    async def _release(self, member: str) -> None:
        """Stop draining ``member``'s session (it is back, or this member's lease ended):
        what is not stored yet stays unacknowledged, for the broker to send again."""
        if member in self._pending_adoptions:
            self._pending_adoptions.remove(member)
            return
        adopted = self._adopted.pop(member, None)
        if adopted is None:
            return
        for client in adopted.clients:
            await client.stop()
        for task in adopted.tasks:
            task.cancel()
        await asyncio.gather(*adopted.tasks, return_exceptions=True)
        await adopted.writer.close()

    def _open_alarms(self, stack: contextlib.AsyncExitStack) -> AlarmService | None:
        """The alarm service, with a writer each for its journal and history loops."""
        journal, history = make_writer(self.config.influx), make_writer(self.config.influx)
        stack.push_async_callback(journal.close)
        stack.push_async_callback(history.close)
        alarms = build_alarms(
            self.config, self.alarm_client or self.client, journal, history, self.coordinator
        )
        if alarms is not None:
            stack.push_async_callback(alarms.close)
        return alarms

    def _store(self, client: MqttClient, writer: Writer) -> Store:
        """The store stage of a storage session (this collector's, or one it drains)."""
        batch = self.config.batch
        return Store(
            writer,
            client.ack,
            self.stats,
            Batching(batch.max_lines, batch.max_delay_s, batch.pause_s),
            self.spool,
            self.dead_letters.put_refused,
            window_full=partial(window_full, client),
            fields=self.fields,
        )

    def _receiver(self) -> Receiver:
        config, alarms, alarm_client = self.config, self.alarms, self.alarm_client
        # In a shared-subscription group each collector sees a share of every agent's numbers;
        # the alarm session, when there is one, sees them all (see receive.Receiver).
        tracked = not config.collector.group or alarm_client is not None
        losses = LossWatch(config.ingest.loss_clear_s)
        if alarms is not None:
            losses.restore(alarms.standing((BROKER_RULE, GAP_RULE)), now_ns())
        return Receiver(
            self.client,
            self.store_queue,
            self.stats,
            self.dead_letters,
            alarms=None if alarm_client else alarms,
            sequences=SequenceTracker(config.sequence_grace_s) if tracked else None,
            storage_tracks=alarm_client is None,
            window=config.ingest.window(),
            fields=self.fields,
            redeliveries=self.redeliveries,
            losses=losses,
            loss_settle_s=config.ingest.loss_settle_s,
            loss_alarms=alarms,
            sparkplug=self._sparkplug_host(tracked and alarm_client is None),
            alarm_sparkplug=self._sparkplug_host(True) if alarm_client is not None else None,
            authority=self._authority(),
        )

    def _authority(self) -> CommandAuthority | None:
        """How operator commands over MQTT are vetted (alarms.mqtt_commands)."""
        if self.alarms is None:
            return None
        authority = CommandAuthority(self.config.alarms.mqtt_commands, self.users)
        authority.announce()
        return authority

    def _sparkplug_host(self, tracks_seq: bool) -> SparkplugHost | None:
        """The Sparkplug B host (collector.sparkplug); its rebirth requests go out on the
        storage session. Sequence gaps are watched where the session sees whole streams."""
        settings = self.config.sparkplug
        if not settings.enabled:
            return None

        def request_rebirth(topic: str, payload: bytes) -> None:
            try:
                self.client.publish_nowait(topic, payload, qos=0)
            except MqttError as exc:
                log.warning("rebirth request not sent", topic=topic, reason=str(exc))

        return SparkplugHost(
            self.spool,
            request_rebirth,
            tracks_seq=tracks_seq,
            reorder_s=settings.reorder_s,
            rebirth_every_s=settings.rebirth_every_s,
            hold_s=settings.hold_s,
            max_held=settings.max_held,
        )

    def _ingest_health(self) -> dict[str, object]:
        waiting = Waiting(
            self.client.inbox.qsize(), self.store_queue.qsize(), self.store.busy_since
        )
        return health(self.stats, waiting, time.monotonic(), self.config.ingest.stall_s)

    async def _subscribe(self) -> None:
        """Telemetry, statuses, metrics and edge conditions (shared in a group); the
        alarm inputs unshared.

        Edge conditions are read even without alarm rules: they are numbered with their
        agent's telemetry, and a collector that did not see them would count their
        numbers as lost messages."""
        client = self.client
        await self._subscribe_storage(client)
        if self.config.ingest.broker_drops:
            await client.subscribe(BROKER_DROPPED_TOPIC, qos=1)
        if self.alarms is not None:
            feed = self.alarm_client or client
            extra = ALARM_INPUTS if self.alarm_client else ALARM_INPUTS[2:4]
            if self.alarm_client is not None and self.config.sparkplug.enabled:
                extra += (SPARKPLUG_DATA, *SPARKPLUG_SESSION)  # the whole stream, unshared
            for subscription in extra:
                await feed.subscribe(subscription, qos=1)

    async def _subscribe_storage(self, client: MqttClient) -> None:
        """What a storage session reads (shared in a group)."""
        group = self.config.collector.group
        for subscription in (
            TELEMETRY_SUBSCRIPTION,
            DEVICE_STATUS_SUBSCRIPTION,
            AGENT_METRICS_SUBSCRIPTION,
            CONDITION_SUBSCRIPTION,
        ):
            await client.subscribe(shared(group, subscription), qos=1)
        if self.config.sparkplug.enabled:
            # Data is shared in a group; births and deaths reach every member, which
            # each need the alias tables (what they store twice is the same points).
            await client.subscribe(shared(group, SPARKPLUG_DATA), qos=1)
            for subscription in SPARKPLUG_SESSION:
                await client.subscribe(subscription, qos=1)

    async def _start_sessions(self, stack: contextlib.AsyncExitStack) -> None:
        await self.client.start()
        stack.push_async_callback(self.client.stop)
        await self.presence.start()
        stack.push_async_callback(self.presence.stop)  # first to stop: says offline
        if self.host_state is not None:
            stack.push_async_callback(self.host_state.say_offline, self.client)
        if self.alarm_client is not None:
            await self.alarm_client.start()
            stack.push_async_callback(self.alarm_client.stop)

    async def _start_api(self, stack: contextlib.AsyncExitStack) -> int | None:
        """The operator API's port; None when it is off."""
        if self.api is None:
            return None
        port = await self.api.start()
        stack.push_async_callback(self.api.close)
        return port

    def _forget_sighup(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def _log_started(self, api_port: int | None) -> None:
        config, alarms, fields = self.config, self.alarms, self.fields
        log.info(
            "collector started",
            collector=config.collector.id,
            group=config.collector.group,
            broker=config.broker.url,
            mqtt=config.ingest.mqtt_version,
            receive_maximum=self.client.window,
            field_types_known=len(fields) if fields is not None else None,
            influx=self.writer.url,
            spool=str(config.spool.path),
            dead_letters=str(config.dead_letter.dir),
            spooled=self.spool.depth,
            api=config.influx.api,
            alarm_rules=len(alarms.engine.rules) if alarms else 0,
            alarm_members=list(alarms.ownership.members) if alarms else None,
            etcd=config.etcd.endpoints if config.etcd else None,
            alarm_state=str(config.alarms.state) if alarms else None,
            alarms_standing=sum(r.active for r in alarms.manager.records.values()) if alarms else 0,
            alarm_api_port=api_port,
        )

    def _start_tasks(self, group: asyncio.TaskGroup) -> None:
        config, alarms = self.config, self.alarms
        self._group = group
        group.create_task(self.presence.announce_forever())
        for member in self._pending_adoptions:
            group.create_task(self._adopt(member))
        self._pending_adoptions = []
        group.create_task(self.receiver.run())
        group.create_task(self.store.run(self.store_queue))
        if config.ingest.broker_drops:
            group.create_task(expect_drop_counter(self.receiver, DROP_COUNTER_WITHIN_S))
        group.create_task(self.store.replay_forever())
        if self.host_state is not None:
            group.create_task(self.host_state.announce_forever(self.client))
        if alarms is not None:
            self._start_alarm_tasks(group, alarms)
        if self.coordinator is not None:
            group.create_task(coordinate_forever(self.coordinator, alarms))
        group.create_task(
            report_forever(
                config.collector.id,
                self.store,
                self.store_queue,
                config.stats_interval_s,
                sequences=self.receiver.sequences,
                dead_letters=self.dead_letters,
                alarms=alarms,
                receiver=self.receiver,
            )
        )

    def _start_alarm_tasks(self, group: asyncio.TaskGroup, alarms: AlarmService) -> None:
        """Deliveries and ticks, SIGHUP reloads, KPIs, and the alarm session's feed."""
        alarms.start(group)
        reload_on_sighup(self.config, alarms)
        interval_s = self.config.alarms.kpi.interval_s
        group.create_task(kpi_forever(alarms, self.store_queue, interval_s))
        if self.alarm_client is not None:
            group.create_task(self.receiver.feed_alarms(self.alarm_client, alarms))


@dataclass
class Adopted:
    """A dead member's storage session drained here: its client, writer and stages."""

    clients: list[MqttClient]
    writer: Writer
    tasks: list[asyncio.Task[None]]


async def _discard_forever(client: MqttClient) -> None:
    """Acknowledge everything a session brings, unread."""
    while True:
        client.ack(await client.inbox.get())


async def run(config: CollectorConfig) -> None:
    """Build and run the collector inside the event loop."""
    await Collector(config).run()


async def coordinate_forever(coordinator: Coordinator, alarms: AlarmService | None) -> None:
    """Renew, read, claim and release every ``etcd.refresh_s``; the collector's own
    coordination alarms go to its channels."""
    while True:
        await asyncio.sleep(coordinator.refresh_s)
        await coordinator.refresh()
        changes = coordinator.conditions(now_ns())
        if changes and alarms is not None:
            alarms.observe_conditions(changes)


async def expect_drop_counter(receiver: Receiver, within_s: float) -> None:
    """Say once if the broker's drop counter never came: then only sequence gaps show
    lost messages (not mosquitto, or an ACL without read on it)."""
    await asyncio.sleep(within_s)
    if receiver.losses is not None and not receiver.losses.watching_broker:
        log.warning(
            "no drop counter from the broker; lost messages show only as sequence gaps",
            topic=BROKER_DROPPED_TOPIC,
            waited_s=within_s,
            hint="mosquitto publishes it every sys_interval; the account needs read on it",
        )


async def kpi_forever(
    alarms: AlarmService,
    store_queue: asyncio.Queue[Batchable],
    interval_s: float,
) -> None:
    """Alarm KPIs (ISA-18.2 / EEMUA 191) as measurements ``alarm_kpi`` and ``alarm_top``."""
    while True:
        await asyncio.sleep(interval_s)
        for alarm in alarms.kpis.stopped_chattering(now_ns()):
            log.info("alarm no longer chattering", alarm_id=alarm)
        lines = alarms.kpi_lines(now_ns())
        try:  # never wait for room: KPIs are recomputed next interval anyway
            store_queue.put_nowait(Batchable(lines, None))
        except asyncio.QueueFull:
            log.debug("store queue full, alarm KPIs not stored")


def print_check(args: argparse.Namespace, config: CollectorConfig) -> None:
    """``--check``: the config is valid; what it sets up, and what of the broker it can't see."""
    etcd = config.etcd
    failover = (
        f"fails over with the collectors under {etcd.prefix} on etcd "
        f"{', '.join(etcd.endpoints)} (lease {etcd.ttl_s} s); not checked: whether etcd "
        "answers\n"
        if etcd is not None
        else ""
    )
    sys.stdout.write(
        f"{args.config}: ok, {len(config.alarms.ruleset)} alarm rules, "
        f"InfluxDB {config.influx.api} at {config.influx.url}\n{broker_note(config)}{failover}"
        f"{console_note(config, args.config)}"
    )


def console_note(config: CollectorConfig, path: Path) -> str:
    """What ``--check`` says of the operator API, the console and its users (``path``: the
    config file, named when the users file cannot be read)."""
    http = config.alarms.http
    if not http.enabled:
        return "operator API and console: off (alarms.http.enabled)\n"
    scheme = "https" if http.tls_cert_file else "http"
    where = f"operator API on {scheme}://{http.host}:{http.port}"
    if http.users_file is None:
        return f"{where}; no console (it needs alarms.http.users_file)\n"
    try:
        count = UserStore(http.users_file).load()
    except UsersError as exc:
        raise ConfigError(path, [("alarms.http.users_file", str(exc))]) from exc
    mode = CommandAuthority(config.alarms.mqtt_commands, UserStore(http.users_file)).mode
    return (
        f"{where}; console at /console with {count} users from {http.users_file}; "
        f"MQTT commands {mode}\n"
    )


PROGRAM = Program(
    name="derrick-collector",
    description="Subscribe to Derrick telemetry on an MQTT broker, write it to InfluxDB "
    "(v1 /write or v2 API), and raise alarms (ISA-18.2 lifecycle) to MQTT, webhooks "
    "and e-mail. SIGHUP reloads the alarm rule files.",
    epilog="examples:\n"
    "  derrick-collector --config /etc/derrick/collector.yaml\n"
    "  derrick-collector --config collector.yaml --check   # validate config and exit\n"
    "\nbroker accounts (docs/broker.md):\n"
    "  derrick-collector acl --help      # mosquitto ACL from agent and collector configs\n"
    "  derrick-collector passwd --help   # the matching mosquitto password file\n"
    "\ncollectors that fail over (docs/failover.md):\n"
    "  derrick-collector members --config collector.yaml   # members, owners, sessions\n"
    "\noperator console and API users (alarms.http.users_file):\n"
    "  derrick-collector users --help    # add users, roles, passwords, API tokens",
    config_help="collector YAML config file",
    load=lambda args: load_config(args.config),
    check=print_check,
    run=run,
    failures=(
        MqttError,
        StoreError,
        SpoolError,
        HttpApiError,
        AlarmStateError,
        OutboxError,
        EtcdError,
        CoordinationError,
        ValueError,
    ),
    log=log,
    failed="collector failed",
    commands={
        **dict.fromkeys(acl.COMMANDS, acl.main),
        "members": members.main,
        "users": usercli.main,
    },
)


def main(argv: list[str] | None = None) -> int:
    return PROGRAM.main(argv)


if __name__ == "__main__":
    sys.exit(main())
