"""Sparkplug B codec (derrick.wire.sparkplug): topics, births, the hand-written data
encoder checked against Google's protobuf parser, and the host's reading of it all."""

from __future__ import annotations

import math

import pytest

from derrick.wire import sparkplug as sp
from derrick.wire import sparkplug_b_pb2 as pb
from derrick.wire.payloads import Quality, Reading
from derrick.wire.topics import TopicError

T0 = 1_764_800_000_123_000_000  # ns, a whole millisecond
MS = 1_000_000

SPECS = [
    sp.MetricSpec("hook_load", 1, sp.MetricType.FLOAT, "t"),
    sp.MetricSpec("boom_angle", 2, sp.MetricType.DOUBLE, "deg"),
    sp.MetricSpec("overload", 3, sp.MetricType.BOOLEAN),
    sp.MetricSpec("slew_pos", 4, sp.MetricType.INT16, "deg"),
    sp.MetricSpec("wind", 5, sp.MetricType.UINT16, "m/s"),
    sp.MetricSpec("hours", 6, sp.MetricType.UINT32, "h"),
    sp.MetricSpec("torque", 7, sp.MetricType.INT32, "Nm"),
    sp.MetricSpec("energy", 8, sp.MetricType.INT64, "Wh"),
    sp.MetricSpec("lifts", 300, sp.MetricType.UINT64),
    sp.MetricSpec("model", 9, sp.MetricType.STRING),
]
VALUES: dict[str, object] = {
    "hook_load": 12.5,  # exact in float32
    "boom_angle": 43.4,
    "overload": True,
    "slew_pos": -5,
    "wind": 65535,
    "hours": 4_000_000_000,
    "torque": -2_000_000_000,
    "energy": -(2**62),
    "lifts": 2**64 - 1,
    "model": "LTM 1300 ✓",
}


def reading(tag: str, value: object, quality: Quality = Quality.GOOD, ts: int = T0) -> Reading:
    return Reading(tag=tag, value=value, quality=quality, ts_ns=ts)  # type: ignore[arg-type]


def parsed(payload: bytes) -> pb.Payload:
    message = pb.Payload()
    message.ParseFromString(payload)
    return message


def test_topics_are_built_and_parsed_both_ways() -> None:
    topic = sp.sparkplug_topic("rig7", sp.MessageType.DDATA, "gw-1", "plc-a")
    assert topic == "spBv1.0/rig7/DDATA/gw-1/plc-a"
    assert sp.parse_sparkplug_topic(topic) == sp.SparkplugTopic(
        "rig7", sp.MessageType.DDATA, "gw-1", "plc-a"
    )
    assert str(sp.parse_sparkplug_topic("spBv1.0/rig7/NBIRTH/gw-1")) == "spBv1.0/rig7/NBIRTH/gw-1"
    assert sp.parse_sparkplug_topic("spBv1.0/STATE/host-a") == sp.HostStateTopic("host-a")


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("derrick/v1/a/b/c/telemetry", "does not start with spBv1.0"),
        ("spBv1.0/g/DDATA/n", "DDATA takes a device level"),
        ("spBv1.0/g/NBIRTH/n/d", "NBIRTH takes no device level"),
        ("spBv1.0/g/DWRITE/n/d", "unknown message type 'DWRITE'"),
        ("spBv1.0/g//n/d", "level 3 is empty"),
        ("spBv1.0/g/DDATA/n/d/x", "6 levels"),
    ],
)
def test_a_topic_outside_the_namespace_is_refused_saying_why(topic: str, why: str) -> None:
    with pytest.raises(TopicError, match=why):
        sp.parse_sparkplug_topic(topic)


def test_every_type_encoded_by_hand_reads_back_through_protobuf() -> None:
    encoder = sp.DataEncoder(SPECS)
    payload = encoder.encode([reading(tag, value) for tag, value in VALUES.items()])
    assert payload is not None
    message = parsed(payload)
    assert message.timestamp == T0 // MS
    assert not message.HasField("seq")
    by_alias = {metric.alias: metric for metric in message.metrics}
    assert set(by_alias) == {spec.alias for spec in SPECS}
    for spec in SPECS:
        metric = by_alias[spec.alias]
        assert not metric.name  # data messages use aliases only
        assert metric.timestamp == T0 // MS  # every data metric has its own (the spec)
        assert not metric.HasField("properties")  # good: no Quality property
        assert sp.metric_value(metric, spec.type) == VALUES[spec.name], spec.name


