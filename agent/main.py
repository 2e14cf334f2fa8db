"""derrick-agent: poll Modbus PLCs and publish their readings over MQTT."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog

from agent.config import AgentConfig, load_config
from agent.outbox import Outbox
from agent.plan import plan_reads
from agent.poll import DevicePoller
from agent.publish import announce_forever, publish_forever, status_payload
from derrick import logs
from derrick.cli import run_until_signalled
from derrick.configfile import ConfigError
from derrick.contract import agent_status_topic
from derrick.mqtt import MqttClient, MqttError

log = structlog.get_logger("agent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="derrick-agent",
        description="Poll the Modbus PLCs named in a config file and publish their readings "
        "to an MQTT broker (QoS 1), one JSON message per device per poll.",
        epilog="examples:\n"
        "  derrick-agent --config /etc/derrick/agent.yaml\n"
        "  derrick-agent --config agent.yaml --check     # validate and print the read plan",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="agent YAML config file")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config, print the Modbus requests per cycle, exit",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        help="override log.format from the config",
    )
    return parser.parse_args(argv)


def print_plan(config: AgentConfig) -> None:
    for device in config.devices:
        plan = plan_reads(device.selected_registers, device.max_registers, device.max_bits)
        sys.stdout.write(
            f"{device.name} ({device.host}:{device.port} unit {device.unit_id}): "
            f"{len(plan)} requests per cycle every {device.interval_s} s\n"
        )
        for req in plan:
            tags = ", ".join(reg.tag for reg in req.registers)
            sys.stdout.write(f"  {req.table:<8} {req.address:>5} +{req.count:<4} {tags}\n")


async def run(config: AgentConfig) -> None:
    outbox = Outbox(config.agent.id, config.agent.site, config.queue_size)
    topic = agent_status_topic(config.agent.id)
    client = MqttClient(
        config.broker,
        client_id=config.agent.id,
        will=(topic, status_payload(config.agent.id, outbox.boot, "offline")),
    )
    await client.start()
    log.info(
        "agent started",
        agent=config.agent.id,
        site=config.agent.site,
        boot=outbox.boot,
        broker=config.broker.url,
        devices=len(config.devices),
    )

    def start_tasks(group: asyncio.TaskGroup) -> None:
        group.create_task(publish_forever(outbox, client, config.publish_timeout_s))
        group.create_task(announce_forever(client, config.agent.id, outbox.boot))
        for device in config.devices:
            group.create_task(_poll_device(device, outbox))

    try:
        await run_until_signalled(start_tasks)
        log.info("agent stopping", queued=outbox.qsize(), dropped=outbox.dropped)
    finally:
        await client.wait_published(timeout=2.0)
        await client.stop(final=(topic, status_payload(config.agent.id, outbox.boot, "offline")))


async def _poll_device(device, outbox: Outbox) -> None:
    with structlog.contextvars.bound_contextvars(
        site=outbox.site, asset=device.asset, device=device.name
    ):
        poller = DevicePoller(
            device,
            lambda readings: outbox.put(device.asset, device.name, device.equipment_kind, readings),
        )
        await poller.run()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"derrick-agent: invalid config\n{exc}\n")
        return 2
    if args.check:
        print_plan(config)
        return 0
    logs.configure(args.log_format or config.log.format, config.log.level)
    try:
        asyncio.run(run(config))
    except (MqttError, ValueError) as exc:
        log.error("agent failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
