"""Alarm rule model: what a rule file may say, validated before anything runs.

A rule file is a YAML mapping ``rules: [...]`` (or a bare list of rules). Each rule has a
unique ``name``, a selector (``site``, ``asset``, ``device``, ``kind``, ``tag``: fnmatch
globs) and a ``type`` that picks its condition. Timing (deadband, on/off delays) defaults
by ``signal`` kind from the ISA-18.2 / EEMUA 191 starting points in
:data:`SIGNAL_DEFAULTS`. The condition engine (``derrick/alarms/engine.py``) runs them;
docs/alarm-rules.md documents every key.

:func:`load_rules` goes through ``derrick.plumbing.configfile`` (YAML, ``${ENV}`` expansion, one
``file: key: reason`` line per problem). It validates itself rather than calling
``configfile.load`` only to drop the ``type`` value pydantic puts into the location of
errors inside a discriminated union, so keys read like the YAML:
``rules[2] (h2s_high).limit``, not ``rules[2] (h2s_high).high.limit``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from fnmatch import fnmatchcase
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from derrick.plc.profile import DeadbandSetting
from derrick.plumbing import configfile
from derrick.plumbing.configfile import ConfigError, StrictModel
from derrick.wire.ids import Ident

Priority = Literal["critical", "high", "medium", "low"]
"""Four levels, as ISA-18.2 recommends (three or four priorities for operator alarms)."""

Signal = Literal["flow", "level", "pressure", "temperature", "other"]

SIGNAL_DEFAULTS: dict[str, tuple[float, float]] = {
    # signal: (deadband % of the limit, on- and off-delay s). ISA-18.2 (ANSI/ISA-18.2-2016,
    # after EEMUA 191 3rd ed.) recommended starting points for analogue alarms.
    "flow": (5.0, 15.0),
    "level": (5.0, 60.0),
    "pressure": (2.0, 15.0),
    "temperature": (1.0, 60.0),
    "other": (0.0, 0.0),
}

Glob = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Seconds = Annotated[float, Field(ge=0, le=7 * 86400, allow_inf_nan=False)]

DEFAULT_MAX_SHELVE_S = 8 * 3600.0
"""One 8-hour shift: ISA-18.2 wants shelving time-limited; the length is a site choice."""

TEMPLATE_FIELDS = frozenset(
    ("name", "description", "tag", "value", "limit", "site", "asset", "device", "agent",
     "priority", "kind")
)  # fmt: skip
_DUMMY: dict[str, Any] = {
    **{field: "x" for field in TEMPLATE_FIELDS},
    "value": 1.0,
    "limit": 1.0,
}


class Condition(StrictModel):
    """A ``suppress_when`` item: holds while another tag of the same device matches.

    Exactly one of ``equals``, ``in``, ``below``, ``above``. A tag with no good reading yet
    does not hold (the rule is not suppressed on missing data).
    """

    model_config = ConfigDict(populate_by_name=True)

    tag: Ident
    equals: bool | int | float | str | None = None
    in_: list[bool | int | float | str] | None = Field(default=None, alias="in", min_length=1)
    below: float | None = Field(default=None, allow_inf_nan=False)
    above: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_test(self) -> Self:
        given = [key for key in ("equals", "in_", "below", "above") if key in self.model_fields_set]
        if len(given) != 1:
            raise ValueError("give exactly one of 'equals', 'in', 'below', 'above'")
        return self

    def holds(self, value: object) -> bool:
        if value is None:
            return False
        if self.below is not None or self.above is not None:
            if isinstance(value, str):
                return False
            if self.below is not None:
                return value < self.below  # type: ignore[operator]
            return value > self.above  # type: ignore[operator]
        if self.in_ is not None:
            return value in self.in_
        return value == self.equals


BROKER_RULE = "broker_messages_dropped"
GAP_RULE = "agent_messages_lost"
COORDINATION_RULE = "coordination_lost"
UNOWNED_RULE = "unowned_assets"
BUILTIN_RULES = (BROKER_RULE, GAP_RULE, COORDINATION_RULE, UNOWNED_RULE)
"""The collector's own alarms - loss (collector.loss), coordination (collector.alarms.ha) -
whose names no rule file may take, so their alarm ids
(``agent_messages_lost:agents:<agent>:sequence``) cannot be those of a rule on a device
of a site that happens to be named ``agents``."""


class _Rule(StrictModel):
    """Keys every rule type has."""

    name: Ident
    description: str = Field(default="", max_length=500)
    site: Glob = "*"
    asset: Glob = "*"
    device: Glob = "*"
    kind: Glob = "*"
    priority: Priority = "high"
    message: str = Field(default="", max_length=500, description="str.format template")
    latched: bool = Field(default=False, description="stays raised until acknowledged")
    max_shelve_s: float = Field(default=DEFAULT_MAX_SHELVE_S, gt=0, le=7 * 86400)
    on_delay_s: Seconds | None = None
    off_delay_s: Seconds | None = None
    suppress_when: list[Condition] = Field(default_factory=list)
    depends_on_quality: bool = True

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, value: str) -> str:
        if value in BUILTIN_RULES:
            raise ValueError(f"{value!r} is the name of a built-in alarm of the collector")
        return value

    @field_validator("message")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name}
        except ValueError as exc:
            raise ValueError(f"bad template: {exc}") from None
        unknown = sorted(names - TEMPLATE_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown field {{{unknown[0]}}}; use {', '.join(sorted(TEMPLATE_FIELDS))}"
            )
        try:
            value.format(**_DUMMY)
        except (ValueError, IndexError, KeyError) as exc:
            raise ValueError(f"bad template: {exc}") from None
        return value

    # --- what the engine asks -------------------------------------------------------

    @property
    def selector(self) -> tuple[str, ...]:
        """What identifies the rule's condition state across a reload (with name, type)."""
        return (
            getattr(self, "type", ""), self.site, self.asset, self.device, self.kind,
            getattr(self, "tag", "") or "", getattr(self, "agent", "") or "",
        )  # fmt: skip

    def matches(self, site: str, asset: str, device: str, kind: str | None) -> bool:
        """Whether the rule applies to a device (``kind`` None: not known yet, only ``*``)."""
        return (
            fnmatchcase(site, self.site)
            and fnmatchcase(asset, self.asset)
            and fnmatchcase(device, self.device)
            and (self.kind == "*" if kind is None else fnmatchcase(kind, self.kind))
        )

    def reads(self) -> set[str]:
        """Tags whose readings can change this rule's condition or suppression."""
        return {cond.tag for cond in self.suppress_when}

    @property
    def signal_defaults(self) -> tuple[float, float]:
        return SIGNAL_DEFAULTS[getattr(self, "signal", "other")]

    @property
    def on_delay(self) -> float:
        return self.signal_defaults[1] if self.on_delay_s is None else self.on_delay_s

    @property
    def off_delay(self) -> float:
        return self.signal_defaults[1] if self.off_delay_s is None else self.off_delay_s

    def default_message(self) -> str:
        return "{name}"

    def template(self) -> str:
        return self.message or self.default_message()


