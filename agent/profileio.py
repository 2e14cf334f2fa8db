"""``derrick-agent profile import|export``: register maps from and to spreadsheets.

A PLC manual's register table (CSV, or an Excel ``.xlsx`` through openpyxl) becomes a
profile YAML the agent loads (``import``); a profile becomes a CSV (``export``). One row
per register, the columns named in row 1 (docs/onboarding.md lists them with their
aliases). Every cell is checked by the profile model itself (:mod:`derrick.plc.profile`),
so a spreadsheet accepts exactly what a profile YAML accepts - 40001-style addresses
included, caught with the 0-based address to use - and each problem is one line naming
the row (as the spreadsheet numbers it: the header is row 1), the column and the reason.
Nothing is written while any row is bad.

Exit status: 0 done, 1 the input cannot be used (bad rows, unreadable file) or the
output cannot be written, 2 a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from derrick.plc.profile import Profile, Register, load_profile, map_problems
from derrick.plumbing import configfile
from derrick.plumbing.configfile import ConfigError

PROG = "derrick-agent profile"
XLSX_SUFFIXES = (".xlsx", ".xlsm")
CSV_SUFFIXES = (".csv", ".txt", ".tsv")
INSTALL_XLSX = "pip install 'derrick[xlsx]'"


@dataclass(frozen=True)
class Column:
    """One spreadsheet column: a field of :class:`Register`, and the headers meaning it."""

    name: str
    required: bool = False
    aliases: tuple[str, ...] = ()


COLUMNS: tuple[Column, ...] = (
    Column("tag", True, ("name", "tag name", "signal", "variable")),
    Column("table", True, ("register type", "area", "memory area", "object type")),
    Column("address", True, ("register", "reg", "addr", "register address", "modbus address")),
    Column("type", True, ("data type", "datatype", "format")),
    Column("bit", False, ("bit number", "bit no")),
    Column("length", False, ("string length", "characters", "chars")),
    Column("byte_order", False, ()),
    Column("word_order", False, ()),
    Column("scale", False, ("scaling", "factor", "multiplier", "gain")),
    Column("offset", False, ()),
    Column("unit", False, ("units", "eng unit", "engineering unit", "uom")),
    Column("description", False, ("desc", "comment", "comments", "remark")),
    Column("deadband", False, ("dead band",)),
    Column("heartbeat_s", False, ("heartbeat",)),
    Column("group", False, ("poll group",)),
    Column("protocol_address", False, ()),
)
"""The columns, in the order ``export`` writes them: every field of a profile register."""

_INT_FIELDS = frozenset({"address", "bit", "length"})
_TEXT_FIELDS = frozenset({"tag", "unit", "description", "group"})


def _norm(text: str) -> str:
    """Header or value as matched: lower case, letters and digits only."""
    return re.sub(r"[^0-9a-z]", "", text.lower())


_HEADERS: dict[str, str] = {
    _norm(alias): column.name for column in COLUMNS for alias in (column.name, *column.aliases)
}

# Cell values besides the profile's own words (matched like headers: case, spaces,
# underscores and dashes don't matter): PLC manuals' names for the tables and the IEC
# 61131-3 type names (INT, DINT, REAL...).
_VALUES: dict[str, dict[str, str]] = {
    "table": {
        "holding": "holding", "holdingregister": "holding", "holdingregisters": "holding",
        "hr": "holding", "4x": "holding",
        "input": "input", "inputregister": "input", "inputregisters": "input",
        "ir": "input", "3x": "input",
        "coil": "coil", "coils": "coil", "0x": "coil",
        "discrete": "discrete", "discreteinput": "discrete", "discreteinputs": "discrete",
        "di": "discrete", "1x": "discrete",
    },
    "type": {
        "bool": "bool", "boolean": "bool", "bit": "bit",
        "int16": "int16", "int": "int16", "short": "int16",
        "uint16": "uint16", "uint": "uint16", "word": "uint16", "ushort": "uint16",
        "int32": "int32", "dint": "int32",
        "uint32": "uint32", "udint": "uint32", "dword": "uint32",
        "int64": "int64", "lint": "int64",
        "uint64": "uint64", "ulint": "uint64", "lword": "uint64",
        "float32": "float32", "float": "float32", "real": "float32", "single": "float32",
        "float64": "float64", "double": "float64", "lreal": "float64",
        "string": "string", "str": "string",
    },
    "byte_order": {"big": "big", "bigendian": "big", "little": "little", "littleendian": "little"},
    "word_order": {"big": "big", "bigendian": "big", "little": "little", "littleendian": "little"},
}  # fmt: skip


class ProfileIOError(Exception):
    """The input cannot be used; ``str()`` is one line per problem."""


class UsageError(Exception):
    """A command line that cannot work (exit 2)."""


class Percent(float):
    """A spreadsheet cell shown as a percentage: 0.02 displayed as 2%."""


@dataclass
class Sheet:
    """The rows of a spreadsheet as read: row 1 the header."""

    source: str
    """How messages name the input: the file, and the sheet of a workbook."""
    header: list[object]
    rows: list[tuple[int, list[object]]] = field(default_factory=list)
    """``(row number, cells)`` of every row after the header that is not blank."""


@dataclass(frozen=True)
class Problem:
    row: int
    column: str | None
    """How the message names the column: ``C (Data type)``, or the field name when the
    sheet has no such column; None for a problem of the whole row."""
    reason: str
    order: int = 0
    """Where the column is in the row (problems of one row are listed left to right)."""

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column}" if self.column else "")
        return f"{where}: {self.reason}"


def _problems_error(source: str, problems: Iterable[Problem]) -> ProfileIOError:
    ordered = sorted(problems, key=lambda p: (p.row, p.order))
    return ProfileIOError("\n".join(f"{source}: {problem}" for problem in ordered))


# --- reading ------------------------------------------------------------------------------


def read_sheet(path: Path, sheet: str | None = None) -> Sheet:
    """The rows of a CSV or XLSX file. ProfileIOError if it cannot be read."""
    suffix = path.suffix.lower()
    if suffix in XLSX_SUFFIXES:
        return _read_xlsx(path, sheet)
    if sheet is not None:
        raise UsageError(f"--sheet is for .xlsx workbooks, not {path.name}")
    return _read_csv(path)


def _read_csv(path: Path) -> Sheet:
    try:
        text = path.read_text(encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError as exc:
        raise ProfileIOError(
            f"{path}: not UTF-8 text (byte {exc.start}): save it as CSV UTF-8"
        ) from None
    except OSError as exc:
        raise ProfileIOError(f"{path}: cannot read: {exc.strerror or exc}") from None
    first = text.split("\n", 1)[0]
    # Excel writes ; where the decimal separator is a comma; tab for "text" exports.
    delimiter = max((",", ";", "\t"), key=first.count)
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    return _sheet(str(path), rows)


def _openpyxl() -> Any:
    try:
        import openpyxl  # noqa: PLC0415 - optional: only .xlsx needs it
    except ImportError:
        raise ProfileIOError(
            f"reading .xlsx needs openpyxl, which is not installed: {INSTALL_XLSX} "
            "(or save the sheet as CSV)"
        ) from None
    return openpyxl


def _read_xlsx(path: Path, sheet: str | None) -> Sheet:
    openpyxl = _openpyxl()
    try:
        with warnings.catch_warnings():  # styles openpyxl doesn't know: irrelevant here
            warnings.simplefilter("ignore")
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except OSError as exc:
        raise ProfileIOError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - zipfile, XML and openpyxl's own errors
        raise ProfileIOError(f"{path}: not an .xlsx workbook: {exc}") from None
    try:
        if sheet is None:
            ws = book.worksheets[0]
        elif sheet in book.sheetnames:
            ws = book[sheet]
        else:
            raise ProfileIOError(
                f"{path}: no sheet {sheet!r}; it has {', '.join(map(repr, book.sheetnames))}"
            )
        ws.reset_dimensions()  # some writers store wrong dimensions: read every row
        rows = [[_xlsx_value(cell) for cell in row] for row in ws.iter_rows()]
        return _sheet(f"{path} sheet {ws.title!r}", rows)
    finally:
        book.close()


def _xlsx_value(cell: Any) -> object:
    value = cell.value
    number_format = getattr(cell, "number_format", None) or ""
    if isinstance(value, int | float) and not isinstance(value, bool) and "%" in number_format:
        return Percent(value)
    return value


def _sheet(source: str, rows: list[list[object]]) -> Sheet:
    if not rows:
        raise ProfileIOError(f"{source}: empty: row 1 must name the columns")
    body = [
        (number, cells)
        for number, cells in enumerate(rows[1:], start=2)
        if any(not _blank(cell) for cell in cells)
    ]
    return Sheet(source, list(rows[0]), body)


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def column_letter(index: int) -> str:
    """Spreadsheet letters of the 0-based column ``index``: 0 A, 25 Z, 26 AA."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


