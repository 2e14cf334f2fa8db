"""What Grafana does with our dashboards, without Grafana: load, interpolate, run.

There is no Grafana package on the development machines, so the dashboard test (and
``make run``) do Grafana's part themselves: load the provisioned dashboard JSON, pull out
every InfluxQL query (panel targets in raw mode, annotation queries, template variable
queries), fill in template variables and macros the way Grafana's InfluxDB data source
does, and run the result against InfluxDB's ``/query``.

Interpolation follows Grafana 10/11:

* template variables are resolved in dashboard order; a variable's own query may use the
  variables before it. Its current value is the first option (after the variable's
  ``sort``), or *All* when ``includeAll``; *All* is ``allValue`` when set, else every option.
* ``$var``, ``${var}``, ``${var:format}`` and ``[[var]]``. Inside an InfluxQL regex
  literal (``=~ /^$site$/``) values are regex-escaped and several values become
  ``(a|b)``; elsewhere a single value goes in as it is.
* ``$__interval`` / ``$interval`` / ``$__interval_ms``: the time range divided by the
  panel's max data points, rounded with Grafana's table, never below the panel's
  ``interval`` (or the data source's ``timeInterval``).
* ``$timeFilter``: ``time > <from>ms and time < <to>ms`` as Grafana's backend sends it,
  or ``time >= now() - 1h`` as its old front end did (``style="relative"``).

The functions here take a ``run(query) -> response JSON`` callable instead of talking
HTTP, so the same code serves the test (``Influx1.query``) and a live stack.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devstack.programs import REPO

GRAFANA_DIR = REPO / "config" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "derrick.yaml"
DASHBOARDS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "derrick.yaml"
DATASOURCE_UID = "derrick-influx"
DATASOURCE_TYPE = "influxdb"
#: The data source's ``jsonData.timeInterval``: the smallest ``$__interval``.
DEFAULT_MIN_INTERVAL = "1s"
#: Grafana's max data points is the panel's width in pixels; half a 1920 px screen.
DEFAULT_MAX_DATA_POINTS = 1000

Run = Callable[[str], dict[str, Any]]


class DashboardError(ValueError):
    """A dashboard or provisioning file Grafana would reject, or a query we can't fill."""


# -- loading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """A ``query`` template variable."""

    name: str
    query: str
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    sort: int = 0
    regex: str = ""
    datasource_uid: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Variable:
        if data.get("type") != "query":
            raise DashboardError(f"variable {data.get('name')!r}: only query variables are used")
        query = data.get("query")
        if isinstance(query, Mapping):  # newer Grafana stores {"query": "...", "refId": ...}
            query = query.get("query")
        if not isinstance(query, str) or not query.strip():
            raise DashboardError(f"variable {data.get('name')!r}: no query")
        return cls(
            name=data["name"],
            query=query,
            multi=bool(data.get("multi")),
            include_all=bool(data.get("includeAll")),
            all_value=data.get("allValue") or None,
            sort=int(data.get("sort") or 0),
            regex=data.get("regex") or "",
            datasource_uid=_uid(data.get("datasource")),
        )


@dataclass(frozen=True)
class Query:
    """One InfluxQL query of a dashboard, before interpolation."""

    dashboard: str  # title
    source: str  # panel title, "variable <name>" or "annotation <name>"
    ref_id: str
    text: str
    kind: str  # "panel", "annotation" or "variable"
    datasource_uid: str | None = None
    min_interval: str | None = None
    max_data_points: int | None = None

    @property
    def label(self) -> str:
        return f"{self.dashboard} / {self.source} / {self.ref_id}"