class _TagRule(_Rule):
    tag: Ident

    def reads(self) -> set[str]:
        return super().reads() | {self.tag}


class _DeadbandMixin:
    def deadband_for(self, limit: float) -> float:
        """The deadband in engineering units for ``limit`` (a percent is of the limit)."""
        band = self.deadband  # type: ignore[attr-defined]
        if band is None:
            return abs(limit) * self.signal_defaults[0] / 100  # type: ignore[attr-defined]
        return band.threshold(limit)


class ThresholdRule(_DeadbandMixin, _TagRule):
    """``high_high``/``high``: active at ``value >= limit``; ``low``/``low_low``: at
    ``value <= limit``. Clears once the value is back past the limit by the deadband."""

    type: Literal["high_high", "high", "low", "low_low"]
    limit: float | None = Field(default=None, allow_inf_nan=False)
    limit_tag: Ident | None = None
    limit_percent: float | None = Field(default=None, gt=0, le=1000)
    deadband: DeadbandSetting = None
    signal: Signal = "other"

    @model_validator(mode="after")
    def _one_limit(self) -> Self:
        if (self.limit is None) == (self.limit_tag is None):
            raise ValueError("give either 'limit' (a number) or 'limit_tag' (another tag)")
        if self.limit_percent is not None and self.limit_tag is None:
            raise ValueError("'limit_percent' goes with 'limit_tag'")
        if self.limit_tag == self.tag:
            raise ValueError("'limit_tag' must be another tag than 'tag'")
        return self

    @property
    def is_high(self) -> bool:
        return self.type in ("high", "high_high")

    @property
    def factor(self) -> float:
        return (100.0 if self.limit_percent is None else self.limit_percent) / 100

    def reads(self) -> set[str]:
        return super().reads() | ({self.limit_tag} if self.limit_tag else set())

    def default_message(self) -> str:
        side = "above" if self.is_high else "below"
        if self.limit_tag:
            what = f"{self.factor * 100:g} % of {self.limit_tag}"
            return f"{{tag}} {{value:.2f}} {side} {what} ({{limit:.2f}})"
        return f"{{tag}} {{value:.2f}} {side} limit {{limit:.2f}}"


