"""A version number that grows with every alarm change, and a way to wait for the next:
how the console's live summary hears of changes without polling the alarm service."""

from __future__ import annotations

import asyncio
import time


class Changes:
    """Bumped by the alarm service (in the event loop) after every change it commits."""

    def __init__(self) -> None:
        self.version = 0
        self.changed_ns = 0  # wall clock of the last bump (the push benchmark reads it)
        self._event = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        self.changed_ns = time.time_ns()
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, seen: int, timeout_s: float) -> int:
        """The version once it is past ``seen``, or the current one after ``timeout_s``."""
        if self.version == seen:
            event = self._event
            try:
                async with asyncio.timeout(timeout_s):
                    await event.wait()
            except TimeoutError:
                pass
        return self.version
