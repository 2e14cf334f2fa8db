"""derrick-agent: poll Modbus PLCs and publish their readings over MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections import Counter
from contextlib import AsyncExitStack
from functools import partial

import structlog

from agent import probe, profileio
from agent import status as local_status
from agent.alarms import EdgeAlarms
from agent.annunciate import LocalAnnunciator
from agent.config import AgentConfig, Device, edge_rules, load_config
from agent.filter import FilterStage
from agent.metrics import AgentHealth
from agent.modbus import ModbusConnection
from agent.outbox import Outbox
from agent.plan import min_requests, plan_reads
from agent.poll import DevicePoller
from agent.presence import CollectorWatch
from agent.publish import Publisher, announce_forever, status_payload
from agent.sparkplug import SparkplugNode, publish_death
from derrick.alarms.rules import load_rule_files
from derrick.mqtt.client import MqttClient, MqttError
from derrick.plumbing import loops, sdnotify
from derrick.plumbing.cli import Program, run_until_signalled
from derrick.plumbing.configfile import ConfigError
from derrick.spool.store import SpoolError
from derrick.wire.payloads import DeviceState
from derrick.wire.sparkplug import EDGE as EDGE_PROPERTY
from derrick.wire.topics import agent_status_topic

log = structlog.get_logger("agent")


def print_plan(config: AgentConfig) -> None:
    """The Modbus requests per device per cycle, group by group."""
    total = 0
    for device in config.devices:
        link = device.link_key
        sys.stdout.write(f"{device.name} ({link} unit {device.unit_id}):\n")
        for group, interval in sorted(device.group_intervals().items()):
            regs = device.registers_in_group(group)
            plan = plan_reads(regs, device.max_registers, device.max_bits, device.max_gap)
            total += len(plan)
            fewest = min_requests(regs, device.max_registers, device.max_bits)
            sys.stdout.write(
                f"  group {group}: {len(plan)} request{'' if len(plan) == 1 else 's'}"
                f" every {interval} s"
                f" (fewest possible {fewest}, max_gap {device.max_gap})\n"
            )
            for req in plan:
                tags = ", ".join(reg.tag for reg in req.registers)
                sys.stdout.write(f"    {req.table:<8} {req.address:>5} +{req.count:<4} {tags}\n")
        if config.alarms is not None:
            names = [
                rule.name for rule in edge_rules(config.alarms.ruleset, config.agent.site, device)
            ]
            sys.stdout.write(f"  alarm rules at the edge ({len(names)}): {', '.join(names)}\n")
    sys.stdout.write(
        f"{len(config.devices)} devices, {total} requests per cycle; spool {config.spool.path}\n"
    )


def open_link(device: Device) -> ModbusConnection:
    """The Modbus connection a device is reached by (shared by units behind one link)."""
    if device.transport == "rtu":
        return ModbusConnection.serial(
            str(device.serial_port),
            device.timeout_s,
            baudrate=device.baudrate,
            parity=device.parity,
            stopbits=device.stopbits,
            bytesize=device.bytesize,
        )
    return ModbusConnection.tcp(
        str(device.host), device.port, device.timeout_s, framer=device.framer
    )


class Agent:
    """The stages of one agent process, wired together, and the resources they share.

    Readings flow plan -> poll -> decode -> filter -> outbox -> publish without coming
    back here: each device's poller hands its readings to its filter stage, which hands
    what is news to the outbox; the publisher sends what the spool holds.

    The agent owns the spool, the MQTT client and the Modbus links through one
    :class:`~contextlib.AsyncExitStack`, entered in the order they are opened (the spool
    here, the client and the links in :meth:`run`) and closed in reverse.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._resources = AsyncExitStack()
        self.spool = self._resources.enter_context(config.spool.open())
        try:
            self._build(config)
        except BaseException:  # a device that cannot be set up: nothing left open
            self.spool.close()
            raise

    def _build(self, config: AgentConfig) -> None:
        """The stages and the Modbus links, around the open spool."""
        self.outbox = Outbox(config.agent.id, config.agent.site, self.spool, group_per_tick=True)
        self.alarms: EdgeAlarms | None = None  # the last will says nothing of them
        self.status_topic = agent_status_topic(config.agent.id)
        self.node: SparkplugNode | None = None
        if config.format == "sparkplug":
            # A clean session per connection, as Sparkplug wants: each one is numbered
            # from its birth, so nothing of the last one may be sent again by paho.
            self.client = MqttClient(
                config.broker,
                client_id=config.agent.id,
                persistent=False,
                will=lambda: self._node().will(),
                resend_after_reconnect=False,
            )
            self.node = SparkplugNode(
                config.agent.site,
                config.agent.id,
                config.devices,
                self.spool,
                self.client,
                properties=self._node_properties,
                rules=self._edge_rules,
                primary_host=config.sparkplug.primary_host,
                compact=config.sparkplug.compact,
            )
            self.outbox.encode_data = self.node.data
            self.outbox.encode_condition = self.node.condition
        else:
            self.client = MqttClient(
                config.broker,
                client_id=config.agent.id,
                will=(self.status_topic, self._status("offline")),
            )
        self.publisher = Publisher(
            self.spool,
            self.client,
            window=config.publish_window,
            ack_wait_s=config.publish_timeout_s,
            stamp=self.node.stamp if self.node else None,
            on_connected=self.node.births if self.node else None,
            gate=self.node.gate if self.node else None,
        )
        self.outbox.stored_callback = self.publisher.wake
        self.collectors: CollectorWatch | None = None  # with local annunciation
        self.alarms = self._edge_alarms(config)
        if self.node is not None and self.collectors is not None:
            self.node.other = self.collectors.take  # one inbox: the node reads it
        self.links: dict[str, ModbusConnection] = {}
        users = Counter(device.link_key for device in config.devices)
        self.filters: dict[str, FilterStage] = {}
        self.pollers: dict[str, DevicePoller] = {}
        for device in config.devices:
            if device.link_key not in self.links:
                self.links[device.link_key] = open_link(device)
            self.filters[device.name] = FilterStage(device, self.outbox)
            first_stage = self.filters[device.name].put
            if self.alarms is not None:
                first_stage = self.alarms.stage(device, first_stage).put
            self.pollers[device.name] = DevicePoller(
                device,
                self.links[device.link_key],
                first_stage,
                partial(self._state, device),
                shares_link=users[device.link_key] > 1,
                aligned=config.align_polls,
            )
        self.health = AgentHealth(
            self.outbox, self.pollers, self.filters, self.publisher, self.client
        )

    def _node(self) -> SparkplugNode:
        assert self.node is not None
        return self.node

    def _node_properties(self) -> dict[str, str]:
        """What the NBIRTH says beside bdSeq: the rules evaluated here, as the JSON
        birth's ``edge`` (so the collector hands them over)."""
        if self.alarms is None:
            return {}
        edge = [cover.model_dump(mode="json") for cover in self.alarms.coverage]
        return {EDGE_PROPERTY: json.dumps(edge, separators=(",", ":"))}

    def _edge_rules(self) -> dict[str, list[str]]:
        """The alarm rules evaluated here, by device (their DBIRTH condition metrics)."""
        if self.alarms is None:
            return {}
        return {cover.device: list(cover.rules) for cover in self.alarms.coverage}

    def _edge_alarms(self, config: AgentConfig) -> EdgeAlarms | None:
        """The alarm stage, when the config names rules to evaluate here."""
        if config.alarms is None:
            return None
        local = None
        if config.alarms.local is not None:
            self.collectors = CollectorWatch()
            local = LocalAnnunciator(config.alarms.local, self.spool, self._uplink)
        alarms = EdgeAlarms(
            config.agent.site,
            config.agent.id,
            config.alarms.ruleset,
            config.devices,
            self.outbox,
            self.spool,
            self.publisher.in_flight,
            local,
        )
        self.publisher.on_published = alarms.delivered
        return alarms

    def _uplink(self) -> bool:
        """The alarms reach a collector: the broker is connected and, by their retained
        statuses, a collector is online (agent.presence)."""
        watch = self.collectors
        return self.client.connected and (watch is None or watch.any_online)

    def _status(self, state: str) -> bytes:
        return status_payload(
            self.config.agent.id,
            self.outbox.boot,
            state,
            self.config.agent.site,
            self.alarms.coverage if self.alarms is not None else None,
        )

    def _state(self, device: Device, state: DeviceState, reason: str) -> None:
        self.outbox.flush()  # the polls before the change go first
        if self.node is not None:
            self.node.device_state(device.name, state)
        else:
            endpoint = self.pollers[device.name].connection.endpoint
            self.outbox.put_device_status(device.asset, device.name, state, reason, endpoint)
        if self.alarms is not None:
            self.alarms.device_state(device, state)

    async def run(self) -> None:
        async with self._resources as resources:
            if self.node is not None:
                await self.node.subscribe()
            if self.collectors is not None:
                await self.client.subscribe(CollectorWatch.subscription, qos=1)
            await self.client.start()
            resources.push_async_callback(self._disconnect)
            resources.callback(self.outbox.flush)  # the last polls, before the spool closes
            for link in self.links.values():
                resources.callback(link.close)
            if self.alarms is not None:
                resources.callback(self._forget_sighup)
                if self.alarms.local is not None:
                    resources.push_async_callback(self.alarms.local.close)
            stats = self.spool.stats()
            log.info(
                "agent started",
                agent=self.config.agent.id,
                site=self.config.agent.site,
                boot=self.outbox.boot,
                broker=self.config.broker.url,
                devices=len(self.config.devices),
                spool=str(self.config.spool.path),
                stored=stats.depth,
                edge_rules=len(self.config.alarms.ruleset) if self.config.alarms else 0,
                event_loop=loops.running_loop_name(),
            )
            await run_until_signalled(self._start_tasks)

    def _start_tasks(self, group: asyncio.TaskGroup) -> None:
        group.create_task(self.outbox.enforce_age_forever())
        group.create_task(self.outbox.commit_forever())
        group.create_task(self.publisher.run())
        if self.node is not None:  # births and deaths are the node's
            group.create_task(self.node.serve_commands())
            group.create_task(self.node.follow_connection())
        else:
            group.create_task(
                announce_forever(self.client, self.status_topic, partial(self._status, "online"))
            )
            group.create_task(self._restate_forever())
            if self.collectors is not None:
                group.create_task(self.collectors.follow(self.client))
        group.create_task(self.health.publish_forever(self.config.metrics_interval_s))
        for device in self.config.devices:
            group.create_task(self._poll(device))
        if self.alarms is not None and self.config.alarms is not None:
            group.create_task(self.alarms.tick_forever(self.config.alarms.tick_s))
            if self.alarms.local is not None:
                group.create_task(self.alarms.local.deliver_forever())
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_rules)
        self._tell_systemd(group)

    def _tell_systemd(self, group: asyncio.TaskGroup) -> None:
        """The snapshot `derrick-agent status` reads, the watchdog (fed while no poll
        group is stuck) and readiness: the spool is open and the tasks run (systemd
        notify protocol; nothing without a NOTIFY_SOCKET)."""
        snapshot = local_status.snapshot_path(self.config.spool.path)
        group.create_task(local_status.keep_snapshot_forever(self.health, snapshot))
        stalled = partial(local_status.stalled_polls, self.pollers.values())
        group.create_task(sdnotify.watchdog_forever(stalled))
        sdnotify.ready(
            f"{len(self.config.devices)} devices; spool {self.spool.stats().depth} unsent"
        )

    def _reload_rules(self) -> None:
        """SIGHUP: read the alarm rule files again; a bad one is logged, the old rules
        kept. The next birth message says what is evaluated here now."""
        assert self.alarms is not None and self.config.alarms is not None
        try:
            self.alarms.reload(load_rule_files(self.config.alarms.rules))
        except (ConfigError, ValueError) as exc:
            log.error("alarm rules not reloaded, keeping the old ones", reason=str(exc))
            return
        if not self.client.connected:
            return
        if self.node is not None:
            if self.node.live:
                self.node.births()  # a rebirth: the NBIRTH says what moved
        else:
            self.client.publish_nowait(self.status_topic, self._status("online"), retain=True)

    def _forget_sighup(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    async def _restate_forever(self) -> None:
        """After every (re)connect, publish each device's current status again.

        The retained status lives on the broker; a broker that lost its store (killed,
        replaced) would otherwise keep a stale state, or none, until the next change.
        """
        while True:
            await self.client.wait_connected(timeout=float("inf"))
            for device in self.config.devices:
                poller = self.pollers[device.name]
                if poller.state is not None:
                    self._state(device, poller.state, poller.last_failure)
            await self.client.wait_disconnected()

    async def _poll(self, device: Device) -> None:
        with structlog.contextvars.bound_contextvars(
            site=self.config.agent.site, asset=device.asset, device=device.name
        ):
            await self.pollers[device.name].run()

    async def _disconnect(self) -> None:
        """Give PUBACKs in flight a moment, settle what they acknowledged, say offline.

        Runs when the tasks are over, before the spool closes.
        """
        sdnotify.stopping()
        await self.client.wait_published(timeout=2.0)
        await asyncio.sleep(0)  # let the PUBACK callbacks run
        self.publisher.settle()
        stats = self.spool.stats()
        log.info(
            "agent stopping",
            stored=stats.depth,
            published=self.publisher.published,
            dropped=self.outbox.dropped_total(),
        )
        if self.node is not None:
            await publish_death(self.client, self.node.death)
            await self.client.stop()
        else:
            await self.client.stop(final=(self.status_topic, self._status("offline")))


async def run(config: AgentConfig) -> None:
    """Build the agent inside the event loop (pymodbus clients need a running loop)."""
    await Agent(config).run()


PROGRAM = Program(
    name="derrick-agent",
    description="Poll the Modbus PLCs named in a config file and publish their readings "
    "to an MQTT broker (QoS 1), one JSON message per device per poll. With alarms.rules, "
    "evaluate those alarm rules here too; SIGHUP reloads the rule files.",
    epilog="examples:\n"
    "  derrick-agent --config /etc/derrick/agent.yaml\n"
    "  derrick-agent --config agent.yaml --check     # validate and print the read plan\n"
    "\nonboarding a PLC (docs/onboarding.md):\n"
    "  derrick-agent probe --help      # find the answering ranges and the word order\n"
    "  derrick-agent profile --help    # register maps from and to CSV / XLSX\n"
    "\non the gateway (docs/install-gateway.md):\n"
    "  derrick-agent status --config /etc/derrick/agent.yaml   # devices, spool, broker",
    config_help="agent YAML config file",
    load=lambda args: load_config(args.config),
    check=lambda _args, config: print_plan(config),
    check_help="validate the config, print the Modbus requests per cycle, exit",
    run=run,
    failures=(MqttError, SpoolError, ValueError),
    log=log,
    failed="agent failed",
    event_loop=lambda config: config.event_loop,
    commands={"probe": probe.main, "profile": profileio.main, "status": local_status.main},
)


def main(argv: list[str] | None = None) -> int:
    return PROGRAM.main(argv)


if __name__ == "__main__":
    sys.exit(main())
