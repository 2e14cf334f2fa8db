"""Decode stage: the words of one read request into readings."""

from __future__ import annotations

from agent.plan import ReadRequest
from derrick.contract import Quality, Reading
from derrick.profile import Register
from derrick.registers import CodecError, DataType, decode, decode_bit, scaled


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
    readings = []
    for reg in request.registers:
        value: bool | float | str | None
        try:
            value = decode_value(reg, data, reg.address - request.address)
            quality = Quality.GOOD
        except (CodecError, IndexError):
            value, quality = None, Quality.BAD
        # Values come from our own decoder: skip re-validation on the hot path.
        readings.append(
            Reading.model_construct(
                tag=reg.tag, value=value, unit=reg.unit, quality=quality, ts_ns=ts_ns
            )
        )
    return readings


def failed_request(
    request: ReadRequest, ts_ns: int, quality: Quality = Quality.BAD
) -> list[Reading]:
    """Readings for a span the device did not deliver: no value, quality says why."""
    return [
        Reading.model_construct(
            tag=reg.tag, value=None, unit=reg.unit, quality=quality, ts_ns=ts_ns
        )
        for reg in request.registers
    ]
