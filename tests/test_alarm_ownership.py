"""Several collectors share the alarm work: each asset's alarms belong to one of them.

Real parts: the session's mosquitto and InfluxDB 1.6, one ``derrick-sim`` process with
six cranes (one Modbus port each), one agent polling all six (one asset each), and three
``derrick-collector`` processes in one shared-subscription group with
``alarms.members`` listing all three. Every collector has its own alarm state file and a
webhook channel to ONE shared :class:`~devstack.receivers.HttpReceiver`, routed for every
priority, so a notice sent by two collectors would arrive twice.

The assets are picked with :func:`derrick.alarms.ownership.owner_of` so that each
collector owns two. Collector ids carry a per-test suffix (the broker is shared by the
whole session and keeps persistent sessions by client id); they are removed from the
broker at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.alarms.state import AlarmStateStore
from derrick.alarms.lifecycle import AlarmRecord
from derrick.alarms.ownership import owner_of
from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.wire.payloads import Telemetry
from derrick.wire.topics import telemetry_topic
from devstack.programs import REPO, Program, http_json, start_fleet, wait_for, write_yaml
from devstack.receivers import HttpReceiver

pytestmark = pytest.mark.integration

CRANES = 6
ASSETS_PER_MEMBER = 2
POLL_S = 0.5
OVERLOAD = "crane_overload"
CUTOUT = "crane_lmi_cutout"  # clears by itself once the overload is released
CHANNEL = "hook"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """Six simulated cranes: (first Modbus port, first control port)."""
    program, port, control = start_fleet(
        tmp_path_factory.mktemp("fleet"), CRANES, "--no-demo-overload"
    )
    yield port, control
    assert program.stop() == 0, program.log_tail()


@pytest.fixture
def hooks() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


def pick_assets(site: str, members: list[str]) -> dict[str, str]:
    """Asset name -> owning member, ASSETS_PER_MEMBER for each member."""
    owned: dict[str, list[str]] = {member: [] for member in members}
    for n in range(1, 1000):
        asset = f"crane-{n:02d}"
        mine = owned[owner_of(site, asset, members)]
        if len(mine) < ASSETS_PER_MEMBER:
            mine.append(asset)
        if all(len(assets) == ASSETS_PER_MEMBER for assets in owned.values()):
            return {asset: member for member, assets in owned.items() for asset in assets}
    raise AssertionError("no asset names giving every member its share")


def log_events(program: Program, event: str) -> list[dict]:
    """The JSON log lines of ``program`` whose event is ``event``."""
    found = []
    for line in program.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                found.append(entry)
    return found


def notices(hooks: HttpReceiver) -> list[tuple[float, dict]]:
    """(arrival, notice) of every notice received, flood members included."""
    out = []
    for request in hooks.requests:
        body = request.json or {}
        out += [(request.arrived, body), *((request.arrived, m) for m in body.get("alarms", []))]
    return out


def announces(hooks: HttpReceiver, rule: str) -> Counter[str]:
    """How many times each alarm of ``rule`` was announced to the receiver."""
    return Counter(
        n["alarm_id"] for _at, n in notices(hooks) if n["event"] == "announce" and n["rule"] == rule
    )


@dataclass
class Cluster:
    site: str
    owners: dict[str, str]  # asset -> collector id
    collectors: dict[str, Program]
    states: dict[str, Path]  # collector id -> alarms.state
    agent: Program
    control: dict[str, str]  # asset -> simulator control URL

    def alarm_id(self, rule: str, asset: str) -> str:
        return f"{rule}:{self.site}:{asset}:lmi-{asset}"

    def overload(self, asset: str, active: bool) -> None:
        http_json(f"{self.control[asset]}/overload", {"active": active})

    def owned_by(self, member: str) -> list[str]:
        return [asset for asset, owner in self.owners.items() if owner == member]


def collector_config(folder: Path, me: str, members: list[str], group: str, **common) -> Path:
    folder.mkdir()
    return write_yaml(
        folder / "collector.yaml",
        {
            "collector": {"id": me, "group": group},
            "broker": common["broker"],
            "influx": common["influx"],
            "batch": {"max_lines": 500, "max_delay_s": 0.1},
            "alarms": {
                "rules": [str(REPO / "config" / "alarm-rules" / "crane.yaml")],
                "state": str(folder / "alarms.db"),
                "members": members,
                "channels": {CHANNEL: {"type": "webhook", "url": common["hook_url"]}},
                "routes": [{"name": "everything", "channels": [CHANNEL]}],
            },
            "stats_interval_s": 1,
            "log": {"format": "json"},
        },
    )


def agent_config(folder: Path, site: str, assets: list[str], broker: dict, port: int) -> Path:
    devices = [
        {
            "name": f"lmi-{asset}",
            "asset": asset,
            "profile": "crane",
            "host": "127.0.0.1",
            "port": port + index,
            "interval_s": POLL_S,
            "timeout_s": 0.5,
        }
        for index, asset in enumerate(assets)
    ]
    return write_yaml(
        folder / "agent.yaml",
        {
            "agent": {"id": f"gw-{site}", "site": site},
            "format": "json",
            "broker": broker,
            "devices": devices,
            "spool": {"path": str(folder / "agent-spool.db")},
            "log": {"format": "json"},
        },
    )


async def _forget_sessions(port: int, client_ids: list[str]) -> None:
    """Connect once with a clean session under each id: the broker drops what it kept."""
    for client_id in client_ids:
        client = MqttClient(
            BrokerSettings(host="127.0.0.1", port=port), client_id=client_id, persistent=False
        )
        await client.start()
        await client.wait_connected(10)
        await client.stop()


@pytest.fixture
def cluster(tmp_path, fleet, mosquitto, influx1, influx_db, hooks) -> Iterator[Cluster]:
    """Three collectors sharing the alarms of six cranes, and an agent polling them."""
    port, control = fleet
    suffix = uuid.uuid4().hex[:6]
    site = f"own{suffix}"
    members = [f"c{n}-{suffix}" for n in (1, 2, 3)]
    owners = pick_assets(site, members)
    assets = sorted(owners)
    broker = {"host": "127.0.0.1", "port": mosquitto.port, "reconnect_max_s": 2}
    influx = {"api": "v1", "url": influx1.url, "database": influx_db}
    collectors, states = {}, {}
    for member in members:
        config = collector_config(
            tmp_path / member, member, members, f"g-{suffix}",
            broker=broker, influx=influx, hook_url=hooks.url_for("/alarms"),
        )  # fmt: skip
        states[member] = tmp_path / member / "alarms.db"
        collectors[member] = Program(
            "collector", ["--config", str(config)], tmp_path / member / "collector.log"
        ).start()
    for member, program in collectors.items():
        wait_for(lambda p=program: log_events(p, "collector started"), 30, member, program=program)
    agent = Program(
        "agent",
        ["--config", str(agent_config(tmp_path, site, assets, broker, port))],
        tmp_path / "agent.log",
    ).start()
    urls = {asset: f"http://127.0.0.1:{control + index}" for index, asset in enumerate(assets)}
    built = Cluster(site, owners, collectors, states, agent, urls)
    try:
        yield built
    finally:
        agent.stop()
        for program in collectors.values():
            program.stop()
        ids = [*members, *(f"{member}-alarms" for member in members)]
        asyncio.run(_forget_sessions(mosquitto.port, ids))
        for url in urls.values():  # the fleet serves the next test
            http_json(f"{url}/overload", {"active": False})


def stored_assets(influx1, db: str, site: str) -> set[str]:
    query = f"SELECT count(hook_load) FROM telemetry WHERE site='{site}' GROUP BY asset"
    series = influx1.query(query, db=db)["results"][0].get("series") or []
    return {s["tags"]["asset"] for s in series}


def collector_readings(influx1, db: str) -> dict[str, float]:
    """Readings each collector received, from its own ``collector`` measurement."""
    query = "SELECT sum(readings) FROM collector GROUP BY collector"
    series = influx1.query(query, db=db)["results"][0].get("series") or []
    return {s["tags"]["collector"]: s["values"][0][1] for s in series}


def stored_readings(influx1, db: str, site: str) -> int:
    """Readings in InfluxDB: every reading is one field (its value, or ``<tag>_q`` when
    it has none); the simulated cranes report no stale or uncertain values."""
    query = f"SELECT count(*) FROM telemetry WHERE site='{site}'"
    series = influx1.query(query, db=db)["results"][0].get("series")
    return sum(series[0]["values"][0][1:]) if series else 0


def wait_ready(cluster: Cluster, influx1, db: str) -> None:
    """Every asset stored, every collector storing its share."""
    wait_for(
        lambda: stored_assets(influx1, db, cluster.site) == set(cluster.owners),
        60, "telemetry of every asset", program=cluster.agent,
    )  # fmt: skip
    wait_for(
        lambda: all(collector_readings(influx1, db).get(m, 0) > 0 for m in cluster.collectors),
        30, "every collector storing", program=cluster.agent,
    )  # fmt: skip


def wait_stable(read, what: str, checks: int = 3, interval: float = 0.5) -> int:
    """Wait until ``read()`` returns the same value ``checks`` times in a row."""
    seen: list[int] = []

    def settled():
        seen.append(read())
        return len(seen) >= checks and len(set(seen[-checks:])) == 1

    wait_for(settled, 30, what, interval=interval)
    return seen[-1]


def pending_notices(state: Path, channel: str = CHANNEL) -> int:
    """Notices of ``channel`` not yet delivered, read from a running collector's file."""
    with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as db:
        query = "SELECT count(*) FROM notices WHERE channel = ? AND delivered_ns IS NULL"
        return db.execute(query, (channel,)).fetchone()[0]


