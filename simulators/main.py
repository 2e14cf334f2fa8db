"""derrick-sim: a simulated crane PLC serving its device profile over Modbus TCP."""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import AsyncExitStack

import structlog

from derrick import logs
from derrick.cli import run_until_signalled
from derrick.configfile import ConfigError
from derrick.profile import Profile, load_profile
from simulators import control, modbus_server
from simulators.control import ControlError
from simulators.crane import DEMO_LIFT, DEMO_START_S, LIFT_S, CraneModel
from simulators.modbus_server import ModbusServerError
from simulators.plc import SimulatedPlc

log = structlog.get_logger("sim")

MODELS = {"crane": CraneModel}  # profile kind -> model
WATCH_INTERVAL_S = 0.2

DESCRIPTION = f"""\
Play one crane PLC over Modbus TCP: hook load, safe working load (from the load chart
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
"""

EPILOG = """\
examples:
  derrick-sim                                  # 127.0.0.1:5020, unit 1, demo overload
  derrick-sim --host 0.0.0.0 --port 502        # on every interface, standard port (root)
  derrick-sim --control-port 8502 --no-demo-overload
  curl -s -d '{"active": true}' http://127.0.0.1:8502/overload
  mbpoll -m tcp -a 1 -0 -r 0 -c 4 -t 4:float -B -1 -p 5020 127.0.0.1

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
    add("--log-format", choices=["auto", "console", "json"], default="auto")
    add("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    return parser.parse_args(argv)


async def watch_overload(plc: SimulatedPlc, interval: float = WATCH_INTERVAL_S) -> None:
    """Log each start and end of an overload once, whether or not anyone polls."""
    active = False
    while True:
        now = plc.model.values(plc.now())
        if "overload_cutout" not in now:
            return  # a model without an LMI: nothing to watch
        if now["overload_cutout"] != active:
            active = bool(now["overload_cutout"])
            log.info(
                "overload started" if active else "overload ended",
                utilisation=round(float(now["utilisation"]), 1),
                hook_load=round(float(now["hook_load"]), 2),
                safe_working_load=round(float(now["safe_working_load"]), 2),
                forced=plc.overload_forced,
                t=round(plc.now(), 1),
            )
        await asyncio.sleep(interval)


async def run(args: argparse.Namespace, plc: SimulatedPlc) -> None:
    async with AsyncExitStack() as stack:
        port = await stack.enter_async_context(
            modbus_server.serving(plc, args.host, args.port, args.unit_id)
        )
        control_port = None
        if args.control_port:
            control_port = await stack.enter_async_context(
                control.serving(plc, args.control_host, args.control_port)
            )
        log.info(
            "simulator ready",
            host=args.host,
            port=port,
            unit_id=args.unit_id,
            control_host=args.control_host if control_port else None,
            control_port=control_port,
            profile=plc.profile.kind,
            seed=args.seed,
            demo_overload=not args.no_demo_overload,
            overload_forced=plc.overload_forced,
        )
        await run_until_signalled(lambda group: group.create_task(watch_overload(plc)))
        log.info("simulator stopping")


def build_plc(args: argparse.Namespace) -> SimulatedPlc:
    """Profile and model; ConfigError or ValueError when they cannot be used."""
    profile: Profile = load_profile(args.profile)
    model_class = MODELS.get(profile.kind)
    if model_class is None:
        raise ValueError(f"no simulator for kind {profile.kind!r}; have: {', '.join(MODELS)}")
    model = model_class(seed=args.seed, demo_overload=not args.no_demo_overload)
    plc = SimulatedPlc(profile, model)
    if args.overload:
        plc.overload(True)
    return plc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        plc = build_plc(args)
    except (ConfigError, ValueError) as exc:
        sys.stderr.write(f"derrick-sim: unusable profile {args.profile!r}\n{exc}\n")
        return 2
    try:
        asyncio.run(run(args, plc))
    except (ModbusServerError, ControlError) as exc:
        log.error("simulator failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
