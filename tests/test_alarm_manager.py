"""Alarm manager: engine conditions through the lifecycle, persisted across restarts."""

from __future__ import annotations

import pytest

from collector.alarms.manager import AlarmManager, Command
from collector.alarms.state import AlarmStateStore
from derrick.alarms.engine import RuleEngine
from derrick.alarms.lifecycle import (
    AlarmRecord,
    Annunciate,
    Clear,
    Journal,
    LifecycleState,
    Rejected,
)
from derrick.alarms.rules import RuleSet
from derrick.wire.ids import AlarmId
from derrick.wire.payloads import Reading, Telemetry

S = 1_000_000_000


def rules_of(*rules: dict) -> RuleSet:
    return RuleSet.model_validate([{"name": f"r{i}", **r} for i, r in enumerate(rules)])


def message(values: dict) -> Telemetry:
    readings = [Reading(tag=tag, value=value, ts_ns=1) for tag, value in values.items()]
    return Telemetry(
        site="s1", asset="a1", device="plc", kind="crane", agent="gw", boot="b", seq=1,
        readings=readings,
    )  # fmt: skip


RULES = rules_of(
    {"type": "high", "tag": "hook_load", "limit": 100, "priority": "critical"},
    {
        "type": "high", "tag": "oil_temp", "limit": 80,
        "suppress_when": [{"tag": "power_on", "equals": False}],
    },
)  # fmt: skip
OVERLOAD = "r0:s1:a1:plc"


def manager(tmp_path) -> AlarmManager:
    return AlarmManager(RuleEngine(RULES), AlarmStateStore(tmp_path / "alarms.db"))


def feed(mgr: AlarmManager, t: float, **values) -> list:
    now = round(t * S)
    return mgr.on_conditions(mgr.engine.observe(message(values), now))


def kinds(effects) -> list[str]:
    return [type(e).__name__ for e in effects]


def test_one_overload_is_one_announcement_and_one_clear(tmp_path):
    mgr = manager(tmp_path)
    assert kinds(feed(mgr, 0, hook_load=90)) == []
    (raised,) = feed(mgr, 1, hook_load=120)
    assert isinstance(raised, Annunciate) and raised.priority == "critical"
    assert feed(mgr, 2, hook_load=130) == []  # still the same alarm
    assert kinds(feed(mgr, 3, hook_load=50)) == ["Clear"]
    assert mgr.records[OVERLOAD].state is LifecycleState.RTN_UNACKED


def test_a_restart_mid_alarm_neither_announces_again_nor_forgets(tmp_path):
    first = manager(tmp_path)
    feed(first, 0, hook_load=120)
    first.store.close()
    second = manager(tmp_path)  # a fresh engine re-detects the standing condition
    assert second.records[OVERLOAD].state is LifecycleState.ACTIVE_UNACKED
    assert feed(second, 10, hook_load=125) == []
    (cleared,) = feed(second, 11, hook_load=20)
    assert isinstance(cleared, Clear) and cleared.alarm_id == OVERLOAD


def test_an_alarm_that_ended_while_the_collector_was_down_clears_on_the_first_reading(tmp_path):
    first = manager(tmp_path)
    feed(first, 0, hook_load=120)
    first.store.close()
    second = manager(tmp_path)
    (cleared,) = feed(second, 10, hook_load=20)  # never seen high by this engine
    assert isinstance(cleared, Clear) and cleared.alarm_id == OVERLOAD
    assert second.records[OVERLOAD].state is LifecycleState.RTN_UNACKED
    second.store.close()


def test_a_stored_record_with_a_malformed_id_is_kept_but_restores_no_condition(tmp_path):
    first = manager(tmp_path)
    feed(first, 0, hook_load=120)
    (overload,) = first.records.values()
    odd = AlarmRecord.from_dict({**overload.to_dict(), "alarm_id": "r0:s1:a1"})
    first.store.save([odd])
    first.store.close()
    second = manager(tmp_path)
    assert set(second.records) == {OVERLOAD, "r0:s1:a1"}
    (cleared,) = feed(second, 10, hook_load=20)  # the well-formed one was restored
    assert isinstance(cleared, Clear) and cleared.alarm_id == OVERLOAD
    assert second.records["r0:s1:a1"] == odd
    second.store.close()


