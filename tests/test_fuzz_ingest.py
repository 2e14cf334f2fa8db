"""Fuzzing validate -> encode: every input is stored-able or rejected with a reason.

Property-based (hypothesis) over payloads shaped like telemetry with hostile values, plus
a corpus of the issue-13 drill's payloads (huge and tiny numbers, NaN and Infinity
spellings, strings for numbers, deep nesting, invalid UTF-8, 2 MB, empty and duplicated
readings). Never an exception; what is accepted encodes, and - against a real InfluxDB
1.6 whose field types the validator was seeded with, as the collector does - is taken
whole (HTTP 204). The corpus also goes through the real collector process.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.fieldtypes import FieldTypes
from collector.lineproto import encode_telemetry
from collector.validate import Rejected, epoch_ns, validate
from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.wire.payloads import Telemetry
from derrick.wire.topics import telemetry_topic
from devstack.programs import Program, wait_for, write_yaml

TOPIC = telemetry_topic("fuzz", "crane-01", "lmi")
TS = epoch_ns(2026)


def mostly(valid: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` 29 times in 30: about half the messages get through for the InfluxDB check,
    and each hostile field is tried alone as well as with others."""
    return st.integers(0, 29).flatmap(lambda n: hostile if n == 13 else valid)


idents = st.from_regex(r"\A[A-Za-z0-9_.-]{1,8}\Z")
tags = mostly(st.sampled_from(["t0", "t1", "t2", "flag", "name", "t0_q"]), st.text(max_size=5))
good_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.booleans(),
    st.text(max_size=30),
    st.none(),
)
hostile_values = st.recursive(
    st.one_of(
        st.integers(min_value=-(10**420), max_value=10**420),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(alphabet="0123456789.e-", max_size=12),  # numbers in strings
        st.text(min_size=1000, max_size=1100),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
timestamps = mostly(
    st.integers(min_value=TS - 10**9, max_value=TS + 10**9),
    st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(alphabet="0123456789", max_size=20),
    ),
)
readings = st.fixed_dictionaries(
    {
        "tag": tags,
        "value": mostly(good_values, hostile_values),
        "ts_ns": timestamps,
        "quality": mostly(
            st.sampled_from(["good", "good", "bad", "stale", "uncertain"]),
            st.sampled_from(["meh", 1, None]),
        ),
    },
    optional={"unit": mostly(st.text(max_size=16), st.text(min_size=17, max_size=20))},
).flatmap(
    lambda reading: mostly(
        st.just(reading), hostile_values.map(lambda extra: {**reading, "extra": extra})
    )
)
messages = st.fixed_dictionaries(
    {
        "v": mostly(st.just(1), st.sampled_from([2, "1", 1.5, None])),
        "site": st.just("fuzz"),
        "asset": mostly(st.just("crane-01"), st.sampled_from(["other", "a/b", ""])),
        "device": st.just("lmi"),
        "kind": mostly(st.just("crane"), st.sampled_from(["bad kind", 5])),
        "agent": st.just("gw"),
        "boot": mostly(st.text(min_size=1, max_size=64), st.text(min_size=65, max_size=70)),
        "seq": mostly(
            st.integers(min_value=0, max_value=2**63 - 1),
            st.one_of(st.integers(min_value=-5, max_value=2**65), st.text(max_size=3)),
        ),
        "readings": mostly(st.lists(readings, min_size=1, max_size=6), st.just([])),
    },
    optional={"historical": mostly(st.booleans(), st.sampled_from([0, 1, "true"]))},
)


def payload_of(message: dict) -> bytes:
    return json.dumps(message, allow_nan=True).encode()


raw_payloads = st.one_of(
    messages.map(payload_of),
    st.binary(max_size=300),
    messages.map(payload_of).flatmap(
        lambda p: st.integers(0, len(p)).map(lambda cut: p[:cut])  # torn messages
    ),
)


def check(payload: bytes, fields: FieldTypes | None) -> list[str] | Rejected:
    """The property: a reason, or lines; never an exception."""
    result = validate(TOPIC, payload, fields=fields)
    if isinstance(result, Rejected):
        assert result.reason, "every rejection says why"
        assert result.kind
        return result
    assert isinstance(result, Telemetry)
    lines = encode_telemetry(result)
    assert lines, "an accepted message stores something"
    return lines


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_payloads)
def test_validate_then_encode_never_raises(payload):
    check(payload, FieldTypes())


