"""Decode stage: the words of one read request into readings."""

from __future__ import annotations

from agent.plan import ReadRequest
from derrick.contract import Quality, Reading
from derrick.registers import CodecError, DataType, decode, scaled


def decode_request(request: ReadRequest, data: list[int] | list[bool], ts_ns: int) -> list[Reading]:
    """One reading per tag of the request. A tag whose words do not decode is bad, alone."""
    readings = []
    for reg in request.registers:
        offset = reg.address - request.address
        try:
            if reg.type is DataType.BOOL:
                value: bool | float | str = bool(data[offset])
            else:
                raw = decode(
                    data[offset : offset + reg.count],
                    reg.type,
                    reg.byte_order,
                    reg.word_order,
                )
                value = raw if isinstance(raw, str) else scaled(raw, reg.scale, reg.offset)
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
