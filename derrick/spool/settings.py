"""Settings of a durable spool (:mod:`derrick.spool.store`), shared by agent and collector."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from derrick.plumbing.configfile import StrictModel, beside_config
from derrick.spool.store import Priority, Spool


class SpoolSettings(StrictModel):
    """Where the spool lives and how big and old it may grow."""

    path: Path = Field(
        default=Path("state") / "spool.db",
        description="relative paths are relative to the config file's folder; each "
        "program gives its own default (state/derrick-<program>-<id>.db)",
    )
    max_mb: float = Field(default=256.0, gt=0, le=1_000_000)
    max_age_h: float = Field(default=168.0, gt=0, le=87_600)
    fsync: Literal["telemetry", "status", "alarm", "never"] = Field(
        default="status",
        description="commit messages of this class and above with an fsync, so they survive "
        "a power cut (a process kill never loses a committed message)",
    )

    @field_validator("path")
    @classmethod
    def _relative_to_config(cls, value: Path, info: ValidationInfo) -> object:
        return beside_config(value, info)

    def open(self) -> Spool:
        """Open (or create) the spool these settings describe."""
        return Spool(
            self.path,
            int(self.max_mb * 1e6),
            self.max_age_h * 3600,
            fsync_from=None if self.fsync == "never" else Priority[self.fsync.upper()],
        )


def default_spool_path(data: object, program: str, ident: object) -> object:
    """``data`` (a config dict) with ``spool.path`` defaulted to
    ``state/derrick-<program>-<ident>.db`` when none is given."""
    if not isinstance(data, dict) or not isinstance(ident, str):
        return data
    spool = data.get("spool") or {}
    if not isinstance(spool, dict) or spool.get("path") is not None:
        return data
    return {**data, "spool": {**spool, "path": Path("state") / f"derrick-{program}-{ident}.db"}}