@pytest.mark.integration
@settings(
    max_examples=300,
    deadline=None,
    # one database for every example, on purpose: its field types are the history the
    # validator must respect
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(payload=messages.map(payload_of))
def test_what_is_accepted_influxdb_takes_whole(influx1, influx_db, payload):
    """The validator seeded with the database's field types, as the collector does at
    start-up: whatever it accepts, InfluxDB 1.6 stores without a refusal."""
    fields = FieldTypes()
    fields.seed(_field_keys(influx1, influx_db))
    result = check(payload, fields)
    if isinstance(result, Rejected):
        return
    request = urllib.request.Request(
        f"{influx1.url}/write?db={influx_db}&precision=ns",
        data="\n".join(result).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 204
    except urllib.error.HTTPError as exc:
        pytest.fail(f"InfluxDB refused what the collector accepted: {exc.read()[:300]!r}")


def _field_keys(influx1, db: str) -> dict[str, set[str]]:
    result = influx1.query("SHOW FIELD KEYS FROM telemetry", db=db)
    series = result["results"][0].get("series") or []
    types: dict[str, set[str]] = {}
    for key, kind in series[0]["values"] if series else []:
        types.setdefault(key, set()).add(kind)
    return types


# -- the drill's corpus ------------------------------------------------------------------


def good(**changes) -> dict:
    reading = {"tag": "t0", "value": 1.5, "unit": "t", "quality": "good", "ts_ns": TS}
    message = {
        "v": 1,
        "site": "fuzz",
        "asset": "crane-01",
        "device": "lmi",
        "kind": "crane",
        "agent": "gw",
        "boot": "b",
        "seq": 1,
        "readings": [reading],
    }
    message.update(changes)
    return message


def with_value(text: str) -> bytes:
    return payload_of(good()).replace(b'"value": 1.5', f'"value": {text}'.encode())


def nested(depth: int) -> bytes:
    return payload_of(good()).replace(b'"value": 1.5', b'"value": ' + b"[" * depth + b"]" * depth)


CORPUS = {
    "int-401-digits": with_value("1" + "0" * 400),
    "int-beyond-uint64": with_value(str(2**64)),
    "float-1e400": with_value("1e400"),
    "float-minus-1e400": with_value("-1e400"),
    "NaN": with_value("NaN"),
    "nan-lower": with_value("nan"),
    "Infinity": with_value("Infinity"),
    "minus-Infinity": with_value("-Infinity"),
    "inf": with_value("inf"),
    "string-number": with_value('"1.5"'),
    "string-abc": with_value('"abc"'),
    "seq-string": payload_of(good(seq="1")),
    "ts-float": payload_of(good(readings=[{"tag": "t0", "value": 1.5, "ts_ns": 1.7e18}])),
    "ts-1e30": payload_of(good(readings=[{"tag": "t0", "value": 1.5, "ts_ns": 10**30}])),
    "nested-deep": nested(5000),
    "nested-object": with_value('{"a": {"b": {"c": [1, 2, {"d": null}]}}}'),
    "invalid-utf8": payload_of(good()).replace(b'"crane"', b'"cr\xffne"'),
    "two-mb": payload_of(good(boot="x" * 2_000_000)),
    "empty-readings": payload_of(good(readings=[])),
    "duplicated-readings": payload_of(good(readings=[good()["readings"][0]] * 2)),
    "good-without-value": with_value("null"),
}
# A string is a string field, checked against the field's type later; 2**64 is the finite
# float it is close to.
ACCEPTED = {"string-abc", "string-number", "int-beyond-uint64"}


@pytest.mark.parametrize("name", CORPUS)
def test_drill_payloads_are_rejected_with_a_reason(name):
    result = check(CORPUS[name], FieldTypes())
    if name in ACCEPTED:
        assert not isinstance(result, Rejected)
    else:
        assert isinstance(result, Rejected), name
        assert "SECRET" not in result.reason


@pytest.mark.integration
def test_the_collector_takes_the_whole_corpus_and_keeps_storing(
    tmp_path, mosquitto, influx1, influx_db
):
    """Every drill payload on a telemetry topic of a live collector: each rejected one
    dead-lettered with its reason, the collector alive, a good message after them stored."""
    from collector.deadletter import read_dead_letters  # noqa: PLC0415 - integration only

    site = f"z{uuid.uuid4().hex[:8]}"
    name = f"col-{site}"
    config = write_yaml(
        tmp_path / "collector.yaml",
        {
            "collector": {"id": name},
            "broker": {"host": "127.0.0.1", "port": mosquitto.port},
            "influx": {"api": "v1", "url": influx1.url, "database": influx_db},
            "batch": {"max_delay_s": 0.05},
            "log": {"format": "json"},
        },
    )
    topic = telemetry_topic(site, "crane-01", "lmi")
    payloads = [p.replace(b'"fuzz"', f'"{site}"'.encode()) for p in CORPUS.values()]
    payloads.append(payload_of(good(site=site, seq=2)).replace(b'"t0"', b'"after"'))
    # the oracle: the same payloads through validate, in the same order, with one ledger of
    # field types (the first accepted value of t0 makes it a float field)
    fields = FieldTypes()
    results = [validate(topic, p, fields=fields) for p in payloads]
    expected = [r.kind for r in results if isinstance(r, Rejected)]
    assert "type" in expected
    program = Program("collector", ["--config", str(config)], tmp_path / "collector.log").start()

    async def send() -> None:
        client = MqttClient(BrokerSettings(port=mosquitto.port), f"pub-{uuid.uuid4().hex[:6]}")
        await client.start()
        await client.wait_connected(10)
        await asyncio.gather(*(client.publish_nowait(topic, p) for p in payloads))
        await client.stop()

    try:
        wait_for(lambda: "collector started" in program.log_tail(30), 20, "up", program=program)
        asyncio.run(send())
        wait_for(
            lambda: influx1.query(f"SELECT after FROM telemetry WHERE site='{site}'", db=influx_db)[
                "results"
            ][0].get("series"),
            30,
            "the good message after the corpus",
            program=program,
        )
        letters = wait_for(
            lambda: (
                (found := read_dead_letters(tmp_path / "state" / f"deadletter-{name}"))
                and len(found) >= len(expected)
                and found
            ),
            20,
            "the dead letters",
        )
    finally:
        assert program.stop() == 0, program.log_tail()
    assert [(letter["kind"], letter["topic"]) for letter in letters] == [
        (kind, topic) for kind in expected
    ]
    assert all(letter["reason"] for letter in letters)
