"""Drilling rig model: what a land rig's drilling PLC reports.

Pure: no clock, no I/O. ``values(t)`` depends only on the seed, the seconds since start
and the operator controls (forced overpull, scenarios, pinned values), so tests can ask
for any instant and get the same answer every time.

The rig drills one joint (9.5 m) per section, then makes a connection: pick up off
bottom, stop the pumps (the surface lines drain back: pit volume rises and settles),
set the slips (the hook carries the travelling equipment only), raise the block for the
next joint, pull the slips, start the pumps and rotation and run back to bottom. Every
third section circulates before the connection; every sixth also makes a wiper trip of
two stands out and back in. Each section draws its rate of penetration, weight on bit,
rotary speed and pump strokes from the seed. The first section is only 20 s of drilling,
so a run shows a connection within its first two minutes.

Signals move together: hook load is the travelling equipment plus the buoyed string
weight (it grows with bit depth) minus the weight on bit; flow out follows the actual
pump output through the annulus with a 20 s lag, and the mud in transit is exactly what
is missing from the pit (pit volume = reference - transit + influx); standpipe pressure
grows with the square of the actual flow and with depth.

Scenarios (the lead wires them to the control API): ``kick`` (influx: pit volume and
flow out rise, flow in unchanged), ``pump_washout`` (pump 1 loses output at the same
strokes: standpipe pressure drops) and ``h2s_release`` (H2S and combustible gas climb).
Each starts at ``at`` (model seconds) or, without ``at``, at the next ``values()`` call,
and ramps in over a minute or two; switching one off returns to the undisturbed model at
once, like releasing a forced overpull.

``overload(True)`` forces an overpull: the hook load at 110 % of the rated hook load.
With ``demo_overload`` the string hangs up on the first pick-up off bottom: the hook load
peaks at 105 % of the rated hook load at t = 32.5 s and is back to normal by t = 40 s,
so a demo raises and clears one overpull alarm within its first minute.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from simulators.hold import ForcedOverload, Pins
from simulators.signals import checked_number
from simulators.signals import ease as _ease
from simulators.signals import ripple as _ripple
from simulators.signals import waves as _waves

Value = float | bool | str

TAGS = (
    "hook_load",
    "weight_on_bit",
    "block_position",
    "top_drive_rpm",
    "top_drive_torque",
    "standpipe_pressure",
    "pump1_spm",
    "pump1_pressure",
    "pump2_spm",
    "pump2_pressure",
    "flow_in",
    "flow_out",
    "pit_volume",
    "rate_of_penetration",
    "bit_depth",
    "hole_depth",
    "rig_state",
    "status_word",
    "hook_load_utilisation",
    "serial_number",
    "rated_hook_load",
    "pump_strokes_total",
    "pit_gain",
    "h2s",
    "combustible_gas",
    "mud_temperature_out",
    "pump1_run",
    "pump2_run",
    "bop_closed",
    "pump1_running",
    "pump2_running",
    "gas_alarm",
    "pit_gain_alarm",
    "overpull_alarm",
)
_BOOLS = frozenset(
    {
        "pump1_run",
        "pump2_run",
        "bop_closed",
        "pump1_running",
        "pump2_running",
        "gas_alarm",
        "pit_gain_alarm",
        "overpull_alarm",
    }
)
# Computed from the other tags after pins apply (like the crane's utilisation).
_DERIVED = frozenset(
    {
        "hook_load_utilisation",
        "status_word",
        "pump1_running",
        "pump2_running",
        "gas_alarm",
        "pit_gain_alarm",
        "overpull_alarm",
    }
)
_COUNTERS = frozenset({"pump_strokes_total"})  # whole numbers, never negative


class RigState(IntEnum):
    """The ``rig_state`` register's codes."""

    DRILLING = 0
    CONNECTION = 1
    TRIPPING = 2
    CIRCULATING = 3


class Status(IntEnum):
    """Bits of the ``status_word`` register."""

    ON_BOTTOM = 0
    ROTATING = 1
    PUMPS_ON = 2
    PIT_GAIN_ALARM = 3
    GAS_ALARM = 4
    OVERPULL_ALARM = 5
    BOP_CLOSED = 6
    IN_SLIPS = 7


