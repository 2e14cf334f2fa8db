"""derrick-sim: simulated crane and rig PLCs serving their device profiles over Modbus TCP."""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import structlog

from derrick.plc.profile import Profile, load_profile
from derrick.plumbing.cli import Program, run_until_signalled
from derrick.plumbing.configfile import ConfigError
from simulators import control, modbus_server, scenario
from simulators.control import ControlError
from simulators.crane import DEMO_LIFT, DEMO_START_S, LIFT_S, CraneModel
from simulators.generic import GenericModel
from simulators.modbus_server import Endpoint, ModbusServerError, SerialEndpoint, TcpEndpoint
from simulators.plc import SimulatedPlc
from simulators.rig import RigModel
from simulators.scenario import Script

log = structlog.get_logger("sim")

MODELS = {"crane": CraneModel, "rig": RigModel}  # profile kind -> model; others: generic
MAX_RTU_UNIT = 247  # 248-255 are reserved on a serial bus
WATCH_INTERVAL_S = 0.2

DESCRIPTION = f"""\
Play crane and drilling-rig PLCs over Modbus TCP, RTU over TCP or serial RTU, and any
other device profile with generic values. A crane (the default profile) serves
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
       | {{"min_request_gap_s": 0.2}} | {{"deaf_after_connect_s": 1}}
       | {{"max_registers": 16}} | {{"max_bits": 64}} | {{"requests_per_connection": 50}}
       (awkward PLCs: requests too close dropped, deaf after connecting, short
       reads only, a connection that stops answering; 0 turns each off)
Every POST answers with "took_effect_ns", when the change took effect.

Any other profile (--profile bench100, or a YAML path) is served by the generic model:
every tag wanders slowly around a seeded level (floats, whole integers, bools that hold
for tens of seconds), encoded as the profile says. /hold and /values work; it has no
overload or scenarios.
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
--count N does the same for --profile (any profile; see the generic model above):
  derrick-sim --profile bench100 --count 20 --port 6000   # 6000-6019, names bench100-00..

transports: --framer rtu serves RTU frames (with CRC) on the TCP ports instead of Modbus
TCP, as a transparent serial-to-Ethernet converter does. --serial PATH serves serial RTU
on a tty instead of TCP ports; every device of the run is then a unit on that one line
(--unit-id, --unit-id + 1, ...). For a virtual line, make a pty pair with socat and give
the agent the other end (Linux ptys take parity N only, hence --parity N):
  socat pty,raw,echo=0,link=/tmp/plc pty,raw,echo=0,link=/tmp/agent &
  derrick-sim --serial /tmp/plc --parity N --cranes 2     # units 1 and 2
  mbpoll -m rtu -P none -a 2 -0 -r 0 -c 4 -t 4:float -B -1 /tmp/agent
--units-per-port K puts K devices behind each TCP port as unit ids --unit-id ... (a
gateway): --cranes 4 --units-per-port 2 --port 5020 serves units 1, 2 on 5020 and 1, 2
on 5021. On RTU a unit id nobody serves gets no answer; on Modbus TCP, exception 0B.

scenarios: --scenario config/scenarios/kick.yaml --profile rig --speed 10 plays a
timeline of scenarios, faults and sensor failures (see config/scenarios/).

exit status: 0 after SIGINT/SIGTERM, 1 when a port cannot be bound or the serial port
cannot be opened, 2 on bad arguments or profile.
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


def _positive(text: str) -> int:
    number = int(text)
    if not 1 <= number <= 500:
        raise argparse.ArgumentTypeError(f"{number}: give 1 to 500")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to serve Modbus TCP on (default: %(default)s)")
    add("--port", type=_port, default=5020, help="Modbus TCP port (default: %(default)s)")
    add(
        "--unit-id",
        type=_unit_id,
        default=1,
        help="Modbus unit (slave) id to answer as, the first of consecutive ids when devices "
        "share a port or serial line; 0 answers every id (default: %(default)s)",
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
        help="start with an overload forced (hook load 115 %% of SWL) until POST /overload",
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
    add(
        "--count",
        type=_positive,
        default=1,
        help="number of --profile devices, on consecutive ports (default: %(default)s)",
    )
    add(
        "--units-per-port",
        type=_positive,
        default=1,
        metavar="K",
        help="devices behind each TCP port, as unit ids --unit-id ... (default: %(default)s)",
    )
    add(
        "--framer",
        choices=["socket", "rtu"],
        default=None,
        help="frames on the TCP ports: socket = Modbus TCP, rtu = RTU over TCP (default: socket)",
    )
    add("--serial", metavar="PATH", help="serve serial RTU on this tty instead of TCP ports")
    add("--baudrate", type=int, default=19200, help="--serial: bits/s (default: %(default)s)")
    add(
        "--parity",
        choices=["N", "E", "O"],
        default="E",
        help="--serial: parity (default: %(default)s; a Linux pty takes N only)",
    )
    add("--stopbits", type=int, choices=[1, 2], default=1, help="--serial: (default: 1)")
    add("--log-format", choices=["auto", "console", "json"], default="auto")
    add("--log-level", choices=["debug", "info", "warning", "error"], default="info")


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of options, if anything."""
    fleet = args.cranes or args.rigs
    if fleet and args.count > 1:
        return "--count is for --profile; a fleet is --cranes N --rigs M"
    if args.serial and args.framer:
        return "--framer is for TCP ports; --serial is always RTU"
    if args.serial and args.units_per_port > 1:
        return "--units-per-port is for TCP ports; on --serial every device is a unit"
    devices = (args.cranes + args.rigs) if fleet else args.count
    per_endpoint = devices if args.serial else min(args.units_per_port, devices)
    if per_endpoint > 1 and args.unit_id == 0:
        return "unit 0 answers every unit id: give --unit-id 1 or more for several units"
    rtu = bool(args.serial) or args.framer == "rtu"
    last, top = args.unit_id + per_endpoint - 1, MAX_RTU_UNIT if rtu else 255
    if last > top:
        return f"unit ids {args.unit_id}-{last}: {'RTU' if rtu else 'Modbus TCP'} ends at {top}"
    return None


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
    """One simulated PLC of the run and where it answers."""

    name: str
    plc: SimulatedPlc
    seed: int
    group: int  # index of the endpoint (port or serial line) it shares with others
    endpoint: Endpoint  # as asked; a TCP port 0 becomes a free port when served
    unit_id: int
    control_port: int  # 0: no control API

    @property
    def port(self) -> int:
        return self.endpoint.port if isinstance(self.endpoint, TcpEndpoint) else 0


