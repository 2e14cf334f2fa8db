"""Serial-port plumbing shared by the agent's and the simulator's Modbus boundaries.

Standard library only: it neither imports pyserial nor pymodbus, it walks a traceback.
"""

from __future__ import annotations

try:
    from termios import error as TtyError  # a tty refusing settings (not an OSError)
except ImportError:  # pragma: no cover - not POSIX

    class TtyError(Exception):  # type: ignore[no-redef]
        """Stands in for termios.error where there is no termios."""


__all__ = ["TtyError", "close_refused_port"]


def close_refused_port(exc: BaseException) -> None:
    """Close the serial port pyserial opened (and locked) before the tty refused a setting.

    pymodbus' half-built serial transport (its ``sync_serial``) is reachable only from the
    traceback of ``exc``; left to the garbage collector, its exclusive lock would fail the
    next try as "port in use". (A Linux pty refuses parity E or O.)
    """
    tb = exc.__traceback__
    while tb is not None:
        port = getattr(tb.tb_frame.f_locals.get("self"), "sync_serial", None)
        if port is not None:
            port.close()
        tb = tb.tb_next
