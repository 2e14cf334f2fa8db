"""Lost messages become alarm conditions as soon as the loss is certain (collector.loss,
collector.sequence): pure, times passed in."""

from __future__ import annotations

from collector.loss import LossWatch
from collector.sequence import Gap, SequenceTracker
from derrick.alarms.rules import BROKER_RULE, GAP_RULE

S = 1_000_000_000


def test_the_first_drop_counter_is_a_baseline_and_a_rise_is_loss():
    watch = LossWatch(clear_after_s=60)
    assert watch.broker_counter(500, 1 * S) == [], "drops before we looked are not ours"
    assert watch.broker_counter(500, 2 * S) == []
    (change,) = watch.broker_counter(530, 3 * S)
    assert (change.rule, change.site, change.asset, change.device) == (
        BROKER_RULE,
        "derrick",
        "broker",
        "queue",
    )
    assert change.active and not change.suppressed
    assert change.value == 30.0
    assert change.priority == "high"
    assert change.message == "30 messages lost, dropped by the broker"
    (more,) = watch.broker_counter(531, 4 * S)
    assert more.value == 31.0, "one episode adds up"


def test_a_restarted_broker_is_a_new_baseline():
    watch = LossWatch()
    watch.broker_counter(500, S)
    assert watch.broker_counter(3, 2 * S) == []
    assert watch.broker_counter(5, 3 * S)[0].value == 2.0


def test_the_alarm_clears_after_a_quiet_period():
    watch = LossWatch(clear_after_s=60)
    watch.broker_counter(0, 0)
    watch.broker_counter(10, 1 * S)
    assert watch.tick(60 * S) == []
    (cleared,) = watch.tick(61 * S)
    assert not cleared.active
    assert cleared.value == 10.0
    assert cleared.message == "10 messages lost; no loss for 60 s"
    assert watch.tick(200 * S) == []


def test_restored_loss_alarms_clear_after_the_quiet_period():
    watch = LossWatch(clear_after_s=60)
    watch.restore(
        [(GAP_RULE, "agents", "gw-1", "sequence"), ("crane_overload", "y", "c", "lmi")], 100 * S
    )
    (cleared,) = watch.tick(160 * S)
    assert (cleared.rule, cleared.asset, cleared.active) == (GAP_RULE, "gw-1", False)


def test_lost_agent_messages_are_an_alarm_of_that_agent():
    watch = LossWatch()
    (change,) = watch.messages_lost("gw-1", "b7", 4, "seq 10..13, its spool empty", 5 * S)
    assert (change.rule, change.site, change.asset, change.device) == (
        GAP_RULE,
        "agents",
        "gw-1",
        "sequence",
    )
    assert change.agent == "gw-1"
    assert change.message == "4 messages lost, of agent gw-1 (boot b7, seq 10..13, its spool empty)"


def test_an_empty_agent_spool_makes_settled_holes_certain_at_once():
    tracker = SequenceTracker(grace_s=300)
    tracker.observe("gw", "b", 1, 100.0)
    tracker.observe("gw", "b", 5, 100.0)  # 2, 3, 4 missing since 100 s
    tracker.observe("gw", "b", 9, 103.0)  # 6, 7, 8 missing since 103 s
    tracker.confirm("gw", "b", now_s=104.0, settle_s=5)
    assert tracker.drain_lost() == [], "too fresh: still on their way"
    tracker.confirm("gw", "b", now_s=106.0, settle_s=5)
    assert tracker.drain_lost() == [Gap("gw", "b", 3, "seq 2..4, its spool empty")]
    assert tracker.pending == 3
    tracker.observe("gw", "b", 7, 107.0)  # a replay fills one
    tracker.confirm("gw", "b", now_s=110.0, settle_s=5)
    assert tracker.drain_lost() == [Gap("gw", "b", 2, "seq 6..8, its spool empty")]
    assert tracker.gaps == 5
    assert tracker.drain_lost() == []


def test_other_boots_and_agents_are_not_confirmed():
    tracker = SequenceTracker(grace_s=300)
    for agent, boot in (("gw", "b"), ("gw", "c"), ("other", "b")):
        tracker.observe(agent, boot, 1, 0.0)
        tracker.observe(agent, boot, 3, 0.0)
    tracker.confirm("gw", "b", now_s=100.0, settle_s=5)
    assert tracker.drain_lost() == [Gap("gw", "b", 1, "seq 2..2, its spool empty")]
    assert tracker.pending == 2