# --- import -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """Which spreadsheet column holds which register field."""

    index: dict[str, int]
    """Field name -> 0-based column."""
    labels: dict[str, str]
    """Field name -> how messages name the column: ``C (Data type)``."""
    ignored: list[str]
    """Columns matching no field, as ``F (Access)``."""

    def label(self, name: str) -> str:
        return self.labels.get(name, name)


def read_header(sheet: Sheet) -> Header:
    """Match row 1 against the column names and aliases; ProfileIOError on a missing
    required column or two columns for one field."""
    index: dict[str, int] = {}
    labels: dict[str, str] = {}
    ignored: list[str] = []
    problems: list[Problem] = []
    for i, cell in enumerate(sheet.header):
        if _blank(cell):
            continue
        text = str(cell).strip()
        label = f"{column_letter(i)} ({text})"
        name = _HEADERS.get(_norm(text))
        if name is None:
            ignored.append(label)
        elif name in index:
            problems.append(Problem(1, label, f"{name} is column {labels[name]} already"))
        else:
            index[name] = i
            labels[name] = label
    for column in COLUMNS:
        if column.required and column.name not in index:
            names = ", ".join(repr(a) for a in (column.name, *column.aliases))
            problems.append(Problem(1, None, f"no {column.name} column (header one of {names})"))
    if problems:
        raise _problems_error(sheet.source, problems)
    return Header(index, labels, ignored)


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _whole(value: object) -> int:
    """An address, bit number or length: 12, 12.0, "12", "0x0C" (ValueError otherwise)."""
    number: object = value
    if isinstance(value, str):
        text = value.strip()
        with contextlib.suppress(ValueError):
            return int(text, 16) if text.lower().startswith("0x") else int(text)
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if isinstance(number, int) and not isinstance(number, bool):
        return number
    if isinstance(number, float) and number.is_integer():
        return int(number)
    raise ValueError(f"{value!r} is not a whole number")


