"""End to end through real parts: simulator -> agent -> mosquitto -> collector -> InfluxDB.

Every process is the real program started as a subprocess; the broker, InfluxDB 1.6 and
VictoriaMetrics are the real servers from the session fixtures in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import pytest

from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.wire.payloads import AlarmCommand, AlarmNotice
from derrick.wire.topics import alarm_commands_topic, alarm_events_topic, alarm_replies_topic
from devstack.programs import http_json, start_pipeline, start_simulator, wait_for
from simulators.crane import EXACT_VALUES

pytestmark = pytest.mark.integration

PINNED = EXACT_VALUES


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """One crane simulator without the scripted demo overload."""
    simulator = start_simulator(tmp_path_factory.mktemp("sim"), "--no-demo-overload", "--seed", "7")
    yield simulator
    assert simulator.program.stop() == 0, simulator.program.log_tail()


def assert_clean_exit(codes):
    for name, (code, tail) in codes.items():
        assert code == 0, f"{name} exit {code}:\n{tail}"


def influx1_latest(influx1, db, site):
    """The newest value of every field (each Modbus request has its own timestamp)."""
    result = influx1.query(f"SELECT last(*) FROM telemetry WHERE site='{site}'", db=db)
    series = result["results"][0].get("series")
    if not series:
        return None
    row = dict(zip(series[0]["columns"], series[0]["values"][0], strict=True))
    return {key.removeprefix("last_"): value for key, value in row.items()}


def influx1_tags(influx1, db, site):
    result = influx1.query(f"SELECT * FROM telemetry WHERE site='{site}' LIMIT 1", db=db)
    series = result["results"][0]["series"][0]
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    return row["site"], row["asset"], row["device"], row["kind"]


def test_values_reach_influxdb1_through_v1_write_api(tmp_path, sim, mosquitto, influx1):
    db = f"db_{uuid.uuid4().hex[:8]}"
    influx = {"api": "v1", "url": influx1.url, "database": db, "create_database": True}
    http_json(f"{sim.control}/hold", PINNED)
    pipe = start_pipeline(tmp_path, mosquitto.port, influx, sim.port)
    site, collector = pipe.site, pipe.collector
    try:

        def pinned_row():
            # Every pinned tag: a tag of a slower poll group arrives in a later message.
            row = influx1_latest(influx1, db, site)
            return row if row and all(row.get(t) is not None for t in PINNED) else None

        row = wait_for(pinned_row, 30, "pinned values in InfluxDB 1.6", program=collector)
        served = http_json(f"{sim.control}/values")
        for tag, value in PINNED.items():
            assert row[tag] == value, tag
            assert served[tag] == value, tag
        assert influx1_tags(influx1, db, site) == (site, "crane-01", "lmi", "crane")
        assert not any(key.endswith("_q") for key in row), row

        # Nanosecond stamps survive the trip: not all of ten are whole microseconds (one
        # alone is, once in a thousand: wait for ten)
        def stamps() -> list[int] | None:
            precise = influx1.query(
                f"SELECT hook_load FROM telemetry WHERE site='{site}' ORDER BY time DESC LIMIT 10",
                db=db,
                epoch="ns",
            )
            found = [row[0] for row in precise["results"][0]["series"][0]["values"]]
            return found if len(found) == 10 else None

        stored = wait_for(stamps, 30, "ten hook_load points", program=collector)
        assert any(stamp % 1000 for stamp in stored), stored
        assert '"event_loop": "uvloop 0.' in pipe.agent.log_path.read_text()  # auto
    finally:
        http_json(f"{sim.control}/release", {})
        codes = pipe.stop()
    assert_clean_exit(codes)


def test_values_reach_victoriametrics_through_v2_write_api(tmp_path, sim, mosquitto, victoria):
    influx = {"api": "v2", "url": victoria.url, "org": "derrick", "bucket": "derrick"}
    http_json(f"{sim.control}/hold", PINNED)
    # the agent on asyncio's own loop (where uvloop has no wheels): the same readings
    pipe = start_pipeline(tmp_path, mosquitto.port, influx, sim.port, event_loop="asyncio")
    site, collector = pipe.site, pipe.collector
    try:

        def pinned_series():
            series = victoria.export(f'{{__name__=~"telemetry_.*",site="{site}"}}')
            latest = {
                s["metric"]["__name__"].removeprefix("telemetry_"): s["values"][-1] for s in series
            }
            return latest if latest.get("hook_load") == PINNED["hook_load"] else None

        latest = wait_for(pinned_series, 30, "pinned values in VictoriaMetrics", program=collector)
        for tag, value in PINNED.items():
            assert latest[tag] == float(value), tag
        assert '"event_loop": "asyncio"' in pipe.agent.log_path.read_text()
    finally:
        http_json(f"{sim.control}/release", {})
        codes = pipe.stop()
    assert_clean_exit(codes)


async def _notices_until(client: MqttClient, done, timeout: float) -> list[AlarmNotice]:
    """Alarm notices as they come, until ``done(notices)`` holds."""
    notices: list[AlarmNotice] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done(notices):
        remaining = deadline - loop.time()
        assert remaining > 0, f"timed out; notices so far: {[n.key for n in notices]}"
        with contextlib.suppress(TimeoutError):
            message = await asyncio.wait_for(client.inbox.get(), min(remaining, 1.0))
            notices.append(AlarmNotice.model_validate_json(message.payload))
    return notices


def _has(rule: str, event: str):
    return lambda notices: any(n.rule == rule and n.event == event for n in notices)


async def _command(client: MqttClient, site: str, alarm: str, action: str) -> dict:
    """An operator command over MQTT; the collector's reply."""
    command = AlarmCommand(alarm_id=alarm, action=action, who="test-crew", request_id=action)
    await client.publish(alarm_commands_topic(site, "crane-01"), command.model_dump_json().encode())
    while True:
        message = await asyncio.wait_for(client.inbox.get(), 10)
        if message.topic == alarm_replies_topic(site, "crane-01"):
            return json.loads(message.payload)


