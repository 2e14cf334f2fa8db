"""Register codec: pure functions between Modbus register words and values.

The agent decodes what a PLC answers; the simulators encode what they serve. Both use
these functions with the same profile, so a value survives the round trip exactly (up to
float32 precision) in every byte and word order.

Terms, as PLC manuals use them:

* ``byte_order`` ``big`` (ABCD, Modbus standard) or ``little`` (bytes swapped inside each
  16-bit word: BADC).
* ``word_order`` ``big`` (high word first, Modicon default) or ``little`` (low word
  first, CDAB - common on Schneider, Siemens and many Chinese PLCs).

``bool`` is one coil or discrete input; ``bit`` is one bit (0 = least significant) of a
16-bit holding or input register, e.g. a flag of a bit-packed status word.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from enum import StrEnum
from functools import cache


class DataType(StrEnum):
    BOOL = "bool"
    BIT = "bit"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


class Order(StrEnum):
    BIG = "big"
    LITTLE = "little"


_STRUCT: dict[DataType, tuple[str, int]] = {
    DataType.INT16: ("h", 1),
    DataType.UINT16: ("H", 1),
    DataType.INT32: ("i", 2),
    DataType.UINT32: ("I", 2),
    DataType.INT64: ("q", 4),
    DataType.UINT64: ("Q", 4),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
}


class CodecError(ValueError):
    """Register words that cannot be the declared type (wrong count, bad range)."""


def register_count(datatype: DataType, length: int = 0) -> int:
    """Registers one value occupies; ``length`` is the string length in characters."""
    if datatype is DataType.STRING:
        return (length + 1) // 2
    if datatype in (DataType.BOOL, DataType.BIT):
        return 1
    return _STRUCT[datatype][1]


def _words_to_bytes(words: list[int], byte_order: Order, word_order: Order) -> bytes:
    ordered = words if word_order is Order.BIG else list(reversed(words))
    fmt = ">" if byte_order is Order.BIG else "<"
    return struct.pack(f"{fmt}{len(ordered)}H", *ordered)


def _bytes_to_words(raw: bytes, byte_order: Order, word_order: Order) -> list[int]:
    fmt = ">" if byte_order is Order.BIG else "<"
    words = list(struct.unpack(f"{fmt}{len(raw) // 2}H", raw))
    return words if word_order is Order.BIG else list(reversed(words))


def decode(
    words: list[int],
    datatype: DataType,
    byte_order: Order = Order.BIG,
    word_order: Order = Order.BIG,
) -> int | float | str:
    """Decode the register words of one value. Raises CodecError on a wrong word count.

    Single bits (``bool``, ``bit``) are not words: see :func:`decode_bit`.
    """
    if datatype is DataType.STRING:
        raw = struct.pack(f">{len(words)}H", *words)
        if byte_order is Order.LITTLE:
            raw = _swap_pairs(raw)
        return raw.split(b"\0", 1)[0].decode("ascii", errors="replace").rstrip()
    if datatype not in _STRUCT:
        raise CodecError(f"{datatype} is a single bit, not register words: use decode_bit")
    code, count = _STRUCT[datatype]
    if len(words) != count:
        raise CodecError(f"{datatype} needs {count} registers, got {len(words)}")
    return struct.unpack(f">{code}", _words_to_bytes(words, byte_order, word_order))[0]


def encode(
    value: float | str,
    datatype: DataType,
    byte_order: Order = Order.BIG,
    word_order: Order = Order.BIG,
    length: int = 0,
) -> list[int]:
    """Encode one value into register words. Integers are rounded; out of range raises."""
    if datatype is DataType.STRING:
        raw = str(value).encode("ascii")[:length].ljust(register_count(datatype, length) * 2, b"\0")
        if byte_order is Order.LITTLE:
            raw = _swap_pairs(raw)
        return list(struct.unpack(f">{len(raw) // 2}H", raw))
    if datatype not in _STRUCT:
        raise CodecError(f"{datatype} is a single bit, not register words: use encode_bit")
    code, _ = _STRUCT[datatype]
    number = float(value) if code in "fd" else round(float(value))
    try:
        raw = struct.pack(f">{code}", number)
    except (struct.error, OverflowError) as exc:  # float32 beyond 3.4e38 overflows
        raise CodecError(f"{value!r} does not fit {datatype}") from exc
    return _bytes_to_words(raw, byte_order, word_order)


def _word_in_order(word: int, byte_order: Order) -> int:
    if not 0 <= word <= 0xFFFF:
        raise CodecError(f"{word!r} is not a 16-bit register word")
    return word if byte_order is Order.BIG else ((word & 0xFF) << 8) | (word >> 8)


def decode_bit(word: int, bit: int, byte_order: Order = Order.BIG) -> bool:
    """Bit ``bit`` (0 = least significant) of one register word.

    With ``byte_order`` little the PLC sends the word's two bytes swapped, so they are
    swapped back before the bit is taken: bit 0 is then the lowest bit of the second byte
    on the wire.
    """
    if not 0 <= bit <= 15:
        raise CodecError(f"bit {bit} is not in 0..15")
    return bool((_word_in_order(word, byte_order) >> bit) & 1)


def encode_bit(word: int, bit: int, value: bool, byte_order: Order = Order.BIG) -> int:
    """``word`` as sent by the PLC with bit ``bit`` set to ``value`` (inverse of decode_bit)."""
    if not 0 <= bit <= 15:
        raise CodecError(f"bit {bit} is not in 0..15")
    plain = _word_in_order(word, byte_order)
    plain = plain | (1 << bit) if value else plain & ~(1 << bit)
    return _word_in_order(plain, byte_order)


def _swap_pairs(raw: bytes) -> bytes:
    swapped = bytearray(raw)
    swapped[0::2], swapped[1::2] = raw[1::2], raw[0::2]
    return bytes(swapped)


MAX_SCALE_DECIMALS = 10
"""A scale or offset with more decimals than this is not a resolution (1/3 written out):
values scaled by it are left as computed, not rounded."""


@cache
def scale_decimals(scale: float, offset: float = 0.0) -> int | None:
    """Decimals of an integer register's value scaled by ``scale`` and ``offset``.

    The most decimals of the two as written (their shortest ``repr``: 0.1 -> 1, 0.25 -> 2,
    1e-05 -> 5, 100.0 -> 0): raw * scale + offset has no more than that. None: nothing to
    round, for whole-number scale and offset (the float product is exact), and for more
    than :data:`MAX_SCALE_DECIMALS`.
    """
    if not (math.isfinite(scale) and math.isfinite(offset)):
        return None
    decimals = max(_decimals(scale), _decimals(offset))
    return decimals if 0 < decimals <= MAX_SCALE_DECIMALS else None


@cache
def decimal_scaling(scale: float, offset: float = 0.0) -> tuple[int, int, int] | None:
    """``(mul, add, div)``, integers with raw * scale + offset = (raw * mul + add) / div
    exactly for the decimal scale and offset as written; None where :func:`scale_decimals`
    is None.

    Integer arithmetic and one correctly rounded division give the float nearest the exact
    decimal value (434 * 0.1 -> 43.4, not 43.400000000000006): the same as ``round(raw *
    scale + offset, decimals)``, for the cost of the float product.
    """
    decimals = scale_decimals(scale, offset)
    if decimals is None:
        return None
    mul, add = (int(Decimal(repr(x)).scaleb(decimals)) for x in (scale, offset))
    return mul, add, 10**decimals


def _decimals(number: float) -> int:
    exponent = Decimal(repr(number)).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def scaled(raw: float, scale: float, offset: float) -> float:
    """Engineering value from a raw register value: raw * scale + offset.

    An integer ``raw`` (a count of the register's resolution) gives the value to the
    decimals of scale and offset (:func:`decimal_scaling`); a float raw (float32/float64
    registers) is scaled as it is: it has digits of its own beyond the scale's.
    """
    if raw.__class__ is int:
        exact = decimal_scaling(scale, offset)
        if exact is not None:
            return (raw * exact[0] + exact[1]) / exact[2]
    return raw * scale + offset


def unscaled(value: float, scale: float, offset: float) -> float:
    """Raw register value for an engineering value (inverse of :func:`scaled`)."""
    return (value - offset) / scale
