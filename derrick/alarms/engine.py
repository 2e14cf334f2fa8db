"""Condition engine: alarm rules over telemetry and status messages, time passed in.

Pure: no clock, no I/O, no logging. Every call takes ``now_ns`` (the collector's clock
at arrival; it also times delays, windows and staleness) and returns the
:class:`ConditionChange` s it caused; nothing else leaves the engine. It knows
*conditions* only (is the rule's condition true now, after deadband and delays, and is
it suppressed); acknowledgement, latching and shelving belong to the alarm lifecycle.

Costs. Each device gets its rule states once, when it is first seen (rule globs matched
against site, asset, device and kind, then cached), indexed by the tags they read. A
message costs one dict lookup per reading and one evaluation per rule that reads a tag
it carries; devices no rule watches cost a lookup per reading. Feed live messages: a
replayed (``historical``) backlog evaluated at arrival time would compress its
history into one instant; pass such messages with their own time or not at all.

Event time. The collector passes its clock at arrival; an agent evaluating rules at the
edge passes the readings' own timestamps (:meth:`RuleEngine.observe_readings`), so a
backlog it evaluated while its uplink was down has the delays and windows it had.

At the edge. :meth:`RuleEngine.hand_over` takes rules off a device: an agent evaluates
them itself and sends its condition changes, which the collector then takes as they
come instead of evaluating those rules on the telemetry.

State is per (rule, device) and per (rule, agent) for ``agent_offline``.
:meth:`RuleEngine.reload` keeps it for rules whose name, type and selector did not
change, so a reload does not re-raise standing alarms.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from derrick.alarms.rules import (
    AgentOfflineRule,
    BadQualityRule,
    BitRule,
    BooleanRule,
    DeviceOfflineRule,
    RateOfChangeRule,
    RuleSet,
    StaleRule,
    ThresholdRule,
)
from derrick.wire.payloads import (
    AgentStatus,
    DeviceState,
    DeviceStatus,
    Quality,
    Reading,
    Telemetry,
)

NS = 1_000_000_000
_NUMBER = (int, float)
_GOOD = Quality.GOOD


@dataclass(frozen=True, slots=True)
class ConditionChange:
    """One transition of one rule's condition on one device (or agent).

    ``active``: the condition holds (after deadband and delays) and is not suppressed.
    ``suppressed``: it holds but a ``suppress_when`` condition, a bad input quality or a
    device reported down withholds it. Both false: the condition cleared. ``value`` and
    ``limit`` are what was compared (``limit`` None for boolean/bit rules). ``peak``:
    the most extreme value while the condition held (threshold and rate-of-change
    rules; None for the others, and before the condition first held).

    ``since_ns``: a whole episode reported at once, active from then until ``ts_ns`` and
    clear now (an edge agent's, see :class:`~derrick.wire.payloads.ConditionMessage`);
    the engine itself never sets it.
    """

    rule: str
    site: str
    asset: str
    device: str
    active: bool
    suppressed: bool
    value: Any
    limit: float | None
    priority: str
    ts_ns: int
    message: str
    latched: bool = False
    type: str = ""
    agent: str = ""
    peak: Any = None
    since_ns: int | None = None  # set (never by this engine): an episode from then to ts_ns


class _Device:
    __slots__ = (
        "agent", "asset", "by_tag", "device", "down", "kind", "last_good", "quality",
        "seen_ns", "site", "states", "status_known", "values",
    )  # fmt: skip

    def __init__(self, site: str, asset: str, device: str, kind: str | None, now: int):
        self.site, self.asset, self.device, self.kind = site, asset, device, kind
        self.agent = ""
        self.down = False
        self.status_known = False  # no DeviceStatus yet: the first one is always evaluated
        self.values: dict[str, Any] = {}  # tag -> last good value
        self.quality: dict[str, Quality] = {}  # tag -> latest quality
        self.last_good: dict[str, int] = {}  # tag -> now_ns of its last good reading
        self.seen_ns = now
        self.states: dict[str, _State] = {}
        self.by_tag: dict[str, list[_State]] = {}


class _Agent:
    __slots__ = ("agent", "offline", "site", "states")

    def __init__(self, agent: str, site: str):
        self.agent, self.site = agent, site
        self.offline = False
        self.states: dict[str, _State] = {}


Check = Callable[["_State", int], "bool | None"]


class _State:
    """Condition state of one rule on one device, with the rule's numbers unpacked."""

    __slots__ = (
        "after_ns", "amount", "band", "band_pct", "bit", "check", "deadline", "factor",
        "fixed", "high", "hold_until", "host", "limit", "limit_tag", "mono", "off_ns", "on_ns",
        "peak", "peak_high", "raw",
        "reported", "rising", "rule", "tag", "uses_quality", "value", "when", "window_ns",
    )  # fmt: skip

    def __init__(self, rule: Any, host: _Device | _Agent):
        self.host = host
        self.raw = False  # the condition after deadband and delays
        self.reported = (False, False)  # (active, suppressed) last emitted
        self.deadline: int | None = None  # a flip of raw waiting for its delay
        self.value: Any = None
        self.limit: float | None = None
        self.mono: deque[tuple[int, float]] = deque()
        self.hold_until = 0  # a restored rate-of-change condition holds until then
        self.peak: Any = None  # the most extreme value while raw (see peak_high)
        self.bind(rule)

    def bind(self, rule: Any) -> None:
        """Take (a new version of) the rule; condition state is kept."""
        self.rule = rule
        self.tag = getattr(rule, "tag", "")
        self.on_ns = round(rule.on_delay * NS)
        self.off_ns = round(rule.off_delay * NS)
        self.uses_quality = bool(rule.depends_on_quality)
        self.when = getattr(rule, "active_when", True)
        self.after_ns = round(getattr(rule, "after_s", 0) * NS)
        self.band, self.band_pct = 0.0, None
        band = getattr(rule, "deadband", None)
        if isinstance(rule, ThresholdRule | RateOfChangeRule):
            if band is None:
                self.band_pct = rule.signal_defaults[0] or None
            elif band.percent:
                self.band_pct = band.value
            else:
                self.band = band.value
        self.check = _CHECKS[type(rule)]
        # Which way a value is more extreme: up for high limits and any rate of change,
        # down for low limits; None: the rule's values have no peak.
        self.peak_high: bool | None = None
        if isinstance(rule, ThresholdRule):
            self.peak_high = rule.is_high
        elif isinstance(rule, RateOfChangeRule):
            self.peak_high = True
        if isinstance(rule, ThresholdRule):
            self.high = rule.is_high
            self.fixed = rule.limit
            self.limit_tag = rule.limit_tag or ""
            self.factor = rule.factor
            if self.fixed is not None and self.band_pct is not None:
                self.band, self.band_pct = abs(self.fixed) * self.band_pct / 100, None
        elif isinstance(rule, RateOfChangeRule):
            self.rising = rule.rise is not None
            self.amount = rule.amount
            self.window_ns = round(rule.window_s * NS)
            if self.band_pct is not None:
                self.band, self.band_pct = self.amount * self.band_pct / 100, None
        elif isinstance(rule, BitRule):
            self.bit = rule.bit


# --- condition checks: the instantaneous condition (deadband applied), None = unknown -----


def _threshold(st: _State, now: int) -> bool | None:
    values = st.host.values  # type: ignore[union-attr]
    value = values.get(st.tag)
    if value.__class__ not in _NUMBER:
        return None
    limit = st.fixed
    band = st.band
    if limit is None:
        ref = values.get(st.limit_tag)
        if ref.__class__ not in _NUMBER or ref <= 0:
            return None
        limit = ref * st.factor
        if st.band_pct is not None:
            band = limit * st.band_pct / 100
    st.value, st.limit = value, limit
    if st.high:
        return value >= limit - band if st.raw else value >= limit
    return value <= limit + band if st.raw else value <= limit


def _rate_of_change(st: _State, now: int) -> bool | None:
    value = st.host.values.get(st.tag)  # type: ignore[union-attr]
    if value.__class__ not in _NUMBER:
        return None
    mono = st.mono  # min (rise) or max (fall) of the window at its front
    if st.rising:
        while mono and mono[-1][1] >= value:
            mono.pop()
    else:
        while mono and mono[-1][1] <= value:
            mono.pop()
    mono.append((now, value))
    # The front is the extreme since the window started, counting the value held at its
    # start: the last sample at or before the cutoff stays until a later one is too.
    cutoff = now - st.window_ns
    while len(mono) > 1 and mono[1][0] <= cutoff:
        mono.popleft()
    change = value - mono[0][1] if st.rising else mono[0][1] - value
    st.value, st.limit = change, st.amount
    if st.raw and now < st.hold_until:
        return True  # restored: the window since the restart is too short to end it
    return change >= st.amount - st.band if st.raw else change >= st.amount


def _boolean(st: _State, now: int) -> bool | None:
    value = st.host.values.get(st.tag)  # type: ignore[union-attr]
    if value is None or isinstance(value, str):
        return None
    st.value = value
    return bool(value) is st.when


def _bit(st: _State, now: int) -> bool | None:
    value = st.host.values.get(st.tag)  # type: ignore[union-attr]
    if value.__class__ is float and value.is_integer():
        value = int(value)
    if value.__class__ is not int:
        return None
    st.value = value
    return bool((value >> st.bit) & 1) is st.when


def _stale(st: _State, now: int) -> bool | None:
    host: _Device = st.host  # type: ignore[assignment]
    age = now - host.last_good.get(st.tag, host.seen_ns)
    st.value, st.limit = age / NS, st.after_ns / NS
    return age >= st.after_ns


def _bad_quality(st: _State, now: int) -> bool | None:
    quality = st.host.quality.get(st.tag)  # type: ignore[union-attr]
    if quality is None:
        return None
    st.value = str(quality)
    return quality is not _GOOD


def _device_offline(st: _State, now: int) -> bool | None:
    st.value = "down" if st.host.down else "up"  # type: ignore[union-attr]
    return st.host.down  # type: ignore[union-attr]


def _agent_offline(st: _State, now: int) -> bool | None:
    st.value = "offline" if st.host.offline else "online"  # type: ignore[union-attr]
    return st.host.offline  # type: ignore[union-attr]


_CHECKS: dict[type, Check] = {
    ThresholdRule: _threshold,
    RateOfChangeRule: _rate_of_change,
    BooleanRule: _boolean,
    BitRule: _bit,
    StaleRule: _stale,
    BadQualityRule: _bad_quality,
    DeviceOfflineRule: _device_offline,
    AgentOfflineRule: _agent_offline,
}


class RuleEngine:
    """Alarm conditions of a rule set over many devices; see the module docstring."""

    def __init__(self, rules: RuleSet | Iterable[Any]) -> None:
        self._devices: dict[tuple[str, str, str], _Device] = {}
        self._agents: dict[str, _Agent] = {}
        self._agent_site: dict[str, str] = {}
        self._timers: dict[_State, int] = {}  # states waiting for an on/off delay
        self._stale: dict[_State, None] = {}  # stale-rule states, checked on every tick
        self._held: dict[tuple[str, str, str, str], bool] = {}  # restored conditions
        self._edge: dict[tuple[str, str, str], frozenset[str]] = {}  # rules handed over
        self._set_rules(rules)

    def restore(self, held: dict[tuple[str, str, str, str], bool]) -> None:
        """Conditions that held when the process stopped: ``(rule, site, asset, device)``
        -> suppressed. Their states start as holding when first bound, so the first
        normal reading after a restart clears them (with deadband and off-delay) instead
        of leaving a restored active alarm with nothing to end it."""
        self._held.update(held)

    @property
    def rules(self) -> list[Any]:
        return list(self._rules)

    def _set_rules(self, rules: RuleSet | Iterable[Any]) -> None:
        self._rules = list(rules.rules if isinstance(rules, RuleSet) else rules)
        self._device_rules = [r for r in self._rules if not isinstance(r, AgentOfflineRule)]
        self._agent_rules = [r for r in self._rules if isinstance(r, AgentOfflineRule)]

    # --- inputs ---------------------------------------------------------------------

    def observe(self, message: Telemetry, now_ns: int) -> list[ConditionChange]:
        """Take one telemetry message; the changes its readings caused."""
        return self.observe_readings(
            message.site, message.asset, message.device, message.kind, message.agent,
            message.readings, now_ns, historical=message.historical,
        )  # fmt: skip

    def observe_readings(  # noqa: PLR0917 - a message's parts, without the message
        self,
        site: str,
        asset: str,
        device: str,
        kind: str,
        agent_id: str,
        readings: Iterable[Reading],
        now_ns: int,
        *,
        historical: bool = False,
    ) -> list[ConditionChange]:
        """Take one device's readings at ``now_ns``; the changes they caused. (What
        :meth:`observe` does with a message; an agent calls it with its poll's readings
        and their own time, before it has made a message.)"""
        dev = self._devices.get((site, asset, device))
        changes: list[ConditionChange] = []
        if dev is None or dev.kind != kind:
            dev = self._device(site, asset, device, kind, now_ns)
            if dev.status_known:  # its status came before its kind (and so its rules)
                changes = self._evaluate_all(self._offline_states(dev), now_ns)
        if dev.agent != agent_id or self._agent_site.get(agent_id) != site:
            dev.agent = agent_id
            self._learn_site(agent_id, site)
        agent = self._agents.get(agent_id)
        if agent is not None and agent.offline and not historical:
            changes += self._online_again(agent, now_ns)
        by_tag = dev.by_tag
        if not by_tag:
            return changes
        values, quality, last_good = dev.values, dev.quality, dev.last_good
        touched: dict[_State, None] = {}
        for reading in readings:
            tag = reading.tag
            states = by_tag.get(tag)
            if states is None:
                continue
            q = reading.quality
            quality[tag] = q
            if q is _GOOD:
                values[tag] = reading.value
                last_good[tag] = now_ns
            touched.update(dict.fromkeys(states))
        for st in touched:
            change = self._evaluate(st, now_ns)
            if change is not None:
                changes.append(change)
        return changes

    def observe_device(self, status: DeviceStatus, now_ns: int) -> list[ConditionChange]:
        """Take a device status (up/down): ``device_offline`` rules, and suppression of
        the device's quality-dependent rules while it is down."""
        key = (status.site, status.asset, status.device)
        dev = self._devices.get(key) or self._device(*key, None, now_ns)
        dev.agent = status.agent
        self._learn_site(status.agent, status.site)
        down = status.state is DeviceState.DOWN
        if down == dev.down and dev.status_known:
            return []
        dev.down, dev.status_known = down, True
        return self._evaluate_all(dev.states.values(), now_ns)

    def _online_again(self, agent: _Agent, now: int) -> list[ConditionChange]:
        """Live telemetry from an agent marked offline: it is online.

        A last will can arrive after the agent's new birth message (the broker publishes
        the old connection's will when the agent reconnects under the same client id),
        leaving "offline" retained while the agent is publishing.
        """
        agent.offline = False
        return self._evaluate_all(agent.states.values(), now)

    @staticmethod
    def _offline_states(dev: _Device) -> list[_State]:
        return [st for st in dev.states.values() if isinstance(st.rule, DeviceOfflineRule)]

    def observe_agent(self, status: AgentStatus, now_ns: int) -> list[ConditionChange]:
        """Take an agent's birth message or last will: ``agent_offline`` rules."""
        agent = self._agents.get(status.agent)
        if agent is None:
            agent = self._agents[status.agent] = _Agent(
                status.agent, self._agent_site.get(status.agent, "")
            )
            self._bind_agent(agent)
        agent.offline = status.state == "offline"
        return self._evaluate_all(agent.states.values(), now_ns)

    def tick(self, now_ns: int) -> list[ConditionChange]:
        """Advance time: delays that ran out, tags that went stale. Call every second or so."""
        due = [st for st, deadline in self._timers.items() if deadline <= now_ns]
        due += [st for st in self._stale if st not in self._timers]
        return self._evaluate_all(due, now_ns)

    def hand_over(self, site: str, asset: str, device: str, rules: Iterable[str]) -> None:
        """The rules named here are evaluated for this device elsewhere (by its agent, at
        the edge) from now on; those not named any more are evaluated here again.

        A rule handed over is dropped without a word: its standing alarm is the edge's
        to clear, and a clear from here would end an alarm the edge still holds.
        """
        key = (site, asset, device)
        names = frozenset(rules)
        if self._edge.get(key, frozenset()) == names:
            return
        if names:
            self._edge[key] = names
        else:
            self._edge.pop(key, None)
        dev = self._devices.get(key)
        if dev is not None:
            self._bind(dev, 0)  # what it returns are the dropped states: not reported

    def peak(self, rule: str, site: str, asset: str, device: str) -> Any:
        """The most extreme value of that condition while it holds (None: not held, or
        a rule type without peaks); see :attr:`ConditionChange.peak`."""
        dev = self._devices.get((site, asset, device))
        st = dev.states.get(rule) if dev is not None else None
        return st.peak if st is not None and st.raw else None

    def handed_over(self, site: str, asset: str, device: str) -> frozenset[str]:
        """The rules of this device evaluated at the edge (:meth:`hand_over`)."""
        return self._edge.get((site, asset, device), frozenset())

    def reload(self, rules: RuleSet | Iterable[Any], now_ns: int = 0) -> list[ConditionChange]:
        """Replace the rules. State is kept for rules whose name, type and selector are
        unchanged (new limits, delays, priority or message apply from the next
        evaluation); conditions of rules that went away, or no longer apply, are
        returned as cleared at ``now_ns``."""
        self._set_rules(rules)
        self._timers.clear()
        self._stale.clear()
        changes = []
        for dev in self._devices.values():
            changes += self._bind(dev, now_ns)
        for agent in self._agents.values():
            changes += self._bind_agent(agent, now_ns)
        return changes

    def conditions(self) -> list[ConditionChange]:
        """Every condition now active or suppressed, as its last change reported it."""
        hosts = [*self._devices.values(), *self._agents.values()]
        return [
            self._change(st, st.reported[0], st.reported[1], 0)
            for host in hosts
            for st in host.states.values()
            if st.reported != (False, False)
        ]

    def current(
        self, rule: str, site: str, asset: str, device: str, now_ns: int
    ) -> ConditionChange | None:
        """That condition as last reported, dated ``now_ns``; None when this engine holds
        no state for it (its device or agent not heard from yet, or the rule handed to
        the edge). What a collector that takes over an asset compares with the stored
        alarm records (collector.alarms.ha)."""
        host: _Device | _Agent | None = self._devices.get((site, asset, device))
        if host is None and asset == device:
            agent = self._agents.get(asset)
            host = agent if agent is not None and agent.site == site else None
        st = host.states.get(rule) if host is not None else None
        if st is None:
            return None
        return self._change(st, st.reported[0], st.reported[1], now_ns)

    # --- device and agent state -----------------------------------------------------

    def _device(self, site: str, asset: str, device: str, kind: str | None, now: int) -> _Device:
        dev = self._devices.get((site, asset, device))
        if dev is None:
            dev = self._devices[(site, asset, device)] = _Device(site, asset, device, kind, now)
        dev.kind = kind
        self._bind(dev, now)
        return dev

    def _bind(self, dev: _Device, now: int = 0) -> list[ConditionChange]:
        """(Re)build the device's rule states and tag index from the current rules."""
        edge = self._edge.get((dev.site, dev.asset, dev.device), ())
        rules = [
            r
            for r in self._device_rules
            if r.matches(dev.site, dev.asset, dev.device, dev.kind) and r.name not in edge
        ]
        dev.states, gone = self._states_for(rules, dev, dev.states)
        dev.by_tag = {}
        for st in dev.states.values():
            for tag in st.rule.reads():
                dev.by_tag.setdefault(tag, []).append(st)
            if isinstance(st.rule, StaleRule):
                self._stale[st] = None
        return self._cleared(gone, now)

    def _bind_agent(self, agent: _Agent, now: int = 0) -> list[ConditionChange]:
        rules = [r for r in self._agent_rules if r.matches_agent(agent.agent, agent.site)]
        agent.states, gone = self._states_for(rules, agent, agent.states)
        return self._cleared(gone, now)

    def _states_for(
        self, rules: list[Any], host: _Device | _Agent, old: dict[str, _State]
    ) -> tuple[dict[str, _State], list[_State]]:
        states = {}
        for rule in rules:
            st = old.get(rule.name)
            if st is not None and st.rule.selector == rule.selector:
                st.bind(rule)
                if st.deadline is not None:
                    self._timers[st] = st.deadline
            else:
                st = _State(rule, host)
                self._restore(st, rule.name, host)
            states[rule.name] = st
        gone = [st for name, st in old.items() if states.get(name) is not st]
        for st in gone:
            self._timers.pop(st, None)
            self._stale.pop(st, None)
        return states, gone

    def _restore(self, st: _State, rule: str, host: _Device | _Agent) -> None:
        if not self._held:
            return
        if isinstance(host, _Agent):
            key = (rule, host.site, host.agent, host.agent)
        else:
            key = (rule, host.site, host.asset, host.device)
        suppressed = self._held.pop(key, None)
        if suppressed is None:
            return
        st.raw = True
        st.reported = (not suppressed, suppressed)
        if isinstance(host, _Device) and isinstance(st.rule, StaleRule):
            # stale already, and so until a good reading says otherwise
            host.last_good.setdefault(st.tag, host.seen_ns - st.after_ns)
        elif isinstance(st.rule, RateOfChangeRule):
            st.hold_until = host.seen_ns + st.window_ns  # a full window before it may end

    def _cleared(self, gone: list[_State], now: int) -> list[ConditionChange]:
        return [self._change(st, False, False, now) for st in gone if st.reported != (False, False)]

    def _learn_site(self, agent_id: str, site: str) -> None:
        if self._agent_site.get(agent_id) == site:
            return
        self._agent_site[agent_id] = site
        agent = self._agents.get(agent_id)
        if agent is not None and agent.site != site:
            agent.site = site
            self._bind_agent(agent)

    # --- evaluation -----------------------------------------------------------------

    def _evaluate_all(self, states: Iterable[_State], now: int) -> list[ConditionChange]:
        changes = []
        for st in list(states):
            change = self._evaluate(st, now)
            if change is not None:
                changes.append(change)
        return changes

    def _advance(self, st: _State, cond: bool, now: int) -> None:
        """Move the condition towards ``cond`` through its on- or off-delay."""
        if cond == st.raw:
            if st.deadline is not None:  # the flip did not last its delay
                st.deadline = None
                del self._timers[st]
        elif st.deadline is None:
            delay = st.on_ns if cond else st.off_ns
            if delay:
                st.deadline = self._timers[st] = now + delay
            else:
                st.raw = cond
        elif now >= st.deadline:
            st.raw = cond
            st.deadline = None
            del self._timers[st]

    def _evaluate(self, st: _State, now: int) -> ConditionChange | None:
        cond = st.check(st, now)
        if cond is not None:
            was = st.raw
            self._advance(st, cond, now)
            if st.raw and st.peak_high is not None:
                self._track_peak(st, was)
        if not st.raw:
            if st.reported == (False, False):
                return None
            return self._report(st, False, False, now)
        by_state = self._machine_state_suppresses(st)
        if not by_state and self._input_unknown(st):
            if st.reported == (True, False):
                return None  # a standing alarm stays standing while its input is unknown
            suppressed = True
        else:
            suppressed = by_state
        active = not suppressed
        if st.reported == (active, suppressed):
            return None
        return self._report(st, active, suppressed, now)

    @staticmethod
    def _track_peak(st: _State, was: bool) -> None:
        """While the condition holds, keep its most extreme value (from its start)."""
        value = st.value
        if value.__class__ not in _NUMBER:
            return
        peak = st.peak
        if not was or peak is None or ((value > peak) if st.peak_high else (value < peak)):
            st.peak = value

    @staticmethod
    def _input_unknown(st: _State) -> bool:
        """The device is down or the input's quality is not good.

        This withholds a *new* alarm (bad data must not raise one; the device's own
        fault alarm says what is wrong), but never hides a standing one: a comms blip
        would otherwise end it and announce it again when the data returns - two
        announcements for one event.
        """
        if not st.uses_quality:
            return False
        host = st.host
        if host.down:  # type: ignore[union-attr]
            return True
        quality = host.quality.get(st.tag)  # type: ignore[union-attr]
        return quality is not None and quality is not _GOOD

    @staticmethod
    def _machine_state_suppresses(st: _State) -> bool:
        if st.rule.suppress_when:
            values = st.host.values  # type: ignore[union-attr]
            return any(cond.holds(values.get(cond.tag)) for cond in st.rule.suppress_when)
        return False

    def _report(self, st: _State, active: bool, suppressed: bool, now: int) -> ConditionChange:
        st.reported = (active, suppressed)
        return self._change(st, active, suppressed, now)

    @staticmethod
    def _change(st: _State, active: bool, suppressed: bool, now: int) -> ConditionChange:
        rule, host = st.rule, st.host
        if isinstance(host, _Agent):
            site, asset, device, agent, kind = host.site, host.agent, host.agent, host.agent, ""
        else:
            site, asset, device, agent = host.site, host.asset, host.device, host.agent
            kind = host.kind or ""
        fields = {
            "name": rule.name, "description": rule.description, "tag": st.tag,
            "value": st.value, "limit": st.limit, "site": site, "asset": asset,
            "device": device, "agent": agent, "priority": rule.priority, "kind": kind,
        }  # fmt: skip
        try:
            text = rule.template().format(**fields)
        except (ValueError, TypeError):  # e.g. {value:.1f} before any value was seen
            text = f"{rule.name}: {rule.description or rule.type}"
        return ConditionChange(
            rule=rule.name,
            site=site,
            asset=asset,
            device=device,
            active=active,
            suppressed=suppressed,
            value=st.value,
            limit=st.limit,
            priority=rule.priority,
            ts_ns=now,
            message=text,
            latched=rule.latched,
            type=rule.type,
            agent=agent,
            peak=st.peak,
        )
