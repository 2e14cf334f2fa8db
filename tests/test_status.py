"""``derrick-agent status`` (agent/status.py): devices, broker, spool, from local files.

The spool files here are written by the agent's own code (Outbox on a Spool opened from
the config, as the agent opens it), or by a real agent polling a simulator with no
broker to talk to (the integration test at the end), so its spool fills.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent import status
from agent.config import AgentConfig, load_config
from agent.outbox import Outbox
from derrick.spool.store import Priority
from derrick.wire.payloads import (
    AgentMetrics,
    DeviceCounters,
    DeviceState,
    QueueMetrics,
    Reading,
    now_ns,
)
from derrick.wire.topics import agent_metrics_topic
from devstack.programs import start_simulator, wait_for
from devstack.services import free_port

REPO = Path(__file__).resolve().parent.parent
AGENT, SITE = "gw-test", "yard"


def write_config(
    folder: Path,
    *,
    plc_port: int = 5020,
    broker_port: int = 1883,
    max_mb: float = 256,
    devices: tuple[str, ...] = ("lmi",),
) -> Path:
    listed = "\n".join(
        f"  - {{name: {name}, asset: crane-01, profile: crane, host: 127.0.0.1, "
        f"port: {plc_port}, unit_id: {n + 1}, interval_s: 0.5, timeout_s: 0.5}}"
        for n, name in enumerate(devices)
    )
    path = folder / "agent.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            agent: {{id: {AGENT}, site: {SITE}}}
            broker: {{host: 127.0.0.1, port: {broker_port}, reconnect_max_s: 1}}
            format: json
            spool: {{path: state/agent.db, max_mb: {max_mb}}}
            metrics_interval_s: 5
            log: {{format: json}}
            devices:
            """)
        + listed
        + "\n"
    )
    return path


