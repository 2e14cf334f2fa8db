"""Filter stage: report by exception, between the poll stage and the outbox.

Each device's poller hands every cycle's readings to its :class:`FilterStage`, which
keeps what is worth publishing and hands that to the outbox (:mod:`agent.outbox`).

A tag with a deadband is published only when it moved beyond it since the value last
published, when its heartbeat is due (the longest silence allowed), or when its quality
changed (a PLC going down or coming back is always news). A tag with a heartbeat and no
deadband is published on any change; a tag with neither, every poll. Booleans and
strings have no "beyond": any change is published (:meth:`Deadband.exceeded`).

The comparison is against the last *published* value, not the last polled one, so a
slow drift is reported once it adds up to a deadband instead of never.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.config import Device
from agent.outbox import Outbox
from derrick.plc.profile import Register
from derrick.wire.payloads import Reading


@dataclass(slots=True)
class _Last:
    value: object
    quality: str
    sent_s: float


class ExceptionFilter:
    """Per-device memory of what was last published, tag by tag."""

    def __init__(self, registers: list[Register]) -> None:
        self._rules = {reg.tag: reg for reg in registers}
        self._last: dict[str, _Last] = {}
        self._every_poll = all(r.deadband is None and r.heartbeat_s is None for r in registers)

    def select(self, readings: list[Reading], now_s: float) -> list[Reading]:
        """The readings worth publishing now; remembers them as published."""
        if self._every_poll:  # nothing to filter: skip the bookkeeping on the hot path
            return readings
        chosen = []
        for reading in readings:
            if self._worth_publishing(reading, now_s):
                self._last[reading.tag] = _Last(reading.value, reading.quality, now_s)
                chosen.append(reading)
        return chosen

    def _worth_publishing(self, reading: Reading, now_s: float) -> bool:
        rule = self._rules.get(reading.tag)
        deadband = rule.deadband if rule else None
        heartbeat_s = rule.heartbeat_s if rule else None
        last = self._last.get(reading.tag)
        if last is None or (deadband is None and heartbeat_s is None):
            return True
        if reading.quality != last.quality:
            return True
        if heartbeat_s is not None and now_s - last.sent_s >= heartbeat_s:
            return True
        if deadband is None:  # a heartbeat alone: report any change, and at least that often
            return reading.value != last.value
        return deadband.exceeded(last.value, reading.value)


class FilterStage:
    """One device's filter stage: readings from its poller in, the chosen ones to the outbox.

    ``published`` counts the readings handed on (the metrics stage reports it).
    """

    def __init__(
        self, device: Device, outbox: Outbox, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.device = device
        self.outbox = outbox
        self.filter = ExceptionFilter(device.selected_registers)
        self.published = 0
        self._clock = clock
        self._source = (device.asset, device.name, device.equipment_kind)

    def put(self, readings: list[Reading]) -> None:
        """Filter one poll cycle's readings; hand what is news to the outbox."""
        chosen = self.filter.select(readings, self._clock())
        if chosen:
            self.published += len(chosen)
            self.outbox.put_readings(*self._source, chosen)
