"""Edge alarms end to end, real parts only: simulated crane PLCs -> two agents (one
evaluating the crane rules itself, one not) -> mosquitto, stopped for a while -> collector
-> webhook receiver and SMTP server, InfluxDB 1.6; on each wire (Sparkplug B, where the
conditions travel in DDATA, and JSON).

Two broker outages of :data:`OUTAGE_S` each (the issue's 90 s, shortened: nothing in
the path waits on the outage's length except the collector's own ``stale`` rules for
assets it evaluates, which a shorter outage keeps quiet). During each, one crane lifts
an overload and sets it down (an episode nobody could hear of), another lifts one and
still holds it when the broker returns. In the second outage the edge agent is also
killed (SIGKILL) and started again, mid-outage. During the first, a third crane's load
chatters across the overload limit.

What must come out: each episode journaled once with its true start and end (within
one poll of the simulator's own times) and announced once, as having happened while
offline, on the webhook and by e-mail; each alarm still standing announced once with
its true start, then acknowledged and cleared as usual; the chatter one alarm per
rule; a crane on the agent without edge rules alarming once as before; and nothing
else, nothing twice.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from derrick.plumbing.configfile import read_yaml
from devstack.alarmstack import AlarmStack, AssetSpec
from devstack.programs import wait_for, write_yaml
from devstack.receivers import HttpReceiver, SmtpReceiver
from devstack.services import Influx1, Mosquitto

pytestmark = pytest.mark.integration

S = 1_000_000_000
POLL_S = 0.5
OUTAGE_S = 20.0
CHATTER_S = 0.25  # the chattering crane's utilisation flips this often
WAIT_S = 60
OVERLOAD = {  # what a forced overload (115 % of the safe working load) raises
    "crane_overload": "critical",
    "crane_lmi_warning": "medium",
    "crane_hook_load_rated": "high",
    "crane_lmi_cutout": "high",
}
CHATTER = {"crane_overload": "critical", "crane_lmi_warning": "medium"}
ASSETS = [
    AssetSpec("crane-episode", edge=True),  # overload lifted and set down, outage 1
    AssetSpec("crane-standing", edge=True),  # overload still on when the broker returns
    # utilisation 109/111 every 0.25 s through outage 1, polled every 0.1 s
    AssetSpec("crane-chatter", edge=True, device_settings={"interval_s": 0.1}),
    AssetSpec("crane-killed", edge=True),  # an episode in outage 2, the agent killed
    AssetSpec("crane-killed-standing", edge=True),
    AssetSpec("crane-central"),  # the agent without edge rules
]


@dataclass
class Episode:
    asset: str
    start_ns: int  # when the simulator forced the overload
    end_ns: int | None  # when it released it (None: still on at reconnect)
    back_ns: int  # when the broker came back


@dataclass
class Run:
    stack: AlarmStack
    hooks: HttpReceiver
    mail: SmtpReceiver
    influx: Influx1
    db: str
    episodes: dict[str, Episode]
    chatter: Chatter
    lan: HttpReceiver  # the edge agent's local annunciation


def within_a_poll(seen_ns: int, happened_ns: int) -> bool:
    """Whether a time the pipeline recorded is that of the first poll after the
    simulator's change (a poll interval, and a little for scheduling; the request that
    saw it may have started a few ms before the change took effect)."""
    return -0.05 * S <= seen_ns - happened_ns <= (POLL_S + 0.25) * S


def overload(stack: AlarmStack, asset: str, active: bool) -> int:
    return stack.control(asset, "/overload", {"active": active})["took_effect_ns"]


def outage(
    broker: Mosquitto,
    stack: AlarmStack,
    episode: str,
    standing: str,
    *,
    kill_agent: bool,
    meanwhile: threading.Thread | None = None,
) -> dict[str, Episode]:
    """Stop the broker; meanwhile an overload on ``episode`` lifted and set down, one on
    ``standing`` lifted (and maybe the edge agent killed and restarted, and ``meanwhile``
    run); start it again once ``meanwhile`` is done too."""
    broker.stop()
    if meanwhile is not None:
        meanwhile.start()
    try:
        time.sleep(2)
        start = overload(stack, episode, True)
        start_standing = overload(stack, standing, True)
        time.sleep(5)
        end = overload(stack, episode, False)
        if kill_agent:
            time.sleep(2)
            stack.edge_agent.kill()
            stack.edge_agent.start()
        time.sleep(max(0.0, OUTAGE_S - (time.time_ns() - start) / S - 2))
        if meanwhile is not None:
            meanwhile.join()
    finally:
        broker.start()
    back = time.time_ns()
    return {
        episode: Episode(episode, start, end, back),
        standing: Episode(standing, start_standing, None, back),
    }


class Chatter(threading.Thread):
    """The chattering crane's utilisation pinned at 109 and 111 % in turn (the overload
    limit is 110 with a deadband of 2), a poll and a bit each, then released."""

    def __init__(self, stack: AlarmStack, flips: int) -> None:
        super().__init__()
        self.stack, self.flips = stack, flips
        self.window = (0, 0)

    def run(self) -> None:
        start = time.time_ns()
        for n in range(self.flips):
            value = 111.0 if n % 2 else 109.0
            self.stack.control("crane-chatter", "/hold", {"utilisation": value})
            time.sleep(CHATTER_S)
        self.stack.control("crane-chatter", "/release", {})
        self.window = (start, time.time_ns())


@pytest.fixture(scope="module", params=["sparkplug", "json"])
def run(request, tmp_path_factory, influx1):
    """The whole story once per wire: the conditions in Sparkplug DDATA (the agent's
    default) and on Derrick's JSON condition topics."""
    base = tmp_path_factory.mktemp("edge-e2e")
    db = f"edge_{uuid.uuid4().hex[:8]}"
    influx1.create_database(db)
    broker = Mosquitto(tmp_path_factory.mktemp("edge-broker")).start()
    with HttpReceiver() as hooks, SmtpReceiver() as mail, HttpReceiver() as lan:
        stack = AlarmStack(
            base,
            broker_port=broker.port,
            influx={"api": "v1", "url": influx1.url, "database": db},
            hook_url=hooks.url,
            smtp_port=mail.port,
            assets=ASSETS,
            interval_s=POLL_S,
            wire=request.param,
            edge_local={
                "channel": {"type": "webhook", "url": lan.url},
                "priorities": ["critical", "high", "medium", "low"],
                "retry_min_s": 0.2,
                "retry_max_s": 1,
            },
        )
        try:
            stack.start()
            wait_for(lambda: _seen(influx1, db, stack), 60, "telemetry of every asset",
                     program=stack.collector)  # fmt: skip
            chatter = Chatter(stack, 60)
            episodes = outage(
                broker, stack, "crane-episode", "crane-standing", kill_agent=False,
                meanwhile=chatter,
            )  # fmt: skip
            overload(stack, "crane-central", True)  # live, on the agent without edge rules
            # Both agents back and heard before the next outage (else the collector's
            # stale rule of the central crane counts both outages as one).
            wait_for(lambda: len(_offline(hooks)) >= len(OVERLOAD), WAIT_S,
                     "outage 1's episode", program=stack.collector)  # fmt: skip
            wait_for(lambda: set(_of_hooks(hooks, "crane-central")) >= set(OVERLOAD), WAIT_S,
                     "the central crane's overload", program=stack.collector)  # fmt: skip
            episodes |= outage(
                broker, stack, "crane-killed", "crane-killed-standing", kill_agent=True
            )
            yield Run(stack, hooks, mail, influx1, db, episodes, chatter, lan)
        finally:
            codes = stack.stop()
            broker.stop()
            influx1.drop_database(db)
    assert all(code == 0 for code in codes.values()), (codes, stack.edge_agent.log_tail())


