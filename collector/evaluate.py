"""Evaluate stage: threshold rules over the latest good values of each device.

State is one flag per (rule, site, asset, device): raised or not. A transition yields
one :class:`AlarmEvent`; staying above the limit yields nothing, so one overload is one
alarm however many polls it lasts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collector.config import ThresholdRule
from derrick.contract import AlarmEvent, AlarmState, Quality, Telemetry

DeviceKey = tuple[str, str, str]


@dataclass
class _DeviceState:
    rules: list[ThresholdRule]  # the rules that apply to this device's kind and asset
    watched: frozenset[str]  # the tags those rules read (value and limit tags)
    values: dict[str, float] = field(default_factory=dict)
    raised_at: dict[str, int] = field(default_factory=dict)  # rule -> ts_ns of raise


class Evaluator:
    def __init__(self, rules: list[ThresholdRule]) -> None:
        self.rules = rules
        self._devices: dict[DeviceKey, _DeviceState] = {}

    def evaluate(self, message: Telemetry) -> list[AlarmEvent]:
        key = (message.site, message.asset, message.device)
        state = self._devices.get(key) or self._new_state(key, message)
        if not state.rules:  # nothing watches this device: skip it on the hot path
            return []
        ts_ns = 0
        watched = state.watched
        for reading in message.readings:
            value = reading.value
            if (
                reading.tag in watched
                and reading.quality is Quality.GOOD
                and isinstance(value, int | float)
            ):
                state.values[reading.tag] = float(value)
                ts_ns = max(ts_ns, reading.ts_ns)
        if not ts_ns:
            return []
        return [
            event
            for rule in state.rules
            if (event := self._check(rule, message, state, ts_ns)) is not None
        ]

    def _new_state(self, key: DeviceKey, message: Telemetry) -> _DeviceState:
        rules = [rule for rule in self.rules if rule.matches(message.kind, message.asset)]
        watched = {rule.tag for rule in rules} | {r.limit_tag for r in rules if r.limit_tag}
        state = self._devices[key] = _DeviceState(rules, frozenset(watched))
        return state

    def _check(
        self, rule: ThresholdRule, message: Telemetry, state: _DeviceState, ts_ns: int
    ) -> AlarmEvent | None:
        value = state.values.get(rule.tag)
        limit = self._limit(rule, state)
        if value is None or limit is None:
            return None
        raised_at = state.raised_at.get(rule.name)
        if raised_at is None and value > limit:
            state.raised_at[rule.name] = ts_ns
            return _event(
                rule,
                message,
                AlarmState.RAISED,
                value=value,
                limit=limit,
                ts_ns=ts_ns,
                suffix=f"{ts_ns}",
            )
        if raised_at is not None and value < limit * rule.clear_percent / 100:
            del state.raised_at[rule.name]
            return _event(
                rule,
                message,
                AlarmState.CLEARED,
                value=value,
                limit=limit,
                ts_ns=ts_ns,
                suffix=f"{raised_at}-clear",
            )
        return None

    @staticmethod
    def _limit(rule: ThresholdRule, state: _DeviceState) -> float | None:
        if rule.limit is not None:
            return rule.limit
        reference = state.values.get(rule.limit_tag or "")
        if reference is None or reference <= 0:
            return None
        return reference * rule.limit_percent / 100


def _event(
    rule: ThresholdRule,
    message: Telemetry,
    state: AlarmState,
    *,
    value: float,
    limit: float,
    ts_ns: int,
    suffix: str,
) -> AlarmEvent:
    if state is AlarmState.RAISED:
        what = f"{rule.limit_percent:g} % of {rule.limit_tag}" if rule.limit_tag else "limit"
        text = f"{rule.tag} {value:.2f} above {what} ({limit:.2f})"
    else:
        clear_at = limit * rule.clear_percent / 100
        text = (
            f"{rule.tag} {value:.2f} back below {rule.clear_percent:g} % of the limit "
            f"({clear_at:.2f} of {limit:.2f})"
        )
    return AlarmEvent(
        event_id=f"{rule.name}:{message.site}:{message.asset}:{message.device}:{suffix}",
        rule=rule.name,
        site=message.site,
        asset=message.asset,
        device=message.device,
        state=state,
        priority=rule.priority,
        message=text,
        value=value,
        limit=limit,
        ts_ns=ts_ns,
    )
