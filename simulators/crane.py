"""Crane model: what an offshore pedestal crane's load moment indicator (LMI) reports.

Pure: no clock, no I/O. ``values(t)`` depends only on the seed, the seconds since start
and the operator controls (forced overload, pinned values), so tests can ask for any
instant and get the same answer every time.

The crane repeats one lift per 20 s slot: the boom luffs to its pick angle, the hook
takes the load, the boom luffs down (the radius grows, so the load chart's safe working
load falls), holds, luffs back up and the load is set down. Utilisation therefore peaks
with the boom at its lowest. Normal lifts peak between 55 and 85 % of the safe working
load; with the demo overload on, the second slot's lift (t = 22.5 s to 37.5 s) peaks at
108 % and is back below 90 % well before the slot ends, so a demo raises and clears one
alarm within its first minute.

Signals move together. The hoist takes the load at the start of the lift and sets it
down at the end (hoist rope speed up, then down; the hoist brake is released only then),
and the crane slews from the pick to the set-down position while the boom luffs. The
radius follows the boom length and angle; the luffing cylinders carry the moment of
hook load and boom about the boom foot, so the hydraulic pressure rises with the load
and the radius; the hoist motor current grows with the hook load and the rope speed;
gearbox vibration grows while the hoist runs. Hydraulic oil warms towards its running
temperature; running hours and the lift counter (one per load set down) only count up.

``status_word`` packs the status bits (see :class:`Status`). Radius, utilisation, the
cut-out, motor current, hydraulic pressure and the status word are derived after pins
apply (so a pinned or forced hook load moves them), unless they are pinned themselves.
"""

from __future__ import annotations

import bisect
import itertools
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

TAGS = (
    "hook_load",
    "safe_working_load",
    "boom_angle",
    "wind_speed",
    "utilisation",
    "overload_cutout",
    "boom_length",
    "radius",
    "slew_angle",
    "hoist_speed",
    "wind_gust",
    "hydraulic_pressure",
    "hoist_motor_current",
    "hydraulic_oil_temperature",
    "status_word",
    "running_hours",
    "lift_count",
    "gearbox_vibration",
    "power_on",
    "estop",
    "lmi_bypass",
    "brake_engaged",
)
_BOOLS = frozenset({"overload_cutout", "power_on", "estop", "lmi_bypass", "brake_engaged"})
# Computed from the other tags after pins apply (a forced overload moves them too).
_DERIVED = frozenset(
    {
        "radius",
        "utilisation",
        "overload_cutout",
        "hoist_motor_current",
        "hydraulic_pressure",
        "status_word",
    }
)
_COUNTERS = frozenset({"running_hours", "lift_count", "status_word"})  # never negative
_POSITIVE = frozenset({"safe_working_load", "boom_length"})


class Status(IntEnum):
    """Bits of the ``status_word`` register."""

    POWER_ON = 0
    ESTOP = 1
    OVERLOAD_CUTOUT = 2
    LMI_BYPASS = 3
    BRAKE_ENGAGED = 4


BOOM_LENGTH_M = 40.0
PEDESTAL_OFFSET_M = 2.0  # slew centre to boom foot pin
HOOK_BLOCK_T = 0.9  # hook block and rigging: the hook load with nothing on the hook
# Radius (m) -> safe working load (t), as printed on the crane's load chart.
LOAD_CHART = (
    (8.0, 50.0),
    (10.0, 45.0),
    (12.0, 40.0),
    (15.0, 33.0),
    (18.0, 28.0),
    (22.0, 23.0),
    (26.0, 19.5),
    (30.0, 16.5),
    (34.0, 14.0),
    (38.0, 12.0),
    (42.0, 10.5),
)
_CHART_RADII = [radius for radius, _ in LOAD_CHART]