def stored_records(state: Path) -> dict[str, AlarmRecord]:
    store = AlarmStateStore(state)
    try:
        return store.load()
    finally:
        store.close()


def test_each_asset_announced_once_by_its_owner_and_storage_still_splits(
    cluster, hooks, influx1, influx_db
):
    members = list(cluster.collectors)
    assert {cluster.owners[a] for a in cluster.owners} == set(members)
    wait_ready(cluster, influx1, influx_db)
    assert not announces(hooks, OVERLOAD), "overload announced before any was forced"

    for asset in cluster.owners:
        cluster.overload(asset, True)
    overloads = {cluster.alarm_id(OVERLOAD, asset) for asset in cluster.owners}
    wait_for(lambda: set(announces(hooks, OVERLOAD)) == overloads, 30, "every overload")
    for asset in cluster.owners:
        cluster.overload(asset, False)
    # Sync point: the cut-out clears come seconds after the announces, from the same
    # deliverers; a second collector announcing the same readings would have by then.
    cutouts = {cluster.alarm_id(CUTOUT, asset) for asset in cluster.owners}
    wait_for(
        lambda: cutouts <= {n["alarm_id"] for _at, n in notices(hooks) if n["event"] == "clear"},
        30, "every cut-out cleared",
    )  # fmt: skip
    assert announces(hooks, OVERLOAD) == dict.fromkeys(overloads, 1)
    assert announces(hooks, CUTOUT) == dict.fromkeys(cutouts, 1)

    assert cluster.agent.stop() == 0, cluster.agent.log_tail()
    stored = wait_stable(lambda: stored_readings(influx1, influx_db, cluster.site), "storage")
    received_per_interval = collector_readings(influx1, influx_db)
    for member, program in cluster.collectors.items():
        assert program.stop() == 0, f"{member}:\n{program.log_tail()}"

    # Sent by the owner: only the owner's state file holds the asset's alarms, and only
    # the owner's log has the announce.
    for member in members:
        records = stored_records(cluster.states[member])
        assets = {alarm_id.split(":")[2] for alarm_id in records}
        assert assets == set(cluster.owned_by(member)), member
        for asset in cluster.owned_by(member):
            assert records[cluster.alarm_id(OVERLOAD, asset)].active is False
        logged = [e["alarm_id"] for e in log_events(cluster.collectors[member], "alarm")]
        expected = {cluster.alarm_id(OVERLOAD, asset) for asset in cluster.owned_by(member)}
        assert {a for a in logged if a.startswith(f"{OVERLOAD}:")} == expected, member
        assert Counter(a for a in logged if a in expected) == dict.fromkeys(expected, 1)

    # Storage still splits: each collector stored a share, and the shares add up to what
    # is in InfluxDB (each message went to one collector, not to all three).
    assert all(received_per_interval.get(member, 0) > 0 for member in members)
    totals = {
        member: log_events(program, "collector stopping")[-1]["readings"]
        for member, program in cluster.collectors.items()
    }
    assert all(total < stored for total in totals.values()), (totals, stored)
    assert sum(totals.values()) == stored, (totals, stored)


