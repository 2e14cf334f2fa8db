"""Device profiles: the register map of one equipment model.

A profile in ``config/profiles/<name>.yaml`` is the single source of truth for a PLC's
registers: the simulator serves from it and the agent reads with it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import BeforeValidator, Field, model_validator

from derrick.plc.registers import DataType, Order, register_count
from derrick.plumbing import configfile
from derrick.plumbing.configfile import StrictModel
from derrick.wire.ids import Ident

_SOURCE_PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"
_INSTALLED_PROFILES = Path(sys.prefix) / "share" / "derrick" / "profiles"
PROFILE_DIR = _SOURCE_PROFILES if _SOURCE_PROFILES.is_dir() else _INSTALLED_PROFILES
"""The built-in profiles (crane, rig, bench100): ``config/profiles/`` of a source tree;
an installed wheel puts the same files in ``<venv>/share/derrick/profiles/``."""
DEFAULT_GROUP = "default"


class Table(StrEnum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


# Leading digit of Modicon 1-based register numbers per table (coils, prefix 0, can't
# be told apart from plain addresses).
MODICON_PREFIX = {"discrete": 1, "input": 3, "holding": 4}

# Types that read a whole 16-bit word and may share it with ``bit`` tags (a status word
# read both whole and per bit).
WORD_TYPES = frozenset({DataType.INT16, DataType.UINT16})
NUMERIC_TYPES = frozenset(DataType) - {DataType.BOOL, DataType.BIT, DataType.STRING}


class Deadband(StrictModel):
    """Report-by-exception threshold: publish a tag when it moved more than this.

    ``percent`` false: ``value`` in engineering units; true: ``value`` percent of the
    magnitude of the last published value. For bool, bit and string tags any deadband
    means "publish on change".
    """

    value: float = Field(ge=0, allow_inf_nan=False)
    percent: bool = False

    def threshold(self, last: float) -> float:
        """The change that must be exceeded, given the last published value."""
        return abs(last) * self.value / 100 if self.percent else self.value

    def exceeded(self, last: object, new: object) -> bool:
        """True when ``new`` should be published after ``last`` was.

        Numbers: ``|new - last| > threshold(last)`` (deadband 0: any change). Anything
        else (bool, str, None for a failed read): on change.
        """
        if _is_number(last) and _is_number(new):
            return abs(new - last) > self.threshold(last)  # type: ignore[operator]
        return last != new or type(last) is not type(new)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{self.value:g}"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_deadband(value: object) -> object:
    """``0.5`` / ``"0.5"`` absolute, ``"2%"`` percent of the last value, ``None`` none."""
    if value is None or isinstance(value, Deadband | dict):
        return value
    if isinstance(value, bool):  # pydantic reports ValueError, not TypeError
        raise ValueError(f"deadband {value!r}: give a number (0.5) or a percent ('2%')")  # noqa: TRY004
    percent = isinstance(value, str) and value.strip().endswith("%")
    text = value.strip().removesuffix("%").strip() if isinstance(value, str) else value
    try:
        number = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"deadband {value!r}: give a number (0.5) or a percent ('2%')") from None
    if not math.isfinite(number):
        raise ValueError(f"deadband {value!r} must be a finite number")
    if number < 0:
        raise ValueError(f"deadband {value!r} must not be negative")
    return Deadband(value=number, percent=percent)


DeadbandSetting = Annotated[Deadband | None, BeforeValidator(parse_deadband)]
"""A deadband key: number, percent string or null."""


class Register(StrictModel):
    """One tag: where it lives in the PLC and how to turn its words into a value."""

    tag: Ident
    table: Table
    address: int = Field(ge=0, le=65535, description="0-based protocol address")
    type: DataType
    bit: int | None = Field(
        default=None, ge=0, le=15, description="type bit only: bit number, 0 = least significant"
    )
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    length: int = Field(default=0, ge=0, le=240, description="characters, strings only")
    scale: float = 1.0
    offset: float = 0.0
    unit: str = Field(default="", max_length=16)
    description: str = ""
    protocol_address: bool = Field(
        default=False,
        description="the address is the 0-based protocol address even though it looks "
        "like Modicon 1-based numbering (40001-style); skips that check",
    )
    deadband: DeadbandSetting = Field(
        default=None, description="publish only on a change beyond this; none: every poll"
    )
    heartbeat_s: float | None = Field(
        default=None, gt=0, description="longest silence before the tag is published anyway"
    )
    group: Ident = Field(default=DEFAULT_GROUP, description="poll group (the device's interval)")

    @model_validator(mode="before")
    @classmethod
    def _not_modicon_numbering(cls, data: object) -> object:
        """Catch 40001-style addresses copied from a PLC manual where 0-based is meant."""
        if not isinstance(data, dict) or data.get("protocol_address"):
            return data
        prefix = MODICON_PREFIX.get(str(data.get("table")))
        address = data.get("address")
        if prefix is None or not isinstance(address, int) or isinstance(address, bool):
            return data
        for base in (prefix * 10_000, prefix * 100_000):  # 5- and 6-digit forms
            if base + 1 <= address <= base + (9_999 if base < 100_000 else 65_536):
                raise ValueError(
                    f"address {address} looks like 1-based Modicon numbering for a "
                    f"{data.get('table')} register ({prefix}xxxx): the protocol address is "
                    f"{address - base - 1}; if {address} really is the 0-based address, "
                    "add protocol_address: true"
                )
        return data

    @model_validator(mode="after")
    def _fits_table(self) -> Self:
        if self.type is DataType.BIT:
            if self.table.is_bits:
                raise ValueError(
                    f"type bit is one bit of a holding or input register; a {self.table} "
                    "is a single bit already: use type bool"
                )
            if self.bit is None:
                raise ValueError("type bit needs bit: 0..15 (0 = least significant)")
        elif self.bit is not None:
            raise ValueError(f"bit is only for type bit, not {self.type}")
        if self.table.is_bits and self.type is not DataType.BOOL:
            raise ValueError(
                f"a {self.table} holds single bits: type must be bool, not {self.type}"
            )
        if not self.table.is_bits and self.type is DataType.BOOL:
            raise ValueError(
                f"type bool needs a coil or discrete table, not {self.table} "
                "(one bit of a register: type bit with bit: N)"
            )
        if self.type is DataType.STRING and self.length == 0:
            raise ValueError("a string needs length (characters)")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.type not in NUMERIC_TYPES and (self.scale != 1 or self.offset != 0):
            raise ValueError(f"scale and offset apply to numbers, not to type {self.type}")
        return self

    @property
    def count(self) -> int:
        """Registers (or bits) this tag occupies."""
        return register_count(self.type, self.length)

    @property
    def is_numeric(self) -> bool:
        """A number (deadbands compare magnitudes), not a bool, bit or string."""
        return self.type in NUMERIC_TYPES


def _wire_bit(reg: Register) -> int:
    """The bit's position in the word as sent (byte order little swaps the bytes)."""
    assert reg.bit is not None
    return reg.bit if reg.byte_order is Order.BIG else reg.bit ^ 8


