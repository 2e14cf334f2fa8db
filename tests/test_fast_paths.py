"""The collector's hot paths give what the models give (issue 16).

``parse_telemetry_rows`` reads the common telemetry payload without pydantic, and
``read_telemetry`` / ``check_rows`` / ``encode_telemetry`` carry readings as tuples;
``DeviceTable.rows`` reads Sparkplug metrics with few protobuf calls. Each is held to
its slow path here: the same acceptance, values of the same types, the same rejections
with the same reasons, the same field types learned, the same lines.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from collector.fieldtypes import FLOAT, STRING, FieldTypes
from collector.lineproto import encode_telemetry
from collector.validate import (
    DEFAULT_WINDOW,
    MAX_PAYLOAD_BYTES,
    Rejected,
    check_readings,
    check_rows,
    read_telemetry,
    validate_telemetry,
)
from derrick.wire import sparkplug as sp
from derrick.wire import sparkplug_b_pb2 as pb
from derrick.wire.payloads import (
    Quality,
    Telemetry,
    TelemetryRows,
    parse_telemetry_rows,
    trusted_reading,
)
from derrick.wire.topics import TelemetryTopic

TS = 1_795_000_000_000_000_000
TOPIC = TelemetryTopic("s1", "crane-01", "lmi")


def reading(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "tag": "hook_load",
        "value": 12.5,
        "unit": "t",
        "quality": "good",
        "ts_ns": TS,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not _DROP}


_DROP = object()


def message(readings: list[object] | None = None, **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "v": 1,
        "historical": False,
        "site": "s1",
        "asset": "crane-01",
        "device": "lmi",
        "kind": "crane",
        "agent": "gw-1",
        "boot": "b00t",
        "seq": 7,
        "readings": [reading()] if readings is None else readings,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not _DROP}


def encoded(data: object) -> bytes:
    return json.dumps(data).encode()


def typed(rows: TelemetryRows) -> list[tuple[object, ...]]:
    """Rows with each value's type: ``1 == 1.0 == True`` in a tuple comparison."""
    return [(*row, type(row[1])) for row in rows.rows]


def same_as_model(payload: bytes) -> TelemetryRows | None:
    """The fast parse, held to the model: what it accepts the model accepts, with the
    same values of the same types."""
    fast = parse_telemetry_rows(payload)
    try:
        model = Telemetry.model_validate_json(payload)
    except ValidationError:
        assert fast is None, "the fast path accepted what the model refuses"
        return None
    if fast is not None:
        slow = TelemetryRows.of(model)
        assert fast == slow
        assert typed(fast) == typed(slow)
        assert type(fast.seq) is type(slow.seq)
        assert fast.telemetry() == model
    return fast


COMMON = {
    "every field": encoded(message()),
    "defaults left out": encoded(
        message([reading(unit=_DROP, quality=_DROP)], v=_DROP, historical=_DROP)
    ),
    "only unit left out": encoded(message([reading(unit=_DROP)])),
    "fields in another order": encoded(
        {"readings": [{"ts_ns": TS, "value": 1.5, "tag": "a"}], **message(readings=[])}
        | {"readings": [{"ts_ns": TS, "value": 1.5, "tag": "a"}]}
    ),
    "bool, int, str, null, float": encoded(
        message(
            [
                reading(tag="a", value=True),
                reading(tag="b", value=7),
                reading(tag="c", value="open"),
                reading(tag="d", value=None, quality="bad"),
                reading(tag="e", value=-0.0),
                reading(tag="f", value=2**64 - 1),
                reading(tag="g", value=-(2**63)),
                reading(tag="h", value=1e308, quality="stale"),
                reading(tag="i", value=5e-324, quality="uncertain"),
            ]
        )
    ),
    "historical": encoded(message(historical=True)),
    "whitespace": b' { "site":"s1", "asset":"crane-01","device":"lmi","kind":"crane",'
    b'"agent":"gw-1","boot":"b","seq":0,\n"readings":[{"tag":"x","value":1,"ts_ns":5}]}\t',
    "duplicate keys, last wins": b'{"site":"zz","site":"s1","asset":"crane-01","device":"lmi",'
    b'"kind":"crane","agent":"gw-1","boot":"b","seq":1,"readings":[{"tag":"x","value":"s",'
    b'"value":2.5,"ts_ns":5}]}',
    "escaped names": encoded(message(site="s1")).replace(b'"s1"', b'"\\u0073\\u0031"'),
    "exponent": encoded(message()).replace(b"12.5", b"1.25E1"),
    "longest unit and boot": encoded(message([reading(unit="u" * 16)], boot="b" * 64)),
}

