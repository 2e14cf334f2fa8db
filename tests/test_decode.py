"""Decode stage: the words of a planned read become one reading per tag."""

import math
import random

import pytest

from agent.decode import decode_request, decode_value
from agent.plan import plan_reads
from derrick.plc.profile import Register
from derrick.plc.registers import DataType, decode, encode, scale_decimals, scaled, unscaled
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


# -- scaled integers are exact to their scale's decimals ----------------------------------


@pytest.mark.parametrize(
    ("scale", "offset", "decimals"),
    [
        (0.1, 0, 1),
        (0.25, 0, 2),
        (0.001, 0, 3),
        (1e-05, 0, 5),
        (1, 0.5, 1),
        (0.1, -273.15, 2),
        (1, 0, None),  # whole numbers: the float product is exact already
        (100, -40, None),
        (1 / 3, 0, None),  # more than MAX_SCALE_DECIMALS: not a resolution, left as computed
        (1e-11, 0, None),
    ],
)
def test_scale_decimals(scale, offset, decimals):
    assert scale_decimals(scale, offset) == decimals


def paths(register):
    """words -> (fast path, codec path in decode_request, decode_value) of a tag at 0."""
    (request,) = plan_reads([register])
    # The same tag in byte and word order little, sent that way: decode_request's codec path.
    little = register.model_copy(update={"byte_order": "little", "word_order": "little"})
    (swapped,) = plan_reads([little])

    def decoded(words):
        (fast,) = decode_request(request, words, ts_ns=1)
        sent = [((w & 0xFF) << 8) | (w >> 8) for w in reversed(words)]
        (codec,) = decode_request(swapped, sent, ts_ns=1)
        return fast.value, codec.value, decode_value(register, words, 0)

    return decoded


def both_paths(register, words):
    return paths(register)(words)


@pytest.mark.parametrize(
    ("register", "words", "value"),
    [
        (reg("t", 0, "int16", scale=0.1), [434], 43.4),  # not 43.400000000000006
        (reg("t", 0, "int16", scale=0.1, offset=0.5), [0xFFFB], 0.0),  # -5: not -1e-17
        (reg("t", 0, "int16", scale=0.1, offset=0.3), [0xFFFD], 0.0),  # -3: not -0.0
        (reg("e", 0, "uint32", scale=0.001), [0x0001, 0x2345], 74.565),
        (reg("e", 0, "uint32", scale=0.001), [0xFFFF, 0xFFFF], 4294967.295),
        (reg("q", 0, "int64", scale=0.01, offset=-40), [0, 0, 0, 4321], 3.21),
        (reg("u", 0, "uint16", scale=0.25), [7], 1.75),
        (reg("u", 0, "uint16"), [7], 7.0),  # unscaled: as before, a float
        (reg("f", 0, "float32"), [0x4148, 0x0000], 12.5),
    ],
)
def test_scaled_integers_are_exact_on_every_path(register, words, value):
    for got in both_paths(register, words):
        assert type(got) is float
        assert got == value
        assert math.copysign(1, got) == math.copysign(1, value)  # no -0.0
        assert repr(got) == repr(value)


def test_float_registers_with_a_scale_are_not_rounded():
    register = reg("f", 0, "float32", scale=0.1)
    words = encode(12.34, DataType.FLOAT32)
    raw = decode(words, DataType.FLOAT32)  # 12.34 as float32: 12.34000015258789
    assert set(both_paths(register, words)) == {raw * 0.1}  # 1.234000015258789, not 1.2


INTEGER_TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64"]
SCALINGS = [(1, 0), (0.1, 0), (0.25, 0), (0.001, 0), (0.1, 0.5), (2, -40), (1 / 3, 0), (-0.01, 5)]


