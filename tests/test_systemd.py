"""The systemd units (config/systemd/) and the notify protocol (derrick.plumbing.sdnotify).

``systemd-analyze verify`` loads a unit file the way systemd would and prints every
problem it finds: unknown keys or sections, bad values, missing dependencies, and
``ExecStart=``-like commands that do not exist or are not executable. It needs no
running systemd. The shipped units name ``/opt/derrick/venv/bin/...``, which a test
machine lacks, so each is verified as a copy pointed at this checkout's venv (the
install guide's test, tests/test_install_guide.py, does the same with a venv built from
the wheel).
"""

from __future__ import annotations

import asyncio
import configparser
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from derrick.plumbing import sdnotify

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "config" / "systemd"
AGENT_UNIT = UNITS / "derrick-agent.service"
COLLECTOR_UNIT = UNITS / "derrick-collector.service"
SYSUSERS = UNITS / "derrick.sysusers.conf"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
INSTALLED_BIN = "/opt/derrick/venv/bin/"
PROGRAMS = [(AGENT_UNIT, "agent"), (COLLECTOR_UNIT, "collector")]


def pointed_at(unit: Path, bin_dir: Path, etc: Path) -> str:
    """The unit's text with the installed paths replaced: the programs from ``bin_dir``,
    the config files from ``etc`` (instead of /etc/derrick)."""
    text = unit.read_text()
    assert INSTALLED_BIN in text and "/etc/derrick/" in text
    return text.replace(INSTALLED_BIN, f"{bin_dir}/").replace("/etc/derrick/", f"{etc}/")


def verify(text: str, name: str, where: Path) -> str:
    """``systemd-analyze verify`` of a unit with ``text``, saved as ``where/name``;
    returns everything it printed (nothing: no problem found)."""
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    where.mkdir(parents=True, exist_ok=True)
    path = where / name
    path.write_text(text)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 or output, f"verify failed silently ({done.returncode})"
    return output


def venv_bin() -> Path:
    return Path(sys.executable).parent


# ------------------------------------------------------------------ systemd-analyze verify


@pytest.mark.parametrize(
    ("unit", "program"), [(AGENT_UNIT, "agent"), (COLLECTOR_UNIT, "collector")]
)
def test_the_unit_passes_systemd_analyze_verify(unit, program, tmp_path):
    assert (venv_bin() / f"derrick-{program}").exists()
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / f"{program}.yaml").write_text("# not read by verify\n")
    output = verify(pointed_at(unit, venv_bin(), etc), unit.name, tmp_path / "units")
    assert output == "", output


def test_verify_finds_what_is_wrong(tmp_path):
    """The check above can fail: a misspelt key and a program that is not there."""
    etc = tmp_path / "etc"
    text = pointed_at(AGENT_UNIT, tmp_path / "nowhere", etc)
    text = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    output = verify(text, AGENT_UNIT.name, tmp_path / "units")
    assert "NoNewPrivilege" in output
    assert "nowhere/derrick-agent" in output


def test_the_sysusers_file_makes_the_derrick_user(tmp_path):
    """systemd-sysusers, in a scratch root, creates the user the units run as."""
    sysusers = shutil.which("systemd-sysusers") or "/usr/bin/systemd-sysusers"
    if not Path(sysusers).exists():
        pytest.fail("systemd-sysusers is missing: apt-get install systemd")
    (tmp_path / "etc").mkdir()
    done = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    group = (tmp_path / "etc" / "group").read_text()
    [user] = [line for line in passwd.splitlines() if line.startswith("derrick:")]
    assert user.endswith(":/var/lib/derrick:/usr/sbin/nologin")
    assert any(line.startswith("derrick:") for line in group.splitlines())


# ------------------------------------------------------------------ what the units say