async def _overload_scenario(broker: BrokerSettings, site: str, control: str):
    listener = MqttClient(broker, client_id=f"listener-{site}", persistent=False)
    await listener.subscribe(alarm_events_topic(site, "+"))
    await listener.start()
    operator = MqttClient(broker, client_id=f"operator-{site}", persistent=False)
    await operator.subscribe(alarm_replies_topic(site, "+"))
    await operator.start()
    try:
        await listener.wait_connected(10)
        await operator.wait_subscribed(10)
        await asyncio.sleep(1.0)  # the agent is publishing normal lifts by now
        assert listener.inbox.empty(), "alarm before any overload"
        await asyncio.to_thread(http_json, f"{control}/overload", {"active": True})
        notices = await _notices_until(listener, _has("crane_overload", "announce"), 15)
        alarm = f"crane_overload:{site}:crane-01:lmi"
        replies = [
            await _command(operator, site, alarm, "reset"),  # refused: still overloaded
            await _command(operator, site, alarm, "acknowledge"),
        ]
        await asyncio.to_thread(http_json, f"{control}/overload", {"active": False})
        notices += await _notices_until(listener, _has("crane_lmi_cutout", "clear"), 30)
        replies.append(await _command(operator, site, alarm, "reset"))
        notices += await _notices_until(listener, _has("crane_overload", "clear"), 10)
        await asyncio.sleep(2.0)
        notices += [
            AlarmNotice.model_validate_json(listener.inbox.get_nowait().payload)
            for _ in range(listener.inbox.qsize())
        ]
        return notices, replies
    finally:
        await listener.stop()
        await operator.stop()


