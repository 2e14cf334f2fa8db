"""Alarm manager: rule-engine conditions through the ISA-18.2 lifecycle, persisted.

The glue between :mod:`derrick.alarms.engine` (when does a condition hold?),
:mod:`derrick.alarms.lifecycle` (what does that mean for the alarm and the crews?) and
:mod:`collector.alarms.state` (remember it across restarts). It returns lifecycle
effects - announce, clear, journal - and hands them, with the records they changed, to
a ``notices`` hook whose outbox rows are saved in the same transaction as the records.

Restart safety comes from the lifecycle: the engine starts with no memory, so after a
restart it reports a standing condition as newly active, and the persisted record,
already active, takes that as a no-op. No second announcement, and nothing forgotten.

Engine condition -> lifecycle inputs, in this order (see ``_inputs``):

* ``active``: the process is active, then suppression ends (if it was on): the
  announcement carries the value and limit of this change;
* ``suppressed``: suppression starts (if it was off), then the process is active (tracked
  behind it);
* neither: the process is normal, then suppression ends (if it was on): a condition that
  cleared while suppressed returns to normal silently (the records and their history
  show it; no announcement, no clear).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from collector.alarms.outbox import NewNotice
from collector.alarms.state import AlarmStateStore
from derrick.alarms.engine import ConditionChange, RuleEngine
from derrick.alarms.lifecycle import (
    Acknowledge,
    AlarmRecord,
    Effect,
    Event,
    ProcessActive,
    ProcessEpisode,
    ProcessNormal,
    Rejected,
    RemoveFromService,
    Reset,
    ReturnToService,
    Shelve,
    Suppress,
    Tick,
    Transition,
    Unshelve,
    apply,
)
from derrick.wire.ids import AlarmId

NoticeHook = Callable[[list[Effect], dict[str, AlarmRecord]], list[NewNotice]]


@dataclass(frozen=True, slots=True)
class Command:
    """An operator command from MQTT or HTTP."""

    alarm_id: AlarmId
    action: str  # acknowledge | reset | shelve | unshelve | remove_from_service | return_to_service
    who: str
    now_ns: int
    comment: str = ""
    duration_s: float = 0.0


def record_key(change: ConditionChange) -> str:
    """The key of the alarm's record: one alarm per rule and device, its
    :class:`AlarmId` as the wire spells it."""
    return str(AlarmId(change.rule, change.site, change.asset, change.device))


class AlarmManager:
    def __init__(
        self, engine: RuleEngine, store: AlarmStateStore, notices: NoticeHook | None = None
    ) -> None:
        self.engine = engine
        self.store = store
        self._notices = notices
        self.records: dict[str, AlarmRecord] = store.load()
        engine.restore(
            {
                alarm: record.suppressed
                for alarm, record in by_alarm_id(self.records).items()
                if record.active
            }
        )
        self._max_shelve_s = {
            rule.name: getattr(rule, "max_shelve_s", None) for rule in engine.rules
        }
        self.refused: set[str] = set()  # alarm ids the store did not take (see _keep)

    def on_conditions(self, changes: Iterable[ConditionChange]) -> list[Effect]:
        """Feed the engine's condition changes through each alarm's lifecycle."""
        effects: list[Effect] = []
        changed: dict[str, AlarmRecord] = {}
        for change in changes:
            key = record_key(change)
            record = changed.get(key) or self.records.get(key) or self._new(key, change)
            for event in _inputs(record, change):
                step = apply(record, event)
                if isinstance(step, Transition):
                    record = step.record
                    effects.extend(step.effects)
            changed[key] = record
        self._keep(changed, effects)
        return effects

    def tick(self, now_ns: int) -> list[Effect]:
        """Time passes: engine delays and staleness, and shelves that expire."""
        return self.on_conditions(self.engine.tick(now_ns)) + self.tick_shelves(now_ns)

    def tick_shelves(self, now_ns: int) -> list[Effect]:
        """Shelves that expire now re-announce their alarm."""
        changed: dict[str, AlarmRecord] = {}
        expired: list[Effect] = []
        for key, record in self.records.items():
            if record.shelved_until_ns is not None and record.shelved_until_ns <= now_ns:
                step = apply(record, Tick(now_ns=now_ns))
                if isinstance(step, Transition) and step.record != record:
                    changed[key] = step.record
                    expired.extend(step.effects)
        self._keep(changed, expired)
        return expired

    def rules_changed(self) -> None:
        """The engine's rules were reloaded: take their shelve limits."""
        self._max_shelve_s = {
            rule.name: getattr(rule, "max_shelve_s", None) for rule in self.engine.rules
        }

    def command(self, command: Command) -> list[Effect] | Rejected:
        """An operator's acknowledge, reset, shelve...: effects, or why it does not apply."""
        key = str(command.alarm_id)
        record = self.records.get(key)
        if record is None:
            return Rejected(f"no alarm {key!r}")
        event = _command_event(command)
        if isinstance(event, Rejected):
            return event
        step = apply(record, event)
        if isinstance(step, Rejected):
            return step
        effects = list(step.effects)
        self._keep({key: step.record}, effects)
        if self.records.get(key) != step.record:
            return Rejected(
                "not stored: the alarm's asset is being taken over by another collector, "
                "or etcd did not answer; try again"
            )
        return effects

    def _new(self, key: str, change: ConditionChange) -> AlarmRecord:
        max_shelve_s = self._max_shelve_s.get(change.rule)
        extra = {"max_shelve_s": max_shelve_s} if max_shelve_s else {}
        return AlarmRecord.new(
            key,
            latched=change.latched,
            priority=change.priority,  # type: ignore[arg-type]
            now_ns=change.ts_ns,
            **extra,
        )

    def adopt(self, records: dict[str, AlarmRecord]) -> None:
        """Records read from the store when this collector takes their asset over."""
        self.records.update(records)

    def drop(self, alarm_ids: Iterable[str]) -> None:
        """Forget records of assets another collector owns now (they stay stored)."""
        for alarm_id in alarm_ids:
            self.records.pop(alarm_id, None)

    def _keep(self, changed: dict[str, AlarmRecord], effects: list[Effect]) -> None:
        """Persist what changed and the notices it caused (one durable transaction),
        then adopt it. What the store refused (an asset another collector took over)
        is not adopted, and its effects are taken out of ``effects``."""
        fresh = {k: r for k, r in changed.items() if self.records.get(k) != r}
        if not fresh:
            return
        notices = self._notices(effects, fresh) if self._notices else []
        refused = self.store.save(fresh.values(), notices)
        if refused:
            self.refused.update(refused)
            fresh = {k: r for k, r in fresh.items() if k not in refused}
            effects[:] = [e for e in effects if e.alarm_id not in refused]
        self.records.update(fresh)


