"""Blocking calls off the event loop, in threads that never hold up the program's exit.

Written by hand because the standard ways do hold it up: ``asyncio.to_thread`` and
``ThreadPoolExecutor`` run their calls in non-daemon threads that the interpreter joins
at exit, so a call blocked on a peer that stopped answering (an InfluxDB frozen mid-write,
a webhook receiver that accepts and never replies) keeps a stopped program alive until
the call's own timeout - SIGTERM then seems ignored. A program whose state is durable
before it acknowledges anything loses nothing by leaving such a call behind: here the
threads are daemons, and :meth:`DaemonThreads.close` lets them go.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]


class DaemonThreads:
    """Up to ``workers`` daemon threads, started on first use, running submitted calls.

    One worker (the default) runs the calls in the order submitted, one at a time: what a
    client holding one kept-alive connection needs.
    """

    def __init__(self, name: str, workers: int = 1) -> None:
        self._name = name
        self._workers = workers
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def run(self, func: Callable[..., _T], *args: object) -> _T:
        """``func(*args)`` in a worker thread; cancelling the await leaves the call to
        finish (or hang) on its own."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._start_worker()
        self._jobs.put((loop, future, functools.partial(func, *args)))
        return await future

    def close(self) -> None:
        """Let the threads go once their current call returns; later calls start new ones."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        self._jobs = queue.SimpleQueue()

    def _start_worker(self) -> None:
        with self._lock:
            if len(self._threads) >= self._workers:
                return
            thread = threading.Thread(
                target=_work,
                args=(self._jobs,),
                name=f"{self._name}-{len(self._threads)}",
                daemon=True,
            )
            self._threads.append(thread)
        thread.start()


def _work(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        loop, future, call = job
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            _settle(loop, future, None, exc)
        else:
            _settle(loop, future, result, None)


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: object,
    error: BaseException | None,
) -> None:
    def settle() -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)
