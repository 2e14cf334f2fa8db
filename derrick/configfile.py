"""Load YAML into pydantic models, failing fast with file, key and reason."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, loaded values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(Exception):
    """A config file that cannot be used. ``str()`` names file, key and reason."""

    def __init__(self, path: Path | str, problems: list[tuple[str, str]]):
        self.path = str(path)
        self.problems = problems
        lines = [
            f"{self.path}: {key}: {reason}" if key else f"{self.path}: {reason}"
            for key, reason in problems
        ]
        super().__init__("\n".join(lines))


def _key_of(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def read_yaml(path: Path | str) -> object:
    """Parse a YAML file; unreadable files and syntax errors become ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [("", f"cannot read file: {exc.strerror or exc}")]) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [("", f"invalid YAML: {where}{problem}")]) from exc


def validate(path: Path | str, data: object, model: type[ModelT]) -> ModelT:
    """Validate parsed YAML against ``model``; every problem is reported, not just the first."""
    if data is None:
        raise ConfigError(path, [("", "file is empty")])
    try:
        return model.model_validate(data, context={"config_path": Path(path)})
    except ValidationError as exc:
        problems = [(_key_of(err["loc"]), err["msg"]) for err in exc.errors()]
        raise ConfigError(path, problems) from exc


def load(path: Path | str, model: type[ModelT]) -> ModelT:
    """Read and validate one YAML config file."""
    return validate(path, read_yaml(path), model)
