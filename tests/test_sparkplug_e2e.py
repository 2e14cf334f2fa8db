"""Sparkplug B end to end, with real parts: derrick-sim, an agent with ``format:
sparkplug``, mosquitto, the collector as host application, InfluxDB 1.6. What lands in
InfluxDB is what the JSON wire stores; a collector restart loses nothing and needs no
rebirth; a killed agent's NDEATH marks its device down."""

from __future__ import annotations

import time
import uuid

import pytest

from devstack.programs import Program, start_pipeline, start_simulator, wait_for, write_yaml
from devstack.tap import Tap

pytestmark = pytest.mark.integration


def influx(influx1, db: str) -> dict:
    return {"api": "v1", "url": influx1.url, "database": db}


def rows(influx1, db: str, query: str) -> list[dict]:
    result = influx1.query(query, db=db)
    out = []
    for series in result["results"][0].get("series", []):
        out += [dict(zip(series["columns"], values, strict=True)) for values in series["values"]]
    return out


def telemetry(influx1, db: str, site: str) -> list[dict]:
    return rows(influx1, db, f"SELECT * FROM telemetry WHERE site='{site}'")


def stop_all(*programs: Program) -> dict[str, tuple[int | None, str]]:
    return {p.name: (p.stop(), p.log_tail(60)) for p in programs}


def test_sparkplug_stores_what_json_stores_and_survives_a_collector_restart(
    tmp_path, mosquitto, influx1, influx_db
):
    sim = start_simulator(tmp_path, "--no-demo-overload")
    json_codes: dict[str, tuple[int | None, str]] = {}
    (tmp_path / "json").mkdir()
    (tmp_path / "spb").mkdir()
    by_json = start_pipeline(
        tmp_path / "json", mosquitto.port, influx(influx1, influx_db), sim.port
    )
    by_spb = start_pipeline(
        tmp_path / "spb", mosquitto.port, influx(influx1, influx_db), sim.port, wire="sparkplug"
    )
    try:
        for pipe in (by_json, by_spb):
            wait_for(
                lambda pipe=pipe: len(telemetry(influx1, influx_db, pipe.site)) >= 10,
                40,
                f"readings of {pipe.site}",
                program=pipe.collector,
            )
        json_rows = telemetry(influx1, influx_db, by_json.site)
        spb_rows = telemetry(influx1, influx_db, by_spb.site)
        columns = {c for row in json_rows for c, v in row.items() if v is not None}
        assert {c for row in spb_rows for c, v in row.items() if v is not None} == columns
        for row in spb_rows:  # one line per request: each row holds one request's fields
            assert (row["asset"], row["device"], row["kind"]) == ("crane-01", "lmi", "crane")
        # One measurement for both sites: a field written with another type than the
        # JSON path's would have been refused by InfluxDB (and dead-lettered).
        for field in ("hook_load", "estop", "lift_count", "utilisation"):
            assert any(row[field] is not None for row in spb_rows), field
        assert all(type(row["estop"]) is bool for row in spb_rows if row["estop"] is not None)
        ups = rows(
            influx1, influx_db, f"SELECT up, reason FROM device_status WHERE site='{by_spb.site}'"
        )
        assert ups
        assert {(row["up"], row["reason"]) for row in ups} == {(True, "DBIRTH")}
        json_codes = stop_all(by_json.agent, by_json.collector)  # the rest is Sparkplug's

        # The collector away for 3 s: the broker keeps its share; back, it reads it with
        # the alias tables it kept, and asks for no rebirth.
        assert by_spb.collector.stop() == 0
        log_before = by_spb.collector.log_path.stat().st_size
        stopped = time.time_ns()
        time.sleep(3)
        restarted = by_spb.collector.start()
        resumed = time.time_ns()

        def after_restart() -> list[dict]:
            fresh = telemetry(influx1, influx_db, by_spb.site)
            return fresh if fresh[-1]["time"] > resumed + 2 * 10**9 else []

        stored = wait_for(after_restart, 40, "readings after the restart", program=restarted)
        during = [row for row in stored if stopped <= row["time"] <= resumed]
        assert len(during) >= 8, "readings made while the collector was away were lost"
        log = restarted.log_path.read_text()[log_before:]
        assert '"Sparkplug alias tables restored"' in log
        assert "rebirth" not in log

        # A killed agent: the broker sends its NDEATH; the device goes down.
        by_spb.agent.kill()
        wait_for(
            lambda: rows(
                influx1,
                influx_db,
                f"SELECT up, reason FROM device_status WHERE site='{by_spb.site}' AND up = false",
            ),
            20,
            "the device down after the agent's NDEATH",
            program=restarted,
        )
    finally:
        codes = {**stop_all(by_json.agent, by_json.collector), **stop_all(by_spb.collector)}
        codes.update({f"json {name}": code for name, code in json_codes.items()})
        by_spb.agent.kill()
        sim.program.stop()
    for name, (code, tail) in codes.items():
        assert code == 0, f"{name}: {code}\n{tail}"