def overloaded_after(influx1, db: str, cluster: Cluster, asset: str, since_ns: int) -> bool:
    """True once InfluxDB holds an overloaded reading of ``asset`` stamped after
    ``since_ns``: a message published then, which every alarm session also gets."""
    query = (
        f"SELECT utilisation FROM telemetry WHERE site='{cluster.site}' AND asset='{asset}' "
        f"AND time > {since_ns} AND utilisation >= 110 LIMIT 1"
    )
    return bool(influx1.query(query, db=db)["results"][0].get("series"))


def cleared_after(hooks: HttpReceiver, alarm: str, since: float) -> bool:
    return any(
        n["alarm_id"] == alarm and n["event"] == "clear" and at > since for at, n in notices(hooks)
    )


def kill_and_restart(cluster: Cluster, member: str) -> tuple[float, dict]:
    """SIGKILL a collector once every webhook notice it made is marked delivered (so
    anything it sends later is a new notice, not the documented resend of an unmarked
    one), start it again; (monotonic time of the kill, its new "collector started")."""
    program = cluster.collectors[member]
    wait_for(lambda: pending_notices(cluster.states[member]) == 0, 30, "outbox drained")
    program.kill()
    killed_at = time.monotonic()
    program.start()
    started = wait_for(
        lambda: log_events(program, "collector started")[1:], 30, "restart", program=program
    )
    return killed_at, started[0]


