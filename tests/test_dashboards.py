"""The Grafana dashboards in config/grafana work on real data.

There is no Grafana here, so devstack.grafana does Grafana's part: the unit tests check
the JSON and the provisioning files and how variables and macros are filled in; the
integration tests run a real fleet (2 cranes, 1 rig) -> agent -> mosquitto -> collector
-> InfluxDB 1.6 once, with overloads on both cranes driven through the ISA-18.2 alarm
lifecycle (announce, acknowledge, return to normal, reset), an alarm flood, and a short PLC
outage, and then run every variable, panel and annotation query of every dashboard as
Grafana would send it. Each must answer without error and with at least one value.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from derrick.plc.profile import load_profile
from devstack import grafana
from devstack.grafana import (
    DASHBOARD_DIR,
    DATASOURCE_UID,
    DashboardError,
    Query,
    Selection,
    TimeRange,
    Variable,
)
from devstack.programs import REPO, Program, http_json, wait_for, write_yaml
from devstack.services import free_port, free_port_block

DASHBOARDS = grafana.load_dashboards()
BY_TITLE = {d.title: d for d in DASHBOARDS}
EXPECTED = {
    "derrick-fleet": ["site"],
    "derrick-crane": ["site", "asset"],
    "derrick-rig": ["site", "asset"],
    "derrick-alarms": ["site", "asset"],
    "derrick-pipeline": ["collector", "site", "agent"],
}
PANEL_QUERIES = [q for d in DASHBOARDS for q in d.queries()]
VARIABLE_QUERIES = [q for d in DASHBOARDS for q in d.variable_queries()]

# What each measurement holds (README "InfluxDB schema"): tags, then fields.
TAGS = {
    "telemetry": {"site", "asset", "device", "kind"},
    "alarms": {"site", "asset", "device", "rule", "priority", "event"},
    "alarm_state": {"site", "asset", "device", "rule", "priority"},
    "alarm_kpi": {"collector"},
    "alarm_top": {"alarm", "rule", "site", "asset", "device", "collector"},
    "collector": {"collector"},
    "agent": {"agent", "site"},
    "device_status": {"site", "asset", "device"},
}
FIELDS = {
    "telemetry": {r.tag for kind in ("crane", "rig") for r in load_profile(kind).registers},
    "alarms": {"state", "reason", "message", "value", "limit", "who", "comment", "notice_key"},
    "alarm_state": {"state", "active", "acked", "value", "limit", "message"},
    "alarm_kpi": {
        "alarms_per_window", "in_flood", "flood_s_total", "active", "unacked", "standing",
        "shelved", "suppressed", "out_of_service", "chattering",
    },
    "alarm_top": {"count", "chattering"},
    "collector": {
        "messages", "readings", "lines_written", "bad_messages", "dead_letters", "seq_gaps",
        "seq_duplicates", "batch_latency_ms", "spool_depth", "spool_oldest_age_s",
        "readings_per_s",
    },
    "agent": {
        "queue_depth", "queue_oldest_age_s", "dropped_telemetry", "messages_published",
        "publish_latency_ms_p50", "devices_down", "devices_up", "broker_connected",
    },
    "device_status": {"up", "reason"},
}  # fmt: skip


def _id(query: Query) -> str:
    return f"{query.dashboard.removeprefix('Derrick / ')}: {query.source} [{query.ref_id}]"


def _panel(dashboard, title: str) -> dict:
    return next(p for p in dashboard.panels() if p["title"] == title)


def _walk(node, path=""):
    """Every (path, dict) in a JSON tree."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


# -- unit level: the files -----------------------------------------------------------------


