"""A whole alarm pipeline on loopback, one simulated PLC per asset, for end-to-end tests.

One simulator process per asset (crane or rig profile, its own seed and ``--speed``),
one agent polling all of them, one collector with the shipped crane and rig rule sets,
a webhook channel and an e-mail channel (both routed every priority), and the operator
HTTP API on a fixed free port (so a restarted collector answers on the same one). The
broker, InfluxDB and the receivers are the caller's: the test fixtures' servers and
:mod:`devstack.receivers`.

    stack = AlarmStack(tmp, broker_port=..., influx={...}, hook_url=hooks.url,
                       smtp_port=mail.port, assets=[AssetSpec("crane-oil", speed=10)])
    stack.start()
    stack.control("crane-oil", "/scenario", {"name": "hydraulic_overheat", "active": True})
    status, alarms = stack.api("GET", "/alarms")
    stack.restart_collector()          # SIGKILL, then the same config again
    stack.stop()

Every program logs JSON to ``<base_dir>/<name>.log``; configs are written there too.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from argon2 import PasswordHasher

from collector.users import Role, UserStore
from devstack.programs import REPO, Program, http_json, wait_for, write_yaml
from devstack.services import free_port

RULES = (
    REPO / "config" / "alarm-rules" / "crane.yaml",
    REPO / "config" / "alarm-rules" / "rig.yaml",
)


@dataclass(frozen=True)
class AssetSpec:
    """One asset: its own simulated PLC (a ``derrick-sim`` process) and agent device.

    ``silent_at_start``: the PLC answers nothing from before the agent's first poll.
    ``device`` is the agent's device name (unique within the agent). ``edge``: polled by
    the second agent, which evaluates the crane rules itself (edge alarms).
    """

    name: str
    profile: str = "crane"
    seed: int = 1
    speed: float = 1.0
    silent_at_start: bool = False
    device_settings: dict[str, Any] = field(default_factory=dict)
    edge: bool = False

    @property
    def device(self) -> str:
        return f"{self.name}-plc"


@dataclass(frozen=True)
class Plc:
    """A running simulator: its process, Modbus port and control API."""

    program: Program
    port: int
    control: str


def write_users(path: Path, users: dict[str, tuple[str, str]]) -> Path:
    """A users file (collector.users) for tests: cheap argon2 parameters, so that each
    login costs milliseconds (the parameters travel in each hash)."""
    store = UserStore(path, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    for name, (role, password) in users.items():
        store.add(name, Role(role), password)
    return path


class AlarmStack:
    """Simulators, agent and collector for one fresh site (see the module docstring)."""

    def __init__(
        self,
        base_dir: Path,
        *,
        broker_port: int,
        influx: dict[str, Any],
        hook_url: str,
        smtp_port: int,
        assets: list[AssetSpec],
        interval_s: float = 0.5,
        timeout_s: float = 0.5,
        retry: dict[str, float] | None = None,
        site: str | None = None,
        edge_local: dict[str, Any] | None = None,
        collectors: int = 1,
        etcd: dict[str, Any] | None = None,
        flood: dict[str, Any] | None = None,
        users: dict[str, tuple[str, str]] | None = None,
        http: dict[str, Any] | None = None,
        wire: str = "json",
    ) -> None:
        """``wire``: the agents' ``format`` (json or sparkplug)."""
        self.base_dir = base_dir
        self.wire = wire
        self.site = site or f"t{uuid.uuid4().hex[:8]}"
        self.assets = {asset.name: asset for asset in assets}
        self.broker = {"host": "127.0.0.1", "port": broker_port, "reconnect_max_s": 2}
        self.influx = influx
        self.hook_url = hook_url
        self.smtp_port = smtp_port
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.retry = retry or {"min_s": 0.5, "max_s": 2}
        # Several collectors share the alarms through etcd (``etcd``: that section of
        # their configs, without the prefix, which is the site's).
        self.etcd = etcd
        self.flood = flood  # the collectors' alarms.flood, when not the default
        # Named users of the console and API: name -> (role, password), hashed cheaply.
        self.users_file = write_users(base_dir / "users.yaml", users) if users else None
        self.http = http or {}  # more of the collectors' alarms.http
        self.api_token: str | None = None  # sent by api() when set (a user's token)
        self.api_ports = [free_port() for _ in range(collectors)]
        self.api_port = self.api_ports[0]
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.plcs: dict[str, Plc] = {}
        self.collectors = [
            Program("collector", [], base_dir / f"collector{'' if i == 0 else i + 1}.log")
            for i in range(collectors)
        ]
        self.collector = self.collectors[0]
        self.agent = Program("agent", [], base_dir / "agent.log")
        self.edge_agent = Program("agent", [], base_dir / "edge-agent.log")
        # What the edge agent evaluates: a copy of the crane rules, for a test to change
        # and reload (SIGHUP).
        self.edge_rules_file = base_dir / "edge-rules.yaml"
        self.edge_local = edge_local  # the edge agent's alarms.local (site LAN receiver)

    # --- start and stop ------------------------------------------------------------------

    def start(self) -> Self:
        """Simulators (all at once), then the collector (API answering), then the agent."""
        self.start_simulators()
        for index, collector in enumerate(self.collectors):
            config = write_yaml(
                collector.log_path.with_suffix(".yaml"), self.collector_config(index)
            )
            collector.args = ["--config", str(config)]
            self.start_collector(index)
        for program, edge in self._agents():
            config = write_yaml(program.log_path.with_suffix(".yaml"), self.agent_config(edge))
            program.args = ["--config", str(config)]
            program.start()
        return self

    def _agents(self) -> list[tuple[Program, bool]]:
        """The agents that have assets: (program, evaluates rules at the edge)."""
        edges = {asset.edge for asset in self.assets.values()}
        return [
            (p, edge) for p, edge in ((self.agent, False), (self.edge_agent, True)) if edge in edges
        ]

    def start_simulators(self) -> None:
        for asset in self.assets.values():
            port, control_port = free_port(), free_port()
            args = [
                "--profile", asset.profile, "--seed", str(asset.seed),
                "--speed", str(asset.speed), "--no-demo-overload",
                "--port", str(port), "--control-port", str(control_port),
                "--log-format", "json",
            ]  # fmt: skip
            program = Program("sim", args, self.base_dir / f"sim-{asset.name}.log").start()
            self.plcs[asset.name] = Plc(program, port, f"http://127.0.0.1:{control_port}")
        for name, plc in self.plcs.items():
            wait_for(lambda plc=plc: http_json(f"{plc.control}/health"), 30,
                     f"simulator {name}", program=plc.program)  # fmt: skip
            if self.assets[name].silent_at_start:
                http_json(f"{plc.control}/fault", {"silent": True})

    def start_collector(self, index: int = 0) -> None:
        collector = self.collectors[index]
        collector.start()
        wait_for(lambda: self.api("GET", "/health", index=index)[0] == 200, 30,
                 "collector alarm API", program=collector)  # fmt: skip

    def restart_collector(self, index: int = 0) -> None:
        """SIGKILL the collector and start it again with the same config."""
        self.collectors[index].kill()
        self.start_collector(index)

    def collector_id(self, index: int = 0) -> str:
        return f"col-{self.site}" + ("" if len(self.collectors) == 1 else f"-{index + 1}")

    def stop(self) -> dict[str, int | None]:
        """Stop every program (agent first); exit code by name."""
        codes = {
            ("edge-agent" if edge else "agent"): program.stop() for program, edge in self._agents()
        }
        for index, collector in enumerate(self.collectors):
            codes["collector" + ("" if index == 0 else str(index + 1))] = collector.stop()
        for name, plc in self.plcs.items():
            codes[f"sim-{name}"] = plc.program.stop()
        return codes

    # --- configs ---------------------------------------------------------------------------

    def agent_config(self, edge: bool = False) -> dict[str, Any]:
        """The config of the agent of the assets with this ``edge``."""
        devices = [
            {
                "name": asset.device,
                "asset": asset.name,
                "profile": asset.profile,
                "host": "127.0.0.1",
                "port": self.plcs[asset.name].port,
                "interval_s": self.interval_s,
                "timeout_s": self.timeout_s,
                **asset.device_settings,
            }
            for asset in self.assets.values()
            if asset.edge is edge
        ]
        name = f"gw-{self.site}" + ("-edge" if edge else "")
        config = {
            "agent": {"id": name, "site": self.site},
            "format": self.wire,
            "broker": self.broker,
            "devices": devices,
            "spool": {"path": str(self.base_dir / f"{name}-spool.db")},
            "log": {"format": "json"},
        }
        if edge:
            if not self.edge_rules_file.exists():
                shutil.copyfile(RULES[0], self.edge_rules_file)
            config["alarms"] = {"rules": [str(self.edge_rules_file)], "tick_s": 0.5}
            if self.edge_local is not None:
                config["alarms"]["local"] = self.edge_local
        return config

    def collector_config(self, index: int = 0) -> dict[str, Any]:
        config = self._collector_config(index)
        if self.etcd is not None:
            config["collector"]["group"] = f"g-{self.site}"
            config["etcd"] = {"prefix": f"/derrick-{self.site}", **self.etcd}
        return config

    def _collector_config(self, index: int) -> dict[str, Any]:
        name = "alarms.db" if index == 0 else f"alarms{index + 1}.db"
        return {
            "collector": {"id": self.collector_id(index)},
            "broker": self.broker,
            "influx": self.influx,
            "batch": {"max_lines": 500, "max_delay_s": 0.1},
            "alarms": {
                "rules": [str(path) for path in RULES],
                "state": str(self.base_dir / name),
                "channels": {
                    "hook": {"type": "webhook", "url": self.hook_url},
                    "mail": {
                        "type": "email",
                        "host": "127.0.0.1",
                        "port": self.smtp_port,
                        "sender": "derrick@test",
                        "to": ["crew@test"],
                    },
                },
                "routes": [{"name": "all", "channels": ["hook", "mail"]}],
                "http": {
                    "enabled": True,
                    "port": self.api_ports[index],
                    **({"users_file": str(self.users_file)} if self.users_file else {}),
                    **self.http,
                },
                "retry": self.retry,
                **({"flood": self.flood} if self.flood else {}),
            },
            "log": {"format": "json"},
        }

    # --- talking to the parts ----------------------------------------------------------------

    def alarm_id(self, rule: str, asset: str) -> str:
        return f"{rule}:{self.site}:{asset}:{self.assets[asset].device}"

    def control(self, asset: str, path: str, body: dict[str, Any] | None = None) -> dict:
        """The simulator control API of ``asset``: GET without a body, else POST."""
        return http_json(f"{self.plcs[asset].control}{path}", body)

    def api(
        self, method: str, path: str, body: dict[str, Any] | None = None, index: int = 0
    ) -> tuple[int, Any]:
        """A collector's operator API: (status, parsed JSON); errors are answers too."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_ports[index]}{path}",
            data=data,
            method=method,
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {self.api_token}"} if self.api_token else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read() or b"null")

    def alarm(self, rule: str, asset: str) -> tuple[int, Any]:
        """GET /alarms/<id> of ``rule`` on ``asset``."""
        return self.api("GET", f"/alarms/{urllib.parse.quote(self.alarm_id(rule, asset))}")

    def command(
        self, rule: str, asset: str, action: str, who: str, comment: str = "", *, index: int = 0
    ) -> tuple[int, Any]:
        """POST /alarms/<id>/<action> with ``who`` and ``comment``."""
        path = f"/alarms/{urllib.parse.quote(self.alarm_id(rule, asset))}/{action}"
        return self.api("POST", path, {"who": who, "comment": comment}, index=index)