def test_acknowledge_is_journaled_and_persisted_and_bad_commands_rejected(tmp_path):
    mgr = manager(tmp_path)
    feed(mgr, 0, hook_load=120)
    overload = AlarmId.parse(OVERLOAD)
    effects = mgr.command(Command(overload, "acknowledge", "j.smith", 5 * S, "rigging checked"))
    (journal,) = effects
    assert isinstance(journal, Journal) and journal.who == "j.smith"
    assert isinstance(mgr.command(Command(overload, "acknowledge", "x", 6 * S)), Rejected)
    nope = AlarmId("nope", "s1", "a1", "plc")
    assert mgr.command(Command(nope, "acknowledge", "x", 6 * S)) == Rejected(
        "no alarm 'nope:s1:a1:plc'"
    )
    assert isinstance(mgr.command(Command(overload, "dance", "x", 6 * S)), Rejected)
    mgr.store.close()
    assert manager(tmp_path).records[OVERLOAD].state is LifecycleState.ACTIVE_ACKED


def test_shelve_expiry_re_announces_a_standing_alarm(tmp_path):
    mgr = manager(tmp_path)
    feed(mgr, 0, hook_load=120)
    shelved = mgr.command(
        Command(AlarmId.parse(OVERLOAD), "shelve", "j.smith", 1 * S, "sensor check", 60)
    )
    assert kinds(shelved) == ["Journal"]
    assert mgr.tick(30 * S) == []
    (again,) = mgr.tick(61 * S)
    assert isinstance(again, Annunciate) and again.reason == "shelve_expired"


def test_suppressed_by_machine_state_then_announced_when_it_ends(tmp_path):
    mgr = manager(tmp_path)
    assert feed(mgr, 0, oil_temp=95, power_on=False) == []  # power off: suppressed
    record = mgr.records["r1:s1:a1:plc"]
    assert record.state is LifecycleState.SUPPRESSED_BY_DESIGN and record.active
    (raised,) = feed(mgr, 1, oil_temp=95, power_on=True)
    assert isinstance(raised, Annunciate)


# --- suppression ending with the condition cleared, or not (issue 13) --------------------

HOT = {
    "type": "high", "tag": "oil_temp", "limit": 80,
    "suppress_when": [{"tag": "power_on", "equals": False}],
}  # fmt: skip
HOT_ID = "r0:s1:a1:plc"
# Where the alarm stands when the power goes off: name -> (latched, steps at t = 0, 1...):
# a dict is a reading with the power on, a string an operator command.
BEFORE_POWER_OFF = {
    "normal": (False, [{"oil_temp": 60}]),
    "unacked": (False, [{"oil_temp": 90}]),
    "acked": (False, [{"oil_temp": 90}, "acknowledge"]),
    "latched": (True, [{"oil_temp": 90}, {"oil_temp": 60}]),  # owes a reset
    "shelved": (False, [{"oil_temp": 90}, "shelve"]),
    "out_of_service": (False, [{"oil_temp": 90}, "remove_from_service"]),
}
STILL_HIDDEN = {
    "shelved": LifecycleState.SHELVED,
    "out_of_service": LifecycleState.OUT_OF_SERVICE,
}


def operator(mgr: AlarmManager, action: str, t: float) -> list:
    duration_s = 3600.0 if action == "shelve" else 0.0
    hot = AlarmId.parse(HOT_ID)
    effects = mgr.command(Command(hot, action, "j.smith", round(t * S), "test", duration_s))
    assert not isinstance(effects, Rejected), effects
    return effects


