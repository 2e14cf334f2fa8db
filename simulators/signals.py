"""Building blocks the equipment models share: smooth motion, seeded ripple, pin checks."""

from __future__ import annotations

import math
import random


def ease(x: float) -> float:
    """Smoothstep on [0, 1]: motion starts and stops without a jerk."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def waves(rng: random.Random, periods: tuple[float, float], count: int = 3) -> tuple:
    """Seeded sines (angular speed, phase) for a small ripple on a sensor."""
    return tuple(
        (2 * math.pi / rng.uniform(*periods), rng.uniform(0, 2 * math.pi)) for _ in range(count)
    )


def ripple(sines: tuple, t: float) -> float:
    """Mean of the seeded sines at ``t``: a ripple in [-1, 1]."""
    return sum(math.sin(w * t + phase) for w, phase in sines) / len(sines)


def checked_number(tag: str, value: object) -> float:
    """A pinned value that must be a finite number (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{tag} must be a number, not {value!r}")  # noqa: TRY004 - a 400
    if not math.isfinite(value):
        raise ValueError(f"{tag} must be finite, not {value!r}")
    return value
