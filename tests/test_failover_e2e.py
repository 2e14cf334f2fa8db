"""Collectors that fail over, real parts only: a three-member etcd cluster, mosquitto,
InfluxDB 1.6, six simulated cranes, one agent, three collector processes in one
shared-subscription group, a webhook receiver and an SMTP server.

The collectors run with ``etcd.ttl_s: 3`` (default 10) so that a takeover takes seconds;
every wait below is TTL + 5 s plus the time the alarm itself takes. One stack serves
the module; each test works on a crane of its own and leaves three collectors running.
The next-to-last test counts every notice key the receivers got: none twice; the last
stops etcd altogether.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest

from derrick.alarms.ownership import owner_of
from devstack.alarmstack import AlarmStack, AssetSpec
from devstack.loadgen import Load
from devstack.programs import wait_for
from devstack.receivers import HttpReceiver, SmtpReceiver
from devstack.services import EtcdCluster, Influx1

pytestmark = pytest.mark.integration

TTL_S = 3
S_NS = 1_000_000_000
REFRESH_S = 0.5
TAKEOVER_S = TTL_S + 5
WAIT_S = 60
CRANES = [AssetSpec(f"crane-{i}") for i in range(1, 7)]
OVERLOAD = "crane_overload"


@dataclass
class Ha:
    stack: AlarmStack
    hooks: HttpReceiver
    mail: SmtpReceiver
    etcd: EtcdCluster
    influx: Influx1
    db: str
    started: float  # monotonic: the stack's telemetry reached InfluxDB

    def ids(self) -> list[str]:
        return [self.stack.collector_id(i) for i in range(len(self.stack.collectors))]

    def owner(self, asset: str) -> int:
        """Index of the collector the hash gives ``asset`` (all three alive)."""
        return self.ids().index(owner_of(self.stack.site, asset, self.ids()))

    def announced(self, asset: str, event: str = "announce") -> list[dict]:
        alarm_id = self.stack.alarm_id(OVERLOAD, asset)
        return [
            r.json
            for r in self.hooks.requests
            if isinstance(r.json, dict)
            and r.json.get("alarm_id") == alarm_id
            and r.json.get("event") == event
        ]

    def wait_notice(self, asset: str, event: str, count: int = 1, timeout: float = WAIT_S):
        wait_for(lambda: len(self.announced(asset, event)) >= count, timeout,
                 f"{event} of {asset}'s overload at the webhook")  # fmt: skip
        return self.announced(asset, event)


def settle(ha: Ha, asset: str, index: int = 0) -> None:
    """The load comes down; the latched overload is acknowledged and reset (through
    collector ``index``, whoever owns the crane); its clear reaches the webhook."""
    stack = ha.stack
    stack.control(asset, "/overload", {"active": False})
    stack.command(OVERLOAD, asset, "acknowledge", "ana", "load set down", index=index)
    deadline = time.monotonic() + WAIT_S
    status, result = None, None
    while status != 200:  # refused while the load is still up (the alarm is active)
        assert time.monotonic() < deadline, (status, result)
        time.sleep(0.3)
        status, result = stack.command(OVERLOAD, asset, "reset", "ana", "inspected", index=index)
    ha.wait_notice(asset, "clear")


def _assets_stored(influx: Influx1, db: str, site: str) -> bool:
    result = influx.query(
        f"SHOW TAG VALUES FROM telemetry WITH KEY = \"asset\" WHERE site = '{site}'", db=db
    )
    series = result["results"][0].get("series")
    return bool(series) and len(series[0]["values"]) == len(CRANES)


@pytest.fixture(scope="module")
def ha(tmp_path_factory, mosquitto, influx1):
    base = tmp_path_factory.mktemp("failover-e2e")
    db = f"ha_{uuid.uuid4().hex[:8]}"
    influx1.create_database(db)
    with EtcdCluster(base / "etcd") as cluster, HttpReceiver() as hooks, SmtpReceiver() as mail:
        stack = AlarmStack(
            base,
            broker_port=mosquitto.port,
            influx={"api": "v1", "url": influx1.url, "database": db},
            hook_url=hooks.url,
            smtp_port=mail.port,
            assets=CRANES,
            collectors=3,
            etcd={"endpoints": cluster.endpoints, "ttl_s": TTL_S, "refresh_s": REFRESH_S},
            retry={"min_s": 0.2, "max_s": 1},
            flood={"window_s": 5},  # an asset's 4th announcement in a window waits for it
        )
        try:
            stack.start()
            wait_for(lambda: _assets_stored(influx1, db, stack.site), 60,
                     "telemetry of every crane in InfluxDB", program=stack.collector)  # fmt: skip
            yield Ha(stack, hooks, mail, cluster, influx1, db, time.monotonic())
        finally:
            codes = stack.stop()
            influx1.drop_database(db)
    logs = "\n".join(c.log_tail(20) for c in stack.collectors)
    assert all(code == 0 for code in codes.values()), (codes, logs)


def test_killed_owner_of_an_overloading_crane_is_replaced_and_the_alarm_told_once(ha):
    stack, asset = ha.stack, "crane-1"
    owner = ha.owner(asset)
    stack.control(asset, "/overload", {"active": True})
    ha.wait_notice(asset, "announce")
    stack.collectors[owner].kill()
    killed = time.monotonic()
    others = [i for i in range(3) if i != owner]
    # an acknowledge sent to any member works once a successor holds the asset
    status, answer = None, None
    while status != 200:
        assert time.monotonic() - killed < TAKEOVER_S + 5, (status, answer)
        time.sleep(0.2)
        status, answer = stack.command(OVERLOAD, asset, "acknowledge", "ana", index=others[-1])
    took_s = time.monotonic() - killed
    assert took_s <= TAKEOVER_S, took_s
    assert answer["state"] == "active_acked"
    settle(ha, asset, others[0])
    # back: the killed member rejoins and takes its share again, saying nothing twice
    stack.start_collector(owner)
    time.sleep(TTL_S)
    # One announcement. The owner was killed the moment its webhook request arrived: if
    # that was before it marked the notice delivered, the successor sent it again - with
    # the same key, which the receiver recognises (the outbox's one repeat).
    assert len({n["key"] for n in ha.announced(asset)}) == 1
    assert len(ha.announced(asset)) <= 2
    assert len(ha.announced(asset, "clear")) == 1


def test_a_notice_committed_but_not_delivered_is_delivered_by_the_successor(ha):
    stack, asset = ha.stack, "crane-2"
    owner = ha.owner(asset)
    ha.hooks.status = 503  # the webhook receiver refuses: the notices wait in the outbox
    try:
        stack.control(asset, "/overload", {"active": True})
        (refused, *_) = wait_for(lambda: _of(ha, asset), WAIT_S, "a refused notice")
        stack.collectors[owner].kill()
        switched = time.monotonic()
    finally:
        ha.hooks.status = 200
    ha.wait_notice(asset, "announce", timeout=TAKEOVER_S + WAIT_S)
    time.sleep(2)  # a second delivery would come within the retry delay
    after = Counter(r.json["key"] for r in _of(ha, asset) if r.arrived > switched)
    assert refused.json["key"] in after  # the dead owner's notice, its key unchanged
    assert set(after.values()) == {1}, after  # each once
    settle(ha, asset, owner - 1)
    stack.start_collector(owner)


def _of(ha: Ha, asset: str) -> list:
    """Webhook requests of announcements of ``asset``'s alarms (any rule)."""
    return [
        r
        for r in ha.hooks.requests
        if isinstance(r.json, dict)
        and r.json.get("asset") == asset
        and r.json.get("event") == "announce"
    ]