def _decimal(value: object) -> object:
    """Numbers as they are; text with a decimal comma (0,5) as 0.5."""
    if isinstance(value, str):
        text = value.strip()
        return text.replace(",", ".") if re.fullmatch(r"[+-]?\d*,\d+", text) else text
    return value


def _deadband(value: object) -> object:
    if isinstance(value, Percent):
        return f"{_number(round(value * 100, 12))}%"
    return _decimal(value)


def _cell_value(name: str, value: object) -> object:
    """A cell as the profile model takes it (ValueError for what it could not take)."""
    if name in _VALUES:
        text = _text(value)
        return _VALUES[name].get(_norm(text), text.lower())
    if name in _TEXT_FIELDS:
        return _text(value)
    if name in _INT_FIELDS:
        return _whole(value)
    if name == "deadband":
        return _deadband(value)
    if name == "protocol_address" and isinstance(value, str):
        return value.strip().lower()
    return _decimal(value)


# Problems of a whole register (no field of their own, raised by the model's validators),
# by the column to point at: the first pattern matching the reason wins, else "type".
_ROW_PROBLEMS = (
    (re.compile(r"^address "), "address"),
    (re.compile(r"^type bit needs bit|^bit is only"), "bit"),
    (re.compile(r"needs length"), "length"),
    (re.compile(r"^scale"), "scale"),
)


