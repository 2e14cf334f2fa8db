"""Alarm stage: alarm rules evaluated at the edge, between decode and filter.

An agent with ``alarms.rules`` runs the shared condition engine
(:mod:`derrick.alarms.engine`) on every poll's readings, in event time (the readings'
own timestamps), *before* report by exception: a deadband or heartbeat that keeps a
reading off the wire never hides a peak from the rules. Device up/down (its
``device_offline`` rules) and a timer (delays, ``stale``) feed it too.

Each condition change becomes a :class:`~derrick.wire.payloads.ConditionMessage` in the
spool (priority ALARM: dropped last, fsynced), numbered with the telemetry, sent on
PUBACK terms and replayed, marked historical, after an outage or a restart like
everything else. The collector takes these instead of evaluating the same rules on the
telemetry (the birth message lists them per device).

Episodes. A condition that clears before any message of its activation reached the
broker (the link was down all along) is sent as one ``episode`` - start, end, peak -
instead of its activation and its clear: the stage takes the queued activation back
(:meth:`Spool.append` ``retract``) in the transaction that queues the episode, so the
collector announces it once, as having happened while offline, and never as a live
alarm followed by its clear. A message in flight (handed to the broker, PUBACK not
yet come) is never taken back: then the clear goes as a clear.

Restart. What the stage must know about each held condition (since when, peak, its
messages not yet acknowledged) is a spool note, written in the transaction of the
message it is about. After a restart the engine starts from those notes
(:meth:`RuleEngine.restore`): a standing condition is neither announced again nor
forgotten, and the first normal reading clears it with its deadband and off-delay.
A note whose rule or device is gone from the config is cleared at start.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from agent.annunciate import LocalAnnunciator
from agent.config import Device, edge_rule_problems, edge_rules
from agent.outbox import Outbox
from derrick.alarms.engine import ConditionChange, RuleEngine
from derrick.alarms.rules import RuleSet
from derrick.spool.store import Entry, Priority, Spool
from derrick.wire.ids import AlarmId
from derrick.wire.payloads import (
    ConditionState,
    DeviceState,
    DeviceStatus,
    EdgeRules,
    Reading,
    now_ns,
)

log = structlog.get_logger(__name__)

NOTE_PREFIX = "edge:"
_LOW_TYPES = ("low", "low_low")


@dataclass(slots=True)
class _Held:
    """One held condition, as its spool note keeps it."""

    since_ns: int
    type: str
    priority: str
    active: bool  # was active (not only suppressed) at some point
    suppressed: bool
    peak: Any
    entries: list[int] = field(default_factory=list)  # its messages not known delivered
    delivered: bool = False  # one of its messages reached the broker
    local: bool = False  # announced on the site LAN (agent.annunciate): its clear goes too

    def note(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_note(cls, text: str) -> _Held:
        """The note back; TypeError or ValueError when it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        return cls(**data)

    def more_extreme(self, value: Any) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return
        peak = self.peak
        if (
            not isinstance(peak, int | float)
            or isinstance(peak, bool)
            or ((value < peak) if self.type in _LOW_TYPES else (value > peak))
        ):
            self.peak = value