def test_the_five_dashboards_are_provisioned_with_their_variables():
    assert {d.uid: [v.name for v in d.variables] for d in DASHBOARDS} == EXPECTED
    assert len({d.title for d in DASHBOARDS}) == len(DASHBOARDS)
    for dashboard in DASHBOARDS:
        panel_ids = [p["id"] for p in dashboard.data["panels"]]
        assert len(panel_ids) == len(set(panel_ids)), dashboard.title
        titles = [p["title"] for p in dashboard.panels()]  # failures name the panel
        assert len(titles) == len(set(titles)), dashboard.title
        grafana.TimeRange.parse(*dashboard.time_range)  # a range Grafana and we understand


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d.uid)
def test_dashboard_uses_only_the_derrick_datasource(dashboard):
    found = [
        (path, node["datasource"]) for path, node in _walk(dashboard.data) if "datasource" in node
    ]
    assert found
    wrong = [
        (path, ds)
        for path, ds in found
        if not isinstance(ds, dict) or ds != {"type": "influxdb", "uid": DATASOURCE_UID}
    ]
    assert wrong == []


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda d: d.uid)
def test_every_panel_has_a_raw_influxql_target(dashboard):
    panels = list(dashboard.panels())
    assert panels
    for panel in panels:
        targets = panel.get("targets", [])
        assert targets, f"{panel['title']}: no target"
        for target in targets:
            assert target["rawQuery"] is True, panel["title"]
            assert target["query"].lstrip().upper().startswith("SELECT"), panel["title"]
            # InfluxQL only: no Flux, no SQL.
            assert "|>" not in target["query"] and "from(bucket" not in target["query"]


@pytest.mark.parametrize("query", PANEL_QUERIES + VARIABLE_QUERIES, ids=_id)
def test_query_names_only_known_measurements_tags_and_fields(query):
    """A typo in a field name would give an empty panel, not an error: catch it here."""
    measurements = set(re.findall(r'FROM "(\w+)"', query.text))
    assert measurements, 'no FROM "measurement"'
    assert measurements <= set(TAGS), measurements
    known = set().union(*(TAGS[m] | FIELDS[m] for m in measurements))
    aliases = set(re.findall(r'AS "([^"]+)"', query.text))
    quoted = set(re.findall(r'"([^"]+)"', query.text)) - measurements - aliases
    assert quoted <= known, sorted(quoted - known)


# Per collector, without site or asset tags: their panels show every collector's series.
UNFILTERED = {"alarm_kpi"}


def test_queries_are_filtered_by_the_dashboard_variables():
    for dashboard in DASHBOARDS:
        names = {v.name for v in dashboard.variables}
        for query in dashboard.queries():
            if "GROUP BY time(" in query.text:
                assert "$__interval" in query.text and "$timeFilter" in query.text, query.label
            used = set(re.findall(r"/\^\$(\w+)\$/", query.text))
            if set(re.findall(r'FROM "(\w+)"', query.text)) <= UNFILTERED:
                # One series per collector, and the panel says why site/asset do not apply.
                assert not used, query.label
                assert re.search(r'GROUP BY (time\(\$__interval\), )?"collector"', query.text)
                assert "per collector" in _panel(dashboard, query.source)["description"].lower()
                continue
            assert used, f"{query.label}: not filtered by any variable"
            assert used <= names, query.label


def test_datasource_provisioning_takes_url_and_database_from_the_environment():
    env = {"DERRICK_INFLUX_URL": "http://influx.example:8086", "DERRICK_INFLUX_DB": "plant"}
    [source] = grafana.load_datasources(env=env)
    assert (source["uid"], source["type"]) == (DATASOURCE_UID, "influxdb")
    assert source["access"] == "proxy"
    assert source["url"] == "http://influx.example:8086"
    assert source["jsonData"]["dbName"] == source["database"] == "plant"
    assert source["jsonData"]["version"] == "InfluxQL"
    assert source["jsonData"]["timeInterval"] == grafana.DEFAULT_MIN_INTERVAL
    assert source["user"] == "" and source["secureJsonData"]["password"] == ""  # no auth


