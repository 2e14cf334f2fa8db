"""derrick-sim: simulated crane and rig PLCs serving their device profiles over Modbus TCP."""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import structlog

from derrick import logs
from derrick.cli import run_until_signalled
from derrick.configfile import ConfigError
from derrick.profile import Profile, load_profile
from simulators import control, modbus_server, scenario
from simulators.control import ControlError
from simulators.crane import DEMO_LIFT, DEMO_START_S, LIFT_S, CraneModel
from simulators.modbus_server import ModbusServerError
from simulators.plc import SimulatedPlc
from simulators.rig import RigModel
from simulators.scenario import Script

log = structlog.get_logger("sim")

MODELS = {"crane": CraneModel, "rig": RigModel}  # profile kind -> model
WATCH_INTERVAL_S = 0.2

DESCRIPTION = f"""\
Play crane and drilling-rig PLCs over Modbus TCP. A crane (the default profile) serves
hook load, safe working load (from the load chart
at the current radius), boom angle and wind speed as float32 holding registers that
change over time through repeated lift cycles, utilisation (x10 uint16) and the LMI
overload cut-out (discrete input), all at the addresses of the device profile
(config/profiles/crane.yaml), the same file the agent reads with.

The default run has one overload lift within its first minute (t = {DEMO_START_S:g} s
to {DEMO_START_S + LIFT_S:g} s, peaking at {DEMO_LIFT.peak * 100:.0f} % of the safe working load),
so a demo raises and clears one alarm; the other lifts stay below 85 %.

With --control-port, an HTTP control API on loopback lets tests and demos force an
overload and pin exact values:
  GET  /health, GET /values
  POST /overload {{"active": true|false}}
  POST /hold {{"hook_load": 12.5, ...}}    POST /release
  POST /scenario {{"name": "kick", "active": true}}   (the model's scenarios: crane
       overload, high_wind, hydraulic_overheat; rig overload (overpull), kick,
       pump_washout, h2s_release)
  POST /sensor {{"tag": "wind_speed", "stuck": true}} (or "out_of_range")
  POST /fault {{"latency_s": 0.5}} | {{"silent": true}} | {{"reset": true}}
       (late replies, no replies, every connection dropped with a TCP reset)
Every POST answers with "took_effect_ns", when the change took effect.
"""

EPILOG = """\
examples:
  derrick-sim                                  # 127.0.0.1:5020, unit 1, demo overload
  derrick-sim --host 0.0.0.0 --port 502        # on every interface, standard port (root)
  derrick-sim --control-port 8502 --no-demo-overload
  curl -s -d '{"active": true}' http://127.0.0.1:8502/overload
  mbpoll -m tcp -a 1 -0 -r 0 -c 4 -t 4:float -B -1 -p 5020 127.0.0.1

fleet (demos and load tests): --cranes N --rigs M runs N cranes then M rigs in one
process; device i (from 0) serves Modbus on --port + i and, with --control-port, its
control API on --control-port + i, with seed --seed + i. Log lines name the device
(crane-00, crane-01, ..., rig-00, ...).
  derrick-sim --cranes 2 --rigs 1 --port 5020     # cranes on 5020, 5021; rig on 5022
  derrick-sim --cranes 50 --port 6000 --no-demo-overload

scenarios: --scenario config/scenarios/kick.yaml --profile rig --speed 10 plays a
timeline of scenarios, faults and sensor failures (see config/scenarios/).

exit status: 0 after SIGINT/SIGTERM, 1 when a port cannot be bound, 2 on bad arguments
or profile.
"""


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535)")
    return port


def _unit_id(text: str) -> int:
    unit = int(text)
    if not 0 <= unit <= 255:
        raise argparse.ArgumentTypeError(f"{unit} is not a Modbus unit id (0-255)")
    return unit


def _speed(text: str) -> float:
    speed = float(text)
    if not 0.01 <= speed <= 1000:
        raise argparse.ArgumentTypeError(f"{speed}: speed must be from 0.01 to 1000")
    return speed