ODD = {
    "NaN": encoded(message()).replace(b"12.5", b"NaN"),
    "Infinity": encoded(message()).replace(b"12.5", b"-Infinity"),
    "overflowing float": encoded(message()).replace(b"12.5", b"1e400"),
    "big int that is a float": encoded(message()).replace(b"12.5", b"123456789012345678901234"),
    "int beyond uint64": encoded(message([reading(value=2**64)])),
    "int below int64": encoded(message([reading(value=-(2**63) - 1)])),
    "long string": encoded(message([reading(value="x" * 1025)])),
    "string of 1024": encoded(message([reading(value="x" * 1024)])),
    "non-ASCII string": encoded(message([reading(value="Ω ✓", unit="°C")])),
    "lone surrogate": encoded(message([reading(value="\ud800")])),
    "not UTF-8": encoded(message([reading(value="ab")])).replace(b"ab", b"a\xffb"),
    "BOM": b"\xef\xbb\xbf" + encoded(message()),
    "not JSON": b'{"site": ',
    "trailing text": encoded(message()) + b" x",
    "a list": b"[1, 2]",
    "deep nesting": b"[" * 5000 + b"]" * 5000,
    "value a list": encoded(message([reading(value=[1])])),
    "value an object": encoded(message([reading(value={"int": 1})])),
    "no value": encoded(message([reading(value=_DROP)])),
    "no ts_ns": encoded(message([reading(ts_ns=_DROP)])),
    "no tag": encoded(message([reading(tag=_DROP)])),
    "no site": encoded(message(site=_DROP)),
    "no readings": encoded(message(readings=_DROP)),
    "empty readings": encoded(message(readings=[])),
    "extra field": encoded(message(extra=1)),
    "extra reading field": encoded(message([reading(note="x")])),
    "extra reading field, four keys": encoded(
        message([reading(unit=_DROP, quality=_DROP, note="x")])
    ),
    "ts_ns a float": encoded(message([reading(ts_ns=1.0 * TS)])),
    "ts_ns a string": encoded(message([reading(ts_ns=str(TS))])),
    "ts_ns a bool": encoded(message([reading(ts_ns=True)])),
    "ts_ns negative": encoded(message([reading(ts_ns=-1)])),
    "ts_ns beyond int64": encoded(message([reading(ts_ns=2**63)])),
    "seq a bool": encoded(message(seq=True)),
    "seq negative": encoded(message(seq=-1)),
    "seq a float": encoded(message(seq=1.0)),
    "v 2": encoded(message(v=2)),
    "v true": encoded(message(v=True)),
    "v a float": encoded(message(v=1.0)),
    "historical 1": encoded(message(historical=1)),
    "tag not a name": encoded(message([reading(tag="hook load")])),
    "tag too long": encoded(message([reading(tag="t" * 65)])),
    "tag with a newline": encoded(message([reading(tag="t\n")])),
    "tag a list": encoded(message([reading(tag=["t"])])),
    "tag a number": encoded(message([reading(tag=5)])),
    "site a list": encoded(message(site=["s1"])),
    "site not a name": encoded(message(site="s 1")),
    "quality unknown": encoded(message([reading(quality="fine")])),
    "quality a number": encoded(message([reading(quality=192)])),
    "quality a list": encoded(message([reading(quality=["good"])])),
    "quality unknown, four keys": encoded(message([reading(unit=_DROP, quality="fine")])),
    "quality a list, four keys": encoded(message([reading(unit=_DROP, quality=[])])),
    "unit too long": encoded(message([reading(unit="u" * 17)])),
    "unit a number": encoded(message([reading(unit=5)])),
    "unit null": encoded(message([reading(unit=None)])),
    "unit empty": encoded(message([reading(unit="")])),
    "boot empty": encoded(message(boot="")),
    "boot too long": encoded(message(boot="b" * 65)),
    "boot a number": encoded(message(boot=5)),
    "reading a list": encoded(message([[1, 2]])),
    "reading a string": encoded(message(["x"])),
    "readings an object": encoded(message(readings={"a": 1})),
}


@pytest.mark.parametrize("name", COMMON)
def test_the_common_shapes_take_the_fast_path_with_the_models_values(name: str) -> None:
    assert same_as_model(COMMON[name]) is not None


@pytest.mark.parametrize("name", ODD)
def test_anything_else_is_left_to_the_model(name: str) -> None:
    same_as_model(ODD[name])


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.booleans(),
        st.none(),
        st.text(max_size=20),
    )
)
def test_any_value_reads_as_the_model_reads_it(value: object) -> None:
    payload = encoded(message([reading(value=value, quality="bad" if value is None else "good")]))
    same_as_model(payload)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["e", "E"]))