class EdgeAlarms:
    """The agent's alarm stage: one engine for all its devices; see the module doc.

    ``in_flight(entry_id)``: whether the publisher handed that message to the broker
    and has not settled it (it must not be taken back). :meth:`delivered` is the
    publisher's ``on_published`` hook. ``local``: the site LAN's annunciation, whose
    notices are committed with the condition messages that cause them.
    """

    def __init__(  # noqa: PLR0917 - wired once by the agent
        self,
        site: str,
        agent_id: str,
        rules: RuleSet,
        devices: list[Device],
        outbox: Outbox,
        spool: Spool,
        in_flight: Callable[[int], bool] = lambda _entry_id: False,
        local: LocalAnnunciator | None = None,
    ) -> None:
        self.site = site
        self.agent_id = agent_id
        self.outbox = outbox
        self.spool = spool
        self.in_flight = in_flight
        self.local = local
        self.engine = RuleEngine(rules)
        self.changes = 0
        self.episodes = 0
        self._devices = devices
        self._kinds = {(dev.asset, dev.name): dev.equipment_kind for dev in devices}
        self._coverage = self._coverage_of(rules)
        self._held: dict[AlarmId, _Held] = {}
        self._by_entry: dict[int, AlarmId] = {}
        self._restore()

    # --- state across restarts ----------------------------------------------------------

    def _restore(self) -> None:
        """Hold what the notes say was held; clear what no rule of a device covers now."""
        covered = {
            (rule, self.site, cover.asset, cover.device)
            for cover in self._coverage
            for rule in cover.rules
        }
        gone: list[tuple[AlarmId, _Held]] = []
        for key, text in self.spool.notes(NOTE_PREFIX).items():
            try:
                alarm = AlarmId.parse(key.removeprefix(NOTE_PREFIX))
                held = _Held.from_note(text)
            except (ValueError, TypeError) as exc:
                log.error("edge alarm note unreadable, dropped", note=key, reason=str(exc))
                self.spool.write_notes({key: None})
                continue
            if alarm not in covered:
                gone.append((alarm, held))
                continue
            self._held[alarm] = held
            for entry_id in held.entries:
                self._by_entry[entry_id] = alarm
        self.engine.restore({alarm: held.suppressed for alarm, held in self._held.items()})
        if self._held:
            log.info("edge alarms restored", holding=[str(alarm) for alarm in self._held])
        for alarm, held in gone:
            self._clear_gone(alarm, held)

    def _clear_gone(self, alarm: AlarmId, held: _Held) -> None:
        """A held condition whose rule no longer applies: cleared, as a reload would."""
        kind = self._kinds.get((alarm.asset, alarm.device), "unknown")
        change = ConditionChange(
            rule=alarm.rule, site=alarm.site, asset=alarm.asset, device=alarm.device,
            active=False, suppressed=False, value=None, limit=None, priority=held.priority,
            ts_ns=now_ns(), message=f"{alarm.rule}: rule no longer evaluated by this agent",
            type=held.type, agent=self.agent_id,
        )  # fmt: skip
        log.info("edge alarm rule gone, condition cleared", alarm_id=str(alarm))
        notes: dict[str, str | None] = {_key(alarm): None}
        if held.local and self.local is not None:
            notes |= self.local.clear(change)
        self.outbox.put_condition(change, kind, ConditionState.CLEARED, notes=notes)

    def _coverage_of(self, rules: RuleSet) -> list[EdgeRules]:
        return [
            EdgeRules(
                asset=dev.asset,
                device=dev.name,
                rules=[rule.name for rule in edge_rules(rules, self.site, dev)],
            )
            for dev in self._devices
        ]

    def reload(self, rules: RuleSet) -> None:
        """New rules (SIGHUP), as the collector reloads: conditions of rules that went
        away or no longer apply are cleared, the others keep their state. ValueError,
        and the old rules kept, when a rule's inputs are not on this agent."""
        problems = edge_rule_problems(rules, self.site, self._devices)
        if problems:
            raise ValueError("; ".join(problems))
        changes = self.engine.reload(rules, now_ns())
        self._coverage = self._coverage_of(rules)
        log.info("edge alarm rules reloaded", rules=len(rules), cleared=len(changes))
        if changes:
            self._send(changes)

    # --- inputs ---------------------------------------------------------------------------

    @property
    def coverage(self) -> list[EdgeRules]:
        """Per device, the rules evaluated here (the birth message says so)."""
        return self._coverage

    def stage(self, device: Device, downstream: Callable[[list[Reading]], None]) -> EdgeStage:
        """The stage for one device's poller, handing its readings on to ``downstream``."""
        return EdgeStage(self, device, downstream)

    def observe(self, device: Device, readings: list[Reading]) -> None:
        """One poll's readings of one device, at their own time."""
        if not readings:
            return
        changes = self.engine.observe_readings(
            self.site, device.asset, device.name, device.equipment_kind, self.agent_id,
            readings, readings[-1].ts_ns,
        )  # fmt: skip
        if changes:
            self._send(changes)
        if self._held:
            self._keep_peaks(device)

    def _keep_peaks(self, device: Device) -> None:
        """A held condition's new extreme goes into its note, so a restart keeps it."""
        for alarm, held in self._held.items():
            if alarm.asset != device.asset or alarm.device != device.name:
                continue
            before = held.peak
            held.more_extreme(self.engine.peak(*alarm))
            if held.peak != before:
                self.spool.write_notes({_key(alarm): held.note()})

    def device_state(self, device: Device, state: DeviceState) -> None:
        """The device went up or down (its ``device_offline`` rules)."""
        status = DeviceStatus(
            site=self.site,
            asset=device.asset,
            device=device.name,
            agent=self.agent_id,
            state=state,
            ts_ns=now_ns(),
        )
        changes = self.engine.observe_device(status, status.ts_ns)
        if changes:
            self._send(changes)

    def tick(self, now: int | None = None) -> None:
        """Time passes: delays that ran out, tags that went stale."""
        changes = self.engine.tick(now_ns() if now is None else now)
        if changes:
            self._send(changes)

    async def tick_forever(self, tick_s: float) -> None:
        while True:
            await asyncio.sleep(tick_s)
            self.tick()

    def delivered(self, entry: Entry) -> None:
        """The broker acknowledged a message (the publisher's ``on_published``)."""
        if entry.priority is not Priority.ALARM:
            return
        alarm = self._by_entry.pop(entry.id, None)
        held = self._held.get(alarm) if alarm is not None else None
        if held is None:
            return
        held.delivered = True
        held.entries.remove(entry.id)
        self.spool.write_notes({_key(alarm): held.note()})

    # --- condition changes -> messages -----------------------------------------------------

    def _send(self, changes: Iterable[ConditionChange]) -> None:
        for change in changes:
            alarm = AlarmId(change.rule, change.site, change.asset, change.device)
            kind = self._kinds.get((change.asset, change.device), "unknown")
            self.changes += 1
            if change.active or change.suppressed:
                self._holds(alarm, change, kind)
            else:
                self._cleared(alarm, change, kind)

    def _holds(self, alarm: AlarmId, change: ConditionChange, kind: str) -> None:
        held = self._held.get(alarm)
        if held is None:
            held = self._held[alarm] = _Held(
                since_ns=change.ts_ns,
                type=change.type,
                priority=change.priority,
                active=change.active,
                suppressed=change.suppressed,
                peak=None,
            )
        held.active = held.active or change.active
        held.suppressed = change.suppressed
        held.more_extreme(change.value)
        state = ConditionState.ACTIVE if change.active else ConditionState.SUPPRESSED
        entry_id = self.outbox.next_entry_id()  # the id put_condition below gives it
        held.entries.append(entry_id)
        self._by_entry[entry_id] = alarm
        notes: dict[str, str | None] = {}
        if change.active and not held.local and self.local and self.local.wants(change):
            held.local = True
            notes |= self.local.announce(change)
        notes[_key(alarm)] = held.note()
        self.outbox.put_condition(change, kind, state, notes=notes)
        log.info("edge alarm condition", alarm_id=str(alarm), state=state.value,
                 value=change.value, limit=change.limit)  # fmt: skip

    def _cleared(self, alarm: AlarmId, change: ConditionChange, kind: str) -> None:
        held = self._held.pop(alarm, None)
        for entry_id in held.entries if held else ():
            self._by_entry.pop(entry_id, None)
        if held is not None:
            held.more_extreme(change.peak)
        unheard = (
            held is not None
            and held.active
            and not held.delivered
            and not any(self.in_flight(entry_id) for entry_id in held.entries)
        )
        notes: dict[str, str | None] = {_key(alarm): None}
        if held is not None and held.local and self.local is not None:
            notes |= self.local.clear(change)
        if unheard:
            assert held is not None
            self.episodes += 1
            self.outbox.put_condition(
                change,
                kind,
                ConditionState.EPISODE,
                since_ns=held.since_ns,
                peak=held.peak,
                retract=held.entries,
                notes=notes,
            )
            log.info("edge alarm episode while offline", alarm_id=str(alarm),
                     since_ns=held.since_ns, ts_ns=change.ts_ns, peak=held.peak)  # fmt: skip
            return
        self.outbox.put_condition(
            change, kind, ConditionState.CLEARED, peak=held.peak if held else None, notes=notes
        )
        log.info("edge alarm condition", alarm_id=str(alarm), state="cleared",
                 value=change.value)  # fmt: skip


class EdgeStage:
    """One device's alarm stage: readings from its poller through the rules, then on to
    its filter stage unchanged."""

    __slots__ = ("alarms", "device", "downstream")

    def __init__(
        self, alarms: EdgeAlarms, device: Device, downstream: Callable[[list[Reading]], None]
    ) -> None:
        self.alarms = alarms
        self.device = device
        self.downstream = downstream

    def put(self, readings: list[Reading]) -> None:
        self.alarms.observe(self.device, readings)
        self.downstream(readings)


def _key(alarm: AlarmId) -> str:
    return f"{NOTE_PREFIX}{alarm}"
