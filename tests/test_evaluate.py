"""Threshold evaluation: one alarm per excursion, deadband, quality."""

from collector.config import ThresholdRule
from collector.evaluate import Evaluator
from derrick.contract import Reading, Telemetry

RULE = ThresholdRule(
    name="crane_overload",
    kind="crane",
    tag="hook_load",
    limit_tag="safe_working_load",
    limit_percent=100,
    clear_percent=95,
    priority="critical",
)


def poll(load, swl=20.0, ts=1, quality="good", kind="crane", asset="crane-01"):
    return Telemetry(
        site="yard",
        asset=asset,
        device="lmi",
        kind=kind,
        agent="gw",
        boot="b",
        seq=ts,
        readings=[
            Reading(tag="hook_load", value=load, quality=quality, ts_ns=ts),
            Reading(tag="safe_working_load", value=swl, ts_ns=ts),
        ],
    )


def states(evaluator, loads):
    return [
        (e.state.value, e.ts_ns)
        for ts, load in enumerate(loads, 1)
        for e in evaluator.evaluate(poll(load, ts=ts))
    ]


def test_one_overload_is_one_raise_and_one_clear():
    assert states(Evaluator([RULE]), [10, 19.9, 20.5, 22, 21, 20.1, 18.9, 10]) == [
        ("raised", 3),
        ("cleared", 7),
    ]


def test_deadband_stops_chatter_around_the_limit():
    # Hovering between 95 % and 100 %+ of the limit: raised once, never cleared.
    assert states(Evaluator([RULE]), [20.1, 19.5, 20.2, 19.2, 20.3]) == [("raised", 1)]


def test_bad_quality_neither_raises_nor_clears():
    evaluator = Evaluator([RULE])
    assert evaluator.evaluate(poll(25, ts=1, quality="bad")) == []
    [raised] = evaluator.evaluate(poll(25, ts=2))
    assert evaluator.evaluate(poll(1, ts=3, quality="bad")) == []
    assert raised.message == "hook_load 25.00 above 100 % of safe_working_load (20.00)"
    assert raised.event_id == "crane_overload:yard:crane-01:lmi:2"


def test_rules_select_by_kind_and_asset_glob():
    evaluator = Evaluator([RULE.model_copy(update={"asset": "crane-0*"})])
    assert evaluator.evaluate(poll(30, kind="rig")) == []
    assert evaluator.evaluate(poll(30, asset="crane-11")) == []
    assert len(evaluator.evaluate(poll(30, asset="crane-02"))) == 1


def test_each_device_has_its_own_state():
    evaluator = Evaluator([RULE])
    assert len(evaluator.evaluate(poll(30, asset="crane-01"))) == 1
    assert len(evaluator.evaluate(poll(30, asset="crane-02"))) == 1


def test_clear_message_names_the_clear_threshold():
    evaluator = Evaluator([RULE])
    evaluator.evaluate(poll(25, ts=1))
    [cleared] = evaluator.evaluate(poll(15, ts=2))
    assert cleared.message == "hook_load 15.00 back below 95 % of the limit (19.00 of 20.00)"
    assert cleared.event_id == "crane_overload:yard:crane-01:lmi:1-clear"


def test_fixed_limit():
    rule = ThresholdRule(name="heavy", tag="hook_load", limit=50, clear_percent=90)
    assert states(Evaluator([rule]), [49, 51, 46, 44]) == [("raised", 2), ("cleared", 4)]