@pytest.fixture
def config_file(tmp_path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def config(config_file) -> AgentConfig:
    return load_config(config_file)


def metrics(
    states: dict[str, str | None],
    *,
    connected: bool = True,
    depth: int = 0,
    oldest_age_s: float | None = None,
) -> AgentMetrics:
    return AgentMetrics(
        agent=AGENT,
        site=SITE,
        boot="b00t",
        ts_ns=now_ns(),
        uptime_s=250.0,
        broker_connected=connected,
        devices={
            name: DeviceCounters(state=state, cycles_ok=10, last_cycle_ms=12.5)
            for name, state in states.items()
        },
        queue=QueueMetrics(depth=depth, bytes=depth * 100, oldest_age_s=oldest_age_s),
        messages_published=42,
    )


def snapshot_of(config: AgentConfig) -> Path:
    path = status.snapshot_path(config.spool.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def run_status(capsys, config_file: Path, *args: str) -> tuple[int, str]:
    code = status.main(["status", "--config", str(config_file), *args])
    return code, capsys.readouterr().out


# ------------------------------------------------------------------ a running agent


def test_all_well_from_a_running_agent_s_snapshot(config, config_file, capsys):
    status.write_snapshot(snapshot_of(config), metrics({"lmi": "up"}), {"lmi": ""})
    code, out = run_status(capsys, config_file)
    assert code == 0, out
    assert "agent:   running  (pid" in out
    assert "broker:  connected" in out
    assert "devices: 1 of 1 up" in out
    assert "lmi  crane-01  up  last cycle 12 ms" in out
    assert "spool:   0 unsent" in out and "from the agent snapshot" in out
    assert out.endswith("OK\n")
    assert not Path(config.spool.path).exists()  # the spool was left alone


def test_a_down_device_fails_the_check_with_its_last_failure(config, config_file, capsys):
    status.write_snapshot(
        snapshot_of(config), metrics({"lmi": "down"}), {"lmi": "no reply within 0.5 s"}
    )
    code, out = run_status(capsys, config_file)
    assert code == 1
    assert "lmi  crane-01  DOWN  no reply within 0.5 s" in out
    assert "  - device lmi down: no reply within 0.5 s" in out


def test_a_device_not_polled_yet_is_not_all_well(config, config_file, capsys):
    status.write_snapshot(snapshot_of(config), metrics({"lmi": None}), {})
    code, out = run_status(capsys, config_file)
    assert code == 1
    assert "device lmi: not polled yet" in out


def test_a_disconnected_broker_and_a_backed_up_spool_are_problems(config, config_file, capsys):
    status.write_snapshot(
        snapshot_of(config),
        metrics({"lmi": "up"}, connected=False, depth=900, oldest_age_s=300.0),
        {},
    )
    code, out = run_status(capsys, config_file)
    assert code == 1
    assert "broker:  disconnected" in out
    assert "  - broker not connected" in out
    assert "spool backs up: oldest unsent message 5 min old (more than 60 s), 900 messages" in out
    # the threshold is the technician's to set
    status.write_snapshot(
        snapshot_of(config), metrics({"lmi": "up"}, depth=900, oldest_age_s=300.0), {}
    )
    assert run_status(capsys, config_file, "--max-oldest-s", "600")[0] == 0


def test_a_snapshot_that_stopped_moving_means_a_stuck_agent(config):
    status.write_snapshot(snapshot_of(config), metrics({"lmi": "up"}), {})
    later = time.time_ns() + int((status.STALE_AFTER_S + 5) * 1e9)
    report = status.build_report(config, now_ns=later)
    assert report.running == "stuck"
    assert report.broker == "unknown"  # what it said 35 s ago is no answer
    assert [line.state for line in report.devices] == ["up"]
    assert report.devices[0].age_s == pytest.approx(35, abs=2)
    assert report.problems[0].startswith("agent stuck: pid")


def test_json_report(config, config_file, capsys):
    status.write_snapshot(snapshot_of(config), metrics({"lmi": "up"}), {})
    code, out = run_status(capsys, config_file, "--json")
    report = json.loads(out)
    assert code == 0
    assert report["running"] == "running"
    assert report["devices"] == [
        {
            "name": "lmi",
            "asset": "crane-01",
            "state": "up",
            "detail": "last cycle 12 ms",
            "age_s": None,
        }
    ]
    assert report["spool"]["source"] == "agent snapshot"
    assert report["problems"] == []


def test_an_unreadable_config_exits_2(tmp_path, capsys):
    (tmp_path / "agent.yaml").write_text("agent: {id: gw}\n")
    code = status.main(["--config", str(tmp_path / "agent.yaml")])
    assert code == 2
    assert "derrick-agent status: invalid config" in capsys.readouterr().err


# ------------------------------------------------------------------ a stopped agent: its spool


def fill_spool(config: AgentConfig, *, readings: int = 3) -> None:
    """What an agent without a broker leaves in its spool: the device's status, its
    metrics, readings; written by the agent's own outbox."""
    with config.spool.open() as spool:
        outbox = Outbox(config.agent.id, config.agent.site, spool)
        outbox.put_device_status(
            "crane-01", "lmi", DeviceState.DOWN, "connection refused", "tcp://127.0.0.1:5020"
        )
        payload = metrics({"lmi": "down"}, connected=False, depth=1).model_dump_json().encode()
        outbox.put(agent_metrics_topic(config.agent.id), payload, Priority.TELEMETRY)
        for n in range(readings):
            reading = Reading(tag="hook_load", ts_ns=now_ns(), value=float(n), quality="good")
            outbox.put_readings("crane-01", "lmi", "crane", [reading])


def test_a_stopped_agent_s_spool_tells_what_it_left(config, config_file, capsys):
    fill_spool(config)
    # no snapshot at all: an agent that never kept one, or the files of another gateway
    report = status.build_report(config, now_ns=time.time_ns() + int(120e9))
    assert report.running == "not running"
    assert report.spool is not None
    assert report.spool.source == "spool file"
    assert report.spool.depth == 5
    assert report.spool.oldest_age_s == pytest.approx(120, abs=5)
    assert report.broker == "unknown"
    assert "said disconnected" in report.broker_detail
    [lmi] = report.devices
    assert (lmi.state, lmi.detail) == ("down", "connection refused")  # its status message
    assert lmi.age_s == pytest.approx(120, abs=5)
    assert report.problems == [
        "agent not running (no status snapshot beside the spool)",
        "device lmi down (120 s ago): connection refused",
        "spool backs up: oldest unsent message 120 s old (more than 60 s), 5 messages",
    ]
    code, out = run_status(capsys, config_file)
    assert code == 1
    assert "spool:   5 unsent" in out and "from the spool file" in out


def test_the_newest_of_snapshot_metrics_and_status_message_wins(config):
    fill_spool(config)
    path = snapshot_of(config)
    status.write_snapshot(path, metrics({"lmi": "up"}, connected=True), {})
    document = json.loads(path.read_text())
    document["pid"] = dead_pid()
    path.write_text(json.dumps(document))
    report = status.build_report(config)
    assert report.running == "not running"
    assert "gone" in report.running_detail
    assert report.devices[0].state == "up"  # the snapshot is newer than the spooled status
    assert "said connected" in report.broker_detail


def test_a_spool_in_use_is_left_alone_and_its_owner_undisturbed(config, config_file, capsys):
    """No snapshot, and a process (the agent's own Spool) holding the spool: the command
    says so at once, and the owner goes on writing."""
    with config.spool.open() as spool:
        outbox = Outbox(config.agent.id, config.agent.site, spool)
        outbox.put_device_status("crane-01", "lmi", DeviceState.UP, "", "tcp://127.0.0.1:5020")
        started = time.monotonic()
        code, out = run_status(capsys, config_file)
        took = time.monotonic() - started
        outbox.put_device_status("crane-01", "lmi", DeviceState.DOWN, "gone", "tcp://x")
        assert spool.depth == 2
    assert took < 2.0
    assert code == 1
    assert "locked by another process" in out
    assert "agent state unknown" in out


def test_a_spool_near_its_bound_is_a_problem(tmp_path):
    config = load_config(write_config(tmp_path, max_mb=0.01))  # 10 kB
    fill_spool(config, readings=40)
    report = status.build_report(config)
    [full] = [p for p in report.problems if p.startswith("spool nearly full")]
    assert "of 0.0 MB (spool.max_mb)" in full


def test_a_missing_spool_is_said(config):
    report = status.build_report(config)
    assert report.running == "not running"
    assert any("no spool file at" in problem for problem in report.problems)


# ------------------------------------------------------------------ the watchdog's check


def poller(name: str, dues: list[float], connection: object, requests: int = 3) -> SimpleNamespace:
    return SimpleNamespace(
        device=SimpleNamespace(name=name, timeout_s=1.0, retries=1),
        connection=connection,
        groups=[SimpleNamespace(due=due) for due in dues],
        requests_per_cycle=requests,
    )


def test_a_poll_loop_is_stalled_only_far_beyond_its_worst_cycle():
    link, other = object(), object()
    now = 10_000.0
    # one device alone: worst cycle 2 x 1 s x 2 attempts x (3 + 1) = 16 s; limit 120 s
    assert status.stalled_polls([poller("a", [now - 100, now + 1], link)], now) == []
    [stalled] = status.stalled_polls([poller("a", [now - 130, now + 1], link)], now)
    assert stalled == "device a: no poll cycle finished for 130 s (limit 120 s)"
    # ten devices behind one gateway wait for each other: 160 s, limit 480 s
    fleet = [poller(f"d{n}", [now - 400], link) for n in range(10)]
    assert status.stalled_polls([*fleet, poller("x", [now - 130], other)], now) == [
        "device x: no poll cycle finished for 130 s (limit 120 s)"
    ]
    # a poll task not started yet (due 0) is not stalled
    assert status.stalled_polls([poller("new", [0.0], link)], now) == []
    # a device that needs pauses: (2 x 1 + 9) x 2 x 4 + 30 = 118 s, limit 354 s
    slow = poller("slow", [now - 300], link)
    slow.device.pause_between_requests_s, slow.device.delay_after_connect_s = 9.0, 30.0
    assert status.stalled_polls([slow], now) == []
    slow.groups[0].due = now - 360
    assert status.stalled_polls([slow], now) == [
        "device slow: no poll cycle finished for 360 s (limit 354 s)"
    ]


def test_the_snapshot_task_writes_and_tells_systemd(config, monkeypatch, tmp_path):
    health = SimpleNamespace(
        snapshot=lambda: metrics({"lmi": "up"}, depth=3, oldest_age_s=1.5),
        pollers={"lmi": SimpleNamespace(last_failure="")},
    )
    path = snapshot_of(config)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))

        async def run() -> None:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(status.keep_snapshot_forever(health, path, 0.05), 0.2)

        asyncio.run(run())
        sock.settimeout(1)
        line = sock.recv(4096).decode()
    assert line == "STATUS=1/1 devices up; broker connected; spool 3 unsent, oldest 1.5 s"
    snapshot = status.read_snapshot(path)
    assert snapshot is not None
    assert snapshot.pid == os.getpid()
    assert snapshot.metrics.queue.depth == 3
    assert not list(path.parent.glob(".*.tmp"))  # replaced atomically, nothing left over


