"""Collector validation: each kind of bad message is rejected, classified, with a reason
that names what is wrong (the field path for schema errors) and never quotes the payload."""

import json

import pytest

from collector.fieldtypes import FieldTypes
from collector.validate import (
    MAX_PAYLOAD_BYTES,
    REJECT_KINDS,
    Rejected,
    Window,
    epoch_ns,
    validate,
)
from derrick.wire.payloads import Reading, Telemetry
from derrick.wire.topics import telemetry_topic

TOPIC = telemetry_topic("yard", "crane-01", "lmi")
TS = epoch_ns(2026) + 7


def good_data() -> dict:
    msg = Telemetry(
        site="yard",
        asset="crane-01",
        device="lmi",
        kind="crane",
        agent="gw",
        boot="b",
        seq=3,
        readings=[Reading(tag=f"t{i}", value=1.5, ts_ns=TS) for i in range(5)],
    )
    return json.loads(msg.model_dump_json())


def payload(**changes) -> bytes:
    data = good_data()
    data.update(changes)
    return json.dumps(data).encode()


def reading(index: int, **changes) -> bytes:
    data = good_data()
    data["readings"][index].update(changes)
    return json.dumps(data).encode()


def without(*keys: str) -> bytes:
    data = good_data()
    for key in keys:
        del data[key]
    return json.dumps(data).encode()


def test_good_message_round_trips():
    result = validate(TOPIC, payload())
    assert isinstance(result, Telemetry)
    assert result.readings[0].value == 1.5
    assert result.readings[0].ts_ns == TS


