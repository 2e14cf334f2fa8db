"""Alarm KPIs: flood, chattering, standing, top alarms and their points, as the
collector writes them (line protocol by collector.lineproto).

Expectations are computed by hand from the definitions in ``derrick/alarms/kpi.py``;
lifecycle effects come from the real state machine where the sequence matters.
"""

import pydantic
import pytest

from collector.lineproto import encode_point
from derrick.alarms.kpi import AlarmKpis, KpiSettings, Point
from derrick.alarms.lifecycle import (
    Acknowledge,
    AlarmRecord,
    AnnounceReason,
    Annunciate,
    Clear,
    Journal,
    ProcessActive,
    ProcessNormal,
    RemoveFromService,
    Shelve,
    Suppress,
    Transition,
    Unshelve,
    apply,
)

S = 1_000_000_000
H = 3600 * S
T0 = 1_800_000_000 * S  # an arbitrary epoch time, a whole second
ALARM = "overload:yard:crane-01:lmi"


def announce(alarm_id: str, t: int, reason: AnnounceReason = AnnounceReason.NEW) -> Annunciate:
    return Annunciate(
        alarm_id=alarm_id, priority="high", value=12.0, limit=10.0, reason=reason, ts_ns=t
    )


def clear(alarm_id: str, t: int) -> Clear:
    return Clear(alarm_id=alarm_id, priority="high", value=9.0, ts_ns=t)


def lines(kpis: AlarmKpis, collector_id: str, now: int, records) -> list[str]:
    """The KPIs at ``now`` as the collector writes them."""
    points = kpis.points(collector_id, now, records)
    return [encode_point(p.measurement, p.tags, p.fields, p.ts_ns) for p in points]


class Alarm:
    """One alarm driven through the real lifecycle; ``kpis`` observes every effect."""

    def __init__(self, kpis: AlarmKpis, alarm_id: str = ALARM) -> None:
        self.kpis = kpis
        self.record = AlarmRecord.new(alarm_id)
        self.started: list[list[str]] = []  # what observe returned, per input

    def feed(self, event) -> list[str]:
        result = apply(self.record, event)
        assert isinstance(result, Transition), result
        self.record = result.record
        started = self.kpis.observe(result.effects)
        self.started.append(started)
        return started

    def active(self, t: int) -> list[str]:
        return self.feed(ProcessActive(now_ns=t, value=12.0, limit=10.0))

    def normal(self, t: int) -> list[str]:
        return self.feed(ProcessNormal(now_ns=t, value=9.0))

    def ack(self, t: int) -> list[str]:
        return self.feed(Acknowledge(now_ns=t, who="ana"))


# --------------------------------------------------------------------------- settings


def test_settings_defaults_follow_eemua_and_every_key_is_documented():
    settings = KpiSettings()
    assert settings.model_dump() == {
        "interval_s": 60.0,
        "window_s": 600.0,
        "flood_per_window": 10,
        "chatter_transitions": 3,
        "chatter_window_s": 60.0,
        "standing_after_s": 86400.0,
        "top_n": 10,
    }
    for name, field in KpiSettings.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    "bad",
    [
        {"window_s": 0},
        {"window_s": float("inf")},
        {"interval_s": float("nan")},
        {"flood_per_window": 0},
        {"chatter_transitions": 1},
        {"chatter_window_s": -1},
        {"standing_after_s": 0},
        {"top_n": 0},
        {"top_n": 101},
        {"windows_s": 600},  # typo: unknown keys are errors
    ],
)
def test_settings_reject_out_of_bounds_and_unknown_keys(bad):
    with pytest.raises(pydantic.ValidationError):
        KpiSettings(**bad)


# --------------------------------------------------------------------------- flood


@pytest.mark.parametrize(("annunciations", "in_flood"), [(1, False), (10, False), (11, True)])
def test_flood_begins_at_the_eleventh_annunciation_within_ten_minutes(annunciations, in_flood):
    kpis = AlarmKpis()
    kpis.observe(announce(f"r{i}:yard:crane-01:lmi", T0 + i * 50 * S) for i in range(annunciations))
    snap = kpis.snapshot(T0 + 599 * S, [])
    assert snap["alarms_per_window"] == annunciations
    assert snap["in_flood"] is in_flood