def parse(unit: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(unit.read_text())
    return parser


COMMON = {
    "Type": "notify",
    "NotifyAccess": "main",
    "Restart": "on-failure",
    "User": "derrick",
    "Group": "derrick",
    "StateDirectory": "derrick",
    "ReadWritePaths": "/var/lib/derrick",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "ProtectProc": "invisible",
}


@pytest.mark.parametrize(
    ("unit", "program"), [(AGENT_UNIT, "agent"), (COLLECTOR_UNIT, "collector")]
)
def test_the_unit_runs_the_installed_program_hardened(unit, program):
    parsed = parse(unit)
    service = parsed["Service"]
    for key, value in COMMON.items():
        assert service.get(key) == value, f"{unit.name}: {key}={service.get(key)!r}"
    command = f"/opt/derrick/venv/bin/derrick-{program} --config /etc/derrick/{program}.yaml"
    assert service["ExecStart"] == command
    assert service["ExecStartPre"] == f"{command} --check"
    assert service["EnvironmentFile"] == f"-/etc/derrick/{program}.env"
    assert 5 <= seconds(service["RestartSec"]) <= 60
    unit_section = parsed["Unit"]
    assert seconds(unit_section["StartLimitIntervalSec"]) >= 60
    assert int(unit_section["StartLimitBurst"]) >= 3
    assert "network-online.target" in unit_section["Wants"]
    # strict=False kept the last of repeated keys; the system call filter is both lines
    assert all_values(unit, "SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    assert parsed["Install"]["WantedBy"] == "multi-user.target"
    # no secret in a world-readable unit: passwords come from files or agent.env
    assert "Environment" not in service
    assert "PASSWORD" not in "".join(
        f"{k}={v}" for k, v in service.items() if k != "EnvironmentFile"
    )


def test_the_agent_unit_has_a_watchdog_and_the_serial_ports():
    service = parse(AGENT_UNIT)["Service"]
    assert 10 <= seconds(service["WatchdogSec"]) <= 120
    assert service["SupplementaryGroups"] == "dialout"
    # a device allow-list or PrivateDevices would lock the RTU ports out (unit comment)
    assert "PrivateDevices" not in service and "DevicePolicy" not in service
    assert "ProtectClock" not in service  # it implies a device allow-list


def test_the_collector_unit_has_no_devices_and_no_watchdog():
    service = parse(COLLECTOR_UNIT)["Service"]
    assert service["PrivateDevices"] == "yes"
    assert "SupplementaryGroups" not in service
    assert "WatchdogSec" not in service  # the collector does not feed one


def all_values(unit: Path, key: str) -> list[str]:
    """Every value of a key given more than once (systemd adds them up)."""
    return [
        line.split("=", 1)[1]
        for line in unit.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


@pytest.mark.parametrize(("unit", "program"), PROGRAMS)
def test_the_unit_s_exposure_is_low(unit, program, tmp_path):
    """systemd's own score of the sandbox (0 tight .. 10 open), offline: at most 2.5."""
    copy = tmp_path / unit.name
    copy.write_text(pointed_at(unit, venv_bin(), tmp_path))
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=25", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert f"Overall exposure level for {unit.name}:" in done.stdout


def seconds(value: str) -> float:
    """A systemd time span as used here: 30, 30s, 10min."""
    for suffix, factor in (("min", 60), ("s", 1)):
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * factor
    return float(value)


# ------------------------------------------------------------------ the notify protocol


@pytest.fixture
def notify_socket(monkeypatch, tmp_path):
    """A datagram socket bound to a path, named in $NOTIFY_SOCKET as systemd does."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


@pytest.fixture
def abstract_socket(monkeypatch):
    """The same on an abstract name: ``@name`` in $NOTIFY_SOCKET."""
    name = f"derrick-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_watchdog_and_stopping_reach_the_socket(notify_socket):
    assert sdnotify.ready("3 devices,\n spool open")
    assert received(notify_socket) == ["READY=1", "STATUS=3 devices, spool open"]
    assert sdnotify.status("2/3 devices up")
    assert received(notify_socket) == ["STATUS=2/3 devices up"]
    assert sdnotify.watchdog()
    assert received(notify_socket) == ["WATCHDOG=1"]
    assert sdnotify.stopping()
    assert received(notify_socket) == ["STOPPING=1"]


def test_an_abstract_socket_name_is_reached(abstract_socket):
    assert sdnotify.ready()
    assert received(abstract_socket) == ["READY=1"]


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.ready()
    assert not sdnotify.watchdog()
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # a kind not spoken here
    assert not sdnotify.ready()


def test_a_socket_that_went_away_is_not_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not sdnotify.ready()


def test_a_service_manager_that_does_not_read_never_blocks_the_sender(notify_socket):
    """A datagram socket's queue is short (net.unix.max_dgram_qlen, 10 by default):
    once it is full, further messages are dropped, not waited for."""
    sent = [sdnotify.watchdog() for _ in range(1000)]
    assert sent[0]
    assert not all(sent)
    assert received(notify_socket) == ["WATCHDOG=1"]


def test_the_watchdog_interval_is_this_process_s(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert sdnotify.watchdog_interval() is None


def test_the_watchdog_is_fed_only_while_nothing_is_wrong(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: fed every 0.05 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notify_socket.setblocking(False)
    problems: list[str] = []

    def drain() -> int:
        count = 0
        while True:
            try:
                assert notify_socket.recv(100) == b"WATCHDOG=1"
            except BlockingIOError:
                return count
            count += 1

    async def scenario() -> tuple[int, int, int]:
        task = asyncio.create_task(sdnotify.watchdog_forever(lambda: problems))
        await asyncio.sleep(0.3)
        healthy = drain()
        problems.append("device lmi: no poll cycle finished for 5 min")
        await asyncio.sleep(0.06)  # a ping may have been on its way
        drain()
        await asyncio.sleep(0.3)
        stalled = drain()
        problems.clear()
        await asyncio.sleep(0.3)
        again = drain()
        task.cancel()
        return healthy, stalled, again

    healthy, stalled, again = asyncio.run(scenario())
    assert healthy >= 3
    assert stalled == 0
    assert again >= 3


def test_the_watchdog_task_ends_when_systemd_watches_none(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    asyncio.run(asyncio.wait_for(sdnotify.watchdog_forever(list), 1))