SLOT_S = 20.0  # one lift cycle
LIFT_START_S = 2.5  # into the slot: the boom has reached its pick angle
LIFT_S = 15.0
REST_ANGLE_DEG = 70.0  # boom angle at t = 0
DEMO_SLOT = 1
DEMO_START_S = DEMO_SLOT * SLOT_S + LIFT_START_S
FORCED_RATIO = 1.15  # hook load over SWL while an overload is forced: past the 110 % alarm
# Scenario "high_wind": a squall adds this much to the mean wind and to the gust, taking
# typical offshore limits (about 20 m/s mean for lifting) well past the line.
SQUALL_MEAN_MS = 14.0
SQUALL_GUST_MS = 20.0
# Scenario "hydraulic_overheat": oil climbs from its running value to this, over RAMP.
OVERHEAT_C = 95.0
OVERHEAT_RAMP_S = 120.0
_GUST_PERIODS_S = ((2.0, 5.0), (5.0, 12.0), (12.0, 30.0), (30.0, 80.0), (80.0, 200.0))
GUST_WINDOW_S = 20.0  # gust: the highest wind over this window (sampled every 0.5 s)
_GUST_SAMPLES = 41

HOIST_LIFT_M = 2.5  # the hoist raises the load this far off the deck (and lowers it back)
SLEW_PICK_SPREAD_DEG = 10.0  # pick position: the seed's supply-vessel bearing +- this
SLEW_MOVE_DEG = (25.0, 50.0)  # set-down position: this far from the pick, either side
BOOM_T = 14.0  # boom self weight, acting at half its length
BAR_PER_TM = 0.3  # luffing cylinder pressure per tonne-metre about the boom foot
PRESSURE_BASE_BAR = 20.0  # return line and valve losses
MOTOR_IDLE_A = 35.0
MOTOR_A_PER_T = 9.0  # hoist motor current per tonne on the hook, rope at rest
MOTOR_SPEED_GAIN = 0.5  # extra share of that current at full rope speed
HOIST_FULL_SPEED = 1.5 * HOIST_LIFT_M / (0.2 * LIFT_S)  # peak rope speed (smoothstep)
OIL_TAU_S = 1800.0  # oil warm-up time constant
VIBRATION_HOIST_MM_S = 1.8  # extra gearbox vibration at full rope speed and full load

# Keyframes over the lift (fraction of LIFT_S -> level), eased in between.
# Boom: 0 = pick angle, 1 = lowest angle. Load: 0 = empty hook, 1 = full load.
_BOOM_KEYS = ((0.2, 0.0), (0.4, 1.0), (0.65, 1.0), (0.8, 0.0))
_LOAD_KEYS = ((0.0, 0.0), (0.2, 1.0), (0.8, 1.0), (1.0, 0.0))
# Slew: 0 = pick position, 1 = set-down position (while the boom luffs down).
_SLEW_KEYS = ((0.25, 0.0), (0.7, 1.0))


@dataclass(frozen=True)
class Lift:
    peak: float  # hook load over safe working load with the boom at its lowest
    high_deg: float  # boom angle when picking up and setting down
    low_deg: float  # lowest boom angle (largest radius) of the lift


DEMO_LIFT = Lift(peak=1.08, high_deg=68.0, low_deg=40.0)


def radius(angle_deg: float, boom_length: float = BOOM_LENGTH_M) -> float:
    """Hook radius (m) from the slew centre for a boom angle above horizontal."""
    return PEDESTAL_OFFSET_M + boom_length * math.cos(math.radians(angle_deg))


def luffing_pressure(
    hook_load: float, radius_m: float, angle_deg: float, boom_length: float
) -> float:
    """Luffing cylinder pressure (bar): the moment of hook load and boom about the foot."""
    boom_arm = PEDESTAL_OFFSET_M + boom_length / 2 * math.cos(math.radians(angle_deg))
    return PRESSURE_BASE_BAR + BAR_PER_TM * (hook_load * radius_m + BOOM_T * boom_arm)


def motor_current(hook_load: float, hoist_speed: float) -> float:
    """Hoist motor current (A): torque for the hook load, more while the rope moves."""
    moving = min(abs(hoist_speed) / HOIST_FULL_SPEED, 1.0)
    return MOTOR_IDLE_A + MOTOR_A_PER_T * max(hook_load, 0.0) * (1.0 + MOTOR_SPEED_GAIN * moving)


def safe_working_load(radius_m: float) -> float:
    """Load chart lookup, linear between chart rows, flat beyond its ends."""
    i = bisect.bisect_left(_CHART_RADII, radius_m)
    if i == 0:
        return LOAD_CHART[0][1]
    if i == len(LOAD_CHART):
        return LOAD_CHART[-1][1]
    (r0, swl0), (r1, swl1) = LOAD_CHART[i - 1], LOAD_CHART[i]
    return swl0 + (swl1 - swl0) * (radius_m - r0) / (r1 - r0)