def _row_problem_column(reason: str, data: dict[str, object]) -> str:
    for pattern, name in _ROW_PROBLEMS:
        if pattern.search(reason):
            if reason.startswith("scale and offset") and "scale" not in data:
                return "offset"
            return name
    return "type"


def parse_row(header: Header, number: int, cells: list[object]) -> Register | list[Problem]:
    """One row as a register, or its problems."""
    data: dict[str, object] = {}
    problems: list[Problem] = []
    unreadable: set[str] = set()
    for name, i in header.index.items():
        value = cells[i] if i < len(cells) else None
        if _blank(value):
            continue
        try:
            data[name] = _cell_value(name, value)
        except ValueError as exc:
            unreadable.add(name)
            problems.append(Problem(number, header.label(name), str(exc), i))
    try:
        register = Register.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        if any(_MODICON.search(err["msg"]) for err in errors):
            # That check comes first and stops the model there: the rest of the row too.
            rest = _other_errors(data | {"protocol_address": True})
            errors += [err for err in rest if err["loc"][:1] != ("address",)]
        for err in errors:
            reason = configfile.reason_of(err["msg"])
            loc = err["loc"]
            field_problem = bool(loc) and isinstance(loc[0], str)
            name = str(loc[0]) if field_problem else _row_problem_column(reason, data)
            if name in unreadable:  # said already
                continue
            if err["type"] == "missing":
                reason = "empty: every register needs one"
            reason = reason.replace(
                "add protocol_address: true", "write yes in its protocol_address column"
            )
            if name in header.index or name in data:
                label = header.label(name)
            else:
                label = f"{name} (no such column: add one)"
            order = header.index.get(name, 1 << 20)
            problems += [
                Problem(number, label, line, order) for line in reason.splitlines() if line
            ]
        return problems
    return problems or register


_MODICON = re.compile(r"looks like 1-based Modicon numbering")


def _other_errors(data: dict[str, object]) -> list[Any]:
    try:
        Register.model_validate(data)
    except ValidationError as exc:
        return exc.errors()
    return []


_TAG_FIRST = re.compile(r"^tag '(?P<tag>[^']*)'")
_TAG_OTHER = re.compile(r"overlaps tag '(?P<tag>[^']*)'")


def _map_problems(header: Header, rows: list[tuple[int, Register]]) -> list[Problem]:
    """Duplicate tags and overlapping registers (the profile's own check), each on the
    row of the register found second, naming the row of the first."""
    first_row: dict[str, int] = {}
    rows_of: dict[str, list[int]] = {}
    for number, reg in rows:
        first_row.setdefault(reg.tag, number)
        rows_of.setdefault(reg.tag, []).append(number)
    twice_seen: dict[str, int] = {}
    problems = []
    for reason in map_problems(reg for _, reg in rows):
        match = _TAG_FIRST.match(reason)
        tag = match["tag"] if match else ""
        if reason.endswith("defined twice") and tag in rows_of:
            twice_seen[tag] = twice_seen.get(tag, 0) + 1
            number = rows_of[tag][min(twice_seen[tag], len(rows_of[tag]) - 1)]
            problems.append(
                Problem(number, header.label("tag"), f"{reason} (first in row {first_row[tag]})")
            )
            continue
        other = _TAG_OTHER.search(reason)
        where = f" (row {first_row[other['tag']]})" if other and other["tag"] in first_row else ""
        problems.append(Problem(first_row.get(tag, 1), header.label("address"), reason + where))
    return problems


