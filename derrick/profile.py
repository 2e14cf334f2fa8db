"""Device profiles: the register map of one equipment model.

A profile in ``config/profiles/<name>.yaml`` is the single source of truth for a PLC's
registers: the simulator serves from it and the agent reads with it.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from derrick import configfile
from derrick.configfile import StrictModel
from derrick.contract import Ident
from derrick.registers import DataType, Order, register_count

PROFILE_DIR = Path(__file__).resolve().parent.parent / "config" / "profiles"


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


class Register(StrictModel):
    """One tag: where it lives in the PLC and how to turn its words into a value."""

    tag: Ident
    table: Table
    address: int = Field(ge=0, le=65535, description="0-based protocol address")
    type: DataType
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
        if self.table.is_bits and self.type is not DataType.BOOL:
            raise ValueError(
                f"a {self.table} holds single bits: type must be bool, not {self.type}"
            )
        if not self.table.is_bits and self.type is DataType.BOOL:
            raise ValueError(f"type bool needs a coil or discrete table, not {self.table}")
        if self.type is DataType.STRING and self.length == 0:
            raise ValueError("a string needs length (characters)")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self

    @property
    def count(self) -> int:
        """Registers (or bits) this tag occupies."""
        return register_count(self.type, self.length)


class Profile(StrictModel):
    kind: Ident = Field(description="equipment kind, stored as the InfluxDB tag 'kind'")
    description: str = ""
    registers: list[Register] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_overlap(self) -> Self:
        seen: dict[str, str] = {}
        for reg in self.registers:
            if reg.tag in seen.values():
                raise ValueError(f"tag {reg.tag!r} defined twice")
            for addr in range(reg.address, reg.address + reg.count):
                key = f"{reg.table}:{addr}"
                if key in seen:
                    raise ValueError(
                        f"tag {reg.tag!r} overlaps tag {seen[key]!r} at {reg.table} {addr}"
                    )
                seen[key] = reg.tag
        return self

    def register(self, tag: str) -> Register:
        for reg in self.registers:
            if reg.tag == tag:
                return reg
        raise KeyError(tag)


def profile_path(name: str, config_dir: Path | None = None) -> Path:
    """Where profile ``name`` lives.

    A path (``x/y.yaml``) is taken relative to the config file's folder. A bare name is
    looked up in ``profiles/`` next to the config file, then in the project's
    ``config/profiles/``.
    """
    base = config_dir or Path.cwd()
    if "/" in name or name.endswith((".yaml", ".yml")):
        return base / name
    local = base / "profiles" / f"{name}.yaml"
    return local if local.exists() else PROFILE_DIR / f"{name}.yaml"


def load_profile(name: str, config_dir: Path | None = None) -> Profile:
    return configfile.load(profile_path(name, config_dir), Profile)
