"""Architecture rules that could silently erode: protocol boundaries and install extras."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ["derrick", "agent", "collector", "simulators", "devstack"]

# The one module allowed to import each protocol library.
BOUNDARIES = {
    "paho": {"derrick/mqtt/client.py"},
    "pymodbus": {"agent/modbus.py", "simulators/modbus_server.py"},
    "influxdb_client": {"collector/influx.py"},
    # protobuf: the Sparkplug codec and the module generated from the spec's proto
    "google": {"derrick/wire/sparkplug.py", "derrick/wire/sparkplug_b_pb2.py"},
    "aetcd": {"collector/etcd.py"},
    # the web server: uvicorn (and its h11) served in the program's own loop
    "uvicorn": {"derrick/plumbing/asgi.py"},
    "h11": {"derrick/plumbing/asgi.py"},
    # the web framework: the collector's web package and the simulator's control API
    "fastapi": {
        f"collector/web/{m}.py" for m in ("admin", "api", "app", "console", "errors", "login")
    },
    "starlette": {
        *(f"collector/web/{m}.py" for m in ("admin", "app", "console", "errors")),
        "simulators/control.py",
    },
    "jinja2": {"collector/web/console.py"},
    # password hashing: the users module (and the dev stack's cheap test hashes)
    "argon2": {"collector/users.py", "devstack/alarmstack.py"},
    "selenium": {"devstack/browser.py"},
}


PRODUCT = ["derrick", "agent", "collector", "simulators"]
PURE = ["derrick.alarms", "derrick.plc", "derrick.wire"]
IO_LIBRARIES = {
    "sqlite3",
    "socket",
    "ssl",
    "http",
    "urllib",
    "smtplib",
    "email",
    "paho",
    "pymodbus",
    "serial",
    "influxdb_client",
    "asyncio",
    "threading",
    "subprocess",
    "structlog",
}


def imported_names(path: Path) -> set[str]:
    """Every dotted name an import in ``path`` mentions: ``from a.b import c`` gives
    ``a.b`` and ``a.b.c`` (c may be a module or a name in it)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_names(path)}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")
}


def closure(start: str) -> set[str]:
    """The project modules ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        todo += [n for n in imported_names(MODULES[name]) if n in MODULES]
        todo += [n.rsplit(".", 1)[0] for n in imported_names(MODULES[name]) if "." in n]
    return seen


def modules_of(*packages: str) -> list[str]:
    return sorted(m for m in MODULES if m.split(".")[0] in packages or m.startswith(packages))


@pytest.mark.parametrize("library", BOUNDARIES)
def test_each_protocol_library_is_imported_in_one_boundary_module(library):
    importers = {
        str(path.relative_to(REPO))
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if library in imported_roots(path)
    }
    assert importers == BOUNDARIES[library]


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        # derrick[agent] on a field gateway: no web stack either
        ("agent.main", ["influxdb_client", "fastapi", "starlette", "uvicorn", "argon2", "jinja2"]),
        ("collector.main", ["pymodbus"]),  # derrick[collector]
        ("simulators.main", ["paho", "influxdb_client", "fastapi", "jinja2", "argon2"]),
    ],
)
def test_programs_import_without_other_programs_dependencies(module, absent):
    block = "".join(f"sys.modules[{name!r}] = None; " for name in absent)
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; {block}import {module}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", ["derrick-sim", "derrick-agent", "derrick-collector"])
def test_console_scripts_are_installed_with_help(script):
    path = Path(sys.executable).parent / script
    done = subprocess.run(
        [str(path), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"usage: {script}" in done.stdout


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(tuple(PURE))])
def test_the_pure_core_imports_no_io_library(module):
    """Rules, condition engine, lifecycle, register codec and contract run anywhere: in
    the agent, the collector, a test, without a socket, a file handle or a thread."""
    used = {
        f"{name} (in {other})"
        for other in closure(module)
        for name in imported_names(MODULES[other])
        if name.split(".")[0] in IO_LIBRARIES
    }
    assert not used, f"{module} reaches I/O: {sorted(used)}"


def test_the_pure_alarm_core_is_in_the_shared_kernel():
    for name in ("rules", "engine", "lifecycle", "kpi", "ownership"):
        assert f"derrick.alarms.{name}" in MODULES
        assert f"collector.alarms.{name}" not in MODULES


@pytest.mark.parametrize(
    ("packages", "forbidden"),
    [
        (("agent",), ("collector", "simulators", "devstack")),
        (("collector",), ("agent", "simulators", "devstack")),
        (("simulators",), ("agent", "collector", "devstack")),
        (("derrick",), ("agent", "collector", "simulators", "devstack")),
    ],
)
def test_programs_import_only_the_shared_kernel(packages, forbidden):
    """The agent never imports the collector (it runs on a gateway without it), and no
    product code imports the test servers or the simulators. One crossing is allowed:
    the collector's ACL generator reads the gateways' agent configs (agent.config, which
    needs neither pymodbus nor paho)."""
    allowed = {("collector", "agent"), ("collector", "agent.config")}
    crossings = {
        f"{module} -> {other}"
        for module in modules_of(*packages)
        for other in closure(module)
        if other.split(".")[0] in forbidden and (packages[0], other) not in allowed
    }
    assert not crossings


def test_the_shared_kernel_has_one_sub_package_per_role():
    kernel = REPO / "derrick"
    loose = sorted(p.name for p in kernel.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside a role's sub-package: {loose}"
    roles = sorted(p.name for p in kernel.iterdir() if (p / "__init__.py").exists())
    assert roles == ["alarms", "mqtt", "notify", "plc", "plumbing", "spool", "wire"]


def architecture_rows() -> dict[str, str]:
    """README's architecture table: package directory -> the whole row."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| Part | Package |") :].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        package = line.split("|")[2]
        directory = re.search(r"`([a-z_/]+/)`", package)
        assert directory, f"no package directory in: {line}"
        rows[directory.group(1)] = line
    return rows


def test_the_readme_architecture_table_matches_the_tree():
    """Every package in the table exists, every sub-package of the kernel and every
    program is in it, and each row names every module of its package."""
    rows = architecture_rows()
    for directory, row in rows.items():
        assert (REPO / directory).is_dir(), f"README names {directory}, not in the tree"
        for named in re.findall(r"`([a-z_/0-9]+\.py)`", row):
            path = named if "/" in named else directory + named
            assert (REPO / path).is_file(), f"README names {path}, not in the tree"
    packages = {f"derrick/{p.name}/" for p in (REPO / "derrick").iterdir() if p.is_dir()}
    packages -= {"derrick/__pycache__/"}
    packages |= {
        "agent/",
        "collector/",
        "collector/alarms/",
        "collector/web/",
        "simulators/",
        "devstack/",
    }
    assert packages <= set(rows), f"missing from README: {sorted(packages - set(rows))}"
    for directory in sorted(packages - {"simulators/", "devstack/"}):
        named = set(re.findall(r"`([a-z_0-9]+)(?:\.py)?`", rows[directory]))
        named |= {Path(p).stem for p in re.findall(r"`[a-z_/]+/([a-z_0-9]+\.py)`", rows[directory])}
        modules = {p.stem for p in (REPO / directory).glob("*.py") if p.stem != "__init__"}
        assert modules <= named, f"{directory}: README row misses {sorted(modules - named)}"