SERIAL_LENGTH = 12  # characters of the serial_number register
RATED_HOOK_LOAD_T = 300.0
TRAVELLING_T = 38.0  # block, hook and top drive: the hook load with the string in the slips
BHA_T = 28.0  # buoyed bottom-hole assembly
PIPE_T_PER_M = 0.027  # buoyed drill pipe
DRAG_T = 8.0  # hole friction on the moving string while tripping

JOINT_M = 9.5  # drilled per section: a connection every joint
STAND_M = 28.5  # three joints, racked in the derrick when tripping
BLOCK_LOW_M = 1.5  # block height with the joint drilled down
PICKUP_M = 1.5  # bit lifted off bottom before a connection or circulating
WIPER_STANDS = 2
TRIP_SPEED_M_S = 0.5
CIRCULATE_EVERY = 3  # sections
TRIP_EVERY = 6  # sections; a multiple of CIRCULATE_EVERY: trips follow circulating
CIRCULATING_RPM = 60.0

RAMP_S = 20.0  # pumps, rotation and weight on bit change over this long
FIRST_DRILL_S = 20.0
PICKUP_S = 30.0
PUMPS_OFF_S = 30.0
RESUME_S = 60.0
RACK_S = 45.0  # in the slips: set back (or fetch) one stand

LITRES_PER_STROKE = 18.0  # triplex pump output per stroke at its volumetric efficiency
FLOW_REF_L_MIN = 4000.0
BIT_DP_BAR = 70.0  # bit nozzles at FLOW_REF
PIPE_DP_BAR_PER_M = 0.05  # string and annulus friction at FLOW_REF
MOTOR_BAR_PER_T = 1.0  # differential pressure per tonne on bit
LINE_LOSS_BAR = 4.0  # pump to standpipe at FLOW_REF
TRANSIT_S = 20.0  # time constant of the return flow: mud in transit = TRANSIT_S x flow
TORQUE_BASE_KNM = 2.0
TORQUE_KNM_PER_M = 0.005  # string friction off bottom
TORQUE_KNM_PER_T = 0.7  # bit torque per tonne on bit
FULL_TORQUE_RPM = 40.0
AMBIENT_C = 15.0
MUD_C_PER_M = 0.01

KICK_L_MIN = 600.0  # influx rate once the kick is fully developed
KICK_RAMP_S = 60.0
WASHOUT_LOSS = 0.4  # share of pump 1's output lost to the washout
WASHOUT_RAMP_S = 120.0
H2S_RELEASE_PPM = 35.0
LEL_RELEASE_PCT = 28.0
GAS_RAMP_S = 90.0

H2S_ALARM_PPM = 10.0
LEL_ALARM_PCT = 20.0
PIT_GAIN_ALARM_M3 = 0.8
SLIPS_MARGIN_T = 2.0  # hook load this close to TRAVELLING_T: the string is in the slips
FORCED_RATIO = 1.10  # hook load over rated while an overpull is forced
DEMO_START_S, DEMO_END_S = 25.0, 40.0  # inside the first pick-up off bottom
DEMO_PEAK = 1.05

# Return flow: the pump flow of the last 4 x TRANSIT_S seconds through an exponential
# kernel (midpoint rule, weights normalised so a steady flow comes out unchanged).
_LAG_NODES = 32
_LAG_STEP_S = 4 * TRANSIT_S / _LAG_NODES
_LAGS = tuple((i + 0.5) * _LAG_STEP_S for i in range(_LAG_NODES))
_RAW_WEIGHTS = tuple(math.exp(-lag / TRANSIT_S) for lag in _LAGS)
_LAG_WEIGHTS = tuple(w / sum(_RAW_WEIGHTS) for w in _RAW_WEIGHTS)


def _eased_time(into: float, ramp: float) -> float:
    """Integral of ``_ease(s / ramp)`` over s in [0, into]: distance at an eased speed."""
    if ramp <= 0.0 or into >= ramp:
        return max(into - ramp / 2, 0.0)
    u = max(into, 0.0) / ramp
    return ramp * (u**3 - u**4 / 2)


def string_weight(bit_depth: float) -> float:
    """Buoyed weight (t) of the drill string hanging from the hook, without the block."""
    return BHA_T + PIPE_T_PER_M * max(bit_depth, 0.0)


def pump_flow(spm1: float, spm2: float) -> float:
    """Flow (L/min) the pumps deliver at these strokes: what the PLC reports as flow in."""
    return (spm1 + spm2) * LITRES_PER_STROKE


