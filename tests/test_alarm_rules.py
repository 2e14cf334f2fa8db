"""Alarm rule model: validation errors name file, key and reason; shipped rule sets are
valid and name only tags their equipment's profile has."""

from pathlib import Path

import pytest

from derrick.alarms.rules import (
    SIGNAL_DEFAULTS,
    AgentOfflineRule,
    RuleSet,
    ThresholdRule,
    load_rules,
)
from derrick.plc.profile import load_profile
from derrick.plumbing.configfile import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "config" / "alarm-rules").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("yaml_text", "key", "reason"),
    [
        ("rules:\n  - {name: a, type: high, tag: x}\n", "rules[0] (a)", "either 'limit'"),
        (
            "rules:\n  - {name: a, type: high, tag: x, limit: 1, limit_percent: 90}\n",
            "rules[0] (a)",
            "'limit_percent' goes with 'limit_tag'",
        ),
        ("rules:\n  - {name: a, type: highest, tag: x}\n", "rules[0] (a).type", "unknown type"),
        ("rules:\n  - {name: a, tag: x}\n", "rules[0] (a).type", "missing"),
        ("rules:\n  - {name: a, type: high, limit: 1}\n", "rules[0] (a).tag", "Field required"),
        (
            "rules:\n  - {name: a, type: high, tag: x, limit: 1, deadband: lots}\n",
            "rules[0] (a).deadband",
            "give a number",
        ),
        (
            "rules:\n  - {name: a, type: low, tag: x, limit: 1, priority: urgent}\n",
            "rules[0] (a).priority",
            "'critical', 'high', 'medium' or 'low'",
        ),
        (
            "rules:\n  - {name: a, type: rate_of_change, tag: x, window_s: 60}\n",
            "rules[0] (a)",
            "either 'rise' or 'fall'",
        ),
        (
            "rules:\n  - {name: a, type: bit, tag: x, bit: 64}\n",
            "rules[0] (a).bit",
            "less than or equal to 63",
        ),
        (
            "rules:\n  - {name: a, type: stale, tag: x, after_s: 5, on_delay_s: 1}\n",
            "rules[0] (a)",
            "'after_s' is its delay",
        ),
        (
            "rules:\n  - {name: a, type: stale, tag: x, after_s: 5, depends_on_quality: true}\n",
            "rules[0] (a).depends_on_quality",
            "False",
        ),
        (
            "rules:\n  - {name: a, type: boolean, tag: x, message: '{nope}'}\n",
            "rules[0] (a).message",
            "unknown field {nope}",
        ),
        (
            "rules:\n  - {name: a, type: boolean, tag: x, suppress_when: [{tag: y}]}\n",
            "rules[0] (a).suppress_when[0] (tag y)",
            "exactly one of",
        ),
        (
            "rules:\n  - {name: a, type: boolean, tag: x, colour: red}\n",
            "rules[0] (a).colour",
            "Extra inputs are not permitted",
        ),
        (
            "rules:\n  - {name: a, type: agent_offline, asset: crane-1}\n",
            "rules[0] (a)",
            "not 'asset'",
        ),
        (
            "rules:\n  - {name: a, type: boolean, tag: x}\n  - {name: a, type: boolean, tag: y}\n",
            "rules",
            "rule names must be unique: a",
        ),
        (
            "rules:\n  - {name: hi, type: high, tag: x, limit: 10}\n"
            "  - {name: hh, type: high_high, tag: x, limit: 5}\n",
            "rules",
            "hh (high_high 5) must be above hi (high 10)",
        ),
        ("- {name: a, type: high, tag: x}\n", "[0] (a)", "either 'limit'"),
        (
            "- {name: agent_messages_lost, type: boolean, tag: x}\n",
            "[0] (agent_messages_lost).name",
            "'agent_messages_lost' is the name of a built-in alarm of the collector",
        ),
    ],
)
def test_invalid_rules_name_file_key_and_reason(tmp_path, yaml_text, key, reason):
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    assert any(k == key and reason in r for k, r in caught.value.problems), caught.value.problems
    assert str(caught.value).startswith(f"{path}: {key}")