CASES = [
    # (id, topic, payload, kind, fragments the reason must contain)
    ("malformed-json", TOPIC, b"{not json", "json", ["not valid JSON", "line 1 column 2"]),
    ("truncated-json", TOPIC, payload()[:-10], "json", ["not valid JSON", "EOF"]),
    ("empty", TOPIC, b"", "json", ["not valid JSON"]),
    ("not-utf8", TOPIC, b'{"site": "caf\xe9"}', "json", ["not UTF-8", "0xe9", "offset 13"]),
    ("utf16", TOPIC, "{}".encode("utf-16"), "json", ["not UTF-8", "offset 0"]),
    (
        "oversized",
        TOPIC,
        b" " * (MAX_PAYLOAD_BYTES + 1),
        "oversized",
        [f"{MAX_PAYLOAD_BYTES + 1} bytes", f"limit of {MAX_PAYLOAD_BYTES}"],
    ),
    # oversized is decided before parsing: garbage that large is "oversized", not "json"
    ("oversized-garbage", TOPIC, b"\xff" * (MAX_PAYLOAD_BYTES + 1), "oversized", ["exceeds"]),
    ("v2", TOPIC, payload(v=2), "version", ["schema version 2 is not supported", "v1"]),
    ("v-string", TOPIC, payload(v="x"), "version", ['schema version "x"', "v1"]),
    ("v-object", TOPIC, payload(v={"major": 2}), "version", ["JSON type object"]),
    # a v2 message may differ everywhere; the version is the reason, not its fields
    (
        "v2-new-shape",
        TOPIC,
        json.dumps({"v": 2, "site": "yard", "points": []}).encode(),
        "version",
        ["schema version 2"],
    ),
    (
        "value-dict",
        TOPIC,
        reading(3, value={"a": 1}),
        "schema",
        ["readings[3].value:", "valid boolean", "valid number", "valid string", "got object"],
    ),
    (
        "ts-negative",
        TOPIC,
        reading(2, ts_ns=-1),
        "schema",
        ["readings[2].ts_ns:", "greater than or equal to 0"],
    ),
    ("seq-string", TOPIC, payload(seq="three"), "schema", ["seq:", "valid integer", "string"]),
    # no coercion: a number in a string, a float for an integer, 1 for true
    ("seq-numeric-string", TOPIC, payload(seq="1"), "schema", ["seq:", "valid integer"]),
    ("seq-float", TOPIC, payload(seq=1.0), "schema", ["seq:", "valid integer", "number"]),
    ("ts-float", TOPIC, reading(0, ts_ns=float(TS)), "schema", ["readings[0].ts_ns:", "integer"]),
    ("ts-string", TOPIC, reading(0, ts_ns=str(TS)), "schema", ["readings[0].ts_ns:", "integer"]),
    ("historical-1", TOPIC, payload(historical=1), "schema", ["historical:", "boolean"]),
    ("ts-beyond-int64", TOPIC, reading(1, ts_ns=10**30), "schema", ["readings[1].ts_ns:", "less"]),
    ("seq-beyond-int64", TOPIC, payload(seq=2**63), "schema", ["seq:", "less than or equal"]),
    # a 401-digit integer: neither an int64/uint64 nor a finite float
    ("value-huge-int", TOPIC, reading(0, value=10**400), "schema", ["readings[0].value:"]),
    ("value-long-string", TOPIC, reading(0, value="x" * 2000), "schema", ["at most 1024"]),
    ("readings-empty", TOPIC, payload(readings=[]), "schema", ["at least one reading"]),
    (
        "duplicate-reading",
        TOPIC,
        payload(readings=[good_data()["readings"][0]] * 2),
        "schema",
        ["readings[1] (t0): field 't0' twice at ts_ns"],
    ),
    (
        "ts-1970",
        TOPIC,
        reading(2, ts_ns=7),
        "timestamp",
        ["readings[2].ts_ns (t2): 7 is 1970-01-01, outside 2000-01-01 .. 2100-01-01"],
    ),
    ("ts-2200", TOPIC, reading(0, ts_ns=epoch_ns(2200)), "timestamp", ["2200-01-01, outside"]),
    (
        "ts-millis",
        TOPIC,
        reading(0, ts_ns=TS // 10**6),
        "timestamp",
        ["1970-01-01", "looks like milliseconds"],
    ),
    ("good-null", TOPIC, reading(3, value=None), "value", ["readings[3] (t3): quality good"]),
    ("missing-readings", TOPIC, without("readings"), "schema", ["readings: Field required"]),
    ("readings-null", TOPIC, payload(readings=None), "schema", ["readings:", "array", "null"]),
    ("bad-quality", TOPIC, reading(0, quality="meh"), "schema", ["readings[0].quality:"]),
    ("extra-field", TOPIC, payload(extra=1), "schema", ["extra: Extra inputs are not permitted"]),
    ("extra-in-reading", TOPIC, reading(4, int=1), "schema", ["readings[4].int: Extra inputs"]),
    ("bad-site", TOPIC, payload(site="a/b"), "schema", ["site: String should match pattern"]),
    ("not-an-object", TOPIC, b"[1, 2]", "schema", ["payload: Input should be an object"]),
    (
        "several-fields",
        TOPIC,
        payload(seq="three", boot=5, kind=None),
        "schema",
        ["and 2 more fields in error"],
    ),
    (
        "topic-short",
        "derrick/v1/yard/crane-01/telemetry",
        payload(),
        "topic",
        ["not a derrick/v1 telemetry topic"],
    ),
    (
        "topic-other-version",
        "derrick/v2/yard/crane-01/lmi/telemetry",
        payload(),
        "topic",
        ["not a derrick/v1 telemetry topic"],
    ),
    ("topic-status", TOPIC.replace("telemetry", "status"), payload(), "topic", ["not a"]),
    (
        "mismatch-asset",
        telemetry_topic("yard", "crane-02", "lmi"),
        payload(),
        "mismatch",
        ["topic names yard/crane-02/lmi", "payload yard/crane-01/lmi"],
    ),
    (
        "mismatch-device",
        TOPIC,
        payload(device="anemometer"),
        "mismatch",
        ["payload yard/crane-01/anemometer"],
    ),
]


@pytest.mark.parametrize(
    ("topic", "data", "kind", "fragments"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_messages_are_rejected_with_kind_and_reason(topic, data, kind, fragments):
    result = validate(topic, data)
    assert isinstance(result, Rejected)
    assert result.kind == kind
    for fragment in fragments:
        assert fragment in result.reason


def test_every_kind_is_covered():
    assert {case[3] for case in CASES} | {"type"} == set(REJECT_KINDS)


NON_JSON_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


@pytest.mark.parametrize("spelling", NON_JSON_NUMBERS)
def test_non_finite_values_are_refused_whatever_their_quality(spelling):
    """They used to be stored as quality bad when sent as good: silently changed data."""
    for quality in ("good", "bad"):
        text = json.dumps(
            good_data()
            | {"readings": [{"tag": "t", "value": 0.5, "ts_ns": TS, "quality": quality}]}
        )
        data = text.replace("0.5", spelling).encode()
        result = validate(TOPIC, data)
        assert isinstance(result, Rejected), (spelling, quality)
        assert result.kind == "schema"
        assert "readings[0].value: Input should be" in result.reason


def test_a_bad_reading_may_carry_null_and_a_bounded_integer_is_kept_exact():
    data = good_data()
    data["readings"][0].update(value=None, quality="bad")
    data["readings"][1].update(value=2**64 - 1)
    data["readings"][2].update(value=-(2**63))
    result = validate(TOPIC, json.dumps(data).encode())
    assert isinstance(result, Telemetry)
    assert [r.value for r in result.readings[:3]] == [None, 2**64 - 1, -(2**63)]


def test_the_window_is_the_collectors_to_set():
    narrow = Window(min_ns=TS + 1, max_ns=TS + 10**9)
    result = validate(TOPIC, payload(), narrow)
    assert isinstance(result, Rejected)
    assert result.kind == "timestamp"
    assert isinstance(validate(TOPIC, payload(), Window(min_ns=TS, max_ns=TS + 1)), Telemetry)


def test_a_field_keeps_the_type_of_its_first_value():
    fields = FieldTypes()
    assert isinstance(validate(TOPIC, payload(), fields=fields), Telemetry)
    assert fields.get("t0") == "float"
    text = validate(TOPIC, reading(0, value="abc"), fields=fields)
    assert isinstance(text, Rejected)
    assert text.kind == "type"
    assert text.reason == (
        "readings[0] (t0): string value for field 't0', which holds float "
        "(learned from the first value, from yard/crane-01/lmi)"
    )
    flag = validate(TOPIC, reading(4, value=True), fields=fields)
    assert isinstance(flag, Rejected)
    assert "boolean value for field 't4', which holds float" in flag.reason
    integer = validate(TOPIC, reading(1, value=3), fields=fields)
    assert isinstance(integer, Telemetry), "integers are written as floats"


def test_a_rejected_message_teaches_no_type():
    fields = FieldTypes()
    data = good_data()
    data["readings"][0].update(value="abc")
    data["readings"][4].update(ts_ns=7)
    assert validate(TOPIC, json.dumps(data).encode(), fields=fields).kind == "timestamp"
    assert len(fields) == 0
    assert isinstance(validate(TOPIC, payload(), fields=fields), Telemetry)


def test_one_message_cannot_give_a_field_two_types():
    fields = FieldTypes()
    data = good_data()
    data["readings"][1].update(tag="t0", value="abc", ts_ns=TS + 1)
    result = validate(TOPIC, json.dumps(data).encode(), fields=fields)
    assert isinstance(result, Rejected)
    assert result.reason.endswith("which holds float (earlier in this message)")


def test_a_quality_mark_field_is_a_string_field():
    """``t0_q`` holds the quality of ``t0``; a tag of that name with a number conflicts."""
    fields = FieldTypes()
    data = good_data()
    data["readings"][0].update(value=None, quality="bad")
    assert isinstance(validate(TOPIC, json.dumps(data).encode(), fields=fields), Telemetry)
    assert fields.get("t0_q") == "string"
    clash = validate(TOPIC, reading(1, tag="t0_q"), fields=fields)
    assert isinstance(clash, Rejected)
    assert "float value for field 't0_q', which holds string" in clash.reason


def test_types_seeded_from_the_database_and_from_a_refusal():
    fields = FieldTypes()
    assert fields.seed({"t0": {"integer"}, "t1": {"float", "string"}}) == 1
    result = validate(TOPIC, payload(), fields=fields)
    assert isinstance(result, Rejected)
    assert "float value for field 't0', which holds integer (learned from influxdb" in (
        result.reason
    )
    refusal = (
        'partial write: field type conflict: input field "t1" on measurement "telemetry" '
        "is type float, already exists as type string dropped=1"
    )
    assert fields.learn_from_refusal(refusal) == ["t1"]
    assert fields.get("t1") == "string"


@pytest.mark.parametrize(
    "data",
    [
        reading(1, tag="SECRET value"),
        reading(1, value=["SECRET"]),
        reading(1, unit="SECRET" * 10),
        payload(seq="SECRET"),
        payload(v="SECRET-and-longer-than-sixteen"),
    ],
    ids=["tag", "value", "unit", "seq", "version"],
)
def test_reasons_do_not_quote_payload_values(data):
    """Reasons are logged; payloads may hold anything, so only their shape is described."""
    result = validate(TOPIC, data)
    assert isinstance(result, Rejected)
    assert "SECRET" not in result.reason