def test_an_agent_with_a_primary_host_publishes_only_while_it_is_online(
    tmp_path, mosquitto, influx1, influx_db
):
    """Store and forward by the host's STATE: before the collector (the primary host)
    is up, and while it is cleanly stopped, the agent sends nothing and keeps its
    readings; each time the host comes online it is born again and replays them, so
    InfluxDB has no hole."""
    sim = start_simulator(tmp_path, "--no-demo-overload")
    site = f"t{uuid.uuid4().hex[:8]}"
    broker = {"host": "127.0.0.1", "port": mosquitto.port, "reconnect_max_s": 1}
    agent_cfg = write_yaml(
        tmp_path / "agent.yaml",
        {
            "agent": {"id": f"gw-{site}", "site": site},
            "broker": broker,
            "format": "sparkplug",
            "sparkplug": {"primary_host": f"host-{site}"},
            "devices": [
                {
                    "name": "lmi",
                    "asset": "crane-01",
                    "profile": "crane",
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "interval_s": 0.2,
                }
            ],
            "spool": {"path": str(tmp_path / "agent-spool.db")},
            "log": {"format": "json"},
        },
    )
    collector_cfg = write_yaml(
        tmp_path / "collector.yaml",
        {
            "collector": {"id": f"col-{site}"},
            "broker": broker,
            "influx": influx(influx1, influx_db),
            "batch": {"max_lines": 500, "max_delay_s": 0.1},
            "sparkplug": {"host_id": f"host-{site}"},
            "log": {"format": "json"},
        },
    )
    agent = Program("agent", ["--config", str(agent_cfg)], tmp_path / "agent.log")
    collector = Program("collector", ["--config", str(collector_cfg)], tmp_path / "col.log")
    with Tap(mosquitto.port, f"spBv1.0/{site}/#") as tap:
        try:
            agent.start()
            started = time.time_ns()
            time.sleep(3)
            assert tap.messages() == [], "published before the primary host was online"
            collector.start()
            wait_for(
                lambda: any(
                    row["time"] < started + 10**9 for row in telemetry(influx1, influx_db, site)
                ),
                40,
                "readings polled before the host came online",
                program=collector,
            )
            assert collector.stop() == 0  # STATE offline, retained
            stopped = time.time_ns()
            time.sleep(1)  # what was in flight
            quiet_from = len(tap.messages())
            time.sleep(3)
            assert [m.topic for m in tap.messages()[quiet_from:]] == []
            collector.start()
            resumed = time.time_ns()

            def covered() -> list[dict]:
                rows = telemetry(influx1, influx_db, site)
                return rows if rows and rows[-1]["time"] > resumed + 10**9 else []

            rows = wait_for(covered, 40, "readings after the host came back", program=collector)
        finally:
            codes = stop_all(agent, collector)
            sim.program.stop()
        births = [m for m in tap.messages() if "/NBIRTH/" in m.topic]
    assert len(births) >= 2
    stamps = [row["time"] for row in rows if row["hook_load"] is not None]
    during = [t for t in stamps if stopped <= t <= resumed]
    assert len(during) >= 0.5 * (resumed - stopped) / 0.2e9, "readings held while away were lost"
    log = (tmp_path / "agent.log").read_text()
    assert log.count('"primary host offline: holding messages in the spool"') == 1
    assert log.count('"primary host online: publishing"') == 2
    for name, (code, tail) in codes.items():
        assert code == 0, f"{name}: {code}\n{tail}"
