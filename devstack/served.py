"""An operator API served on its own event loop in a thread, for synchronous callers.

Tests and benches drive the alarm API and the console with blocking HTTP clients (and
a real browser), so the server cannot share their thread: it runs on a loop of its own
in a daemon thread while the ``with`` block runs, on a free loopback port
(``HttpApiSettings(port=0)``; the port it got is :attr:`ServedApi.port`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, Self


class Startable(Protocol):
    async def start(self) -> int: ...

    async def close(self) -> None: ...


class ServedApi:
    """``api`` started on its own loop in a daemon thread while the ``with`` block runs."""

    def __init__(self, api: Startable, timeout_s: float = 30.0) -> None:
        self.api = api
        self.timeout_s = timeout_s
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the API's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout_s)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` on the API's loop (what must not run on another thread)."""
        self.loop.call_soon_threadsafe(callback)

    def close(self) -> None:
        """Stop serving (again: harmless); the loop runs on until the block ends."""
        self.run(self.api.close())

    def __enter__(self) -> Self:
        self.thread.start()
        try:
            self.port = self.run(self.api.start())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self.close()
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()