def test_annunciations_leave_the_window_after_window_s():
    kpis = AlarmKpis()
    kpis.observe([announce(ALARM, T0), announce(ALARM, T0 + 100 * S)])
    assert kpis.snapshot(T0 + 599 * S, [])["alarms_per_window"] == 2
    assert kpis.snapshot(T0 + 600 * S, [])["alarms_per_window"] == 1
    assert kpis.snapshot(T0 + 700 * S, [])["alarms_per_window"] == 0


# 11 annunciations at 0, 10, ..., 100 s: the flood runs from 100 s (the 11th) to 600 s (the
# first leaves the window): 500 s. Snapshot times (s) -> (in_flood, flood_s_total).
FLOOD_TIMELINE = [
    (100, True, 0.0),
    (300, True, 200.0),
    (599, True, 499.0),
    (600, False, 500.0),
    (2000, False, 500.0),
]


def flood_of_eleven(kpis: AlarmKpis, start: int) -> None:
    for i in range(11):
        kpis.observe([announce(f"r{i}:yard:crane-01:lmi", start + i * 10 * S)])


def test_flood_time_integrates_over_a_flood_of_known_length():
    kpis = AlarmKpis()
    kpis.observe(announce(f"r{i}:yard:crane-01:lmi", T0 + i * 10 * S) for i in range(5))
    snap = kpis.snapshot(T0 + 50 * S, [])
    assert (snap["in_flood"], snap["flood_s_total"]) == (False, 0.0)
    kpis.observe(announce(f"r{i}:yard:crane-01:lmi", T0 + i * 10 * S) for i in range(5, 11))
    for at, in_flood, total in FLOOD_TIMELINE:
        snap = kpis.snapshot(T0 + at * S, [])
        assert (snap["in_flood"], snap["flood_s_total"]) == (in_flood, total), at


@pytest.mark.parametrize("snapshots_at_s", [[], [650], [150, 450, 610], list(range(0, 2000, 7))])
def test_flood_time_does_not_depend_on_how_often_snapshots_are_taken(snapshots_at_s):
    kpis = AlarmKpis()
    flood_of_eleven(kpis, T0)
    for at in snapshots_at_s:
        kpis.snapshot(T0 + max(at, 100) * S, [])
    assert kpis.snapshot(T0 + 2000 * S, [])["flood_s_total"] == 500.0
    # A second flood of the same shape adds its 500 s.
    flood_of_eleven(kpis, T0 + 3000 * S)
    assert kpis.snapshot(T0 + 4000 * S, [])["flood_s_total"] == 1000.0


def test_late_effects_count_at_the_newest_time_seen():
    kpis = AlarmKpis()
    kpis.snapshot(T0 + 1000 * S, [])
    kpis.observe([announce(ALARM, T0)])  # 1000 s late: counted at T0 + 1000 s
    assert kpis.snapshot(T0 + 1599 * S, [])["alarms_per_window"] == 1
    assert kpis.snapshot(T0 + 1600 * S, [])["alarms_per_window"] == 0


# --------------------------------------------------------------------------- chattering