class RateOfChangeRule(_DeadbandMixin, _TagRule):
    """Active when the tag rose (``rise``) or fell (``fall``) by at least that amount
    within the last ``window_s``; a percent deadband is of that amount."""

    type: Literal["rate_of_change"]
    window_s: float = Field(gt=0, le=86400, allow_inf_nan=False)
    rise: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    fall: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    deadband: DeadbandSetting = None
    signal: Signal = "other"

    @model_validator(mode="after")
    def _one_direction(self) -> Self:
        if (self.rise is None) == (self.fall is None):
            raise ValueError("give either 'rise' or 'fall' (the change within window_s)")
        return self

    @property
    def amount(self) -> float:
        return self.rise if self.rise is not None else self.fall  # type: ignore[return-value]

    def default_message(self) -> str:
        verb = "rose" if self.rise is not None else "fell"
        return f"{{tag}} {verb} {{value:.2f}} within {self.window_s:g} s (limit {{limit:.2f}})"


class BooleanRule(_TagRule):
    """Active while the tag equals ``active_when`` (true by default)."""

    type: Literal["boolean"]
    active_when: bool = True

    def default_message(self) -> str:
        return f"{{tag}} is {str(self.active_when).lower()}"


class BitRule(_TagRule):
    """Active while bit ``bit`` (0 = least significant) of an integer tag equals
    ``active_when`` (set, by default)."""

    type: Literal["bit"]
    bit: int = Field(ge=0, le=63)
    active_when: bool = True

    def default_message(self) -> str:
        state = "set" if self.active_when else "clear"
        return f"{{tag}} bit {self.bit} {state}"


class _NoInputQuality(_Rule):
    """Rules about the data itself: input quality does not suppress them, and
    ``after_s`` is their on-delay."""

    depends_on_quality: Literal[False] = False
    after_s: Seconds

    @model_validator(mode="after")
    def _after_not_on_delay(self) -> Self:
        if self.on_delay_s is not None:
            raise ValueError("'on_delay_s' does not apply to this type: 'after_s' is its delay")
        return self

    @property
    def on_delay(self) -> float:
        return self.after_s

    @property
    def off_delay(self) -> float:
        return self.off_delay_s or 0.0


class StaleRule(_NoInputQuality, _TagRule):
    """Active when the tag had no good reading for ``after_s``."""

    type: Literal["stale"]
    after_s: float = Field(gt=0, le=7 * 86400, allow_inf_nan=False)

    @property
    def on_delay(self) -> float:
        return 0.0  # the age test itself waits after_s

    def default_message(self) -> str:
        return "{tag}: no good reading for {value:.0f} s"


class BadQualityRule(_NoInputQuality, _TagRule):
    """Active when the tag's readings have not been good for ``after_s``."""

    type: Literal["bad_quality"]

    def default_message(self) -> str:
        return "{tag}: reading quality not good"


class DeviceOfflineRule(_NoInputQuality):
    """Active while the agent reports the device down (``DeviceStatus``) for ``after_s``."""

    type: Literal["device_offline"]
    after_s: Seconds = 0.0

    def default_message(self) -> str:
        return "device {device} offline"


class AgentOfflineRule(_NoInputQuality):
    """Active while an agent's status is offline (its last will) for ``after_s``.

    Selects agents by ``agent`` and ``site`` (the site its messages carry); conditions
    are reported with ``asset`` and ``device`` set to the agent id.
    """

    type: Literal["agent_offline"]
    agent: Glob = "*"
    after_s: Seconds = 0.0

    @model_validator(mode="after")
    def _agent_selector(self) -> Self:
        extra = [key for key in ("asset", "device", "kind") if getattr(self, key) != "*"]
        if extra:
            raise ValueError(f"agent_offline selects by 'agent' and 'site', not {extra[0]!r}")
        if self.suppress_when:
            raise ValueError("agent_offline has no device tags to suppress on")
        return self

    def matches_agent(self, agent: str, site: str) -> bool:
        return fnmatchcase(agent, self.agent) and fnmatchcase(site, self.site)

    def default_message(self) -> str:
        return "agent {agent} offline"