@dataclass(frozen=True)
class Dashboard:
    path: Path
    data: dict[str, Any] = field(repr=False)

    @property
    def uid(self) -> str:
        return self.data["uid"]

    @property
    def title(self) -> str:
        return self.data["title"]

    @property
    def variables(self) -> list[Variable]:
        items = self.data.get("templating", {}).get("list", [])
        return [Variable.from_json(item) for item in items]

    @property
    def time_range(self) -> tuple[str, str]:
        """The default time range (Grafana's raw form, e.g. ``("now-1h", "now")``)."""
        span = self.data.get("time") or {}
        return span.get("from", "now-6h"), span.get("to", "now")

    def panels(self) -> Iterator[dict[str, Any]]:
        """Every panel, rows' collapsed panels included, rows themselves not."""
        for panel in self.data.get("panels", []):
            if panel.get("type") == "row":
                yield from panel.get("panels", [])
            else:
                yield panel

    def queries(self) -> list[Query]:
        """Panel targets and annotation queries (variables: ``variable_queries``)."""
        found = []
        for panel in self.panels():
            for target in panel.get("targets", []):
                if target.get("hide"):
                    continue
                if not target.get("rawQuery") or not isinstance(target.get("query"), str):
                    raise DashboardError(
                        f"{self.title} / {panel.get('title')}: target {target.get('refId')} "
                        "is not a raw InfluxQL query (rawQuery: true, query: ...)"
                    )
                found.append(
                    Query(
                        dashboard=self.title,
                        source=panel.get("title", ""),
                        ref_id=target.get("refId", "A"),
                        text=target["query"],
                        kind="panel",
                        datasource_uid=_uid(target.get("datasource") or panel.get("datasource")),
                        min_interval=panel.get("interval") or None,
                        max_data_points=panel.get("maxDataPoints"),
                    )
                )
        for annotation in self.data.get("annotations", {}).get("list", []):
            if annotation.get("builtIn") or not annotation.get("enable", True):
                continue
            found.append(
                Query(
                    dashboard=self.title,
                    source=f"annotation {annotation.get('name')}",
                    ref_id="Anno",
                    text=annotation.get("query") or annotation.get("target", {}).get("query", ""),
                    kind="annotation",
                    datasource_uid=_uid(annotation.get("datasource")),
                )
            )
        return found

    def variable_queries(self) -> list[Query]:
        return [
            Query(
                dashboard=self.title,
                source=f"variable {variable.name}",
                ref_id=variable.name,
                text=variable.query,
                kind="variable",
                datasource_uid=variable.datasource_uid,
            )
            for variable in self.variables
        ]


def _uid(datasource: object) -> str | None:
    if isinstance(datasource, Mapping):
        uid = datasource.get("uid")
        return uid if isinstance(uid, str) else None
    return datasource if isinstance(datasource, str) else None


def load_dashboard(path: Path) -> Dashboard:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DashboardError(f"{path}: {exc}") from exc
    for key in ("uid", "title", "panels"):
        if key not in data:
            raise DashboardError(f"{path}: no {key!r}")
    return Dashboard(path, data)


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[Dashboard]:
    """Every ``*.json`` in the folder the dashboard provider points Grafana at, by name."""
    return [load_dashboard(path) for path in sorted(directory.glob("*.json"))]


# -- provisioning files --------------------------------------------------------------------

_ENV_BRACED = re.compile(r"\$\{(\w+)\}")
_ENV_BARE = re.compile(r"\$(\w+)")


def expand_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """Grafana's provisioning expansion of one value: ``${NAME}``, then ``$NAME``; unset
    is empty; ``$$`` is a literal ``$``."""
    env = os.environ if env is None else env

    def value(match: re.Match[str]) -> str:
        return env.get(match.group(1), "")

    return "$".join(_ENV_BARE.sub(value, _ENV_BRACED.sub(value, part)) for part in text.split("$$"))


