"""derrick-collector: MQTT telemetry -> InfluxDB, and threshold alarms -> MQTT."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import structlog

from collector.config import CollectorConfig, load_config
from collector.deadletter import DeadLetters
from collector.evaluate import Evaluator
from collector.influx import StoreError, V1Writer, make_writer
from collector.lineproto import encode_stats
from collector.notify import notify_forever
from collector.receive import receive_forever
from collector.sequence import SequenceTracker
from collector.stats import Stats, interval_fields
from collector.store import Batchable, Store
from derrick import logs
from derrick.cli import run_until_signalled
from derrick.configfile import ConfigError
from derrick.contract import (
    AGENT_METRICS_SUBSCRIPTION,
    DEVICE_STATUS_SUBSCRIPTION,
    TELEMETRY_SUBSCRIPTION,
    AlarmEvent,
    now_ns,
    shared,
)
from derrick.mqtt import MqttClient, MqttError
from derrick.spool import SpoolError

log = structlog.get_logger("collector")

# Alarm transitions waiting for the broker; only a long broker outage fills it.
EVENT_QUEUE_SIZE = 10_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="derrick-collector",
        description="Subscribe to Derrick telemetry on an MQTT broker, write it to InfluxDB "
        "(v1 /write or v2 API) and raise threshold alarms on the MQTT alarm topics.",
        epilog="examples:\n"
        "  derrick-collector --config /etc/derrick/collector.yaml\n"
        "  derrick-collector --config collector.yaml --check   # validate config and exit",
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
) -> None:
    """Log a summary and store the collector's own counters every ``interval_s``."""
    loop = asyncio.get_running_loop()
    stats = store.stats
    then, then_t = stats.snapshot(), loop.time()
    while True:
        await asyncio.sleep(interval_s)
        if sequences is not None:
            sequences.expire(time.monotonic())
            stats.seq_gaps, stats.seq_duplicates = sequences.gaps, sequences.duplicates
        stats.dead_letters = dead_letters.counts.get("written", 0)
        now, now_t = stats.snapshot(), loop.time()
        spool = store.spool.stats() if store.spool else None
        depth, age = (spool.depth, spool.oldest_age_s) if spool else (0, None)
        log.info("ingest summary", queued=store_queue.qsize(), spool_depth=depth, **now)
        fields = interval_fields(now, then, now_t - then_t, store_queue.qsize(), depth, age)
        then, then_t = now, now_t
        try:  # never wait for room: the counters are the least important lines
            store_queue.put_nowait(Batchable([encode_stats(collector_id, fields, now_ns())], None))
        except asyncio.QueueFull:
            log.debug("store queue full, collector stats not stored")


async def run(config: CollectorConfig) -> None:
    stats = Stats()
    writer = make_writer(config.influx)
    if isinstance(writer, V1Writer) and config.influx.create_database:
        try:
            await writer.create_database()
        except StoreError as exc:  # InfluxDB may come later: the store stage retries
            log.warning(
                "could not create database", database=writer.settings.database, reason=str(exc)
            )
    client = MqttClient(
        config.broker, client_id=config.collector.id, manual_ack=True, inbox_size=config.queue_size
    )
    store_queue: asyncio.Queue[Batchable] = asyncio.Queue(maxsize=config.queue_size)
    events: asyncio.Queue[AlarmEvent] = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
    spool = config.spool.open()
    letters = config.dead_letter
    dead_letters = DeadLetters(
        letters.dir, letters.max_mb, letters.max_payload_kb * 1000, letters.file_mb
    )
    store = Store(
        writer,
        client.ack,
        stats,
        config.batch.max_lines,
        config.batch.max_delay_s,
        spool,
        dead_letters.put_refused,
    )
    group = config.collector.group
    for subscription in (
        TELEMETRY_SUBSCRIPTION,
        DEVICE_STATUS_SUBSCRIPTION,
        AGENT_METRICS_SUBSCRIPTION,
    ):
        await client.subscribe(shared(group, subscription), qos=1)
    await client.start()
    log.info(
        "collector started",
        collector=config.collector.id,
        group=config.collector.group,
        broker=config.broker.url,
        influx=writer.url,
        spool=str(config.spool.path),
        dead_letters=str(letters.dir),
        spooled=spool.depth,
        api=config.influx.api,
        rules=len(config.rules.rules),
    )
    evaluator = Evaluator(config.rules.rules)
    # In a shared-subscription group each collector sees a share of every agent's numbers.
    sequences = None if config.collector.group else SequenceTracker(config.sequence_grace_s)

    def start_tasks(group: asyncio.TaskGroup) -> None:
        group.create_task(
            receive_forever(
                client,
                store_queue,
                evaluator,
                events,
                stats,
                dead_letters=dead_letters,
                sequences=sequences,
            )
        )
        group.create_task(store.run(store_queue))
        group.create_task(store.replay_forever())
        group.create_task(notify_forever(events, client, store_queue, stats))
        group.create_task(
            report_forever(
                config.collector.id,
                store,
                store_queue,
                config.stats_interval_s,
                sequences=sequences,
                dead_letters=dead_letters,
            )
        )

    try:
        await run_until_signalled(start_tasks)
        log.info("collector stopping", **stats.snapshot())
    finally:
        await client.stop()
        await writer.close()
        spool.close()
        dead_letters.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"derrick-collector: invalid config\n{exc}\n")
        return 2
    if args.check:
        sys.stdout.write(
            f"{args.config}: ok, {len(config.rules.rules)} alarm rules, "
            f"InfluxDB {config.influx.api} at {config.influx.url}\n"
        )
        return 0
    logs.configure(args.log_format or config.log.format, config.log.level)
    try:
        asyncio.run(run(config))
    except (MqttError, StoreError, SpoolError, ValueError) as exc:
        log.error("collector failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