Rule = Annotated[
    ThresholdRule
    | RateOfChangeRule
    | BooleanRule
    | BitRule
    | StaleRule
    | BadQualityRule
    | DeviceOfflineRule
    | AgentOfflineRule,
    Field(discriminator="type"),
]
RULE_TYPES = (
    "high_high", "high", "low", "low_low", "rate_of_change", "boolean", "bit", "stale",
    "bad_quality", "device_offline", "agent_offline",
)  # fmt: skip

_ORDER = {"high_high": 0, "high": 1, "low": 2, "low_low": 3}


class RuleSet(StrictModel):
    """A rule file: ``rules:`` (a bare list is accepted too)."""

    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: object) -> object:
        return {"rules": data} if isinstance(data, list) else data

    @field_validator("rules")
    @classmethod
    def _consistent(cls, rules: list[Any]) -> list[Any]:
        configfile.require_unique([rule.name for rule in rules], "rule names")
        problems = _limit_order_problems(rules)
        if problems:
            raise ValueError("\n".join(problems))
        return rules

    def __len__(self) -> int:
        return len(self.rules)


def _limit_order_problems(rules: list[Any]) -> list[str]:
    """Fixed limits on one tag and selector must nest: low_low < low < high < high_high."""
    groups: dict[tuple[str, ...], dict[str, ThresholdRule]] = {}
    for rule in rules:
        if isinstance(rule, ThresholdRule) and rule.limit is not None:
            groups.setdefault(rule.selector[1:], {}).setdefault(rule.type, rule)
    problems = []
    for group in groups.values():
        ordered = sorted(group.values(), key=lambda r: _ORDER[r.type])
        for upper, lower in pairwise(ordered):
            if upper.limit <= lower.limit:  # type: ignore[operator]
                problems.append(
                    f"{upper.name} ({upper.type} {upper.limit:g}) must be above "
                    f"{lower.name} ({lower.type} {lower.limit:g})"
                )
    return problems


def _without_type_tags(loc: tuple[int | str, ...], data: object) -> tuple[int | str, ...]:
    """``rules.<i>.<type>.key`` -> ``rules.<i>.key``: pydantic names the union member."""
    out: list[int | str] = []
    for index, part in enumerate(loc):
        if part in RULE_TYPES and index >= 2 and loc[index - 2] == "rules":  # noqa: SIM102
            if isinstance(loc[index - 1], int):
                continue
        out.append(part)
    if isinstance(data, list) and out[:1] == ["rules"]:
        out = out[1:]  # a bare list: keys start at the item
    return tuple(out)


def validate_rules(path: Path | str, data: object) -> RuleSet:
    """Validate parsed rule YAML; every problem as ``file: key: reason``."""
    if data is None:
        raise ConfigError(path, [("", "file is empty")])
    try:
        return RuleSet.model_validate(data, context={"config_path": Path(path)})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc, reason = err["loc"], configfile.reason_of(err["msg"])
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "type")
                given = err.get("ctx", {}).get("tag")
                what = f"unknown type {given!r}" if given else "missing"
                reason = f"{what}; use one of {', '.join(RULE_TYPES)}"
            key = configfile.location(_without_type_tags(loc, data), data)
            problems += [(key, line) for line in reason.splitlines() if line.strip()]
        raise ConfigError(path, problems) from exc


def load_rules(path: Path | str) -> RuleSet:
    """Read one rule file (YAML, ``${ENV}`` expanded) and validate it."""
    return validate_rules(path, configfile.expand_env(path, configfile.read_yaml(path)))


def load_rule_files(paths: Iterable[Path | str]) -> RuleSet:
    """Read rule files into one set (the collector's and an agent's ``alarms.rules``).

    Raises ConfigError naming the file, key and reason; ValueError when a rule name
    appears in two files.
    """
    rules = []
    for path in paths:
        rules += load_rules(path).rules
    configfile.require_unique([rule.name for rule in rules], "rule names across files")
    return RuleSet(rules=rules)


def rule_files_for_config(paths: Iterable[Path | str]) -> RuleSet:
    """:func:`load_rule_files` in a config's validator: a file's problems become one
    ValueError, which the config reports under its own key (``alarms``) with the rule
    file's name, key and reason."""
    try:
        return load_rule_files(paths)
    except ConfigError as exc:
        raise ValueError(f"rule file {exc}") from None