def test_compact_data_stamps_the_whole_poll_with_the_messages_time():
    """compact: no metric timestamp; a reading read 4 ms into the poll takes the poll's
    time (the message's), as the host reads it."""
    readings = [reading("hook_load", 1.5), reading("wind", 3, ts=T0 + 4 * MS)]
    full = sp.DataEncoder(SPECS).encode(readings)
    compact = sp.DataEncoder(SPECS, compact=True).encode(readings)
    assert full is not None
    assert compact is not None
    assert parsed(compact).timestamp == T0 // MS
    assert not any(metric.HasField("timestamp") for metric in parsed(compact).metrics)
    assert len(full) - len(compact) == 14  # two metric timestamps of 2026: 7 bytes each
    table = sp.DeviceTable.from_birth(
        parsed(sp.encode_device_birth(SPECS, {}, T0, asset="a", kind="k")), "d"
    )
    from_full = table.readings(parsed(full))[0]
    from_compact = table.readings(parsed(compact))[0]
    assert from_compact[0] == from_full[0]
    assert [r.ts_ns for r in from_compact] == [T0 // MS * MS] * 2
    assert [(r.tag, r.value) for r in from_compact] == [(r.tag, r.value) for r in from_full]


def test_the_host_reads_what_the_agent_wrote_reading_for_reading() -> None:
    birth = sp.encode_device_birth(SPECS, {}, T0, asset="crane-1", kind="crane")
    table = sp.DeviceTable.from_birth(parsed(birth), "plc-a")
    assert (table.asset, table.kind) == ("crane-1", "crane")
    assert table.by_alias[1] == SPECS[0]
    sent = [
        reading(tag, value, ts=T0 + i * 3 * MS) for i, (tag, value) in enumerate(VALUES.items())
    ]
    sent[2] = reading("overload", None, Quality.BAD, T0 + 6 * MS)
    sent[3] = reading("slew_pos", 7, Quality.STALE, T0 + 9 * MS)
    payload = sp.DataEncoder(SPECS).encode(sent)
    assert payload is not None
    got, unknown = table.readings(parsed(payload))
    assert unknown == []
    units = {spec.name: spec.unit for spec in SPECS}
    assert [(r.tag, r.value, r.unit, r.quality, r.ts_ns) for r in got] == [
        (r.tag, r.value, units[r.tag], r.quality, r.ts_ns) for r in sent
    ]


def test_a_birth_names_every_metric_with_alias_type_unit_and_last_value() -> None:
    last = {"hook_load": reading("hook_load", 3.25, ts=T0 - 500 * MS)}
    message = parsed(sp.encode_device_birth(SPECS[:2], last, T0, asset="a", kind="crane"))
    hook, boom, asset, kind = message.metrics
    assert (hook.name, hook.alias, hook.datatype, hook.float_value) == ("hook_load", 1, 9, 3.25)
    assert hook.timestamp == (T0 - 500 * MS) // MS
    assert sp.metric_properties(hook) == {"engUnit": "t", "Quality": 192}
    assert boom.is_null
    assert sp.metric_properties(boom)["Quality"] == 0  # never read yet
    assert (asset.name, asset.string_value, kind.string_value) == ("Properties/asset", "a", "crane")
    assert asset.timestamp == kind.timestamp == T0 // MS  # every birth metric has one
    assert not asset.HasField("alias")
    aliased = parsed(
        sp.encode_device_birth(SPECS[:1], last, T0, asset="a", kind="c", property_aliases=(7, 8))
    )
    assert [m.alias for m in aliased.metrics] == [1, 7, 8]


def test_quality_is_sent_when_not_good_and_once_more_when_good_again() -> None:
    encoder = sp.DataEncoder(SPECS[:1])

    def props(value: object, quality: Quality) -> dict[str, int | str]:
        payload = encoder.encode([reading("hook_load", value, quality)])
        assert payload is not None
        return sp.metric_properties(parsed(payload).metrics[0])

    assert props(1.0, Quality.GOOD) == {}
    assert props(None, Quality.BAD) == {"Quality": 0}
    assert props(2.0, Quality.STALE) == {"Quality": 500}
    assert props(3.0, Quality.GOOD) == {"Quality": 192}
    assert props(4.0, Quality.GOOD) == {}


def test_a_value_its_metric_type_cannot_hold_goes_as_null_and_bad() -> None:
    encoder = sp.DataEncoder([sp.MetricSpec("x", 1, sp.MetricType.FLOAT)])
    payload = encoder.encode([reading("x", "not a number")])
    assert payload is not None
    metric = parsed(payload).metrics[0]
    assert metric.is_null
    assert sp.metric_properties(metric) == {"Quality": 0}


def test_readings_of_tags_without_a_metric_are_left_out() -> None:
    encoder = sp.DataEncoder(SPECS[:1])
    assert encoder.encode([reading("unknown", 1.0)]) is None
    payload = encoder.encode([reading("unknown", 1.0), reading("hook_load", 1.0)])
    assert payload is not None
    assert len(parsed(payload).metrics) == 1


def test_seq_is_appended_at_send_time_and_replays_are_flagged_historical() -> None:
    payload = sp.DataEncoder(SPECS).encode([reading("hook_load", 1.5), reading("wind", 3)])
    assert payload is not None
    for seq in (0, 127, 128, 255):
        assert parsed(sp.with_seq(payload, seq)).seq == seq
    sent = parsed(sp.with_seq(payload, 3, sent_ns=T0 + 60_000 * MS))
    assert (sent.timestamp, sent.seq) == (T0 // MS + 60_000, 3)  # when it was published
    assert sent.metrics[0].timestamp == T0 // MS  # when it was read
    replay = parsed(sp.with_seq(sp.as_historical(payload), 9))
    assert replay.seq == 9
    assert [m.is_historical for m in replay.metrics] == [True, True]
    assert replay.metrics[0].float_value == 1.5


def test_node_birth_and_death_carry_the_same_bdseq() -> None:
    birth = parsed(sp.encode_node_birth(7, T0))
    assert birth.seq == 0
    assert sp.node_bdseq(birth) == 7
    assert any(m.name == sp.REBIRTH and not m.boolean_value for m in birth.metrics)
    death = parsed(sp.encode_node_death(7, T0))
    assert sp.node_bdseq(death) == 7
    assert not death.HasField("seq")


def test_a_rebirth_request_is_recognised_and_nothing_else_is() -> None:
    assert sp.rebirth_requested(parsed(sp.encode_rebirth_request(T0)))
    write = pb.Payload()
    write.metrics.add(name="hook_load", datatype=9, float_value=0.0)
    assert not sp.rebirth_requested(write)


def test_an_unknown_alias_is_reported_for_a_rebirth() -> None:
    table = sp.DeviceTable.from_birth(
        parsed(sp.encode_device_birth(SPECS[:1], {}, T0, asset="a", kind="k")), "d"
    )
    payload = sp.DataEncoder(SPECS[:2]).encode(
        [reading("hook_load", 1.0), reading("boom_angle", 2.0)]
    )
    assert payload is not None
    got, unknown = table.readings(parsed(payload))
    assert [r.tag for r in got] == ["hook_load"]
    assert unknown == [2]


def test_a_third_party_device_without_derrick_properties_is_its_own_asset() -> None:
    birth = pb.Payload(timestamp=T0 // MS)
    birth.metrics.add(name="Temperature", alias=4, datatype=10, double_value=21.5, timestamp=5)
    table = sp.DeviceTable.from_birth(birth, "sensor-9")
    assert (table.asset, table.kind) == ("sensor-9", "sparkplug")
    got, _ = table.readings(birth)
    assert [(r.tag, r.value, r.ts_ns) for r in got] == [("Temperature", 21.5, 5 * MS)]


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(sp.SparkplugError, match="not a Sparkplug B payload"):
        sp.decode_payload(b"\xff\xff\xff")
    with pytest.raises(sp.SparkplugError, match="STATE"):
        sp.parse_host_state(b'{"online": "yes", "timestamp": 1}')


def test_host_state_is_the_spec_json() -> None:
    assert sp.parse_host_state(sp.host_state_payload(True, T0)) == (True, T0 // MS)


def test_float32_values_reach_the_host_bit_for_bit() -> None:
    encoder = sp.DataEncoder(SPECS[:1])
    value = 43.400001525878906  # a float32 register's value as the agent decodes it
    payload = encoder.encode([reading("hook_load", value)])
    assert payload is not None
    got = parsed(payload).metrics[0].float_value
    assert got == value
    assert math.isclose(got, 43.4, rel_tol=1e-7)
