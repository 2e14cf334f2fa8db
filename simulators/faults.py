"""Field faults of a PLC's Modbus interface, switched on and off while it runs.

* ``latency_s``: every reply is late by this much (a PLC whose scan is overloaded).
* ``silent``: requests are taken but never answered (a PLC that hangs; clients time out).
* ``reset()``: every open connection is torn down with a TCP reset, once (a gateway or
  switch that drops sessions); clients that reconnect are served again.

Exception 02 for undefined addresses needs no switch: the profile's gaps always answer it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Faults:
    latency_s: float = 0.0
    _answering: asyncio.Event = field(default_factory=asyncio.Event)
    _resetters: list[Callable[[], int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._answering.set()

    @property
    def silent(self) -> bool:
        return not self._answering.is_set()

    @silent.setter
    def silent(self, value: bool) -> None:
        if value:
            self._answering.clear()
        else:
            self._answering.set()

    def on_reset(self, resetter: Callable[[], int]) -> None:
        """Register a server's 'drop every connection' (it returns how many it dropped)."""
        self._resetters.append(resetter)

    def reset(self) -> int:
        """Tear down every open connection now; returns how many."""
        return sum(resetter() for resetter in self._resetters)

    async def before_reply(self) -> None:
        """Await what the faults impose on one reply: a delay, or no reply at all."""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        # Silent: the request waits until the PLC "wakes up"; by then the client has long
        # given up on it (and a late reply carries a transaction id nobody waits for).
        await self._answering.wait()

    def describe(self) -> dict[str, object]:
        return {"latency_s": self.latency_s, "silent": self.silent}