def import_sheet(
    sheet: Sheet, kind: str, description: str = "", header: Header | None = None
) -> Profile:
    """The profile a sheet describes; ProfileIOError naming every bad row."""
    header = header or read_header(sheet)
    if not sheet.rows:
        raise ProfileIOError(f"{sheet.source}: no registers: one row per register after row 1")
    good: list[tuple[int, Register]] = []
    problems: list[Problem] = []
    for number, cells in sheet.rows:
        parsed = parse_row(header, number, cells)
        if isinstance(parsed, Register):
            good.append((number, parsed))
        else:
            problems += parsed
    problems += _map_problems(header, good)  # among the good rows: all reported at once
    if problems:
        raise _problems_error(sheet.source, problems)
    try:
        profile = Profile(kind=kind, description=description, registers=[r for _, r in good])
    except ValidationError as exc:  # only --kind / --description are left to be wrong
        raise UsageError(f"{configfile.one_line(exc)} (see --kind, --description)") from None
    return profile


def _number(value: float) -> int | float:
    """A float as written: whole numbers without ``.0``."""
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def register_fields(reg: Register) -> dict[str, object]:
    """The keys of a register a profile YAML writes: those that differ from the default."""
    data: dict[str, object] = {}
    for name, value in reg.model_dump(mode="json", exclude_defaults=True).items():
        if name == "deadband":
            assert reg.deadband is not None
            number = _number(reg.deadband.value)
            value = f"{number}%" if reg.deadband.percent else number  # noqa: PLW2901
        elif isinstance(value, float):
            value = _number(value)  # noqa: PLW2901
        data[name] = value
    return data


def _escape(value: object) -> object:
    """Strings as the config loader reads them back: ``$`` would start ``${VAR}``."""
    return value.replace("$", "$$") if isinstance(value, str) else value


def render_yaml(profile: Profile, source: str) -> str:
    """A profile YAML in the style of config/profiles/: one register per line."""

    def flow(mapping: dict[str, object]) -> str:
        escaped = {key: _escape(value) for key, value in mapping.items()}
        return yaml.safe_dump(
            escaped, default_flow_style=True, sort_keys=False, width=2**31, allow_unicode=True
        ).strip()

    def scalar(value: str) -> str:
        return flow({"x": value})[len("{x: ") : -1]

    lines = [
        f"# Imported from {source} by `{PROG} import`.",
        "# Addresses are 0-based protocol addresses.",
        f"kind: {scalar(profile.kind)}",
    ]
    if profile.description:
        lines.append(f"description: {scalar(profile.description)}")
    lines.append("registers:")
    lines += [f"  - {flow(register_fields(reg))}" for reg in profile.registers]
    return "\n".join(lines) + "\n"


def check_yaml(text: str, name: str, expected: Profile) -> None:
    """Load ``text`` the way the agent loads a profile file; it must give ``expected``."""
    try:
        loaded = configfile.validate(
            name, configfile.expand_env(name, yaml.safe_load(text)), Profile
        )
    except ConfigError as exc:  # a bug here too: every row was checked
        raise ProfileIOError(f"{exc}\n(the YAML written does not load; not written)") from None
    if loaded != expected:  # a bug here, not in the input
        raise ProfileIOError(f"{name}: the YAML written reads back differently; not written")


# --- export -------------------------------------------------------------------------------


def export_rows(profile: Profile) -> list[list[str]]:
    """The header and one row per register, every column; defaults left blank."""
    rows = [[column.name for column in COLUMNS]]
    for reg in profile.registers:
        fields = register_fields(reg)
        rows.append([_csv_text(fields.get(column.name)) for column in COLUMNS])
    return rows


def _csv_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render_csv(profile: Profile) -> str:
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(export_rows(profile))
    return out.getvalue()


# --- writing ------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    """Write atomically: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with temp.open("w", encoding="utf-8", newline="") as out:
            out.write(text)
        temp.replace(path)
    except OSError:
        temp.unlink(missing_ok=True)
        raise


