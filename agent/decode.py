"""Decode stage: the words of one read request into readings.

The common cases - big-endian numbers in either word order (ABCD, and CDAB: the low word
first, as many PLCs send 32-bit values), a bit of a register, a coil - are decoded
straight from the packed span by precompiled ``struct`` formats (one ``pack`` per
request, one ``unpack`` per tag) or a shift; everything else (swapped bytes, strings)
goes through the codec. Both give the same
values (tests/test_decode.py checks every type and order); a scaled integer is exact to
its scale's decimals in both (:func:`derrick.plc.registers.decimal_scaling`, worked out
once per request here: 434 * 0.1 is 43.4, not 43.400000000000006).
"""

from __future__ import annotations

import struct
from math import isfinite

from agent.plan import ReadRequest
from derrick.plc.profile import Register
from derrick.plc.registers import (
    CodecError,
    DataType,
    Order,
    decimal_scaling,
    decode,
    decode_bit,
    scaled,
)
from derrick.wire.payloads import Quality, Reading, trusted_reading

_FORMATS = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}
_FLOATS = frozenset({DataType.FLOAT32, DataType.FLOAT64})
# How a tag is read (a step's mode): struct in word order big, struct on the words
# reversed (word order little), one bit of a register, a coil or discrete input, codec.
_IN_ORDER, _WORDS_REVERSED, _REGISTER_BIT, _BIT, _CODEC = range(5)
# Per request (plans are fixed, splits are few): tag, its offset, its mode, a struct for
# the struct modes (the bit number for _REGISTER_BIT), and the value = (raw * mul + add)
# / div: scale and offset, div None; for a scaled integer, decimal_scaling's integers.
# Keyed by id(); the request is kept alongside so the id stays its own.
_Steps = tuple[
    tuple[Register, int, int, struct.Struct | int | None, float | int, float | int, int | None],
    ...,
]
_STEPS: dict[int, tuple[ReadRequest, _Steps]] = {}


def decode_value(reg: Register, data: list[int] | list[bool], offset: int) -> bool | float | str:
    """The value of ``reg`` whose first word (or bit) is ``data[offset]``.

    Raises CodecError or IndexError when the data cannot be that tag.
    """
    if reg.type is DataType.BOOL:
        return bool(data[offset])
    if reg.type is DataType.BIT:
        return decode_bit(int(data[offset]), reg.bit or 0, reg.byte_order)
    words = data[offset : offset + reg.count]
    if len(words) != reg.count:
        raise IndexError(f"{reg.tag}: {len(words)} of {reg.count} registers")
    raw = decode(words, reg.type, reg.byte_order, reg.word_order)  # type: ignore[arg-type]
    return raw if isinstance(raw, str) else scaled(raw, reg.scale, reg.offset)


def decode_request(request: ReadRequest, data: list[int] | list[bool], ts_ns: int) -> list[Reading]:
    """One reading per tag of the request. A tag whose words do not decode is bad, alone."""
    packed = _pack(request, data)
    readings = []
    for reg, offset, mode, fmt, mul, add, div in _steps(request):
        value: bool | float | str | None
        try:
            if mode == _BIT:
                value = bool(data[offset])
            elif packed is None or mode == _CODEC:
                value = decode_value(reg, data, offset)
            elif mode == _REGISTER_BIT:
                value = bool(data[offset] >> fmt & 1)  # type: ignore[operator]
            else:
                start = offset * 2
                if mode == _IN_ORDER:
                    raw = fmt.unpack_from(packed, start)[0]  # type: ignore[union-attr]
                else:
                    words = [packed[i : i + 2] for i in range(start, start + reg.count * 2, 2)]
                    raw = fmt.unpack(b"".join(reversed(words)))[0]  # type: ignore[union-attr]
                value = raw * mul + add
                if div is not None:
                    value /= div
            # NaN/inf (a sensor fault on many PLCs) has no JSON form: it would travel as a
            # null that claims to be good.
            quality = (
                Quality.BAD if value.__class__ is float and not isfinite(value) else Quality.GOOD
            )
        except (CodecError, IndexError, struct.error):
            value, quality = None, Quality.BAD
        if quality is Quality.BAD:
            value = None
        # Values come from our own decoder: skip re-validation on the hot path.
        readings.append(trusted_reading(reg.tag, value, reg.unit, quality, ts_ns))
    return readings


def _pack(request: ReadRequest, data: list[int] | list[bool]) -> bytes | None:
    """The span as big-endian bytes, for the fast path; None for bits or bad words."""
    if request.table.is_bits:
        return None
    try:
        return struct.pack(f">{len(data)}H", *data)
    except struct.error:  # a word out of 0..65535: let the codec name it, tag by tag
        return None


def _steps(request: ReadRequest) -> _Steps:
    cached = _STEPS.get(id(request))
    if cached is not None and cached[0] is request:
        return cached[1]
    steps = tuple(
        (reg, reg.address - request.address, *_fast_path(reg), *_scaling(reg))
        for reg in request.registers
    )
    if len(_STEPS) > 10_000:  # plans are fixed; only a program making plans in a loop gets here
        _STEPS.clear()
    _STEPS[id(request)] = (request, steps)
    return steps


def _fast_path(reg: Register) -> tuple[int, struct.Struct | int | None]:
    """(mode, struct or bit number) of one tag; the codec for anything unusual."""
    if reg.type is DataType.BOOL:
        return _BIT, None
    if reg.type is DataType.BIT:
        in_range = reg.bit is not None and 0 <= reg.bit <= 15
        return (
            (_REGISTER_BIT, reg.bit) if in_range and reg.byte_order is Order.BIG else (_CODEC, None)
        )
    code = _FORMATS.get(reg.type)
    if code is None or reg.byte_order is not Order.BIG:
        return _CODEC, None
    if reg.word_order is Order.BIG or reg.count == 1:
        return _IN_ORDER, struct.Struct(">" + code)
    return _WORDS_REVERSED, struct.Struct(">" + code)


def _scaling(reg: Register) -> tuple[float | int, float | int, int | None]:
    """The fast path's (mul, add, div), as :func:`derrick.plc.registers.scaled` does it."""
    exact = None if reg.type in _FLOATS else decimal_scaling(reg.scale, reg.offset)
    return (reg.scale, reg.offset, None) if exact is None else exact


def failed_request(
    request: ReadRequest, ts_ns: int, quality: Quality = Quality.BAD
) -> list[Reading]:
    """Readings for a span the device did not deliver: no value, quality says why."""
    return [trusted_reading(reg.tag, None, reg.unit, quality, ts_ns) for reg in request.registers]
