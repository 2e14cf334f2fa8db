"""The collector as a Sparkplug B host application (the receive stage's other wire).

Reads what any Sparkplug B 3.0 edge node publishes (Derrick's agent with ``format:
sparkplug``, or a third party's) into the same typed messages the JSON contract gives,
so validation, storage and the alarms see no difference:

* DBIRTH: the device's alias table (kept in the collector's spool notes, so a restarted
  collector reads the data queued for it at once), its readings as telemetry, and the
  device *up*;
* DDATA: readings by alias, with the table of the device's last birth, and the edge
  alarm condition changes of Derrick's agents (``Alarms/<rule>`` metrics, read back
  into the JSON wire's :class:`~derrick.wire.payloads.ConditionMessage`);
* DDEATH: the device *down*; NDEATH with the bdSeq of the node's birth: the node (an
  agent) *offline* and all its devices down; an NDEATH of an older connection is stale
  and ignored;
* NBIRTH: the node *online*, its sequence numbering restarted.

A data message of a device without a known birth, or with aliases its birth does not
name, cannot be read: the host asks the node for a rebirth (NCMD ``Node Control/Rebirth``,
at most once per ``rebirth_every_s`` per node) and holds the message, unacknowledged,
until the birth comes (then it is read) or ``hold_s`` passes (then it is dead-lettered,
saying why). A gap in a node's ``seq`` that is not filled within ``reorder_s`` asks for
a rebirth too (only where this session sees the node's whole stream).

Names: Sparkplug metric names may hold characters Derrick's identifiers (InfluxDB field
keys) do not; a folder separator ``/`` becomes ``.``, anything else outside
``[A-Za-z0-9_.-]`` becomes ``_`` (:func:`field_name`). Group, node and device ids must
be identifiers as they are: they become tags.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import structlog
from pydantic import TypeAdapter, ValidationError

from derrick.mqtt.client import InboundMessage, MqttClient, MqttError
from derrick.spool.store import Spool
from derrick.wire import sparkplug as sp
from derrick.wire.payloads import (
    AgentStatus,
    ConditionMessage,
    DeviceState,
    DeviceStatus,
    EdgeRules,
    ReadingRow,
    Telemetry,
    TelemetryRows,
    now_ns,
)

log = structlog.get_logger(__name__)

TABLE_NOTE = "sparkplug:table:"
"""Spool note ``sparkplug:table:<group>/<node>/<device>`` -> the device's birth table."""
BDSEQ_NOTE = "sparkplug:bdseq:"
"""Spool note ``sparkplug:bdseq:<group>/<node>`` -> the bdSeq of the node's last birth."""

_IDENT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NOT_IDENT = re.compile(r"[^A-Za-z0-9_.-]")
_DATA_TYPES = frozenset({sp.MessageType.DDATA, sp.MessageType.DBIRTH})


def field_name(name: str) -> str:
    """A Sparkplug metric name as a Derrick tag (an InfluxDB field key)."""
    if _IDENT.fullmatch(name):
        return name
    return _NOT_IDENT.sub("_", name.replace("/", "."))[:64] or "_"


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one Sparkplug message says, as the JSON contract would have said it
    (the readings as rows, for the hot path; :attr:`telemetry` as the model)."""

    rows: TelemetryRows | None = None
    statuses: tuple[DeviceStatus, ...] = ()
    agent: AgentStatus | None = None
    conditions: tuple[ConditionMessage, ...] = ()  # edge alarm changes (agent.sparkplug)

    @property
    def telemetry(self) -> Telemetry | None:
        return self.rows.telemetry() if self.rows is not None else None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Valid, but not readable yet: its device's birth (or some aliases) is unknown."""

    why: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str
    kind: str  # a dead-letter kind: topic, schema, mismatch


@dataclass
class _Node:
    bdseq: int | None = None
    seq: int | None = None
    online: bool = False
    missing: dict[int, float] = field(default_factory=dict)  # seq -> since when
    rebirth_asked_s: float = float("-inf")
    devices: set[str] = field(default_factory=set)


@dataclass
class _Held:
    inbound: InboundMessage
    since_s: float
    why: str


