"""Alarm service without the network: rules -> lifecycle -> outbox -> delivery loops.

The channels here are recording functions (the unit under test is our delivery loop,
not a protocol); the real webhook, SMTP, MQTT and InfluxDB channels are proven in
test_alarm_channels.py and test_alarm_e2e.py.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from collector.alarms.notify import (
    BUILT_IN,
    EVENTS_CHANNEL,
    HISTORY_CHANNEL,
    JOURNAL_CHANNEL,
    STATE_CHANNEL,
)
from collector.alarms.service import AlarmService
from collector.alarms.settings import AlarmSettings
from derrick.alarms.ownership import Ownership, owner_of
from derrick.alarms.rules import RuleSet
from derrick.notify.settings import DeliveryError
from derrick.wire.ids import AlarmId
from derrick.wire.payloads import (
    AlarmCommand,
    AlarmNotice,
    AlarmStateMessage,
    Reading,
    Telemetry,
)

S = 1_000_000_000
RULES = RuleSet.model_validate(
    [
        {"name": "overload", "type": "high", "tag": "load", "limit": 100,
         "priority": "critical", "deadband": 5, "on_delay_s": 0, "off_delay_s": 0},
        {"name": "hot", "type": "high", "tag": "temp", "limit": 80, "priority": "high",
         "deadband": 1, "on_delay_s": 0, "off_delay_s": 0},
    ]
)  # fmt: skip
OVERLOAD = "overload:s1:crane-1:plc"


class Recorder:
    """A channel that records what it is given, and can be told to fail."""

    def __init__(self) -> None:
        self.sent: list[AlarmNotice | AlarmStateMessage] = []
        self.fail: DeliveryError | None = None

    async def __call__(self, message: AlarmNotice | AlarmStateMessage) -> None:
        assert isinstance(message, AlarmNotice | AlarmStateMessage), type(message)
        if self.fail is not None:
            raise self.fail
        self.sent.append(message)

    def notices(self) -> list[AlarmNotice]:
        notices = [m for m in self.sent if isinstance(m, AlarmNotice)]
        assert len(notices) == len(self.sent), self.sent
        return notices

    def states(self) -> list[AlarmStateMessage]:
        states = [m for m in self.sent if isinstance(m, AlarmStateMessage)]
        assert len(states) == len(self.sent), self.sent
        return states


def settings(tmp_path, **extra) -> AlarmSettings:
    data = {
        "state": str(tmp_path / "alarms.db"),
        "channels": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/x"}},
        "routes": [{"name": "all", "channels": ["hook"]}],
        "retry": {"min_s": 0.05, "max_s": 0.1},
        **extra,
    }
    return AlarmSettings.model_validate(data)


def service(tmp_path, **extra) -> tuple[AlarmService, dict[str, Recorder]]:
    channels = {name: Recorder() for name in (*BUILT_IN, "hook")}
    return AlarmService(settings(tmp_path, **extra), "c1", channels, RULES), channels


def telemetry(asset: str = "crane-1", historical: bool = False, **values) -> Telemetry:
    return Telemetry(
        site="s1", asset=asset, device="plc", kind="crane", agent="gw", boot="b", seq=1,
        historical=historical,
        readings=[Reading(tag=tag, value=value, ts_ns=1) for tag, value in values.items()],
    )  # fmt: skip


async def deliver(svc: AlarmService, seconds: float = 0.3) -> None:
    """Run the delivery loops for a while."""
    async with asyncio.timeout(seconds + 5):
        tasks = [asyncio.create_task(d.run()) for d in svc.deliverers.values()]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_an_overload_reaches_every_channel_once_with_its_state(tmp_path):
    svc, ch = service(tmp_path)
    svc.observe_telemetry(telemetry(load=90), 1 * S)
    svc.observe_telemetry(telemetry(load=120), 2 * S)
    svc.observe_telemetry(telemetry(load=125), 3 * S)  # the same alarm still
    asyncio.run(deliver(svc))
    (announce,) = ch["hook"].notices()
    assert (announce.event, announce.alarm_id) == ("announce", OVERLOAD)
    assert announce.priority == "critical"
    assert announce.value == 120 and announce.limit == 100
    assert [n.event for n in ch[EVENTS_CHANNEL].notices()] == ["announce"]
    assert [n.key for n in ch[JOURNAL_CHANNEL].notices()] == [announce.key]
    (state,) = ch[STATE_CHANNEL].states()
    assert (state.alarm_id, state.rule, state.site, state.asset, state.device) == (
        OVERLOAD, "overload", "s1", "crane-1", "plc",
    )  # fmt: skip
    assert (state.state, state.active, state.acked) == ("active_unacked", True, False)
    assert ch[HISTORY_CHANNEL].states() == ch[STATE_CHANNEL].states()
    asyncio.run(svc.close())


def test_restart_mid_alarm_sends_nothing_again_and_still_clears(tmp_path):
    svc, ch = service(tmp_path)
    svc.observe_telemetry(telemetry(load=120), 1 * S)
    asyncio.run(deliver(svc))
    assert len(ch["hook"].sent) == 1
    asyncio.run(svc.close())
    again, ch2 = service(tmp_path)  # same state file: the alarm is remembered
    (listed,) = again.list_alarms()
    assert listed["state"] == "active_unacked"
    assert listed["message"] == "load 120.00 above limit 100.00"
    again.observe_telemetry(telemetry(load=130), 5 * S)
    asyncio.run(deliver(again))
    assert ch2["hook"].sent == [], "a restart must not announce a standing alarm again"
    again.observe_telemetry(telemetry(load=50), 6 * S)
    asyncio.run(deliver(again))
    assert [n.event for n in ch2["hook"].notices()] == ["clear"]
    asyncio.run(again.close())


def test_undelivered_notices_survive_a_restart_and_go_once(tmp_path):
    svc, ch = service(tmp_path)
    ch["hook"].fail = DeliveryError("down", retryable=True)
    svc.observe_telemetry(telemetry(load=120), 1 * S)
    asyncio.run(deliver(svc, 0.2))
    assert ch["hook"].sent == []
    asyncio.run(svc.close())
    again, ch2 = service(tmp_path)
    asyncio.run(deliver(again, 0.3))
    assert [n.event for n in ch2["hook"].notices()] == ["announce"]
    asyncio.run(deliver(again, 0.2))
    assert len(ch2["hook"].sent) == 1
    asyncio.run(again.close())


def test_a_channel_down_keeps_order_and_delivers_each_once_when_back(tmp_path):
    svc, ch = service(tmp_path)
    ch["hook"].fail = DeliveryError("503", retryable=True)

    async def scenario() -> None:
        tasks = [asyncio.create_task(d.run()) for d in svc.deliverers.values()]
        svc.observe_telemetry(telemetry(load=120), 1 * S)
        svc.observe_telemetry(telemetry(load=50), 2 * S)
        svc.observe_telemetry(telemetry(temp=95), 3 * S)
        await asyncio.sleep(0.4)
        assert ch["hook"].sent == []
        ch["hook"].fail = None
        await asyncio.sleep(0.6)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert [(n.rule, n.event) for n in ch["hook"].notices()] == [
        ("overload", "announce"), ("overload", "clear"), ("hot", "announce"),
    ]  # fmt: skip
    asyncio.run(svc.close())


def test_a_permanent_refusal_is_kept_aside_and_the_rest_goes_on(tmp_path):
    svc, ch = service(tmp_path)
    ch["hook"].fail = DeliveryError("HTTP 400", retryable=False)
    svc.observe_telemetry(telemetry(load=120), 1 * S)
    asyncio.run(deliver(svc, 0.2))
    ch["hook"].fail = None
    svc.observe_telemetry(telemetry(temp=95), 2 * S)
    asyncio.run(deliver(svc, 0.2))
    assert [n.rule for n in ch["hook"].notices()] == ["hot"]
    assert svc.outbox.failed == 1
    asyncio.run(svc.close())


def test_historical_telemetry_is_not_evaluated(tmp_path):
    svc, _ch = service(tmp_path)
    svc.observe_telemetry(telemetry(historical=True, load=500), 1 * S)
    assert svc.manager.records == {}
    asyncio.run(svc.close())


def test_reminders_while_unacknowledged_then_escalation_once(tmp_path):
    routes = [
        {"name": "all", "channels": ["hook"], "reminder_s": 60, "escalate_after_s": 150,
         "escalate_to": ["boss"]},
    ]  # fmt: skip
    channels = {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/x"},
                "boss": {"type": "webhook", "url": "http://127.0.0.1:9/y"}}  # fmt: skip
    recorders = {n: Recorder() for n in (*BUILT_IN, "hook", "boss")}
    svc = AlarmService(settings(tmp_path, routes=routes, channels=channels), "c1", recorders, RULES)
    svc.observe_telemetry(telemetry(load=120), 0)
    for t in (30, 61, 62, 100, 121, 151, 152, 200):
        svc.tick(t * S)
    asyncio.run(deliver(svc))
    # Minutes 1, 2 and 3 (t = 61, 121, 200): one reminder each, however many ticks.
    assert [n.event for n in recorders["hook"].notices()] == ["announce"] + ["reminder"] * 3
    assert [n.event for n in recorders["boss"].notices()] == ["escalation"]
    asyncio.run(svc.close())
    # After a restart the same reminders are not made again.
    again = AlarmService(settings(tmp_path, routes=routes, channels=channels), "c1",
                         {n: Recorder() for n in recorders}, RULES)  # fmt: skip
    again.tick(200 * S)
    assert again.outbox.depth().get("hook", 0) == 0
    assert again.outbox.depth().get("boss", 0) == 0
    again.tick(241 * S)  # the fourth minute: one new reminder
    assert again.outbox.depth().get("hook") == 1
    asyncio.run(again.close())


def test_acknowledge_stops_reminders_and_is_journaled(tmp_path):
    svc, ch = service(tmp_path, routes=[{"name": "all", "channels": ["hook"], "reminder_s": 60}])
    svc.observe_telemetry(telemetry(load=120), 0)
    status, result = svc.command(
        AlarmCommand(alarm_id=OVERLOAD, action="acknowledge", who="ana", comment="on it"), 10 * S
    )
    assert (status, result.ok, result.state) == (200, True, "active_acked")
    svc.tick(200 * S)
    asyncio.run(deliver(svc))
    assert [n.event for n in ch["hook"].notices()] == ["announce"]
    journal = [n for n in ch[JOURNAL_CHANNEL].notices() if n.event == "journal"]
    assert [(n.reason, n.who, n.comment) for n in journal] == [("acknowledge", "ana", "on it")]
    status, result = svc.command(AlarmCommand(alarm_id=OVERLOAD, action="acknowledge", who="ana"))
    assert (status, result.ok, result.reason) == (409, False, "already acknowledged")
    status, _ = svc.command(AlarmCommand(alarm_id="overload:s1:nope:plc", action="reset", who="a"))
    assert status == 404
    asyncio.run(svc.close())


def test_a_burst_from_one_asset_becomes_one_flood_message(tmp_path):
    rules = RuleSet.model_validate(
        [{"name": f"r{i}", "type": "high", "tag": f"t{i}", "limit": 1, "priority": "high",
          "on_delay_s": 0, "off_delay_s": 0, "deadband": 0} for i in range(8)]
    )  # fmt: skip
    recorders = {n: Recorder() for n in (*BUILT_IN, "hook")}
    flood = {"window_s": 0.5, "max_per_window": 3}
    svc = AlarmService(settings(tmp_path, flood=flood), "c1", recorders, rules)
    svc.observe_telemetry(telemetry(**{f"t{i}": 5 for i in range(8)}), 1 * S)
    asyncio.run(deliver(svc, 1.2))
    notices = recorders["hook"].notices()
    assert [n.event for n in notices] == ["announce"] * 3 + ["flood"]
    assert sorted(m.rule for m in notices[3].alarms) == [f"r{i}" for i in range(3, 8)]
    assert len(recorders[EVENTS_CHANNEL].sent) == 8, "the event stream is never grouped"
    asyncio.run(svc.close())


def test_three_collectors_share_assets_each_owned_by_exactly_one():
    members = ["c1", "c2", "c3"]
    assets = [f"crane-{i}" for i in range(300)]
    owners = {asset: owner_of("s1", asset, members) for asset in assets}
    shares = [sum(owner == m for owner in owners.values()) for m in members]
    assert sum(shares) == 300 and min(shares) > 60, shares
    views = [Ownership(m, members) for m in members]
    for asset in assets:
        assert sum(view.owns("s1", asset) for view in views) == 1
    # Without c3 only c3's assets move.
    smaller = {asset: owner_of("s1", asset, ["c1", "c2"]) for asset in assets}
    moved = [a for a in assets if smaller[a] != owners[a]]
    assert all(owners[a] == "c3" for a in moved)
    with pytest.raises(ValueError, match="not one of the alarm members"):
        Ownership("c9", members)


def test_a_collector_evaluates_only_the_assets_it_owns(tmp_path):
    members = ["c1", "c2", "c3"]
    mine = next(a for a in (f"crane-{i}" for i in range(50)) if owner_of("s1", a, members) == "c1")
    other = next(a for a in (f"crane-{i}" for i in range(50)) if owner_of("s1", a, members) != "c1")
    svc, _ = service(tmp_path, members=members)
    svc.observe_telemetry(telemetry(asset=mine, load=120), 1 * S)
    svc.observe_telemetry(telemetry(asset=other, load=120), 1 * S)
    assert list(svc.manager.records) == [f"overload:s1:{mine}:plc"]
    status, result = svc.command(
        AlarmCommand(alarm_id=f"overload:s1:{other}:plc", action="acknowledge", who="a")
    )
    assert status == 421 and owner_of("s1", other, members) in result.reason
    asyncio.run(svc.close())


def test_a_rule_reload_keeps_standing_alarms_and_drops_removed_rules(tmp_path):
    svc, ch = service(tmp_path)
    svc.observe_telemetry(telemetry(load=120, temp=95), 1 * S)
    active = [AlarmId.parse(k) for k, r in svc.manager.records.items() if r.active]
    assert {alarm.rule for alarm in active} == {"overload", "hot"}
    only_overload = RuleSet(rules=[RULES.rules[0]])
    svc.reload(only_overload, 2 * S)
    svc.observe_telemetry(telemetry(load=130, temp=99), 3 * S)
    asyncio.run(deliver(svc))
    events = [(n.rule, n.event) for n in ch["hook"].notices()]
    # The overload was announced once, before the reload; the removed rule's alarm clears.
    assert events.count(("overload", "announce")) == 1
    assert ("hot", "clear") in events and ("overload", "clear") not in events
    assert svc.manager.records[OVERLOAD].active
    asyncio.run(svc.close())


@pytest.mark.parametrize(
    "alarm_id",
    ["overload:s1:crane-1", "overload:s1:crane-1:plc:x", "overload::crane-1:plc",
     "overload:s1:crane 1:plc", "nonsense"],
)  # fmt: skip
def test_a_command_on_a_malformed_alarm_id_is_refused_as_no_such_alarm(tmp_path, alarm_id):
    svc, _ = service(tmp_path)
    svc.observe_telemetry(telemetry(load=120), 1 * S)
    status, result = svc.command(AlarmCommand(alarm_id=alarm_id, action="acknowledge", who="a"))
    assert (status, result.ok, result.reason) == (
        404,
        False,
        "alarm ids are rule:site:asset:device",
    )
    assert (result.alarm_id, result.state) == (alarm_id, "")
    assert svc.counts["rejected_commands"] == 1
    assert not svc.manager.records[OVERLOAD].acked
    asyncio.run(svc.close())


def test_outbox_rows_hold_the_messages_as_json_and_are_read_back_as_objects(tmp_path):
    svc, _ = service(tmp_path)
    svc.observe_telemetry(telemetry(load=120), 1 * S)
    (stored,) = svc.store.db.execute(
        "SELECT payload FROM notices WHERE channel = 'hook'"
    ).fetchone()
    (row,) = svc.outbox.pending("hook")
    assert isinstance(row.message, AlarmNotice) and row.payload == stored
    assert AlarmNotice.model_validate_json(stored) == row.message
    (state,) = svc.outbox.pending(STATE_CHANNEL)
    assert isinstance(state.message, AlarmStateMessage)
    assert AlarmStateMessage.model_validate_json(state.payload) == state.message
    asyncio.run(svc.close())


def test_an_outbox_row_that_no_longer_loads_is_failed_and_the_rest_delivered(tmp_path):
    svc, ch = service(tmp_path)
    svc.observe_telemetry(telemetry(load=120), 1 * S)
    svc.store.db.execute(
        "INSERT INTO notices (key, channel, alarm_id, event, rank, grp, payload, created_ns, "
        "due_ns) VALUES ('bad', 'hook', 'overload:s1:crane-1:plc', 'announce', 3, 's1/crane-1', "
        "'{\"v\": 99}', 0, 0)"
    )
    with capture_logs() as logs:
        asyncio.run(deliver(svc))
    assert [n.event for n in ch["hook"].notices()] == ["announce"]
    (unreadable,) = [e for e in logs if e["event"] == "notification unreadable, not sent"]
    assert unreadable["key"] == "bad" and unreadable["channel"] == "hook"
    (failed,) = svc.store.db.execute("SELECT failed FROM notices WHERE key = 'bad'").fetchone()
    assert failed.startswith("unreadable: ")
    assert svc.outbox.depth().get("hook", 0) == 0
    asyncio.run(svc.close())


def test_kpi_lines_are_the_kpis_of_the_service_alarms_as_line_protocol(tmp_path):
    svc, _ = service(tmp_path)
    svc.observe_telemetry(telemetry(load=120), 1 * S)
    kpi, top = svc.kpi_lines(2 * S)
    assert kpi.startswith("alarm_kpi,collector=c1 alarms_per_window=1i,in_flood=false,")
    assert ",active=1i,unacked=1i," in kpi and kpi.endswith(f" {2 * S}")
    assert top == (
        f"alarm_top,alarm={OVERLOAD},asset=crane-1,collector=c1,device=plc,rule=overload,"
        f"site=s1 count=1i,chattering=false {2 * S}"
    )
    asyncio.run(svc.close())


def test_standing_names_the_active_alarms_of_the_rules_asked_for(tmp_path):
    svc, _ = service(tmp_path)
    svc.observe_telemetry(telemetry(load=120, temp=95), 1 * S)
    svc.observe_telemetry(telemetry(asset="crane-2", load=90, temp=95), 1 * S)
    assert sorted(svc.standing(("hot",))) == [
        ("hot", "s1", "crane-1", "plc"),
        ("hot", "s1", "crane-2", "plc"),
    ]
    assert svc.standing(("overload",)) == [AlarmId("overload", "s1", "crane-1", "plc")]
    assert svc.standing(("gone",)) == []
    asyncio.run(svc.close())


def test_a_notice_on_its_way_when_the_collector_stops_is_finished_and_marked(tmp_path):
    """A stop (the task group cancelled) during a send: the receiver may have it already,
    so the send is finished and marked delivered; left pending, a successor or the next
    start would send it again under the same key."""
    svc, ch = service(tmp_path)
    hook = ch["hook"]
    started = asyncio.Event()

    async def slow(message):
        started.set()
        await asyncio.sleep(0.2)  # the receiver answers slowly
        await hook(message)

    svc.deliverers["hook"].send = slow
    svc.observe_telemetry(telemetry(load=120), 2 * S)

    async def stop_mid_send() -> None:
        task = asyncio.create_task(svc.deliverers["hook"].run())
        await started.wait()
        task.cancel()  # SIGTERM: the task group is cancelled
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_mid_send())
    assert [n.event for n in hook.notices()] == ["announce"]
    assert svc.outbox.pending("hook") == []  # marked: nobody sends it again
    svc.deliverers["hook"].send = hook
    asyncio.run(deliver(svc))
    assert len(hook.notices()) == 1
    asyncio.run(svc.close())