@dataclass(frozen=True)
class Levels:
    """What the driller sets; eased from one segment's levels to the next."""

    spm1: float
    spm2: float
    rpm: float
    wob: float
    hang: float  # 1: the string hangs from the hook, 0: it sits in the slips
    drag: float  # t on the hook from hole friction: + pulling out, - running in

    def towards(self, target: Levels, x: float) -> Levels:
        e = _ease(x)
        return Levels(
            *(a + (b - a) * e for a, b in zip(self.astuple(), target.astuple(), strict=True))
        )

    def astuple(self) -> tuple[float, ...]:
        return (self.spm1, self.spm2, self.rpm, self.wob, self.hang, self.drag)


@dataclass(frozen=True)
class Step:
    """One activity of a section, before it is placed in time."""

    state: RigState
    duration: float
    levels: Levels
    bit_move: float = 0.0  # m deeper over the step (negative: up)
    block_move: float = 0.0  # m higher over the step
    rop: float = 0.0  # m/h while drilling: bit, hole and block follow the eased ROP


@dataclass(frozen=True)
class Segment:
    """A step placed in time, with where the rig was when it began."""

    step: Step
    start: float
    before: Levels
    bit0: float
    hole0: float
    block0: float
    strokes0: float

    @property
    def end(self) -> float:
        return self.start + self.step.duration

    @property
    def ramp(self) -> float:
        return min(RAMP_S, self.step.duration / 2)

    def levels(self, into: float) -> Levels:
        return self.before.towards(self.step.levels, into / self.ramp)

    @property
    def rop_ramp(self) -> float:
        """How long the ROP takes to build: none when the bit was already drilling."""
        return 0.0 if self.before.wob == self.step.levels.wob else self.ramp

    def rop(self, into: float) -> float:
        if not self.rop_ramp:
            return self.step.rop
        return self.step.rop * _ease(into / self.rop_ramp)

    def positions(self, into: float) -> tuple[float, float, float]:
        """(bit depth, hole depth, block position) ``into`` seconds into the segment."""
        if self.step.rop:
            drilled = self.step.rop / 3600 * _eased_time(into, self.rop_ramp)
            return self.bit0 + drilled, self.hole0 + drilled, self.block0 - drilled
        x = _ease(into / self.step.duration)
        return (
            self.bit0 + self.step.bit_move * x,
            self.hole0,
            self.block0 + self.step.block_move * x,
        )

    def strokes(self, into: float) -> float:
        """Pump strokes (both pumps) since the start of the run."""
        eased = _eased_time(into, self.ramp)
        spm_seconds = sum(
            a * into + (b - a) * eased
            for a, b in (
                (self.before.spm1, self.step.levels.spm1),
                (self.before.spm2, self.step.levels.spm2),
            )
        )
        return self.strokes0 + spm_seconds / 60


@dataclass(frozen=True)
class Section:
    """One joint's seeded drilling parameters."""

    rop: float  # m/h
    wob: float  # t
    rpm: float
    spm1: float
    spm2: float
    circulate_s: float
    slips_s: float


