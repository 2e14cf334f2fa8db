"""``make run``'s orchestrator, as a user runs it: readings written, the demo alarm shown."""

import re
import subprocess
import sys

import pytest

from devstack.programs import REPO

pytestmark = pytest.mark.integration


def test_demo_run_writes_readings_and_shows_the_overload_alarm():
    done = subprocess.run(
        [sys.executable, "-m", "devstack.run", "--seconds", "45"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.search(r"^broker: +mqtt://127\.0\.0\.1:\d+$", out, re.M), out
    assert re.search(r"^influxdb: +http://127\.0\.0\.1:\d+ +database: derrick", out, re.M), out
    # The demo lift peaks at 108 % of the load chart: above the rated load, below the
    # 110 % overload alarm.
    rated = "demo-yard/crane-01/lmi crane_hook_load_rated"
    raised = re.findall(rf"ALARM ANNOUNCE +high +{rated}", out)
    cleared = re.findall(rf"ALARM CLEAR +high +{rated}", out)
    assert (len(raised), len(cleared)) == (1, 1), out
    assert "crane_overload" not in out, out
    summary = re.search(r"^summary: .*readings written (\d+), alarms raised (\d+)", out, re.M)
    assert summary, out
    # one poll a second of six tags for ~45 s
    assert int(summary.group(1)) >= 6 * 35, out
    assert int(summary.group(2)) == len(re.findall(r"ALARM ANNOUNCE", out)) >= 1, out
