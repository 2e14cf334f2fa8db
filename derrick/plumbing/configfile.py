"""Load YAML into pydantic models, failing fast with file, key and reason.

Every config file (agent, collector, profiles, rules, scenarios) goes through
:func:`load`: parse the YAML, expand ``${NAME}`` / ``${NAME:-default}`` environment
variables in string values, validate against the model. A problem is reported as one line
``file: key: reason`` where the key reads like the YAML, naming list items by their
``name`` or ``tag``: ``devices[0] (lmi).registers[3] (tag hook_load).address``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo

ModelT = TypeVar("ModelT", bound=BaseModel)
Loc = tuple[int | str, ...]


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, loaded values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(Exception):
    """A config file that cannot be used. ``str()`` names file, key and reason.

    ``problems`` holds ``(key, reason)`` pairs, one per problem, one line each in ``str()``.
    """

    def __init__(self, path: Path | str, problems: list[tuple[str, str]]):
        self.path = str(path)
        self.problems = problems
        lines = [
            f"{self.path}: {key}: {reason}" if key else f"{self.path}: {reason}"
            for key, reason in problems
        ]
        super().__init__("\n".join(lines))


def location(loc: Loc, data: object = None) -> str:
    """Human key of a pydantic error location, read against the parsed document.

    ``("devices", 0, "registers", 3, "address")`` becomes
    ``devices[0] (lmi).registers[3] (tag hook_load).address`` when those list items have a
    ``name`` / ``tag``.
    """
    text = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            text += _item_label(node)
        else:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, Mapping) else None
    return text or "(top level)"


def _item_label(item: object) -> str:
    if not isinstance(item, Mapping):
        return ""
    for key, fmt in (("name", "{}"), ("tag", "tag {}")):
        value = item.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return f" ({fmt.format(value)})"
    return ""


def reason_of(msg: str) -> str:
    """A pydantic message without the "Value error, " that validators' messages get."""
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def problems_of(exc: ValidationError, data: object = None) -> list[tuple[str, str]]:
    """``(key, reason)`` per problem; a multi-line reason (a nested file's problems, see
    :func:`nested`) becomes one problem per line under the same key."""
    problems = []
    for err in exc.errors():
        key = location(err["loc"], data)
        problems += [(key, line) for line in reason_of(err["msg"]).splitlines() if line.strip()]
    return problems


def one_line(exc: ValidationError) -> str:
    """Every problem of ``exc`` on one line: ``key: reason; key: reason``."""
    return "; ".join(
        f"{location(err['loc'])}: {reason_of(err['msg'])}" if err["loc"] else reason_of(err["msg"])
        for err in exc.errors()
    )


def nested(label: str, exc: ConfigError) -> str:
    """Message for a validator that loaded another file (a profile, a rules file) and got
    ``exc``: one line per problem, each naming ``label`` and that file, so the outer
    :class:`ConfigError` keeps one line per problem."""
    return "\n".join(
        f"{label} {exc.path}: {key}: {reason}" if key else f"{label} {exc.path}: {reason}"
        for key, reason in exc.problems
    )


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


# $$ | ${NAME} | ${NAME:-default} | any other ${... (malformed)
_REFERENCE = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|(?P<bad>\{[^}]*\}?))"
)


def expand_env(path: Path | str, data: object, environ: Mapping[str, str] | None = None) -> object:
    """``data`` with ``${NAME}`` and ``${NAME:-default}`` expanded in every string value.

    Keys are left alone. ``$$`` is a literal ``$``; a ``$`` not followed by ``{`` or ``$``
    stays as it is. ``:-default`` is used when the variable is unset or empty. Values stay
    strings: pydantic converts ``"502"`` for an integer key as it would the YAML ``502``.
    An unset variable without default (or a malformed ``${``) is a ConfigError naming
    file, key and variable; every such problem of the file is reported.
    """
    env = os.environ if environ is None else environ
    problems: list[tuple[Loc, str]] = []

    def substitute(text: str, loc: Loc) -> str:
        def one(match: re.Match[str]) -> str:
            if match["dollar"]:
                return "$"
            if match["bad"] is not None:
                problems.append(
                    (loc, f"malformed {match[0]!r}: write ${{NAME}}, ${{NAME:-default}} or $$")
                )
                return match[0]
            value = env.get(match["name"])
            if value is None or (value == "" and match["default"] is not None):
                if match["default"] is not None:
                    return match["default"]
                problems.append((loc, f"environment variable {match['name']} is not set"))
                return match[0]
            return value

        return _REFERENCE.sub(one, text)

    def walk(node: object, loc: Loc) -> object:
        if isinstance(node, str):
            return substitute(node, loc) if "$" in node else node
        if isinstance(node, list):
            return [walk(item, (*loc, index)) for index, item in enumerate(node)]
        if isinstance(node, dict):
            return {key: walk(value, (*loc, str(key))) for key, value in node.items()}
        return node

    expanded = walk(data, ())
    if problems:
        raise ConfigError(path, [(location(loc, data), reason) for loc, reason in problems])
    return expanded


def validate(path: Path | str, data: object, model: type[ModelT]) -> ModelT:
    """Validate parsed YAML against ``model``; every problem is reported, not just the first.

    Validators find the file in ``info.context["config_path"]`` (to resolve relative paths).
    """
    if data is None:
        raise ConfigError(path, [("", "file is empty")])
    try:
        return model.model_validate(data, context={"config_path": Path(path)})
    except ValidationError as exc:
        raise ConfigError(path, problems_of(exc, data)) from exc


def load(path: Path | str, model: type[ModelT]) -> ModelT:
    """Read one YAML config file, expand environment variables, validate."""
    return validate(path, expand_env(path, read_yaml(path)), model)


def beside_config(value: object, info: ValidationInfo) -> object:
    """A relative path, taken relative to the folder of the config file being loaded.

    For ``field_validator``s of path keys; without a config file (a plain
    ``model_validate``) a relative path stays relative to the working directory.
    """
    if value is None or not isinstance(value, str | Path):
        return value
    path = Path(value).expanduser()
    config_path = (info.context or {}).get("config_path")
    if config_path and not path.is_absolute():
        path = Path(config_path).parent / path
    return path


def readable_file(path: Path | None) -> Path | None:
    """For validators of file keys: the file exists and this process may read it."""
    if path is None:
        return None
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path}: not readable")
    return path


def require_unique(names: list[str], what: str) -> None:
    """ValueError naming every repeated name (``what``: "device names", "rule names")."""
    dupes = sorted({name for name in names if names.count(name) > 1})
    if dupes:
        raise ValueError(f"{what} must be unique: {', '.join(dupes)}")