class RigModel(ForcedOverload, Pins):
    """One rig's PLC readings as a function of time, plus the operator controls."""

    #: Scenarios this model plays (SimulatedPlc.scenario -> method of the same name).
    SCENARIOS = ("overload", "kick", "pump_washout", "h2s_release")
    #: The load alarm the simulator logs: (alarm tag, utilisation tag, rated-load tag).
    LOAD_ALARM = ("overpull_alarm", "hook_load_utilisation", "rated_hook_load")

    def __init__(self, seed: int = 0, demo_overload: bool = True) -> None:
        self.seed = seed
        self.demo_overload = demo_overload
        rng = random.Random(f"{seed}:rig")
        self.serial_number = f"DRK-RIG-{seed % 10_000:04d}"
        self.start_depth = rng.uniform(1500.0, 3000.0)
        self.pit_reference = rng.uniform(55.0, 75.0)
        self.strokes_start = float(rng.randint(1_000_000, 9_000_000))
        self.h2s_background = rng.uniform(0.2, 0.8)
        self.lel_background = rng.uniform(0.5, 2.0)
        self._pit_waves = _waves(rng, (20.0, 90.0))
        self._torque_waves = _waves(rng, (3.0, 12.0))
        self._gas_waves = _waves(rng, (30.0, 300.0))
        self._segments: list[Segment] = []
        self._starts: list[float] = []
        self._sections = 0
        super().__init__()  # pinned values: hold(), release(), held
        self._onsets: dict[str, float | None] = {}  # scenario -> start (None: next values)

    # --- the drilling plan -------------------------------------------------------------

    def section(self, k: int) -> Section:
        """Section ``k``'s parameters; each section has its own seeded random draw."""
        rng = random.Random(f"{self.seed}:section:{k}")
        return Section(
            rop=rng.uniform(25.0, 60.0),
            wob=rng.uniform(8.0, 16.0),
            rpm=rng.uniform(110.0, 170.0),
            spm1=rng.uniform(100.0, 125.0),
            spm2=rng.uniform(100.0, 125.0),
            circulate_s=rng.uniform(240.0, 420.0),
            slips_s=rng.uniform(70.0, 150.0),
        )

    def steps(self, k: int) -> list[Step]:
        """Section ``k``: drill a joint, maybe circulate and trip, make a connection."""
        s = self.section(k)
        circulate = k % CIRCULATE_EVERY == CIRCULATE_EVERY - 1
        drill_s = FIRST_DRILL_S if k == 0 else JOINT_M * 3600 / s.rop + RAMP_S / 2
        off_bottom = Levels(s.spm1, s.spm2, CIRCULATING_RPM if circulate else 0.0, 0.0, 1.0, 0.0)
        after = RigState.CIRCULATING if circulate else RigState.CONNECTION
        steps = [
            Step(
                RigState.DRILLING,
                drill_s,
                Levels(s.spm1, s.spm2, s.rpm, s.wob, 1.0, 0.0),
                rop=s.rop,
            ),
            Step(after, PICKUP_S, off_bottom, -PICKUP_M, PICKUP_M),
        ]
        if circulate:
            steps.append(Step(RigState.CIRCULATING, s.circulate_s, off_bottom))
        if k % TRIP_EVERY == TRIP_EVERY - 1:
            steps += _wiper_trip()
        return steps + _connection(s.slips_s, self.section(k + 1))

    def _first_segment_start(self) -> tuple[float, float]:
        """(bit depth, block position) at t = 0: the first joint is nearly drilled down."""
        drilled = self.section(0).rop / 3600 * FIRST_DRILL_S
        return self.start_depth, BLOCK_LOW_M + drilled

    def _extend(self) -> None:
        """Place the next section's steps after the plan so far."""
        if self._segments:
            last = self._segments[-1]
            bit, hole, block = last.positions(last.step.duration)
            start, before, strokes = last.end, last.step.levels, last.strokes(last.step.duration)
        else:
            (bit, block), start, strokes = self._first_segment_start(), 0.0, 0.0
            hole, before = bit, self.steps(0)[0].levels
        for step in self.steps(self._sections):
            seg = Segment(step, start, before, bit, hole, block, strokes)
            self._segments.append(seg)
            self._starts.append(start)
            bit, hole, block = seg.positions(step.duration)
            start, before, strokes = seg.end, step.levels, seg.strokes(step.duration)
        self._sections += 1

    def segment(self, t: float) -> Segment:
        """The plan's segment running at ``t`` (t < 0 counts as 0)."""
        t = max(t, 0.0)
        while not self._segments or self._segments[-1].end <= t:
            self._extend()
        lo, hi = 0, len(self._starts)
        while hi - lo > 1:  # last start <= t
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._starts[mid] <= t else (lo, mid)
        return self._segments[lo]

    # --- physics -----------------------------------------------------------------------

    def _ramp(self, name: str, t: float, ramp_s: float) -> float:
        """0 before the scenario starts (or when off), easing to 1 over ``ramp_s``."""
        onset = self._onsets.get(name)
        return 0.0 if onset is None else _ease((t - onset) / ramp_s)

    def _pump_output(self, t: float) -> float:
        """Flow (L/min) the pumps really deliver: less than the strokes say in a washout."""
        seg = self.segment(t)
        lv = seg.levels(max(t, 0.0) - seg.start)
        lost = WASHOUT_LOSS * self._ramp("pump_washout", t, WASHOUT_RAMP_S)
        return pump_flow(lv.spm1 * (1.0 - lost), lv.spm2)

    def influx(self, t: float) -> tuple[float, float]:
        """Kick: (influx rate L/min, volume gained m3) at ``t``."""
        onset = self._onsets.get("kick")
        if onset is None:
            return 0.0, 0.0
        rate = KICK_L_MIN * _ease((t - onset) / KICK_RAMP_S)
        return rate, KICK_L_MIN / 60_000 * _eased_time(t - onset, KICK_RAMP_S)

    def _returns(self, t: float) -> float:
        """Return flow (L/min) of the pump output, lagged by the annulus (no influx)."""
        return sum(
            w * self._pump_output(t - lag) for w, lag in zip(_LAG_WEIGHTS, _LAGS, strict=True)
        )

    def _hoisting(self, seg: Segment, into: float) -> dict[str, Value]:
        lv = seg.levels(into)
        bit, hole, block = seg.positions(into)
        hook = TRAVELLING_T + lv.hang * (string_weight(bit) + lv.drag) - lv.wob
        return {
            "hook_load": hook,
            "weight_on_bit": lv.wob,
            "block_position": block,
            "rate_of_penetration": seg.rop(into),
            "bit_depth": bit,
            "hole_depth": hole,
            "rig_state": float(seg.step.state),
            "rated_hook_load": RATED_HOOK_LOAD_T,
        }

    def _rotary(self, t: float, lv: Levels, bit: float) -> dict[str, Value]:
        turning = min(lv.rpm / FULL_TORQUE_RPM, 1.0)
        friction = (TORQUE_BASE_KNM + TORQUE_KNM_PER_M * bit) * turning
        torque = (friction + TORQUE_KNM_PER_T * lv.wob) * (
            1 + 0.03 * _ripple(self._torque_waves, t)
        )
        return {"top_drive_rpm": lv.rpm, "top_drive_torque": torque}

    def _circulation(self, t: float, seg: Segment, lv: Levels, bit: float) -> dict[str, Value]:
        output = self._pump_output(t)
        friction = (output / FLOW_REF_L_MIN) ** 2
        spp = friction * (BIT_DP_BAR + PIPE_DP_BAR_PER_M * bit) + MOTOR_BAR_PER_T * lv.wob
        discharge = spp + friction * LINE_LOSS_BAR
        returns = self._returns(t)
        rate, gained = self.influx(t)
        pit_wave = 0.015 * _ripple(self._pit_waves, t)
        return {
            "standpipe_pressure": spp,
            "pump1_spm": lv.spm1,
            "pump1_pressure": discharge * min(lv.spm1 / 10.0, 1.0),
            "pump2_spm": lv.spm2,
            "pump2_pressure": discharge * min(lv.spm2 / 10.0, 1.0),
            "flow_in": pump_flow(lv.spm1, lv.spm2),
            "flow_out": returns + rate,
            # mud in transit (returns x time constant) is what is missing from the pit
            "pit_volume": self.pit_reference - returns / 60_000 * TRANSIT_S + gained + pit_wave,
            "pit_gain": gained + pit_wave,
            "pump_strokes_total": float(
                math.floor(self.strokes_start + seg.strokes(t - seg.start))
            ),
            "pump1_run": seg.step.levels.spm1 > 0,
            "pump2_run": seg.step.levels.spm2 > 0,
        }

    def _gas(self, t: float, hole: float, flow_out: float) -> dict[str, Value]:
        wave = _ripple(self._gas_waves, t)
        h2s = self.h2s_background * (1 + 0.5 * wave)
        lel = self.lel_background * (1 + 0.5 * wave)
        release = self._ramp("h2s_release", t, GAS_RAMP_S)
        circulating = min(flow_out / FLOW_REF_L_MIN, 1.0)
        return {
            "h2s": h2s + (H2S_RELEASE_PPM - h2s) * release,
            "combustible_gas": lel + (LEL_RELEASE_PCT - lel) * release,
            "mud_temperature_out": AMBIENT_C
            + MUD_C_PER_M * hole * (0.7 + 0.3 * circulating)
            + 0.2 * wave,
            "bop_closed": False,
        }

    def _natural(self, t: float) -> dict[str, Value]:
        """Readings from the drilling plan and scenarios, before any control applies."""
        t = max(t, 0.0)
        seg = self.segment(t)
        into = t - seg.start
        lv = seg.levels(into)
        values = self._hoisting(seg, into)
        values |= self._rotary(t, lv, float(values["bit_depth"]))
        values |= self._circulation(t, seg, lv, float(values["bit_depth"]))
        values |= self._gas(t, float(values["hole_depth"]), float(values["flow_out"]))
        values["serial_number"] = self.serial_number
        return values

    def _demo_overpull(self, t: float, hook: float, rated: float) -> float:
        """The demo's hang-up on the first pick-up: blend towards 105 % of rated and back."""
        if not (self.demo_overload and DEMO_START_S < t < DEMO_END_S):
            return hook
        bell = math.sin(math.pi * (t - DEMO_START_S) / (DEMO_END_S - DEMO_START_S)) ** 2
        return hook + (DEMO_PEAK * rated - hook) * bell

    def values(self, t: float) -> dict[str, Value]:
        """Every tag at ``t`` seconds since start.

        Scenarios switched on without a start time start now. Pinned measured tags
        replace the model's; a forced (or demo) overpull sets the hook load from the
        (possibly pinned) rated hook load unless the hook load itself is pinned; derived
        tags (utilisation, alarms, running feedback, status word) follow from the result
        unless pinned.
        """
        self._onsets |= {name: t for name, at in self._onsets.items() if at is None}
        values = self._natural(t)
        values.update((tag, v) for tag, v in self._held.items() if tag not in _DERIVED)
        if "hook_load" not in self._held:
            rated = float(values["rated_hook_load"])
            hook = self._demo_overpull(t, float(values["hook_load"]), rated)
            values["hook_load"] = FORCED_RATIO * rated if self._forced else hook
        values |= derived(values)
        values.update(self._held)
        return values

    # --- controls ----------------------------------------------------------------------

    def _scenario(self, name: str, active: bool, at: float | None) -> None:
        if active:
            self._onsets[name] = at
        else:
            self._onsets.pop(name, None)

    def kick(self, active: bool, at: float | None = None) -> None:
        """Formation influx from ``at`` (default: the next ``values()`` call).

        The influx builds to 600 L/min over a minute: flow out and pit volume rise (1 m3
        gained within 2.5 min), flow in stays at the strokes' flow.
        """
        self._scenario("kick", active, at)

    def pump_washout(self, active: bool, at: float | None = None) -> None:
        """Washed-out valve in pump 1 from ``at``: over 2 min it loses 40 % of its output.

        Strokes and the flow in calculated from them stay; the real flow falls, so the
        standpipe pressure (square of the flow) drops by a third or more and flow out
        drops a little.
        """
        self._scenario("pump_washout", active, at)

    def h2s_release(self, active: bool, at: float | None = None) -> None:
        """Gas at the shakers from ``at``: H2S climbs to 35 ppm, combustible gas to 28 %LEL."""
        self._scenario("h2s_release", active, at)

    @property
    def scenarios(self) -> dict[str, float | None]:
        """Active scenarios and their start (None: starts at the next ``values()``)."""
        return dict(self._onsets)

    def validate(self, values: Mapping[str, object]) -> dict[str, Value]:
        """Check values to pin: known tags, the right kind of value, a sensible range."""
        return {tag: _checked(tag, value) for tag, value in values.items()}


