"""Line protocol encoding of telemetry and alarm events."""

from collector.lineproto import (
    encode_agent_metrics,
    encode_alarm,
    encode_alarm_state,
    encode_device_status,
    encode_stats,
    encode_telemetry,
)
from derrick.wire.payloads import (
    AgentMetrics,
    AlarmNotice,
    AlarmStateMessage,
    DeviceCounters,
    DeviceStatus,
    Quality,
    QueueMetrics,
    Reading,
    Telemetry,
)

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
    """The contract refuses NaN; a reading built without validation still encodes."""
    nan = Reading.model_construct(tag="x", value=float("nan"), ts_ns=1, quality=Quality.GOOD)
    lines = encode_telemetry(message(nan))
    assert lines == [f'{SERIES} x_q="bad" 1']


def test_alarm_notice_line():
    notice = AlarmNotice(
        key="crane_overload:yard:crane-01:lmi:acknowledge:99",
        event="journal",
        alarm_id="crane_overload:yard:crane-01:lmi",
        rule="crane_overload",
        site="yard",
        asset="crane-01",
        device="lmi",
        priority="critical",
        state="active_acked",
        message='load "111 %"',
        reason="acknowledge",
        value=111.5,
        limit=110,
        who="ana",
        comment="on it",
        ts_ns=99,
    )
    assert encode_alarm(notice) == (
        "alarms,asset=crane-01,device=lmi,event=journal,priority=critical,rule=crane_overload,"
        'site=yard state="active_acked",reason="acknowledge",message="load \\"111 %\\"",'
        'value=111.5,limit=110.0,who="ana",comment="on it",'
        'notice_key="crane_overload:yard:crane-01:lmi:acknowledge:99" 99'
    )


def test_alarm_state_line():
    state = AlarmStateMessage(
        alarm_id="crane_overload:yard:crane-01:lmi",
        rule="crane_overload",
        site="yard",
        asset="crane-01",
        device="lmi",
        state="latched",
        active=False,
        acked=True,
        priority="critical",
        value=80.0,
        limit=110.0,
        message="OVERLOAD",
        ts_ns=7,
    )
    assert encode_alarm_state(state) == (
        "alarm_state,asset=crane-01,device=lmi,priority=critical,rule=crane_overload,site=yard "
        'state="latched",active=false,acked=true,value=80.0,limit=110.0,message="OVERLOAD" 7'
    )


def test_device_status_line():
    status = DeviceStatus(
        site="yard",
        asset="crane-01",
        device="lmi",
        agent="gw",
        state="down",
        reason='timed out "late"',
        ts_ns=5,
    )
    assert encode_device_status(status) == (
        'device_status,asset=crane-01,device=lmi,site=yard up=false,reason="timed out \\"late\\"" 5'
    )


def test_agent_metrics_line_counts_devices_and_skips_missing_latency():
    metrics = AgentMetrics(
        agent="gw",
        site="yard",
        boot="b",
        ts_ns=9,
        uptime_s=12.5,
        broker_connected=False,
        devices={
            "a": DeviceCounters(state="up"),
            "b": DeviceCounters(state="down"),
            "c": DeviceCounters(),
        },
        queue=QueueMetrics(depth=3, bytes=300, oldest_age_s=None, dropped_telemetry=2),
        messages_published=7,
    )
    line = encode_agent_metrics(metrics)
    assert line.startswith("agent,agent=gw,site=yard ")
    assert line.endswith(" 9")
    fields = dict(f.split("=") for f in line.split(" ")[1].split(","))
    assert fields["devices_up"] == "1.0" and fields["devices_down"] == "1.0"
    assert fields["queue_depth"] == "3.0" and fields["queue_oldest_age_s"] == "0.0"
    assert fields["broker_connected"] == "false"
    assert "publish_latency_ms_p50" not in fields


def test_collector_stats_line():
    line = encode_stats(
        "col-1", {"messages": 4, "batch_latency_ms": None, "readings_per_s": 2.5}, 7
    )
    assert line == "collector,collector=col-1 messages=4.0,readings_per_s=2.5 7"
