"""systemd's notify protocol (``sd_notify(3)``), by hand: readiness, status, watchdog.

A service of ``Type=notify`` tells systemd it is ready (``READY=1``), what it is doing
(``STATUS=...``, shown by ``systemctl status``), that it is still alive
(``WATCHDOG=1``, with ``WatchdogSec=``) and that it is stopping (``STOPPING=1``), each a
datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``:
a path, or an abstract name written with a leading ``@``. Without ``$NOTIFY_SOCKET``
(a terminal, the tests, a container without systemd) every call is a no-op.

Written by hand because the protocol is one ``sendto`` of the standard library, and the
packages that wrap it are a poorer deal on a gateway (PyPI, checked with ``pip index
versions`` / ``pip download``, December 2026): ``sdnotify`` 0.3.2 (August 2017, the last
release; an sdist only, Python 2 era) connects once when created, swallows every error
with a bare ``except`` and has no watchdog helpers; ``systemd-python`` 235 has no wheels
at all, and ``cysystemd`` 2.0.5 only some (on the index used here: x86_64 with glibc
2.34+, none for aarch64 and Python 3.11): both otherwise build against libsystemd's
headers (``libsystemd-dev``, a C compiler) on the gateway, for about twenty lines of
Python.

The watchdog interval is ``$WATCHDOG_USEC`` (microseconds), meant for this process only
when ``$WATCHDOG_PID`` is unset or our pid (:func:`watchdog_interval`);
:func:`watchdog_forever` feeds it at half that interval, but only while the program's
own health check finds nothing wrong: a stuck loop that still runs the timer must not
keep the watchdog quiet.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


def _address() -> str | None:
    """``$NOTIFY_SOCKET`` as an AF_UNIX address (``@name``: abstract), None when unset
    or of a kind not spoken here (``vsock:``)."""
    name = os.environ.get("NOTIFY_SOCKET", "")
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields in one datagram; True when sent.

    Never raises and never blocks: a service manager that went away must not take the
    program with it, and one that does not read (its queue full) must not stop the
    event loop; the datagram is dropped then (a watchdog ping that cannot be delivered
    is as good as none).
    """
    address = _address()
    if address is None:
        return False
    message = "\n".join(fields).encode()
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    try:
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.debug("systemd notify failed", socket=os.environ.get("NOTIFY_SOCKET"), error=str(exc))
        return False
    return True


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line: the protocol is line-based


def ready(status: str | None = None) -> bool:
    """The service is up (``Type=notify``: systemd starts what waits for it now)."""
    return notify("READY=1", *([_status(status)] if status else []))


def status(text: str) -> bool:
    """One line ``systemctl status`` shows."""
    return notify(_status(text))


def watchdog() -> bool:
    """Still alive: resets ``WatchdogSec=``'s timer."""
    return notify("WATCHDOG=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """``WatchdogSec=`` in seconds when systemd watches this process, else None."""
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


async def watchdog_forever(
    problems: Callable[[], list[str]], interval_s: float | None = None
) -> None:
    """Feed the watchdog every half interval while ``problems()`` is empty.

    ``interval_s`` defaults to :func:`watchdog_interval`; without one this returns at
    once. While ``problems()`` names something (a stalled poll loop, say), no ping goes:
    systemd kills the service at the end of ``WatchdogSec=`` and ``Restart=`` starts it
    again. The first and the last such check are logged, not every one.
    """
    interval = watchdog_interval() if interval_s is None else interval_s
    if interval is None:
        return
    withheld: list[str] = []
    while True:
        found = problems()
        if not found:
            watchdog()
            if withheld:
                log.info("watchdog fed again", was=withheld)
        elif found != withheld:
            log.error("not feeding the systemd watchdog", problems=found, watchdog_s=interval)
        withheld = found
        await asyncio.sleep(interval / 2)