def _expand_values(node: Any, env: Mapping[str, str] | None) -> Any:
    """Grafana expands values after parsing, so an unset variable is "", never null."""
    if isinstance(node, str):
        return expand_env(node, env)
    if isinstance(node, dict):
        return {key: _expand_values(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand_values(value, env) for value in node]
    return node


def load_provisioning(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Grafana provisioning file with its values environment-expanded."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or data.get("apiVersion") != 1:
        raise DashboardError(f"{path}: not a Grafana provisioning file (apiVersion: 1)")
    return _expand_values(data, env)


def load_datasources(
    path: Path = DATASOURCES_FILE, env: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The data sources of a provisioning file, as Grafana reads them."""
    return list(load_provisioning(path, env).get("datasources") or [])


# -- time range and interval ---------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNIT_MS |= {"w": 7 * _UNIT_MS["d"], "y": 365 * _UNIT_MS["d"]}
_RELATIVE = re.compile(r"^now(?:-(\d+)(ms|s|m|h|d|w|y))?$")


def parse_duration_ms(text: str) -> int:
    """``"10s"`` -> 10000; Grafana's min-interval form may start with ``>``."""
    match = _DURATION.match(text.strip().lstrip(">"))
    if not match:
        raise DashboardError(f"not a duration: {text!r}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def format_interval(ms: int) -> str:
    """Milliseconds as InfluxQL duration literal, in the largest unit that divides it
    (InfluxQL has no year: a year is ``365d``)."""
    for unit in ("w", "d", "h", "m", "s"):
        if ms >= _UNIT_MS[unit] and ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{max(ms, 1)}ms"


# Grafana's rangeutil.roundInterval: (below this many ms, use this interval).
_ROUNDING = (
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1_500, 1_000),
    (3_500, 2_000), (7_500, 5_000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000),
    (45_000, 30_000), (90_000, 60_000), (150_000, 120_000), (450_000, 300_000),
    (750_000, 600_000), (1_050_000, 900_000), (1_500_000, 1_200_000),
    (2_700_000, 1_800_000), (5_400_000, 3_600_000), (9_000_000, 7_200_000),
    (16_200_000, 10_800_000), (32_400_000, 21_600_000), (86_400_000, 43_200_000),
    (604_800_000, 86_400_000), (1_814_400_000, 604_800_000), (3_628_800_000, 2_592_000_000),
)  # fmt: skip


def round_interval_ms(ms: float) -> int:
    for below, interval in _ROUNDING:
        if ms < below:
            return interval
    return 31_536_000_000


@dataclass(frozen=True)
class TimeRange:
    """A dashboard time range, both as Grafana's raw text and in epoch milliseconds."""

    from_ms: int
    to_ms: int
    raw_from: str
    raw_to: str

    @classmethod
    def parse(cls, raw_from: str, raw_to: str = "now", now_ms: int | None = None) -> TimeRange:
        """Relative ranges only (``now-1h`` .. ``now``), as our dashboards use."""
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        return cls(_resolve(raw_from, now_ms), _resolve(raw_to, now_ms), raw_from, raw_to)

    def interval_ms(self, max_data_points: int, min_interval: str | None) -> int:
        """``$__interval`` in ms: Grafana's calculateInterval."""
        interval = round_interval_ms((self.to_ms - self.from_ms) / max(max_data_points, 1))
        floor = parse_duration_ms(min_interval) if min_interval else 0
        return max(interval, floor)

    def time_filter(self, style: str = "absolute") -> str:
        """``$timeFilter``: ``absolute`` as Grafana's backend renders it (epoch ms bounds),
        ``relative`` as its old front end did (``now() - 1h``)."""
        if style == "absolute":
            return f"time > {self.from_ms}ms and time < {self.to_ms}ms"
        if style != "relative":
            raise ValueError(f"time filter style {style!r}: absolute or relative")
        start = _influx_relative(self.raw_from)
        if self.raw_to == "now":
            return f"time >= {start}"
        return f"time >= {start} and time <= {_influx_relative(self.raw_to)}"


def _resolve(raw: str, now_ms: int) -> int:
    match = _RELATIVE.match(raw)
    if not match:
        raise DashboardError(f"time {raw!r}: only now and now-<n><unit> are supported")
    if match.group(1) is None:
        return now_ms
    return now_ms - int(match.group(1)) * _UNIT_MS[match.group(2)]


def _influx_relative(raw: str) -> str:
    match = _RELATIVE.match(raw)
    if not match:
        raise DashboardError(f"time {raw!r}: only now and now-<n><unit> are supported")
    return "now()" if match.group(1) is None else f"now() - {match.group(1)}{match.group(2)}"


# -- template variables --------------------------------------------------------------------

# Grafana's variable syntaxes: $name, [[name:format]], ${name:format}.
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::([^}]+))?\}")
# An InfluxQL regex literal after =~ or !~ (the only place our values are escaped).
_REGEX_LITERAL = re.compile(r"[=!]~\s*/(?:\\.|[^/\\])*/")
# Grafana's escapeRegex: the characters RE2 and InfluxQL's /.../ give a meaning.
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_MACROS = ("timeFilter", "__interval", "__interval_ms", "interval")


