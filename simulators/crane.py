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
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

TAGS = (
    "hook_load",
    "safe_working_load",
    "boom_angle",
    "wind_speed",
    "utilisation",
    "overload_cutout",
)
_MEASURED = frozenset({"hook_load", "safe_working_load", "boom_angle", "wind_speed"})
_BOOLS = frozenset({"overload_cutout"})

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
FORCED_RATIO = 1.10  # hook load over SWL while an overload is forced
_GUST_PERIODS_S = ((2.0, 5.0), (5.0, 12.0), (12.0, 30.0), (30.0, 80.0), (80.0, 200.0))

# Keyframes over the lift (fraction of LIFT_S -> level), eased in between.
# Boom: 0 = pick angle, 1 = lowest angle. Load: 0 = empty hook, 1 = full load.
_BOOM_KEYS = ((0.2, 0.0), (0.4, 1.0), (0.65, 1.0), (0.8, 0.0))
_LOAD_KEYS = ((0.0, 0.0), (0.2, 1.0), (0.8, 1.0), (1.0, 0.0))


@dataclass(frozen=True)
class Lift:
    peak: float  # hook load over safe working load with the boom at its lowest
    high_deg: float  # boom angle when picking up and setting down
    low_deg: float  # lowest boom angle (largest radius) of the lift


DEMO_LIFT = Lift(peak=1.08, high_deg=68.0, low_deg=40.0)


def radius(angle_deg: float) -> float:
    """Hook radius (m) from the slew centre for a boom angle above horizontal."""
    return PEDESTAL_OFFSET_M + BOOM_LENGTH_M * math.cos(math.radians(angle_deg))


def safe_working_load(radius_m: float) -> float:
    """Load chart lookup, linear between chart rows, flat beyond its ends."""
    i = bisect.bisect_left(_CHART_RADII, radius_m)
    if i == 0:
        return LOAD_CHART[0][1]
    if i == len(LOAD_CHART):
        return LOAD_CHART[-1][1]
    (r0, swl0), (r1, swl1) = LOAD_CHART[i - 1], LOAD_CHART[i]
    return swl0 + (swl1 - swl0) * (radius_m - r0) / (r1 - r0)


def _ease(x: float) -> float:
    """Smoothstep on [0, 1]: motion starts and stops without a jerk."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def _keyframe(keys: tuple[tuple[float, float], ...], x: float) -> float:
    if x <= keys[0][0]:
        return keys[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(keys):
        if x <= x1:
            return y0 + (y1 - y0) * _ease((x - x0) / (x1 - x0))
    return keys[-1][1]


class CraneModel:
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
        self._forced = False
        self._held: dict[str, float | bool] = {}

    def lift(self, slot: int) -> Lift:
        """The lift planned for a slot; each slot has its own seeded random draw."""
        if self.demo_overload and slot == DEMO_SLOT:
            return DEMO_LIFT
        rng = random.Random(f"{self.seed}:lift:{slot}")
        return Lift(rng.uniform(0.55, 0.85), rng.uniform(62.0, 78.0), rng.uniform(38.0, 55.0))

    def wind_speed(self, t: float) -> float:
        gust = sum(a * math.sin(w * t + phase) for a, w, phase in self._gusts)
        return max(0.0, self._wind_mean * (1.0 + gust))

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
        return {
            "hook_load": HOOK_BLOCK_T + payload * _keyframe(_LOAD_KEYS, x),
            "safe_working_load": safe_working_load(radius(angle)),
            "boom_angle": angle,
            "wind_speed": self.wind_speed(t),
        }

    def values(self, t: float) -> dict[str, float | bool]:
        """Every tag at ``t`` seconds since start.

        Pinned measured tags replace the model's; a forced overload sets the hook load
        from the (possibly pinned) safe working load unless the hook load itself is
        pinned; utilisation and the cut-out are derived from the result unless pinned.
        """
        values = self._natural(t)
        values.update((tag, v) for tag, v in self._held.items() if tag in _MEASURED)
        if self._forced and "hook_load" not in self._held:
            values["hook_load"] = FORCED_RATIO * values["safe_working_load"]
        utilisation = 100.0 * values["hook_load"] / values["safe_working_load"]
        values["utilisation"] = utilisation
        values["overload_cutout"] = utilisation >= 100.0
        values.update(self._held)
        return values

    def overload(self, active: bool) -> None:
        """Force the hook load to 110 % of the safe working load until released."""
        self._forced = active

    @property
    def overload_forced(self) -> bool:
        return self._forced

    def validate(self, values: Mapping[str, object]) -> dict[str, float | bool]:
        """Check values to pin: known tags, bool for bools, finite numbers otherwise."""
        clean: dict[str, float | bool] = {}
        for tag, value in values.items():
            if tag not in TAGS:
                raise ValueError(f"unknown tag {tag!r}; known tags: {', '.join(TAGS)}")
            if tag in _BOOLS:
                if not isinstance(value, bool):
                    raise ValueError(f"{tag} must be true or false, not {value!r}")
                clean[tag] = value
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{tag} must be a number, not {value!r}")  # noqa: TRY004 - a 400
            if not math.isfinite(value):
                raise ValueError(f"{tag} must be finite, not {value!r}")
            if tag == "safe_working_load" and value <= 0:
                raise ValueError("safe_working_load must be above 0 (utilisation divides by it)")
            clean[tag] = float(value)
        return clean

    def hold(self, values: Mapping[str, object]) -> None:
        """Pin tags to exact values (added to those already pinned) until release()."""
        self._held.update(self.validate(values))

    def release(self) -> None:
        """Unpin every tag."""
        self._held.clear()

    @property
    def held(self) -> dict[str, float | bool]:
        return dict(self._held)


# A calibration set: values every crane register holds exactly (float32, and utilisation
# x10 in a uint16). Pin them with ``hold`` and they read back bit for bit at the far end,
# which is how the end-to-end tests compare PLC and InfluxDB.
EXACT_VALUES: dict[str, float | bool] = {
    "hook_load": 12.5,
    "safe_working_load": 25.0,
    "boom_angle": 55.25,
    "wind_speed": 7.75,
    "utilisation": 50.0,
    "overload_cutout": False,
}