def _wiper_trip() -> list[Step]:
    """Pull WIPER_STANDS stands (pumps off) and run them back in, setting the slips each time."""
    pull_s = STAND_M / TRIP_SPEED_M_S
    pulling = Levels(0.0, 0.0, 0.0, 0.0, 1.0, DRAG_T)
    running = Levels(0.0, 0.0, 0.0, 0.0, 1.0, -DRAG_T)
    slips = Levels(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    trip = RigState.TRIPPING
    out = [Step(trip, pull_s, pulling, -STAND_M, STAND_M), Step(trip, RACK_S, slips, 0.0, -STAND_M)]
    back = [Step(trip, RACK_S, slips, 0.0, STAND_M), Step(trip, pull_s, running, STAND_M, -STAND_M)]
    return out * WIPER_STANDS + back * WIPER_STANDS


def _connection(slips_s: float, following: Section) -> list[Step]:
    """Stop pumps and rotation, add a joint in the slips, restart and run back to bottom."""
    stopped = Levels(0.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    slips = Levels(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    resume = Levels(following.spm1, following.spm2, CIRCULATING_RPM, 0.0, 1.0, 0.0)
    conn = RigState.CONNECTION
    return [
        Step(conn, PUMPS_OFF_S, stopped),
        Step(conn, slips_s, slips, 0.0, JOINT_M),
        Step(conn, RESUME_S, resume, PICKUP_M, -PICKUP_M),
    ]


def derived(values: Mapping[str, Value]) -> dict[str, Value]:
    """Utilisation, alarms, running feedback and the status word from the other tags."""
    hook, wob = float(values["hook_load"]), float(values["weight_on_bit"])
    out: dict[str, Value] = {
        "hook_load_utilisation": 100.0 * hook / float(values["rated_hook_load"]),
        "pump1_running": float(values["pump1_spm"]) > 1.0,
        "pump2_running": float(values["pump2_spm"]) > 1.0,
        "gas_alarm": float(values["h2s"]) >= H2S_ALARM_PPM
        or float(values["combustible_gas"]) >= LEL_ALARM_PCT,
        "pit_gain_alarm": float(values["pit_gain"]) >= PIT_GAIN_ALARM_M3,
    }
    out["overpull_alarm"] = float(out["hook_load_utilisation"]) >= 100.0
    bits = {
        Status.ON_BOTTOM: wob >= 1.0,
        Status.ROTATING: float(values["top_drive_rpm"]) >= 5.0,
        Status.PUMPS_ON: bool(out["pump1_running"] or out["pump2_running"]),
        Status.PIT_GAIN_ALARM: bool(out["pit_gain_alarm"]),
        Status.GAS_ALARM: bool(out["gas_alarm"]),
        Status.OVERPULL_ALARM: bool(out["overpull_alarm"]),
        Status.BOP_CLOSED: bool(values["bop_closed"]),
        Status.IN_SLIPS: hook < TRAVELLING_T + SLIPS_MARGIN_T,
    }
    out["status_word"] = float(sum(1 << bit for bit, on in bits.items() if on))
    return out


def _checked(tag: str, value: object) -> Value:
    """One value to pin, checked for its tag; ValueError says what is wrong."""
    if tag not in TAGS:
        raise ValueError(f"unknown tag {tag!r}; known tags: {', '.join(TAGS)}")
    if tag in _BOOLS:
        if not isinstance(value, bool):
            raise ValueError(f"{tag} must be true or false, not {value!r}")
        return value
    if tag == "serial_number":
        if not (isinstance(value, str) and value.isascii() and value.isprintable()):
            raise ValueError(f"serial_number must be printable ASCII text, not {value!r}")
        if len(value) > SERIAL_LENGTH:
            raise ValueError(f"serial_number holds at most {SERIAL_LENGTH} characters")
        return value
    value = checked_number(tag, value)
    if tag == "rated_hook_load" and value <= 0:
        raise ValueError("rated_hook_load must be above 0 (utilisation divides by it)")
    if tag == "rig_state" and value not in tuple(RigState):
        raise ValueError(f"rig_state must be one of 0, 1, 2, 3, not {value!r}")
    if (tag in _COUNTERS or tag == "status_word") and (value < 0 or value != int(value)):
        raise ValueError(f"{tag} must be a whole number >= 0, not {value!r}")
    return float(value)


# A calibration set: values every rig register holds exactly (float32 and float64, x10
# and x1000 integers, whole-number counters, the 12-character serial). Pin them with
# ``hold`` and they read back bit for bit at the far end, which is how the end-to-end
# tests compare PLC and InfluxDB. They are consistent: flow in is (110 + 120) x 18 L,
# utilisation 126 / 300, and the status word is on bottom + rotating + pumps on.
EXACT_VALUES: dict[str, Value] = {
    "hook_load": 126.0,
    "weight_on_bit": 12.25,
    "block_position": 7.75,
    "top_drive_rpm": 140.0,
    "top_drive_torque": 18.5,
    "standpipe_pressure": 210.5,
    "pump1_spm": 110.0,
    "pump1_pressure": 214.25,
    "pump2_spm": 120.0,
    "pump2_pressure": 214.5,
    "flow_in": 4140.0,
    "flow_out": 4140.0,
    "pit_volume": 62.5,
    "rate_of_penetration": 35.5,
    "bit_depth": 2480.25,
    "hole_depth": 2480.25,
    "rig_state": float(RigState.DRILLING),
    "status_word": 7.0,
    "hook_load_utilisation": 42.0,
    "serial_number": "DRK-RIG-0042",
    "rated_hook_load": 300.0,
    "pump_strokes_total": 1_234_567.0,
    "pit_gain": -0.25,
    "h2s": 1.5,
    "combustible_gas": 2.5,
    "mud_temperature_out": 38.5,
    "pump1_run": True,
    "pump2_run": True,
    "bop_closed": False,
    "pump1_running": True,
    "pump2_running": True,
    "gas_alarm": False,
    "pit_gain_alarm": False,
    "overpull_alarm": False,
}
