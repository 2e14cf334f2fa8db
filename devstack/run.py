"""``make run``: the whole pipeline on this machine, on free loopback ports.

Starts mosquitto, InfluxDB 1.x, the crane simulator, an agent and a collector (the
configs are the examples in config/, with this run's ports filled in), prints where
everything is, one line per alarm event and a summary every 10 s. Ctrl-C, or
``--seconds N``, stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

from collector.users import Role, UserStore
from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.plumbing import logs
from derrick.wire.payloads import AlarmNotice
from derrick.wire.topics import ALARM_EVENTS_SUBSCRIPTION
from devstack.programs import REPO, Program, start_simulator, write_yaml
from devstack.services import Influx1, Mosquitto, free_port

CONFIG = REPO / "config"
DATABASE = "derrick"
SUMMARY_EVERY_S = 10.0


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


DEMO_USERS = (("demo-operator", Role.OPERATOR), ("demo-supervisor", Role.SUPERVISOR),
              ("demo-viewer", Role.VIEWER))  # fmt: skip


def demo_users(base: Path) -> tuple[Path, str]:
    """A users file with one user per role, all with this run's password."""
    password = secrets.token_urlsafe(12)
    users = UserStore(base / "users.yaml")
    for name, role in DEMO_USERS:
        users.add(name, role, password)
    return users.path, password


def make_configs(
    base: Path, broker_port: int, influx_url: str, sim_port: int, api_port: int
) -> tuple[Path, Path]:
    """The example configs with this run's ports; the rules file is the shipped one."""
    agent = yaml.safe_load((CONFIG / "agent.example.yaml").read_text())
    agent["broker"]["port"] = broker_port
    agent["devices"][0]["port"] = sim_port
    collector = yaml.safe_load((CONFIG / "collector.example.yaml").read_text())
    collector["broker"]["port"] = broker_port
    collector["influx"].update(url=influx_url, database=DATABASE, create_database=True)
    collector["alarms"]["rules"] = [str(CONFIG / path) for path in collector["alarms"]["rules"]]
    collector["alarms"]["state"] = str(base / "alarms.db")
    collector["alarms"].pop("channels", None)  # the example's webhook and mail are not here
    collector["alarms"].pop("routes", None)
    collector["alarms"]["http"].update(port=api_port, users_file=str(base / "users.yaml"))
    for config in (agent, collector):
        config["log"]["format"] = "json"
    return write_yaml(base / "agent.yaml", agent), write_yaml(base / "collector.yaml", collector)


def readings_written(influx: Influx1) -> int:
    """Field values stored in the telemetry measurement (one per reading)."""
    result = influx.query("SELECT count(*) FROM telemetry", db=DATABASE)
    series = result["results"][0].get("series") or []
    return sum(value for s in series for value in s["values"][0][1:] if isinstance(value, int))


def alarm_line(notice: AlarmNotice) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(notice.ts_ns / 1e9))
    return (
        f"{stamp} ALARM {notice.event.upper():<8} {notice.priority:<8} "
        f"{notice.site}/{notice.asset}/{notice.device} {notice.rule}: {notice.message}"
    )


async def watch(
    broker: BrokerSettings, influx: Influx1, programs: list[Program], seconds: float | None
) -> tuple[dict[str, int], float]:
    counts = {"raised": 0, "cleared": 0}
    listener = MqttClient(broker, client_id="derrick-run-listener", persistent=False)
    await listener.subscribe(ALARM_EVENTS_SUBSCRIPTION)
    await listener.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = loop.time()
    next_summary = started + SUMMARY_EVERY_S
    try:
        while not stop.is_set():
            if seconds is not None and loop.time() - started >= seconds:
                break
            dead = [p.name for p in programs if not p.alive]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} stopped unexpectedly")
            with contextlib.suppress(TimeoutError):
                message = await asyncio.wait_for(listener.inbox.get(), 0.5)
                notice = AlarmNotice.model_validate_json(message.payload)
                if notice.event == "announce":
                    counts["raised"] += 1
                elif notice.event == "clear":
                    counts["cleared"] += 1
                say(alarm_line(notice))
            if loop.time() >= next_summary:
                next_summary += SUMMARY_EVERY_S
                say(await summary(influx, counts, loop.time() - started))
    finally:
        await listener.stop()
    return counts, loop.time() - started


async def summary(influx: Influx1, counts: dict[str, int], elapsed: float) -> str:
    written = await asyncio.to_thread(readings_written, influx)
    return (
        f"-- {elapsed:5.0f} s: readings written {written}, alarms raised {counts['raised']}, "
        f"cleared {counts['cleared']}"
    )


def run(seconds: float | None) -> int:
    base = Path(tempfile.mkdtemp(prefix="derrick-run-"))
    programs: list[Program] = []
    with Mosquitto(base) as broker_srv, Influx1(base) as influx:
        sim_port, api_port = free_port(), free_port()
        agent_cfg, collector_cfg = make_configs(
            base, broker_srv.port, influx.url, sim_port, api_port
        )
        _, password = demo_users(base)
        say(f"broker:    {broker_srv.url}")
        say(f"influxdb:  {influx.url}  database: {DATABASE}  (InfluxQL: {influx.url}/query)")
        say(f"logs and configs: {base}")
        try:
            simulator = start_simulator(base, port=sim_port)
            programs.append(simulator.program)
            say(f"simulator: modbus tcp 127.0.0.1:{sim_port}, control {simulator.control}")
            programs.append(
                Program(
                    "collector", ["--config", str(collector_cfg)], base / "collector.log"
                ).start()
            )
            programs.append(
                Program("agent", ["--config", str(agent_cfg)], base / "agent.log").start()
            )
            say(f"console:   http://127.0.0.1:{api_port}/console  (API docs: /api/docs)")
            say(f"logins:    {', '.join(name for name, _ in DEMO_USERS)}; password {password}")
            say(
                "running: crane simulator -> agent -> mosquitto -> collector -> influxdb"
                + (f" for {seconds:g} s" if seconds else "; Ctrl-C stops")
            )
            broker = BrokerSettings(host="127.0.0.1", port=broker_srv.port)
            counts, elapsed = asyncio.run(watch(broker, influx, programs, seconds))
            for program in reversed(programs):
                program.stop()
            say(asyncio.run(summary(influx, counts, elapsed)).replace("--", "summary:"))
        except (RuntimeError, TimeoutError) as exc:
            say(f"error: {exc}")
            for program in programs:
                say(f"--- {program.name} log ({program.log_path}):\n{program.log_tail(15)}")
            return 1
        finally:
            for program in reversed(programs):
                program.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, help="stop by itself after this many seconds")
    args = parser.parse_args(argv)
    logs.configure("console", "warning")  # this script's own MQTT listener: problems only
    return run(args.seconds)


if __name__ == "__main__":
    sys.exit(main())