class SparkplugHost:
    """Alias tables, node sessions and held messages of every edge node this collector
    reads. ``request_rebirth(topic, payload)`` publishes an NCMD."""

    def __init__(
        self,
        spool: Spool | None,
        request_rebirth: Callable[[str, bytes], None],
        *,
        tracks_seq: bool = True,
        reorder_s: float = 2.0,
        rebirth_every_s: float = 10.0,
        hold_s: float = 30.0,
        max_held: int = 10_000,
    ) -> None:
        self.spool = spool
        self.request_rebirth = request_rebirth
        self.tracks_seq = tracks_seq
        self.reorder_s = reorder_s
        self.rebirth_every_s = rebirth_every_s
        self.hold_s = hold_s
        self.max_held = max_held
        self.rebirths_requested = 0
        self.tables: dict[tuple[str, str, str], sp.DeviceTable] = {}
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._down: set[tuple[str, str, str]] = set()  # by a death this host read
        self._held: list[_Held] = []
        self._restore()

    # -- state kept across restarts ----------------------------------------------------

    def _restore(self) -> None:
        if self.spool is None:
            return
        for key, text in self.spool.notes(TABLE_NOTE).items():
            try:
                group, node, device = key[len(TABLE_NOTE) :].split("/")
                self.tables[group, node, device] = _table_from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("Sparkplug alias table unreadable, dropped", key=key, error=str(exc))
        for group, node, device in self.tables:
            self._nodes.setdefault((group, node), _Node()).devices.add(device)
        for key, text in self.spool.notes(BDSEQ_NOTE).items():
            group, _, node = key[len(BDSEQ_NOTE) :].partition("/")
            if text.isdigit():
                self._nodes.setdefault((group, node), _Node()).bdseq = int(text)
        if self.tables:
            log.info("Sparkplug alias tables restored", devices=len(self.tables))

    def _keep(self, key: tuple[str, str, str], table: sp.DeviceTable) -> None:
        self.tables[key] = table
        if self.spool is not None:
            self.spool.write_notes({TABLE_NOTE + "/".join(key): _table_to_json(table)})

    # -- reading ----------------------------------------------------------------------

    def read(
        self, topic: sp.SparkplugTopic, payload: bytes, now_s: float, now_ns: int
    ) -> Decoded | Unreadable | Refused:
        """One message of an edge node, at ``now_s`` (monotonic) / ``now_ns`` (UTC)."""
        message = _parsed(topic, payload)
        if isinstance(message, Refused):
            return message
        node = self._nodes.setdefault((topic.group, topic.node), _Node())
        kind = topic.type
        if kind is not sp.MessageType.NDEATH:
            self._sequence(topic, node, message, now_s)
        if kind is sp.MessageType.NBIRTH:
            return self._node_birth(topic, node, message)
        if kind is sp.MessageType.NDEATH:
            return self._node_death(topic, node, message, now_ns)
        if kind is sp.MessageType.DBIRTH:
            return self._device_birth(topic, node, message)
        if kind is sp.MessageType.DDATA:
            return self._device_data(topic, message, now_s)
        return self._other(topic, message)

    def _other(self, topic: sp.SparkplugTopic, message: sp.pb.Payload) -> Decoded:
        """DDEATH: the device down; NDATA and commands say nothing to store."""
        if topic.type is not sp.MessageType.DDEATH:
            return Decoded()
        self._down.add((topic.group, topic.node, topic.device or ""))
        return Decoded(
            statuses=(self._status(topic, DeviceState.DOWN, "DDEATH", message.timestamp),)
        )

    def _node_birth(self, topic: sp.SparkplugTopic, node: _Node, message: sp.pb.Payload) -> Decoded:
        node.bdseq = sp.node_bdseq(message)
        if self.spool is not None and node.bdseq is not None:
            self.spool.write_notes({f"{BDSEQ_NOTE}{topic.group}/{topic.node}": str(node.bdseq)})
        node.online = True
        node.seq = message.seq if message.HasField("seq") else 0
        log.info("Sparkplug node born", site=topic.group, agent=topic.node, bdseq=node.bdseq)
        return Decoded(agent=self._agent(topic, "online", message.timestamp, _edge(message)))

    def _node_death(
        self, topic: sp.SparkplugTopic, node: _Node, message: sp.pb.Payload, now_ns: int
    ) -> Decoded:
        bdseq = sp.node_bdseq(message)
        if node.bdseq is not None and bdseq is not None and bdseq != node.bdseq:
            log.info(
                "stale Sparkplug NDEATH ignored", agent=topic.node, bdseq=bdseq, current=node.bdseq
            )
            return Decoded()
        node.online = False
        node.seq = None
        self._down |= {(topic.group, topic.node, device) for device in node.devices}
        ms = now_ns // 1_000_000  # the broker sent it: the will's own timestamp is old
        statuses = tuple(
            self._status(
                sp.SparkplugTopic(topic.group, sp.MessageType.DDEATH, topic.node, device),
                DeviceState.DOWN,
                "NDEATH: its agent went offline",
                ms,
            )
            for device in sorted(node.devices)
        )
        log.info("Sparkplug node died", site=topic.group, agent=topic.node, bdseq=bdseq)
        return Decoded(statuses=statuses, agent=self._agent(topic, "offline", ms))

    def _device_birth(
        self, topic: sp.SparkplugTopic, node: _Node, message: sp.pb.Payload
    ) -> Decoded | Refused:
        assert topic.device is not None
        try:
            table = sp.DeviceTable.from_birth(message, topic.device)
        except sp.SparkplugError as exc:
            return Refused(f"DBIRTH: {exc}", "schema")
        if not _IDENT.fullmatch(table.asset) or not _IDENT.fullmatch(table.kind):
            return Refused(
                f"DBIRTH: asset {table.asset!r} or kind {table.kind!r} is not a name", "schema"
            )
        table = _renamed(table)
        key = (topic.group, topic.node, topic.device)
        if self.tables.get(key) != table:
            self._keep(key, table)
        self._down.discard(key)
        node.devices.add(topic.device)
        rows, _unknown, historical, _conditions = table.rows(message)  # those: as they stand
        # A birth's null metric is a tag not read yet (an agent born before its first
        # poll): no reading, as the JSON path sends none; a null in DDATA is a bad one.
        rows = [row for row in rows if row[1] is not None]
        status = self._status(topic, DeviceState.UP, "DBIRTH", message.timestamp)
        return Decoded(self._telemetry(topic, table, rows, historical, message), (status,))

    def _device_data(
        self, topic: sp.SparkplugTopic, message: sp.pb.Payload, now_s: float
    ) -> Decoded | Unreadable | Refused:
        assert topic.device is not None
        table = self.tables.get((topic.group, topic.node, topic.device))
        if table is None:
            self._ask_rebirth(topic, now_s, "data of a device without a birth")
            return Unreadable(f"no DBIRTH of {topic.device} seen yet")
        rows, unknown, historical, found = table.rows(message)
        if unknown:
            self._ask_rebirth(topic, now_s, f"unknown metrics {unknown[:5]}")
            return Unreadable(f"aliases or names its DBIRTH does not have: {unknown[:10]}")
        try:
            conditions = self._conditions(topic, table, message, found) if found else ()
        except sp.SparkplugError as exc:
            return Refused(f"DDATA: {exc}", "schema")
        statuses = self._revived(topic, message, now_s)  # a refused message changes nothing
        return Decoded(
            self._telemetry(topic, table, rows, historical, message),
            statuses,
            conditions=conditions,
        )

    @staticmethod
    def _conditions(
        topic: sp.SparkplugTopic,
        table: sp.DeviceTable,
        message: sp.pb.Payload,
        found: list[tuple[str, sp.pb.Payload.Metric]],
    ) -> tuple[ConditionMessage, ...]:
        """The edge alarm condition changes of a DDATA (SparkplugError: one is unreadable)."""
        assert topic.device is not None
        source = sp.ConditionSource(topic.group, table.asset, topic.device, table.kind, topic.node)
        return tuple(
            sp.decode_condition(metric, rule, source, message.timestamp) for rule, metric in found
        )

    def _revived(
        self, topic: sp.SparkplugTopic, message: sp.pb.Payload, now_s: float
    ) -> tuple[DeviceStatus, ...]:
        """Data of a device this host last read a death of (its node's or its own): its
        births were missed (they go at QoS 0, so one published while this host was away
        is lost to it, as after a broker restart). The host asks for a rebirth, and the
        device is up: else its alarms would stay suppressed until the births come. (A
        host restarted without a death in between asks for nothing: its tables read the
        data, and a fleet of nodes is not asked to send every birth again.)"""
        key = (topic.group, topic.node, topic.device or "")
        if key not in self._down:
            return ()
        self._down.discard(key)
        self._ask_rebirth(topic, now_s, "data of a device whose birth this host did not see")
        log.info("Sparkplug device sends data after its death: up", site=topic.group,
                 agent=topic.node, device=topic.device)  # fmt: skip
        why = "DDATA after its death (a birth this host missed)"
        return (self._status(topic, DeviceState.UP, why, message.timestamp),)

    # -- sequence and rebirth ---------------------------------------------------------

    def _sequence(
        self, topic: sp.SparkplugTopic, node: _Node, message: sp.pb.Payload, now_s: float
    ) -> None:
        """Numbers skipped by ``seq`` are missing; one still missing ``reorder_s`` later
        asks for a rebirth (the node's births then restart the count)."""
        if not self.tracks_seq or not message.HasField("seq"):
            return
        seq = message.seq % 256
        if topic.type is sp.MessageType.NBIRTH or node.seq is None:
            node.missing.clear()
        elif seq in node.missing:  # a late one, reordered: the gap is filled
            del node.missing[seq]
            return
        else:
            skipped = (seq - node.seq - 1) % 256
            for step in range(1, skipped + 1):
                node.missing.setdefault((node.seq + step) % 256, now_s)
        node.seq = seq
        if node.missing and now_s - min(node.missing.values()) >= self.reorder_s:
            first = min(node.missing, key=node.missing.__getitem__)
            node.missing.clear()
            self._ask_rebirth(topic, now_s, f"seq {first} missing for {self.reorder_s:g} s")

    def _ask_rebirth(self, topic: sp.SparkplugTopic, now_s: float, why: str) -> None:
        node = self._nodes.setdefault((topic.group, topic.node), _Node())
        if now_s - node.rebirth_asked_s < self.rebirth_every_s:
            return
        node.rebirth_asked_s = now_s
        self.rebirths_requested += 1
        log.info(
            "asking a Sparkplug node for a rebirth", site=topic.group, agent=topic.node, reason=why
        )
        ncmd = sp.sparkplug_topic(topic.group, sp.MessageType.NCMD, topic.node)
        self.request_rebirth(ncmd, sp.encode_rebirth_request(int(now_s * 1e9)))

    # -- messages held for a birth ----------------------------------------------------

    def hold(self, inbound: InboundMessage, now_s: float, why: str) -> bool:
        """Keep a message until its birth comes; False when the hold is full."""
        if len(self._held) >= self.max_held:
            return False
        self._held.append(_Held(inbound, now_s, why))
        return True

    def released(self, group: str, node: str, device: str) -> list[InboundMessage]:
        """The held messages of a device whose birth just came, oldest first."""
        prefix = sp.sparkplug_topic(group, sp.MessageType.DDATA, node, device)
        mine = [held for held in self._held if held.inbound.topic == prefix]
        self._held = [held for held in self._held if held.inbound.topic != prefix]
        return [held.inbound for held in mine]

    def expired(self, now_s: float) -> list[tuple[InboundMessage, str]]:
        """Held messages whose birth did not come within ``hold_s``, with why."""
        old = [held for held in self._held if now_s - held.since_s >= self.hold_s]
        if old:
            self._held = [held for held in self._held if now_s - held.since_s < self.hold_s]
        return [(held.inbound, f"{held.why} within {self.hold_s:g} s") for held in old]

    @property
    def held(self) -> int:
        return len(self._held)

    # -- the JSON contract's messages ------------------------------------------------

    def _telemetry(
        self,
        topic: sp.SparkplugTopic,
        table: sp.DeviceTable,
        rows: list[ReadingRow],
        historical: bool,
        message: sp.pb.Payload,
    ) -> TelemetryRows | None:
        if not rows:
            return None
        assert topic.device is not None
        node = self._nodes.get((topic.group, topic.node))
        return TelemetryRows(
            site=topic.group,
            asset=table.asset,
            device=topic.device,
            kind=table.kind,
            agent=topic.node,
            boot=f"sparkplug-bdseq-{node.bdseq if node else None}",
            seq=message.seq,
            historical=historical,
            rows=rows,
        )

    def _status(
        self, topic: sp.SparkplugTopic, state: DeviceState, why: str, ms: int
    ) -> DeviceStatus:
        assert topic.device is not None
        table = self.tables.get((topic.group, topic.node, topic.device))
        return DeviceStatus.model_construct(
            v=1,
            historical=False,
            site=topic.group,
            asset=table.asset if table else topic.device,
            device=topic.device,
            agent=topic.node,
            state=state,
            reason=why,
            endpoint="",
            ts_ns=ms * 1_000_000,
        )

    def _agent(
        self, topic: sp.SparkplugTopic, state: str, ms: int, edge: list[EdgeRules] | None = None
    ) -> AgentStatus:
        return AgentStatus.model_construct(
            v=1,
            agent=topic.node,
            state=state,
            boot="",
            ts_ns=ms * 1_000_000,
            site=topic.group,
            edge=edge or [],
        )