@pytest.mark.parametrize("type_", [*INTEGER_TYPES, "float32", "float64"])
@pytest.mark.parametrize(("scale", "offset"), SCALINGS)
def test_fast_and_codec_paths_agree(type_, scale, offset):
    rng = random.Random(f"{type_}{scale}{offset}")
    register = reg("x", 0, type_, scale=scale, offset=offset)
    decoded = paths(register)
    edges = [[0] * register.count, [0xFFFF] * register.count, [0x8000] + [0] * (register.count - 1)]
    for words in edges + [
        [rng.randrange(65536) for _ in range(register.count)] for _ in range(300)
    ]:
        fast, codec, value = decoded(words)
        if value.__class__ is float and not math.isfinite(value):
            assert fast is None and codec is None  # NaN/inf: bad, no value
            continue
        assert type(fast) is type(codec) is type(value) is float
        assert fast == codec == value, words


@pytest.mark.parametrize("type_", ["int16", "uint32"])
@pytest.mark.parametrize(("scale", "offset"), [(0.1, 0), (0.01, -40), (0.25, 0.5), (0.001, 0)])
def test_simulator_round_trip_is_exact(type_, scale, offset):
    """What a simulator serves (encode of unscaled) decodes to exactly the value it meant."""
    decoded = paths(reg("x", 0, type_, scale=scale, offset=offset))
    decimals = scale_decimals(scale, offset)
    raws = range(-32768, 32768, 7) if type_ == "int16" else range(0, 2**32, 2**32 // 5000)
    for raw in raws:
        meant = round(raw * scale + offset, decimals)  # a value on the register's grid
        words = encode(unscaled(meant, scale, offset), DataType(type_))
        fast, codec, value = decoded(words)
        assert (
            fast == codec == value == meant == scaled(decode(words, DataType(type_)), scale, offset)
        )


@pytest.mark.parametrize("type_", [*INTEGER_TYPES, "float32", "float64"])
def test_word_order_little_fast_path_agrees_with_the_codec(type_):
    """CDAB (low word first, bytes big-endian) is read by the fast path; the codec
    (decode_value) is the reference."""
    rng = random.Random(type_)
    register = reg("x", 0, type_, word_order="little", scale=0.1)
    (request,) = plan_reads([register])
    for _ in range(300):
        words = [rng.randrange(65536) for _ in range(register.count)]
        (fast,) = decode_request(request, words, ts_ns=1)
        reference = decode_value(register, words, 0)
        if reference.__class__ is float and not math.isfinite(reference):
            assert fast.value is None and fast.quality is Quality.BAD
            continue
        assert type(fast.value) is type(reference) and fast.value == reference, words


@pytest.mark.parametrize("byte_order", ["big", "little"])
def test_register_bits_and_coils_agree_with_the_codec(byte_order):
    bits = [reg(f"b{n}", 0, "bit", bit=n, byte_order=byte_order) for n in range(16)]
    (request,) = plan_reads(bits)
    coils = [reg(f"c{n}", n, "bool", table="coil") for n in range(5)]
    (coil_request,) = plan_reads(coils)
    for word in (0, 1, 0x8000, 0x00FF, 0xA5A5, 0xFFFF):
        got = {r.tag: r.value for r in decode_request(request, [word], ts_ns=1)}
        assert got == {b.tag: decode_value(b, [word], 0) for b in bits}, hex(word)
        assert all(type(v) is bool for v in got.values())
    pattern = [True, False, False, True, True]
    got = [r.value for r in decode_request(coil_request, pattern, ts_ns=1)]
    assert got == pattern and all(type(v) is bool for v in got)


def test_a_float_whose_words_the_span_lacks_is_bad_alone():
    registers = [reg("a", 0, "uint16"), reg("f", 1, "float32", word_order="little")]
    (request,) = plan_reads(registers)
    got = {r.tag: (r.value, r.quality) for r in decode_request(request, [7, 0x0000], ts_ns=1)}
    assert got == {"a": (7.0, Quality.GOOD), "f": (None, Quality.BAD)}
