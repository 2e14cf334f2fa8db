"""Alarm ids: one type, built and parsed in one place; a string wherever they are stored."""

import pytest

from derrick.wire.ids import AlarmId


def test_an_alarm_id_is_rule_site_asset_device_joined_by_colons():
    alarm = AlarmId("crane_overload", "demo-yard", "crane-01", "lmi")
    assert str(alarm) == "crane_overload:demo-yard:crane-01:lmi"
    assert f"{alarm}" == "crane_overload:demo-yard:crane-01:lmi"
    assert AlarmId.parse(str(alarm)) == alarm


def test_it_unpacks_and_equals_the_plain_tuple_the_engine_and_loss_alarms_use():
    alarm = AlarmId.parse("r0:s1:a1.x:plc_2")
    rule, site, asset, device = alarm
    assert (rule, site, asset, device) == ("r0", "s1", "a1.x", "plc_2")
    assert (alarm.rule, alarm.site, alarm.asset, alarm.device) == (rule, site, asset, device)
    assert alarm == ("r0", "s1", "a1.x", "plc_2")
    assert {("r0", "s1", "a1.x", "plc_2"): True}[alarm]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "r:s:a",  # too few parts
        "r:s:a:d:x",  # too many
        "r::a:d",  # an empty part
        "r:s:a:",
        "r:s:a b:d",  # not an identifier
        "r:s/x:a:d",
        "r:s:a:d\n",
        "r:s:a:ü",
        f"r:s:a:{'d' * 65}",  # identifiers are at most 64 characters
    ],
)
def test_a_malformed_id_is_a_value_error_naming_it(text):
    with pytest.raises(ValueError, match="malformed alarm id") as raised:
        AlarmId.parse(text)
    assert repr(text) in str(raised.value)


def test_the_longest_identifiers_parse():
    text = ":".join(["x" * 64] * 4)
    assert str(AlarmId.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("r:s:a:d", {"rule": "r", "site": "s", "asset": "a", "device": "d"}),
        ("r:s:a:d:x", {"rule": "r", "site": "s", "asset": "a", "device": "d:x"}),
        ("r:s", {"rule": "r", "site": "s"}),
        ("r::a:d", {"rule": "r", "asset": "a", "device": "d"}),
        ("odd", {"rule": "odd"}),
        ("", {}),
    ],
)
def test_what_can_be_read_of_any_id_for_labels(text, parts):
    assert AlarmId.parts_of(text) == parts
