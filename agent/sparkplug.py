"""The agent as a Sparkplug B edge node (``format: sparkplug``).

The agent's identities map onto Sparkplug's: the site is the group, the agent the edge
node, each PLC a device (:mod:`derrick.wire.sparkplug`). What changes against the JSON
wire, stage by stage:

* **outbox**: a poll's readings become a DDATA payload (aliases and values, written by
  :class:`~derrick.wire.sparkplug.DataEncoder`) and wait in the spool as before, without
  a sequence number;
* **publish**: the connection's ``seq`` (0-255) is appended as each message leaves, and
  a replayed one has every metric flagged ``is_historical`` (:meth:`SparkplugNode.stamp`);
* **alarms**: each edge alarm condition change (:mod:`agent.alarms`) is a DDATA of its
  own, the rule's ``Alarms/<rule>`` metric with the change in its properties
  (:func:`~derrick.wire.sparkplug.encode_condition`), spooled and replayed like readings;
* **births**: after every connect, and when a host asks (NCMD ``Node Control/Rebirth``),
  NBIRTH (seq 0, bdSeq) and a DBIRTH per answering device (every metric's name, alias,
  type, unit, quality and last value, and its alarm conditions) go out before anything
  else; a device that stops
  answering gets a DDEATH, one that answers again a DBIRTH. Births are about this
  connection, so they go straight to the broker, never through the spool;
* **last will**: NDEATH with the bdSeq of the connection it belongs to (one more per
  connect, so a host can tell a stale death from the current one).

Aliases are given once per (device, tag) and per (device, alarm rule) and kept in the
spool's notes, so a message stored before a restart means the same after it; a tag
dropped from the config keeps its alias unused (a rule dropped keeps its metric in the
births, so a change of it still in the spool can be read). The agent stays read-only:
NCMD Rebirth is the only command it honours; any other command (a DCMD writing a tag)
is refused, counted and logged once per kind.

Spec deviations, on purpose: DDATA and DDEATH go at QoS 1 (the spec says 0) so that a
message leaves the spool only when the broker has it; a host reads them the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import structlog

from agent.config import Device
from agent.publish import Gate
from derrick.mqtt.client import InboundMessage, MqttClient, MqttError
from derrick.plc.profile import Register
from derrick.plc.registers import DataType
from derrick.spool.store import Spool
from derrick.wire import sparkplug as sp
from derrick.wire.payloads import (
    ConditionMessage,
    ConditionState,
    DeviceState,
    Reading,
    mark_historical,
    now_ns,
)
from derrick.wire.topics import TopicError

log = structlog.get_logger(__name__)

_PREFIX = sp.NAMESPACE + "/"

ALIAS_NOTE = "sparkplug:alias:"
"""Spool note ``sparkplug:alias:<device>/<tag>`` -> the alias given to that metric."""

_EXACT_TYPES = {
    DataType.BOOL: sp.MetricType.BOOLEAN,
    DataType.BIT: sp.MetricType.BOOLEAN,
    DataType.INT16: sp.MetricType.INT16,
    DataType.UINT16: sp.MetricType.UINT16,
    DataType.INT32: sp.MetricType.INT32,
    DataType.UINT32: sp.MetricType.UINT32,
    DataType.INT64: sp.MetricType.INT64,
    DataType.UINT64: sp.MetricType.UINT64,
    DataType.FLOAT32: sp.MetricType.FLOAT,
    DataType.FLOAT64: sp.MetricType.DOUBLE,
    DataType.STRING: sp.MetricType.STRING,
}


def metric_type(reg: Register) -> sp.MetricType:
    """The Sparkplug type that holds a register's engineering value exactly: its own
    type, or Double once a scale or offset makes it a decimal."""
    scaled = reg.scale != 1.0 or reg.offset != 0.0
    if scaled and reg.type not in {DataType.BOOL, DataType.BIT, DataType.STRING}:
        return sp.MetricType.DOUBLE
    return _EXACT_TYPES[reg.type]


def assign_aliases(devices: Sequence[Device], spool: Spool) -> dict[str, list[sp.MetricSpec]]:
    """Each device's metrics, with aliases kept from earlier runs and new ones for new
    tags (one more than any given), written back to the spool's notes. The device's
    ``Properties/asset`` and ``Properties/kind`` birth metrics get theirs the same way
    (the last two specs of each list)."""
    given = {key[len(ALIAS_NOTE) :]: int(value) for key, value in spool.notes(ALIAS_NOTE).items()}
    next_alias = max(given.values(), default=0) + 1
    new: dict[str, str | None] = {}
    specs: dict[str, list[sp.MetricSpec]] = {}
    for device in devices:
        metrics = [(reg.tag, metric_type(reg), reg.unit) for reg in device.selected_registers] + [
            (sp.ASSET, sp.MetricType.STRING, ""),
            (sp.KIND, sp.MetricType.STRING, ""),
        ]
        specs[device.name] = []
        for name, kind, unit in metrics:
            key = f"{device.name}/{name}"
            if key not in given:
                given[key] = next_alias
                new[ALIAS_NOTE + key] = str(next_alias)
                next_alias += 1
            specs[device.name].append(sp.MetricSpec(name, given[key], kind, unit))
    spool.write_notes(new)
    return specs


_HOLDS = frozenset({ConditionState.ACTIVE, ConditionState.SUPPRESSED})


class SparkplugNode:
    """One agent's Sparkplug session state: aliases, encoders, bdSeq and seq, births."""

    def __init__(
        self,
        site: str,
        agent_id: str,
        devices: Sequence[Device],
        spool: Spool,
        client: MqttClient,
        *,
        properties: Callable[[], dict[str, str]] = dict,
        rules: Callable[[], dict[str, list[str]]] = dict,
        primary_host: str | None = None,
        compact: bool = False,
    ) -> None:
        """``properties``: the NBIRTH's node properties, asked at every birth.
        ``rules``: the alarm rules evaluated here, by device, asked at every birth (their
        condition metrics are born with the device).
        ``primary_host``: the host application whose STATE decides when to publish.
        ``compact``: data metrics without timestamps, the poll's time the message's (see
        :class:`~derrick.wire.sparkplug.DataEncoder`)."""
        self.site = site
        self.properties = properties
        self.primary_host = primary_host
        self.gate = Gate(is_open=primary_host is None)
        # inbound messages that are not the node's: True when taken (agent.presence)
        self.other: Callable[[InboundMessage], bool] | None = None
        self._host_stamp = -1  # the newest STATE timestamp of the primary host
        self.agent_id = agent_id
        self.client = client
        self.devices = {device.name: device for device in devices}
        aliased = assign_aliases(devices, spool)
        self.specs = {name: specs[:-2] for name, specs in aliased.items()}
        self._property_aliases = {
            name: (specs[-2].alias, specs[-1].alias) for name, specs in aliased.items()
        }
        self.compact = compact
        self.encoders = {
            name: sp.DataEncoder(specs, compact=compact) for name, specs in self.specs.items()
        }
        self.last: dict[str, dict[str, Reading]] = {name: {} for name in self.devices}
        self.state: dict[str, DeviceState | None] = dict.fromkeys(self.devices)
        self.bdseq = 0
        self._connects = 0
        self.seq = 0
        self.rebirths = 0
        self.refused_commands = 0
        self._refused_kinds: set[str] = set()
        self._aliases = {name: {spec.alias for spec in specs} for name, specs in self.specs.items()}
        self.node_topic = sp.sparkplug_topic(site, sp.MessageType.NBIRTH, agent_id)
        self.spool = spool
        self.rules = rules
        # device -> rule -> its condition metric, and whether it holds (None: not known)
        self.conditions: dict[str, dict[str, sp.MetricSpec]] = {name: {} for name in self.devices}
        self.holds: dict[str, dict[str, bool]] = {name: {} for name in self.devices}
        self._restore_conditions()

    # -- alarm conditions -------------------------------------------------------------

    def _restore_conditions(self) -> None:
        """The condition metrics given aliases in earlier runs (a stored change of any of
        them may still be replayed)."""
        for key, alias in self.spool.notes(ALIAS_NOTE).items():
            device, _, name = key[len(ALIAS_NOTE) :].partition("/")
            if device in self.devices and name.startswith(sp.ALARMS_FOLDER):
                self._add_condition(device, name[len(sp.ALARMS_FOLDER) :], int(alias))

    def _add_condition(self, device: str, rule: str, alias: int) -> sp.MetricSpec:
        spec = sp.condition_spec(rule, alias)
        self.conditions[device][rule] = spec
        self._aliases[device].add(alias)
        return spec

    def _condition_spec(self, device: str, rule: str) -> tuple[sp.MetricSpec, bool]:
        """The metric of a rule on a device, and whether it was new (an alias given now:
        one more than any given, kept in the spool's notes)."""
        spec = self.conditions[device].get(rule)
        if spec is not None:
            return spec, False
        given = self.spool.notes(ALIAS_NOTE).values()
        alias = max((int(value) for value in given), default=0) + 1
        self.spool.write_notes({f"{ALIAS_NOTE}{device}/{sp.ALARMS_FOLDER}{rule}": str(alias)})
        return self._add_condition(device, rule, alias), True

    def condition(self, message: ConditionMessage) -> tuple[str, bytes]:
        """The DDATA of one edge alarm condition change (outbox stage), without seq. A
        rule without a metric yet gets one, and its device a DBIRTH when connected."""
        device = message.device
        spec, new = self._condition_spec(device, message.rule)
        self.holds[device][message.rule] = message.state in _HOLDS
        if new and self.live and self.state[device] is DeviceState.UP:
            self._device_birth(device)
        topic = sp.sparkplug_topic(self.site, sp.MessageType.DDATA, self.agent_id, device)
        return topic, sp.encode_condition(spec, message)

    def _learn_conditions(self) -> None:
        """Metrics for the rules evaluated here now (after a start or a rule reload)."""
        for device, rules in self.rules().items():
            if device in self.devices:
                for rule in rules:
                    self._condition_spec(device, rule)

    # -- the connection ---------------------------------------------------------------

    def will(self) -> tuple[str, bytes, bool]:
        """The NDEATH for the next connect (called before each attempt): bdSeq 0 for the
        first, one more for every later one."""
        if self._connects:
            self.bdseq = (self.bdseq + 1) % 256
        self._connects += 1
        topic = sp.sparkplug_topic(self.site, sp.MessageType.NDEATH, self.agent_id)
        return topic, sp.encode_node_death(self.bdseq, now_ns()), False

    def death(self) -> tuple[str, bytes]:
        """The NDEATH published on a clean stop (the same as the will)."""
        topic = sp.sparkplug_topic(self.site, sp.MessageType.NDEATH, self.agent_id)
        return topic, sp.encode_node_death(self.bdseq, now_ns())

    @property
    def live(self) -> bool:
        """Connected, and the primary host (if any) online: births may go out now."""
        return self.client.connected and self.gate.is_open

    def next_seq(self) -> int:
        seq = self.seq
        self.seq = (seq + 1) % 256
        return seq

    def births(self) -> None:
        """NBIRTH (seq 0) and a DBIRTH per device that answers: after every connect and
        on a rebirth request, before any other message of the connection."""
        self._learn_conditions()
        self.seq = 0
        self.client.publish_nowait(
            sp.sparkplug_topic(self.site, sp.MessageType.NBIRTH, self.agent_id),
            sp.encode_node_birth(self.bdseq, now_ns(), self.next_seq(), self.properties()),
            qos=0,
        )
        for name, state in self.state.items():
            if state is DeviceState.UP:
                self._device_birth(name)

    def _device_birth(self, name: str) -> None:
        device = self.devices[name]
        payload = sp.encode_device_birth(
            self.specs[name],
            self.last[name],
            now_ns(),
            asset=device.asset,
            kind=device.equipment_kind,
            property_aliases=self._property_aliases[name],
            conditions=[
                (spec, self.holds[name].get(rule)) for rule, spec in self.conditions[name].items()
            ],
        )
        topic = sp.sparkplug_topic(self.site, sp.MessageType.DBIRTH, self.agent_id, name)
        self.client.publish_nowait(topic, sp.with_seq(payload, self.next_seq()), qos=0)

    # -- the stages' hooks --------------------------------------------------------------

    def data(self, device: str, readings: list[Reading]) -> tuple[str, bytes] | None:
        """The DDATA of one poll's chosen readings (outbox stage), without seq."""
        last = self.last[device]
        for reading in readings:
            last[reading.tag] = reading
        payload = self.encoders[device].encode(readings)
        if payload is None:
            return None
        return sp.sparkplug_topic(self.site, sp.MessageType.DDATA, self.agent_id, device), payload

    def device_state(self, device: str, state: DeviceState) -> None:
        """A device came up (DBIRTH) or stopped answering (DDEATH); told at once when
        connected, else by the births of the next connection."""
        before, self.state[device] = self.state[device], state
        if not self.live or before is state:
            return
        if state is DeviceState.UP:
            self._device_birth(device)
            return
        topic = sp.sparkplug_topic(self.site, sp.MessageType.DDEATH, self.agent_id, device)
        payload = sp.with_seq(sp.encode_device_death(now_ns()), self.next_seq())
        self.client.publish_nowait(topic, payload, qos=1)

    def stamp(self, topic: str, payload: bytes, historical: bool) -> bytes | None:
        """A stored Sparkplug message as it leaves (publish stage): with this
        connection's seq, and when replayed, flagged historical with the metrics its
        device no longer has left out (None: nothing of it is left to send). Derrick's
        own JSON messages (agent events; alarm conditions stored by an agent before they
        moved into DDATA) leave as on the JSON wire."""
        if not topic.startswith(_PREFIX):
            return mark_historical(payload) if historical else payload
        if historical:
            payload = self._replayable(topic, payload)
            if payload is None:
                return None
        sent = None if self.compact else now_ns()  # compact: the message's time is the poll's
        return sp.with_seq(payload, self.next_seq(), sent)

    def _replayable(self, topic: str, payload: bytes) -> bytes | None:
        try:
            parsed = sp.parse_sparkplug_topic(topic)
            message = sp.decode_payload(payload)
        except (TopicError, sp.SparkplugError) as exc:
            log.error("stored Sparkplug message unreadable, dropped", topic=topic, error=str(exc))
            return None
        device = parsed.device if isinstance(parsed, sp.SparkplugTopic) else None
        known = self._aliases.get(device or "", set())
        kept = [metric for metric in message.metrics if metric.alias in known]
        if not kept:
            log.warning(
                "stored readings of a device or tags no longer polled, dropped", topic=topic
            )
            return None
        del message.metrics[:]
        for metric in kept:
            metric.is_historical = True
        message.metrics.extend(kept)
        return message.SerializeToString()

    # -- host commands ------------------------------------------------------------------

    async def subscribe(self) -> None:
        """NCMD and DCMD for this node, and the primary host's STATE (again after every
        reconnect, by the client)."""
        if self.primary_host is not None:
            await self.client.subscribe(sp.host_state_topic(self.primary_host), qos=1)
        await self.client.subscribe(
            sp.sparkplug_topic(self.site, sp.MessageType.NCMD, self.agent_id), qos=0
        )
        await self.client.subscribe(
            sp.sparkplug_topic(self.site, sp.MessageType.DCMD, self.agent_id, "+"), qos=0
        )

    async def serve_commands(self) -> None:
        """Honour Rebirth; refuse everything else (the agent never writes to a PLC)."""
        while True:
            inbound = await self.client.inbox.get()
            self.command(inbound)

    async def follow_connection(self) -> None:
        """With a primary host: after a drop, nothing goes out until its STATE says
        online again on the new connection (the retained STATE comes with the
        subscription)."""
        while True:
            await self.client.wait_connected(timeout=float("inf"))
            await self.client.wait_disconnected()
            if self.primary_host is not None:
                self.gate.close()

    def host_state(self, host: str, payload: bytes) -> None:
        """A host application's STATE: the primary host's opens or closes the gate;
        an older one than already seen (a stale retained message) changes nothing."""
        if host != self.primary_host:
            return
        try:
            online, stamp = sp.parse_host_state(payload)
        except sp.SparkplugError as exc:
            self._refuse("STATE", sp.host_state_topic(host), str(exc))
            return
        if stamp < self._host_stamp:
            return
        self._host_stamp = stamp
        if online and not self.gate.is_open:
            log.info("primary host online: publishing", host=host)
            self.gate.open()
        elif not online and self.gate.is_open:
            log.warning("primary host offline: holding messages in the spool", host=host)
            self.gate.close()

    def command(self, inbound: InboundMessage) -> None:
        if self.other is not None and self.other(inbound):
            return  # not for the node (a collector's status, agent.presence)
        try:
            topic = sp.parse_sparkplug_topic(inbound.topic)
        except TopicError as exc:
            self._refuse("unreadable", inbound.topic, str(exc))
            return
        if isinstance(topic, sp.HostStateTopic):
            self.host_state(topic.host, inbound.payload)
            return
        try:
            message = sp.decode_payload(inbound.payload)
        except sp.SparkplugError as exc:
            self._refuse("unreadable", inbound.topic, str(exc))
            return
        if (
            isinstance(topic, sp.SparkplugTopic)
            and topic.type is sp.MessageType.NCMD
            and sp.rebirth_requested(message)
        ):
            self.rebirths += 1
            log.info("rebirth requested by a host", rebirths=self.rebirths)
            if self.live:
                self.births()
            return
        names = ", ".join(metric.name or f"alias {metric.alias}" for metric in message.metrics)
        kind = topic.type.value if isinstance(topic, sp.SparkplugTopic) else "STATE"
        self._refuse(kind, inbound.topic, f"writes {names or 'nothing'}: the agent is read-only")

    def _refuse(self, kind: str, topic: str, why: str) -> None:
        self.refused_commands += 1
        if kind not in self._refused_kinds:
            self._refused_kinds.add(kind)
            log.warning(
                "host command refused",
                kind=kind,
                topic=topic,
                reason=why[:300],
                refused=self.refused_commands,
            )


async def publish_death(client: MqttClient, death: Callable[[], tuple[str, bytes]]) -> None:
    """On a clean stop: NDEATH, as the will would have said (while disconnected, the
    broker has published the will already)."""
    if not client.connected:
        return
    topic, payload = death()
    with contextlib.suppress(MqttError, TimeoutError):
        await client.publish(topic, payload, qos=1, timeout=2.0)