def fleet_plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(device name, profile) for every device: the fleet, or --count --profile devices."""
    if not (args.cranes or args.rigs):
        if args.count == 1:
            return [(args.profile, args.profile)]
        stem = Path(args.profile).stem
        return [(f"{stem}-{i:02d}", args.profile) for i in range(args.count)]
    return [(f"crane-{i:02d}", "crane") for i in range(args.cranes)] + [
        (f"rig-{i:02d}", "rig") for i in range(args.rigs)
    ]


def placement(args: argparse.Namespace, index: int) -> tuple[int, Endpoint, int]:
    """(group, endpoint, unit id) of device ``index``."""
    if args.serial:
        line = SerialEndpoint(
            args.serial, baudrate=args.baudrate, parity=args.parity, stopbits=args.stopbits
        )
        return 0, line, args.unit_id + index
    group, slot = divmod(index, args.units_per_port)
    port = args.port + group if args.port else 0
    if port > 65535:
        raise ValueError(f"device {index}: port {port} is beyond 65535")
    return group, TcpEndpoint(args.host, port, args.framer or "socket"), args.unit_id + slot


def build_fleet(args: argparse.Namespace) -> list[Device]:
    """Profiles and models; ConfigError or ValueError when they cannot be used."""
    devices = []
    for index, (name, profile_name) in enumerate(fleet_plan(args)):
        seed = args.seed + index
        plc = build_plc(profile_name, seed, args)
        group, endpoint, unit_id = placement(args, index)
        control_port = args.control_port + index if args.control_port else 0
        if control_port > 65535:
            raise ValueError(f"device {name}: port {control_port} is beyond 65535")
        devices.append(Device(name, plc, seed, group, endpoint, unit_id, control_port))
    return devices


def build_plc(profile_name: str, seed: int, args: argparse.Namespace) -> SimulatedPlc:
    """The profile's physical model when its kind has one, else the generic model."""
    profile: Profile = load_profile(profile_name)
    model_class = MODELS.get(profile.kind)
    if model_class is None:
        if args.overload:
            raise ValueError(f"--overload: the generic model of {profile.kind!r} has no load")
        plc = SimulatedPlc(profile, GenericModel(profile, seed), speed=args.speed)
    else:
        model = model_class(seed=seed, demo_overload=not args.no_demo_overload)
        plc = SimulatedPlc(profile, model, speed=args.speed)
    if args.overload:
        plc.overload(True)
    return plc


