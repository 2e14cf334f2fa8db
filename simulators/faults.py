"""Field faults of a PLC's Modbus interface, switched on and off while it runs.

* ``latency_s``: every reply is late by this much (a PLC whose scan is overloaded).
* ``silent``: requests are taken but never answered (a PLC that hangs; clients time out).
* ``reset()``: every open connection is torn down with a TCP reset, once (a gateway or
  switch that drops sessions); clients that reconnect are served again.

Awkward devices, each met in the field and each calling for one of the agent's device
options (docs/config.md, ``devices[]``). All are off at 0:

* ``min_request_gap_s``: a request that arrives less than this many seconds after the
  previous answer on its connection is dropped, never answered (a slow PLC comms card,
  an RS-485 converter still turning the line around). Needs
  ``pause_between_requests_s``.
* ``deaf_after_connect_s``: requests in the first seconds of a connection are dropped
  (a gateway that opens its serial side only after the TCP session). Needs
  ``delay_after_connect_s``.
* ``max_registers`` / ``max_bits``: a read of more registers (functions 3, 4) or bits
  (1, 2) than this is refused with exception 03, illegal data value (a small PLC below
  the protocol's 125 registers and 2000 bits). Needs ``max_registers`` / ``max_bits``.
* ``requests_per_connection``: after this many requests a connection is never answered
  again (a device that leaks or locks sessions); a new connection is served. Needs
  ``reconnect_every_cycle``.

The first two and the last are per connection: the server keeps a :class:`Session` for
each and asks :meth:`Faults.screen` before serving a request.

Exception 02 for undefined addresses needs no switch: the profile's gaps always answer it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

ILLEGAL_DATA_VALUE = 3
_REGISTER_READS = (3, 4)
_BIT_READS = (1, 2)
DROP = -1
"""What :meth:`Faults.screen` returns for a request that gets no answer at all."""


@dataclass(slots=True)
class Session:
    """What the connection-level faults need to know of one client connection."""

    opened_at: float
    answered_at: float | None = None
    requests: int = 0


@dataclass
class Faults:
    latency_s: float = 0.0
    min_request_gap_s: float = 0.0
    deaf_after_connect_s: float = 0.0
    max_registers: int = 0
    max_bits: int = 0
    requests_per_connection: int = 0
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

    @property
    def screens(self) -> bool:
        """Whether :meth:`screen` can refuse anything (false: serve without asking)."""
        return bool(
            self.min_request_gap_s
            or self.deaf_after_connect_s
            or self.max_registers
            or self.max_bits
            or self.requests_per_connection
        )

    def screen(self, session: Session, now: float, function_code: int, count: int) -> int:
        """What the awkward-device faults make of one request arriving at ``now`` (the
        server's clock, the one ``session`` was opened on): 0 to serve it, :data:`DROP`
        to leave it unanswered, or the Modbus exception code to answer."""
        session.requests += 1
        if self.requests_per_connection and session.requests > self.requests_per_connection:
            return DROP
        if self.deaf_after_connect_s and now - session.opened_at < self.deaf_after_connect_s:
            return DROP
        if (
            self.min_request_gap_s
            and session.answered_at is not None
            and now - session.answered_at < self.min_request_gap_s
        ):
            return DROP
        if self.max_registers and function_code in _REGISTER_READS and count > self.max_registers:
            return ILLEGAL_DATA_VALUE
        if self.max_bits and function_code in _BIT_READS and count > self.max_bits:
            return ILLEGAL_DATA_VALUE
        return 0

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
        return {
            "latency_s": self.latency_s,
            "silent": self.silent,
            "min_request_gap_s": self.min_request_gap_s,
            "deaf_after_connect_s": self.deaf_after_connect_s,
            "max_registers": self.max_registers,
            "max_bits": self.max_bits,
            "requests_per_connection": self.requests_per_connection,
        }
