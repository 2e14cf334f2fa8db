"""Collector validation: each kind of bad message is rejected, classified, with a reason
that names what is wrong (the field path for schema errors) and never quotes the payload."""

import json

import pytest

from collector.validate import MAX_PAYLOAD_BYTES, REJECT_KINDS, Rejected, validate
from derrick.contract import Reading, Telemetry, telemetry_topic

TOPIC = telemetry_topic("yard", "crane-01", "lmi")


def good_data() -> dict:
    msg = Telemetry(
        site="yard",
        asset="crane-01",
        device="lmi",
        kind="crane",
        agent="gw",
        boot="b",
        seq=3,
        readings=[Reading(tag=f"t{i}", value=1.5, ts_ns=7) for i in range(5)],
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
    assert result.readings[0].ts_ns == 7


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
    assert {case[3] for case in CASES} == set(REJECT_KINDS)


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
