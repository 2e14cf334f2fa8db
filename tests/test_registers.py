"""Register decoding: tables of register words -> values, in every byte and word order."""

import math

import pytest

from derrick.plc.registers import (
    CodecError,
    DataType,
    Order,
    decode,
    decode_bit,
    encode,
    encode_bit,
    register_count,
    scaled,
    unscaled,
)

B, L = Order.BIG, Order.LITTLE

# (type, byte order, word order, words as the PLC sends them, value)
TABLE = [
    (DataType.INT16, B, B, [0xFFFE], -2),
    (DataType.INT16, L, B, [0xFEFF], -2),
    (DataType.UINT16, B, B, [0xFFFE], 65534),
    (DataType.UINT16, L, B, [0x3412], 0x1234),
    # 32-bit: 0x12345678 as ABCD, CDAB, BADC, DCBA
    (DataType.UINT32, B, B, [0x1234, 0x5678], 0x12345678),
    (DataType.UINT32, B, L, [0x5678, 0x1234], 0x12345678),
    (DataType.UINT32, L, B, [0x3412, 0x7856], 0x12345678),
    (DataType.UINT32, L, L, [0x7856, 0x3412], 0x12345678),
    (DataType.INT32, B, B, [0xFFFF, 0xFFFF], -1),
    (DataType.INT32, B, L, [0xFFFE, 0xFFFF], -2),
    # float32 12.5 = 0x41480000
    (DataType.FLOAT32, B, B, [0x4148, 0x0000], 12.5),
    (DataType.FLOAT32, B, L, [0x0000, 0x4148], 12.5),
    (DataType.FLOAT32, L, B, [0x4841, 0x0000], 12.5),
    (DataType.FLOAT32, L, L, [0x0000, 0x4841], 12.5),
    (DataType.FLOAT32, B, B, [0xC2F6, 0xE979], -123.456),
    # float64 1.0 = 0x3FF0000000000000
    (DataType.FLOAT64, B, B, [0x3FF0, 0, 0, 0], 1.0),
    (DataType.FLOAT64, B, L, [0, 0, 0, 0x3FF0], 1.0),
    (DataType.FLOAT64, L, B, [0xF03F, 0, 0, 0], 1.0),
    (DataType.FLOAT64, L, L, [0, 0, 0, 0xF03F], 1.0),
    (DataType.INT64, B, B, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD], -3),
    (DataType.UINT64, B, L, [0x0005, 0, 0, 0], 5),
]


@pytest.mark.parametrize(("datatype", "byte_order", "word_order", "words", "value"), TABLE)
def test_decode_table(datatype, byte_order, word_order, words, value):
    decoded = decode(words, datatype, byte_order, word_order)
    if isinstance(value, float):
        assert math.isclose(decoded, value, rel_tol=1e-6)
    else:
        assert decoded == value


@pytest.mark.parametrize(("datatype", "byte_order", "word_order", "words", "value"), TABLE)
def test_encode_table(datatype, byte_order, word_order, words, value):
    assert encode(value, datatype, byte_order, word_order) == words


def test_string_both_byte_orders():
    assert encode("SN-12", DataType.STRING, length=6) == [0x534E, 0x2D31, 0x3200]
    assert decode([0x534E, 0x2D31, 0x3200], DataType.STRING) == "SN-12"
    assert encode("SN-12", DataType.STRING, L, length=6) == [0x4E53, 0x312D, 0x0032]
    assert decode([0x4E53, 0x312D, 0x0032], DataType.STRING, L) == "SN-12"


def test_wrong_word_count_is_an_error_not_garbage():
    with pytest.raises(CodecError, match="float32 needs 2 registers, got 1"):
        decode([0x4148], DataType.FLOAT32)


def test_out_of_range_value_is_an_error():
    with pytest.raises(CodecError, match="does not fit uint16"):
        encode(70000, DataType.UINT16)
    with pytest.raises(CodecError, match="does not fit float32"):
        encode(1e39, DataType.FLOAT32)


@pytest.mark.parametrize(
    ("raw", "scale", "offset", "value"),
    [(1234, 0.1, 0.0, 123.4), (0, 0.5, -40.0, -40.0), (400, 0.25, -50.0, 50.0)],
)
def test_scaling_round_trips(raw, scale, offset, value):
    assert math.isclose(scaled(raw, scale, offset), value)
    assert math.isclose(unscaled(value, scale, offset), raw)


# (word as the PLC sends it, byte order, bit, value): 0x1234 = 0001 0010 0011 0100
BITS = [
    (0x0001, B, 0, True),
    (0x0001, B, 1, False),
    (0x8000, B, 15, True),
    (0x8000, B, 14, False),
    (0x1234, B, 2, True),
    (0x1234, B, 3, False),
    (0x1234, B, 4, True),
    (0x1234, B, 9, True),
    (0x1234, B, 12, True),
    (0x1234, B, 13, False),
    (0xFFFF, B, 7, True),
    (0x0000, B, 7, False),
    # byte order little: the word arrives bytes swapped, 0x3412 is the value 0x1234
    (0x3412, L, 2, True),
    (0x3412, L, 3, False),
    (0x3412, L, 12, True),
    (0x0100, L, 0, True),  # bit 0 is the low bit of the second byte on the wire
    (0x0001, L, 0, False),
    (0x0001, L, 8, True),
]


@pytest.mark.parametrize(("word", "byte_order", "bit", "value"), BITS)
def test_decode_bit_table(word, byte_order, bit, value):
    assert decode_bit(word, bit, byte_order) is value


@pytest.mark.parametrize(("word", "byte_order", "bit", "value"), BITS)
def test_encode_bit_sets_only_that_bit(word, byte_order, bit, value):
    flipped = encode_bit(word, bit, not value, byte_order)
    assert decode_bit(flipped, bit, byte_order) is (not value)
    assert encode_bit(flipped, bit, value, byte_order) == word
    others = [b for b in range(16) if b != bit]
    assert [decode_bit(flipped, b, byte_order) for b in others] == [
        decode_bit(word, b, byte_order) for b in others
    ]


def test_bit_numbers_and_words_out_of_range_are_errors():
    with pytest.raises(CodecError, match=r"bit 16 is not in 0\.\.15"):
        decode_bit(0, 16)
    with pytest.raises(CodecError, match="not a 16-bit register word"):
        decode_bit(0x10000, 0)
    with pytest.raises(CodecError, match="single bit"):
        decode([1], DataType.BIT)
    with pytest.raises(CodecError, match="single bit"):
        encode(1, DataType.BOOL)


def test_a_bit_occupies_one_register():
    assert register_count(DataType.BIT) == register_count(DataType.BOOL) == 1
