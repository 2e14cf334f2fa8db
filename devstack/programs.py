"""Run Derrick's own programs (simulator, agent, collector) as subprocesses.

Used by the end-to-end tests and by ``make run``: each program's output goes to a log
file, and stopping is SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from devstack.services import free_port, free_port_block

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = {"sim": "simulators.main", "agent": "agent.main", "collector": "collector.main"}


class Program:
    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Program:
        cmd = [sys.executable, "-m", PROGRAMS[self.name], *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
            )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Program:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def http_json(url: str, body: dict | None = None, timeout: float = 5.0) -> dict:
    """GET (body None) or POST JSON to a loopback control endpoint."""
    data = None if body is None else json.dumps(body).encode()
    if not url.startswith("http://127."):
        raise ValueError(f"control endpoints are loopback only: {url}")
    request = urllib.request.Request(  # noqa: S310 - loopback checked above
        url,
        data=data,
        method="GET" if data is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read() or b"{}")


def wait_for(
    check, timeout: float, what: str, interval: float = 0.1, program: Program | None = None
):
    """Poll ``check()`` until it returns something truthy; TimeoutError names ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if program is not None and not program.alive:
            raise RuntimeError(
                f"{program.name} exited while waiting for {what}:\n{program.log_tail()}"
            )
        try:
            result, last_error = check(), None
        except (OSError, ValueError, LookupError, RuntimeError) as exc:  # not there yet
            last_error, result = exc, None
        if result:
            return result
        time.sleep(interval)
    detail = f" (last error: {last_error})" if last_error else ""
    tail = f"\n{program.log_tail()}" if program else ""
    raise TimeoutError(f"{what}: not within {timeout} s{detail}{tail}")


@dataclass(frozen=True)
class Simulator:
    program: Program
    port: int  # Modbus TCP
    control: str  # control API URL


def start_simulator(log_dir: Path, *args: str, port: int | None = None) -> Simulator:
    """derrick-sim on loopback (free ports unless ``port``); returns when it answers."""
    modbus_port = port or free_port()
    control_port = free_port()
    program = Program(
        "sim",
        [
            "--port",
            str(modbus_port),
            "--control-port",
            str(control_port),
            "--log-format",
            "json",
            *args,
        ],
        log_dir / "sim.log",
    ).start()
    control = f"http://127.0.0.1:{control_port}"
    wait_for(lambda: http_json(f"{control}/health"), 30, "simulator control", program=program)
    return Simulator(program, modbus_port, control)


@dataclass(frozen=True)
class Pipeline:
    site: str
    agent: Program
    collector: Program

    def stop(self) -> dict[str, tuple[int | None, str]]:
        """Stop both; exit code and log tail of each (a clean shutdown exits 0)."""
        return {p.name: (p.stop(), p.log_tail()) for p in (self.agent, self.collector)}


def start_pipeline(
    log_dir: Path,
    broker_port: int,
    influx: dict,
    plc_port: int,
    *,
    interval_s: float = 0.2,
    timeout_s: float = 0.5,
    metrics_interval_s: float = 30,
    alarms: dict | None = None,
    site: str | None = None,
    wire: str = "json",
    event_loop: str = "auto",
    collector_extra: dict | None = None,
) -> Pipeline:
    """Agent and collector (with the shipped crane rules, and ``alarms`` settings on
    top) for a fresh site name, so runs sharing a broker and InfluxDB never mix.
    ``wire``: the agent's ``format`` (json or sparkplug); ``event_loop``: the agent's
    (auto, uvloop or asyncio). ``collector_extra``: more
    top-level sections of the collector's config (``etcd``...); its ``collector`` keys
    join the id."""
    site = site or f"t{uuid.uuid4().hex[:8]}"
    broker = {"host": "127.0.0.1", "port": broker_port, "reconnect_max_s": 2}
    agent_cfg = write_yaml(
        log_dir / "agent.yaml",
        {
            "agent": {"id": f"gw-{site}", "site": site},
            "broker": broker,
            "format": wire,
            "event_loop": event_loop,
            "devices": [
                {
                    "name": "lmi",
                    "asset": "crane-01",
                    "profile": "crane",
                    "host": "127.0.0.1",
                    "port": plc_port,
                    "interval_s": interval_s,
                    "timeout_s": timeout_s,
                }
            ],
            "spool": {"path": str(log_dir / "agent-spool.db")},
            "metrics_interval_s": metrics_interval_s,
            "log": {"format": "json"},
        },
    )
    extra = dict(collector_extra or {})
    collector_cfg = write_yaml(
        log_dir / "collector.yaml",
        {
            "collector": {"id": f"col-{site}", **extra.pop("collector", {})},
            "broker": broker,
            "influx": influx,
            "batch": {"max_lines": 500, "max_delay_s": 0.1},
            "alarms": {
                "rules": [str(REPO / "config" / "alarm-rules" / "crane.yaml")],
                "state": str(log_dir / "alarms.db"),
                **(alarms or {}),
            },
            "stats_interval_s": 1,
            "log": {"format": "json"},
            **extra,
        },
    )
    collector = Program(
        "collector", ["--config", str(collector_cfg)], log_dir / "collector.log"
    ).start()
    agent = Program("agent", ["--config", str(agent_cfg)], log_dir / "agent.log").start()
    return Pipeline(site, agent, collector)


def start_fleet(tmp_path: Path, cranes: int, *extra: str) -> tuple[Program, int, int]:
    """derrick-sim with ``cranes`` cranes on consecutive ports; (program, first Modbus port,
    first control port)."""
    base = free_port_block(cranes)
    control = free_port_block(cranes)
    program = Program(
        "sim",
        [
            "--cranes",
            str(cranes),
            "--port",
            str(base),
            "--control-port",
            str(control),
            "--log-format",
            "json",
            *extra,
        ],
        tmp_path / "fleet.log",
    ).start()
    wait_for(lambda: '"fleet ready"' in program.log_tail(5), 60, "fleet ready", program=program)
    return program, base, control