@dataclass(frozen=True)
class Selection:
    """A variable's current value: one or more options, or All."""

    values: tuple[str, ...]
    all: bool = False


def escape_regex(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


_FORMATS: dict[str, Callable[[list[str]], str]] = {
    "raw": ",".join,
    "csv": ",".join,
    "pipe": "|".join,
    "singlequote": lambda vs: ",".join("'" + v.replace("'", "\\'") + "'" for v in vs),
    "doublequote": lambda vs: ",".join('"' + v.replace('"', '\\"') + '"' for v in vs),
}


def format_value(
    variable: Variable, selection: Selection, *, in_regex: bool, fmt: str | None = None
) -> str:
    """One variable's text in a query, as Grafana's InfluxDB data source formats it."""
    if selection.all and variable.all_value is not None:
        return variable.all_value  # a custom All value is meant as it is written
    values = list(selection.values)
    if fmt in _FORMATS:
        return _FORMATS[fmt](values)
    if fmt not in (None, "regex"):
        raise DashboardError(f"${{{variable.name}:{fmt}}}: format not supported")
    if in_regex or fmt == "regex":
        escaped = [escape_regex(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if len(values) != 1:
        raise DashboardError(
            f"${variable.name}: several values outside a regex (use =~ /^${variable.name}$/)"
        )
    return values[0]


def interpolate(
    text: str,
    variables: Mapping[str, Variable],
    selections: Mapping[str, Selection],
    *,
    time_range: TimeRange | None = None,
    interval_ms: int | None = None,
    time_filter_style: str = "absolute",
) -> str:
    """``text`` with variables and macros filled in; unknown ``$names`` raise."""
    regex_spans = [m.span() for m in _REGEX_LITERAL.finditer(text)]

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(5)
        if name in _MACROS:
            return _macro(name, time_range, interval_ms, time_filter_style)
        if name not in variables:
            raise DashboardError(f"${name}: no such variable or macro in {text!r}")
        if name not in selections:
            raise DashboardError(f"${name} used before it has a value (variable order)")
        in_regex = any(start <= match.start() < end for start, end in regex_spans)
        return format_value(variables[name], selections[name], in_regex=in_regex, fmt=fmt)

    return _VARIABLE.sub(replace, text)


def _macro(name: str, span: TimeRange | None, interval_ms: int | None, style: str) -> str:
    if name == "timeFilter":
        if span is None:
            raise DashboardError("$timeFilter without a time range")
        return span.time_filter(style)
    if interval_ms is None:
        raise DashboardError(f"${name} without an interval")
    return str(interval_ms) if name == "__interval_ms" else format_interval(interval_ms)


# -- running -------------------------------------------------------------------------------


def series(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every series of every statement of a ``/query`` response."""
    return [s for result in response.get("results", []) for s in result.get("series") or []]


def has_values(response: Mapping[str, Any]) -> bool:
    """At least one series with at least one non-null value outside the time column."""
    for item in series(response):
        columns = item.get("columns", [])
        for row in item.get("values") or []:
            if any(v is not None for c, v in zip(columns, row, strict=False) if c != "time"):
                return True
    return False


def empty_columns(response: Mapping[str, Any]) -> list[str]:
    """Columns (not ``time``) without a single value in any series: a field that is not
    there, e.g. one the writer stopped sending. An empty response has none."""
    seen: dict[str, bool] = {}
    for item in series(response):
        columns = item.get("columns", [])
        for index, column in enumerate(columns):
            if column != "time":
                rows = item.get("values") or []
                filled = any(row[index] is not None for row in rows)
                seen[column] = seen.get(column, False) or filled
    return [column for column, filled in seen.items() if not filled]


def option_values(response: Mapping[str, Any]) -> list[str]:
    """A variable query's options: SHOW TAG VALUES' ``value`` column, else the first
    column that is not ``time``; duplicates dropped, first seen kept."""
    options: dict[str, None] = {}
    for item in series(response):
        columns = item.get("columns", [])
        column = "value" if "value" in columns else next((c for c in columns if c != "time"), None)
        if column is None:
            continue
        index = columns.index(column)
        for row in item.get("values") or []:
            if row[index] is not None:
                options[str(row[index])] = None
    return list(options)


def _sorted(options: list[str], sort: int, pattern: str) -> list[str]:
    if pattern:
        regex = re.compile(pattern.strip("/"))
        kept = []
        for option in options:
            match = regex.search(option)
            if match:
                kept.append(match.group(1) if match.groups() else option)
        options = kept
    if sort in (1, 2):
        return sorted(options, reverse=sort == 2)
    if sort in (3, 4):
        return sorted(options, key=_number, reverse=sort == 4)
    if sort in (5, 6):
        return sorted(options, key=str.lower, reverse=sort == 6)
    return options


def _number(text: str) -> float:
    match = re.search(r"-?\d+(?:\.\d+)?", text)
    return float(match.group(0)) if match else float("-inf")


def resolve_variables(
    dashboard: Dashboard,
    run: Run,
    time_range: TimeRange,
    chosen: Mapping[str, list[str]] | None = None,
) -> dict[str, Selection]:
    """Run each variable's query in order and pick its value as Grafana does on load
    (``chosen`` overrides, like ``?var-site=...`` in the URL). A variable without
    options raises: every panel using it would be empty."""
    chosen = chosen or {}
    by_name = {v.name: v for v in dashboard.variables}
    selections: dict[str, Selection] = {}
    for variable in dashboard.variables:
        text = interpolate(variable.query, by_name, selections, time_range=time_range)
        options = _sorted(option_values(run(text)), variable.sort, variable.regex)
        if not options:
            raise DashboardError(f"{dashboard.title}: variable {variable.name}: {text!r} is empty")
        if variable.name in chosen:
            missing = set(chosen[variable.name]) - set(options)
            if missing:
                raise DashboardError(f"{variable.name}: {sorted(missing)} not in {options}")
            selections[variable.name] = Selection(tuple(chosen[variable.name]))
        elif variable.include_all:
            selections[variable.name] = Selection(tuple(options), all=True)
        else:
            selections[variable.name] = Selection((options[0],))
    return selections


def render(
    query: Query,
    dashboard: Dashboard,
    selections: Mapping[str, Selection],
    time_range: TimeRange,
    *,
    max_data_points: int = DEFAULT_MAX_DATA_POINTS,
    min_interval: str = DEFAULT_MIN_INTERVAL,
    time_filter_style: str = "absolute",
) -> str:
    """The InfluxQL Grafana would send for ``query`` with these variable values."""
    interval = time_range.interval_ms(
        query.max_data_points or max_data_points, query.min_interval or min_interval
    )
    return interpolate(
        query.text,
        {v.name: v for v in dashboard.variables},
        selections,
        time_range=time_range,
        interval_ms=interval,
        time_filter_style=time_filter_style,
    )


@dataclass(frozen=True)
class Outcome:
    query: Query
    influxql: str
    ok: bool
    detail: str = ""


def check_dashboard(
    dashboard: Dashboard, run: Run, *, now_ms: int | None = None, **options: Any
) -> list[Outcome]:
    """Every panel and annotation query of ``dashboard`` over its default time range;
    ``ok`` means InfluxDB answered without error and with a value in every column."""
    span = TimeRange.parse(*dashboard.time_range, now_ms=now_ms)
    selections = resolve_variables(dashboard, run, span)
    outcomes = []
    for query in dashboard.queries():
        text = render(query, dashboard, selections, span, **options)
        try:
            response = run(text)
        except (OSError, ValueError, RuntimeError) as exc:  # the server's error, reported
            outcomes.append(Outcome(query, text, False, str(exc)))
            continue
        missing = empty_columns(response)
        if not has_values(response):
            outcomes.append(Outcome(query, text, False, "no values"))
        elif missing:
            outcomes.append(Outcome(query, text, False, f"no values in {missing}"))
        else:
            outcomes.append(Outcome(query, text, True))
    return outcomes
