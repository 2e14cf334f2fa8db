"""What every Derrick program's entry point does the same way."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


class _Shutdown(Exception):
    """Raised inside the TaskGroup to cancel every task on SIGINT/SIGTERM."""


async def run_until_signalled(start_tasks: Callable[[asyncio.TaskGroup], None]) -> None:
    """Run the program's tasks in one TaskGroup until SIGINT or SIGTERM.

    A task that fails ends the group (and so the program) with its exception; a signal
    ends it cleanly, so the caller's ``finally`` can say goodbye to brokers and servers.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as group:
            start_tasks(group)
            await stop.wait()
            raise _Shutdown
    except* _Shutdown:
        pass
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
