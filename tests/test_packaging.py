"""The wheels a user installs: a field gateway gets the agent and nothing else.

Three distributions are built from this tree (README "Install"): ``derrick`` (the shared
kernel and the agent), ``derrick-collector`` (collector/) and ``derrick-sim``
(simulators/). The test servers (devstack/), benchmarks and tests are in none of them.
"""

import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROJECTS = {"derrick": ".", "derrick_collector": "collector", "derrick_sim": "simulators"}


def run(args: list, cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def tree_copy(target: Path) -> Path:
    """The sources (not ignored files), copied: building in place would leave build/ in
    the tree."""
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    files = run(listing, REPO).splitlines()
    for name in files:
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three wheels, built the way `make wheels` builds them."""
    source = tree_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    for project in PROJECTS.values():
        run([*pip, "-w", out, source / project], source)
    built = {path.name.split("-")[0]: path for path in out.glob("*.whl")}
    assert sorted(built) == sorted(PROJECTS)
    return built


def top_levels(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    return {
        name.split("/")[0] for name in names if ".dist-info/" not in name and ".data/" not in name
    }


@pytest.mark.integration
def test_each_wheel_holds_its_program_and_no_test_code(wheels):
    assert top_levels(wheels["derrick"]) == {"derrick", "agent"}
    with zipfile.ZipFile(wheels["derrick"]) as archive:
        data = {n.split(".data/data/")[-1] for n in archive.namelist() if ".data/" in n}
    units = ("derrick-agent.service", "derrick-collector.service", "derrick.sysusers.conf")
    assert data == {
        f"share/derrick/profiles/{n}.yaml" for n in ("bench100", "crane", "rig", "small11")
    } | {f"share/derrick/systemd/{n}" for n in units}
    assert top_levels(wheels["derrick_collector"]) == {"collector"}
    assert top_levels(wheels["derrick_sim"]) == {"simulators"}
    with zipfile.ZipFile(wheels["derrick_collector"]) as archive:
        assert "collector/alarms/service.py" in archive.namelist()
        assert not [n for n in archive.namelist() if n.endswith("pyproject.toml")]


@pytest.mark.integration
def test_a_gateway_install_has_a_working_agent_and_no_collector_or_simulator(wheels, tmp_path):
    """`pip install 'derrick[agent]'` into a clean venv (dependencies from the index
    scripts/setup.sh uses), then run from a directory outside the repository."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path)
    python = venv / "bin" / "python"
    install = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*install, f"{wheels['derrick']}[agent]"], tmp_path, timeout=600)
    usage = run([venv / "bin" / "derrick-agent", "--help"], tmp_path)
    assert usage.startswith("usage: derrick-agent")
    for absent in ("collector", "simulators", "devstack", "bench", "tests"):
        probe = subprocess.run(
            [python, "-c", f"import {absent}"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=False,
        )
        assert probe.returncode != 0, f"{absent} is importable on a gateway"
        assert "ModuleNotFoundError" in probe.stderr
    assert not (venv / "bin" / "derrick-collector").exists()
    assert not (venv / "bin" / "derrick-sim").exists()
    # the agent's whole import graph loads: the pure alarm core and the register model too
    run([python, "-c", "import agent.main, derrick.alarms.engine, derrick.plc.profile"], tmp_path)
    if platform.machine() in {"x86_64", "aarch64"}:  # the agent's event loop came with it
        run([python, "-c", "import uvloop"], tmp_path)
    # a gateway config names a built-in profile: the wheel brought it
    (tmp_path / "agent.yaml").write_text(GATEWAY_CONFIG)
    plan = run([venv / "bin" / "derrick-agent", "--config", "agent.yaml", "--check"], tmp_path)
    assert "lmi (tcp://127.0.0.1:5020 unit 1):" in plan
    assert "1 devices," in plan


GATEWAY_CONFIG = """\
agent: {id: gw-1, site: yard}
broker: {host: 127.0.0.1}
devices:
  - {name: lmi, asset: crane-01, profile: crane, host: 127.0.0.1, port: 5020}
"""
