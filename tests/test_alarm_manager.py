"""Alarm manager: engine conditions through the lifecycle, persisted across restarts."""

from __future__ import annotations

from collector.alarms.engine import RuleEngine
from collector.alarms.lifecycle import Annunciate, Clear, Journal, LifecycleState, Rejected
from collector.alarms.manager import AlarmManager, Command
from collector.alarms.rules import RuleSet
from collector.alarms.state import AlarmStateStore
from derrick.contract import Reading, Telemetry

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


def test_acknowledge_is_journaled_and_persisted_and_bad_commands_rejected(tmp_path):
    mgr = manager(tmp_path)
    feed(mgr, 0, hook_load=120)
    effects = mgr.command(Command(OVERLOAD, "acknowledge", "j.smith", 5 * S, "rigging checked"))
    (journal,) = effects
    assert isinstance(journal, Journal) and journal.who == "j.smith"
    assert isinstance(mgr.command(Command(OVERLOAD, "acknowledge", "x", 6 * S)), Rejected)
    assert isinstance(mgr.command(Command("nope", "acknowledge", "x", 6 * S)), Rejected)
    assert isinstance(mgr.command(Command(OVERLOAD, "dance", "x", 6 * S)), Rejected)
    mgr.store.close()
    assert manager(tmp_path).records[OVERLOAD].state is LifecycleState.ACTIVE_ACKED


def test_shelve_expiry_re_announces_a_standing_alarm(tmp_path):
    mgr = manager(tmp_path)
    feed(mgr, 0, hook_load=120)
    shelved = mgr.command(Command(OVERLOAD, "shelve", "j.smith", 1 * S, "sensor check", 60))
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
