"""Counters the stages share (one event loop, so plain integers are safe)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Stats:
    messages: int = 0
    rejected: int = 0
    readings: int = 0
    lines_written: int = 0
    lines_refused: int = 0
    batches: int = 0
    alarms_raised: int = 0
    alarms_cleared: int = 0
    alarms_dropped: int = 0

    def snapshot(self) -> dict[str, int]:
        return asdict(self)