def _seen(influx: Influx1, db: str, stack: AlarmStack) -> bool:
    result = influx.query(
        f"SELECT COUNT(utilisation) FROM telemetry WHERE site='{stack.site}' GROUP BY asset",
        db=db,
    )
    return len(result["results"][0].get("series", [])) == len(ASSETS)


def _notices(hooks: HttpReceiver) -> list[dict]:
    return [r.json for r in hooks.requests if isinstance(r.json, dict)]


def _offline(hooks: HttpReceiver) -> list[dict]:
    return [n for n in _notices(hooks) if n.get("reason") == "offline"]


def _of(run: Run, asset: str, event: str = "announce") -> dict[str, list[dict]]:
    return _of_hooks(run.hooks, asset, event)


def _of_hooks(hooks: HttpReceiver, asset: str, event: str = "announce") -> dict[str, list[dict]]:
    """The notices of ``event`` on ``asset`` at the webhook, by rule."""
    found: dict[str, list[dict]] = {}
    for notice in _notices(hooks):
        if notice["asset"] == asset and notice["event"] == event:
            found.setdefault(notice["rule"], []).append(notice)
    return found


def _mails(run: Run, key: str) -> list:
    return [m for m in run.mail.messages if str(m.message["X-Derrick-Key"]).strip() == key]


