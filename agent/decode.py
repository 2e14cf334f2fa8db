"""Decode stage: the words of one read request into readings.

The common case - big-endian numbers, word order big or a single word - is decoded by
precompiled ``struct`` formats straight from the packed span (one ``pack`` per request,
one ``unpack_from`` per tag); everything else goes through the codec. Both give the same
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
# Per request (plans are fixed, splits are few): tag, its offset, a struct for the fast
# path or None, and the fast path's value = (raw * mul + add) / div: scale and offset,
# div None; for a scaled integer, decimal_scaling's integers. Keyed by id(); the request
# is kept alongside so the id stays its own.
_Steps = tuple[
    tuple[Register, int, struct.Struct | None, float | int, float | int, int | None], ...
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
    for reg, offset, fmt, mul, add, div in _steps(request):
        value: bool | float | str | None
        try:
            if fmt is not None and packed is not None:
                value = fmt.unpack_from(packed, offset * 2)[0] * mul + add
                if div is not None:
                    value /= div
            else:
                value = decode_value(reg, data, offset)
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
        (reg, reg.address - request.address, _fast_format(reg), *_scaling(reg))
        for reg in request.registers
    )
    if len(_STEPS) > 10_000:  # plans are fixed; only a program making plans in a loop gets here
        _STEPS.clear()
    _STEPS[id(request)] = (request, steps)
    return steps


def _fast_format(reg: Register) -> struct.Struct | None:
    code = _FORMATS.get(reg.type)
    if code is None or reg.byte_order is not Order.BIG:
        return None
    if reg.word_order is not Order.BIG and reg.count > 1:
        return None
    return struct.Struct(">" + code)


def _scaling(reg: Register) -> tuple[float | int, float | int, int | None]:
    """The fast path's (mul, add, div), as :func:`derrick.plc.registers.scaled` does it."""
    exact = None if reg.type in _FLOATS else decimal_scaling(reg.scale, reg.offset)
    return (reg.scale, reg.offset, None) if exact is None else exact


def failed_request(
    request: ReadRequest, ts_ns: int, quality: Quality = Quality.BAD
) -> list[Reading]:
    """Readings for a span the device did not deliver: no value, quality says why."""
    return [trusted_reading(reg.tag, None, reg.unit, quality, ts_ns) for reg in request.registers]
