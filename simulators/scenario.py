"""Scenario files: a timeline of what happens to a simulated PLC, from YAML.

``config/scenarios/*.yaml``::

    name: kick_while_drilling
    kind: rig                      # the equipment it applies to
    description: ...
    steps:
      - {at_s: 60, scenario: kick}                     # a model scenario starts
      - {at_s: 360, scenario: kick, active: false}     # ... and ends
      - {at_s: 400, fault: {latency_s: 0.5}}           # the PLC answers slowly
      - {at_s: 420, sensor: {tag: pit_volume, stuck: true}}

``at_s`` is simulated time (``derrick-sim --speed`` runs it faster). Each step is
logged once when it takes effect, with the instant.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Self

import structlog
from pydantic import Field, model_validator

from derrick.plumbing import configfile
from derrick.plumbing.configfile import StrictModel
from derrick.wire.ids import Ident
from simulators.plc import SimulatedPlc

log = structlog.get_logger(__name__)


class FaultChange(StrictModel):
    latency_s: float | None = Field(default=None, ge=0, le=60)
    silent: bool | None = None
    reset: bool = False


class SensorChange(StrictModel):
    tag: Ident
    stuck: bool | None = None
    out_of_range: bool | None = None

    @model_validator(mode="after")
    def _one_fault(self) -> Self:
        if (self.stuck is None) == (self.out_of_range is None):
            raise ValueError("give stuck or out_of_range (true or false)")
        return self


class Step(StrictModel):
    at_s: float = Field(ge=0, description="simulated seconds since the start")
    scenario: Ident | None = None
    active: bool = True
    fault: FaultChange | None = None
    sensor: SensorChange | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        if sum(x is not None for x in (self.scenario, self.fault, self.sensor)) != 1:
            raise ValueError("a step does exactly one of: scenario, fault, sensor")
        return self


class Script(StrictModel):
    name: Ident
    kind: Ident
    description: str = ""
    steps: list[Step] = Field(min_length=1)


def load_script(path: Path | str) -> Script:
    return configfile.load(path, Script)


def check(script: Script, plc: SimulatedPlc) -> None:
    """ValueError naming the step when the script asks for what this PLC cannot do."""
    if script.kind != plc.profile.kind:
        raise ValueError(f"scenario {script.name!r} is for {script.kind}, not {plc.profile.kind}")
    numeric = {r.tag for r in plc.profile.registers if str(r.type) not in ("bool", "string")}
    for index, step in enumerate(script.steps):
        if step.scenario is not None and step.scenario not in plc.scenarios():
            raise ValueError(
                f"steps[{index}]: no scenario {step.scenario!r} for "
                f"{plc.profile.kind}; have: {', '.join(plc.scenarios())}"
            )
        if step.sensor is not None and step.sensor.tag not in numeric:
            raise ValueError(f"steps[{index}]: {step.sensor.tag!r} is not a numeric tag")


def apply(plc: SimulatedPlc, step: Step) -> None:
    if step.scenario is not None:
        plc.scenario(step.scenario, step.active)
    elif step.fault is not None:
        if step.fault.latency_s is not None:
            plc.faults.latency_s = step.fault.latency_s
        if step.fault.silent is not None:
            plc.faults.silent = step.fault.silent
        if step.fault.reset:
            plc.faults.reset()
    elif step.sensor is not None:
        if step.sensor.stuck is not None:
            plc.stick(step.sensor.tag, step.sensor.stuck)
        if step.sensor.out_of_range is not None:
            plc.out_of_range(step.sensor.tag, step.sensor.out_of_range)


async def play(plc: SimulatedPlc, script: Script) -> None:
    """Apply every step at its simulated time; log each once, with when it took effect."""
    for index, step in enumerate(sorted(script.steps, key=lambda s: s.at_s)):
        wait_s = (step.at_s - plc.now()) / plc.speed
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        apply(plc, step)
        log.info(
            "scenario step",
            script=script.name,
            step=index,
            at_s=step.at_s,
            t=round(plc.now(), 2),
            took_effect_ns=time.time_ns(),
            **step.model_dump(exclude_none=True, exclude={"at_s"}),
        )
    log.info("scenario done", script=script.name)
