"""Alarm service: the collector's evaluate -> notify side, wired together.

Telemetry, device status and agent status of the assets this collector owns go through
the rule engine and the lifecycle (:class:`AlarmManager`); every change is saved with
the notices it causes (:class:`Router` -> outbox, one transaction), and one
:class:`Deliverer` per channel sends them. A timer drives delays, staleness, shelve
expiry, reminders and escalations; operator commands come from MQTT and HTTP.

Replayed (``historical``) telemetry is not evaluated: it arrives minutes or hours late
and out of step with live data, and an alarm announced now for a load that was lifted
an hour ago would send a crew to the wrong problem. The outage itself is what the crew
must hear about, and the ``device_offline`` / ``agent_offline`` / ``stale`` rules say
so while it lasts; the replayed readings are stored, so the history shows what happened.

Alarms evaluated at the edge close that gap. An agent with ``alarms.rules`` lists them
per device in its birth message; this collector then leaves those rules to it
(:meth:`RuleEngine.hand_over`, remembered in the state file across restarts) and takes
the agent's condition changes (:meth:`AlarmService.observe_condition`) into the
lifecycle at their own time, replayed or not: an alarm still standing when the link
returns is announced with its true start; an episode that began and ended while the
link was down is announced once, as having happened while offline (reason
``offline``). Reminders and escalations of such an alarm count from when it was
announced, not from when it started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import structlog

from collector.alarms.changes import Changes
from collector.alarms.ha import Coordinator
from collector.alarms.manager import AlarmManager, Command, by_alarm_id, record_key
from collector.alarms.notify import (
    BUILT_IN,
    STATE_CHANNEL,
    Deliverer,
    Router,
    Send,
    console_view,
)
from collector.alarms.outbox import Outbox
from collector.alarms.settings import AlarmSettings
from collector.alarms.shared import (
    HaOutbox,
    HaStateStore,
    SharedOutbox,
    SharedState,
    asset_of,
    is_local,
)
from collector.alarms.state import AlarmStateStore
from collector.etcd import EtcdError
from collector.lineproto import encode_point
from derrick.alarms.engine import ConditionChange, RuleEngine
from derrick.alarms.kpi import AlarmKpis
from derrick.alarms.lifecycle import HIDDEN, Annunciate, Clear, Effect, Journal, Rejected
from derrick.alarms.ownership import Ownership
from derrick.alarms.rules import RuleSet
from derrick.wire.ids import AlarmId
from derrick.wire.payloads import (
    AgentStatus,
    AlarmCommand,
    AlarmCommandResult,
    ConditionMessage,
    ConditionState,
    DeviceStatus,
    Telemetry,
    now_ns,
)

log = structlog.get_logger(__name__)

ENFORCE_EVERY_S = 60.0


class AlarmService:
    def __init__(
        self,
        settings: AlarmSettings,
        collector_id: str,
        senders: dict[str, Send],
        rules: RuleSet | None = None,
        closers: list[Callable[[], Awaitable[None]]] | None = None,
        *,
        coordinator: Coordinator | None = None,
    ) -> None:
        self._closers = closers or []
        self.settings = settings
        self.collector_id = collector_id
        self.engine = RuleEngine(rules if rules is not None else settings.ruleset)
        local = AlarmStateStore(settings.state)
        keep_s = settings.outbox.keep_delivered_h * 3600
        local_outbox = Outbox(local.db, settings.outbox.max_pending, keep_s)
        self.coordinator = coordinator
        self.ownership: Ownership | Coordinator
        self.store: AlarmStateStore | HaStateStore
        self.outbox: Outbox | HaOutbox
        if coordinator is None:
            self.ownership = Ownership(collector_id, settings.members or [collector_id])
            self.store, self.outbox = local, local_outbox
        else:  # fail-over: every asset's alarms in etcd (collector.alarms.shared)
            self.ownership = coordinator
            shared = SharedState(coordinator.etcd, coordinator, coordinator.prefix)
            shared_outbox = SharedOutbox(coordinator.etcd, coordinator, coordinator.prefix, keep_s)
            self.store = HaStateStore(local, shared)
            self.outbox = HaOutbox(local_outbox, shared_outbox, shared)
            coordinator.on_gain, coordinator.on_loss = self.taken, self.given_up
            coordinator.busy = shared_outbox.in_flight
        # owned assets this member must read from etcd before it acts on them again
        # (see _read_again)
        self._unread: set[tuple[str, str]] = set()
        self._edge_last: dict[AlarmId, ConditionMessage] = {}  # newest edge change, any asset
        self._outside_last: dict[str, ConditionChange] = {}  # newest loss change, any asset
        self.messages: dict[str, str] = self.outbox.last_texts(STATE_CHANNEL)
        self.router = Router(settings.routes, self.messages, self.outbox.last_announced())
        self.manager = AlarmManager(self.engine, self.store, self.router.rows)
        self.kpis = AlarmKpis(settings.kpi)
        self.changes = Changes()  # the console's live summary waits on it
        self.started_ns = now_ns()
        self.counts = {
            "announced": 0, "cleared": 0, "commands": 0, "rejected_commands": 0,
            "edge_conditions": 0, "edge_out_of_order": 0,
        }  # fmt: skip
        # agent -> {(site, asset, device): the rules it evaluates there}
        self._edge: dict[str, dict[tuple[str, str, str], frozenset[str]]] = {}
        self._edge_ts: dict[AlarmId, int] = {}  # the newest edge change applied per alarm
        for birth in self.store.edge_births().values():
            self._hand_over(AgentStatus.model_validate_json(birth), save=False)
        missing = [name for name in [*BUILT_IN, *settings.channels] if name not in senders]
        if missing:
            raise ValueError(f"no sender for channels {missing}")
        self.deliverers = {
            name: Deliverer(
                name,
                send,
                self.outbox,
                settings.retry,
                None if name in BUILT_IN else settings.flood,
            )
            for name, send in senders.items()
        }

    # --- inputs -----------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """False when no rules are configured (then nothing is evaluated)."""
        return bool(self.engine.rules)

    def owns(self, site: str, asset: str) -> bool:
        return self.ownership.owns(site, asset)

    def evaluates(self, site: str, asset: str) -> bool:
        """Whether this collector evaluates the asset's conditions: the ones it owns, or
        every asset when collectors fail over (hot standby: a successor starts with the
        right delays, deadbands and rates of change)."""
        return self.ownership.evaluates(site, asset)

    def observe_telemetry(self, message: Telemetry, now: int | None = None) -> None:
        if message.historical or not self.ownership.evaluates(message.site, message.asset):
            return
        changes = self.engine.observe(message, now_ns() if now is None else now)
        if changes:
            self._apply(changes)

    def observe_device(self, status: DeviceStatus, now: int | None = None) -> None:
        if not self.ownership.evaluates(status.site, status.asset):
            return
        changes = self.engine.observe_device(status, now_ns() if now is None else now)
        if changes:
            self._apply(changes)

    def observe_agent(self, status: AgentStatus, now: int | None = None) -> None:
        """Every collector follows every agent; only the owner of its alarm acts. A
        birth message also says which rules the agent evaluates at the edge."""
        self._hand_over(status)
        changes = self.engine.observe_agent(status, now_ns() if now is None else now)
        if changes:
            self._apply(changes)

    def observe_condition(self, message: ConditionMessage, now: int | None = None) -> None:
        """A condition change evaluated at the edge, into the lifecycle at its own time.

        Per alarm, a change older than one already applied is skipped and counted: it
        would undo news with history (the agent sends each alarm's changes in order,
        replayed ones included, so this takes a redelivery or a foreign publisher).
        """
        if not self.ownership.evaluates(message.site, message.asset):
            return
        alarm = AlarmId(message.rule, message.site, message.asset, message.device)
        if self.coordinator is not None:  # what a successor applies when it takes over
            kept = self._edge_last.get(alarm)
            if kept is None or kept.ts_ns <= message.ts_ns:
                self._edge_last[alarm] = message
            if not self._acts_on(message.site, message.asset):
                self._missed(message.site, message.asset)
                return
        newest = self._edge_ts.get(alarm)
        if newest is not None and message.ts_ns < newest:
            self.counts["edge_out_of_order"] += 1
            log.warning("edge condition older than one applied, skipped", alarm_id=str(alarm),
                        ts_ns=message.ts_ns, newest_ns=newest)  # fmt: skip
            return
        self._edge_ts[alarm] = message.ts_ns
        self.counts["edge_conditions"] += 1
        self._apply([condition_change(message)], now_ns() if now is None else now)

    def _hand_over(self, status: AgentStatus, *, save: bool = True) -> None:
        """Leave the rules an agent's birth lists to it; take back those it dropped."""
        if status.state != "online":
            return  # a last will changes nothing: the agent's spool still holds its news
        site = status.site
        covered = {
            (site, edge.asset, edge.device): frozenset(edge.rules)
            for edge in status.edge
            if site is not None and edge.rules
        }
        before = self._edge.get(status.agent, {})
        if covered == before:
            return  # the same birth again (every reconnect): nothing to change or say
        for device in before.keys() - covered.keys():
            self.engine.hand_over(*device, ())
        for device, rules in covered.items():
            self.engine.hand_over(*device, rules)
        if covered:
            self._edge[status.agent] = covered
        else:
            del self._edge[status.agent]
        if save:
            self.store.save_edge_birth(status.agent, status.model_dump_json() if covered else None)
            log.info("edge alarms", agent=status.agent, devices=len(covered),
                     rules=sum(len(rules) for rules in covered.values()))  # fmt: skip

    def observe_conditions(self, changes: list[ConditionChange]) -> None:
        """Conditions raised outside the rule engine (collector.loss, the coordination
        alarms); owned ones apply. With fail-over, every member remembers the newest of
        each, as its engine does for the rules: a member that takes the asset applies it."""
        if self.coordinator is not None:
            for change in changes:
                self.coordinator.evaluates(change.site, change.asset)  # learns of the asset
                self._outside_last[record_key(change)] = change
        if changes:
            self._apply(changes)

    def standing(self, rules: tuple[str, ...]) -> list[AlarmId]:
        """The active alarms of ``rules`` (as ``(rule, site, asset, device)`` tuples): what
        a restart must remember to clear. A stored id that does not parse is no alarm of
        theirs."""
        records = by_alarm_id(self.manager.records)
        return [alarm for alarm, r in records.items() if r.active and alarm.rule in rules]

    def tick(self, now: int | None = None) -> None:
        now = now_ns() if now is None else now
        changes = self.engine.tick(now)
        for change in changes:
            self.messages[record_key(change)] = change.message
        if self._unread:
            self._read_again(now)
        changes = self._owned(changes)
        effects = self.manager.on_conditions(changes)
        effects += self.manager.tick_shelves(now)
        self._refused()
        self.outbox.insert(self.router.due(self.manager.records.values(), now))
        self._after(effects)
        self._wake()

    def reload(self, rules: RuleSet, now: int | None = None) -> None:
        changes = self.engine.reload(rules, now_ns() if now is None else now)
        self.manager.rules_changed()
        log.info("alarm rules reloaded", rules=len(rules))
        if changes:
            self._apply(changes)

    def command(
        self, command: AlarmCommand, now: int | None = None
    ) -> tuple[int, AlarmCommandResult]:
        """An operator command: (HTTP-style status, result)."""
        now = now_ns() if now is None else now
        self.counts["commands"] += 1
        status, reason, alarm = self._command_target(command)
        if alarm is not None:
            order = Command(
                alarm_id=alarm,
                action=command.action,
                who=command.who,
                now_ns=now,
                comment=command.comment,
                duration_s=command.duration_s,
            )
            outcome = self.manager.command(order)
            if isinstance(outcome, Rejected):
                status, reason = 409, outcome.reason
            else:
                self._after(outcome)
                self._wake()
        if status != 200:
            self.counts["rejected_commands"] += 1
        record = self.manager.records.get(command.alarm_id)
        log.info("alarm command", alarm_id=command.alarm_id, action=command.action,
                 who=command.who, status=status, reason=reason)  # fmt: skip
        return status, AlarmCommandResult(
            request_id=command.request_id,
            alarm_id=command.alarm_id,
            action=command.action,
            ok=status == 200,
            reason=reason,
            state=record.state.value if record else "",
            ts_ns=now,
        )

    def _command_target(self, command: AlarmCommand) -> tuple[int, str, AlarmId | None]:
        """(HTTP-style status, reason, the alarm): 200 and the alarm it is for, or why
        this collector refuses it (and None)."""
        try:
            alarm = AlarmId.parse(command.alarm_id)
        except ValueError:
            return 404, "alarm ids are rule:site:asset:device", None
        if not self._acts_on(alarm.site, alarm.asset):
            owner = self.ownership.owner(alarm.site, alarm.asset)
            if owner is None or owner == self.collector_id:
                return 503, "alarm's asset is being taken over by a collector; try again", None
            return 421, f"alarm belongs to collector {owner}{self._api_of(owner)}", None
        if command.alarm_id not in self.manager.records:
            return 404, f"no alarm {command.alarm_id!r}", None
        return 200, "", alarm

    def kpi_lines(self, now: int | None = None) -> list[str]:
        """The alarm KPIs (ISA-18.2 / EEMUA 191) at ``now`` as line protocol: measurements
        ``alarm_kpi`` and ``alarm_top``. Call :meth:`AlarmKpis.stopped_chattering` first."""
        now = now_ns() if now is None else now
        points = self.kpis.points(self.collector_id, now, self.manager.records.values())
        return [encode_point(p.measurement, p.tags, p.fields, p.ts_ns) for p in points]

    def list_alarms(self) -> list[dict[str, Any]]:
        """Every alarm: with fail-over, every asset's as stored in etcd, whoever owns it."""
        records = dict(self.manager.records)
        if isinstance(self.store, HaStateStore):
            records = {**self.store.shared.load_all(), **records}
        return [
            console_view(record, self.messages.get(key, ""))
            for key, record in sorted(records.items())
        ]

    def kpi_report(self, now: int | None = None) -> dict[str, Any]:
        """The live KPIs for the console: the snapshot of :meth:`AlarmKpis.snapshot`, the
        top alarms, those chattering, and how long the collector has been counting."""
        now = now_ns() if now is None else now
        records = list(self.manager.records.values())
        return {
            **self.kpis.snapshot(now, records),
            "top": self.kpis.top(now),
            "chattering_ids": sorted(self.kpis.chattering(now)),
            "counting_s": (now - self.started_ns) / 1e9,
            "window_s": self.settings.kpi.window_s,
            "flood_per_window": self.settings.kpi.flood_per_window,
            "standing_after_s": self.settings.kpi.standing_after_s,
        }

    # --- fail-over (collector.alarms.ha) ----------------------------------------------

    def taken(self, assets: list[tuple[str, str]], now: int | None = None) -> None:
        """This collector took these assets: their stored records, brought up to what
        its engine sees now (a condition that started or ended while nobody owned the
        asset is announced or cleared; the rest changes nothing)."""
        assert isinstance(self.store, HaStateStore)
        now = now_ns() if now is None else now
        try:
            records = self.store.shared.load(assets)
        except EtcdError as exc:
            if not self._unread.issuperset(assets):  # said once, retried every tick
                log.error("stored alarms of owned assets not read; retrying",
                          assets=len(assets), reason=str(exc))  # fmt: skip
            self._unread.update(assets)
            return
        self._unread.difference_update(assets)
        self.manager.adopt(records)
        for key, record in records.items():
            if record.acked or record.state in HIDDEN:
                continue
            self.router.unacked_since.setdefault(key, record.last_transition_ns)
        self._apply(self._catch_up(set(assets), now))

    def given_up(self, assets: list[tuple[str, str]]) -> None:
        """Another collector owns these assets now: forget their records here."""
        gone = set(assets)
        self._unread -= gone
        self.manager.drop(
            [key for key in self.manager.records if not is_local(key) and asset_of(key) in gone]
        )

    def _catch_up(self, assets: set[tuple[str, str]], now: int) -> list[ConditionChange]:
        """The engine's view of these assets' alarms, as changes for the lifecycle."""
        changes: list[ConditionChange] = []
        seen: set[str] = set()
        for alarm, record in by_alarm_id(self.manager.records).items():
            if (alarm.site, alarm.asset) not in assets:
                continue
            seen.add(str(alarm))
            current = self.engine.current(*alarm, now)
            if current is not None:
                changes.append(current)
            elif record.active:  # not heard yet: it holds until a reading ends it
                self.engine.restore({tuple(alarm): record.suppressed})  # type: ignore[dict-item]
        for change in self.engine.conditions():
            if (change.site, change.asset) in assets and record_key(change) not in seen:
                changes.append(replace(change, ts_ns=now))
        for alarm, message in self._edge_last.items():
            if (alarm.site, alarm.asset) in assets:
                changes.append(condition_change(message))
        changes += [c for c in self._outside_last.values() if (c.site, c.asset) in assets]
        return changes

    def _read_again(self, now: int) -> None:
        """Owned assets whose stored records this member cannot trust: their first read
        failed, or a commit of theirs failed (one etcd timed out on may have been
        applied all the same), or a change of theirs was missed (:meth:`_missed`).
        Acting on its own copy could raise an alarm the store has already (a second
        announcement under a new key) or keep one whose condition ended: read them
        again, then catch up (:meth:`taken`); until then nothing of theirs is
        committed."""
        if self.coordinator is None or not self.coordinator.reachable:
            return  # no waiting on etcd in the event loop
        owned = sorted(asset for asset in self._unread if self.ownership.owns(*asset))
        if owned:
            self.taken(owned, now)

    def _api_of(self, member: str) -> str:
        api = self.coordinator.api_of(member) if self.coordinator is not None else None
        return f" ({api})" if api else ""

    # --- internals --------------------------------------------------------------------

    def _acts_on(self, site: str, asset: str) -> bool:
        """Owned, and its stored records read: what commits and commands need."""
        return self.ownership.owns(site, asset) and (site, asset) not in self._unread

    def _missed(self, site: str, asset: str) -> None:
        """A change of an asset whose claim this member holds but cannot act on now (its
        lease's time up by its own clock while a keepalive is held up, or the records
        unread): read again and caught up on once it owns the asset again, or the change
        would be lost - an overload's clear, say, and its alarm standing for ever."""
        if self.coordinator is not None and self.coordinator.holds(site, asset):
            self._unread.add((site, asset))

    def _owned(self, changes: list[ConditionChange]) -> list[ConditionChange]:
        owned = []
        for change in changes:
            if self._acts_on(change.site, change.asset):
                owned.append(change)
            else:
                self._missed(change.site, change.asset)
        return owned

    def _apply(self, changes: list[ConditionChange], now: int | None = None) -> None:
        """Changes through the lifecycle; ``now``: when they were heard, if that may be
        later than they happened (edge conditions)."""
        for change in changes:
            self.messages[record_key(change)] = change.message
        changes = self._owned(changes)
        effects = self.manager.on_conditions(changes)
        self._refused()
        if effects:
            if now is not None:
                self._heard_late(effects, now)
            self._after(effects)
            self._wake()

    def _heard_late(self, effects: list[Effect], now: int) -> None:
        """An alarm announced late is unacknowledged since it was announced: reminders
        and escalations count from now, not from its start."""
        for effect in effects:
            if isinstance(effect, Annunciate) and effect.ts_ns < now:
                self.router.unacked_since[effect.alarm_id] = now

    def _after(self, effects: list[Effect]) -> None:
        if effects:
            self.changes.bump()
        for alarm in self.kpis.observe(effects):
            log.warning("alarm chattering", alarm_id=alarm)
        for effect in effects:
            if isinstance(effect, Annunciate):
                self.counts["announced"] += 1
                log.warning("alarm", alarm_id=effect.alarm_id, priority=effect.priority,
                            reason=effect.reason.value, value=effect.value, limit=effect.limit,
                            message=self.messages.get(effect.alarm_id, ""))  # fmt: skip
            elif isinstance(effect, Clear):
                self.counts["cleared"] += 1
                log.info("alarm cleared", alarm_id=effect.alarm_id, value=effect.value)
            elif isinstance(effect, Journal):
                log.info("alarm journal", alarm_id=effect.alarm_id, action=effect.action.value,
                         who=effect.who, comment=effect.comment)  # fmt: skip

    def _wake(self) -> None:
        for deliverer in self.deliverers.values():
            deliverer.wake.set()

    # --- tasks ------------------------------------------------------------------------

    def start(self, group: asyncio.TaskGroup) -> None:
        for deliverer in self.deliverers.values():
            group.create_task(deliverer.run())
        group.create_task(self._tick_forever())

    def _refused(self) -> None:
        """Alarms whose change the store refused: read again and caught up on once owned."""
        if self.manager.refused:
            self._unread.update(asset_of(key) for key in self.manager.refused)
            self.manager.refused.clear()

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_enforce = loop.time() + ENFORCE_EVERY_S
        while True:
            await asyncio.sleep(self.settings.tick_s)
            self.tick()
            if loop.time() >= next_enforce:
                next_enforce = loop.time() + ENFORCE_EVERY_S
                self.outbox.enforce(now_ns())

    async def close(self) -> None:
        """Release the channels' resources and close the state file."""
        for close in self._closers:
            await close()
        self.store.close()


def condition_change(message: ConditionMessage) -> ConditionChange:
    """An edge agent's condition message as the change the engine would have made."""
    state = message.state
    return ConditionChange(
        rule=message.rule,
        site=message.site,
        asset=message.asset,
        device=message.device,
        active=state is ConditionState.ACTIVE,
        suppressed=state is ConditionState.SUPPRESSED,
        value=message.value,
        limit=message.limit,
        priority=message.priority,
        ts_ns=message.ts_ns,
        message=message.message,
        latched=message.latched,
        type=message.type,
        agent=message.agent,
        peak=message.peak,
        since_ns=message.since_ns if state is ConditionState.EPISODE else None,
    )
