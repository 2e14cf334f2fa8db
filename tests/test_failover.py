"""Collectors that fail over, in process, on a real etcd: membership, owners, fencing,
and the alarm service on top (hot standby, takeover, notices delivered once).

The collectors here are objects in one process, so a test can "kill" one by no longer
renewing its lease (what SIGKILL does to it, as far as etcd can tell) and "freeze" one
by not letting it run while its lease ends. The same with real processes, brokers and
receivers: test_failover_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from collector import members
from collector.alarms.ha import COLLECTORS_SITE, CoordinationError, Coordinator
from collector.alarms.notify import BUILT_IN
from collector.alarms.service import AlarmService
from collector.alarms.settings import AlarmSettings
from collector.etcd import Etcd, EtcdUnavailable
from derrick.alarms.engine import ConditionChange
from derrick.alarms.ownership import owner_of
from derrick.alarms.rules import BROKER_RULE, COORDINATION_RULE, RuleSet
from derrick.wire.payloads import AlarmCommand, AlarmNotice, AlarmStateMessage, Reading, Telemetry
from devstack.services import Etcd as EtcdServer

S = 1_000_000_000
TTL_S = 2
REFRESH_S = 0.2
RULES = RuleSet.model_validate(
    [{"name": "overload", "type": "high", "tag": "load", "limit": 100, "priority": "critical",
      "deadband": 5, "on_delay_s": 0, "off_delay_s": 0}]
)  # fmt: skip
ASSETS = [("s1", f"crane-{i}") for i in range(1, 13)]


@pytest.fixture
def clients(etcd):
    made: list[Etcd] = []

    def make(endpoints: list[str] | None = None) -> Etcd:
        made.append(Etcd(endpoints or [etcd.endpoint], timeout_s=1.0))
        return made[-1]

    yield make
    for client in made:
        client.stop()


def coordinator(client: Etcd, me: str, prefix: str) -> Coordinator:
    return Coordinator(client, me, prefix=prefix, ttl_s=TTL_S, refresh_s=REFRESH_S)


def refresh(*members: Coordinator, rounds: int = 1) -> None:
    async def run() -> None:
        for _ in range(rounds):
            for member in members:
                await member.refresh()

    asyncio.run(run())


def join(*members: Coordinator) -> None:
    async def run() -> None:
        for member in members:
            await member.join()

    asyncio.run(run())


def owners(members: list[Coordinator], asset: tuple[str, str]) -> list[str]:
    return [m.me for m in members if m.owns(*asset)]


# --- membership and owners ----------------------------------------------------------


def test_each_asset_has_exactly_one_owner_the_one_the_hash_names(clients, etcd_prefix):
    members = [coordinator(clients(), f"c{i}", etcd_prefix) for i in (1, 2, 3)]
    join(*members)
    for member in members:
        for asset in ASSETS:
            member.evaluates(*asset)
    refresh(*members, rounds=3)
    for asset in ASSETS:
        assert owners(members, asset) == [owner_of(*asset, ["c1", "c2", "c3"])], asset
    assert {m.me for m in members if m.owned()} == {"c1", "c2", "c3"}  # all take a share


def test_a_second_collector_with_a_live_id_is_refused(clients, etcd_prefix):
    first, second = (coordinator(clients(), "c1", etcd_prefix) for _ in range(2))
    join(first)
    with pytest.raises(CoordinationError, match=r"c1.*live already"):
        join(second)


def test_a_dead_members_assets_are_taken_within_ttl(clients, etcd_prefix):
    a, b = coordinator(clients(), "c1", etcd_prefix), coordinator(clients(), "c2", etcd_prefix)
    join(a, b)
    for asset in ASSETS:
        a.evaluates(*asset)
        b.evaluates(*asset)
    refresh(a, b, rounds=2)
    a_share = a.owned()
    assert a_share and len(b.owned()) == len(ASSETS) - len(a_share)
    died = time.monotonic()  # a renews no more: killed, as far as etcd can tell
    while len(b.owned()) < len(ASSETS):
        assert time.monotonic() - died < TTL_S + 5, "b never took a's assets"
        time.sleep(REFRESH_S)
        refresh(b)
    took_s = time.monotonic() - died
    assert took_s <= TTL_S + 2 * REFRESH_S + 1.0, took_s
    assert not any(a.owns(*asset) for asset in ASSETS)  # a's own clock says its lease is over


def test_a_member_that_returns_gets_its_share_back_never_two_owners(clients, etcd_prefix):
    a, b = coordinator(clients(), "c1", etcd_prefix), coordinator(clients(), "c2", etcd_prefix)
    join(b)
    for asset in ASSETS:
        b.evaluates(*asset)
    refresh(b, rounds=2)
    assert len(b.owned()) == len(ASSETS)
    join(a)
    for asset in ASSETS:
        a.evaluates(*asset)
    for _ in range(8):  # one member at a time, checking after every step
        for member in (a, b):
            refresh(member)
            for asset in ASSETS:
                assert len(owners([a, b], asset)) <= 1, asset
    for asset in ASSETS:
        assert owners([a, b], asset) == [owner_of(*asset, ["c1", "c2"])], asset


def test_an_asset_with_a_delivery_in_flight_is_released_only_after_it(clients, etcd_prefix):
    # an asset the hash gives to c1 once it is there
    asset = next(a for a in ASSETS if owner_of(*a, ["c1", "c2"]) == "c1")
    b = coordinator(clients(), "c2", etcd_prefix)
    join(b)
    b.evaluates(*asset)
    refresh(b)
    assert b.owns(*asset)
    busy = {asset}
    b.busy = lambda held: held in busy
    a = coordinator(clients(), "c1", etcd_prefix)
    join(a)
    a.evaluates(*asset)
    refresh(b, a, rounds=3)
    assert not b.owns(*asset)  # no new work while it hands over
    assert b.fence(*asset) is not None  # but its claim stands: the mark can land
    assert not a.owns(*asset)
    busy.clear()
    refresh(b, a)
    assert a.owns(*asset) and b.fence(*asset) is None


# --- fencing ------------------------------------------------------------------------


def rules_settings(tmp_path, name: str) -> AlarmSettings:
    return AlarmSettings.model_validate(
        {
            "state": str(tmp_path / f"alarms-{name}.db"),
            "channels": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/x"}},
            "routes": [{"name": "all", "channels": ["hook"]}],
            "retry": {"min_s": 0.05, "max_s": 0.1},
        }
    )


class Recorder:
    def __init__(self) -> None:
        self.sent: list[AlarmNotice | AlarmStateMessage] = []

    async def __call__(self, message: AlarmNotice | AlarmStateMessage) -> None:
        self.sent.append(message)

    def notices(self) -> list[AlarmNotice]:
        return [m for m in self.sent if isinstance(m, AlarmNotice)]


def member(tmp_path, client: Etcd, me: str, prefix: str) -> tuple[AlarmService, Recorder]:
    hook = Recorder()
    channels = {name: Recorder() for name in BUILT_IN} | {"hook": hook}
    ha = coordinator(client, me, prefix)
    svc = AlarmService(rules_settings(tmp_path, me), me, channels, RULES, coordinator=ha)
    return svc, hook


def crane(load: float, asset: str = "crane-1") -> Telemetry:
    return Telemetry(
        site="s1", asset=asset, device="plc", kind="crane", agent="gw", boot="b", seq=1,
        readings=[Reading(tag="load", value=load, ts_ns=1)],
    )  # fmt: skip


async def deliver(svc: AlarmService, seconds: float = 0.5) -> None:
    tasks = [asyncio.create_task(d.run()) for d in svc.deliverers.values()]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def pair(tmp_path, clients, prefix) -> tuple[AlarmService, Recorder, AlarmService, Recorder]:
    """Two members; the first is the owner of s1/crane-1."""
    ids = ("c1", "c2") if owner_of("s1", "crane-1", ["c1", "c2"]) == "c1" else ("c2", "c1")
    owner, owner_hook = member(tmp_path, clients(), ids[0], prefix)
    other, other_hook = member(tmp_path, clients(), ids[1], prefix)
    join(owner.coordinator, other.coordinator)
    for svc in (owner, other):
        svc.observe_telemetry(crane(50), 1 * S)
    refresh(owner.coordinator, other.coordinator, rounds=2)
    assert owner.owns("s1", "crane-1") and not other.owns("s1", "crane-1")
    return owner, owner_hook, other, other_hook


def take_over(survivor: AlarmService, limit_s: float = TTL_S + 5) -> float:
    began = time.monotonic()
    while not survivor.owns("s1", "crane-1"):
        assert time.monotonic() - began < limit_s, "no takeover"
        time.sleep(REFRESH_S)
        refresh(survivor.coordinator)
    return time.monotonic() - began


def test_a_member_that_lost_its_asset_commits_nothing_whatever_its_clock_says(
    tmp_path, clients, etcd_prefix
):
    owner, _, other, _ = pair(tmp_path, clients, etcd_prefix)
    take_over(other)  # owner froze: its lease ended, other claimed the asset
    owner.coordinator._valid_until = float("inf")  # a clock that lies: only the fence is left
    assert owner.owns("s1", "crane-1")
    owner.observe_telemetry(crane(130), 3 * S)
    assert owner.manager.records == {}  # refused by etcd, not adopted
    stored = other.store.shared.load([("s1", "crane-1")])
    assert stored == {}  # nothing reached etcd
    other.observe_telemetry(crane(130), 3 * S)
    assert other.manager.records["overload:s1:crane-1:plc"].active


def test_the_successor_delivers_once_what_a_dead_owner_committed(tmp_path, clients, etcd_prefix):
    owner, owner_hook, other, other_hook = pair(tmp_path, clients, etcd_prefix)
    for svc in (owner, other):  # both evaluate; only the owner commits
        svc.observe_telemetry(crane(120), 2 * S)
    assert owner.manager.records["overload:s1:crane-1:plc"].active
    assert other.manager.records == {}
    # the owner dies before its deliverers run: the announcement waits in etcd
    took_s = take_over(other)
    assert took_s <= TTL_S + 2
    asyncio.run(deliver(other))
    (announce,) = other_hook.notices()
    assert announce.event == "announce" and announce.key.startswith("overload:s1:crane-1:plc")
    assert announce.ts_ns == 2 * S  # the dead owner's notice, its key unchanged
    assert owner_hook.sent == []
    other.observe_telemetry(crane(125), 3 * S)  # still standing: nothing new
    other.observe_telemetry(crane(40), 4 * S)  # the load comes down
    asyncio.run(deliver(other))
    assert [n.event for n in other_hook.notices()] == ["announce", "clear"]


def test_a_condition_that_began_while_nobody_owned_the_asset_is_announced(
    tmp_path, clients, etcd_prefix
):
    _owner, _, other, other_hook = pair(tmp_path, clients, etcd_prefix)
    # the owner is dead (renews nothing); the overload starts before the takeover
    other.observe_telemetry(crane(140), 2 * S)
    assert other.manager.records == {}
    take_over(other)
    asyncio.run(deliver(other))
    (announce,) = other_hook.notices()
    assert announce.event == "announce" and announce.value == 140


def test_a_frozen_owner_woken_after_its_lease_sends_nothing(tmp_path, clients, etcd_prefix):
    owner, owner_hook, other, other_hook = pair(tmp_path, clients, etcd_prefix)
    for svc in (owner, other):
        svc.observe_telemetry(crane(120), 2 * S)
    take_over(other)  # while the owner was stopped
    asyncio.run(deliver(owner))  # SIGCONT: its deliverers run before it refreshes
    assert owner_hook.sent == []
    asyncio.run(deliver(other))
    assert [n.event for n in other_hook.notices()] == ["announce"]


def test_a_command_on_a_member_that_does_not_own_the_alarm_names_the_owner(
    tmp_path, clients, etcd_prefix
):
    owner, _, other, _ = pair(tmp_path, clients, etcd_prefix)
    owner.coordinator.api = "http://127.0.0.1:8123"
    refresh(owner.coordinator)
    owner.observe_telemetry(crane(120), 2 * S)
    command = AlarmCommand(alarm_id="overload:s1:crane-1:plc", action="acknowledge", who="ana")
    status, result = other.command(command)
    assert status == 421 and owner.collector_id in result.reason
    status, result = owner.command(command)
    assert status == 200 and result.state == "active_acked"
    # any member lists every alarm, whoever owns it
    listed = {a["alarm_id"]: a["state"] for a in other.list_alarms()}
    assert listed == {"overload:s1:crane-1:plc": "active_acked"}


def test_a_loss_alarm_of_an_asset_nobody_owned_yet_is_applied_once_it_is_taken(
    tmp_path, clients, etcd_prefix
):
    svc, hook = member(tmp_path, clients(), "c1", etcd_prefix)
    join(svc.coordinator)
    refresh(svc.coordinator)
    dropped = ConditionChange(
        rule=BROKER_RULE, site="derrick", asset="broker", device="queue", active=True,
        suppressed=False, value=12.0, limit=0.0, priority="high", ts_ns=5 * S,
        message="12 messages lost, dropped by the broker", type="loss",
    )  # fmt: skip
    svc.observe_conditions([dropped])  # the broker's "asset": nobody claimed it before
    assert svc.manager.records == {}
    refresh(svc.coordinator)  # claimed now, and caught up on
    assert svc.manager.records[f"{BROKER_RULE}:derrick:broker:queue"].active
    asyncio.run(deliver(svc))
    assert [n.rule for n in hook.notices()] == [BROKER_RULE]


def test_stored_alarms_of_an_asset_not_heard_from_get_an_owner_after_a_restart(
    tmp_path, clients, etcd_prefix
):
    owner, _, other, _ = pair(tmp_path, clients, etcd_prefix)
    owner.observe_telemetry(crane(130), 2 * S)  # then the crane falls silent
    asyncio.run(owner.coordinator.leave())
    asyncio.run(other.coordinator.leave())  # every collector restarted
    fresh, _ = member(tmp_path, clients(), "c9", etcd_prefix)
    join(fresh.coordinator)
    refresh(fresh.coordinator)
    assert fresh.owns("s1", "crane-1")  # never heard of since, owned for its alarms
    assert fresh.manager.records["overload:s1:crane-1:plc"].active


def test_members_shows_who_owns_what_and_what_waits(tmp_path, clients, etcd, etcd_prefix, capsys):
    owner, _, _other, _ = pair(tmp_path, clients, etcd_prefix)
    owner.observe_telemetry(crane(130), 2 * S)  # an announcement waits: no deliverer runs
    config = tmp_path / "c.yaml"
    config.write_text(
        "collector: {id: cx, group: g}\ninflux: {api: v1}\n"
        f"etcd: {{endpoints: ['{etcd.endpoint}'], prefix: '{etcd_prefix}'}}\n"
    )
    assert members.main(["members", "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "members (2 live):" in shown
    assert f"{owner.collector_id}  api -  owns 1: s1/crane-1" in shown
    assert "notices waiting: _events 1, _history 1, _journal 1, _state 1, hook 1" in shown
    assert members.main(["members", "--config", str(config), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["owners"] == {"s1/crane-1": owner.collector_id}
    config.write_text("collector: {id: cx}\ninflux: {api: v1}\n")
    assert members.main(["members", "--config", str(config)]) == 2
    assert "has no etcd section" in capsys.readouterr().err


def test_a_delivery_etcd_did_not_hear_of_is_marked_when_it_answers_not_sent_again(
    tmp_path, clients
):
    server = EtcdServer(tmp_path / "etcd", member="blip").start()
    try:
        svc, hook = member(tmp_path, clients([server.endpoint]), "c1", "/blip")
        join(svc.coordinator)
        svc.observe_telemetry(crane(50), 1 * S)
        refresh(svc.coordinator, rounds=2)
        svc.observe_telemetry(crane(130), 2 * S)

        async def send_then_lose_etcd(message) -> None:
            hook.sent.append(message)
            server.stop()  # the receiver took it; etcd goes before the mark

        svc.deliverers["hook"].send = send_then_lose_etcd
        asyncio.run(deliver(svc, 1.5))
        assert [n.event for n in hook.notices()] == ["announce"]
        server.start()
        svc.deliverers["hook"].send = hook
        etcd = svc.store.shared.etcd
        began = time.monotonic()
        while True:  # the client reconnects with gRPC's backoff: a second or so
            asyncio.run(deliver(svc))
            stored = etcd.block(etcd.get_prefix("/blip/outbox/hook/"))
            if not stored or time.monotonic() - began > 15:
                break
        assert [n.event for n in hook.notices()] == ["announce"]  # not sent again
        assert stored == []  # marked delivered
    finally:
        server.stop()


def test_etcd_out_of_reach_raises_coordination_lost_locally_and_clears(tmp_path, clients):
    server = EtcdServer(tmp_path / "etcd", member="lonely").start()
    try:
        svc, hook = member(tmp_path, clients([server.endpoint]), "c1", "/lonely")
        ha = svc.coordinator
        join(ha)
        refresh(ha)
        server.stop()
        began = time.monotonic()
        while not hook.notices():
            assert time.monotonic() - began < 10, "no coordination alarm"
            refresh(ha)
            svc.observe_conditions(ha.conditions(time.time_ns()))
            asyncio.run(deliver(svc, 0.2))
        (lost,) = hook.notices()
        assert (lost.rule, lost.site, lost.asset) == (COORDINATION_RULE, COLLECTORS_SITE, "c1")
        assert "cannot reach etcd" in lost.message
        server.start()
        while len(hook.notices()) < 2:
            assert time.monotonic() - began < 30, "coordination alarm never cleared"
            time.sleep(REFRESH_S)
            refresh(ha)
            svc.observe_conditions(ha.conditions(time.time_ns()))
            asyncio.run(deliver(svc, 0.2))
        assert hook.notices()[1].event == "clear"
    finally:
        server.stop()


def test_a_successor_that_could_not_read_the_records_yet_announces_nothing_twice(
    tmp_path, clients, etcd_prefix, monkeypatch
):
    owner, _, other, other_hook = pair(tmp_path, clients, etcd_prefix)
    for svc in (owner, other):
        svc.observe_telemetry(crane(120), 2 * S)
    asyncio.run(deliver(owner))  # announced and delivered by the owner, who then dies
    shared, load = other.store.shared, other.store.shared.load

    def etcd_slow(assets):
        raise EtcdUnavailable("etcd 127.0.0.1: no answer in time")

    monkeypatch.setattr(shared, "load", etcd_slow)
    take_over(other)  # claimed, but its stored alarms not read
    other.observe_telemetry(crane(121), 3 * S)  # readings go on meanwhile
    other.tick(4 * S)
    status, result = other.command(
        AlarmCommand(alarm_id="overload:s1:crane-1:plc", action="acknowledge", who="ana")
    )
    assert status == 503 and "try again" in result.reason  # nothing to act on yet
    assert shared.etcd.block(shared.etcd.get_prefix(f"{etcd_prefix}/outbox/hook/")) == []
    monkeypatch.setattr(shared, "load", load)  # etcd answers again
    other.tick(5 * S)
    assert other.manager.records["overload:s1:crane-1:plc"].active
    asyncio.run(deliver(other))
    assert other_hook.notices() == []  # the owner told it already; nothing new since


def test_a_commit_whose_outcome_is_unknown_is_read_back_before_the_next_change(
    tmp_path, clients, etcd_prefix, monkeypatch
):
    owner, owner_hook, _, _ = pair(tmp_path, clients, etcd_prefix)
    shared = owner.store.shared
    commit = shared._commit

    def taken_but_timed_out(asset, records, rows):
        assert commit(asset, records, rows)  # etcd applied it; the answer came too late
        return False

    monkeypatch.setattr(shared, "_commit", taken_but_timed_out)
    owner.observe_telemetry(crane(120), 2 * S)
    assert owner.manager.records == {}  # refused, as far as this member knows
    monkeypatch.setattr(shared, "_commit", commit)
    owner.tick(3 * S)  # read back from etcd: the overload is stored and standing
    assert owner.manager.records["overload:s1:crane-1:plc"].active
    asyncio.run(deliver(owner))
    assert [n.event for n in owner_hook.notices()] == ["announce"]  # once


def test_a_change_missed_while_the_lease_seemed_over_is_caught_up_when_it_is_renewed(
    tmp_path, clients, etcd_prefix
):
    """A keepalive held up past the lease's time by this member's clock (an etcd leader
    election): the claim stays, but nothing is committed meanwhile. What the engine saw
    then - here the load coming down - is applied once the lease is renewed."""
    owner, owner_hook, _, _ = pair(tmp_path, clients, etcd_prefix)
    owner.observe_telemetry(crane(120), 2 * S)
    ha = owner.coordinator
    renewed_until = ha._valid_until
    ha._valid_until = 0.0  # no keepalive answered in time
    assert not owner.owns("s1", "crane-1")
    owner.observe_telemetry(crane(40), 3 * S)  # the load comes down: not committed now
    assert owner.manager.records["overload:s1:crane-1:plc"].active
    ha._valid_until = renewed_until  # the keepalive's answer arrives
    owner.tick(4 * S)
    assert not owner.manager.records["overload:s1:crane-1:plc"].active
    asyncio.run(deliver(owner))
    assert [n.event for n in owner_hook.notices()] == ["announce", "clear"]
