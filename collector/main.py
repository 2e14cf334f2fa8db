"""derrick-collector: MQTT telemetry -> InfluxDB; alarms -> MQTT, webhooks and e-mail."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from collector import acl
from collector.alarms.builtin import HistorySender, JournalSender, MqttSender
from collector.alarms.channels import Sender, make_sender
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
from collector.fieldtypes import FieldTypes
from collector.health import Waiting, health
from collector.influx import StoreError, V1Writer, Writer, make_writer
from collector.lineproto import encode_stats
from collector.loss import BROKER_RULE, GAP_RULE, LossWatch
from collector.receive import Receiver
from collector.redelivery import Redeliveries
from collector.sequence import SequenceTracker
from collector.stats import Stats, interval_fields
from collector.store import Batchable, Batching, Store
from derrick.mqtt.client import MqttClient, MqttError
from derrick.plumbing import logs
from derrick.plumbing.cli import run_until_signalled
from derrick.plumbing.configfile import ConfigError
from derrick.spool.store import SpoolError
from derrick.wire.payloads import AlarmCommand, AlarmCommandResult, AlarmNotice, now_ns
from derrick.wire.topics import (
    AGENT_METRICS_SUBSCRIPTION,
    AGENT_STATUS_SUBSCRIPTION,
    ALARM_COMMANDS_SUBSCRIPTION,
    BROKER_DROPPED_TOPIC,
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
    AGENT_METRICS_SUBSCRIPTION,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="derrick-collector",
        description="Subscribe to Derrick telemetry on an MQTT broker, write it to InfluxDB "
        "(v1 /write or v2 API), and raise alarms (ISA-18.2 lifecycle) to MQTT, webhooks "
        "and e-mail. SIGHUP reloads the alarm rule files.",
        epilog="examples:\n"
        "  derrick-collector --config /etc/derrick/collector.yaml\n"
        "  derrick-collector --config collector.yaml --check   # validate config and exit\n"
        "\nbroker accounts (docs/broker.md):\n"
        "  derrick-collector acl --help      # mosquitto ACL from agent and collector configs\n"
        "  derrick-collector passwd --help   # the matching mosquitto password file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="collector YAML config file")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        help="override log.format from the config",
    )
    return parser.parse_args(argv)


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
    config: CollectorConfig, client: MqttClient, journal: Writer, history: Writer
) -> AlarmService | None:
    """The alarm service, or None when no rule files are configured.

    ``journal`` and ``history`` are InfluxDB writers of their own: each delivery loop
    writes on its own connection.
    """
    settings = config.alarms
    if not settings.rules:
        return None
    senders: dict[str, Send] = {
        EVENTS_CHANNEL: MqttSender(client, state=False).send,
        STATE_CHANNEL: MqttSender(client, state=True).send,
        JOURNAL_CHANNEL: JournalSender(journal).send,
        HISTORY_CHANNEL: HistorySender(history).send,
    }
    closers = []
    for name, channel in settings.channels.items():
        sender = make_sender(channel)
        senders[name] = _notice_sender(sender)
        closers.append(sender.close)
    return AlarmService(settings, config.collector.id, senders, closers=closers)


def _notice_sender(sender: Sender) -> Send:
    async def send(payload: str) -> None:
        await sender.send(AlarmNotice.model_validate_json(payload))

    return send


def alarm_api(
    config: CollectorConfig,
    alarms: AlarmService | None,
    ingest_health: Callable[[], dict[str, object]],
) -> AlarmApi | None:
    """The operator API (``alarms.http``); without alarm rules it serves /health and an
    empty alarm list."""
    if not config.alarms.http.enabled:
        return None

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
        return alarms.command(order)

    return AlarmApi(
        config.alarms.http,
        list_alarms=alarms.list_alarms if alarms is not None else list,
        command=command,
        health=ingest_health,
    )


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


def inbound_client(config: CollectorConfig, client_id: str) -> MqttClient:
    """A persistent, manually acknowledged session; MQTT 5 with ``ingest.receive_maximum``
    unless ``ingest.mqtt_version`` is 3.1.1."""
    v5 = config.ingest.mqtt_version == "5"
    return MqttClient(
        config.broker,
        client_id=client_id,
        manual_ack=True,
        inbox_size=config.queue_size,
        receive_maximum=config.ingest.receive_maximum if v5 else None,
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


async def run(config: CollectorConfig) -> None:  # noqa: PLR0915 - the wiring, in one place
    stats = Stats()
    writer = make_writer(config.influx)
    if isinstance(writer, V1Writer) and config.influx.create_database:
        try:
            await writer.create_database()
        except StoreError as exc:  # InfluxDB may come later: the store stage retries
            log.warning(
                "could not create database", database=writer.settings.database, reason=str(exc)
            )
    fields = await field_types(config, writer)
    client = inbound_client(config, config.collector.id)
    group = config.collector.group
    # In a group, alarms read the whole stream in a session of their own (see receive).
    alarm_client = (
        inbound_client(config, f"{config.collector.id}-alarms")
        if group and config.alarms.rules
        else None
    )
    journal, history = make_writer(config.influx), make_writer(config.influx)
    alarms = build_alarms(config, alarm_client or client, journal, history)
    store_queue: asyncio.Queue[Batchable] = asyncio.Queue(maxsize=config.queue_size)
    spool = config.spool.open()
    letters = config.dead_letter
    dead_letters = DeadLetters(
        letters.dir, letters.max_mb, letters.max_payload_kb * 1000, letters.file_mb
    )
    redeliveries = Redeliveries(config.ingest.deliveries, config.ingest.max_deliveries)
    batch = config.batch
    store = Store(
        writer,
        client.ack,
        stats,
        Batching(batch.max_lines, batch.max_delay_s, batch.pause_s),
        spool,
        dead_letters.put_refused,
        window_full=lambda: client.unacked >= (client.window or client.peak_unacked),
        fields=fields,
    )
    # In a shared-subscription group each collector sees a share of every agent's numbers;
    # the alarm session, when there is one, sees them all (see receive.Receiver).
    tracked = not config.collector.group or alarm_client is not None
    losses = LossWatch(config.ingest.loss_clear_s)
    if alarms is not None:
        losses.restore(alarms.standing((BROKER_RULE, GAP_RULE)), now_ns())
    receiver = Receiver(
        client,
        store_queue,
        stats,
        dead_letters,
        alarms=None if alarm_client else alarms,
        sequences=SequenceTracker(config.sequence_grace_s) if tracked else None,
        storage_tracks=alarm_client is None,
        window=config.ingest.window(),
        fields=fields,
        redeliveries=redeliveries,
        losses=losses,
        loss_settle_s=config.ingest.loss_settle_s,
        loss_alarms=alarms,
    )

    def ingest_health() -> dict[str, object]:
        waiting = Waiting(client.inbox.qsize(), store_queue.qsize(), store.busy_since)
        return health(stats, waiting, time.monotonic(), config.ingest.stall_s)

    api = alarm_api(config, alarms, ingest_health)
    subscriptions = [TELEMETRY_SUBSCRIPTION, DEVICE_STATUS_SUBSCRIPTION, AGENT_METRICS_SUBSCRIPTION]
    for subscription in subscriptions:
        await client.subscribe(shared(group, subscription), qos=1)
    if config.ingest.broker_drops:
        await client.subscribe(BROKER_DROPPED_TOPIC, qos=1)
    if alarms is not None:
        feed = alarm_client or client
        extra = ALARM_INPUTS if alarm_client else ALARM_INPUTS[2:4]
        for subscription in extra:
            await feed.subscribe(subscription, qos=1)
    await client.start()
    if alarm_client is not None:
        await alarm_client.start()
    api_port = await api.start() if api else None
    log.info(
        "collector started",
        collector=config.collector.id,
        group=config.collector.group,
        broker=config.broker.url,
        mqtt=config.ingest.mqtt_version,
        receive_maximum=client.window,
        field_types_known=len(fields) if fields is not None else None,
        influx=writer.url,
        spool=str(config.spool.path),
        dead_letters=str(letters.dir),
        spooled=spool.depth,
        api=config.influx.api,
        alarm_rules=len(alarms.engine.rules) if alarms else 0,
        alarm_members=list(alarms.ownership.members) if alarms else None,
        alarm_state=str(config.alarms.state) if alarms else None,
        alarms_standing=sum(r.active for r in alarms.manager.records.values()) if alarms else 0,
        alarm_api_port=api_port,
    )
    sequences = receiver.sequences
    stats.progress_receive = stats.progress_store = time.monotonic()

    def start_tasks(task_group: asyncio.TaskGroup) -> None:
        task_group.create_task(receiver.run())
        task_group.create_task(store.run(store_queue))
        if config.ingest.broker_drops:
            task_group.create_task(expect_drop_counter(receiver, DROP_COUNTER_WITHIN_S))
        task_group.create_task(store.replay_forever())
        if alarms is not None:
            alarms.start(task_group)
            reload_on_sighup(config, alarms)
            task_group.create_task(
                kpi_forever(config.collector.id, alarms, store_queue, config.alarms.kpi.interval_s)
            )
        if alarm_client is not None and alarms is not None:
            task_group.create_task(receiver.feed_alarms(alarm_client, alarms))
        task_group.create_task(
            report_forever(
                config.collector.id,
                store,
                store_queue,
                config.stats_interval_s,
                sequences=sequences,
                dead_letters=dead_letters,
                alarms=alarms,
                receiver=receiver,
            )
        )

    try:
        await run_until_signalled(start_tasks)
        log.info("collector stopping", **stats.snapshot())
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if api is not None:
            await api.close()
        if alarm_client is not None:
            await alarm_client.stop()
        await client.stop()
        await writer.close()
        await journal.close()
        await history.close()
        spool.close()
        dead_letters.close()
        redeliveries.close()
        if alarms is not None:
            await alarms.close()


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
    collector_id: str,
    alarms: AlarmService,
    store_queue: asyncio.Queue[Batchable],
    interval_s: float,
) -> None:
    """Alarm KPIs (ISA-18.2 / EEMUA 191) as measurements ``alarm_kpi`` and ``alarm_top``."""
    while True:
        await asyncio.sleep(interval_s)
        for alarm in alarms.kpis.stopped_chattering(now_ns()):
            log.info("alarm no longer chattering", alarm_id=alarm)
        lines = alarms.kpis.lines(collector_id, now_ns(), alarms.manager.records.values())
        try:  # never wait for room: KPIs are recomputed next interval anyway
            store_queue.put_nowait(Batchable(lines, None))
        except asyncio.QueueFull:
            log.debug("store queue full, alarm KPIs not stored")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in acl.COMMANDS:  # derrick-collector acl|passwd: broker accounts
        return acl.main(argv)
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"derrick-collector: invalid config\n{exc}\n")
        return 2
    if args.check:
        sys.stdout.write(
            f"{args.config}: ok, {len(config.alarms.ruleset)} alarm rules, "
            f"InfluxDB {config.influx.api} at {config.influx.url}\n{broker_note(config)}"
        )
        return 0
    logs.configure(args.log_format or config.log.format, config.log.level)
    try:
        asyncio.run(run(config))
    except (
        MqttError,
        StoreError,
        SpoolError,
        HttpApiError,
        AlarmStateError,
        OutboxError,
        ValueError,
    ) as exc:
        log.error("collector failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
