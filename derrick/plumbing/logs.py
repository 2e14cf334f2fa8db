"""structlog set-up, once per entry point.

A terminal gets readable ``key=value`` lines; anything else (a pipe, systemd, a file) gets
one JSON object per line. Context such as site, asset and device is bound with
``structlog.contextvars.bound_contextvars`` and appears on every line logged inside it.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

from derrick.plumbing.configfile import StrictModel

LogFormat = Literal["auto", "console", "json"]


class LogSettings(StrictModel):
    """The ``log`` section of every program's config."""

    format: LogFormat = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was set up: a
    program's ``main()`` run in-process (a test, an embedding) must not keep writing to
    a stream that was swapped out and closed since."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Configure structlog and route stdlib logging (pymodbus, paho) through it."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer]
        if use_json
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),
        # not cached: a later configure (another main() in the same process) applies to
        # module loggers already used; logging is for state changes, never per reading
        cache_logger_on_first_use=False,
    )
    # Libraries (pymodbus, paho) log through stdlib logging: same renderer, so a JSON log
    # stays JSON; keep their warnings, drop their chatter.
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
