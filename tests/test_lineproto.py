"""Line protocol encoding of every measurement, and the field types each one writes."""

import pytest

from collector.lineproto import (
    encode_agent_metrics,
    encode_alarm,
    encode_alarm_state,
    encode_device_status,
    encode_point,
    encode_stats,
    encode_telemetry,
    escape_tag,
)
from collector.stats import interval_fields
from derrick.alarms.kpi import AlarmKpis
from derrick.alarms.lifecycle import AnnounceReason, Annunciate
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
            "a": DeviceCounters(state="up", poll_overruns=2),
            "b": DeviceCounters(state="down", poll_overruns=3),
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
    assert fields["poll_overruns"] == "5.0"  # all devices' skipped polls since start
    assert fields["queue_depth"] == "3.0" and fields["queue_oldest_age_s"] == "0.0"
    assert fields["broker_connected"] == "false"
    assert "publish_latency_ms_p50" not in fields


def test_collector_stats_line():
    line = encode_stats(
        "col-1", {"messages": 4, "batch_latency_ms": None, "readings_per_s": 2.5}, 7
    )
    assert line == "collector,collector=col-1 messages=4.0,readings_per_s=2.5 7"


# --------------------------------------------------------------------------- encode_point


def test_a_point_is_written_with_sorted_tags_and_fields_typed_by_their_python_type():
    line = encode_point(
        "m",
        {"site": "yard", "asset": "crane-01", "empty": ""},
        {"f": 1.5, "i": 12, "big": 2**63 - 1, "b": True, "s": 'say "hi"', "none": None,
         "nan": float("nan"), "inf": float("inf"), "neg": -3},
        42,
    )  # fmt: skip
    assert line == (
        f'm,asset=crane-01,site=yard f=1.5,i=12i,big={2**63 - 1}i,b=true,s="say \\"hi\\"",'
        "neg=-3i 42"
    )


def test_telemetry_lines_are_the_points_of_its_readings_with_integers_as_floats():
    at = 1_700_000_000_123_456_789
    lines = encode_telemetry(
        message(
            Reading(tag="hook_load", value=12.5, ts_ns=at),
            Reading(tag="count", value=7, ts_ns=at),
            Reading(tag="cutout", value=False, ts_ns=at),
            Reading(tag="serial", value="SN 7", quality="uncertain", ts_ns=at),
        )
    )
    tags = {"site": "yard", "asset": "crane-01", "device": "lmi", "kind": "crane"}
    fields = {"hook_load": 12.5, "count": 7.0, "cutout": False, "serial": "SN 7",
              "serial_q": "uncertain"}  # fmt: skip
    assert lines == [encode_point("telemetry", tags, fields, at)]


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain", "plain"),
        ("a b", "a\\ b"),
        ("a,b", "a\\,b"),
        ("a=b", "a\\=b"),
        ("back\\slash", "back/slash"),  # InfluxDB 1.x would keep "\\\\" doubled
        ("ends\\", "ends/"),  # a trailing backslash fails the whole write on InfluxDB 1.x
        ("two\nlines\r", "two\\nlines\\r"),
        ('"quoted"', '"quoted"'),
    ],
)
def test_tag_values_are_escaped(value, escaped):
    assert escape_tag(value) == escaped


# --------------------------------------------------------------------------- field types

# The type of every field of every measurement, as InfluxDB names them. A field's type is
# fixed once stored (InfluxDB 1.x refuses another type in the same shard): changing one
# here breaks existing databases. ``collector`` fields are those of collector.stats and
# collector.main's stage gauges; telemetry fields are named after the readings' tags.
FIELD_TYPES = {
    "telemetry": {
        "hook_load": "float", "count": "float", "cutout": "boolean", "serial": "string",
        "serial_q": "string",
    },
    "device_status": {"up": "boolean", "reason": "string"},
    "agent": {
        "queue_depth": "float", "queue_bytes": "float", "queue_oldest_age_s": "float",
        "dropped_telemetry": "float", "messages_published": "float",
        "publish_latency_ms_p50": "float", "publish_latency_ms_max": "float",
        "devices_up": "float", "devices_down": "float", "uptime_s": "float",
        "broker_connected": "boolean", "poll_overruns": "float",
    },
    "collector": dict.fromkeys(
        ["messages", "acked", "readings", "readings_per_s", "lines_written", "lines_refused",
         "bad_messages", "batches", "batch_latency_ms", "queue_depth", "lines_spooled",
         "lines_replayed", "spool_dropped", "dead_letters", "messages_lost", "internal_errors",
         "poison", "seq_gaps", "seq_duplicates", "spool_depth", "spool_oldest_age_s",
         "store_busy_s", "inbox_depth", "unacked"],
        "float",
    ),
    "alarms": {
        "state": "string", "reason": "string", "message": "string", "value": "float",
        "limit": "float", "who": "string", "comment": "string", "notice_key": "string",
        "duration_s": "float",
    },
    "alarm_state": {
        "state": "string", "active": "boolean", "acked": "boolean", "value": "float",
        "limit": "float", "message": "string",
    },
    "alarm_kpi": {
        "alarms_per_window": "integer", "in_flood": "boolean", "flood_s_total": "float",
        "active": "integer", "unacked": "integer", "standing": "integer",
        "shelved": "integer", "suppressed": "integer", "out_of_service": "integer",
        "chattering": "integer",
    },
    "alarm_top": {"count": "integer", "chattering": "boolean"},
}  # fmt: skip

