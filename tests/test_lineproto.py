"""Line protocol encoding of telemetry and alarm events."""

from collector.lineproto import encode_alarm, encode_telemetry
from derrick.contract import AlarmEvent, Reading, Telemetry

SERIES = "telemetry,asset=crane-01,device=lmi,kind=crane,site=yard"


def message(*readings):
    return Telemetry(
        site="yard",
        asset="crane-01",
        device="lmi",
        kind="crane",
        agent="gw",
        boot="b",
        seq=1,
        readings=list(readings),
    )


def test_readings_with_one_timestamp_share_a_line():
    lines = encode_telemetry(
        message(
            Reading(tag="hook_load", value=12.5, unit="t", ts_ns=1_700_000_000_123_456_789),
            Reading(tag="cutout", value=True, ts_ns=1_700_000_000_123_456_789),
            Reading(tag="serial", value='SN "7"\\', ts_ns=1_700_000_000_123_456_789),
        )
    )
    assert lines == [
        f'{SERIES} hook_load=12.5,cutout=true,serial="SN \\"7\\"\\\\" 1700000000123456789'
    ]


def test_integers_are_written_as_floats_so_the_field_type_never_flips():
    lines = encode_telemetry(message(Reading(tag="count", value=7, ts_ns=5)))
    assert lines == [f"{SERIES} count=7.0 5"]


def test_bad_quality_is_stored_not_dropped():
    lines = encode_telemetry(
        message(
            Reading(tag="hook_load", value=None, quality="bad", ts_ns=10),
            Reading(tag="wind_speed", value=3.0, quality="uncertain", ts_ns=11),
        )
    )
    assert lines == [
        f'{SERIES} hook_load_q="bad" 10',
        f'{SERIES} wind_speed=3.0,wind_speed_q="uncertain" 11',
    ]


def test_non_finite_numbers_become_bad_quality():
    lines = encode_telemetry(message(Reading(tag="x", value=float("nan"), ts_ns=1)))
    assert lines == [f'{SERIES} x_q="bad" 1']


def test_alarm_event_line():
    event = AlarmEvent(
        event_id="e",
        rule="crane_overload",
        site="yard",
        asset="crane-01",
        device="lmi",
        state="raised",
        priority="critical",
        message="too heavy",
        value=21.5,
        limit=20.0,
        ts_ns=99,
    )
    assert encode_alarm(event) == (
        "alarms,asset=crane-01,device=lmi,priority=critical,rule=crane_overload,site=yard "
        'state="raised",value=21.5,limit=20.0,message="too heavy" 99'
    )