def test_number_texts_parse_to_the_same_float(value: float, mark: str) -> None:
    text = repr(value).replace("e", mark)
    same_as_model(encoded(message()).replace(b"12.5", text.encode()))


# -- read_telemetry: the verdict of validate_telemetry --------------------------------


def both(payload: bytes, seeded: dict[str, str] | None = None) -> TelemetryRows | Rejected:
    """read_telemetry and validate_telemetry on fresh field types seeded alike: the
    same verdict, the same reason, the same fields learned."""
    fast_fields, slow_fields = FieldTypes(), FieldTypes()
    for field, kind in (seeded or {}).items():
        fast_fields.learn(field, kind, "a test")
        slow_fields.learn(field, kind, "a test")
    window = DEFAULT_WINDOW
    fast = read_telemetry(TOPIC, payload, window, fast_fields)
    slow = validate_telemetry(TOPIC, payload, window, slow_fields)
    if isinstance(slow, Rejected):
        assert fast == slow
    else:
        assert isinstance(fast, TelemetryRows)
        assert typed(fast) == typed(TelemetryRows.of(slow))
        assert fast.telemetry() == slow
    assert fast_fields.types == slow_fields.types
    assert {f: fast_fields.source(f) for f in fast_fields.types} == {
        f: slow_fields.source(f) for f in slow_fields.types
    }
    return fast


@pytest.mark.parametrize("name", [*COMMON, *ODD])
def test_read_telemetry_gives_validate_telemetrys_verdict(name: str) -> None:
    payload = {**COMMON, **ODD}[name]
    both(payload)


