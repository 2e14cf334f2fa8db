"""Register maps from and to spreadsheets: ``derrick-agent profile import|export``."""

from __future__ import annotations

import csv
import io
import re
import sys
from pathlib import Path

import pytest
import yaml

from agent import profileio
from agent.profileio import COLUMNS, Sheet, import_sheet, main, render_csv
from derrick.plc.profile import PROFILE_DIR, Profile, Register, load_profile
from derrick.plumbing import configfile

openpyxl = pytest.importorskip("openpyxl")

SHIPPED = sorted(PROFILE_DIR.glob("*.yaml"))
DOCS = Path(__file__).resolve().parents[1] / "docs" / "onboarding.md"

HEADER = "tag,table,address,type,bit,length,word_order,scale,unit,description"


def run(*argv: str | Path) -> int:
    return main(["profile", *map(str, argv)])


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_xlsx(path: Path, rows: list[list[object]], title: str = "Registers") -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = title
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


def as_cell(text: str) -> object:
    """A CSV cell as a spreadsheet holds it: numbers as numbers, blank as empty."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def loaded(path: Path) -> Profile:
    """The YAML written, read the way the agent reads a profile."""
    return configfile.load(path, Profile)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if re.search(r": row \d+", line)]


# --- columns ------------------------------------------------------------------------------


def test_every_register_field_has_a_column():
    assert [c.name for c in COLUMNS if c.required] == ["tag", "table", "address", "type"]
    assert {c.name for c in COLUMNS} == set(Register.model_fields)


def test_the_docs_table_lists_every_column_and_alias():
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("## Register maps from spreadsheets") :]
    section = section.split("\n## ", 1)[0]
    rows = {
        m["name"]: m["rest"]
        for m in re.finditer(r"^\| `(?P<name>[a-z_]+)` \|(?P<rest>.*)$", section, re.M)
    }
    for column in COLUMNS:
        assert column.name in rows, f"docs/onboarding.md: no row for column {column.name}"
        required, *_ = (cell.strip() for cell in rows[column.name].split("|"))
        assert required == ("yes" if column.required else "no"), column.name
        for alias in column.aliases:
            assert f"`{alias}`" in rows[column.name], f"{column.name}: alias {alias!r} undocumented"


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_csv_export_of_a_shipped_profile_imports_to_the_same_profile(path, tmp_path, capsys):
    original = load_profile(str(path))
    exported = tmp_path / f"{path.stem}.csv"
    assert run("export", path.stem, "--output", exported) == 0
    assert capsys.readouterr().out == f"{exported}: {len(original.registers)} registers\n"
    header = next(csv.reader(io.StringIO(exported.read_text())))
    assert header == [c.name for c in COLUMNS]

    out = tmp_path / "imported.yaml"
    kind_desc = ["--kind", original.kind, "--description", original.description]
    assert run("import", exported, *kind_desc, "--output", out) == 0
    assert capsys.readouterr().err == ""
    assert loaded(out) == original
    assert loaded(out).registers == original.registers


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_xlsx_of_a_shipped_profile_imports_to_the_same_profile(path, tmp_path):
    original = load_profile(str(path))
    rows = list(csv.reader(io.StringIO(render_csv(original))))
    book = write_xlsx(
        tmp_path / "map.xlsx", [rows[0], *([as_cell(c) for c in r] for r in rows[1:])]
    )
    out = tmp_path / "imported.yaml"
    kind_desc = ["--kind", original.kind, "--description", original.description]
    assert run("import", book, *kind_desc, "--output", out) == 0
    assert loaded(out) == original


def test_values_that_need_quoting_survive_the_round_trip(tmp_path):
    text = (
        "tag,table,address,type,unit,description,deadband,heartbeat_s,group,byte_order\n"
        'a,holding,0,float32,%,"costs $5, or ${HOME}: {x}",2.5%,30,fast,little\n'
        "b,holding,2,int16,,'quoted' and # hash,0.5,,default,\n"
    )
    out = tmp_path / "p.yaml"
    assert run("import", write_csv(tmp_path / "m.csv", text), "--output", out) == 0
    profile = loaded(out)
    a, b = profile.registers
    assert a.description == "costs $5, or ${HOME}: {x}"
    assert (a.unit, str(a.deadband), a.heartbeat_s, a.group) == ("%", "2.5%", 30, "fast")
    assert a.byte_order == "little"
    assert (b.description, str(b.deadband), b.group) == ("'quoted' and # hash", "0.5", "default")
    again = tmp_path / "again.csv"
    again.write_text(render_csv(profile))
    out2 = tmp_path / "p2.yaml"
    assert run("import", again, "--kind", profile.kind, "--output", out2) == 0
    assert loaded(out2) == profile


# --- bad rows -----------------------------------------------------------------------------


def test_an_xlsx_with_bad_rows_names_each_and_writes_nothing(tmp_path, capsys):
    book = write_xlsx(
        tmp_path / "map.xlsx",
        [
            ["Name", "Register type", "Address", "Data type", "Bit", "Units"],
            ["hook_load", "holding", 0, "float32", None, "t"],
            ["boom angle", "holding", 2, "float32", None, "deg"],  # 3: space in tag
            ["wind", "holding", 40005, "float32", 3, "m/s"],  # 4: Modicon, bit
            ["status", "holding", 6, "uint16", None, None],
            ["running", "holding", 6, "bit", None, None],  # 6: no bit number
            ["load", "holding", 8, "float33", None, "t"],  # 7: no such type
            ["hook_load", "holding", 10, "int16", None, None],  # 8: tag again
        ],
    )
    out = tmp_path / "crane.yaml"
    assert run("import", book, "--output", out) == 1
    err = capsys.readouterr().err
    assert not out.exists()
    assert "nothing written" in err
    lines = error_lines(err)
    where = f"{book} sheet 'Registers'"
    assert lines[0].startswith(f"{where}: row 3, column A (Name): String should match pattern")
    assert lines[1].startswith(
        f"{where}: row 4, column C (Address): address 40005 looks like 1-based Modicon "
        "numbering for a holding register (4xxxx): the protocol address is 4;"
    )
    assert lines.pop(2) == f"{where}: row 4, column E (Bit): bit is only for type bit, not float32"
    assert (
        lines[2]
        == f"{where}: row 6, column E (Bit): type bit needs bit: 0..15 (0 = least significant)"
    )
    assert lines[3].startswith(f"{where}: row 7, column D (Data type): Input should be 'bool'")
    assert lines[4] == (
        f"{where}: row 8, column A (Name): tag 'hook_load' defined twice (first in row 2)"
    )
    assert len(lines) == 5


def test_a_csv_with_bad_rows_names_each_and_writes_nothing(tmp_path, capsys):
    path = write_csv(
        tmp_path / "map.csv",
        HEADER + "\n"
        "hook_load,holding,0,float32,,,,,t,ok\n"
        "radius,holding,abc,float32,,,,,m,not a number\n"  # 3
        "angle,holding,4,float32,,,sideways,,deg,bad word order\n"  # 4
        "serial,holding,10,string,,,,,,no length\n"  # 5
        "\n"  # 6: blank, skipped
        "flag,coil,0,uint16,,,,,,a coil is a bit\n"  # 7
        "load,holding,12,int16,,,,0,,scale 0\n"  # 8
        "count,holding,14,uint16,3,,,,,bit on a word\n"  # 9
        "text,holding,16,string,,4,,2,,scaled string\n",  # 10
    )
    out = tmp_path / "map.yaml"
    assert run("import", path, "--output", out) == 1
    assert not out.exists()
    lines = error_lines(capsys.readouterr().err)
    assert [line.split(": ", 2)[1] for line in lines] == [
        "row 3, column C (address)",
        "row 4, column G (word_order)",
        "row 5, column F (length)",
        "row 7, column D (type)",
        "row 8, column H (scale)",
        "row 9, column E (bit)",
        "row 10, column H (scale)",
    ]
    assert lines[0].endswith("'abc' is not a whole number")
    assert "Input should be 'big' or 'little'" in lines[1]
    assert lines[2].endswith("a string needs length (characters)")
    assert lines[3].endswith("a coil holds single bits: type must be bool, not uint16")
    assert lines[4].endswith("scale must not be 0")
    assert lines[5].endswith("bit is only for type bit, not uint16")
    assert lines[6].endswith("scale and offset apply to numbers, not to type string")


def test_every_bad_cell_of_a_row_is_named(tmp_path, capsys):
    path = write_csv(tmp_path / "m.csv", "tag,table,address,type\nx,,abc,float33\n")
    assert run("import", path) == 1
    assert [line.split(": ", 1)[1] for line in error_lines(capsys.readouterr().err)] == [
        "row 2, column B (table): empty: every register needs one",
        "row 2, column C (address): 'abc' is not a whole number",
        "row 2, column D (type): Input should be 'bool', 'bit', 'int16', 'uint16', 'int32', "
        "'uint32', 'int64', 'uint64', 'float32', 'float64' or 'string'",
    ]


def test_a_problem_of_a_column_the_sheet_lacks_says_to_add_it(tmp_path, capsys):
    path = write_csv(tmp_path / "m.csv", "tag,table,address,type\ns,holding,0,string\n")
    assert run("import", path) == 1
    assert error_lines(capsys.readouterr().err) == [
        f"{path}: row 2, column length (no such column: add one): "
        "a string needs length (characters)"
    ]


def test_duplicate_tags_and_overlaps_name_both_rows(tmp_path, capsys):
    path = write_csv(
        tmp_path / "map.csv",
        "tag,table,address,type\n"
        "a,holding,0,float32\n"  # 2
        "b,holding,1,uint16\n"  # 3: inside a
        "a,input,0,uint16\n"  # 4: a again
        "c,input,5,uint16\n"
        "a,input,9,uint16\n",  # 6: a a third time
    )
    assert run("import", path) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = error_lines(captured.err)
    assert lines == [
        f"{path}: row 3, column C (address): tag 'b' overlaps tag 'a' at holding 1 (row 2)",
        f"{path}: row 4, column A (tag): tag 'a' defined twice (first in row 2)",
        f"{path}: row 6, column A (tag): tag 'a' defined twice (first in row 2)",
    ]


def test_header_problems_are_row_1(tmp_path, capsys):
    path = write_csv(tmp_path / "map.csv", "Name,Address,Register,Units\nx,1,2,m\n")
    assert run("import", path) == 1
    lines = error_lines(capsys.readouterr().err)
    assert lines[0] == f"{path}: row 1, column C (Register): address is column B (Address) already"
    assert lines[1].startswith(f"{path}: row 1: no table column (header one of 'table', ")
    assert lines[2].startswith(f"{path}: row 1: no type column (header one of 'type', 'data type'")
    assert len(lines) == 3


def test_an_empty_table_is_refused(tmp_path, capsys):
    assert run("import", write_csv(tmp_path / "m.csv", HEADER + "\n\n")) == 1
    assert "no registers" in capsys.readouterr().err
    assert run("import", write_csv(tmp_path / "e.csv", "")) == 1
    assert "empty: row 1 must name the columns" in capsys.readouterr().err


# --- addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "address", "protocol"),
    [("holding", 40001, 0), ("holding", 400001, 0), ("input", 30005, 4), ("discrete", 10001, 0)],
)
def test_modicon_addresses_are_caught_as_in_the_config(tmp_path, capsys, table, address, protocol):
    type_ = "bool" if table == "discrete" else "uint16"
    path = write_csv(tmp_path / "m.csv", f"tag,table,address,type\nx,{table},{address},{type_}\n")
    assert run("import", path) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"{path}: row 2, column C (address): address {address} looks like")
    assert f"the protocol address is {protocol};" in line
    assert "write yes in its protocol_address column" in line


def test_a_real_high_address_is_declared_with_the_protocol_address_column(tmp_path, capsys):
    path = write_csv(
        tmp_path / "m.csv",
        "tag,table,address,type,Protocol address\n"
        "x,holding,40001,uint16,yes\n"
        "y,holding,0x10,uint16,\n",
    )
    assert run("import", path) == 0
    profile = Profile.model_validate(yaml.safe_load(capsys.readouterr().out))
    x, y = profile.registers
    assert (x.address, x.protocol_address, y.address) == (40001, True, 16)


# --- tolerant headers and values ----------------------------------------------------------


def test_header_aliases_semicolons_decimal_commas_and_iec_types(tmp_path):
    text = (
        "\ufeffName;Register Type;Register;Data_Type;Units;Scaling;Comment;Word order;BIT NO;"
        "Heartbeat (s);Poll group;Access\n"
        "hook_load;Holding Register;0;REAL;t;;Load on the hook;big-endian;;;;R\n"
        "temp;holding registers;2;INT;degC;0,1;x10;;;60;slow;R\n"
        "count;HR;3;DINT;;;;Little;;;;R\n"
        "running;holding;5;bit;;;;;3;;;R\n"
        "alarm;Discrete Input;0;BOOL;;;;;;;;R\n"
        "spm;3x;0;lreal;spm;;;LITTLE;;;;R\n"
    )
    out = tmp_path / "p.yaml"
    assert run("import", write_csv(tmp_path / "m.csv", text), "--output", out) == 0
    regs = {reg.tag: reg for reg in loaded(out).registers}
    assert (regs["hook_load"].table, regs["hook_load"].type, regs["hook_load"].unit) == (
        "holding",
        "float32",
        "t",
    )
    assert (regs["temp"].type, regs["temp"].scale, regs["temp"].heartbeat_s) == ("int16", 0.1, 60)
    assert (regs["temp"].group, regs["temp"].description) == ("slow", "x10")
    assert (regs["count"].type, regs["count"].word_order) == ("int32", "little")
    assert (regs["running"].type, regs["running"].bit) == ("bit", 3)
    assert (regs["alarm"].table, regs["alarm"].type) == ("discrete", "bool")
    assert (regs["spm"].table, regs["spm"].type, regs["spm"].word_order) == (
        "input",
        "float64",
        "little",
    )


def test_an_unknown_column_is_ignored_with_a_warning(tmp_path, capsys):
    path = write_csv(
        tmp_path / "m.csv", "tag,table,address,type,Access,Scael\nx,input,0,int16,R,2\n"
    )
    assert run("import", path) == 0
    err = capsys.readouterr().err
    assert f"{path}: column E (Access) ignored: no such field" in err
    assert f"{path}: column F (Scael) ignored: no such field" in err


def test_xlsx_numbers_percent_cells_and_a_named_sheet(tmp_path, capsys):
    path = tmp_path / "map.xlsx"
    book = openpyxl.Workbook()
    book.active.title = "Cover"
    book.active.append(["not the register table"])
    sheet = book.create_sheet("Modbus")
    sheet.append(["Tag", "Table", "Address", "Type", "Scale", "Deadband"])
    sheet.append(["p", "input", 2.0, "float32", 0.5, 0.02])
    sheet.append(["q", "input", 4, "float32", 1, 0.25])
    sheet["F2"].number_format = "0%"  # the cell shows 2%: a percent deadband
    book.save(path)

    out = tmp_path / "p.yaml"
    assert run("import", path, "--sheet", "Modbus", "--output", out) == 0
    p, q = loaded(out).registers
    assert (p.address, p.scale, str(p.deadband), str(q.deadband)) == (2, 0.5, "2%", "0.25")

    assert run("import", path, "--sheet", "Nope") == 1
    assert "no sheet 'Nope'; it has 'Cover', 'Modbus'" in capsys.readouterr().err
    assert run("import", path) == 1  # the first sheet is the cover
    assert "no tag column" in capsys.readouterr().err


def test_without_openpyxl_xlsx_says_what_to_install(tmp_path, capsys, monkeypatch):
    path = write_xlsx(tmp_path / "m.xlsx", [["tag", "table", "address", "type"]])
    monkeypatch.setitem(sys.modules, "openpyxl", None)
    assert run("import", path) == 1
    assert "pip install 'derrick[xlsx]'" in capsys.readouterr().err
    assert (
        run("import", write_csv(tmp_path / "m.csv", "tag,table,address,type\nx,coil,0,bool\n")) == 0
    )


def test_a_file_that_is_not_a_workbook(tmp_path, capsys):
    path = tmp_path / "m.xlsx"
    path.write_text("tag,table\n")
    assert run("import", path) == 1
    assert f"{path}: not an .xlsx workbook" in capsys.readouterr().err


# --- command line -------------------------------------------------------------------------


def test_export_to_stdout_and_import_from_stdout(tmp_path, capsys):
    assert run("export", "crane") == 0
    text = capsys.readouterr().out
    assert text.startswith(",".join(c.name for c in COLUMNS) + "\r\n")
    assert "hook_load,holding,0,float32," in text
    path = write_csv(tmp_path / "crane.csv", text)
    assert run("import", path) == 0
    yaml_text = capsys.readouterr().out
    assert yaml_text.startswith("# Imported from crane.csv by `derrick-agent profile import`.")
    assert (
        "  - {tag: utilisation, table: holding, address: 8, type: uint16, scale: 0.1" in yaml_text
    )
    profile = Profile.model_validate(yaml.safe_load(yaml_text))
    assert profile.kind == "crane"  # the file's name
    assert profile.registers == load_profile("crane").registers


def test_name_writes_profiles_name_yaml_where_the_agent_finds_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_csv(tmp_path / "LMI map (v2).csv", "tag,table,address,type\nx,holding,0,int16\n")
    assert run("import", path, "--name", "lmi") == 0
    assert capsys.readouterr().out == "profiles/lmi.yaml: 1 register, kind lmi\n"
    assert load_profile("lmi", tmp_path).kind == "lmi"
    assert run("import", path, "--output", "x.yaml") == 0
    assert loaded(tmp_path / "x.yaml").kind == "LMI_map_v2"
    assert run("export", "profiles/lmi.yaml") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "x,holding,0,int16" + "," * 12


def test_usage_errors_exit_2(tmp_path, capsys):
    csv_path = write_csv(tmp_path / "m.csv", "tag,table,address,type\nx,holding,0,int16\n")
    assert main(["profile"]) == 2
    assert run("import") == 2
    assert run("frobnicate", csv_path) == 2
    assert "usage: derrick-agent profile" in capsys.readouterr().err
    assert run("import", tmp_path / "m.ods") == 2
    assert "give a .csv or .xlsx file" in capsys.readouterr().err
    assert run("import", csv_path, "--sheet", "x") == 2
    assert "--sheet is for .xlsx workbooks" in capsys.readouterr().err
    assert run("import", csv_path, "--kind", "a crane") == 2
    assert "kind: String should match pattern" in capsys.readouterr().err
    assert run("import", csv_path, "--name", "../x") == 2
    assert main(["profile", "--help"]) == 0


def test_unreadable_inputs_exit_1(tmp_path, capsys):
    assert run("import", tmp_path / "missing.csv") == 1
    assert "missing.csv: cannot read" in capsys.readouterr().err
    assert run("export", "no_such_profile") == 1
    assert "no_such_profile.yaml: cannot read file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: x\nregisters: [{tag: a, table: holding, address: 0, type: int17}]\n")
    assert run("export", bad) == 1
    assert "registers[0] (tag a).type" in capsys.readouterr().err
    latin = tmp_path / "latin.csv"
    latin.write_bytes("tag,table,address,type,unit\nx,holding,0,int16,\xb0C\n".encode("latin-1"))
    assert run("import", latin) == 1
    assert "not UTF-8 text" in capsys.readouterr().err


def test_import_sheet_is_usable_without_files():
    sheet = Sheet("inline", ["Tag", "Table", "Address", "Type"], [(2, ["a", "coil", 3, "bool"])])
    profile = import_sheet(sheet, "k")
    assert profile.registers[0].address == 3
    assert profileio.column_letter(0) == "A"
    assert profileio.column_letter(27) == "AB"
