"""Condition engine: transitions of every rule type, with time passed in.

Each case is a rule and a script of steps ``(t_s, readings)``: a dict of tag values (a
value ``("bad", v)`` is a reading of quality bad) or None for a tick only. The result is
the list of changes as ``(t_s, active, suppressed)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from derrick.alarms.engine import ConditionChange, RuleEngine
from derrick.alarms.rules import RuleSet, load_rules
from derrick.wire.payloads import (
    AgentStatus,
    DeviceState,
    DeviceStatus,
    Quality,
    Reading,
    Telemetry,
)

S = 1_000_000_000


def rules_of(*rules: dict[str, Any]) -> RuleSet:
    return RuleSet.model_validate([{"name": f"r{i}", **r} for i, r in enumerate(rules)])


def message(values: dict[str, Any], *, device: str = "plc", kind: str = "crane") -> Telemetry:
    readings = []
    for tag, given in values.items():
        quality, value = (
            (Quality(given[0]), given[1]) if isinstance(given, tuple) else (Quality.GOOD, given)
        )
        readings.append(Reading(tag=tag, value=value, quality=quality, ts_ns=1))
    return Telemetry(
        site="s1", asset="a1", device=device, kind=kind, agent="gw", boot="b", seq=1,
        readings=readings,
    )  # fmt: skip


def run(engine: RuleEngine, steps: list[tuple[float, dict[str, Any] | None]]) -> list[tuple]:
    out = []
    for t, values in steps:
        now = round(t * S)
        changes = engine.tick(now) if values is None else engine.observe(message(values), now)
        out += [(t, c.active, c.suppressed) for c in changes]
    return out


CASES = {
    "high, no delay, deadband 2%: chatter is one alarm": (
        {"type": "high", "tag": "x", "limit": 100, "deadband": "2%"},
        [
            (0, {"x": 99}),
            (1, {"x": 100}),
            (2, {"x": 98.5}),
            (3, {"x": 101}),
            (4, {"x": 98.1}),
            (5, {"x": 100.4}),
            (6, {"x": 97.9}),
            (7, {"x": 99}),
        ],
        [(1, True, False), (6, False, False)],
    ),
    "high, no deadband: clears just below the limit": (
        {"type": "high", "tag": "x", "limit": 100},
        [(0, {"x": 100}), (1, {"x": 100}), (2, {"x": 99.9})],
        [(0, True, False), (2, False, False)],
    ),
    "high_high with on and off delay, ticks commit": (
        {"type": "high_high", "tag": "x", "limit": 10, "on_delay_s": 5, "off_delay_s": 3},
        [
            (0, {"x": 11}),
            (4, None),
            (4.9, {"x": 12}),
            (5, None),
            (6, {"x": 9}),
            (8.9, None),
            (9, None),
        ],
        [(5, True, False), (9, False, False)],
    ),
    "on delay restarts when the condition drops out": (
        {"type": "high", "tag": "x", "limit": 10, "on_delay_s": 5},
        [(0, {"x": 11}), (3, {"x": 9}), (4, {"x": 11}), (8, None), (9, None)],
        [(9, True, False)],
    ),
    "low and low_low: mirrored deadband": (
        {"type": "low", "tag": "x", "limit": 10, "deadband": 1},
        [(0, {"x": 12}), (1, {"x": 10}), (2, {"x": 10.9}), (3, {"x": 11}), (4, {"x": 11.1})],
        [(1, True, False), (4, False, False)],
    ),
    "low_low": (
        {"type": "low_low", "tag": "x", "limit": -5},
        [(0, {"x": -4}), (1, {"x": -6}), (2, {"x": -4})],
        [(1, True, False), (2, False, False)],
    ),
    "signal default: pressure 2 % deadband and 15 s delays": (
        {"type": "high", "tag": "x", "limit": 100, "signal": "pressure"},
        [
            (0, {"x": 101}),
            (14, None),
            (15, None),
            (16, {"x": 98.5}),
            (40, None),
            (41, {"x": 97.9}),
            (55, None),
            (56, None),
        ],
        [(15, True, False), (56, False, False)],
    ),
    "limit_tag: hook load against rated capacity, percent deadband of it": (
        {
            "type": "high",
            "tag": "load",
            "limit_tag": "rated",
            "limit_percent": 90,
            "deadband": "5%",
        },
        [
            (0, {"load": 80, "rated": 100}),
            (1, {"load": 91}),
            (2, {"load": 86}),
            (3, {"rated": 120}),
            (4, {"load": 85}),
        ],
        [(1, True, False), (3, False, False)],
    ),
    "limit_tag unknown or zero: no decision": (
        {"type": "high", "tag": "load", "limit_tag": "rated"},
        [(0, {"load": 80}), (1, {"load": 80, "rated": 0}), (2, {"rated": 50})],
        [(2, True, False)],
    ),
    "rate_of_change rise: pit gain 1 m3 within 600 s": (
        {"type": "rate_of_change", "tag": "g", "window_s": 600, "rise": 1.0, "deadband": 0.2},
        [
            (0, {"g": 0.0}),
            (300, {"g": 0.6}),
            (599, {"g": 0.99}),
            (700, {"g": 1.5}),
            (800, {"g": 1.5}),
            (1299, {"g": 1.5}),
            (1301, {"g": 1.5}),
        ],
        [(700, True, False), (1299, False, False)],
    ),
    "rate_of_change: a slow drift over longer than the window is no alarm": (
        {"type": "rate_of_change", "tag": "g", "window_s": 100, "rise": 1.0},
        [(t, {"g": t / 150}) for t in range(0, 1000, 10)],
        [],
    ),
    "rate_of_change fall": (
        {"type": "rate_of_change", "tag": "p", "window_s": 60, "fall": 20},
        [(0, {"p": 200}), (30, {"p": 185}), (50, {"p": 179}), (100, {"p": 179}), (111, {"p": 179})],
        [(50, True, False), (100, False, False)],
    ),
    "boolean": (
        {"type": "boolean", "tag": "b"},
        [(0, {"b": False}), (1, {"b": True}), (2, {"b": True}), (3, {"b": False})],
        [(1, True, False), (3, False, False)],
    ),
    "boolean active_when false": (
        {"type": "boolean", "tag": "b", "active_when": False},
        [(0, {"b": True}), (1, {"b": False}), (2, {"b": True})],
        [(1, True, False), (2, False, False)],
    ),
    "bit 1 of a status word": (
        {"type": "bit", "tag": "w", "bit": 1},
        [(0, {"w": 0b101}), (1, {"w": 0b111}), (2, {"w": 0b110}), (3, {"w": 0b001})],
        [(1, True, False), (3, False, False)],
    ),
    "stale: no good reading for after_s": (
        {"type": "stale", "tag": "x", "after_s": 30},
        [
            (0, {"x": 1}),
            (29, None),
            (20, {"x": ("bad", 0)}),
            (30, None),
            (31, {"x": 2}),
            (60, None),
            (61, None),
        ],
        [(30, True, False), (31, False, False), (61, True, False)],
    ),
    "bad_quality for after_s, cleared by a good reading": (
        {"type": "bad_quality", "tag": "x", "after_s": 10},
        [
            (0, {"x": ("bad", 0)}),
            (5, {"x": 1}),
            (6, {"x": ("uncertain", 0)}),
            (15, None),
            (16, None),
            (17, {"x": 3}),
        ],
        [(16, True, False), (17, False, False)],
    ),
    "suppress_when: reported suppressed, active once suppression ends": (
        {
            "type": "low",
            "tag": "spp",
            "limit": 50,
            "suppress_when": [{"tag": "flow_in", "below": 500}, {"tag": "state", "in": [1, 2]}],
        },
        [
            (0, {"spp": 150, "flow_in": 4000, "state": 0}),
            (1, {"spp": 0, "flow_in": 0}),
            (2, {"state": 2, "flow_in": 4000}),
            (3, {"state": 0}),
            (4, {"spp": 160}),
        ],
        [(1, False, True), (3, True, False), (4, False, False)],
    ),
    "depends_on_quality: bad input holds a standing alarm (no end, no second announce)": (
        {"type": "high", "tag": "x", "limit": 10},
        [(0, {"x": 11}), (1, {"x": ("bad", 0)}), (2, {"x": 12}), (3, {"x": 1})],
        [(0, True, False), (3, False, False)],
    ),
    "depends_on_quality: a new alarm waits for good input": (
        {"type": "high", "tag": "x", "limit": 10},
        [(0, {"x": 1}), (1, {"x": ("bad", 0)}), (2, {"x": 12})],
        [(2, True, False)],
    ),
    "depends_on_quality false: bad input ignored": (
        {"type": "high", "tag": "x", "limit": 10, "depends_on_quality": False},
        [(0, {"x": 11}), (1, {"x": ("bad", 0)}), (3, {"x": 1})],
        [(0, True, False), (3, False, False)],
    ),
}


@pytest.mark.parametrize(("rule", "steps", "expected"), CASES.values(), ids=CASES.keys())
def test_transitions(rule, steps, expected):
    assert run(RuleEngine(rules_of(rule)), steps) == expected


def test_a_change_carries_rule_device_value_limit_and_message():
    engine = RuleEngine(
        rules_of(
            {"type": "high", "tag": "x", "limit": 10, "priority": "critical", "latched": True,
             "message": "{tag} at {value:.1f} over {limit:g} on {asset}/{device}"}
        )
    )  # fmt: skip
    (change,) = engine.observe(message({"x": 12.25}), 7 * S)
    assert change == ConditionChange(
        rule="r0", site="s1", asset="a1", device="plc", active=True, suppressed=False,
        value=12.25, limit=10.0, priority="critical", ts_ns=7 * S,
        message="x at 12.2 over 10 on a1/plc", latched=True, type="high", agent="gw",
        peak=12.25,
    )  # fmt: skip
    assert engine.conditions() == [change.__class__(**{**_fields(change), "ts_ns": 0})]


def _fields(change: ConditionChange) -> dict[str, Any]:
    return {name: getattr(change, name) for name in change.__slots__}


def test_selectors_pick_devices_and_state_is_per_device():
    engine = RuleEngine(rules_of({"type": "boolean", "tag": "b", "kind": "rig", "device": "plc-*"}))
    assert engine.observe(message({"b": True}, device="plc-1", kind="crane"), 0) == []
    assert engine.observe(message({"b": True}, device="other", kind="rig"), 0) == []
    first = engine.observe(message({"b": True}, device="plc-1", kind="rig"), 1)
    second = engine.observe(message({"b": True}, device="plc-2", kind="rig"), 2)
    assert [(c.device, c.active) for c in first + second] == [("plc-1", True), ("plc-2", True)]
    assert engine.observe(message({"b": True}, device="plc-1", kind="rig"), 3) == []


def test_device_offline_and_fault_suppression():
    engine = RuleEngine(
        rules_of(
            {"type": "device_offline", "after_s": 30, "kind": "crane"},
            {"type": "high", "tag": "x", "limit": 10},
        )
    )
    engine.observe(message({"x": 11}), 0)

    def status(state: DeviceState, t: float) -> list[tuple]:
        changes = engine.observe_device(
            DeviceStatus(site="s1", asset="a1", device="plc", agent="gw", state=state, ts_ns=1),
            round(t * S),
        )
        return [(c.rule, c.active, c.suppressed) for c in changes]

    # The standing process alarm is held through the outage: neither ended nor announced
    # again when the device returns; the device's own alarm says what is wrong.
    assert status(DeviceState.DOWN, 10) == []
    assert engine.tick(39 * S) == []
    assert [(c.rule, c.active) for c in engine.tick(40 * S)] == [("r0", True)]
    assert status(DeviceState.UP, 50) == [("r0", False, False)]


def test_a_device_down_withholds_a_new_process_alarm():
    engine = RuleEngine(rules_of({"type": "high", "tag": "x", "limit": 10, "on_delay_s": 0}))
    engine.observe(message({"x": 1}), 0)
    engine.observe_device(
        DeviceStatus(site="s1", asset="a1", device="plc", agent="gw", state=DeviceState.DOWN,
                     ts_ns=1), 1 * S,
    )  # fmt: skip
    (held,) = engine.observe(message({"x": 11}), 2 * S)  # a last reading before the cut
    assert (held.active, held.suppressed) == (False, True)


def test_agent_offline_learns_the_site_from_telemetry():
    engine = RuleEngine(rules_of({"type": "agent_offline", "site": "s1", "after_s": 5}))
    engine.observe(message({"x": 1}), 0)
    offline = AgentStatus(agent="gw", state="offline")
    assert engine.observe_agent(offline, 1 * S) == []
    (change,) = engine.tick(6 * S)
    assert (change.site, change.asset, change.device, change.active) == ("s1", "gw", "gw", True)
    (back,) = engine.observe_agent(AgentStatus(agent="gw", state="online"), 7 * S)
    assert not back.active
    assert engine.observe_agent(AgentStatus(agent="elsewhere", state="offline"), 8 * S) == []
    assert engine.tick(20 * S) == []


def test_reload_keeps_state_of_unchanged_rules_and_clears_removed_ones():
    keep = {"name": "keep", "type": "high", "tag": "x", "limit": 10}
    moved = {"name": "moved", "type": "high", "tag": "y", "limit": 10}
    gone = {"name": "gone", "type": "boolean", "tag": "b"}
    engine = RuleEngine(RuleSet.model_validate([keep, moved, gone]))
    raised = engine.observe(message({"x": 11, "y": 11, "b": True}), 0)
    assert sorted(c.rule for c in raised) == ["gone", "keep", "moved"]
    new_rules = RuleSet.model_validate(
        [{**keep, "limit": 10.5, "priority": "low"}, {**moved, "tag": "x"}]
    )
    cleared = engine.reload(new_rules, 5 * S)
    assert [(c.rule, c.active, c.ts_ns) for c in cleared] == [
        ("moved", False, 5 * S), ("gone", False, 5 * S)
    ]  # fmt: skip
    # "keep" is still raised: no second activation; "moved" (new selector) starts fresh
    again = engine.observe(message({"x": 11, "y": 11}), 6 * S)
    assert [(c.rule, c.active) for c in again] == [("moved", True)]
    (clear,) = [c for c in engine.observe(message({"x": 1}), 7 * S) if c.rule == "keep"]
    assert (clear.active, clear.priority, clear.limit) == (False, "low", 10.5)


def test_reload_keeps_a_running_delay():
    rule = {"name": "r", "type": "high", "tag": "x", "limit": 10, "on_delay_s": 10}
    engine = RuleEngine(RuleSet.model_validate([rule]))
    engine.observe(message({"x": 11}), 0)
    assert engine.reload(RuleSet.model_validate([{**rule, "priority": "low"}]), 5 * S) == []
    assert [c.active for c in engine.tick(10 * S)] == [True]


def test_shipped_rule_sets_raise_on_their_scenarios():
    folder = Path(__file__).resolve().parent.parent / "config" / "alarm-rules"
    rig = RuleEngine(load_rules(folder / "rig.yaml"))
    calm = {"h2s": 0.0, "pit_gain": 0.0, "standpipe_pressure": 170.0, "flow_in": 4000.0,
            "rig_state": 0, "hook_load": 100.0, "rated_hook_load": 300.0}  # fmt: skip
    raised = []
    for t in range(0, 400, 10):
        values = dict(calm)
        if t >= 100:  # a kick and a gas release
            values |= {"pit_gain": (t - 100) / 100, "h2s": min(35.0, (t - 100) / 4)}
        changes = rig.observe(message(values, kind="rig"), t * S) + rig.tick(t * S)
        raised += sorted((c.rule, t) for c in changes if c.active)
    assert raised == [
        ("rig_h2s_low", 140), ("rig_h2s_stel", 160), ("rig_h2s_high", 180),
        ("rig_pit_gain_high", 190), ("rig_kick", 200),
    ]  # fmt: skip


def _status(state: DeviceState) -> DeviceStatus:
    return DeviceStatus(site="s1", asset="a1", device="plc", agent="gw", state=state, ts_ns=1)


def test_a_device_reported_down_before_its_first_telemetry_raises_offline():
    engine = RuleEngine(rules_of({"type": "device_offline", "after_s": 0, "kind": "crane"}))
    assert engine.observe_device(_status(DeviceState.DOWN), 0) == []  # kind not known yet
    (offline,) = engine.observe(message({"x": ("bad", 0)}), 1 * S)
    assert (offline.rule, offline.active) == ("r0", True)


def _restored(rules: RuleSet) -> RuleEngine:
    engine = RuleEngine(rules)
    engine.restore({("r0", "s1", "a1", "plc"): False})
    return engine


def test_a_restored_offline_alarm_clears_when_the_first_status_says_up():
    engine = _restored(rules_of({"type": "device_offline", "after_s": 0, "kind": "crane"}))
    engine.observe(message({"x": 1.0}), 0)  # binds the restored condition
    (back,) = engine.observe_device(_status(DeviceState.UP), 1 * S)
    assert (back.rule, back.active, back.suppressed) == ("r0", False, False)


def test_a_restored_stale_alarm_holds_until_a_good_reading():
    engine = _restored(rules_of({"type": "stale", "tag": "x", "after_s": 30}))
    assert engine.observe(message({"x": ("bad", 0)}), 0) == []
    assert engine.tick(10 * S) == []  # still stale: no good reading since the restart
    (fresh,) = engine.observe(message({"x": 1.0}), 11 * S)
    assert not fresh.active


def test_a_restored_rate_of_change_alarm_holds_for_a_full_window():
    rule = {"type": "rate_of_change", "tag": "x", "window_s": 60, "rise": 1.0}
    engine = _restored(rules_of({**rule, "on_delay_s": 0, "off_delay_s": 0}))
    assert engine.observe(message({"x": 5.0}), 0) == []  # an empty window proves nothing
    assert engine.observe(message({"x": 5.0}), 59 * S) == []
    (ended,) = engine.observe(message({"x": 5.0}), 61 * S)
    assert not ended.active


def test_live_telemetry_proves_an_agent_online_despite_a_late_last_will():
    engine = RuleEngine(rules_of({"type": "agent_offline", "site": "s1", "after_s": 5}))
    engine.observe(message({"x": 1}), 0)
    assert engine.observe_agent(AgentStatus(agent="gw", state="offline"), 1 * S) == []
    assert engine.observe(message({"x": 1}), 2 * S) == []  # the will was stale
    assert engine.tick(10 * S) == []
