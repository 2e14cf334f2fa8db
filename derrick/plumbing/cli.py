"""What every Derrick program's entry point does the same way.

:class:`Program` is the command line of derrick-agent, derrick-collector and derrick-sim:
parse the arguments, load the configuration (exit 2 naming file, key and reason), print
the ``--check`` report (exit 0), set up logging, run until a signal (exit 0) or a runtime
failure (logged, exit 1). :func:`run_until_signalled` runs a program's tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from derrick.plumbing import logs, loops
from derrick.plumbing.configfile import ConfigError

C = TypeVar("C")

LOG_FORMATS = ["auto", "console", "json"]


class _FailureLog(Protocol):
    def error(self, event: str, **kw: Any) -> Any: ...


def config_log(args: argparse.Namespace, config: Any) -> tuple[logs.LogFormat, str]:
    """``--log-format`` if given, else the config's ``log`` section."""
    return args.log_format or config.log.format, config.log.level


@dataclass(frozen=True)
class Program(Generic[C]):
    """One program's command line; :meth:`main` is its console script.

    With ``config_help`` the program reads a YAML config file: ``--config`` (required),
    ``--check`` (when ``check`` is given) and ``--log-format`` are added, and ``load``
    reads ``args.config``. Without it, ``add_arguments`` declares every option and
    ``load`` builds what ``run`` needs from the arguments alone.
    """

    name: str
    """As typed by the user (``derrick-agent``): usage lines and error messages say it."""
    description: str
    epilog: str
    load: Callable[[argparse.Namespace], C]
    """The configuration (or whatever ``run`` takes); raises one of ``invalid``."""
    run: Callable[[C], Coroutine[Any, Any, None]]
    """The program itself, inside ``asyncio.run``; returns after SIGINT/SIGTERM."""
    failures: tuple[type[Exception], ...]
    """Runtime errors that end the program with exit status 1 and one log line."""
    log: _FailureLog
    failed: str
    """The event logged on one of ``failures``, e.g. ``"agent failed"``."""
    config_help: str | None = None
    check: Callable[[argparse.Namespace, C], None] | None = None
    """``--check``: print what the loaded config amounts to (exit 0 without running)."""
    check_help: str = "validate the config and exit"
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    validate: Callable[[argparse.Namespace], str | None] | None = None
    """What is wrong with a combination of options, if anything: a usage error (exit 2)."""
    commands: Mapping[str, Callable[[Sequence[str]], int]] = field(default_factory=dict)
    """Subcommands (``derrick-collector acl ...``): given the whole argv, their own CLI."""
    invalid: tuple[type[Exception], ...] = (ConfigError,)
    invalid_says: str = "invalid config"
    log_settings: Callable[[argparse.Namespace, C], tuple[logs.LogFormat, str]] = config_log
    event_loop: Callable[[C], loops.EventLoopChoice] | None = None
    """The config's choice of event loop (:mod:`derrick.plumbing.loops`); None: asyncio's."""

    def main(self, argv: Sequence[str] | None = None) -> int:
        """The exit status: 0 after a signal or ``--check``, 1 on a runtime failure, 2 on
        an invalid config (usage errors exit 2 through argparse)."""
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv and argv[0] in self.commands:
            return self.commands[argv[0]](argv)
        args = self.parse_args(argv)
        try:
            config = self.load(args)
        except self.invalid as exc:
            sys.stderr.write(f"{self.name}: {self.invalid_says}\n{exc}\n")
            return 2
        try:
            factory = self._loop_factory(config)
        except loops.EventLoopUnavailable as exc:
            sys.stderr.write(f"{self.name}: {self.invalid_says}\n{exc}\n")
            return 2
        if self.check is not None and args.check:
            try:  # a check may read more than the config (a users file, say)
                self.check(args, config)
            except self.invalid as exc:
                sys.stderr.write(f"{self.name}: {self.invalid_says}\n{exc}\n")
                return 2
            return 0
        logs.configure(*self.log_settings(args, config))
        return self.run_logged(config, factory)

    def _loop_factory(self, config: C) -> loops.LoopFactory | None:
        if self.event_loop is None:
            return None
        return loops.loop_factory(self.event_loop(config))

    def run_logged(self, config: C, loop_factory: loops.LoopFactory | None = None) -> int:
        """Run (on the loop ``loop_factory`` makes; None: asyncio's); a declared failure
        is logged (one line each) and exits 1, also when it comes out of the program's
        TaskGroup wrapped in an ExceptionGroup."""
        failed: list[BaseException] = []
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(self.run(config))
        except* self.failures as group:
            failed = leaves(group)
        for exc in failed:
            self.log.error(self.failed, error=str(exc))
        return 1 if failed else 0

    def parse_args(self, argv: Sequence[str]) -> argparse.Namespace:
        parser = self.parser()
        args = parser.parse_args(argv)
        problem = self.validate(args) if self.validate is not None else None
        if problem:
            parser.error(problem)
        return args

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=self.name,
            description=self.description,
            epilog=self.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if self.config_help is not None:
            add = parser.add_argument
            add("--config", type=Path, required=True, help=self.config_help)
            if self.check is not None:
                add("--check", action="store_true", help=self.check_help)
            add("--log-format", choices=LOG_FORMATS, help="override log.format from the config")
        if self.add_arguments is not None:
            self.add_arguments(parser)
        return parser


def leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions of a (nested) group, in order."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


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