def test_every_problem_is_reported_and_env_is_expanded(tmp_path, monkeypatch):
    path = write(
        tmp_path,
        "rules:\n  - {name: a, type: high, tag: x}\n  - {name: b, type: bit, tag: x}\n"
        "  - {name: c, type: high, tag: x, limit: '${LIMIT}'}\n",
    )
    monkeypatch.setenv("LIMIT", "not-a-number")
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    keys = [key for key, _ in caught.value.problems]
    assert keys == ["rules[0] (a)", "rules[1] (b).bit", "rules[2] (c).limit"]
    monkeypatch.setenv("LIMIT", "12.5")
    path.write_text("rules:\n  - {name: c, type: high, tag: x, limit: '${LIMIT}'}\n")
    assert load_rules(path).rules[0].limit == 12.5


def test_empty_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="file is empty"):
        load_rules(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_rules(write(tmp_path, "rules: [\n"))


@pytest.mark.parametrize(("signal", "band", "delay"), [(k, *v) for k, v in SIGNAL_DEFAULTS.items()])
def test_deadband_and_delays_default_by_signal(signal, band, delay):
    rule = ThresholdRule.model_validate(
        {"name": "r", "type": "high", "tag": "x", "limit": 200, "signal": signal}
    )
    assert rule.deadband_for(200) == pytest.approx(200 * band / 100)
    assert (rule.on_delay, rule.off_delay) == (delay, delay)
    explicit = rule.model_copy(update={"on_delay_s": 0.0, "off_delay_s": 3.0})
    assert (explicit.on_delay, explicit.off_delay) == (0.0, 3.0)


def test_the_isa_table_is_the_documented_one():
    assert SIGNAL_DEFAULTS == {
        "flow": (5.0, 15.0),
        "level": (5.0, 60.0),
        "pressure": (2.0, 15.0),
        "temperature": (1.0, 60.0),
        "other": (0.0, 0.0),
    }


def test_absolute_and_percent_deadband():
    absolute = ThresholdRule.model_validate(
        {"name": "r", "type": "high", "tag": "x", "limit": 50, "deadband": 3, "signal": "flow"}
    )
    percent = absolute.model_copy(update={"deadband": None}).model_validate(
        {"name": "r", "type": "high", "tag": "x", "limit": 50, "deadband": "2%"}
    )
    assert absolute.deadband_for(50) == 3
    assert percent.deadband_for(50) == pytest.approx(1.0)


def test_suppress_conditions_hold_as_written():
    rules = RuleSet.model_validate(
        [
            {
                "name": "r",
                "type": "low",
                "tag": "p",
                "limit": 1,
                "suppress_when": [
                    {"tag": "power_on", "equals": False},
                    {"tag": "rig_state", "in": [2, 3]},
                    {"tag": "pump1_spm", "below": 1},
                    {"tag": "t", "above": 5},
                ],
            }
        ]
    )
    eq, within, below, above = rules.rules[0].suppress_when
    assert eq.holds(False) and not eq.holds(True) and not eq.holds(None)
    assert within.holds(2) and within.holds(3) and not within.holds(1)
    assert below.holds(0.5) and not below.holds(1) and not below.holds("x")
    assert above.holds(6) and not above.holds(5)


def test_agent_offline_selects_by_agent_and_site():
    rule = RuleSet.model_validate(
        [{"name": "a", "type": "agent_offline", "agent": "gw-*", "site": "north"}]
    ).rules[0]
    assert isinstance(rule, AgentOfflineRule)
    assert rule.matches_agent("gw-1", "north")
    assert not rule.matches_agent("gw-1", "south")
    assert not rule.matches_agent("edge-1", "north")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_rule_sets_load_and_name_real_tags(path):
    rules = load_rules(path).rules
    assert rules
    profile_tags = {reg.tag for reg in load_profile(path.stem).registers}
    for rule in rules:
        if rule.type == "agent_offline":
            continue
        assert rule.kind == path.stem, rule.name
        assert rule.reads() <= profile_tags, (rule.name, rule.reads() - profile_tags)
        assert rule.description, rule.name


def test_shipped_rule_sets_cover_the_two_kinds():
    assert [p.stem for p in SHIPPED] == ["crane", "rig"]
    crane = {rule.name: rule for rule in load_rules(SHIPPED[0]).rules}
    zones = {crane[n].limit for n in ("crane_gearbox_vibration_bc", "crane_gearbox_vibration_cd")}
    assert zones == {2.8, 4.5}  # ISO 10816-3 group 2, rigid foundation
    rig = {rule.name: rule for rule in load_rules(SHIPPED[1]).rules}
    assert [rig[n].limit for n in ("rig_h2s_low", "rig_h2s_stel", "rig_h2s_high")] == [10, 15, 20]