def power_off_at_95(tmp_path, start: str) -> AlarmManager:
    """The alarm in ``start``, then the power off at 95 degC (suppressed), then 99 degC
    (no new condition change: the stored value stays 95)."""
    latched, steps = BEFORE_POWER_OFF[start]
    mgr = AlarmManager(
        RuleEngine(rules_of({**HOT, "latched": latched})), AlarmStateStore(tmp_path / "alarms.db")
    )
    for t, step in enumerate(steps):
        if isinstance(step, str):
            operator(mgr, step, t)
        else:
            feed(mgr, t, power_on=True, **step)
    assert feed(mgr, 10, oil_temp=95, power_on=False) == []
    assert feed(mgr, 20, oil_temp=99, power_on=False) == []
    record = mgr.records[HOT_ID]
    assert (record.suppressed, record.active, record.value) == (True, True, 95.0)
    return mgr


@pytest.mark.parametrize("start", list(BEFORE_POWER_OFF))
def test_power_on_with_the_condition_cleared_returns_to_normal_silently(tmp_path, start):
    mgr = power_off_at_95(tmp_path, start)
    before = mgr.records[HOT_ID]
    assert feed(mgr, 30, oil_temp=60, power_on=True) == []  # suppression end + clear
    record = mgr.records[HOT_ID]
    state = STILL_HIDDEN.get(start, LifecycleState.NORMAL)
    assert (record.state, record.active, record.acked, record.value) == (state, False, True, 60.0)
    assert (record.annunciations, record.activations) == (
        before.annunciations,
        before.activations,
    )
    assert record.last_transition_ns == 30 * S
    mgr.store.close()
    assert AlarmStateStore(tmp_path / "alarms.db").load()[HOT_ID] == record  # kept


@pytest.mark.parametrize("start", list(BEFORE_POWER_OFF))
def test_power_on_with_the_condition_active_announces_its_current_value(tmp_path, start):
    mgr = power_off_at_95(tmp_path, start)
    effects = feed(mgr, 30, oil_temp=99, power_on=True)  # suppression end, still hot
    record = mgr.records[HOT_ID]
    assert (record.active, record.value, record.limit) == (True, 99.0, 80.0)
    if start in STILL_HIDDEN:
        assert (record.state, effects) == (STILL_HIDDEN[start], [])
        return
    (announced,) = effects
    assert isinstance(announced, Annunciate)
    assert (announced.reason, announced.value, announced.limit, announced.ts_ns) == (
        "unsuppressed",
        99.0,
        80.0,
        30 * S,
    )
    assert (record.state, record.acked) == (LifecycleState.ACTIVE_UNACKED, False)


@pytest.mark.parametrize(
    ("start", "state", "cleared"),
    [
        ("unacked", LifecycleState.RTN_UNACKED, True),
        ("latched", LifecycleState.LATCHED, False),  # no clear: it stands until reset
    ],
)
def test_suppression_end_then_a_clear_later_is_two_notices(tmp_path, start, state, cleared):
    mgr = power_off_at_95(tmp_path, start)
    (announced,) = feed(mgr, 30, oil_temp=99, power_on=True)
    assert isinstance(announced, Annunciate) and announced.value == 99.0
    later = feed(mgr, 40, oil_temp=60, power_on=True)
    assert [(type(e), e.value) for e in later] == ([(Clear, 60.0)] if cleared else [])
    assert mgr.records[HOT_ID].state is state


def release(mgr: AlarmManager, start: str) -> list:
    """End the hiding condition the operator set: the shelf expires, or return to service."""
    if start == "shelved":
        return mgr.tick(2 * 3600 * S)
    return operator(mgr, "return_to_service", 50)


@pytest.mark.parametrize("start", list(STILL_HIDDEN))
@pytest.mark.parametrize("hot", [True, False], ids=["still-hot", "cleared"])
def test_released_after_the_suppression_ended_shows_the_process_as_it_is(tmp_path, start, hot):
    mgr = power_off_at_95(tmp_path, start)
    assert feed(mgr, 30, oil_temp=99 if hot else 60, power_on=True) == []
    effects = release(mgr, start)
    journal = ["Journal"] if start == "out_of_service" else []
    if hot:
        assert kinds(effects) == [*journal, "Annunciate"]
        assert (effects[-1].value, effects[-1].limit) == (99.0, 80.0)
    else:
        assert kinds(effects) == journal
        assert mgr.records[HOT_ID].state is LifecycleState.NORMAL