def test_overload_latches_until_acknowledged_and_reset_over_mqtt(tmp_path, sim, mosquitto, influx1):
    db = f"db_{uuid.uuid4().hex[:8]}"
    influx = {"api": "v1", "url": influx1.url, "database": db, "create_database": True}
    pipe = start_pipeline(tmp_path, mosquitto.port, influx, sim.port)
    site, collector = pipe.site, pipe.collector
    broker = BrokerSettings(host="127.0.0.1", port=mosquitto.port)
    try:
        wait_for(lambda: influx1_latest(influx1, db, site), 30, "first readings", program=collector)
        notices, replies = asyncio.run(_overload_scenario(broker, site, sim.control))
        query = f"SELECT * FROM alarms WHERE site='{site}' AND rule='crane_overload'"
        journal = wait_for(
            lambda: (found := rows(influx1, db, query)) and len(found) >= 4 and found,
            10,
            "overload in the alarm journal",
        )
        query = f"SELECT state FROM alarm_state WHERE site='{site}' AND rule='crane_overload'"
        history = wait_for(
            lambda: (found := rows(influx1, db, query)) and len(found) >= 4 and found,
            10,
            "overload state history",
        )
    finally:
        http_json(f"{sim.control}/overload", {"active": False})
        codes = pipe.stop()
    assert_clean_exit(codes)
    assert [(r["ok"], r["reason"], r["state"]) for r in replies] == [
        (False, "process is still active; reset when it has returned to normal", "active_unacked"),
        (True, "", "active_acked"),
        (True, "", "normal"),
    ]
    overload = [n for n in notices if n.rule == "crane_overload"]
    assert [(n.event, n.priority, n.reason) for n in overload] == [
        ("announce", "critical", "new"),
        ("journal", "critical", "acknowledge"),
        ("journal", "critical", "reset"),
        ("clear", "critical", ""),
    ]
    raised = overload[0]
    assert raised.value is not None and raised.limit == 110 and raised.value > 110
    # Every rule the overload tripped announced once and cleared at most once.
    for rule in {n.rule for n in notices}:
        events = [n.event for n in notices if n.rule == rule]
        assert events.count("announce") == 1 and events.count("clear") <= 1, (rule, events)
    assert sorted((r["event"], r["reason"] or "", r["who"] or "") for r in journal) == [
        ("announce", "new", ""),
        ("clear", "", ""),
        ("journal", "acknowledge", "test-crew"),
        ("journal", "reset", "test-crew"),
    ]
    # Every change is in alarm_state, also latching, which notifies nobody.
    assert [r["state"] for r in history] == ["active_unacked", "active_acked", "latched", "normal"]


def rows(influx1, db, query):
    series = influx1.query(query, db=db)["results"][0].get("series")
    return (
        [dict(zip(series[0]["columns"], v, strict=True)) for v in series[0]["values"]]
        if series
        else []
    )


def test_device_status_agent_and_collector_health_are_stored(
    tmp_path, sim, mosquitto, influx1, influx_db
):
    influx = {"api": "v1", "url": influx1.url, "database": influx_db}
    pipe = start_pipeline(tmp_path, mosquitto.port, influx, sim.port, metrics_interval_s=5)
    site = pipe.site
    try:
        agent_rows = wait_for(
            lambda: rows(influx1, influx_db, f"SELECT * FROM agent WHERE site='{site}'"),
            30,
            "agent metrics in InfluxDB",
            program=pipe.collector,
        )
        status = rows(influx1, influx_db, f"SELECT * FROM device_status WHERE site='{site}'")
        collector = rows(
            influx1, influx_db, f"SELECT * FROM collector WHERE collector='col-{site}'"
        )
    finally:
        assert_clean_exit(pipe.stop())
    assert agent_rows[-1]["devices_up"] == 1 and agent_rows[-1]["devices_down"] == 0
    assert agent_rows[-1]["broker_connected"] is True
    assert agent_rows[-1]["messages_published"] > 0
    assert [(r["device"], r["up"]) for r in status] == [("lmi", True)]
    assert collector, "the collector stores its own counters"
    assert sum(r["readings"] for r in collector) > 0
    assert any(r.get("batch_latency_ms") for r in collector)