def test_a_frozen_owner_woken_after_a_takeover_sends_nothing_for_its_lost_assets(ha):
    stack, asset = ha.stack, "crane-3"
    owner = ha.owner(asset)
    process = stack.collectors[owner].process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        stack.control(asset, "/overload", {"active": True})
        ha.wait_notice(asset, "announce", timeout=TAKEOVER_S + WAIT_S)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    time.sleep(TTL_S + 2)  # the woken member reads its backlog, finds its lease over
    assert len(ha.announced(asset)) == 1
    settle(ha, asset, owner)  # the woken member passes the commands on
    time.sleep(2)
    assert len(ha.announced(asset, "clear")) == 1


def test_killing_the_etcd_leader_moves_no_asset(ha):
    stack, asset = ha.stack, "crane-4"
    seen = [c.log_path.stat().st_size for c in stack.collectors]
    leader = ha.etcd.leader()
    leader.kill()
    try:
        stack.control(asset, "/overload", {"active": True})
        ha.wait_notice(asset, "announce")
        settle(ha, asset)
    finally:
        leader.start()
    for collector, offset in zip(stack.collectors, seen, strict=True):
        with collector.log_path.open("rb") as log:
            log.seek(offset)
            since = log.read().decode(errors="replace")
        assert "assets taken" not in since and "lease ended" not in since, since[-2000:]
        assert "handed over" not in since