def _may_share_word(a: Register, b: Register) -> bool:
    if a.type is DataType.BIT and b.type is DataType.BIT:
        return _wire_bit(a) != _wire_bit(b)
    if a.type is DataType.BIT:
        return b.type in WORD_TYPES
    if b.type is DataType.BIT:
        return a.type in WORD_TYPES
    return False


def map_problems(registers: Iterable[Register]) -> list[str]:
    """Everything wrong with a register map as a whole: duplicate tags and overlaps.

    Tags overlap when they use the same address of the same table, except ``bit`` tags,
    which may share a word with other bits of it (distinct bit numbers) and with one
    int16/uint16 tag reading the whole word.
    """
    problems: list[str] = []
    tags: set[str] = set()
    occupants: dict[tuple[Table, int], list[Register]] = {}
    for reg in registers:
        if reg.tag in tags:
            problems.append(f"tag {reg.tag!r} defined twice")
            continue
        tags.add(reg.tag)
        for addr in range(reg.address, reg.address + reg.count):
            here = occupants.setdefault((reg.table, addr), [])
            clash = next((other for other in here if not _may_share_word(reg, other)), None)
            if clash is not None:
                problems.append(_overlap(reg, clash, addr))
                break
            here.append(reg)
    return problems


def _overlap(reg: Register, other: Register, addr: int) -> str:
    where = f"tag {reg.tag!r} overlaps tag {other.tag!r} at {reg.table} {addr}"
    if reg.type is DataType.BIT and other.type is DataType.BIT:
        return f"{where} bit {_wire_bit(reg)} (as sent)"
    if DataType.BIT in (reg.type, other.type):
        return (
            f"{where}: a bit tag may share its word only with other bits and an "
            "int16/uint16 tag of that word"
        )
    return where


class Profile(StrictModel):
    kind: Ident = Field(description="equipment kind, stored as the InfluxDB tag 'kind'")
    description: str = ""
    registers: list[Register] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_overlap(self) -> Self:
        problems = map_problems(self.registers)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def register(self, tag: str) -> Register:
        for reg in self.registers:
            if reg.tag == tag:
                return reg
        raise KeyError(tag)


def profile_path(name: str, config_dir: Path | None = None) -> Path:
    """Where profile ``name`` lives.

    A path (``x/y.yaml``) is taken relative to the config file's folder. A bare name is
    looked up in ``profiles/`` next to the config file, then in the built-in profiles
    (:data:`PROFILE_DIR`).
    """
    base = config_dir or Path.cwd()
    if "/" in name or name.endswith((".yaml", ".yml")):
        return base / name
    local = base / "profiles" / f"{name}.yaml"
    return local if local.exists() else PROFILE_DIR / f"{name}.yaml"


def load_profile(name: str, config_dir: Path | None = None) -> Profile:
    return configfile.load(profile_path(name, config_dir), Profile)
