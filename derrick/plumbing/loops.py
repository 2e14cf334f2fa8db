"""The event loop a program runs on: uvloop where it is installed, asyncio's own otherwise.

The only module that imports ``uvloop`` (MagicStack's libuv-based loop, a drop-in
``asyncio`` event loop, also what uvicorn picks when it is there). Derrick's agent is
event-loop bound on small PLCs: every Modbus request is a socket write, a wake-up, a
read and a future, every PUBACK another wake-up. Measured on 20 PLCs of 11 tags
(bench/small_plc.py and bench/modbus_client.py, runs alternated in one session): the
Modbus client's CPU per request 39.9 us on asyncio's loop, 26.8 on uvloop; the whole
agent's CPU per reading 37-40 us against 30-34. The collector gains nothing measurable
(bench/collector_small.py: 1.97-2.00 against 1.92-2.02 us per reading; its time goes to
decoding, not to the loop), so it stays on asyncio's loop.

uvloop comes with the agent's extra on Linux x86-64 and aarch64, where it ships wheels;
elsewhere (a 32-bit ARM gateway, say) ``auto`` runs asyncio's loop, which behaves the
same, only slower.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

EventLoopChoice = Literal["auto", "uvloop", "asyncio"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class EventLoopUnavailable(RuntimeError):
    """``uvloop`` asked for by name, and not installed."""


def loop_factory(choice: EventLoopChoice) -> LoopFactory | None:
    """The factory for ``asyncio.Runner`` (None: asyncio's own loop); ``uvloop`` by name
    and not installed raises. :func:`running_loop_name` says which one runs."""
    if choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional: present only where it has wheels
    except ImportError as exc:
        if choice == "uvloop":
            raise EventLoopUnavailable(
                "event_loop: uvloop is not installed (pip install uvloop, or "
                "event_loop: auto to run on asyncio's own loop)"
            ) from exc
        return None
    return uvloop.new_event_loop


def running_loop_name() -> str:
    """The running loop's name and version (for a start-up log line)."""
    loop = asyncio.get_running_loop()
    if type(loop).__module__.split(".")[0] != "uvloop":
        return "asyncio"
    import uvloop  # noqa: PLC0415 - running on it: installed

    return f"uvloop {uvloop.__version__}"
