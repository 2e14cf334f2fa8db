"""Collector validation: each kind of bad message is rejected with its reason."""

import json

import pytest

from collector.validate import MAX_PAYLOAD_BYTES, Rejected, validate
from derrick.contract import Reading, Telemetry, telemetry_topic

TOPIC = telemetry_topic("yard", "crane-01", "lmi")


def good_payload(**changes):
    msg = Telemetry(
        site="yard",
        asset="crane-01",
        device="lmi",
        kind="crane",
        agent="gw",
        boot="b",
        seq=3,
        readings=[Reading(tag="hook_load", value=1.5, ts_ns=7)],
    )
    data = json.loads(msg.model_dump_json())
    data.update(changes)
    return json.dumps(data).encode()


def test_good_message_round_trips():
    result = validate(TOPIC, good_payload())
    assert isinstance(result, Telemetry)
    assert result.readings[0].value == 1.5
    assert result.readings[0].ts_ns == 7


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPIC, b"{not json", "Invalid JSON"),
        (TOPIC, good_payload(seq="three"), "seq: Input should be a valid integer"),
        (TOPIC, good_payload(v=2), "v: Input should be 1"),
        (TOPIC, good_payload(extra=1), "extra: Extra inputs are not permitted"),
        (TOPIC, good_payload(site="a/b"), "site: String should match pattern"),
        ("derrick/v1/yard/crane-01/telemetry", good_payload(), "not a derrick/v1 telemetry topic"),
        (
            telemetry_topic("yard", "crane-02", "lmi"),
            good_payload(),
            "topic names yard/crane-02/lmi",
        ),
        (TOPIC, b" " * (MAX_PAYLOAD_BYTES + 1), "exceeds"),
    ],
)
def test_bad_messages_are_rejected_with_reason(topic, payload, reason):
    result = validate(topic, payload)
    assert isinstance(result, Rejected)
    assert reason in result.reason