# ------------------------------------------------------------------ a real agent


RUNNER = """\
import sys
from functools import partial

from agent import main as agent_main, status

# the real agent, its snapshot every 0.5 s instead of 5 (the test waits for it)
status.keep_snapshot_forever = partial(status.keep_snapshot_forever, every_s=0.5)
sys.exit(agent_main.main(sys.argv[1:]))
"""


def listen(sock: socket.socket, told: list[str]) -> None:
    """What systemd does with NOTIFY_SOCKET: read every datagram (until shut down)."""
    while message := sock.recv(4096):
        told.append(message.decode())


@pytest.mark.integration
def test_status_of_a_real_agent_with_no_broker(tmp_path):
    """An agent polls a simulator while nothing listens on its broker port: its spool
    fills. ``status`` while it runs (from its snapshot, the spool untouched, the agent
    undisturbed) and after it stopped (from the spool file)."""
    sim = start_simulator(tmp_path, "--no-demo-overload")
    config_file = write_config(tmp_path, plc_port=sim.port, broker_port=free_port())
    config = load_config(config_file)
    runner = tmp_path / "run_agent.py"
    runner.write_text(RUNNER)
    log = (tmp_path / "agent.log").open("wb")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # as systemd: NOTIFY_SOCKET
    systemd.bind(str(tmp_path / "notify"))
    told: list[str] = []
    listener = threading.Thread(target=listen, args=(systemd, told), daemon=True)
    listener.start()
    agent = subprocess.Popen(
        [sys.executable, str(runner), "--config", str(config_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "NOTIFY_SOCKET": str(tmp_path / "notify"),
            "WATCHDOG_USEC": "2000000",  # WatchdogSec=2s: fed every second
        },
    )

    def ask(*args: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "agent.status", "--config", str(config_file), *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            check=False,
        )
        return done.returncode, done.stdout + done.stderr

    def tail() -> str:
        return (tmp_path / "agent.log").read_text(errors="replace")[-3000:]

    try:

        def up_and_spooling() -> dict | None:
            assert agent.poll() is None, tail()
            _, out = ask("--json")
            report = json.loads(out)
            spool = report["spool"] or {}
            states = [d["state"] for d in report["devices"]]
            ready = report["running"] == "running" and states == ["up"]
            return report if ready and spool.get("depth", 0) > 10 else None

        report = wait_for(up_and_spooling, 30, "agent up, spool filling")
        assert report["broker"] == "disconnected"
        assert report["problems"] == ["broker not connected"]
        code, out = ask()
        assert code == 1
        assert "lmi  crane-01  up  last cycle" in out
        # a metrics message goes into the spool after metrics_interval_s
        time.sleep(5.5)
        assert agent.poll() is None, tail()
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(20) == 0, tail()
        log.close()
        sim.program.stop()
    assert "spool" in tail() and "SpoolError" not in tail()
    systemd.shutdown(socket.SHUT_RDWR)
    listener.join(5)
    systemd.close()
    assert told[0] == "READY=1\nSTATUS=1 devices; spool 0 unsent"
    assert told.count("WATCHDOG=1") >= 8  # 11 s at one a second
    assert "STATUS=1/1 devices up; broker NOT connected; spool" in "\n".join(told)
    assert told[-1] == "STOPPING=1"

    code, out = ask("--json")
    report = json.loads(out)
    assert code == 1
    assert report["running"] == "not running"
    assert "gone" in report["running_detail"]
    assert report["spool"]["source"] == "spool file"
    assert report["spool"]["depth"] > 10
    assert report["spool"]["oldest_age_s"] > 5
    assert report["broker"] == "unknown"
    assert "said disconnected" in report["broker_detail"]
    assert [d["state"] for d in report["devices"]] == ["up"]
    assert config.spool.path.exists()
