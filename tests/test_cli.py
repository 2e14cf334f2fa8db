"""The command-line skeleton every Derrick program shares (derrick.plumbing.cli.Program)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

from derrick.plumbing import cli, configfile, loops
from derrick.plumbing.cli import Program
from derrick.plumbing.configfile import StrictModel
from derrick.plumbing.logs import LogSettings
from derrick.plumbing.loops import EventLoopChoice


class Settings(StrictModel):
    port: int
    log: LogSettings = LogSettings()
    event_loop: EventLoopChoice = "asyncio"


class Broken(Exception):
    """A runtime failure the fake program declares."""


class FailureLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))


class Fake:
    """A tiny program: a config with a port, a ``--check`` report, a run that may fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fails: Exception | None = None) -> None:
        self.ran: list[Settings] = []
        self.loops: list[str] = []  # the loop each run ran on
        self.logging: list[tuple[str, str]] = []
        self.log = FailureLog()
        self.fails = fails
        monkeypatch.setattr(cli.logs, "configure", lambda *a: self.logging.append(a))
        self.program = Program(
            name="derrick-fake",
            description="A fake program.",
            epilog="examples:\n  derrick-fake --config fake.yaml",
            config_help="fake YAML config file",
            load=lambda args: configfile.load(args.config, Settings),
            check=self.check,
            run=self.run,
            failures=(Broken,),
            log=self.log,
            failed="fake failed",
            event_loop=lambda settings: settings.event_loop,
        )

    def check(self, args: argparse.Namespace, config: Settings) -> None:
        sys.stdout.write(f"{args.config}: ok, port {config.port}\n")

    async def run(self, config: Settings) -> None:
        self.ran.append(config)
        self.loops.append(loops.running_loop_name())
        if self.fails is not None:
            raise self.fails


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fake.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("port: many\n", "port", "valid integer"),
        ("port: 1\ncolour: red\n", "colour", "Extra inputs are not permitted"),
        ("{}\n", "port", "Field required"),
    ],
)
def test_a_bad_config_exits_2_naming_file_key_and_reason(
    tmp_path, monkeypatch, capsys, text, key, reason
):
    fake = Fake(monkeypatch)
    path = config(tmp_path, text)
    assert fake.program.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"derrick-fake: invalid config\n{path}: {key}: ")
    assert reason in err
    assert (fake.ran, fake.logging) == ([], [])


def test_an_unreadable_config_exits_2(tmp_path, monkeypatch, capsys):
    fake = Fake(monkeypatch)
    missing = tmp_path / "missing.yaml"
    assert fake.program.main(["--config", str(missing)]) == 2
    assert f"{missing}: cannot read file" in capsys.readouterr().err


def test_check_prints_the_report_and_exits_0_without_running(tmp_path, monkeypatch, capsys):
    fake = Fake(monkeypatch)
    path = config(tmp_path, "port: 1883\n")
    assert fake.program.main(["--config", str(path), "--check"]) == 0
    assert capsys.readouterr().out == f"{path}: ok, port 1883\n"
    assert (fake.ran, fake.logging) == ([], [])


def test_log_format_overrides_the_config(tmp_path, monkeypatch):
    fake = Fake(monkeypatch)
    path = config(tmp_path, "port: 1\nlog: {format: json, level: warning}\n")
    assert fake.program.main(["--config", str(path)]) == 0
    assert fake.program.main(["--config", str(path), "--log-format", "console"]) == 0
    assert fake.logging == [("json", "warning"), ("console", "warning")]
    assert [settings.port for settings in fake.ran] == [1, 1]


@pytest.mark.parametrize(
    ("choice", "runs_on"), [("auto", "uvloop 0."), ("uvloop", "uvloop 0."), ("asyncio", "asyncio")]
)
def test_the_program_runs_on_the_event_loop_its_config_names(
    tmp_path, monkeypatch, choice, runs_on
):
    fake = Fake(monkeypatch)
    path = config(tmp_path, f"port: 1\nevent_loop: {choice}\n")
    assert fake.program.main(["--config", str(path)]) == 0
    (ran_on,) = fake.loops
    assert ran_on.startswith(runs_on)


