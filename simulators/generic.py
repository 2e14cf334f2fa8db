"""A model for any profile: every tag wanders slowly around a seeded level (benchmarks).

The crane and rig models are physics; this one only needs the profile. Each tag gets,
from ``random.Random(f"{seed}:{tag}")`` (so adding a tag does not change the others), a
level, a swing and three sine waves with periods from seconds to minutes. The value is
a pure function of time, like the other models: the same seed gives the same run, and
reading twice at one instant gives one answer. Values are plausible for their register:

* floats: a level of 5 to 500 (raw) swinging by 5-20 %;
* integers: a level and swing inside the type's range, whole raw numbers, so what the
  model says is exactly what the register holds;
* bools: on or off for tens of seconds at a time;
* strings: the tag name.

Everything is in engineering units (raw x scale + offset), as the codec scales it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from derrick.plc.profile import Profile, Register
from derrick.plc.registers import DataType
from simulators.hold import Pins

Value = float | bool | str

# Raw (unscaled) level range and swing (fraction of the level, or absolute for signed).
_INT_LEVELS: dict[DataType, tuple[float, float]] = {
    DataType.UINT16: (100.0, 5_000.0),
    DataType.INT16: (-5_000.0, 5_000.0),
    DataType.UINT32: (10_000.0, 1_000_000.0),
    DataType.INT32: (-1_000_000.0, 1_000_000.0),
    DataType.UINT64: (10_000.0, 1_000_000.0),
    DataType.INT64: (-1_000_000.0, 1_000_000.0),
}
_FLOATS = (DataType.FLOAT32, DataType.FLOAT64)
_BITS = (DataType.BOOL, DataType.BIT)  # a coil / discrete input, or one bit of a register
# Weights of the slow, middle and fast wave: mostly slow drift, a little jitter.
_WEIGHTS = (0.6, 0.3, 0.1)
_PERIODS_S = ((120.0, 600.0), (20.0, 120.0), (3.0, 20.0))
_BOOL_WEIGHTS = (0.7, 0.3)  # no fast wave: no chatter around a switch


@dataclass(frozen=True, slots=True)
class _Wander:
    """One tag's walk: raw value = level + swing x (sum of weighted sines)."""

    level: float
    swing: float
    waves: tuple[tuple[float, float, float], ...]  # (weight, angular speed, phase)

    def at(self, t: float) -> float:
        return self.level + self.swing * sum(w * math.sin(k * t + p) for w, k, p in self.waves)


def _waves(
    rng: random.Random, weights: tuple[float, ...]
) -> tuple[tuple[float, float, float], ...]:
    return tuple(
        (weight, 2 * math.pi / rng.uniform(*periods), rng.uniform(0, 2 * math.pi))
        for weight, periods in zip(weights, _PERIODS_S, strict=False)
    )


def _wander(rng: random.Random, datatype: DataType) -> _Wander:
    """A number's walk; it never leaves its type's range (the weights sum to 1)."""
    waves = _waves(rng, _WEIGHTS)
    if datatype in _FLOATS:
        level = rng.uniform(5.0, 500.0)
        return _Wander(level, level * rng.uniform(0.05, 0.2), waves)
    low, high = _INT_LEVELS[datatype]
    level = rng.uniform(low, high)
    # unsigned: swing below the level, so it stays >= 0; signed: moves even near 0
    base = level if low >= 0 else max(abs(level), 2_000.0)
    return _Wander(level, base * rng.uniform(0.05, 0.1), waves)


def _flip(rng: random.Random) -> _Wander:
    """A bool's walk: on while above 0; slow waves only, so it holds for a while."""
    return _Wander(0.0, 1.0, _waves(rng, _BOOL_WEIGHTS))


class GenericModel(Pins):
    """Slowly wandering values for every tag of ``profile`` (the simulator Model API)."""

    def __init__(self, profile: Profile, seed: int = 0) -> None:
        self.profile = profile
        self.seed = seed
        self._registers = {reg.tag: reg for reg in profile.registers}
        self._walks: dict[str, _Wander] = {}
        self._flips: dict[str, _Wander] = {}
        for reg in profile.registers:
            rng = random.Random(f"{seed}:{reg.tag}")
            if reg.type in _BITS:
                self._flips[reg.tag] = _flip(rng)
            elif reg.type is not DataType.STRING:
                self._walks[reg.tag] = _wander(rng, reg.type)
        super().__init__()  # pinned values: hold(), release(), held

    def values(self, t: float) -> dict[str, Value]:
        values: dict[str, Value] = {}
        for tag, walk in self._walks.items():
            values[tag] = self._engineering(self._registers[tag], walk.at(t))
        for tag, walk in self._flips.items():
            values[tag] = walk.at(t) > 0.0
        for reg in self.profile.registers:
            if reg.type is DataType.STRING:
                values[reg.tag] = reg.tag[: reg.length]
        values.update(self._held)
        return values

    @staticmethod
    def _engineering(reg: Register, raw: float) -> float:
        if reg.type not in _FLOATS:
            raw = float(round(raw))
        return raw * reg.scale + reg.offset

    # --- the rest of the simulator Model API: no overload; pinning is Pins' -------------

    def overload(self, active: bool) -> None:
        """No load to overload: nothing happens (derrick-sim refuses --overload)."""

    @property
    def overload_forced(self) -> bool:
        return False

    def validate(self, values: Mapping[str, object]) -> dict[str, Value]:
        """Known tags; a bool for a bool tag, a string for a string, else a finite number."""
        clean: dict[str, Value] = {}
        for tag, value in values.items():
            reg = self._registers.get(tag)
            if reg is None:
                raise ValueError(f"unknown tag {tag!r}")
            if reg.type in _BITS:
                if not isinstance(value, bool):
                    raise ValueError(f"{tag} must be true or false")
            elif reg.type is DataType.STRING:
                if not isinstance(value, str):
                    raise ValueError(f"{tag} must be a string")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{tag} must be a number")
            elif not math.isfinite(value):
                raise ValueError(f"{tag} must be finite")
            clean[tag] = value if isinstance(value, bool | str) else float(value)
        return clean