@pytest.mark.parametrize(
    ("activations_s", "starts_at"),
    [
        ([0, 30, 59.5], 2),  # the 3rd within 60 s
        ([0, 30, 60], None),  # 60 s from first to third is not "within 60 s"
        ([0, 10, 20, 30, 40], 2),  # reported once, at the 3rd
        ([0, 50, 100, 105], 3),  # 0, 50, 100 spans 100 s; 50, 100, 105 spans 55 s
        ([0, 120, 240, 360], None),
    ],
)
def test_chattering_starts_on_the_third_activation_within_a_minute_and_is_reported_once(
    activations_s, starts_at
):
    kpis = AlarmKpis()
    alarm = Alarm(kpis)
    reported = []
    for i, at in enumerate(activations_s):
        t = T0 + round(at * S)
        if alarm.active(t):
            reported.append(i)
        alarm.normal(t + S // 2)  # a Clear between activations does not count
    assert reported == ([] if starts_at is None else [starts_at])
    assert all(started in ([], [ALARM]) for started in alarm.started)


def test_chattering_stops_when_its_window_passes_without_an_activation():
    kpis = AlarmKpis()
    alarm = Alarm(kpis)
    for at in (0, 10, 20, 30, 40):
        alarm.active(T0 + at * S)
        alarm.normal(T0 + at * S + S)
    # Last activation at 40 s: chattering until 100 s.
    assert kpis.chattering(T0 + 99 * S) == {ALARM}
    assert kpis.stopped_chattering(T0 + 99 * S) == []
    assert kpis.snapshot(T0 + 99 * S, [alarm.record])["chattering"] == 1
    assert kpis.chattering(T0 + 100 * S) == set()
    assert kpis.snapshot(T0 + 100 * S, [alarm.record])["chattering"] == 0
    assert kpis.stopped_chattering(T0 + 100 * S) == [ALARM]
    assert kpis.stopped_chattering(T0 + 200 * S) == []
    # A new episode is a new start.
    assert [
        alarm.active(T0 + at * S) + alarm.normal(T0 + at * S + S) for at in (300, 301, 302)
    ] == [
        [],
        [],
        [ALARM],
    ]


def test_a_chattering_alarm_stays_chattering_while_activations_keep_coming_within_the_window():
    kpis = AlarmKpis()
    alarm = Alarm(kpis)
    starts = []
    for at in [0, 1, 2, *range(60, 600, 59)]:  # after the start, one activation every 59 s
        starts += alarm.active(T0 + at * S)
        alarm.normal(T0 + at * S + S)
        assert kpis.stopped_chattering(T0 + at * S + S) == []
    assert starts == [ALARM]


def test_a_slow_alarm_never_chatters():
    kpis = AlarmKpis()
    alarm = Alarm(kpis)
    for i in range(60):  # one activation every 2 minutes for 2 hours
        t = T0 + i * 120 * S
        assert alarm.active(t) == []
        assert kpis.chattering(t) == set()
        alarm.normal(t + 30 * S)
        assert kpis.stopped_chattering(t + 30 * S) == []
    assert alarm.record.activations == 60


def test_a_stop_noticed_by_observe_is_still_reported_by_stopped_chattering():
    kpis = AlarmKpis()
    alarm = Alarm(kpis)
    for at in (0, 1, 2):
        alarm.active(T0 + at * S)
        alarm.normal(T0 + at * S + S // 2)
    # Nobody calls stopped_chattering during the quiet minute; then it chatters again.
    assert [
        alarm.active(T0 + at * S) + alarm.normal(T0 + at * S + S // 2) for at in (70, 71, 72)
    ] == [
        [],
        [],
        [ALARM],
    ]
    assert kpis.stopped_chattering(T0 + 73 * S) == [ALARM]
    assert kpis.chattering(T0 + 73 * S) == {ALARM}


def test_re_announcements_after_hiding_are_annunciations_but_not_activations():
    kpis = AlarmKpis()
    alarm = Alarm(kpis)
    alarm.active(T0)
    for at in (1, 3, 5, 7):
        alarm.feed(Shelve(now_ns=T0 + at * S, who="ana", reason="test", duration_s=60))
        alarm.feed(Unshelve(now_ns=T0 + (at + 1) * S, who="ana"))  # UNSHELVED re-announces
    assert kpis.chattering(T0 + 10 * S) == set()
    assert kpis.top(T0 + 10 * S) == [(ALARM, 5)]


# --------------------------------------------------------------------------- states


@pytest.mark.parametrize(
    ("age", "standing"),
    [(23 * H, 0), (24 * H, 0), (24 * H + 1, 1), (30 * H, 1)],
)
def test_standing_counts_from_the_activation_not_from_the_acknowledgement(age, standing):
    kpis = AlarmKpis()
    alarm = Alarm(kpis)
    alarm.active(T0)
    alarm.ack(T0 + 1 * H)  # moves last_transition_ns; the alarm is still the same excursion
    assert alarm.record.last_transition_ns == T0 + 1 * H
    snap = kpis.snapshot(T0 + age, [alarm.record])
    assert (snap["active"], snap["standing"]) == (1, standing)


def test_an_alarm_active_at_startup_falls_back_to_its_last_transition_time():
    record = AlarmRecord.new(ALARM)
    result = apply(record, ProcessActive(now_ns=T0, value=12.0, limit=10.0))
    assert isinstance(result, Transition)
    kpis = AlarmKpis()  # a restarted collector: it never saw the Annunciate
    assert kpis.snapshot(T0 + 23 * H, [result.record])["standing"] == 0
    # The fallback is remembered: a later acknowledgement does not make the alarm younger.
    acked = apply(result.record, Acknowledge(now_ns=T0 + 23 * H, who="ana"))
    assert isinstance(acked, Transition)
    kpis.observe(acked.effects)
    assert kpis.snapshot(T0 + 25 * H, [acked.record])["standing"] == 1


def test_a_cleared_alarm_is_not_standing_and_its_activation_time_is_forgotten():
    kpis = AlarmKpis()
    alarm = Alarm(kpis)
    alarm.active(T0)
    alarm.normal(T0 + 1 * H)
    snap = kpis.snapshot(T0 + 48 * H, [alarm.record])
    assert (snap["active"], snap["standing"], snap["unacked"]) == (0, 0, 1)  # RTN_UNACKED
    assert kpis.footprint()["activation_times"] == 0
    alarm.active(T0 + 49 * H)  # a new excursion: its age starts again
    assert kpis.snapshot(T0 + 50 * H, [alarm.record])["standing"] == 0


def test_state_counts_partition_the_records_by_state():
    kpis = AlarmKpis()
    made = {}
    scripts = {
        "a:s:x:d": [ProcessActive(now_ns=T0, value=1.0, limit=0.0)],  # active, unacked
        "b:s:x:d": [
            ProcessActive(now_ns=T0, value=1.0, limit=0.0),
            Acknowledge(now_ns=T0, who="ana"),
        ],  # active, acked
        "c:s:x:d": [Shelve(now_ns=T0, who="ana", reason="r", duration_s=3600)],
        "d:s:x:d": [
            Shelve(now_ns=T0, who="ana", reason="r", duration_s=3600),
            Suppress(now_ns=T0, on=True),
        ],  # shelved and suppressed: counts as suppressed only
        "e:s:x:d": [RemoveFromService(now_ns=T0, who="ana", reason="sensor broken")],
        "f:s:x:d": [],  # normal
    }
    for alarm_id, events in scripts.items():
        record = AlarmRecord.new(alarm_id)
        for event in events:
            result = apply(record, event)
            assert isinstance(result, Transition)
            record = result.record
            kpis.observe(result.effects)
        made[alarm_id] = record
    snap = kpis.snapshot(T0 + S, made.values())
    assert {
        k: snap[k] for k in ("active", "unacked", "shelved", "suppressed", "out_of_service")
    } == {
        "active": 2,
        "unacked": 1,
        "shelved": 1,
        "suppressed": 1,
        "out_of_service": 1,
    }
    assert snap["alarms_per_window"] == 2


def test_journal_effects_are_ignored():
    kpis = AlarmKpis()
    journal = Journal(alarm_id=ALARM, action="acknowledge", who="ana", comment="", ts_ns=T0)
    assert kpis.observe([journal]) == []
    assert kpis.snapshot(T0, [])["alarms_per_window"] == 0


# --------------------------------------------------------------------------- top


def test_top_orders_by_count_then_alarm_id_and_keeps_top_n():
    kpis = AlarmKpis(KpiSettings(top_n=3))
    counts = {"b:s:a:d": 3, "a:s:a:d": 3, "c:s:a:d": 5, "d:s:a:d": 1}
    t = T0
    for alarm_id, n in counts.items():
        for _ in range(n):
            t += S
            kpis.observe([announce(alarm_id, t)])
    assert kpis.top(t) == [("c:s:a:d", 5), ("a:s:a:d", 3), ("b:s:a:d", 3)]


def test_top_counts_only_the_last_window():
    kpis = AlarmKpis()
    kpis.observe([announce("old:s:a:d", T0 + i * S) for i in range(5)])
    kpis.observe([announce("new:s:a:d", T0 + 300 * S + i * S) for i in range(2)])
    assert kpis.top(T0 + 400 * S) == [("old:s:a:d", 5), ("new:s:a:d", 2)]
    # The one at 4 s counts until 604 s (600 s after it).
    assert kpis.top(T0 + 603 * S) == [("new:s:a:d", 2), ("old:s:a:d", 1)]
    assert kpis.top(T0 + 604 * S) == [("new:s:a:d", 2)]
    assert kpis.top(T0 + 2000 * S) == []
    assert kpis.footprint()["window_alarms"] == 0


# --------------------------------------------------------------------------- points


def chattering_alarm() -> tuple[AlarmKpis, Alarm, int]:
    """Four activations in 30 s (chattering since the third), active at ``now``."""
    kpis = AlarmKpis()
    alarm = Alarm(kpis)
    for at in (0, 10, 20):
        alarm.active(T0 + at * S)
        alarm.normal(T0 + at * S + S)
    alarm.active(T0 + 30 * S)
    return kpis, alarm, T0 + 40 * S


def test_points_are_the_snapshot_and_one_per_top_alarm_with_typed_fields():
    kpis, alarm, now = chattering_alarm()
    kpi, top = kpis.points("col-1", now, [alarm.record])
    assert kpi == Point(
        "alarm_kpi",
        {"collector": "col-1"},
        {"alarms_per_window": 4, "in_flood": False, "flood_s_total": 0.0, "active": 1,
         "unacked": 1, "standing": 0, "shelved": 0, "suppressed": 0, "out_of_service": 0,
         "chattering": 1},
        now,
    )  # fmt: skip
    assert top == Point(
        "alarm_top",
        {"alarm": ALARM, "collector": "col-1", "rule": "overload", "site": "yard",
         "asset": "crane-01", "device": "lmi"},
        {"count": 4, "chattering": True},
        now,
    )  # fmt: skip
    # The Python type of a field is its InfluxDB type: these must never change.
    assert {key: type(value) for key, value in kpi.fields.items()} == {
        "alarms_per_window": int, "in_flood": bool, "flood_s_total": float, "active": int,
        "unacked": int, "standing": int, "shelved": int, "suppressed": int,
        "out_of_service": int, "chattering": int,
    }  # fmt: skip
    assert {key: type(value) for key, value in top.fields.items()} == {
        "count": int,
        "chattering": bool,
    }


def test_lines_write_the_snapshot_and_one_line_per_top_alarm():
    kpis, alarm, now = chattering_alarm()
    assert lines(kpis, "col-1", now, [alarm.record]) == [
        "alarm_kpi,collector=col-1 alarms_per_window=4i,in_flood=false,flood_s_total=0.0,"
        "active=1i,unacked=1i,standing=0i,shelved=0i,suppressed=0i,out_of_service=0i,"
        f"chattering=1i {now}",
        "alarm_top,alarm=overload:yard:crane-01:lmi,asset=crane-01,collector=col-1,device=lmi,"
        f"rule=overload,site=yard count=4i,chattering=true {now}",
    ]


@pytest.mark.parametrize(
    ("alarm_id", "parts"),
    [
        ("r:s:a:d", {"rule": "r", "site": "s", "asset": "a", "device": "d"}),
        ("r:s:a:d:x", {"rule": "r", "site": "s", "asset": "a", "device": "d:x"}),
        ("r:s", {"rule": "r", "site": "s"}),
        ("r::a:d", {"rule": "r", "asset": "a", "device": "d"}),
        ("odd", {"rule": "odd"}),
    ],
)
def test_alarm_ids_split_into_tags_and_empty_parts_are_left_out(alarm_id, parts):
    kpis = AlarmKpis()
    kpis.observe([announce(alarm_id, T0)])
    _kpi, top = kpis.points("col-1", T0, [])
    assert top.tags == {"alarm": alarm_id, "collector": "col-1", **parts}


def test_odd_characters_in_ids_are_escaped_in_the_top_lines():
    kpis = AlarmKpis()
    odd = "over load:yard,2:crane=1:l m i"
    kpis.observe([announce(odd, T0)])
    written = lines(kpis, "col 1", T0, [])
    assert written[0].startswith("alarm_kpi,collector=col\\ 1 alarms_per_window=1i,")
    assert written[1] == (
        "alarm_top,alarm=over\\ load:yard\\,2:crane\\=1:l\\ m\\ i,asset=crane\\=1,"
        "collector=col\\ 1,device=l\\ m\\ i,rule=over\\ load,site=yard\\,2 "
        f"count=1i,chattering=false {T0}"
    )


def test_points_need_a_collector_id():
    with pytest.raises(ValueError, match="collector_id"):
        AlarmKpis().points("", T0, [])


@pytest.mark.integration
def test_influxdb_reads_the_odd_tags_back_as_they_were(influx1, influx_db):
    kpis = AlarmKpis()
    odd = "over load:yard,2:crane=1:l m i"
    backslashes = "r\\x:yard:crane-01:lmi\\"  # written as r/x and lmi/
    kpis.observe([announce(odd, T0), announce(odd, T0 + S), announce(ALARM, T0)])
    kpis.observe([announce(backslashes, T0 + S)])
    influx1.write(influx_db, "\n".join(lines(kpis, "col 1", T0 + 2 * S, [])))
    result = influx1.query("SELECT * FROM alarm_top WHERE \"collector\" = 'col 1'", db=influx_db)
    series = result["results"][0]["series"][0]
    rows = [dict(zip(series["columns"], row, strict=True)) for row in series["values"]]
    got = {
        row["alarm"]: (row["rule"], row["site"], row["asset"], row["device"], row["count"])
        for row in rows
    }
    assert got == {
        odd: ("over load", "yard,2", "crane=1", "l m i", 2),
        ALARM: ("overload", "yard", "crane-01", "lmi", 1),
        "r/x:yard:crane-01:lmi/": ("r/x", "yard", "crane-01", "lmi/", 1),
    }
    kpi = influx1.query("SELECT * FROM alarm_kpi", db=influx_db)["results"][0]["series"][0]
    row = dict(zip(kpi["columns"], kpi["values"][0], strict=True))
    assert (row["alarms_per_window"], row["in_flood"], row["time"]) == (4, False, T0 + 2 * S)


# --------------------------------------------------------------------------- memory


def test_memory_stays_bounded_with_100k_effects_of_one_alarm():
    kpis = AlarmKpis()
    started = []
    for i in range(50_000):  # 100k effects: activation + clear every 10 ms, for 500 s
        t = T0 + i * 10_000_000
        started += kpis.observe([announce(ALARM, t), clear(ALARM, t + 5_000_000)])
        footprint = kpis.footprint()
        assert footprint["window_steps"] <= kpis.max_window_steps == 601
        assert footprint["chatter_times"] <= 3
    assert started == [ALARM]
    # Counts stay exact: all 50,000 are within the 600 s window at 500 s.
    assert kpis.top(T0 + 500 * S) == [(ALARM, 50_000)]
    # At 700 s the 1 s steps 0..100 (101 x 100 annunciations) have left the window.
    assert kpis.top(T0 + 700 * S) == [(ALARM, 39_900)]
    assert kpis.stopped_chattering(T0 + 700 * S) == [ALARM]
    assert kpis.footprint() == {
        "window_steps": 399,
        "window_alarms": 1,
        "chatter_alarms": 0,
        "chatter_times": 0,
        "activation_times": 0,
    }