def _wait_rules(run: Run, asset: str, rules: dict[str, str], event: str = "announce") -> dict:
    return wait_for(
        lambda: (found := _of(run, asset, event)) and set(found) >= set(rules) and found,
        WAIT_S,
        f"{event} of {sorted(rules)} on {asset}",
        interval=0.2,
        program=run.stack.collector,
    )


def assert_episode_announced_once(run: Run, asset: str, rules: dict[str, str]) -> None:
    found = _wait_rules(run, asset, rules)
    assert set(found) == set(rules), f"{asset}: announced {sorted(found)}"
    episode = run.episodes.get(asset)
    for rule, priority in rules.items():
        [notice] = found[rule]
        assert (notice["reason"], notice["priority"]) == ("offline", priority), notice
        assert notice["message"].startswith("occurred while offline, "), notice
        if episode is not None:
            assert within_a_poll(notice["ts_ns"], episode.start_ns), (rule, notice)
            assert within_a_poll(notice["ended_ns"], episode.end_ns), (rule, notice)
            assert notice["ended_ns"] < episode.back_ns
        [mail] = wait_for(lambda k=notice["key"]: _mails(run, k), WAIT_S, f"mail {rule}")
        assert str(mail.message["Subject"]).startswith(f"{priority.upper()} ALARM WHILE OFFLINE")
        assert len(_mails(run, notice["key"])) == 1
    assert _of(run, asset, "clear") == {}, "an episode is one notice, not an alarm and a clear"


@pytest.mark.parametrize("asset", ["crane-episode", "crane-killed"])
def test_an_overload_lifted_and_set_down_offline_is_one_notice_while_offline(run, asset):
    assert_episode_announced_once(run, asset, OVERLOAD)


@pytest.mark.parametrize("asset", ["crane-episode", "crane-killed"])
def test_the_journal_holds_the_episode_at_its_true_times(run, asset):
    episode = run.episodes[asset]
    _wait_rules(run, asset, OVERLOAD)
    series = run.influx.query(
        "SELECT reason, duration_s, value FROM alarms WHERE "
        f"asset='{asset}' AND rule='crane_overload' AND event='announce'",
        db=run.db,
    )["results"][0]["series"][0]
    [(ts, reason, duration_s, peak)] = series["values"]
    assert reason == "offline"
    assert within_a_poll(ts, episode.start_ns)
    assert within_a_poll(ts + round(duration_s * S), episode.end_ns)
    assert peak >= 110
    states = run.influx.query(
        f"SELECT state FROM alarm_state WHERE asset='{asset}' AND rule='crane_overload'",
        db=run.db,
    )["results"][0]["series"][0]["values"]
    ended = [t for t, state in states if state == "latched"]
    assert ended, states
    assert within_a_poll(ended[0], episode.end_ns), "alarm_state not at the episode's end"


@pytest.mark.parametrize("asset", ["crane-standing", "crane-killed-standing"])
def test_an_overload_still_on_at_reconnect_is_announced_once_with_its_true_start(run, asset):
    episode = run.episodes[asset]
    found = _wait_rules(run, asset, OVERLOAD)
    assert set(found) == set(OVERLOAD)
    for rule, priority in OVERLOAD.items():
        [notice] = found[rule]
        assert (notice["reason"], notice["priority"]) == ("new", priority), notice
        assert within_a_poll(notice["ts_ns"], episode.start_ns), (rule, notice)
        assert notice["ts_ns"] < episode.back_ns, "announced with the reconnect's time"
        wait_for(lambda k=notice["key"]: _mails(run, k), WAIT_S, f"mail {rule}")
        assert len(_mails(run, notice["key"])) == 1
    # acknowledge and clear as usual
    status, _ = run.stack.command("crane_overload", asset, "acknowledge", "ana", "seen")
    assert status == 200
    overload(run.stack, asset, False)
    [clear] = _wait_rules(run, asset, {"crane_lmi_warning": ""}, "clear")["crane_lmi_warning"]
    assert clear["ts_ns"] > episode.back_ns
    status, answer = run.stack.command("crane_overload", asset, "reset", "ana", "inspected")
    assert (status, answer["state"]) == (200, "normal"), answer


def test_chatter_through_an_outage_is_one_alarm_per_rule(run):
    start, end = run.chatter.window
    rows = run.influx.query(
        f"SELECT utilisation FROM telemetry WHERE asset='crane-chatter' AND time >= {start} "
        f"AND time <= {end}",
        db=run.db,
    )["results"][0].get("series")
    values = [v for _, v in rows[0]["values"]] if rows else []
    crossings = sum(1 for a, b in itertools.pairwise(values) if (a > 110) != (b > 110))
    assert crossings >= 50, f"only {crossings} of 60 crossings were polled"
    found = _wait_rules(run, "crane-chatter", CHATTER)
    assert set(found) == set(CHATTER)
    assert all(len(notices) == 1 for notices in found.values()), found


