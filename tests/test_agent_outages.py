"""Agent through outages, with real parts: a PLC that is not there, a broker restart.

A dead PLC must show in InfluxDB as bad quality (not as silence) and recover by itself;
a broker restart must leave no hole in the stored readings, because the agent keeps
polling and holds its messages until the broker acknowledges them.
"""

from __future__ import annotations

import itertools
import time
import uuid

import pytest

from derrick.profile import PROFILE_DIR
from devstack.programs import Program, http_json, wait_for, write_yaml
from devstack.services import free_port

pytestmark = pytest.mark.integration

INTERVAL_S = 0.2


def start_sim(tmp_path, port: int) -> tuple[Program, str]:
    control = free_port()
    program = Program(
        "sim",
        [
            "--port",
            str(port),
            "--control-port",
            str(control),
            "--no-demo-overload",
            "--log-format",
            "json",
        ],
        tmp_path / "sim.log",
    ).start()
    url = f"http://127.0.0.1:{control}"
    wait_for(lambda: http_json(f"{url}/health"), 30, "simulator", program=program)
    return program, url


def start_pipeline(tmp_path, mosquitto, influx1, db: str, plc_port: int):
    site = f"t{uuid.uuid4().hex[:8]}"
    broker = {"host": "127.0.0.1", "port": mosquitto.port, "reconnect_max_s": 2}
    agent_cfg = write_yaml(
        tmp_path / "agent.yaml",
        {
            "agent": {"id": f"gw-{site}", "site": site},
            "broker": broker,
            "devices": [
                {
                    "name": "lmi",
                    "asset": "crane-01",
                    "profile": "crane",
                    "host": "127.0.0.1",
                    "port": plc_port,
                    "interval_s": INTERVAL_S,
                    "timeout_s": 0.3,
                }
            ],
            "log": {"format": "json"},
        },
    )
    collector_cfg = write_yaml(
        tmp_path / "collector.yaml",
        {
            "collector": {"id": f"col-{site}"},
            "broker": broker,
            "influx": {"api": "v1", "url": influx1.url, "database": db},
            "batch": {"max_lines": 200, "max_delay_s": 0.1},
            "rules": str(PROFILE_DIR.parent / "rules" / "crane.yaml"),
            "log": {"format": "json"},
        },
    )
    collector = Program(
        "collector", ["--config", str(collector_cfg)], tmp_path / "collector.log"
    ).start()
    agent = Program("agent", ["--config", str(agent_cfg)], tmp_path / "agent.log").start()
    return site, agent, collector


def bad_marks(influx1, db, site):
    result = influx1.query(
        f"SELECT hook_load_q FROM telemetry WHERE site='{site}' AND hook_load_q = 'bad'", db=db
    )
    series = result["results"][0].get("series")
    return series[0]["values"] if series else []


def good_values(influx1, db, site):
    result = influx1.query(
        f"SELECT hook_load FROM telemetry WHERE site='{site}' AND hook_load > -1", db=db
    )
    series = result["results"][0].get("series")
    return series[0]["values"] if series else []


def stop_all(*programs):
    return {p.name: (p.stop(), p.log_tail()) for p in programs}


def test_dead_plc_is_stored_as_bad_quality_and_recovers(tmp_path, mosquitto, influx1, influx_db):
    plc_port = free_port()  # nothing listens here yet: the PLC is "off"
    site, agent, collector = start_pipeline(tmp_path, mosquitto, influx1, influx_db, plc_port)
    sim = None
    try:
        wait_for(
            lambda: len(bad_marks(influx1, influx_db, site)) >= 3,
            30,
            "bad-quality marks while the PLC is off",
            program=collector,
        )
        assert good_values(influx1, influx_db, site) == []
        sim, _ = start_sim(tmp_path, plc_port)  # PLC powered on
        wait_for(
            lambda: len(good_values(influx1, influx_db, site)) >= 3,
            60,
            "good values after the PLC came up",
            program=agent,
        )
        log = agent.log_tail(200)
        assert log.count('"device down"') == 1, log
        assert log.count('"device up"') == 1, log
    finally:
        codes = stop_all(agent, collector, *([sim] if sim else []))
    for name, (code, tail) in codes.items():
        assert code == 0, f"{name}: {code}\n{tail}"


def test_broker_restart_leaves_no_hole_in_stored_readings(tmp_path, mosquitto, influx1, influx_db):
    sim, _ = start_sim(tmp_path, free_port())
    plc_port = int(sim.args[sim.args.index("--port") + 1])
    site, agent, collector = start_pipeline(tmp_path, mosquitto, influx1, influx_db, plc_port)
    try:
        wait_for(
            lambda: len(good_values(influx1, influx_db, site)) >= 5,
            30,
            "first values",
            program=collector,
        )
        mosquitto.stop()
        outage_start = time.time_ns()
        try:
            time.sleep(3)
        finally:
            mosquitto.start()
        outage_end = time.time_ns()

        def covered():
            stamps = [row[0] for row in good_values(influx1, influx_db, site)]
            return stamps if stamps and stamps[-1] > outage_end + 10**9 else None

        stamps = wait_for(covered, 60, "readings after the outage", program=agent)
        during = [t for t in stamps if outage_start <= t <= outage_end]
        assert len(during) >= 0.8 * 3 / INTERVAL_S, "polls during the outage were lost"
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert max(gaps) < 3 * INTERVAL_S * 1e9, f"largest gap {max(gaps) / 1e9:.2f} s"
    finally:
        if not mosquitto.running:
            mosquitto.start()
        codes = stop_all(agent, collector, sim)
    for name, (code, tail) in codes.items():
        assert code == 0, f"{name}: {code}\n{tail}"