def notice_keys(ha: Ha, asset: str, rule: str, event: str) -> list[str]:
    """Keys of the notices of ``rule`` on ``asset`` at the webhook, those grouped into a
    flood notice included (an asset's fourth announcement in a minute is held back)."""
    alarm_id = ha.stack.alarm_id(rule, asset)
    keys = []
    for request in ha.hooks.requests:
        notice = request.json
        if not isinstance(notice, dict):
            continue
        for one in [notice, *(notice.get("alarms") or [])]:
            if one.get("alarm_id") == alarm_id and one.get("event") == event:
                keys.append(one["key"])
    return keys


def test_rolling_restart_under_a_steady_alarm_load_loses_and_repeats_nothing(ha):
    stack, asset, rule = ha.stack, "crane-5", "crane_lmi_warning"  # not latched
    cycles = 0
    stop = threading.Event()

    def load_up_and_down() -> None:
        nonlocal cycles
        while not stop.is_set():  # whole cycles only: 3 s up, 3 s down
            stack.control(asset, "/overload", {"active": True})
            time.sleep(3)
            stack.control(asset, "/overload", {"active": False})
            cycles += 1
            time.sleep(3)

    lifting = threading.Thread(target=load_up_and_down, daemon=True)
    lifting.start()
    try:
        for index in range(3):  # SIGTERM, then the same config again, every 4 s
            time.sleep(4)
            stack.collectors[index].stop()
            stack.start_collector(index)
        time.sleep(4)
    finally:
        stop.set()
        lifting.join()
    assert cycles >= 3
    for event in ("announce", "clear"):
        wait_for(lambda e=event: len(set(notice_keys(ha, asset, rule, e))) >= cycles, WAIT_S,
                 f"{cycles} {event}s of {rule}")  # fmt: skip
    settle(ha, asset, 1)  # the latched overload: acknowledged, reset, cleared
    time.sleep(2)
    announced = notice_keys(ha, asset, rule, "announce")
    cleared = notice_keys(ha, asset, rule, "clear")
    assert len(announced) == len(set(announced)) == cycles, announced  # none lost, none twice
    assert len(cleared) == len(set(cleared)) == cycles, cleared
    overloads = notice_keys(ha, asset, OVERLOAD, "announce")  # latched: each reactivation
    assert len(overloads) == len(set(overloads)) == cycles, overloads


def stored_points(ha: Ha, asset: str, start_ns: int, end_ns: int) -> int:
    """Telemetry points (distinct instants) of ``asset`` stored in [start, end)."""
    result = ha.influx.query(
        f"SELECT * FROM telemetry WHERE site = '{ha.stack.site}' AND asset = '{asset}' "
        f"AND time >= {start_ns} AND time < {end_ns}",
        db=ha.db,
    )
    series = result["results"][0].get("series") or [{"values": []}]
    return len({row[0] for row in series[0]["values"]})