def _count(text: str) -> int:
    count = int(text)
    if not 0 <= count <= 500:
        raise argparse.ArgumentTypeError(f"{count}: a fleet holds 0 to 500 devices of a kind")
    return count


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="derrick-sim",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to serve Modbus TCP on (default: %(default)s)")
    add("--port", type=_port, default=5020, help="Modbus TCP port (default: %(default)s)")
    add(
        "--unit-id",
        type=_unit_id,
        default=1,
        help="Modbus unit (slave) id to answer as; 0 answers every id (default: %(default)s)",
    )
    add(
        "--profile",
        default="crane",
        help="device profile: a name in config/profiles/ or a YAML path (default: %(default)s)",
    )
    add("--seed", type=int, default=0, help="seed of lift plan and wind (default: %(default)s)")
    add(
        "--control-port",
        type=_port,
        default=0,
        help="port of the HTTP control API; 0 = no control API (default: %(default)s)",
    )
    add(
        "--control-host",
        default="127.0.0.1",
        help="address of the control API; it has no authentication (default: %(default)s)",
    )
    add(
        "--overload",
        action="store_true",
        help="start with an overload forced (hook load 110 %% of SWL) until POST /overload",
    )
    add("--no-demo-overload", action="store_true", help="no scripted overload lift")
    add(
        "--speed",
        type=_speed,
        default=1.0,
        help="time acceleration: simulated seconds per wall second (default: %(default)s)",
    )
    add(
        "--scenario",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="play a scenario file (config/scenarios/*.yaml) on every device of its kind; "
        "repeatable",
    )
    add("--cranes", type=_count, default=0, help="fleet: number of crane PLCs (see below)")
    add("--rigs", type=_count, default=0, help="fleet: number of drilling-rig PLCs")
    add("--log-format", choices=["auto", "console", "json"], default="auto")
    add("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    return parser.parse_args(argv)


async def watch_overload(plc: SimulatedPlc, interval: float = WATCH_INTERVAL_S) -> None:
    """Log each start and end of an overload (crane) or overpull (rig) once, polled or not."""
    tags = getattr(plc.model, "LOAD_ALARM", None)
    if tags is None:
        return  # a model without a load alarm: nothing to watch
    alarm_tag, utilisation_tag, rated_tag = tags
    active = False
    while True:
        now = plc.model.values(plc.now())
        if bool(now[alarm_tag]) != active:
            active = bool(now[alarm_tag])
            log.info(
                "overload started" if active else "overload ended",
                utilisation=round(float(now[utilisation_tag]), 1),
                hook_load=round(float(now["hook_load"]), 2),
                rated=round(float(now[rated_tag]), 2),
                forced=plc.overload_forced,
                t=round(plc.now(), 1),
            )
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class Device:
    """One simulated PLC of the fleet and where it listens."""

    name: str
    plc: SimulatedPlc
    seed: int
    port: int
    control_port: int  # 0: no control API


def fleet_plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(device name, profile) for every device: the fleet, or the one --profile device."""
    if not (args.cranes or args.rigs):
        return [(args.profile, args.profile)]
    return [(f"crane-{i:02d}", "crane") for i in range(args.cranes)] + [
        (f"rig-{i:02d}", "rig") for i in range(args.rigs)
    ]


def build_fleet(args: argparse.Namespace) -> list[Device]:
    """Profiles and models; ConfigError or ValueError when they cannot be used."""
    devices = []
    for index, (name, profile_name) in enumerate(fleet_plan(args)):
        seed = args.seed + index
        plc = build_plc(profile_name, seed, args)
        port = args.port + index if args.port else 0
        control_port = args.control_port + index if args.control_port else 0
        if port > 65535 or control_port > 65535:
            raise ValueError(f"device {name}: port {max(port, control_port)} is beyond 65535")
        devices.append(Device(name, plc, seed, port, control_port))
    return devices


def build_plc(profile_name: str, seed: int, args: argparse.Namespace) -> SimulatedPlc:
    profile: Profile = load_profile(profile_name)
    model_class = MODELS.get(profile.kind)
    if model_class is None:
        raise ValueError(f"no simulator for kind {profile.kind!r}; have: {', '.join(MODELS)}")
    model = model_class(seed=seed, demo_overload=not args.no_demo_overload)
    plc = SimulatedPlc(profile, model, speed=args.speed)
    if args.overload:
        plc.overload(True)
    return plc


async def serve_device(stack: AsyncExitStack, device: Device, args: argparse.Namespace) -> None:
    port = await stack.enter_async_context(
        modbus_server.serving(device.plc, args.host, device.port, args.unit_id)
    )
    control_port = None
    if device.control_port:
        control_port = await stack.enter_async_context(
            control.serving(device.plc, args.control_host, device.control_port)
        )
    log.info(
        "simulator ready",
        device=device.name,
        host=args.host,
        port=port,
        unit_id=args.unit_id,
        control_host=args.control_host if control_port else None,
        control_port=control_port,
        profile=device.plc.profile.kind,
        seed=device.seed,
        demo_overload=not args.no_demo_overload,
        overload_forced=device.plc.overload_forced,
    )


async def play_on(device: Device, script: Script) -> None:
    with structlog.contextvars.bound_contextvars(device=device.name):
        await scenario.play(device.plc, script)


async def watch_device(device: Device) -> None:
    with structlog.contextvars.bound_contextvars(device=device.name):
        await watch_overload(device.plc)


def load_scripts(args: argparse.Namespace, devices: list[Device]) -> list[Script]:
    """Scenario files, each checked against every device of its kind."""
    scripts = [scenario.load_script(path) for path in args.scenario]
    for script in scripts:
        targets = [d for d in devices if d.plc.profile.kind == script.kind]
        if not targets:
            raise ValueError(f"scenario {script.name!r} is for {script.kind}: no such device")
        for device in targets:
            scenario.check(script, device.plc)
    return scripts


async def run(args: argparse.Namespace, devices: list[Device], scripts: list[Script]) -> None:
    async with AsyncExitStack() as stack:
        for device in devices:
            await serve_device(stack, device, args)
        if len(devices) > 1:
            log.info("fleet ready", devices=len(devices), cranes=args.cranes, rigs=args.rigs)

        def start_tasks(group: asyncio.TaskGroup) -> None:
            for device in devices:
                group.create_task(watch_device(device))
                for script in scripts:
                    if script.kind == device.plc.profile.kind:
                        group.create_task(play_on(device, script))

        await run_until_signalled(start_tasks)
        log.info("simulator stopping", devices=len(devices))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        devices = build_fleet(args)
        scripts = load_scripts(args, devices)
    except (ConfigError, ValueError) as exc:
        sys.stderr.write(f"derrick-sim: cannot build the simulated devices\n{exc}\n")
        return 2
    try:
        asyncio.run(run(args, devices, scripts))
    except (ModbusServerError, ControlError) as exc:
        log.error("simulator failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