def test_owner_killed_while_its_asset_is_overloaded_does_not_announce_again(
    cluster, hooks, influx1, influx_db
):
    victim = next(iter(cluster.collectors))
    asset = cluster.owned_by(victim)[0]
    wait_ready(cluster, influx1, influx_db)
    overload, cutout = cluster.alarm_id(OVERLOAD, asset), cluster.alarm_id(CUTOUT, asset)

    cluster.overload(asset, True)
    wait_for(lambda: announces(hooks, OVERLOAD)[overload], 30, "the overload announce")
    wait_for(lambda: announces(hooks, CUTOUT)[cutout], 30, "the cut-out announce")  # sent next
    sent_before = announces(hooks, OVERLOAD) + announces(hooks, CUTOUT)
    killed_at, started = kill_and_restart(cluster, victim)
    restarted_ns = time.time_ns()
    # Four alarms stand (warning, rated load, cut-out, overload); they come from its file.
    assert started["alarms_standing"] >= 4
    # The restarted owner gets a reading that is still overloaded (a no-op for the
    # alarms it restored), then the release: the cut-out clears.
    wait_for(
        lambda: overloaded_after(influx1, influx_db, cluster, asset, restarted_ns),
        30, "an overloaded reading after the restart", program=cluster.collectors[victim],
    )  # fmt: skip
    cluster.overload(asset, False)
    wait_for(
        lambda: cleared_after(hooks, cutout, killed_at), 30, "the cut-out cleared after restart",
        program=cluster.collectors[victim],
    )  # fmt: skip

    assert sent_before == {overload: 1, cutout: 1}
    assert announces(hooks, OVERLOAD) + announces(hooks, CUTOUT) == sent_before
    for member in cluster.collectors:
        if member != victim:
            logged = [e["alarm_id"] for e in log_events(cluster.collectors[member], "alarm")]
            assert not [a for a in logged if a.split(":")[2] == asset], member


class StillStanding(Exception):
    """The restored alarm was not cleared (a restored active record whose condition the
    fresh rule engine never saw must still clear on the first normal reading)."""


async def _published_normal(port: int, topic: str, since_ns: int, timeout: float = 30) -> None:
    """Wait for a reading on ``topic`` below the warning level stamped after ``since_ns``.

    Watched on the broker: the storage share of a device can belong to the collector
    that is down (mosquitto's round robin over a fixed publishing order)."""
    client = MqttClient(
        BrokerSettings(host="127.0.0.1", port=port),
        client_id=f"watch-{uuid.uuid4().hex[:8]}",
        persistent=False,
    )
    await client.subscribe(topic)
    await client.start()
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = Telemetry.model_validate_json((await client.inbox.get()).payload)
                for reading in message.readings:
                    value = reading.value
                    fresh = reading.ts_ns > since_ns and reading.tag == "utilisation"
                    if fresh and isinstance(value, float) and value < 90:
                        return
    finally:
        await client.stop()


def test_alarm_that_ended_while_its_owner_was_down_clears_after_the_restart(
    cluster, hooks, influx1, influx_db, mosquitto
):
    victim = next(iter(cluster.collectors))
    asset = cluster.owned_by(victim)[0]
    program = cluster.collectors[victim]
    wait_ready(cluster, influx1, influx_db)
    cutout = cluster.alarm_id(CUTOUT, asset)
    cluster.overload(asset, True)
    wait_for(lambda: announces(hooks, CUTOUT)[cutout], 30, "the cut-out announce")
    wait_for(lambda: pending_notices(cluster.states[victim]) == 0, 30, "outbox drained")
    program.kill()
    killed_at = time.monotonic()
    released = http_json(f"{cluster.control[asset]}/overload", {"active": False})
    topic = telemetry_topic(cluster.site, asset, f"lmi-{asset}")
    asyncio.run(_published_normal(mosquitto.port, topic, released["took_effect_ns"]))
    # Its alarm session gone (expired, or a broker without persistence): the first
    # readings the restarted owner evaluates are normal ones. With the session kept the
    # same happens when the load comes off before the poll after the last reading the
    # owner acknowledged.
    asyncio.run(_forget_sessions(mosquitto.port, [f"{victim}-alarms"]))
    program.start()
    started = wait_for(
        lambda: log_events(program, "collector started")[1:], 30, "restart", program=program
    )
    assert started[0]["alarms_standing"] >= 4
    try:
        wait_for(lambda: cleared_after(hooks, cutout, killed_at), 8, "cleared", program=program)
    except TimeoutError as exc:
        raise StillStanding(f"{cutout} still standing after the restart") from exc
