"""The simulated PLC: a model running on a clock, seen through a device profile.

The profile says which tag lives at which address in which table and how it is encoded;
this module turns the model's engineering values into those register words and bits with
the same codec the agent decodes with (:mod:`derrick.plc.registers`). It knows nothing of
Modbus framing or HTTP; :mod:`simulators.modbus_server` and :mod:`simulators.control`
sit on top of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Protocol

from derrick.plc.profile import Profile, Register, Table
from derrick.plc.registers import CodecError, DataType, encode, encode_bit, unscaled
from simulators.faults import Faults

Value = float | bool | str

# Integer registers saturate like a PLC's REAL-to-INT conversion, so a derived value out
# of range (say utilisation from absurd pinned loads) is served clipped, not as an error.
_INT_RANGE = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


# What a failed 4-20 mA transmitter reads once the PLC scales it: far below any real
# value. Integer registers saturate at their type's range (see register_words).
OUT_OF_RANGE = -9999.0


class Model(Protocol):
    """What a simulator model offers (see :class:`simulators.crane.CraneModel`).

    ``hold``, ``release`` and ``held`` come with :class:`simulators.hold.Pins`; a model
    brings ``validate`` and applies the pins in ``values``.
    """

    def values(self, t: float) -> dict[str, float | bool]: ...
    def overload(self, active: bool) -> None: ...
    @property
    def overload_forced(self) -> bool: ...
    def validate(self, values: Mapping[str, object]) -> dict[str, float | bool]: ...
    def hold(self, values: Mapping[str, object]) -> None: ...
    def release(self) -> None: ...
    @property
    def held(self) -> dict[str, float | bool]: ...


def register_words(reg: Register, value: Value, *, saturate: bool = False) -> list[int]:
    """Words of one numeric or string register: raw = (value - offset) / scale, encoded.

    Raises CodecError when the value does not fit the register type, unless ``saturate``
    clips integers to the type's range.
    """
    if reg.type is DataType.STRING:
        return encode(str(value), reg.type, reg.byte_order, reg.word_order, reg.length)
    raw = unscaled(float(value), reg.scale, reg.offset)
    if saturate and reg.type in _INT_RANGE:
        low, high = _INT_RANGE[reg.type]
        raw = min(max(raw, low), high)
    return encode(raw, reg.type, reg.byte_order, reg.word_order)


class SimulatedPlc:
    """A model on a monotonic clock, served as the register tables of one profile."""

    def __init__(
        self,
        profile: Profile,
        model: Model,
        clock: Callable[[], float] = time.monotonic,
        speed: float = 1.0,
    ) -> None:
        self.profile = profile
        self.model = model
        self.faults = Faults()
        self.speed = speed
        self._stuck: dict[str, float | bool | str] = {}
        self._out_of_range: set[str] = set()
        self._clock = clock
        self._start = clock()
        missing = set(self._tags) - set(model.values(0.0))
        if missing:
            raise ValueError(
                f"profile {profile.kind!r} has tags the model does not simulate: "
                + ", ".join(sorted(missing))
            )

    @property
    def _tags(self) -> list[str]:
        return [reg.tag for reg in self.profile.registers]

    def now(self) -> float:
        """Simulated seconds since the start: wall seconds times ``speed``."""
        return (self._clock() - self._start) * self.speed

    def values(self) -> dict[str, float | bool]:
        """The profile's tags now, in engineering units, as the sensors report them."""
        current = self.model.values(self.now())
        reported = {tag: current[tag] for tag in self._tags}
        reported.update(self._stuck)
        for tag in self._out_of_range:
            reported[tag] = OUT_OF_RANGE
        return reported

    def stick(self, tag: str, active: bool) -> None:
        """A stuck sensor: the tag keeps the value it has now until released."""
        self._check_numeric(tag)
        if active:
            self._stuck.setdefault(tag, self.values()[tag])
        else:
            self._stuck.pop(tag, None)

    def out_of_range(self, tag: str, active: bool) -> None:
        """A failed transmitter: the tag reads OUT_OF_RANGE until released."""
        self._check_numeric(tag)
        if active:
            self._out_of_range.add(tag)
        else:
            self._out_of_range.discard(tag)

    def sensor_faults(self) -> dict[str, list[str]]:
        return {"stuck": sorted(self._stuck), "out_of_range": sorted(self._out_of_range)}

    def _check_numeric(self, tag: str) -> None:
        reg = next((r for r in self.profile.registers if r.tag == tag), None)
        if reg is None or reg.type in (DataType.BOOL, DataType.BIT, DataType.STRING):
            raise ValueError(f"{tag!r} is not a numeric tag of {self.profile.kind}")

    def registers(self, table: Table) -> list[Register]:
        return [reg for reg in self.profile.registers if reg.table is table]

    def addresses(self, table: Table) -> frozenset[int]:
        """Every address the profile defines in ``table`` (all words of each tag)."""
        regs = self.registers(table)
        return frozenset(a for reg in regs for a in range(reg.address, reg.address + reg.count))

    def image(self, table: Table) -> dict[int, int | bool]:
        """The table now: address -> 16-bit word (register tables) or bit (bit tables)."""
        current = self.values()
        image: dict[int, int | bool] = {}
        bits = []
        for reg in self.registers(table):
            if table.is_bits:
                image[reg.address] = bool(current[reg.tag])
            elif reg.type is DataType.BIT:
                bits.append(reg)
            else:
                words = register_words(reg, current[reg.tag], saturate=True)
                image.update(zip(range(reg.address, reg.address + reg.count), words, strict=True))
        for reg in bits:  # after the whole words they may share a word with
            word = int(image.get(reg.address, 0))
            assert reg.bit is not None
            image[reg.address] = encode_bit(word, reg.bit, bool(current[reg.tag]), reg.byte_order)
        return image

    def overload(self, active: bool) -> bool:
        """Force (or release) an overload; True when that changed the state."""
        changed = self.model.overload_forced != active
        self.model.overload(active)
        return changed

    @property
    def overload_forced(self) -> bool:
        return self.model.overload_forced

    def validate(self, values: Mapping[str, object]) -> dict[str, float | bool]:
        """Values to pin, checked by the model and against their registers' types."""
        clean = self.model.validate(values)
        for tag, value in clean.items():
            reg = next((r for r in self.profile.registers if r.tag == tag), None)
            if reg is None or reg.table.is_bits or reg.type is DataType.BIT:
                continue
            try:
                register_words(reg, value)
            except CodecError as exc:
                raise ValueError(f"{tag}: {value!r} does not fit its {reg.type} register") from exc
        return clean

    def hold(self, values: Mapping[str, object]) -> None:
        """Pin tags to exact values. All or nothing: ValueError names the first bad one.

        The model keeps the pins (:class:`simulators.hold.Pins`): its derived tags follow.
        """
        self.model.hold(self.validate(values))

    def release(self) -> None:
        """Unpin every tag."""
        self.model.release()

    def scenarios(self) -> list[str]:
        """The scenarios this model declares (``SCENARIOS``), each a method(active)."""
        return list(getattr(self.model, "SCENARIOS", ()))

    def scenario(self, name: str, active: bool) -> None:
        """Start or end a scenario now (ValueError for one the model does not offer)."""
        if name not in self.scenarios():
            raise ValueError(
                f"no scenario {name!r} for {self.profile.kind}; have: {', '.join(self.scenarios())}"
            )
        getattr(self.model, name)(active)

    @property
    def held(self) -> dict[str, float | bool]:
        return self.model.held