def _keyframe(keys: tuple[tuple[float, float], ...], x: float) -> float:
    if x <= keys[0][0]:
        return keys[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(keys):
        if x <= x1:
            return y0 + (y1 - y0) * _ease((x - x0) / (x1 - x0))
    return keys[-1][1]


def _keyframe_rate(keys: tuple[tuple[float, float], ...], x: float) -> float:
    """d/dx of ``_keyframe``: how fast the eased level changes."""
    for (x0, y0), (x1, y1) in itertools.pairwise(keys):
        if x0 < x < x1:
            u = (x - x0) / (x1 - x0)
            return (y1 - y0) * 6.0 * u * (1.0 - u) / (x1 - x0)
    return 0.0


class CraneModel(ForcedOverload, Pins):
    """One crane's LMI readings as a function of time, plus the operator controls."""

    def __init__(self, seed: int = 0, demo_overload: bool = True) -> None:
        self.seed = seed
        self.demo_overload = demo_overload
        rng = random.Random(f"{seed}:wind")
        self._wind_mean = rng.uniform(6.0, 11.0)
        # Gusts: one sine per time scale (seconds to minutes), random period and phase.
        self._gusts = tuple(
            (rng.uniform(0.04, 0.12), 2 * math.pi / rng.uniform(low, high), rng.uniform(0, 6.3))
            for low, high in _GUST_PERIODS_S
        )
        rng = random.Random(f"{seed}:crane")
        self._slew_home = rng.uniform(70.0, 290.0)  # bearing of the supply vessel
        self._hours_start = rng.uniform(1_000.0, 40_000.0)
        self._lifts_start = rng.randint(5_000, 200_000)
        self._oil_start = rng.uniform(25.0, 40.0)
        self._oil_running = rng.uniform(50.0, 58.0)
        self._vibration_base = rng.uniform(1.0, 2.0)
        self._pressure_waves = _waves(rng, (1.0, 4.0))
        self._current_waves = _waves(rng, (0.5, 3.0))
        self._oil_waves = _waves(rng, (60.0, 300.0))
        self._vibration_waves = _waves(rng, (0.3, 2.0))
        self._squall = False
        self._overheat = False
        self._overheat_since: float | None = None
        super().__init__()  # pinned values: hold(), release(), held

    def slew(self, slot: int) -> tuple[float, float]:
        """(pick, set-down) slew angles of a slot's lift, each slot its own seeded draw."""
        rng = random.Random(f"{self.seed}:slew:{slot}")
        pick = self._slew_home + rng.uniform(-SLEW_PICK_SPREAD_DEG, SLEW_PICK_SPREAD_DEG)
        return pick, pick + rng.choice((-1.0, 1.0)) * rng.uniform(*SLEW_MOVE_DEG)

    def lift(self, slot: int) -> Lift:
        """The lift planned for a slot; each slot has its own seeded random draw."""
        if self.demo_overload and slot == DEMO_SLOT:
            return DEMO_LIFT
        rng = random.Random(f"{self.seed}:lift:{slot}")
        return Lift(rng.uniform(0.55, 0.85), rng.uniform(62.0, 78.0), rng.uniform(38.0, 55.0))

    def wind_speed(self, t: float) -> float:
        gust = sum(a * math.sin(w * t + phase) for a, w, phase in self._gusts)
        return max(0.0, self._wind_mean * (1.0 + gust))

    def wind_gust(self, t: float) -> float:
        """The highest wind speed over the last GUST_WINDOW_S seconds."""
        step = GUST_WINDOW_S / (_GUST_SAMPLES - 1)
        return max(self.wind_speed(t - i * step) for i in range(_GUST_SAMPLES))

    def _counters(self, t: float, slot: int, into: float) -> dict[str, float | bool]:
        """Running hours (0.1 h steps) and lifts completed (a lift ends when set down)."""
        done = slot + (1 if into >= LIFT_START_S + LIFT_S else 0)
        return {
            "running_hours": math.floor(self._hours_start * 10 + t / 360.0) / 10,
            "lift_count": float(self._lifts_start + done),
        }

    def _natural(self, t: float) -> dict[str, float | bool]:
        """Readings from the lift plan alone, before any control applies."""
        t = max(t, 0.0)
        slot = int(t // SLOT_S)
        into = t - slot * SLOT_S
        lift = self.lift(slot)
        before = self.lift(slot - 1).high_deg if slot > 0 else REST_ANGLE_DEG
        x = (into - LIFT_START_S) / LIFT_S
        if into < LIFT_START_S:  # slewing back and luffing to this lift's pick angle
            angle = before + (lift.high_deg - before) * _ease(into / LIFT_START_S)
        else:
            angle = lift.high_deg + (lift.low_deg - lift.high_deg) * _keyframe(_BOOM_KEYS, x)
        payload = lift.peak * safe_working_load(radius(lift.low_deg)) - HOOK_BLOCK_T
        load = _keyframe(_LOAD_KEYS, x)
        pick, place = self.slew(slot)
        if into < LIFT_START_S:  # slewing back from the last set-down to this pick
            last = self.slew(slot - 1)[1] if slot > 0 else self._slew_home
            slew = last + (pick - last) * _ease(into / LIFT_START_S)
        else:
            slew = pick + (place - pick) * _keyframe(_SLEW_KEYS, x)
        hoisting = 0.0 < x < _LOAD_KEYS[1][0] or _LOAD_KEYS[-2][0] < x < 1.0
        hoist_speed = HOIST_LIFT_M * _keyframe_rate(_LOAD_KEYS, x) / LIFT_S
        hook = HOOK_BLOCK_T + payload * load
        vibration = self._vibration_base + VIBRATION_HOIST_MM_S * min(
            abs(hoist_speed) / HOIST_FULL_SPEED, 1.0
        ) * (0.5 + 0.5 * load)
        warm = math.exp(-t / OIL_TAU_S)
        return {
            "hook_load": hook,
            "safe_working_load": safe_working_load(radius(angle)),
            "boom_angle": angle,
            "wind_speed": self.wind_speed(t),
            "boom_length": BOOM_LENGTH_M,
            "slew_angle": slew % 360.0,
            "hoist_speed": hoist_speed,
            "wind_gust": self.wind_gust(t),
            "hydraulic_oil_temperature": self._oil_running
            + (self._oil_start - self._oil_running) * warm
            + 0.3 * _ripple(self._oil_waves, t),
            "gearbox_vibration": vibration * (1.0 + 0.05 * _ripple(self._vibration_waves, t)),
            "power_on": True,
            "estop": False,
            "lmi_bypass": False,
            "brake_engaged": not hoisting,
            **self._counters(t, slot, into),
        }

    #: Scenarios this model plays (SimulatedPlc.scenario -> method of the same name).
    SCENARIOS = ("overload", "high_wind", "hydraulic_overheat")
    #: The load alarm the simulator logs: (alarm tag, utilisation tag, rated-load tag).
    LOAD_ALARM = ("overload_cutout", "utilisation", "safe_working_load")

    def high_wind(self, active: bool) -> None:
        """A squall: mean wind and gust well above the lifting limits until released."""
        self._squall = active

    def hydraulic_overheat(self, active: bool) -> None:
        """Oil cooler failure: temperature ramps to OVERHEAT_C from the next reading on."""
        self._overheat_since = None
        self._overheat = active

    def _weather_and_oil(self, t: float, values: dict[str, float | bool]) -> None:
        if self._squall:
            values["wind_speed"] = float(values["wind_speed"]) + SQUALL_MEAN_MS
            values["wind_gust"] = float(values["wind_gust"]) + SQUALL_GUST_MS
        if self._overheat:
            if self._overheat_since is None:
                self._overheat_since = t
            share = min(1.0, max(0.0, (t - self._overheat_since) / OVERHEAT_RAMP_S))
            running = float(values["hydraulic_oil_temperature"])
            values["hydraulic_oil_temperature"] = running + share * (OVERHEAT_C - running)

    def values(self, t: float) -> dict[str, float | bool]:
        """Every tag at ``t`` seconds since start.

        Pinned measured tags replace the model's; a forced overload sets the hook load
        from the (possibly pinned) safe working load unless the hook load itself is
        pinned; derived tags (radius, utilisation, the cut-out, motor current, hydraulic
        pressure, status word) follow from the result unless pinned.
        """
        values = self._natural(t)
        self._weather_and_oil(t, values)
        values.update((tag, v) for tag, v in self._held.items() if tag not in _DERIVED)
        if self._forced and "hook_load" not in self._held:
            values["hook_load"] = FORCED_RATIO * values["safe_working_load"]
        values |= self._derived(t, values)
        values.update(self._held)
        return values

    def _derived(self, t: float, values: Mapping[str, float | bool]) -> dict[str, float | bool]:
        """Radius, drives, utilisation, cut-out and status word; pinned ones win."""
        held = self._held
        hook, angle = float(values["hook_load"]), float(values["boom_angle"])
        length = float(values["boom_length"])
        out: dict[str, float | bool] = {"radius": radius(angle, length)}
        if "radius" in held:
            out["radius"] = held["radius"]
        pressure = luffing_pressure(hook, float(out["radius"]), angle, length)
        out["hydraulic_pressure"] = pressure * (1.0 + 0.01 * _ripple(self._pressure_waves, t))
        current = motor_current(hook, float(values["hoist_speed"]))
        out["hoist_motor_current"] = current * (1.0 + 0.015 * _ripple(self._current_waves, t))
        out["utilisation"] = 100.0 * hook / float(values["safe_working_load"])
        out["overload_cutout"] = held.get("overload_cutout", out["utilisation"] >= 100.0)
        out["status_word"] = float(status_word({**values, **out}))
        return out

    def validate(self, values: Mapping[str, object]) -> dict[str, float | bool]:
        """Check values to pin: known tags, bool for bools, finite numbers otherwise."""
        return {tag: _checked(tag, value) for tag, value in values.items()}


def status_word(values: Mapping[str, float | bool]) -> int:
    """The status bits (:class:`Status`) packed into one word."""
    bits = {
        Status.POWER_ON: values["power_on"],
        Status.ESTOP: values["estop"],
        Status.OVERLOAD_CUTOUT: values["overload_cutout"],
        Status.LMI_BYPASS: values["lmi_bypass"],
        Status.BRAKE_ENGAGED: values["brake_engaged"],
    }
    return sum(1 << bit for bit, on in bits.items() if on)


def _checked(tag: str, value: object) -> float | bool:
    """One value to pin, checked for its tag; ValueError says what is wrong."""
    if tag not in TAGS:
        raise ValueError(f"unknown tag {tag!r}; known tags: {', '.join(TAGS)}")
    if tag in _BOOLS:
        if not isinstance(value, bool):
            raise ValueError(f"{tag} must be true or false, not {value!r}")
        return value
    value = checked_number(tag, value)
    if tag == "safe_working_load" and value <= 0:
        raise ValueError("safe_working_load must be above 0 (utilisation divides by it)")
    if tag in _POSITIVE and value <= 0:
        raise ValueError(f"{tag} must be above 0, not {value!r}")
    if tag in _COUNTERS and value < 0:
        raise ValueError(f"{tag} must be >= 0, not {value!r}")
    if tag in {"lift_count", "status_word"} and value != int(value):
        raise ValueError(f"{tag} must be a whole number, not {value!r}")
    return float(value)


# A calibration set: values every crane register holds exactly (float32, utilisation x10
# and oil temperature x10 in 16 bits, vibration x100, running hours x10 and the lift
# counter in uint32). Pin them with ``hold`` and they read back bit for bit at the far
# end, which is how the end-to-end tests compare PLC and InfluxDB. They are consistent:
# utilisation is 12.5 / 25, the radius is 2 m + 40 m x cos(55.25 deg) to float32
# precision, the brake is on with the rope at rest, and the status word is power on +
# brake engaged (bits 0 and 4).
EXACT_VALUES: dict[str, float | bool] = {
    "hook_load": 12.5,
    "safe_working_load": 25.0,
    "boom_angle": 55.25,
    "wind_speed": 7.75,
    "utilisation": 50.0,
    "overload_cutout": False,
    "boom_length": 40.0,
    "radius": 24.80078125,
    "slew_angle": 135.5,
    "hoist_speed": 0.0,
    "wind_gust": 10.25,
    "hydraulic_pressure": 169.25,
    "hoist_motor_current": 147.5,
    "hydraulic_oil_temperature": 48.5,
    "status_word": 17.0,
    "running_hours": 12345.5,
    "lift_count": 48213.0,
    "gearbox_vibration": 2.25,
    "power_on": True,
    "estop": False,
    "lmi_bypass": False,
    "brake_engaged": True,
}