async def serve_fleet(stack: AsyncExitStack, devices: list[Device]) -> dict[int, Endpoint]:
    """Every endpoint with its units; the endpoints as bound, by group."""
    bound: dict[int, Endpoint] = {}
    for group in sorted({device.group for device in devices}):
        members = [device for device in devices if device.group == group]
        units = {device.unit_id: device.plc for device in members}
        bound[group] = await stack.enter_async_context(
            modbus_server.serve(units, members[0].endpoint)
        )
    return bound


async def serve_control(
    stack: AsyncExitStack, device: Device, endpoint: Endpoint, args: argparse.Namespace
) -> None:
    control_port = None
    if device.control_port:
        control_port = await stack.enter_async_context(
            control.serving(device.plc, args.control_host, device.control_port)
        )
    where: dict[str, object] = (
        {"host": endpoint.host, "port": endpoint.port, "framer": endpoint.framer}
        if isinstance(endpoint, TcpEndpoint)
        else {"serial": str(endpoint), "port": None}
    )
    log.info(
        "simulator ready",
        device=device.name,
        **where,
        unit_id=device.unit_id,
        control_host=args.control_host if control_port else None,
        control_port=control_port,
        profile=device.plc.profile.kind,
        model="generic" if isinstance(device.plc.model, GenericModel) else device.plc.profile.kind,
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
        bound = await serve_fleet(stack, devices)
        for device in devices:
            await serve_control(stack, device, bound[device.group], args)
        if len(devices) > 1:
            log.info(
                "fleet ready",
                devices=len(devices),
                endpoints=len(bound),
                cranes=args.cranes,
                rigs=args.rigs,
            )

        def start_tasks(group: asyncio.TaskGroup) -> None:
            for device in devices:
                group.create_task(watch_device(device))
                for script in scripts:
                    if script.kind == device.plc.profile.kind:
                        group.create_task(play_on(device, script))

        await run_until_signalled(start_tasks)
        log.info("simulator stopping", devices=len(devices))


def build(args: argparse.Namespace) -> tuple[argparse.Namespace, list[Device], list[Script]]:
    """What :func:`run` takes; ConfigError or ValueError when a profile or script is unusable."""
    devices = build_fleet(args)
    return args, devices, load_scripts(args, devices)


PROGRAM = Program(
    name="derrick-sim",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    validate=check_args,
    load=build,
    invalid=(ConfigError, ValueError),
    invalid_says="cannot build the simulated devices",
    log_settings=lambda args, _built: (args.log_format, args.log_level),
    run=lambda built: run(*built),
    failures=(ModbusServerError, ControlError),
    log=log,
    failed="simulator failed",
)


def main(argv: list[str] | None = None) -> int:
    return PROGRAM.main(argv)


if __name__ == "__main__":
    sys.exit(main())