CHECKS = {
    "a second ago": encoded(message()),
    "before 2000": encoded(message([reading(ts_ns=TS // 10**9)])),
    "in 2100": encoded(message([reading(ts_ns=4_102_444_800_000_000_000)])),
    "good without a value": encoded(message([reading(value=None)])),
    "bad without a value": encoded(message([reading(value=None, quality="bad")])),
    "stale with a value": encoded(message([reading(quality="stale")])),
    "one tag twice": encoded(message([reading(), reading(value=3.5)])),
    "one tag twice at two times": encoded(message([reading(), reading(ts_ns=TS + 1)])),
    "a tag and its quality mark": encoded(
        message([reading(tag="x", quality="bad"), reading(tag="x_q", value="bad")])
    ),
    "other site in the payload": encoded(message(site="s2")),
    "other device in the payload": encoded(message(device="hoist")),
    "oversized": encoded(message([reading(value="x" * 1000)] * 1001)),
}


@pytest.mark.parametrize("name", CHECKS)
def test_window_values_duplicates_and_topic_are_judged_alike(name: str) -> None:
    both(CHECKS[name])


@pytest.mark.parametrize(
    ("value", "held"),
    [(12.5, STRING), ("open", FLOAT), (True, FLOAT), (7, STRING), (12.5, "integer")],
)
def test_a_field_type_conflict_is_rejected_alike(value: object, held: str) -> None:
    verdict = both(encoded(message([reading(value=value)])), {"hook_load": held})
    assert isinstance(verdict, Rejected)
    assert verdict.kind == "type"


def test_new_fields_are_learned_alike_and_known_ones_pass() -> None:
    payload = encoded(message([reading(tag="a", value="x"), reading(tag="b", quality="bad")]))
    assert isinstance(both(payload), TelemetryRows)
    assert isinstance(both(payload, {"a": STRING, "b": FLOAT, "b_q": STRING}), TelemetryRows)


def test_the_oversized_check_comes_before_parsing() -> None:
    payload = b" " * (MAX_PAYLOAD_BYTES + 1)
    verdict = read_telemetry(TOPIC, payload)
    assert isinstance(verdict, Rejected)
    assert verdict.kind == "oversized"


def test_check_rows_and_check_readings_agree_on_a_model() -> None:
    model = Telemetry.model_validate_json(CHECKS["one tag twice"])
    slow = check_readings(model, DEFAULT_WINDOW, None)
    assert check_rows(TelemetryRows.of(model), DEFAULT_WINDOW, None) == slow


@pytest.mark.parametrize("name", [*COMMON, *CHECKS])
def test_lines_from_rows_are_the_lines_from_the_model(name: str) -> None:
    payload = {**COMMON, **CHECKS}[name]
    try:
        model = Telemetry.model_validate_json(payload)
    except ValidationError:
        return
    assert encode_telemetry(TelemetryRows.of(model)) == encode_telemetry(model)


# -- Sparkplug: DeviceTable.rows against the reading it replaced ----------------------


def reference_readings(table: sp.DeviceTable, message: pb.Payload) -> tuple[list, list, bool]:
    """DeviceTable.readings as it was before the rows (one protobuf call per question),
    and the host's ``any(metric.is_historical ...)``."""
    readings, unknown = [], []
    for metric in message.metrics:
        name = metric.name
        spec = table.by_name.get(name) if name else table.by_alias.get(metric.alias)
        if spec is None:
            if metric.name not in {sp.ASSET, sp.KIND}:
                unknown.append(metric.name or metric.alias)
            continue
        value = sp.metric_value(metric, spec.type)
        quality = Quality.GOOD
        if metric.HasField("properties"):
            quality = sp.quality_of(sp.metric_properties(metric).get(sp.QUALITY_PROPERTY))
        if value is None and quality is Quality.GOOD:
            quality = Quality.BAD
        ms = metric.timestamp if metric.HasField("timestamp") else message.timestamp
        readings.append(trusted_reading(spec.name, value, spec.unit, quality, ms * 1_000_000))
    return readings, unknown, any(metric.is_historical for metric in message.metrics)


SPECS = [
    sp.MetricSpec("f", 1, sp.MetricType.FLOAT, "t"),
    sp.MetricSpec("d", 2, sp.MetricType.DOUBLE, "deg"),
    sp.MetricSpec("b", 3, sp.MetricType.BOOLEAN),
    sp.MetricSpec("i16", 4, sp.MetricType.INT16),
    sp.MetricSpec("i64", 5, sp.MetricType.INT64),
    sp.MetricSpec("u64", 6, sp.MetricType.UINT64),
    sp.MetricSpec("s", 7, sp.MetricType.STRING),
    sp.MetricSpec("named", -1, sp.MetricType.DOUBLE),
]


def sparkplug_data() -> pb.Payload:
    message = pb.Payload(timestamp=1_795_000_000_000, seq=3)
    add = message.metrics.add
    add(alias=1, timestamp=1_795_000_000_001, float_value=1.1)
    add(alias=2, double_value=-0.0)  # no timestamp: the message's
    add(alias=3, timestamp=0, boolean_value=False)  # an explicit 0 is 0
    add(alias=4, int_value=2**32 - 5)  # two's complement
    add(alias=5, long_value=2**64 - 1)
    add(alias=6, long_value=2**64 - 1)
    add(alias=7, string_value="Ω")
    add(name="named", double_value=math.inf)
    add(alias=2, is_null=True, double_value=3.0)  # null wins
    add(alias=2, is_null=True)
    add(alias=1)  # no value at all
    add(alias=2, bytes_value=b"x")  # not a reading
    stale = add(alias=2, double_value=4.0, is_historical=True)
    stale.properties.keys.append(sp.QUALITY_PROPERTY)
    stale.properties.values.add(type=3, int_value=500)
    odd = add(alias=1, float_value=2.0)
    odd.properties.keys.append(sp.QUALITY_PROPERTY)
    odd.properties.values.add(type=3, int_value=17)
    null_bad = add(alias=1, is_null=True)
    null_bad.properties.keys.append(sp.QUALITY_PROPERTY)
    null_bad.properties.values.add(type=3, int_value=0)
    add(alias=99, double_value=1.0)  # unknown alias
    add(name="nobody", double_value=1.0)  # unknown name
    add(name=sp.ASSET, string_value="crane-01")
    return message


def test_sparkplug_rows_are_the_readings_they_replaced() -> None:
    table = sp.DeviceTable(
        "crane-01",
        "crane",
        {spec.alias: spec for spec in SPECS if spec.alias >= 0},
        {spec.name: spec for spec in SPECS},
    )
    message = sparkplug_data()
    rows, unknown, historical, conditions = table.rows(message)
    readings, want_unknown, want_historical = reference_readings(table, message)
    as_rows = [(r.tag, r.value, r.unit, r.quality, r.ts_ns) for r in readings]
    assert [(*row, type(row[1])) for row in rows] == [(*row, type(row[1])) for row in as_rows]
    assert str(rows) == str(as_rows)  # -0.0 and inf alike
    assert (unknown, historical) == (want_unknown, want_historical) == ([99, "nobody"], True)
    assert conditions == []
    assert table.readings(message) == (readings, unknown)


def test_a_historical_metric_the_table_does_not_read_still_marks_the_message() -> None:
    table = sp.DeviceTable("a", "k", {}, {})
    message = pb.Payload(timestamp=1)
    message.metrics.add(name=sp.ASSET, string_value="a", is_historical=True)
    assert table.rows(message) == ([], [], True, [])
