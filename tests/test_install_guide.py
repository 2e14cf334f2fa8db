"""docs/install-gateway.md, followed: a fresh venv from the built wheel, the guide's
config in a scratch /etc/derrick, ``derrick-agent --check`` from that venv, and the unit
the wheel ships verified against that venv with ``systemd-analyze verify``.

What needs a real gateway (root, systemd as PID 1, the derrick user) is not done here:
``systemctl``, ``systemd-sysusers`` on the live system, the sandbox itself.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_packaging import run, wheels  # noqa: F401 (wheels: the module's fixture)
from tests.test_systemd import AGENT_UNIT, COLLECTOR_UNIT, SYSUSERS, pointed_at, verify

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "install-gateway.md"
VERSION = "0.1.0"


def guide_block(name: str) -> str:
    """The fenced block after ``<!-- install-guide-test: NAME -->`` in the guide."""
    text = GUIDE.read_text()
    marker = f"<!-- install-guide-test: {name} -->"
    assert marker in text, f"{GUIDE.name} has no {marker}"
    found = re.search(r"```\w*\n(.*?)```", text[text.index(marker) :], re.DOTALL)
    assert found is not None
    return found.group(1)


def test_the_guide_names_what_the_units_and_the_wheel_use():
    """The paths the guide tells the technician are the units' and the wheel's."""
    text = GUIDE.read_text()
    for needed in (
        "python3 -m venv /opt/derrick/venv-$version",
        "pip install --no-index --find-links /tmp/wheelhouse 'derrick[agent]'",
        "ln -sfn venv-$version /opt/derrick/venv",
        "/opt/derrick/venv/share/derrick/systemd/derrick-agent.service",
        "systemctl daemon-reload && systemctl enable --now derrick-agent",
        "journalctl -u derrick-agent",
        "derrick-agent status --config /etc/derrick/agent.yaml",
        "install -m 0640 -o root -g derrick ca.pem gw.pem gw.key /etc/derrick/",
    ):
        assert needed in text, needed
    config = guide_block("agent.yaml")
    assert "path: /var/lib/derrick/" in config  # the only place the unit lets it write
    assert "ExecStart=/opt/derrick/venv/bin/derrick-agent --config /etc/derrick/agent.yaml" in (
        AGENT_UNIT.read_text()
    )


@pytest.mark.integration
def test_following_the_guide_in_a_fresh_venv(wheels, tmp_path):  # noqa: F811
    # 2. the program: a venv of its own version, the symlink the units run through
    opt = tmp_path / "opt" / "derrick"
    versioned = opt / f"venv-{VERSION}"
    run([sys.executable, "-m", "venv", versioned], tmp_path)
    pip = [versioned / "bin" / "python", "-m", "pip", "install", "-q"]
    run([*pip, "--disable-pip-version-check", f"{wheels['derrick']}[agent]"], tmp_path, 600)
    (opt / "venv").symlink_to(f"venv-{VERSION}")
    venv = opt / "venv"
    shipped = venv / "share" / "derrick" / "systemd"
    for unit in (AGENT_UNIT, COLLECTOR_UNIT, SYSUSERS):
        assert (shipped / unit.name).read_text() == unit.read_text(), unit.name

    # 3. secrets, 4. the config: the guide's own block, /etc and /var/lib in scratch dirs
    etc = tmp_path / "etc" / "derrick"
    state = tmp_path / "var" / "lib" / "derrick"
    etc.mkdir(parents=True)
    for name in ("ca.pem", "gw.pem", "gw.key", "mqtt.pass"):
        (etc / name).write_text("placeholder: --check reads no certificate\n")
        (etc / name).chmod(0o640)
    config = guide_block("agent.yaml")
    config = config.replace("/etc/derrick/", f"{etc}/").replace("/var/lib/derrick/", f"{state}/")
    (etc / "agent.yaml").write_text(config)
    agent = venv / "bin" / "derrick-agent"
    plan = run([agent, "--config", etc / "agent.yaml", "--check"], tmp_path)
    assert "lmi (tcp://192.168.10.20:502 unit 1):" in plan
    assert f"spool {state}/derrick-agent.db" in plan

    # 5. the unit the wheel ships, pointed at this venv and config
    output = verify(
        pointed_at(shipped / AGENT_UNIT.name, venv / "bin", etc), AGENT_UNIT.name, tmp_path / "u"
    )
    assert output == "", output

    # 6. status before the agent ever ran: not running, nothing to read, exit 1
    done = subprocess.run(
        [venv / "bin" / "derrick-agent", "status", "--config", etc / "agent.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "agent not running" in done.stdout
    assert f"no spool file at {state}/derrick-agent.db" in done.stdout