class HostState:
    """This collector as a Sparkplug *primary host*: its retained ``STATE`` says online
    after every connect and, as its last will (or on a clean stop), offline, with the
    same timestamp (spec 3.0), so edge nodes that wait for it know when to publish."""

    def __init__(self, host_id: str) -> None:
        self.topic = sp.host_state_topic(host_id)
        self._stamp_ns = now_ns()

    def will(self) -> tuple[str, bytes, bool]:
        """Called before each connect: the offline STATE of that connection."""
        self._stamp_ns = now_ns()
        return self.topic, sp.host_state_payload(False, self._stamp_ns), True

    async def announce_forever(self, client: MqttClient) -> None:
        while True:
            await client.wait_connected(timeout=float("inf"))
            client.publish_nowait(
                self.topic, sp.host_state_payload(True, self._stamp_ns), retain=True
            )
            await client.wait_disconnected()

    async def say_offline(self, client: MqttClient) -> None:
        """On a clean stop, before the session ends (the will is only for a crash)."""
        if client.connected:
            payload = sp.host_state_payload(False, self._stamp_ns)
            with contextlib.suppress(MqttError):
                await client.publish(self.topic, payload, retain=True, timeout=2.0)


def _edge(message: sp.pb.Payload) -> list[EdgeRules]:
    """The rules an agent evaluates itself, from its NBIRTH (none when unreadable: the
    collector then evaluates everything, as for an agent that says nothing)."""
    text = sp.node_property(message, sp.EDGE)
    if not text:
        return []
    try:
        return _EDGE_LIST.validate_json(text)
    except ValidationError as exc:
        log.warning("NBIRTH edge rules unreadable, ignored", error=str(exc)[:300])
        return []