def by_alarm_id(records: dict[str, AlarmRecord]) -> dict[AlarmId, AlarmRecord]:
    """The records whose stored id is well-formed, by parsed id. (A record stored under
    a malformed id - edited by hand - is still loaded, but names no condition to restore
    and no alarm a command can reach.)"""
    parsed: dict[AlarmId, AlarmRecord] = {}
    for key, record in records.items():
        try:
            parsed[AlarmId.parse(key)] = record
        except ValueError:
            continue
    return parsed


def _inputs(record: AlarmRecord, change: ConditionChange) -> list[Event]:
    """The lifecycle inputs for one condition change, in the order that keeps them true.

    Suppression starts before the process input and ends after it, so the process input
    always lands while the alarm is hidden, and ending the suppression acts on the process
    as this change reports it: cleared in the same change, the alarm returns to normal
    silently; still active, it is announced with this change's value, limit and priority.
    The other order ended the suppression on the process as stored when it began, and a
    clear on restarting the pumps went out as an announcement of the stale value (0 bar)
    and its clear in the same millisecond, owing an acknowledgement (issue 13).
    """
    process = _process_input(change)
    if change.suppressed == record.suppressed:
        return [process]
    suppress = Suppress(now_ns=change.ts_ns, on=change.suppressed)
    return [suppress, process] if change.suppressed else [process, suppress]


def _process_input(change: ConditionChange) -> ProcessActive | ProcessNormal | ProcessEpisode:
    """Active or suppressed: the process is active (tracked behind a suppression). With
    ``since_ns``: a whole episode, its peak as the value."""
    if change.since_ns is not None:
        peak = _number(change.value if change.peak is None else change.peak)
        return ProcessEpisode(
            now_ns=change.ts_ns,
            since_ns=min(change.since_ns, change.ts_ns),
            value=peak,
            limit=peak if change.limit is None else float(change.limit),
            priority=change.priority,  # type: ignore[arg-type]
        )
    value = _number(change.value)
    if not (change.active or change.suppressed):
        return ProcessNormal(now_ns=change.ts_ns, value=value)
    limit = value if change.limit is None else float(change.limit)
    return ProcessActive(now_ns=change.ts_ns, value=value, limit=limit, priority=change.priority)  # type: ignore[arg-type]


def _number(value: object) -> float:
    """Engine values as the lifecycle's floats: bools as 0/1, anything else as 0."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return 0.0


def _command_event(command: Command) -> Event | Rejected:
    now, who, comment = command.now_ns, command.who, command.comment
    events: dict[str, Event] = {
        "acknowledge": Acknowledge(now_ns=now, who=who, comment=comment),
        "reset": Reset(now_ns=now, who=who, comment=comment),
        "shelve": Shelve(now_ns=now, who=who, reason=comment, duration_s=command.duration_s),
        "unshelve": Unshelve(now_ns=now, who=who, comment=comment),
        "remove_from_service": RemoveFromService(now_ns=now, who=who, reason=comment),
        "return_to_service": ReturnToService(now_ns=now, who=who, comment=comment),
    }
    return events.get(command.action) or Rejected(
        f"unknown action {command.action!r}; use one of {', '.join(events)}"
    )
