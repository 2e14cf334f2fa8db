"""Architecture rules that could silently erode: protocol boundaries and install extras."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ["derrick", "agent", "collector", "simulators", "devstack"]

# The one module allowed to import each protocol library.
BOUNDARIES = {
    "paho": {"derrick/mqtt.py"},
    "pymodbus": {"agent/modbus.py", "simulators/modbus_server.py"},
    "influxdb_client": {"collector/influx.py"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


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
        ("agent.main", ["influxdb_client"]),  # derrick[agent] on a field gateway
        ("collector.main", ["pymodbus"]),  # derrick[collector]
        ("simulators.main", ["paho", "influxdb_client"]),  # derrick[sim]
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