def test_a_member_killed_for_good_strands_no_telemetry(ha, mosquitto):
    """Exact: a load of numbered messages published across the kill (one InfluxDB line
    each, on a site of its own) is stored whole; and each crane's points go on."""
    stack = ha.stack
    span_ns = 10 * S_NS
    time.sleep(max(0.0, ha.started + 12 - time.monotonic()))  # a full span stored before
    load_site = f"{stack.site}-load"
    load = Load(mosquitto.port, load_site, readings_per_s=1000, seconds=20, assets=6).start()
    time.sleep(5)
    killed_ns = time.time_ns()
    stack.collectors[2].kill()  # its share of the shared subscription waits in the broker
    load.join(60)
    wait_for(lambda: _count(ha, load_site) >= load.published, TAKEOVER_S + 30,
             f"the {load.published} load messages in InfluxDB")  # fmt: skip
    assert _count(ha, load_site) == load.published == load.offered  # whole, once each
    for crane in CRANES:
        before = stored_points(ha, crane.name, killed_ns - span_ns, killed_ns)
        after = stored_points(ha, crane.name, killed_ns, killed_ns + span_ns)
        # a third of the messages (the dead member's turns) would be missing
        assert after >= 0.9 * before > 0, (crane.name, before, after)
    log = stack.collectors[0].log_path.read_text() + stack.collectors[1].log_path.read_text()
    assert "draining a dead collector's MQTT session" in log
    # back: it waits until the adopter hands its session back, then reads it itself
    back_ns = time.time_ns()
    stack.start_collector(2)
    time.sleep(5)
    for crane in CRANES:
        assert stored_points(ha, crane.name, back_ns, back_ns + 4 * S_NS) > 0, crane.name


def _count(ha: Ha, site: str) -> int:
    result = ha.influx.query(f"SELECT count(t0) FROM telemetry WHERE site = '{site}'", db=ha.db)
    series = result["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def test_no_notice_key_reached_a_receiver_twice(ha):
    accepted = Counter(
        r.json["key"]
        for r in ha.hooks.requests
        if isinstance(r.json, dict) and "key" in r.json and r.json.get("event") != "flood"
    )
    # crane-2's announcement was refused (503) until its owner died: the successor's
    # delivery is its first accepted one; crane-1's owner was killed as its announcement
    # arrived, maybe before marking it (see the first test)
    killed_mid_send = (":crane-1:", ":crane-2:")
    repeats = {
        key: n
        for key, n in accepted.items()
        if n > 1 and not any(crane in key for crane in killed_mid_send)
    }
    assert repeats == {}
    mails = Counter(str(m.message["X-Derrick-Key"]).strip() for m in ha.mail.messages)
    repeats = {
        key: n
        for key, n in mails.items()
        if n > 1 and not any(crane in key for crane in killed_mid_send)
    }
    assert repeats == {}


def test_with_etcd_gone_the_coordination_alarm_reaches_the_webhook(ha):
    def told(event: str) -> set[str]:
        """The collectors whose coordination_lost ``event`` reached the webhook."""
        return {
            r.json["asset"]
            for r in ha.hooks.requests
            if isinstance(r.json, dict)
            and r.json.get("rule") == "coordination_lost"
            and r.json.get("event") == event
        }

    asset = "crane-6"
    for member in ha.etcd.members:
        member.stop()
    try:
        wait_for(lambda: told("announce") == set(ha.ids()), WAIT_S,
                 "coordination_lost of every collector at the webhook")  # fmt: skip
        # standing down: an overload now is committed and announced by nobody...
        ha.stack.control(asset, "/overload", {"active": True})
        time.sleep(TTL_S + 2)
        assert ha.announced(asset) == []
    finally:
        ha.etcd.start()
    wait_for(lambda: told("clear") == set(ha.ids()), WAIT_S,
             "coordination_lost cleared by every collector")  # fmt: skip
    # ... until etcd answers again: its owner catches up, the standing overload is told
    ha.wait_notice(asset, "announce")
    settle(ha, asset)
    assert len(ha.announced(asset)) == 1