# --- command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Register maps (profiles) from and to spreadsheets.",
        epilog="Columns, aliases and examples: docs/onboarding.md. Exit status: 0 done, "
        "1 bad rows or an unusable file (nothing written), 2 usage error.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="import|export")
    imp = commands.add_parser(
        "import",
        help="a CSV or XLSX register table -> profile YAML",
        description="Read a register table (CSV, or the first sheet of an .xlsx) and write "
        "the profile YAML: to --output, else profiles/NAME.yaml with --name, else stdout.",
    )
    imp.add_argument("table", type=Path, help="the register table: .csv or .xlsx")
    imp.add_argument("--sheet", help="the workbook's sheet to read (default: the first)")
    imp.add_argument(
        "--name",
        help="the profile's name: written to profiles/NAME.yaml (what a device's "
        "`profile: NAME` finds next to the agent config); the default kind",
    )
    imp.add_argument(
        "--kind",
        help="equipment kind (the InfluxDB tag 'kind'); default: --name, else the "
        "table's file name",
    )
    imp.add_argument("--description", default="", help="the profile's description")
    imp.add_argument("--output", "-o", type=Path, help="write the YAML here")
    exp = commands.add_parser(
        "export",
        help="a profile -> CSV",
        description="Write a profile's registers as CSV (one row per register, every "
        "column) to --output, else stdout.",
    )
    exp.add_argument(
        "profile",
        help="a profile YAML file, or a profile name (profiles/NAME.yaml here, else a "
        "built-in: crane, rig...)",
    )
    exp.add_argument("--output", "-o", type=Path, help="write the CSV here")
    return parser


def _default_kind(args: argparse.Namespace) -> str:
    if args.kind is not None:
        return args.kind
    if args.name is not None:
        return args.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", args.table.stem).strip("_") or "plc"


def _import(args: argparse.Namespace) -> int:
    suffix = args.table.suffix.lower()
    if suffix not in XLSX_SUFFIXES + CSV_SUFFIXES:
        raise UsageError(f"{args.table}: give a .csv or .xlsx file (save .xls and .ods as .xlsx)")
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        raise UsageError(f"--name {args.name!r}: letters, digits, _ . - only")
    sheet = read_sheet(args.table, args.sheet)
    header = read_header(sheet)
    for label in header.ignored:
        sys.stderr.write(f"{PROG} import: {sheet.source}: column {label} ignored: no such field\n")
    profile = import_sheet(sheet, _default_kind(args), args.description, header)
    output = args.output
    if output is None and args.name is not None:
        output = Path("profiles") / f"{args.name}.yaml"
    text = render_yaml(profile, args.table.name)
    check_yaml(text, str(output or "<stdout>"), profile)
    if output is None:
        sys.stdout.write(text)
        return 0
    _write(output, text)
    sys.stdout.write(f"{output}: {_registers(profile)}, kind {profile.kind}\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        profile = load_profile(args.profile, Path.cwd())
    except ConfigError as exc:
        raise ProfileIOError(str(exc)) from None
    text = render_csv(profile)
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write(args.output, text)
        sys.stdout.write(f"{args.output}: {_registers(profile)}\n")
    return 0


def _registers(profile: Profile) -> str:
    count = len(profile.registers)
    return f"{count} register{'' if count == 1 else 's'}"


def main(argv: Sequence[str]) -> int:
    """``derrick-agent profile import|export ...`` (``argv`` starts with ``profile``)."""
    argv = list(argv)
    if argv[:1] == ["profile"]:
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage error (2) or --help (0): a status, not an exit
        return exc.code if isinstance(exc.code, int) else 2
    run = _import if args.command == "import" else _export
    try:
        return run(args)
    except UsageError as exc:
        sys.stderr.write(f"{PROG} {args.command}: {exc}\n")
        return 2
    except ProfileIOError as exc:
        sys.stderr.write(f"{exc}\n{PROG} {args.command}: nothing written\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"{PROG} {args.command}: cannot write: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