def test_without_uvloop_auto_runs_on_asyncio_and_uvloop_by_name_exits_2(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # not installed: import fails
    fake = Fake(monkeypatch)
    assert (
        fake.program.main(["--config", str(config(tmp_path, "port: 1\nevent_loop: auto\n"))]) == 0
    )
    assert fake.loops == ["asyncio"]
    path = config(tmp_path, "port: 1\nevent_loop: uvloop\n")
    assert fake.program.main(["--config", str(path)]) == 2
    assert fake.program.main(["--config", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "derrick-fake: invalid config\nevent_loop: uvloop is not installed" in err
    assert fake.loops == ["asyncio"]  # neither ran


def test_a_runtime_failure_is_logged_and_exits_1(tmp_path, monkeypatch):
    fake = Fake(monkeypatch, fails=Broken("broker gone"))
    assert fake.program.main(["--config", str(config(tmp_path, "port: 1\n"))]) == 1
    assert fake.log.lines == [("fake failed", {"error": "broker gone"})]


def test_a_runtime_failure_in_a_task_of_the_program_is_logged_and_exits_1(tmp_path, monkeypatch):
    """Stages run in one TaskGroup, which wraps what a task raises in an ExceptionGroup."""
    fake = Fake(monkeypatch)

    async def stages(config: Settings) -> None:
        async def stage() -> None:
            raise Broken("spool disk full")

        async with asyncio.TaskGroup() as group:
            group.create_task(stage())

    fake.program = dataclasses.replace(fake.program, run=stages)
    assert fake.program.main(["--config", str(config(tmp_path, "port: 1\n"))]) == 1
    assert fake.log.lines == [("fake failed", {"error": "spool disk full"})]


def test_an_undeclared_error_is_not_swallowed(tmp_path, monkeypatch):
    fake = Fake(monkeypatch, fails=KeyError("bug"))
    with pytest.raises(KeyError):
        fake.program.main(["--config", str(config(tmp_path, "port: 1\n"))])
    assert fake.log.lines == []


def test_usage_errors_exit_2_through_argparse(monkeypatch, capsys):
    fake = Fake(monkeypatch)
    with pytest.raises(SystemExit) as done:
        fake.program.main([])
    assert done.value.code == 2
    assert "usage: derrick-fake" in capsys.readouterr().err


def test_subcommands_get_the_whole_argv_before_any_parsing(monkeypatch):
    fake = Fake(monkeypatch)
    seen: list[list[str]] = []

    def accounts(argv: list[str]) -> int:
        seen.append(list(argv))
        return 7

    program = dataclasses.replace(fake.program, commands={"acl": accounts})
    assert program.main(["acl", "--operator", "ana"]) == 7
    assert seen == [["acl", "--operator", "ana"]]
    assert fake.ran == []


def test_a_program_without_a_config_file_declares_its_own_options(monkeypatch, capsys):
    """The simulator's shape: options only, a check of their combination, its own words
    for what cannot be built, logging from the options."""
    logging: list[tuple[str, str]] = []
    monkeypatch.setattr(cli.logs, "configure", lambda *a: logging.append(a))
    ran: list[int] = []

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--count", type=int, default=1)
        parser.add_argument("--log-level", default="info")

    def build(args: argparse.Namespace) -> int:
        if args.count > 3:
            raise ValueError(f"{args.count} devices: at most 3")
        return args.count

    async def run(count: int) -> None:
        ran.append(count)

    program = Program(
        name="derrick-toy",
        description="A toy.",
        epilog="",
        add_arguments=add_arguments,
        validate=lambda args: "--count must be positive" if args.count < 1 else None,
        load=build,
        invalid=(ValueError,),
        invalid_says="cannot build the toys",
        log_settings=lambda args, _count: ("json", args.log_level),
        run=run,
        failures=(),
        log=FailureLog(),
        failed="toy failed",
    )
    assert program.main(["--count", "2", "--log-level", "debug"]) == 0
    assert (ran, logging) == ([2], [("json", "debug")])
    assert program.main(["--count", "4"]) == 2
    assert capsys.readouterr().err == "derrick-toy: cannot build the toys\n4 devices: at most 3\n"
    with pytest.raises(SystemExit) as done:
        program.main(["--count", "0"])
    assert done.value.code == 2
    assert "derrick-toy: error: --count must be positive" in capsys.readouterr().err
    for absent in ("--config", "--check", "--log-format"):
        assert absent not in program.parser().format_help()


@pytest.mark.parametrize(
    ("module", "name", "options"),
    [
        ("agent.main", "derrick-agent", ["--config", "--check", "--log-format"]),
        ("collector.main", "derrick-collector", ["--config", "--check", "acl --help"]),
        ("simulators.main", "derrick-sim", ["--overload", "--log-level", "exit status"]),
        ("derrick.wire.spdecode", "derrick-sparkplug", ["--topic", "--hex", "mosquitto_sub"]),
    ],
)
def test_the_real_programs_help(capsys, module, name, options):
    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name} ")
    for option in options:
        assert option in out