TS = 1_700_000_000_000_000_000


def one_line_of_every_measurement() -> list[str]:
    """One line per measurement the collector writes, each with every field it can have,
    made the way the collector makes them."""
    lines = encode_telemetry(
        message(
            Reading(tag="hook_load", value=12.5, ts_ns=TS),
            Reading(tag="count", value=7, ts_ns=TS),
            Reading(tag="cutout", value=True, ts_ns=TS),
            Reading(tag="serial", value="SN 7", quality="uncertain", ts_ns=TS),
        )
    )
    status = DeviceStatus(
        site="yard", asset="crane-01", device="lmi", agent="gw", state="up", ts_ns=TS
    )
    metrics = AgentMetrics(
        agent="gw", site="yard", boot="b", ts_ns=TS, uptime_s=12.5, broker_connected=True,
        devices={"a": DeviceCounters(state="up"), "b": DeviceCounters(state="down")},
        queue=QueueMetrics(depth=3, bytes=300, oldest_age_s=1.5, dropped_telemetry=2),
        messages_published=7, publish_latency_ms_p50=1.5, publish_latency_ms_max=9.0,
    )  # fmt: skip
    counters = {key: 10 for key in ("messages", "acked", "readings", "lines_written",
                "lines_refused", "rejected", "batches", "lines_spooled", "lines_replayed",
                "spool_dropped", "dead_letters", "messages_lost", "internal_errors", "poison",
                "seq_gaps", "seq_duplicates")} | {"write_ms": 12.5}  # fmt: skip
    before = dict.fromkeys(counters, 0)
    stats = interval_fields(counters, before, 10.0, 4, 2, 0.5)
    stats |= {"store_busy_s": 0.0, "inbox_depth": 3, "unacked": 1}  # collector.main's gauges
    notice = AlarmNotice(
        key="overload:yard:crane-01:lmi:acknowledge:1", event="journal",
        alarm_id="overload:yard:crane-01:lmi", rule="overload", site="yard", asset="crane-01",
        device="lmi", priority="critical", state="active_acked", message="load 111 %",
        reason="acknowledge", value=111, limit=110, who="ana", comment="on it", ts_ns=TS,
        ended_ns=TS + 90 * 10**9,
    )  # fmt: skip
    state = AlarmStateMessage(
        alarm_id="overload:yard:crane-01:lmi", rule="overload", site="yard", asset="crane-01",
        device="lmi", state="active_acked", active=True, acked=True, priority="critical",
        value=111, limit=110, message="load 111 %", ts_ns=TS,
    )  # fmt: skip
    kpis = AlarmKpis()
    kpis.observe(
        [
            Annunciate(alarm_id="overload:yard:crane-01:lmi", priority="critical", value=111.0,
                       limit=110.0, reason=AnnounceReason.NEW, ts_ns=TS)
        ]
    )  # fmt: skip
    points = kpis.points("col-1", TS, [])
    return [
        *lines,
        encode_device_status(status),
        encode_agent_metrics(metrics),
        encode_stats("col-1", stats, TS),
        encode_alarm(notice),
        encode_alarm_state(state),
        *(encode_point(p.measurement, p.tags, p.fields, p.ts_ns) for p in points),
    ]


def _split_unquoted(text: str, separator: str) -> list[str]:
    """``text`` split at each ``separator`` outside double quotes and not escaped."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _type_of(value: str) -> str:
    if value.startswith('"'):
        return "string"
    if value in ("true", "false"):
        return "boolean"
    if value.endswith("i"):
        int(value[:-1])
        return "integer"
    float(value)
    return "float"


def field_types(line: str) -> tuple[str, dict[str, str]]:
    """(measurement, {field key: type}) of one line, read from the text."""
    series, fields, ts = _split_unquoted(line, " ")
    assert ts.isdigit(), line
    measurement = _split_unquoted(series, ",")[0]
    pairs = (field.split("=", 1) for field in _split_unquoted(fields, ","))
    return measurement, {key: _type_of(value) for key, value in pairs}


def test_every_measurement_writes_each_field_as_its_pinned_type():
    written = dict(field_types(line) for line in one_line_of_every_measurement())
    assert written == FIELD_TYPES


@pytest.mark.integration
def test_influxdb_stores_every_measurement_with_the_pinned_field_types(influx1, influx_db):
    influx1.write(influx_db, "\n".join(one_line_of_every_measurement()))
    result = influx1.query("SHOW FIELD KEYS", db=influx_db)["results"][0]
    stored = {
        series["name"]: {key: kind for key, kind in series["values"]} for series in result["series"]
    }
    assert stored == FIELD_TYPES
