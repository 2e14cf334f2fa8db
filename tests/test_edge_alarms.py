"""Edge alarms without the network: the agent's alarm stage over a real spool, the
engine's peak and hand-over, the collector taking an agent's condition changes.

The whole path with real parts (simulator, agent, mosquitto through an outage,
collector, webhook and SMTP receivers) is tests/test_edge_alarms_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import MemoryMqttClient
from test_alarm_service import Recorder, deliver, settings

from agent.alarms import NOTE_PREFIX, EdgeAlarms
from agent.annunciate import LocalAnnunciator
from agent.config import Device, LocalAnnunciation, load_config
from agent.outbox import Outbox
from collector.alarms.notify import EVENTS_CHANNEL, JOURNAL_CHANNEL
from collector.alarms.service import AlarmService
from collector.receive import Receiver
from collector.sequence import SequenceTracker
from collector.stats import Stats
from collector.store import Batchable
from collector.validate import Rejected, validate_condition
from derrick.alarms.engine import RuleEngine
from derrick.alarms.kpi import AlarmKpis
from derrick.alarms.lifecycle import (
    AlarmRecord,
    AnnounceReason,
    Annunciate,
    LifecycleState,
    ProcessActive,
    ProcessEpisode,
    Transition,
    apply,
)
from derrick.alarms.rules import RuleSet
from derrick.mqtt.client import InboundMessage
from derrick.plumbing.configfile import ConfigError
from derrick.spool.store import Priority, Spool
from derrick.wire.payloads import (
    AgentStatus,
    ConditionMessage,
    ConditionState,
    DeviceState,
    EdgeRules,
    Quality,
    Reading,
    Telemetry,
    trusted_reading,
)
from derrick.wire.topics import ConditionTopic, parse_topic
from devstack.receivers import HttpReceiver

S = 1_000_000_000
T0 = 1_790_000_000 * S  # event times: inside the collector's window (2000..2100)
RULES = RuleSet.model_validate(
    [
        {"name": "overload", "type": "high", "tag": "load", "limit": 100, "deadband": 5,
         "priority": "critical", "latched": True, "on_delay_s": 0, "off_delay_s": 0},
        {"name": "cold", "type": "low", "tag": "temp", "limit": 5, "deadband": 1,
         "priority": "medium", "on_delay_s": 0, "off_delay_s": 0},
        {"name": "offline", "type": "device_offline", "after_s": 0, "priority": "high"},
    ]
)  # fmt: skip
DEVICE = Device.model_validate(
    {
        "name": "plc",
        "asset": "crane-1",
        "host": "127.0.0.1",
        "kind": "crane",
        "registers": [
            {"tag": "load", "table": "holding", "address": 0, "type": "float32"},
            {"tag": "temp", "table": "holding", "address": 2, "type": "float32"},
        ],
    }
)
REPO_RULES = Path(__file__).parents[1] / "config" / "alarm-rules"


def readings(ts: int, **values: float) -> list[Reading]:
    return [trusted_reading(tag, v, "", Quality.GOOD, ts) for tag, v in values.items()]


class Stage:
    """The alarm stage of an agent over a real spool; ``sending`` plays the publisher."""

    def __init__(self, spool: Spool, rules: RuleSet = RULES, *, grouped: bool = False) -> None:
        self.spool = spool
        self.sending: set[int] = set()
        self.outbox = Outbox("gw", "s1", spool, group_per_tick=grouped)
        self.alarms = EdgeAlarms(
            "s1", "gw", rules, [DEVICE], self.outbox, spool, self.sending.__contains__
        )

    def poll(self, ts: int, **values: float) -> None:
        self.alarms.observe(DEVICE, readings(ts, **values))

    def queued(self) -> list[ConditionMessage]:
        """The condition messages in the spool, in order."""
        entries = self.spool.read(limit=1000, priority=Priority.ALARM)
        return [ConditionMessage.model_validate_json(e.payload) for e in entries]

    def ack_all(self) -> None:
        """The broker acknowledged every queued message (the publisher's hook), and the
        publisher settled them."""
        entries = self.spool.read(limit=1000)
        for entry in entries:
            self.alarms.delivered(entry)
        self.spool.remove(e.id for e in entries)


@pytest.fixture
def spool(tmp_path):
    with Spool(tmp_path / "spool.db", max_bytes=10**7, max_age_s=10**6) as spool:
        yield spool


# --- the agent's alarm stage -------------------------------------------------------------


def test_a_change_is_queued_as_an_alarm_message_in_event_time(spool):
    stage = Stage(spool)
    stage.poll(T0, load=50, temp=20)
    assert stage.queued() == []
    stage.poll(T0 + 3 * S, load=120, temp=20)
    [active] = stage.queued()
    assert (active.rule, active.state, active.value, active.limit) == (
        "overload", ConditionState.ACTIVE, 120, 100.0,
    )  # fmt: skip
    assert active.ts_ns == T0 + 3 * S, "event time: the reading's own timestamp"
    assert (active.priority, active.latched, active.kind, active.agent) == (
        "critical", True, "crane", "gw",
    )  # fmt: skip
    topic = parse_topic(spool.read(limit=1)[0].topic)
    assert topic == ConditionTopic("s1", "crane-1", "plc")


def test_an_episode_nobody_heard_of_replaces_its_queued_activation(spool):
    stage = Stage(spool)
    stage.poll(T0, load=120, temp=20)
    stage.poll(T0 + 1 * S, load=140, temp=20)  # the peak
    stage.poll(T0 + 2 * S, load=110, temp=20)
    stage.poll(T0 + 3 * S, load=90, temp=20)  # back below the 5-unit deadband
    [episode] = stage.queued()
    assert episode.state is ConditionState.EPISODE
    assert (episode.since_ns, episode.ts_ns) == (T0, T0 + 3 * S)
    assert (episode.peak, episode.value, episode.limit) == (140, 90, 100.0)
    assert spool.notes(NOTE_PREFIX) == {}, "nothing held any more"
    assert stage.alarms.episodes == 1


def test_an_episode_retracts_its_activation_with_telemetry_waiting_for_its_group(spool):
    """The agent's outbox commits telemetry in groups: a poll's readings may still wait
    when its condition change is committed. The change goes after them, and the stage
    holds the id it really got, so the episode takes back the activation, not a poll."""
    stage = Stage(spool, grouped=True)
    for n, load in enumerate((120, 140, 90)):
        stage.outbox.put_readings("crane-1", "plc", "crane", readings(T0 + n * S, load=load))
        stage.poll(T0 + n * S, load=load, temp=20)
    stage.outbox.flush()
    [episode] = stage.queued()
    assert episode.state is ConditionState.EPISODE and episode.peak == 140
    telemetry = [e for e in spool.read(limit=100) if e.priority is Priority.TELEMETRY]
    assert len(telemetry) == 3, "every poll kept"


def test_a_low_alarms_peak_is_its_lowest_value(spool):
    stage = Stage(spool)
    for t, temp in enumerate([4, 1, 3, 7]):
        stage.poll(T0 + t * S, load=0, temp=temp)
    [episode] = stage.queued()
    assert (episode.rule, episode.state, episode.peak) == ("cold", ConditionState.EPISODE, 1)


def test_an_activation_the_broker_has_is_followed_by_a_clear(spool):
    stage = Stage(spool)
    stage.poll(T0, load=120)
    stage.ack_all()
    stage.poll(T0 + 1 * S, load=130)
    stage.poll(T0 + 2 * S, load=50)
    [clear] = stage.queued()
    assert (clear.state, clear.ts_ns, clear.peak) == (ConditionState.CLEARED, T0 + 2 * S, 130)


def test_an_activation_in_flight_is_never_taken_back(spool):
    stage = Stage(spool)
    stage.poll(T0, load=120)
    stage.sending.update(e.id for e in spool.read(limit=10))  # handed to the broker
    stage.poll(T0 + 1 * S, load=50)
    assert [m.state for m in stage.queued()] == [ConditionState.ACTIVE, ConditionState.CLEARED]


def test_chatter_inside_the_deadband_is_one_condition(spool):
    stage = Stage(spool)
    for t in range(60):  # 60 transitions across the limit, all within the deadband
        stage.poll(T0 + t * S, load=101 if t % 2 else 99)
    [active] = stage.queued()
    assert active.state is ConditionState.ACTIVE
    assert stage.alarms.changes == 1


def test_a_restart_mid_alarm_neither_announces_again_nor_forgets(spool):
    first = Stage(spool)
    first.poll(T0, load=120)
    first.poll(T0 + 1 * S, load=150)
    again = Stage(spool)  # a killed agent started again: same spool, new engine
    again.poll(T0 + 5 * S, load=130)
    assert [m.state for m in again.queued()] == [ConditionState.ACTIVE], "announced again"
    again.poll(T0 + 6 * S, load=40)
    [episode] = again.queued()
    assert episode.state is ConditionState.EPISODE, "the restart forgot the activation"
    assert (episode.since_ns, episode.ts_ns, episode.peak) == (T0, T0 + 6 * S, 150)


def test_a_restart_after_the_activation_was_delivered_sends_a_clear(spool):
    first = Stage(spool)
    first.poll(T0, load=120)
    first.ack_all()
    again = Stage(spool)
    again.poll(T0 + 5 * S, load=40)
    [clear] = again.queued()
    assert clear.state is ConditionState.CLEARED


def test_a_held_condition_whose_rule_is_gone_is_cleared_at_start(spool):
    first = Stage(spool)
    first.poll(T0, load=120)
    first.ack_all()
    Stage(spool, RuleSet(rules=[r for r in RULES.rules if r.name != "overload"]))
    [clear] = first.queued()
    assert (clear.rule, clear.state) == ("overload", ConditionState.CLEARED)
    assert spool.notes(NOTE_PREFIX) == {}


def test_a_device_going_down_is_evaluated_at_the_edge(spool):
    stage = Stage(spool)
    stage.alarms.device_state(DEVICE, DeviceState.DOWN)
    [down] = stage.queued()
    assert (down.rule, down.state, down.value) == ("offline", ConditionState.ACTIVE, "down")


def test_alarm_messages_outlast_telemetry_when_the_spool_is_full(tmp_path):
    with Spool(tmp_path / "s.db", max_bytes=20_000, max_age_s=10**6) as spool:
        stage = Stage(spool)
        stage.poll(T0, load=120)
        for n in range(300):  # far more telemetry than the bound holds
            stage.outbox.put_readings("crane-1", "plc", "crane", readings(T0 + n, load=120))
        assert [m.state for m in stage.queued()] == [ConditionState.ACTIVE]
        assert stage.outbox.spool_dropped[Priority.TELEMETRY] > 0
        assert stage.outbox.spool_dropped[Priority.ALARM] == 0


def test_condition_messages_are_numbered_with_the_telemetry(spool):
    stage = Stage(spool)
    stage.outbox.put_readings("crane-1", "plc", "crane", readings(T0, load=1))
    stage.poll(T0 + 1, load=120)
    stage.outbox.put_readings("crane-1", "plc", "crane", readings(T0 + 2, load=120))
    seqs = [json.loads(e.payload)["seq"] for e in spool.read(limit=10)]
    assert seqs == [0, 1, 2]


def test_the_birth_lists_the_rules_evaluated_per_device(spool):
    stage = Stage(spool)
    assert stage.alarms.coverage == [
        EdgeRules(asset="crane-1", device="plc", rules=["overload", "cold", "offline"])
    ]


# --- the agent's config --------------------------------------------------------------------


def agent_yaml(tmp_path, rules: list[dict], tags: list[str] | None = None):
    (tmp_path / "rules.yaml").write_text(json.dumps({"rules": rules}))
    device = {"name": "lmi", "asset": "crane-1", "profile": "crane", "host": "127.0.0.1"}
    if tags is not None:
        device["tags"] = tags
    config = {
        "agent": {"id": "gw", "site": "s1"},
        "devices": [device],
        "alarms": {"rules": ["rules.yaml"]},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps(config))
    return path


def test_the_shipped_crane_rules_load_on_a_crane_agent(tmp_path):
    path = agent_yaml(tmp_path, [])
    config = json.loads(path.read_text())
    config["alarms"]["rules"] = [str(REPO_RULES / "crane.yaml")]
    path.write_text(json.dumps(config))
    loaded = load_config(path)
    assert len(loaded.alarms.ruleset) == 16


@pytest.mark.parametrize(
    ("rules", "tags", "why"),
    [
        ([{"name": "gone", "type": "agent_offline"}], None,
         "rule 'gone' (agent_offline) stays with the collector"),
        ([{"name": "rig", "type": "high", "tag": "x", "limit": 1, "kind": "rig"}], None,
         "rule 'rig' applies to no device of this agent"),
        ([{"name": "load", "type": "high", "tag": "hook_load", "limit_tag": "safe_working_load"}],
         ["hook_load"], "rule 'load' reads safe_working_load, which device 'lmi' does not poll"),
    ],
)  # fmt: skip
def test_rules_whose_inputs_are_not_on_the_agent_are_refused(tmp_path, rules, tags, why):
    with pytest.raises(ConfigError) as caught:
        load_config(agent_yaml(tmp_path, rules, tags))
    assert f"agent.yaml: alarms: {why}" in str(caught.value)


# --- the engine -------------------------------------------------------------------------------


def telemetry(value: float, **extra: float) -> Telemetry:
    return Telemetry(
        site="s1", asset="crane-1", device="plc", kind="crane", agent="gw", boot="b", seq=1,
        readings=[Reading(tag=t, value=v, ts_ns=1) for t, v in {"load": value, **extra}.items()],
    )  # fmt: skip


def test_a_clear_carries_the_peak_of_its_excursion():
    engine = RuleEngine(RULES)
    engine.observe(telemetry(120), 1 * S)
    engine.observe(telemetry(170), 2 * S)
    engine.observe(telemetry(130), 3 * S)
    [clear] = engine.observe(telemetry(10), 4 * S)
    assert (clear.active, clear.value, clear.peak) == (False, 10, 170)
    [again] = engine.observe(telemetry(105), 5 * S)
    assert again.peak == 105, "a new excursion starts its own peak"


def test_rules_handed_to_the_edge_are_not_evaluated_here_and_can_be_taken_back():
    engine = RuleEngine(RULES)
    assert engine.observe(telemetry(120), 1 * S) != []
    engine.hand_over("s1", "crane-1", "plc", ["overload"])
    assert engine.observe(telemetry(10), 2 * S) == [], "handed over: dropped without a clear"
    assert engine.observe(telemetry(150), 3 * S) == []
    assert engine.handed_over("s1", "crane-1", "plc") == {"overload"}
    engine.hand_over("s1", "crane-1", "plc", [])
    [back] = engine.observe(telemetry(150), 4 * S)
    assert (back.rule, back.active) == ("overload", True)


# --- the lifecycle ----------------------------------------------------------------------------


@pytest.mark.parametrize(("latched", "state"), [(False, "rtn_unacked"), (True, "latched")])
def test_an_episode_is_announced_once_and_owes_an_acknowledgement(latched, state):
    record = AlarmRecord.new("overload:s1:crane-1:plc", latched=latched, priority="critical")
    step = apply(record, ProcessEpisode(now_ns=9 * S, since_ns=2 * S, value=140, limit=100))
    assert isinstance(step, Transition)
    [announce] = step.effects
    assert announce == Annunciate(
        alarm_id=record.alarm_id, priority="high", value=140, limit=100,
        reason=AnnounceReason.OFFLINE, ts_ns=2 * S, ended_ns=9 * S,
    )  # fmt: skip
    assert (step.record.state, step.record.active, step.record.acked) == (state, False, False)
    assert step.record.activations == 1


def test_an_episode_of_an_active_alarm_is_its_clear():
    record = AlarmRecord.new("a:s:a:d")
    active = apply(record, ProcessActive(now_ns=1 * S, value=120, limit=100))
    step = apply(active.record, ProcessEpisode(now_ns=5 * S, since_ns=1 * S, value=130, limit=100))
    assert step.record.state is LifecycleState.RTN_UNACKED
    assert [type(e).__name__ for e in step.effects] == ["Clear"]


# --- the collector ----------------------------------------------------------------------------


def condition(state: str, ts: int, **extra) -> ConditionMessage:
    return ConditionMessage(
        site="s1", asset="crane-1", device="plc", kind="crane", agent="gw", boot="b", seq=1,
        rule="overload", type="high", state=state, value=extra.pop("value", 120), limit=100.0,
        priority="critical", latched=True, message="load high", ts_ns=ts, **extra,
    )  # fmt: skip


def collector(tmp_path) -> tuple[AlarmService, dict[str, Recorder]]:
    channels = {name: Recorder() for name in ("_events", "_state", "_journal", "_history")}
    channels["hook"] = Recorder()
    return AlarmService(settings(tmp_path), "c1", channels, RULES), channels


def test_the_collector_announces_an_episode_once_while_offline(tmp_path):
    svc, ch = collector(tmp_path)
    svc.observe_condition(
        condition("episode", T0 + 90 * S, since_ns=T0, value=90, peak=140), T0 + 300 * S
    )
    asyncio.run(deliver(svc))
    [notice] = ch["hook"].notices()
    assert (notice.event, notice.reason, notice.ts_ns, notice.ended_ns) == (
        "announce", "offline", T0, T0 + 90 * S,
    )  # fmt: skip
    assert notice.value == 140, "the episode's peak"
    assert notice.message.startswith("occurred while offline, 2026-09-21 ")
    assert notice.key == f"overload:s1:crane-1:plc:announce:{T0}"
    assert [n.key for n in ch[JOURNAL_CHANNEL].notices()] == [notice.key]
    [listed] = svc.list_alarms()
    assert (listed["state"], listed["ts_ns"]) == ("latched", T0 + 90 * S)
    assert svc.router.unacked_since[notice.alarm_id] == T0 + 300 * S, "reminders from now"
    asyncio.run(svc.close())


def test_the_collector_takes_active_and_clear_at_their_event_times(tmp_path):
    svc, ch = collector(tmp_path)
    svc.observe_condition(condition("active", T0), T0 + 60 * S)
    svc.observe_condition(condition("cleared", T0 + 5 * S, value=50), T0 + 61 * S)
    asyncio.run(deliver(svc))
    [announce] = ch["hook"].notices()  # latched: the clear waits for a reset
    assert (announce.event, announce.reason, announce.ts_ns) == ("announce", "new", T0)
    assert [n.event for n in ch[EVENTS_CHANNEL].notices()] == ["announce"]
    asyncio.run(svc.close())


def test_an_edge_change_older_than_one_applied_is_skipped(tmp_path):
    svc, _ch = collector(tmp_path)
    svc.observe_condition(condition("active", T0 + 10 * S), T0 + 60 * S)
    svc.observe_condition(condition("cleared", T0 + 5 * S), T0 + 61 * S)
    assert svc.counts["edge_out_of_order"] == 1
    assert svc.list_alarms()[0]["active"] is True
    asyncio.run(svc.close())


def birth(*rules: str) -> AgentStatus:
    edge = [EdgeRules(asset="crane-1", device="plc", rules=list(rules))] if rules else []
    return AgentStatus(agent="gw", state="online", site="s1", edge=edge)


def test_a_birth_hands_its_rules_over_across_a_collector_restart(tmp_path):
    svc, _ = collector(tmp_path)
    svc.observe_agent(birth("overload"))
    svc.observe_telemetry(Telemetry.model_validate(telemetry(150).model_dump()), 1 * S)
    assert svc.list_alarms() == [], "a rule the edge evaluates is not evaluated here"
    asyncio.run(svc.close())
    again, _ = collector(tmp_path)  # the birth is remembered before any telemetry
    again.observe_telemetry(telemetry(150), 2 * S)
    assert again.list_alarms() == []
    again.observe_agent(birth())  # an agent without edge rules now: evaluated here again
    again.observe_telemetry(telemetry(160), 3 * S)
    assert [a["rule"] for a in again.list_alarms()] == ["overload"]
    asyncio.run(again.close())


def test_a_last_will_leaves_the_rules_with_the_edge(tmp_path):
    svc, _ = collector(tmp_path)
    svc.observe_agent(birth("overload"))
    svc.observe_agent(AgentStatus(agent="gw", state="offline"))
    svc.observe_telemetry(telemetry(150), 1 * S)
    assert svc.list_alarms() == []
    asyncio.run(svc.close())


def payload(**changes) -> bytes:
    data = json.loads(condition("active", T0).model_dump_json())
    return json.dumps({**data, **changes}).encode()


@pytest.mark.parametrize(
    ("changes", "kind", "why"),
    [
        ({"device": "other"}, "mismatch", "topic names s1/crane-1/plc, payload s1/crane-1/other"),
        ({"ts_ns": 5}, "timestamp", "ts_ns 5 is outside"),
        ({"since_ns": T0 + 1, "state": "episode"}, "schema", "since_ns is after ts_ns"),
        ({"state": "gone"}, "schema", "state"),
    ],
)
def test_a_bad_condition_message_is_rejected_naming_why(changes, kind, why):
    result = validate_condition(ConditionTopic("s1", "crane-1", "plc"), payload(**changes))
    assert isinstance(result, Rejected)
    assert result.kind == kind
    assert why in result.reason


# --- local annunciation (a real HTTP receiver on loopback) -------------------------------------


class LocalStage(Stage):
    """A stage with a site-LAN webhook; ``online`` plays the broker connection."""

    def __init__(self, spool: Spool, url: str, **settings) -> None:
        self.online = False
        local = LocalAnnunciation.model_validate(
            {"channel": {"type": "webhook", "url": url}, "retry_min_s": 0.05,
             "retry_max_s": 0.1, **settings}
        )  # fmt: skip
        self.annunciator = LocalAnnunciator(local, spool, lambda: self.online)
        self.spool = spool
        self.sending = set()
        self.outbox = Outbox("gw", "s1", spool)
        self.alarms = EdgeAlarms(
            "s1", "gw", RULES, [DEVICE], self.outbox, spool, self.sending.__contains__,
            self.annunciator,
        )  # fmt: skip

    async def deliver(self, until: Callable[[], bool]) -> None:
        """Run the delivery task until ``until()`` holds (10 s at most); its failure is
        the test's."""
        task = asyncio.create_task(self.annunciator.deliver_forever())
        try:
            for _ in range(500):
                if until() or task.done():
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            [outcome] = await asyncio.gather(task, return_exceptions=True)
            await self.annunciator.close()
        assert isinstance(outcome, asyncio.CancelledError), f"delivery task ended: {outcome!r}"
        assert until(), "not delivered within 10 s"


def test_an_alarm_while_offline_reaches_the_site_lan_once_with_the_collectors_key(spool):
    with HttpReceiver() as lan:
        stage = LocalStage(spool, lan.url)
        stage.poll(T0, load=120, temp=3)  # overload (critical) and cold (medium: not routed)
        stage.poll(T0 + 2 * S, load=50, temp=3)
        asyncio.run(stage.deliver(lambda: len(lan.requests) >= 2))
        announce, clear = (r.json for r in lan.requests)
    alarm = "overload:s1:crane-1:plc"
    assert (announce["event"], announce["key"], announce["reason"]) == (
        "announce", f"{alarm}:announce:{T0}", "edge",
    )  # fmt: skip
    assert (clear["event"], clear["key"]) == ("clear", f"{alarm}:clear:{T0 + 2 * S}")
    assert lan.requests[0].header("Idempotency-Key") == announce["key"]
    assert stage.annunciator.pending == 0
    assert spool.notes("local:") == {}, "a delivered notice leaves the spool"
    [episode] = [m for m in stage.queued() if m.rule == "overload"]
    assert f"{alarm}:announce:{episode.since_ns}" == announce["key"], (
        "the collector's key for this episode differs: a shared receiver would hear it twice"
    )


def test_with_the_broker_reachable_nothing_is_announced_locally(spool):
    with HttpReceiver() as lan:
        stage = LocalStage(spool, lan.url)
        stage.online = True
        stage.poll(T0, load=120)
        stage.online = False  # the clear of an alarm not announced here is not either
        stage.poll(T0 + 1 * S, load=50)
        assert stage.annunciator.pending == 0
        assert lan.requests == []


def test_a_local_receiver_down_gets_each_notice_once_when_back_in_order(spool):
    with HttpReceiver() as lan:
        lan.queue_replies(503, 503, 503)
        stage = LocalStage(spool, lan.url, when="always")
        stage.poll(T0, load=120)
        stage.poll(T0 + 1 * S, load=50)
        asyncio.run(stage.deliver(lambda: stage.annunciator.delivered >= 2))
        events = [(r.json["event"], r.json["key"]) for r in lan.requests]
    assert [e for e, _ in events] == ["announce"] * 4 + ["clear"], "order or retries wrong"
    assert len({k for e, k in events if e == "announce"}) == 1, "a retry changed the key"


def test_local_notices_survive_an_agent_restart(spool):
    with HttpReceiver() as lan:
        first = LocalStage(spool, lan.url)
        first.poll(T0, load=120)  # committed, not yet sent: the agent dies here
        again = LocalStage(spool, lan.url)
        assert again.annunciator.pending == 1
        asyncio.run(again.deliver(lambda: len(lan.requests) >= 1))
        [request] = lan.requests
    assert request.json["key"] == f"overload:s1:crane-1:plc:announce:{T0}"


# --- reload -------------------------------------------------------------------------------------


def test_a_reload_clears_a_held_condition_whose_rule_went_away(spool):
    stage = Stage(spool)
    stage.poll(T0, load=120)
    stage.ack_all()
    stage.alarms.reload(RuleSet(rules=[r for r in RULES.rules if r.name != "overload"]))
    [clear] = stage.queued()
    assert (clear.rule, clear.state) == ("overload", ConditionState.CLEARED)
    assert [c.rules for c in stage.alarms.coverage] == [["cold", "offline"]]


def test_a_reload_with_a_rule_not_on_this_agent_keeps_the_old_rules(spool):
    stage = Stage(spool)
    foreign = RuleSet.model_validate([{"name": "rig", "type": "high", "tag": "x", "limit": 1}])
    with pytest.raises(ValueError, match="rule 'rig' reads x, which device 'plc' does not poll"):
        stage.alarms.reload(foreign)
    stage.poll(T0, load=120)
    assert [m.rule for m in stage.queued()] == ["overload"]


def test_the_kpis_count_an_episode_heard_of_late_as_one_activation():
    kpis = AlarmKpis()
    alarm = "overload:s1:crane-1:plc"
    episodes = [
        Annunciate(alarm_id=alarm, priority="critical", value=140, limit=100,
                   reason=AnnounceReason.OFFLINE, ts_ns=T0 + n * S, ended_ns=T0 + n * S + S // 2)
        for n in range(3)
    ]  # fmt: skip
    assert kpis.observe(episodes) == [alarm], "three activations within a minute: chattering"
    now = T0 + 60 * S
    [snapshot, top] = kpis.points("c1", now, [])
    assert snapshot.fields["alarms_per_window"] == 3
    assert (top.tags["alarm"], top.fields["count"]) == (alarm, 3)
    assert kpis.footprint()["activation_times"] == 0, "an episode is not a standing alarm"


def test_a_collector_without_alarm_rules_counts_condition_messages_in_the_sequence(tmp_path):
    """An edge agent numbers its conditions with its telemetry: a collector that stores
    only (no alarms) must still see their numbers, or it reports them as lost."""
    sequences = SequenceTracker(grace_s=0.0)
    reading = Reading(tag="load", value=10.0, ts_ns=T0)
    messages = [
        ("telemetry", telemetry(10).model_copy(update={"seq": 0, "readings": [reading]})),
        ("condition", condition("active", T0).model_copy(update={"seq": 1})),
        ("telemetry", telemetry(10).model_copy(update={"seq": 2, "readings": [reading]})),
    ]

    async def main() -> MemoryMqttClient:
        client = MemoryMqttClient()
        queue: asyncio.Queue[Batchable] = asyncio.Queue()
        receiver = Receiver(client, queue, Stats(), sequences=sequences)  # type: ignore[arg-type]
        for mid, (kind, message) in enumerate(messages, start=1):
            topic = f"derrick/v1/s1/crane-1/plc/{kind}"
            client.inbox.put_nowait(
                InboundMessage(topic, message.model_dump_json().encode(), 1, mid, False)
            )
        task = asyncio.create_task(receiver.run())
        async with asyncio.timeout(5):
            while receiver.stats.messages < len(messages) or not client.inbox.empty():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return client

    client = asyncio.run(main())
    assert [m.topic.rsplit("/", 1)[1] for m in client.acked] == ["condition"], "not acknowledged"
    sequences.confirm("gw", "b", time.monotonic() + 1, 0.0)
    assert sequences.drain_lost() == [], "the condition's number counted as lost"
    assert sequences.pending == 0


def test_an_unreadable_local_notice_is_dropped_and_the_next_one_sent(spool):
    with HttpReceiver() as lan:
        spool.write_notes({"local:000000000001": '{"v": 9}'})  # e.g. from a newer agent
        stage = LocalStage(spool, lan.url)
        stage.poll(T0, load=120)
        asyncio.run(stage.deliver(lambda: len(lan.requests) >= 1))
        [request] = lan.requests
    assert request.json["event"] == "announce"
    assert stage.annunciator.failed == 1
    assert spool.notes("local:") == {}