_EDGE_LIST = TypeAdapter(list[EdgeRules])


def _parsed(topic: sp.SparkplugTopic, payload: bytes) -> sp.pb.Payload | Refused:
    """The payload, if its names and bytes are usable."""
    for name in (topic.group, topic.node, topic.device or "x"):
        if not _IDENT.fullmatch(name):
            return Refused(
                f"{name!r} is not usable as a site, agent or device name "
                "(letters, digits, _ . - up to 64)",
                "topic",
            )
    try:
        return sp.decode_payload(payload)
    except sp.SparkplugError as exc:
        return Refused(str(exc), "schema")


def _renamed(table: sp.DeviceTable) -> sp.DeviceTable:
    """The table with each metric's tag usable as a field key (:func:`field_name`); it
    is still found by the name on the wire."""
    if all(_IDENT.fullmatch(spec.name) for spec in table.by_name.values()):
        return table
    by_name = {
        wire: replace(spec, name=field_name(spec.name)) for wire, spec in table.by_name.items()
    }
    by_alias = {spec.alias: spec for spec in by_name.values() if spec.alias >= 0}
    return sp.DeviceTable(table.asset, table.kind, by_alias, by_name, table.conditions)


def _table_to_json(table: sp.DeviceTable) -> str:
    metrics = [
        [wire, spec.name, spec.alias, int(spec.type), spec.unit]
        for wire, spec in table.by_name.items()
    ]
    conditions = [[key, rule] for key, rule in table.conditions.items()]
    return json.dumps(
        {"asset": table.asset, "kind": table.kind, "metrics": metrics, "conditions": conditions}
    )


def _table_from_json(text: str) -> sp.DeviceTable:
    data = json.loads(text)
    by_name: dict[str, sp.MetricSpec] = {}
    for wire, name, alias, kind, unit in data["metrics"]:
        by_name[wire] = sp.MetricSpec(name, int(alias), sp.MetricType(int(kind)), str(unit))
    by_alias = {spec.alias: spec for spec in by_name.values() if spec.alias >= 0}
    conditions: dict[int | str, str] = {
        key: str(rule)
        for key, rule in data.get("conditions", [])  # none in a table kept before them
        if isinstance(key, int | str)
    }
    return sp.DeviceTable(str(data["asset"]), str(data["kind"]), by_alias, by_name, conditions)