def test_dashboard_provider_points_at_the_dashboard_folder():
    env = {"DERRICK_GRAFANA_DASHBOARDS": str(DASHBOARD_DIR)}
    [provider] = grafana.load_provisioning(grafana.DASHBOARDS_FILE, env)["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]) == DASHBOARD_DIR


# -- unit level: filling in variables and macros -------------------------------------------


SITE = Variable("site", "SHOW TAG VALUES")
ASSET = Variable("asset", "SHOW TAG VALUES", multi=True, include_all=True)
ANY = Variable("any", "SHOW TAG VALUES", include_all=True, all_value=".*")
VARS = {v.name: v for v in (SITE, ASSET, ANY)}


def test_values_are_regex_escaped_inside_regex_literals_only():
    chosen = {"site": Selection(("yard.1/b",))}
    text = 'SELECT x FROM t WHERE "site" =~ /^$site$/ AND "device" = \'$site\''
    assert grafana.interpolate(text, VARS, chosen) == (
        'SELECT x FROM t WHERE "site" =~ /^yard\\.1\\/b$/ AND "device" = \'yard.1/b\''
    )


def test_all_and_multi_values_become_a_regex_group():
    chosen = {
        "asset": Selection(("crane-01", "rig.01"), all=True),
        "any": Selection(("a", "b"), all=True),
    }
    text = '"asset" =~ /^$asset$/ AND "x" =~ /^${any}$/ AND "y" !~ /[[asset]]/'
    assert grafana.interpolate(text, VARS, chosen) == (
        '"asset" =~ /^(crane-01|rig\\.01)$/ AND "x" =~ /^.*$/ AND "y" !~ /(crane-01|rig\\.01)/'
    )
    with pytest.raises(DashboardError, match="several values outside a regex"):
        grafana.interpolate("\"asset\" = '$asset'", VARS, chosen)


def test_unknown_names_and_unresolved_variables_are_errors():
    with pytest.raises(DashboardError, match=r"\$sight: no such variable"):
        grafana.interpolate("WHERE site =~ /^$sight$/", VARS, {})
    with pytest.raises(DashboardError, match="before it has a value"):
        grafana.interpolate("WHERE site =~ /^$site$/", VARS, {})


def test_time_filter_and_interval_are_grafanas():
    span = TimeRange.parse("now-1h", "now", now_ms=1_800_000_000_000)
    assert span.time_filter() == "time > 1799996400000ms and time < 1800000000000ms"
    assert span.time_filter("relative") == "time >= now() - 1h"
    # 1 h over 1000 points is 3.6 s: Grafana rounds that to 5 s; never below the minimum.
    assert span.interval_ms(1000, "1s") == 5_000
    assert span.interval_ms(1000, ">10s") == 10_000
    assert TimeRange.parse("now-15m", now_ms=0).interval_ms(1000, None) == 1_000
    assert TimeRange.parse("now-7d", now_ms=0).interval_ms(1000, None) == 600_000
    assert [
        grafana.format_interval(ms) for ms in (500, 5_000, 120_000, 86_400_000, 31_536_000_000)
    ] == ["500ms", "5s", "2m", "1d", "365d"]
    query = Query("d", "p", "A", "GROUP BY time($__interval) LIMIT $__interval_ms", "panel")
    text = grafana.interpolate(
        query.text, {}, {}, time_range=span, interval_ms=span.interval_ms(1000, "1s")
    )
    assert text == "GROUP BY time(5s) LIMIT 5000"


def test_provisioning_env_expansion_is_grafanas():
    env = {"A": "x", "B": "y"}
    assert grafana.expand_env("${A}/$B/$$A/${UNSET}.", env) == "x/y/$A/."


# -- integration: every query on real data -------------------------------------------------


@dataclass
class Stack:
    site: str
    db: str
    influx: object
    selections: dict

    def run(self, text: str) -> dict:
        return self.influx.query(text, db=self.db, epoch="ms")

    def selection(self, dashboard):
        """Variables resolved once per dashboard (or the reason they could not be)."""
        if dashboard.title not in self.selections:
            span = TimeRange.parse(*dashboard.time_range)
            try:
                self.selections[dashboard.title] = grafana.resolve_variables(
                    dashboard, self.run, span
                )
            except DashboardError as exc:
                self.selections[dashboard.title] = exc
        found = self.selections[dashboard.title]
        if isinstance(found, DashboardError):
            pytest.fail(f"variables of {dashboard.title}: {found}")
        return found


ASSETS = {"crane-01": ("lmi-1", "crane"), "crane-02": ("lmi-2", "crane"), "rig-01": ("plc", "rig")}
FLOOD_PER_WINDOW = 3
# The shipped crane rules (config/alarm-rules/crane.yaml) a forced overload sets off: 115 %
# of the safe working load is past the 90 % warning, the 100 % cut-out and rated load, 110 %.
OVERLOAD_RULES = {
    "crane_overload", "crane_lmi_warning", "crane_hook_load_rated", "crane_lmi_cutout",
}  # fmt: skip


def _configs(
    base: Path, site: str, broker_port: int, influx_url: str, db: str, plc_port: int, api: int
):
    broker = {"host": "127.0.0.1", "port": broker_port, "reconnect_max_s": 2}
    devices = [
        {
            "name": name,
            "asset": asset,
            "profile": profile,
            "host": "127.0.0.1",
            "port": plc_port + index,  # the fleet serves crane, crane, rig on consecutive ports
            "interval_s": 0.5,
            "timeout_s": 0.3,
            "retries": 0,
            "breaker_open_s": 1,
        }
        for index, (asset, (name, profile)) in enumerate(ASSETS.items())
    ]
    agent = write_yaml(
        base / "agent.yaml",
        {
            "agent": {"id": f"gw-{site}", "site": site},
            "format": "json",
            "broker": broker,
            "devices": devices,
            "metrics_interval_s": 5,
            "log": {"format": "json"},
        },
    )
    collector = write_yaml(
        base / "collector.yaml",
        {
            "collector": {"id": f"col-{site}"},
            "broker": broker,
            "influx": {"api": "v1", "url": influx_url, "database": db, "create_database": True},
            "batch": {"max_lines": 500, "max_delay_s": 0.2},
            "alarms": {
                "rules": [str(REPO / "config" / "alarm-rules" / "crane.yaml")],
                "state": str(base / "alarms.db"),
                # KPIs every second, not every minute; the run's 8 announcements are a flood.
                "kpi": {"interval_s": 1, "flood_per_window": FLOOD_PER_WINDOW},
                "http": {"enabled": True, "port": api},
            },
            "stats_interval_s": 1,
            "log": {"format": "json"},
        },
    )
    return agent, collector


def _count(influx, db: str, query: str) -> int:
    response = influx.query(query, db=db)
    return sum(
        value
        for item in grafana.series(response)
        for row in item["values"]
        for value in row[1:]
        if isinstance(value, int)
    )


def _alarm_id(site: str, asset: str, rule: str) -> str:
    return f"{rule}:{site}:{asset}:{ASSETS[asset][0]}"


def _operator(api: str, alarm_id: str, action: str, comment: str) -> dict:
    """An operator command through the collector's alarm HTTP API; 409 raises HTTPError."""
    return http_json(f"{api}/alarms/{alarm_id}/{action}", {"who": "test", "comment": comment})


def _alarm_story(influx, db: str, site: str, control: dict, api: str, collector) -> None:
    """Overload both cranes (4 alarms each: 8 announcements, a flood). crane-01 stays
    overloaded with its overload acknowledged; crane-02 goes the whole way: acknowledged,
    load released (the latched overload holds, the other three return unacknowledged),
    reset (journal and clear)."""
    for asset in ("crane-01", "crane-02"):
        http_json(f"{control[asset]}/overload", {"active": True})
    announced = 'SELECT count("state") FROM alarms WHERE "event" = \'announce\''
    wait_for(
        lambda: _count(influx, db, announced) >= 2 * len(OVERLOAD_RULES), 20,
        "overload alarms on both cranes", program=collector,
    )  # fmt: skip
    http_json(f"{control['crane-02']}/overload", {"active": False})
    for asset in ("crane-01", "crane-02"):
        _operator(api, _alarm_id(site, asset, "crane_overload"), "acknowledge", "stopping lift")
    overload_2 = _alarm_id(site, "crane-02", "crane_overload")
    # A latched alarm is reset only once its process is normal: 409 until the load is off.
    wait_for(
        lambda: _operator(api, overload_2, "reset", "inspected, no damage"), 20,
        "reset of crane-02's overload", interval=0.3, program=collector,
    )  # fmt: skip
    cleared = 'SELECT count("state") FROM alarms WHERE "event" = \'clear\''
    wait_for(
        lambda: _count(influx, db, cleared) >= len(OVERLOAD_RULES), 20,
        "crane-02's alarms cleared", program=collector,
    )  # fmt: skip


def _soft_wait(check) -> None:
    """Give the lead's newer measurements time to appear; their queries report absence."""
    with contextlib.suppress(TimeoutError):
        wait_for(check, 15, "pipeline measurements", interval=0.5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, mosquitto, influx1):
    """One run of the real pipeline with data for every dashboard, then left idle."""
    base = tmp_path_factory.mktemp("dashboards")
    site, db = f"t{uuid.uuid4().hex[:8]}", f"dash_{uuid.uuid4().hex[:8]}"
    plc_port, control_port = free_port_block(3), free_port_block(3)
    fleet = Program(
        "sim",
        ["--cranes", "2", "--rigs", "1", "--port", str(plc_port), "--control-port",
         str(control_port), "--seed", "11", "--no-demo-overload", "--log-format", "json"],
        base / "fleet.log",
    ).start()  # fmt: skip
    api_port = free_port()
    agent_cfg, collector_cfg = _configs(
        base, site, mosquitto.port, influx1.url, db, plc_port, api_port
    )
    collector = Program("collector", ["--config", str(collector_cfg)], base / "collector.log")
    agent = Program("agent", ["--config", str(agent_cfg)], base / "agent.log")
    control = {asset: f"http://127.0.0.1:{control_port + i}" for i, asset in enumerate(ASSETS)}
    try:
        wait_for(lambda: '"fleet ready"' in fleet.log_tail(5), 60, "fleet ready", program=fleet)
        collector.start()
        agent.start()

        def assets():
            response = influx1.query('SHOW TAG VALUES FROM "telemetry" WITH KEY = "asset"', db=db)
            return set(grafana.option_values(response)) == set(ASSETS)

        wait_for(assets, 30, "telemetry of all three PLCs", interval=0.3, program=collector)
        # A short outage of crane-01 and the rig: bad-quality marks and device down/up.
        # Before the alarms: a device going down suppresses its alarms, and coming back
        # re-announces them unacknowledged.
        for asset in ("crane-01", "rig-01"):
            http_json(f"{control[asset]}/fault", {"silent": True})
        # Wait for the mark the crane panel is checked for: a fault that starts mid-cycle
        # marks only the later requests' tags bad, and the collector stores that at once.
        bad = "SELECT count({}) FROM telemetry WHERE \"asset\" = '{}'"
        for asset, field in (("crane-01", "hook_load_q"), ("rig-01", "/_q$/")):
            query = bad.format(field, asset)
            wait_for(lambda q=query: _count(influx1, db, q), 15, f"bad {asset}")
        back = time.time_ns() // 1_000_000
        for asset in ("crane-01", "rig-01"):
            http_json(f"{control[asset]}/fault", {"silent": False})
        good = f"SELECT count(utilisation) FROM telemetry WHERE asset='crane-01' AND time>{back}ms"
        wait_for(  # good readings again: the overload must not start while suppressed
            lambda: _count(influx1, db, good) >= 2, 15, "crane-01 good", program=collector
        )
        _alarm_story(influx1, db, site, control, f"http://127.0.0.1:{api_port}", collector)

        def health():  # three agent reports, so rates and differences have two intervals
            return (
                _count(influx1, db, 'SELECT count("queue_depth") FROM agent') >= 3
                and _count(influx1, db, 'SELECT count("readings") FROM collector') >= 3
                and _count(influx1, db, 'SELECT count("up") FROM device_status WHERE up = true')
                >= 4  # three at start, crane-01 or the rig back up after the outage
            )

        _soft_wait(health)
        kpis = (  # two KPI reports in flood: a time in flood; the top alarms of the window
            'SELECT count("flood_s_total") FROM alarm_kpi WHERE "flood_s_total" > 0',
            'SELECT count("count") FROM alarm_top',
        )
        wait_for(lambda: all(_count(influx1, db, q) >= 2 for q in kpis), 15, "alarm KPIs")
        yield Stack(site, db, influx1, {})
    finally:
        codes = {p.name: (p.stop(), p.log_tail()) for p in (agent, collector, fleet)}
        if influx1.running:
            influx1.drop_database(db)
    for name, (code, tail) in codes.items():
        assert code == 0, f"{name} exit {code}:\n{tail}"


def _dashboard(query: Query):
    return BY_TITLE[query.dashboard]


@pytest.mark.integration
@pytest.mark.parametrize("query", VARIABLE_QUERIES, ids=_id)
def test_variable_query_has_options(stack, query):
    dashboard = _dashboard(query)
    earlier = [v.name for v in dashboard.variables]
    earlier = earlier[: earlier.index(query.ref_id)]
    selections = {k: v for k, v in stack.selection(dashboard).items() if k in earlier}
    span = TimeRange.parse(*dashboard.time_range)
    variables = {v.name: v for v in dashboard.variables}
    text = grafana.interpolate(query.text, variables, selections, time_range=span)
    options = grafana.option_values(stack.run(text))
    assert options, f"{query.label}: no options\n{text}"
    if query.ref_id == "site":
        assert stack.site in options


@pytest.mark.integration
@pytest.mark.parametrize("query", PANEL_QUERIES, ids=_id)
def test_panel_query_returns_values(stack, query):
    dashboard = _dashboard(query)
    selections = stack.selection(dashboard)
    span = TimeRange.parse(*dashboard.time_range)
    text = grafana.render(query, dashboard, selections, span)
    response = stack.run(text)  # an InfluxDB error raises InfluxQueryError with the query
    assert grafana.has_values(response), f"{query.label}: no values\n{text}\n{response}"
    # A column without any value is a field nobody writes (e.g. renamed by the collector).
    assert grafana.empty_columns(response) == [], f"{query.label}\n{text}"
    relative = grafana.render(query, dashboard, selections, span, time_filter_style="relative")
    assert grafana.has_values(stack.run(relative)), f"{query.label}: no values\n{relative}"


@pytest.mark.integration
def test_check_dashboard_runs_a_whole_dashboard(stack):
    """The one-call form ``make run`` can use: every query of the fleet overview is ok."""
    fleet = next(d for d in DASHBOARDS if d.uid == "derrick-fleet")
    outcomes = grafana.check_dashboard(fleet, stack.run)
    assert len(outcomes) == len(fleet.queries())
    assert [(o.query.source, o.detail) for o in outcomes if not o.ok] == []
    for outcome in outcomes:  # filled in: the site, and no $name left (only regex anchors)
        assert stack.site in outcome.influxql
        assert "$" not in outcome.influxql.replace("$/", ""), outcome.influxql


def _panel_rows(stack, uid: str, title: str) -> list[dict]:
    """The rows (column -> value) a panel's first query returns, series tags included."""
    dashboard = next(d for d in DASHBOARDS if d.uid == uid)
    query = next(q for q in dashboard.queries() if q.source == title)
    span = TimeRange.parse(*dashboard.time_range)
    text = grafana.render(query, dashboard, stack.selection(dashboard), span)
    rows = []
    for item in grafana.series(stack.run(text)):
        for values in item["values"]:
            rows.append(item.get("tags", {}) | dict(zip(item["columns"], values, strict=True)))
    return rows


@pytest.mark.integration
def test_dashboards_show_what_happened(stack):
    """The panels tell the story of the run: three assets, crane-01 still overloaded (its
    four alarms active), its bad-quality marks from the outage, the crane's variable picks
    crane-01."""
    assert _panel_rows(stack, "derrick-fleet", "Assets reporting")[0]["count"] == 3
    assert _panel_rows(stack, "derrick-fleet", "Active alarms")[0]["count"] == 4
    assert _panel_rows(stack, "derrick-fleet", "Alarms announced")[0]["count"] == 8
    cranes = {row["asset"]: row for row in _panel_rows(stack, "derrick-fleet", "Cranes")}
    assert set(cranes) == {"crane-01", "crane-02"}
    assert cranes["crane-01"]["utilisation %"] > 110
    assert cranes["crane-02"]["utilisation %"] < 90
    crane = next(d for d in DASHBOARDS if d.uid == "derrick-crane")
    assert stack.selection(crane)["asset"] == Selection(("crane-01",))
    marks = _panel_rows(stack, "derrick-crane", "Bad-quality readings")
    assert sum(row["count_hook_load_q"] for row in marks) > 0
    rig = next(d for d in DASHBOARDS if d.uid == "derrick-rig")
    assert stack.selection(rig)["asset"] == Selection(("rig-01",))


# After _alarm_story: crane-01 overloaded, its overload acknowledged; crane-02 released,
# its overload reset, the three others back to normal but never acknowledged.
FINAL_STATES = {
    ("crane-01", "crane_overload"): "active_acked",
    **{("crane-01", rule): "active_unacked" for rule in OVERLOAD_RULES - {"crane_overload"}},
    ("crane-02", "crane_overload"): "normal",
    **{("crane-02", rule): "rtn_unacked" for rule in OVERLOAD_RULES - {"crane_overload"}},
}


def _alarm_panel(stack, title: str) -> list[dict]:
    return _panel_rows(stack, "derrick-alarms", title)


@pytest.mark.integration
def test_alarm_timeline_follows_each_alarm_through_its_lifecycle(stack):
    """What the operator did and what the process did, as the panels show it."""
    latest = _alarm_panel(stack, "Latest state per alarm")
    assert {(row["asset"], row["rule"]): row["state"] for row in latest} == FINAL_STATES
    active = sum(state.startswith("active_") for state in FINAL_STATES.values())
    unacked = sum(state.endswith("_unacked") for state in FINAL_STATES.values())
    assert (active, unacked) == (4, 6)
    assert _alarm_panel(stack, "Active alarms")[0]["count"] == active
    assert _alarm_panel(stack, "Unacknowledged")[0]["count"] == unacked
    assert _alarm_panel(stack, "Announced in range")[0]["count"] == 8
    assert _alarm_panel(stack, "Assets alarmed in range")[0]["count"] == 2
    # The state timeline ends where the latest notices left each alarm.
    timeline = {}
    for row in _alarm_panel(stack, "Alarm state"):
        if row["last"] is not None:
            timeline[(row["asset"], row["rule"])] = row["last"]
    assert timeline == FINAL_STATES
    events = _alarm_panel(stack, "Alarm events")
    assert [e["time"] for e in events] == sorted((e["time"] for e in events), reverse=True)
    overload = sorted(
        (e["asset"], e["event"], e["reason"], e["who"], e["comment"])
        for e in events
        if e["rule"] == "crane_overload"
    )
    assert overload == [
        ("crane-01", "announce", "new", None, None),
        ("crane-01", "journal", "acknowledge", "test", "stopping lift"),
        ("crane-02", "announce", "new", None, None),
        ("crane-02", "clear", "", None, None),
        ("crane-02", "journal", "acknowledge", "test", "stopping lift"),
        ("crane-02", "journal", "reset", "test", "inspected, no damage"),
    ]
    clears = {(e["asset"], e["rule"], e["state"]) for e in events if e["event"] == "clear"}
    assert clears == {("crane-02", r, s) for (a, r), s in FINAL_STATES.items() if a == "crane-02"}
    actions = _alarm_panel(stack, "annotation Operator actions")
    assert sorted((a["reason"], a["who"]) for a in actions) == [
        ("acknowledge", "test"),
        ("acknowledge", "test"),
        ("reset", "test"),
    ]
    announcements = _alarm_panel(stack, "annotation Alarm announcements")
    assert len(announcements) == 8 and {a["reason"] for a in announcements} == {"new"}


@pytest.mark.integration
def test_alarm_kpi_panels_show_the_flood_and_the_top_alarms(stack):
    """8 announcements within the 10-minute window with a flood threshold of 3: a flood.
    The KPI counts agree with what the alarm notices say."""
    rates = _alarm_panel(stack, "Alarms per 10 min vs flood threshold")
    assert max(row["alarms per window"] for row in rates) == 8 > FLOOD_PER_WINDOW
    assert _alarm_panel(stack, "Time in flood")[0]["time in flood"] > 0
    assert 0 < _alarm_panel(stack, "Share of time in flood")[0]["in flood"] <= 101
    [now] = _alarm_panel(stack, "Alarm system now")
    assert now["collector"] == f"col-{stack.site}"
    assert {k: v for k, v in now.items() if k not in ("time", "collector")} == {
        "active": 4, "unacknowledged": 6, "standing": 0, "shelved": 0, "suppressed": 0,
        "out of service": 0, "chattering": 0,
    }  # fmt: skip
    counts = _alarm_panel(stack, "Standing, unacknowledged, shelved, chattering")
    assert counts[-1]["unacknowledged"] == 6
    top = {(row["asset"], row["rule"]): row for row in _alarm_panel(stack, "Top alarms")}
    assert set(top) == set(FINAL_STATES)
    assert {(row["announcements"], row["chattering"]) for row in top.values()} == {(1, False)}
