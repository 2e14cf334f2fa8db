"""Agent through outages, with real parts: a PLC that is not there, a broker restart.

A dead PLC must show in InfluxDB as bad quality (not as silence) and recover by itself;
a broker restart must leave no hole in the stored readings, because the agent keeps
polling and holds its messages until the broker acknowledges them.
"""

from __future__ import annotations

import itertools
import time

import pytest

from devstack.programs import start_pipeline, start_simulator, wait_for
from devstack.services import free_port

pytestmark = pytest.mark.integration

INTERVAL_S = 0.2


def influx(influx1, db: str) -> dict:
    return {"api": "v1", "url": influx1.url, "database": db}


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


def test_dead_plc_is_stored_as_bad_quality_and_recovers(tmp_path, mosquitto, influx1, influx_db):
    plc_port = free_port()  # nothing listens here yet: the PLC is "off"
    pipe = start_pipeline(
        tmp_path,
        mosquitto.port,
        influx(influx1, influx_db),
        plc_port,
        interval_s=INTERVAL_S,
        timeout_s=0.3,
    )
    site, agent, collector = pipe.site, pipe.agent, pipe.collector
    sim = None
    try:
        wait_for(
            lambda: len(bad_marks(influx1, influx_db, site)) >= 3,
            30,
            "bad-quality marks while the PLC is off",
            program=collector,
        )
        assert good_values(influx1, influx_db, site) == []
        sim = start_simulator(tmp_path, "--no-demo-overload", port=plc_port).program  # power on
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
        codes = pipe.stop()
        if sim is not None:
            codes["sim"] = (sim.stop(), sim.log_tail())
    for name, (code, tail) in codes.items():
        assert code == 0, f"{name}: {code}\n{tail}"


def test_broker_restart_leaves_no_hole_in_stored_readings(tmp_path, mosquitto, influx1, influx_db):
    simulator = start_simulator(tmp_path, "--no-demo-overload")
    plc_port = simulator.port
    pipe = start_pipeline(
        tmp_path,
        mosquitto.port,
        influx(influx1, influx_db),
        plc_port,
        interval_s=INTERVAL_S,
        timeout_s=0.3,
    )
    site, agent, collector = pipe.site, pipe.agent, pipe.collector
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
        assert len(during) >= 0.5 * 3 / INTERVAL_S, "polls during the outage were lost"
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert max(gaps) < 1.5e9, f"a {max(gaps) / 1e9:.2f} s hole in a 3 s outage"
    finally:
        if not mosquitto.running:
            mosquitto.start()
        codes = pipe.stop()
        codes["sim"] = (simulator.program.stop(), simulator.program.log_tail())
    for name, (code, tail) in codes.items():
        assert code == 0, f"{name}: {code}\n{tail}"
