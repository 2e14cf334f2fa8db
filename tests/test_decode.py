"""Decode stage: the words of a planned read become one reading per tag."""

import math

import pytest

from agent.decode import decode_request, decode_value
from agent.plan import plan_reads
from derrick.plc.profile import Register
from derrick.wire.payloads import Quality


def reg(tag, address, type_="uint16", table="holding", **keys):
    return Register(tag=tag, table=table, address=address, type=type_, **keys)


# A status word read whole and per bit, next to a scaled int16 and a float32.
STATUS = [
    reg("status_word", 0),
    reg("power_on", 0, "bit", bit=0),
    reg("estop", 0, "bit", bit=1),
    reg("brake", 0, "bit", bit=15),
    reg("temperature", 1, "int16", scale=0.1),
    reg("load", 2, "float32"),
]


def values(registers, data):
    (request,) = plan_reads(registers)
    return {r.tag: r.value for r in decode_request(request, data, ts_ns=1)}


@pytest.mark.parametrize(
    ("status", "power_on", "estop", "brake"),
    [
        (0x0000, False, False, False),
        (0x0001, True, False, False),
        (0x0002, False, True, False),
        (0x8001, True, False, True),
        (0xFFFF, True, True, True),
    ],
)
def test_status_word_is_read_whole_and_per_bit_in_one_request(status, power_on, estop, brake):
    (request,) = plan_reads(STATUS)
    assert (request.address, request.count) == (0, 4)
    got = values(STATUS, [status, 0xFF38, 0x4148, 0x0000])
    assert got == {
        "status_word": status,
        "power_on": power_on,
        "estop": estop,
        "brake": brake,
        "temperature": pytest.approx(-20.0),
        "load": 12.5,
    }
    assert all(type(got[tag]) is bool for tag in ("power_on", "estop", "brake"))


# (register, words from the request's first address, value)
TABLE = [
    (reg("b", 0, "bit", bit=3), [0x0008], True),
    (reg("b", 0, "bit", bit=3, byte_order="little"), [0x0800], True),
    (reg("b", 0, "bit", bit=3, byte_order="little"), [0x0008], False),
    (reg("b", 1, "bit", bit=0, table="input"), [0x0000, 0x0001], True),
    (reg("u", 0, scale=0.5, offset=-10), [100], 40.0),
    (reg("f", 0, "float32", word_order="little"), [0x0000, 0x4148], 12.5),
    (reg("s", 0, "string", length=4), [0x4142, 0x4344], "ABCD"),
    (reg("c", 2, "bool", table="coil"), [False, False, True], True),
]


@pytest.mark.parametrize(("register", "data", "value"), TABLE)
def test_decode_value_table(register, data, value):
    got = decode_value(register, data, register.address)
    assert type(got) is type(value)
    assert got == value if not isinstance(value, float) else math.isclose(got, value)


def test_a_tag_beyond_the_data_is_bad_alone():
    registers = [reg("a", 0), reg("b", 1, "bit", bit=0), reg("f", 2, "float32")]
    (request,) = plan_reads(registers)
    readings = {r.tag: r for r in decode_request(request, [7, 1, 0x4148], ts_ns=5)}
    assert (readings["a"].value, readings["a"].quality) == (7, Quality.GOOD)
    assert (readings["b"].value, readings["b"].quality) == (True, Quality.GOOD)
    assert (readings["f"].value, readings["f"].quality) == (None, Quality.BAD)
    assert {r.ts_ns for r in readings.values()} == {5}


@pytest.mark.parametrize("words", [[0x7FC0, 0], [0x7F80, 0], [0xFF80, 0]])  # NaN, +inf, -inf
def test_non_finite_floats_are_bad_with_no_value(words):
    reg = Register(tag="p", table="holding", address=0, type="float32")
    (request,) = plan_reads([reg])
    (reading,) = decode_request(request, words, ts_ns=1)
    assert (reading.value, reading.quality) == (None, "bad")
