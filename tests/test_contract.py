"""The shared contract: fast constructors stay equal to validated models."""

import pytest

from derrick.wire.payloads import Quality, Reading, Telemetry, mark_historical, trusted_reading


@pytest.mark.parametrize("value", [1.5, 0.0, -3, True, False, "SN-0042", None])
def test_trusted_reading_equals_a_validated_one(value):
    quality = Quality.BAD if value is None else Quality.GOOD
    fast = trusted_reading("hook_load", value, "t", quality, 1_795_000_000_000_000_000)
    checked = Reading(
        tag="hook_load", value=value, unit="t", quality=quality, ts_ns=1_795_000_000_000_000_000
    )
    assert fast == checked
    assert fast.model_fields_set == checked.model_fields_set
    assert fast.model_dump_json() == checked.model_dump_json()
    message = Telemetry.model_construct(
        v=1,
        historical=False,
        site="s",
        asset="a",
        device="d",
        kind="crane",
        agent="g",
        boot="b",
        seq=0,
        readings=[fast],
    )
    assert Telemetry.model_validate_json(message.model_dump_json()).readings == [checked]


def test_mark_historical_flips_only_the_message_flag():
    message = Telemetry(
        site="s",
        asset="a",
        device="d",
        kind="crane",
        agent="g",
        boot="b",
        seq=3,
        readings=[Reading(tag="historical", value="historical:false", ts_ns=1)],
    )
    replayed = Telemetry.model_validate_json(mark_historical(message.model_dump_json().encode()))
    assert replayed.historical is True
    assert replayed.model_copy(update={"historical": False}) == message
    assert mark_historical(b'{"v":1}') == b'{"v":1}'