def test_an_agent_without_edge_rules_alarms_as_before(run):
    found = _wait_rules(run, "crane-central", OVERLOAD)
    assert set(found) == set(OVERLOAD)
    reasons = {rule: [n["reason"] for n in notices] for rule, notices in found.items()}
    assert all(reason == ["new"] for reason in reasons.values()), reasons


@pytest.mark.parametrize("asset", ["crane-episode", "crane-killed"])
def test_the_site_lan_heard_of_the_episode_while_offline_under_the_collectors_key(run, asset):
    central = {
        rule: notices[0]["key"] for rule, notices in _wait_rules(run, asset, OVERLOAD).items()
    }
    local = [r.json for r in run.lan.requests if r.json["asset"] == asset]
    announced = {n["rule"]: n for n in local if n["event"] == "announce"}
    assert set(announced) == set(OVERLOAD)
    for rule, notice in announced.items():
        assert notice["key"] == central[rule], "a receiver of both would hear it twice"
        assert notice["reason"] == "edge"
    cleared = Counter(n["rule"] for n in local if n["event"] == "clear")
    assert cleared == Counter(set(OVERLOAD)), "each local announcement is followed by its clear"
    keys = Counter(r.json["key"] for r in run.lan.requests)
    assert max(keys.values()) == 1, "a local notice was sent twice"


def test_nothing_else_and_nothing_twice(run):
    _wait_rules(run, "crane-killed", OVERLOAD)
    keys = Counter(n["key"] for n in _notices(run.hooks))
    assert [k for k, n in keys.items() if n > 1] == [], "a notice reached the webhook twice"
    mail_keys = Counter(str(m.message["X-Derrick-Key"]).strip() for m in run.mail.messages)
    assert [k for k, n in mail_keys.items() if n > 1] == [], "a notice was mailed twice"
    announced = {(n["asset"], n["rule"]) for n in _notices(run.hooks) if n["event"] == "announce"}
    expected = {
        (a, r)
        for a in (
            "crane-episode",
            "crane-standing",
            "crane-killed",
            "crane-killed-standing",
            "crane-central",
        )
        for r in OVERLOAD
    }
    expected |= {("crane-chatter", r) for r in CHATTER}  # fmt: skip
    assert announced == expected
    log = run.stack.edge_agent.log_tail(2000)
    assert '"edge alarms restored"' in log, "the killed agent did not start from its notes"


def test_a_rule_reload_on_the_agent_gives_a_rule_back_to_the_collector(run):
    """SIGHUP with crane_lmi_warning gone from the agent's rules: the next birth says
    so, the collector evaluates that rule again on the telemetry, the agent no more."""
    stack = run.stack
    rules = read_yaml(stack.edge_rules_file)["rules"]
    kept = [rule for rule in rules if rule["name"] != "crane_lmi_warning"]
    write_yaml(stack.edge_rules_file, {"rules": kept})
    stack.edge_agent.process.send_signal(signal.SIGHUP)
    wait_for(lambda: '"edge alarm rules reloaded"' in stack.edge_agent.log_tail(400), WAIT_S,
             "the agent's reload", program=stack.edge_agent)  # fmt: skip
    covered = f'"rules": {len(kept) * 5}'  # five edge cranes
    wait_for(lambda: covered in stack.collector.log_tail(400), WAIT_S,
             "the collector taking the new birth", program=stack.collector)  # fmt: skip
    reloaded_at = time.time_ns()
    overload(stack, "crane-episode", True)

    def announced_again() -> dict | None:
        status, alarm = stack.alarm("crane_lmi_warning", "crane-episode")
        fresh = status == 200 and alarm["state"] == "active_unacked"
        return alarm if fresh and alarm["ts_ns"] > reloaded_at else None

    alarm = wait_for(announced_again, WAIT_S, "crane_lmi_warning evaluated by the collector",
                     program=stack.collector)  # fmt: skip
    assert alarm["value"] >= 90
    conditions = [
        line for line in stack.edge_agent.log_tail(400).splitlines()
        if '"edge alarm condition"' in line and "crane_lmi_warning:" in line
        and json.loads(line)["timestamp"] > _iso(reloaded_at)
    ]  # fmt: skip
    assert conditions == [], "the agent still evaluates a rule it gave back"
    overload(stack, "crane-episode", False)


def _iso(ts_ns: int) -> str:
    """An instant as structlog's JSON ``timestamp`` spells it (UTC), for comparing."""
    return datetime.fromtimestamp(ts_ns / S, tz=UTC).isoformat().replace("+00:00", "Z")
