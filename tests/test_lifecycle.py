"""The ISA-18.2 alarm lifecycle state machine: every state x every input, plus sequences."""

import json
import math

import pytest

from derrick.alarms.lifecycle import (
    Acknowledge,
    Action,
    AlarmRecord,
    AnnounceReason,
    Annunciate,
    Clear,
    Journal,
    LifecycleState,
    ProcessActive,
    ProcessNormal,
    RecordError,
    Rejected,
    RemoveFromService,
    Reset,
    ReturnToService,
    Shelve,
    Suppress,
    Tick,
    Transition,
    Unshelve,
    apply,
    invariant_violation,
)

S = 1_000_000_000
T0 = 1_000 * S  # when the start state is reached
T1 = T0 + 5 * S  # when the input under test arrives (long before any shelf expires)
FAR = T0 + 10 * 3600 * S  # past any shelf in the start states
WHO = "ana"


def active(t: int = T0, value: float = 12.0) -> ProcessActive:
    return ProcessActive(now_ns=t, value=value, limit=10.0, priority="critical")


def normal(t: int = T0) -> ProcessNormal:
    return ProcessNormal(now_ns=t, value=9.0)


def ack(t: int = T0) -> Acknowledge:
    return Acknowledge(now_ns=t, who=WHO, comment="seen")


def shelve(t: int = T0, duration_s: float = 3600) -> Shelve:
    return Shelve(now_ns=t, who=WHO, reason="load cell fault", duration_s=duration_s)


def run(record: AlarmRecord, *events) -> tuple[AlarmRecord, list]:
    """Apply events in order, each must be accepted; returns the record and all effects."""
    effects: list = []
    for event in events:
        result = apply(record, event)
        assert isinstance(result, Transition), (event, result)
        assert invariant_violation(result.record) is None, (event, result.record)
        record = result.record
        effects.extend(result.effects)
    return record, effects


def fresh(*, latched: bool = False) -> AlarmRecord:
    return AlarmRecord.new("rig1.hookload.overload", latched=latched, max_shelve_s=4 * 3600)


# Start states: name -> (latched, path from a fresh alarm, expected state after the path)
STARTS = {
    "N": (False, [], LifecycleState.NORMAL),
    "AU": (False, [active()], LifecycleState.ACTIVE_UNACKED),
    "AA": (False, [active(), ack()], LifecycleState.ACTIVE_ACKED),
    "RU": (False, [active(), normal()], LifecycleState.RTN_UNACKED),
    "N/L": (True, [], LifecycleState.NORMAL),
    "AU/L": (True, [active()], LifecycleState.ACTIVE_UNACKED),
    "AA/L": (True, [active(), ack()], LifecycleState.ACTIVE_ACKED),
    "LT/unacked": (True, [active(), normal()], LifecycleState.LATCHED),
    "LT/acked": (True, [active(), ack(), normal()], LifecycleState.LATCHED),
    "SH+": (False, [active(), shelve()], LifecycleState.SHELVED),
    "SH-": (False, [shelve()], LifecycleState.SHELVED),
    "SU+": (False, [active(), Suppress(now_ns=T0, on=True)], LifecycleState.SUPPRESSED_BY_DESIGN),
    "SU-": (False, [Suppress(now_ns=T0, on=True)], LifecycleState.SUPPRESSED_BY_DESIGN),
    "OOS+": (
        False,
        [active(), RemoveFromService(now_ns=T0, who=WHO, reason="sensor")],
        LifecycleState.OUT_OF_SERVICE,
    ),
    "OOS-": (
        False,
        [RemoveFromService(now_ns=T0, who=WHO, reason="sensor")],
        LifecycleState.OUT_OF_SERVICE,
    ),
}

INPUTS = {
    "act": active(T1, value=13.0),
    "rtn": normal(T1),
    "ack": ack(T1),
    "reset": Reset(now_ns=T1, who=WHO, comment="checked"),
    "shelve": shelve(T1, duration_s=600),
    "unshelve": Unshelve(now_ns=T1, who=WHO),
    "sup_on": Suppress(now_ns=T1, on=True),
    "sup_off": Suppress(now_ns=T1, on=False),
    "oos": RemoveFromService(now_ns=T1, who=WHO, reason="calibration"),
    "rts": ReturnToService(now_ns=T1, who=WHO),
    "tick": Tick(now_ns=T1),
    "expire": Tick(now_ns=FAR),
}

# Expected outcome per cell: "-" no-op (same record, no effects), "!" Rejected, or
# "STATE:EFFECTS" with effect letters in order: A Annunciate, C Clear, J Journal.
STATE = {
    "N": LifecycleState.NORMAL,
    "AU": LifecycleState.ACTIVE_UNACKED,
    "AA": LifecycleState.ACTIVE_ACKED,
    "RU": LifecycleState.RTN_UNACKED,
    "LT": LifecycleState.LATCHED,
    "SH": LifecycleState.SHELVED,
    "SU": LifecycleState.SUPPRESSED_BY_DESIGN,
    "OOS": LifecycleState.OUT_OF_SERVICE,
}
# fmt: off
COLUMNS = ["act", "rtn", "ack", "reset", "shelve", "unshelve", "sup_on", "sup_off", "oos", "rts",
           "tick", "expire"]
TABLE = {
    #              act   rtn    ack   reset shelve unshelve sup_on sup_off oos   rts    tick expire
    "N":          "AU:A  -      !     !     SH:J   !        SU:    -       OOS:J !      -    -",
    "AU":         "-     RU:C   AA:J  !     SH:J   !        SU:    -       OOS:J !      -    -",
    "AA":         "-     N:C    !     !     SH:J   !        SU:    -       OOS:J !      -    -",
    "RU":         "AU:A  -      N:J   !     SH:J   !        SU:    -       OOS:J !      -    -",
    "N/L":        "AU:A  -      !     !     SH:J   !        SU:    -       OOS:J !      -    -",
    "AU/L":       "-     LT:    AA:J  !     SH:J   !        SU:    -       OOS:J !      -    -",
    "AA/L":       "-     LT:    !     !     SH:J   !        SU:    -       OOS:J !      -    -",
    "LT/unacked": "AU:A  -      LT:J  N:JC  SH:J   !        SU:    -       OOS:J !      -    -",
    "LT/acked":   "AU:A  -      !     N:JC  SH:J   !        SU:    -       OOS:J !      -    -",
    "SH+":        "SH:   SH:    !     !     SH:J   AU:JA    SU:    -       OOS:J !      -    AU:A",
    "SH-":        "SH:   -      !     !     SH:J   N:J      SU:    -       OOS:J !      -    N:",
    "SU+":        "SU:   SU:    !     !     SU:J   !        -      AU:A    OOS:J !      -    -",
    "SU-":        "SU:   -      !     !     SU:J   !        -      N:      OOS:J !      -    -",
    "OOS+":       "OOS:  OOS:   !     !     !      !        OOS:   -       !     AU:JA  -    -",
    "OOS-":       "OOS:  -      !     !     !      !        OOS:   -       !     N:J    -    -",
}
# fmt: on
LETTER = {Annunciate: "A", Clear: "C", Journal: "J"}
CASES = [
    pytest.param(start, column, cell, id=f"{start}-{column}")
    for start, row in TABLE.items()
    for column, cell in zip(COLUMNS, row.split(), strict=True)
]


def start_record(name: str) -> AlarmRecord:
    latched, path, expected = STARTS[name]
    record, _ = run(fresh(latched=latched), *path)
    assert record.state is expected
    return record


def test_table_covers_every_state_and_every_input():
    assert set(TABLE) == set(STARTS)
    assert all(len(row.split()) == len(COLUMNS) for row in TABLE.values())
    assert set(COLUMNS) == set(INPUTS)
    assert {expected for _, _, expected in STARTS.values()} == set(LifecycleState)


@pytest.mark.parametrize(("start", "column", "expected"), CASES)
def test_transition_table(start, column, expected):
    before = start_record(start)
    result = apply(before, INPUTS[column])
    if expected == "!":
        assert isinstance(result, Rejected)
        assert result.reason
        return
    assert isinstance(result, Transition)
    assert invariant_violation(result.record) is None
    if expected == "-":
        assert result.record == before
        assert result.effects == ()
        return
    state, letters = expected.split(":")
    assert result.record.state is STATE[state]
    assert "".join(LETTER[type(e)] for e in result.effects) == letters
    assert result.record != before
    assert result.record.last_transition_ns == INPUTS[column].now_ns
    announced = sum(isinstance(e, Annunciate) for e in result.effects)
    assert result.record.annunciations == before.annunciations + announced


def test_new_alarm_annunciates_with_value_limit_and_priority():
    record, effects = run(fresh(), active(T0, value=12.5))
    assert effects == [
        Annunciate(
            alarm_id="rig1.hookload.overload",
            priority="critical",
            value=12.5,
            limit=10.0,
            reason=AnnounceReason.NEW,
            ts_ns=T0,
        )
    ]
    assert (record.active, record.acked, record.activations, record.annunciations) == (
        True,
        False,
        1,
        1,
    )


def test_acknowledge_journals_who_and_comment():
    _, effects = run(fresh(), active(T0), ack(T1))
    assert effects[-1] == Journal(
        alarm_id="rig1.hookload.overload",
        action=Action.ACKNOWLEDGE,
        who=WHO,
        comment="seen",
        ts_ns=T1,
    )


def test_reactivation_from_rtn_unacked_reannounces_as_reactivated():
    _, effects = run(fresh(), active(T0), normal(T0 + S), active(T0 + 2 * S))
    assert [type(e) for e in effects] == [Annunciate, Clear, Annunciate]
    assert effects[-1].reason is AnnounceReason.REACTIVATED


def test_chattering_while_acked_annunciates_every_excursion():
    record, _ = run(fresh(), active(T0), ack(T0))
    for i in range(1, 4):
        record, cycle = run(record, normal(T0 + 2 * i * S), active(T0 + (2 * i + 1) * S))
        assert [type(e) for e in cycle] == [Clear, Annunciate]
        assert cycle[1].reason is AnnounceReason.NEW
        assert record.state is LifecycleState.ACTIVE_UNACKED
        record, _ = run(record, ack(T0 + (2 * i + 1) * S))
    assert (record.activations, record.annunciations) == (4, 4)


def test_chattering_unacked_reannounces_and_shelving_silences_it():
    record, _ = run(fresh(), active(T0))
    record, chatter = run(record, normal(T0 + S), active(T0 + 2 * S), normal(T0 + 3 * S))
    assert [type(e) for e in chatter] == [Clear, Annunciate, Clear]
    record, _ = run(record, shelve(T0 + 4 * S, duration_s=60))
    flapping = [ev for i in range(5, 15, 2) for ev in (active(T0 + i * S), normal(T0 + i * S + S))]
    record, silent = run(record, *flapping)
    assert silent == []
    assert record.state is LifecycleState.SHELVED
    assert record.activations == 2 + 5  # tracked while shelved
    assert record.annunciations == 2


def test_shelve_expiry_reannounces_when_process_still_active():
    record, _ = run(fresh(), active(T0), ack(T0), shelve(T0, duration_s=60))
    assert record.shelved_until_ns == T0 + 60 * S
    assert apply(record, Tick(now_ns=T0 + 60 * S - 1)) == Transition(record)
    record, effects = run(record, Tick(now_ns=T0 + 60 * S))
    assert record.state is LifecycleState.ACTIVE_UNACKED
    assert record.shelved_until_ns is None
    assert [(type(e), e.reason) for e in effects] == [(Annunciate, AnnounceReason.SHELVE_EXPIRED)]


def test_shelve_expiry_with_process_normal_goes_normal_silently():
    record, _ = run(fresh(), active(T0), shelve(T0, duration_s=60), normal(T0 + S))
    record, effects = run(record, Tick(now_ns=T0 + 61 * S))
    assert (record.state, effects) == (LifecycleState.NORMAL, [])


def test_due_expiry_is_applied_before_any_other_input():
    record, _ = run(fresh(), active(T0), shelve(T0, duration_s=60))
    record, effects = run(record, ack(T0 + 61 * S))  # no tick came in between
    assert record.state is LifecycleState.ACTIVE_ACKED
    assert [type(e) for e in effects] == [Annunciate, Journal]
    assert isinstance(apply(record, Unshelve(now_ns=T0 + 62 * S, who=WHO)), Rejected)


def test_shelf_outlasts_suppression_and_expires_underneath_it():
    record, _ = run(fresh(), active(T0), shelve(T0, 60), Suppress(now_ns=T0 + S, on=True))
    assert record.state is LifecycleState.SUPPRESSED_BY_DESIGN
    back, effects = run(record, Suppress(now_ns=T0 + 2 * S, on=False))
    assert (back.state, effects) == (LifecycleState.SHELVED, [])
    expired, effects = run(record, Tick(now_ns=T0 + 61 * S))
    assert (expired.state, expired.shelved_until_ns, effects) == (
        LifecycleState.SUPPRESSED_BY_DESIGN,
        None,
        [],
    )
    _, effects = run(expired, Suppress(now_ns=T0 + 62 * S, on=False))
    assert [(type(e), e.reason) for e in effects] == [(Annunciate, AnnounceReason.UNSUPPRESSED)]


def test_removal_from_service_discards_shelf_and_outranks_suppression():
    oos = RemoveFromService(now_ns=T0, who=WHO, reason="sensor replaced")
    record, _ = run(fresh(), shelve(T0), oos, Suppress(now_ns=T0, on=True), active(T0 + S))
    assert (record.state, record.shelved_until_ns) == (LifecycleState.OUT_OF_SERVICE, None)
    record, effects = run(record, ReturnToService(now_ns=T0 + 2 * S, who=WHO))
    assert (record.state, [type(e) for e in effects]) == (
        LifecycleState.SUPPRESSED_BY_DESIGN,
        [Journal],
    )


@pytest.mark.parametrize(
    ("latched", "path", "fragment"),
    [
        (False, [active(), normal()], "only to latched"),
        (True, [active()], "still active"),
        (True, [active(), ack()], "still active"),
        (True, [], "not latched"),
        (True, [active(), normal(), shelve()], "shelved"),
    ],
)
def test_reset_rules(latched, path, fragment):
    record, _ = run(fresh(latched=latched), *path)
    result = apply(record, Reset(now_ns=T1, who=WHO))
    assert isinstance(result, Rejected)
    assert fragment in result.reason


def test_latched_alarm_stays_annunciated_until_reset_then_clears():
    record, effects = run(fresh(latched=True), active(T0), normal(T0 + S))
    assert [type(e) for e in effects] == [Annunciate]  # no Clear: still latched
    assert (record.state, record.active, record.acked) == (LifecycleState.LATCHED, False, False)
    record, effects = run(record, ack(T0 + 2 * S))
    assert (record.state, record.acked) == (LifecycleState.LATCHED, True)
    record, effects = run(record, Reset(now_ns=T0 + 3 * S, who=WHO, comment="load checked"))
    assert record.state is LifecycleState.NORMAL
    assert [type(e) for e in effects] == [Journal, Clear]
    assert effects[0].action is Action.RESET and effects[0].comment == "load checked"


def test_reset_of_unacked_latched_alarm_implies_acknowledge():
    record, _ = run(fresh(latched=True), active(T0), normal(T0 + S), Reset(now_ns=T1, who=WHO))
    assert (record.state, record.acked) == (LifecycleState.NORMAL, True)


@pytest.mark.parametrize(
    "event",
    [
        shelve(T1, duration_s=4 * 3600 + 1),
        shelve(T1, duration_s=0),
        shelve(T1, duration_s=-5),
        shelve(T1, duration_s=math.nan),
        shelve(T1, duration_s=math.inf),
        Shelve(now_ns=T1, who=WHO, reason="  ", duration_s=60),
        Shelve(now_ns=T1, who="", reason="noisy", duration_s=60),
        Acknowledge(now_ns=T1, who=" "),
        RemoveFromService(now_ns=T1, who=WHO, reason=""),
    ],
)
def test_invalid_commands_are_rejected_not_raised(event):
    record, _ = run(fresh(), active(T0))
    assert isinstance(apply(record, event), Rejected)


def test_shelve_up_to_the_maximum_is_accepted():
    record, _ = run(fresh(), active(T0), shelve(T1, duration_s=4 * 3600))
    assert record.shelved_until_ns == T1 + 4 * 3600 * S


def test_process_inputs_reject_non_finite_values_at_construction():
    with pytest.raises(ValueError, match="finite"):
        ProcessActive(now_ns=T0, value=math.nan, limit=1.0)
    with pytest.raises(ValueError, match="priority"):
        ProcessActive(now_ns=T0, value=1.0, limit=1.0, priority="urgent")  # type: ignore[arg-type]


def test_replayed_activation_does_not_refire():
    record, _ = run(fresh(), active(T0), ack(T0 + S))
    assert apply(record, active(T0 + 2 * S, value=20.0)) == Transition(record)


# --- suppression ending, and the process (issue 13) -------------------------------------

T2 = T1 + 5 * S
SUP_ON = Suppress(now_ns=T0, on=True)
OOS = RemoveFromService(now_ns=T0, who=WHO, reason="sensor")
# What the process is when the suppression ends: not the 12.0 / 10.0 / critical stored.
NOW_ACTIVE = ProcessActive(now_ns=T1, value=13.5, limit=11.0, priority="high")
# A suppressed active alarm: name -> (latched, path, hiding state left after suppression;
# None: none, the alarm is visible again).
SUPPRESSED = {
    "AU": (False, [active(), SUP_ON], None),
    "AA": (False, [active(), ack(), SUP_ON], None),
    "AU/L": (True, [active(), SUP_ON], None),
    "LT": (True, [active(), normal(), SUP_ON, active()], None),  # bad again while hidden
    "SH": (False, [active(), shelve(), SUP_ON], LifecycleState.SHELVED),
    "OOS": (False, [active(), OOS, SUP_ON], LifecycleState.OUT_OF_SERVICE),
}
# How the suppression's end and the process input are ordered (the manager gives the
# process input first when one change carries both).
ENDINGS = {
    "end+still-active": [NOW_ACTIVE, Suppress(now_ns=T1, on=False)],
    "end+clear": [normal(T1), Suppress(now_ns=T1, on=False)],
    "clear, end later": [normal(T1), Suppress(now_ns=T2, on=False)],
}


def suppressed(start: str) -> AlarmRecord:
    latched, path, _ = SUPPRESSED[start]
    record, _ = run(fresh(latched=latched), *path)
    assert (record.suppressed, record.active, record.value) == (True, True, 12.0)
    assert record.state in {LifecycleState.SUPPRESSED_BY_DESIGN, LifecycleState.OUT_OF_SERVICE}
    return record


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("start", list(SUPPRESSED))
def test_suppression_ending_acts_on_the_process_as_it_is_then(start, ending):
    before = suppressed(start)
    after, effects = run(before, *ENDINGS[ending])
    still_active = ending == "end+still-active"
    assert (after.suppressed, after.active) == (False, still_active)
    assert after.value == (13.5 if still_active else 9.0)
    assert after.activations == before.activations  # no new excursion
    hidden = SUPPRESSED[start][2]
    if hidden is not None:  # still hidden: nothing is announced yet
        assert (after.state, effects) == (hidden, [])
    elif still_active:
        assert effects == [
            Annunciate(
                alarm_id="rig1.hookload.overload",
                priority="high",
                value=13.5,
                limit=11.0,
                reason=AnnounceReason.UNSUPPRESSED,
                ts_ns=T1,
            )
        ]
        assert (after.state, after.acked) == (LifecycleState.ACTIVE_UNACKED, False)
    else:  # cleared while suppressed: back to normal silently, nothing owed, no latch
        assert (after.state, after.acked, effects) == (LifecycleState.NORMAL, True, [])
    announced = sum(isinstance(e, Annunciate) for e in effects)
    assert after.annunciations == before.annunciations + announced


@pytest.mark.parametrize(
    ("start", "state", "letters"),
    [
        ("AU", LifecycleState.RTN_UNACKED, "AC"),
        ("AA", LifecycleState.RTN_UNACKED, "AC"),  # the ack was dropped on hiding
        ("AU/L", LifecycleState.LATCHED, "A"),  # latched: stays annunciated until reset
        ("LT", LifecycleState.LATCHED, "A"),
        ("SH", LifecycleState.SHELVED, ""),
        ("OOS", LifecycleState.OUT_OF_SERVICE, ""),
    ],
)
def test_suppression_ending_then_a_clear_later(start, state, letters):
    """The process was still active when the suppression ended: a real announcement
    (with the stored value, which nothing has changed), then the clear on its own."""
    after, effects = run(suppressed(start), Suppress(now_ns=T1, on=False), normal(T2))
    assert (after.state, after.active, after.value) == (state, False, 9.0)
    assert "".join(LETTER[type(e)] for e in effects) == letters
    if letters:
        assert (effects[0].reason, effects[0].value, effects[0].ts_ns) == (
            AnnounceReason.UNSUPPRESSED,
            12.0,
            T1,
        )
    if "C" in letters:
        assert (effects[1].value, effects[1].ts_ns) == (9.0, T2)


@pytest.mark.parametrize(
    ("start", "release", "reason"),
    [
        ("SH", Tick(now_ns=FAR), AnnounceReason.SHELVE_EXPIRED),
        ("OOS", ReturnToService(now_ns=FAR, who=WHO), AnnounceReason.RETURNED_TO_SERVICE),
    ],
)
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_the_last_hiding_condition_announces_the_process_as_it_is_then(
    start, release, reason, ending
):
    """Suppression ended under a shelf or out of service: its release decides."""
    hidden, _ = run(suppressed(start), *ENDINGS[ending])
    after, effects = run(hidden, release)
    announced = [e for e in effects if isinstance(e, Annunciate)]
    if ending == "end+still-active":
        assert [(e.reason, e.value, e.limit, e.priority) for e in announced] == [
            (reason, 13.5, 11.0, "high")
        ]
        assert after.state is LifecycleState.ACTIVE_UNACKED
    else:
        assert (announced, after.state, after.acked) == ([], LifecycleState.NORMAL, True)


@pytest.mark.parametrize("start", ["SH+", "SU+", "OOS+"])
def test_a_hidden_active_process_tracks_its_value_without_effects(start):
    before = start_record(start)
    after, effects = run(before, NOW_ACTIVE)
    assert effects == []
    assert (after.value, after.limit, after.priority) == (13.5, 11.0, "high")
    assert (after.activations, after.annunciations) == (
        before.activations,
        0 + before.annunciations,
    )
    assert apply(after, NOW_ACTIVE) == Transition(after)  # the same numbers again: no-op


@pytest.mark.parametrize("start", list(STARTS))
def test_persistence_round_trip_through_json(start):
    record = start_record(start)
    data = json.loads(json.dumps(record.to_dict(), allow_nan=False))
    restored = AlarmRecord.from_dict(data)
    assert restored == record
    # The restored record behaves the same: same outcome for every input.
    for event in INPUTS.values():
        assert apply(restored, event) == apply(record, event)


def test_round_trip_keeps_counts_and_shelf_after_a_long_history():
    record, _ = run(
        fresh(),
        active(T0),
        normal(T0 + S),
        active(T0 + 2 * S),
        ack(T0 + 3 * S),
        shelve(T0 + 4 * S, duration_s=90.5),
    )
    restored = AlarmRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert restored == record
    assert (restored.activations, restored.annunciations) == (2, 2)
    assert restored.shelved_until_ns == T0 + 4 * S + 90_500_000_000


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("v", 2),
        ("state", "alarmed"),
        ("active", 1),
        ("activations", True),
        ("priority", "urgent"),
        ("value", "12"),
        ("max_shelve_s", 0),
        ("state", "normal"),  # but active is true: inconsistent
        ("acked", True),  # ACTIVE_UNACKED cannot be acked
        ("latched", True),  # fine for ACTIVE_UNACKED: must be accepted
    ],
)
def test_from_dict_rejects_untrustworthy_records(key, value):
    record, _ = run(fresh(), active(T0))
    data = {**record.to_dict(), key: value}
    if key == "latched":
        assert AlarmRecord.from_dict(data).latched is True
        return
    with pytest.raises(RecordError):
        AlarmRecord.from_dict(data)


def test_from_dict_rejects_missing_and_extra_keys():
    data = fresh().to_dict()
    with pytest.raises(RecordError, match="keys"):
        AlarmRecord.from_dict({k: v for k, v in data.items() if k != "acked"})
    with pytest.raises(RecordError, match="keys"):
        AlarmRecord.from_dict({**data, "note": "x"})


def test_hidden_records_must_match_their_strongest_condition():
    record, _ = run(fresh(), shelve(T0))
    data = {**record.to_dict(), "suppressed": True}  # state says SHELVED
    with pytest.raises(RecordError, match="strongest"):
        AlarmRecord.from_dict(data)


def test_new_rejects_bad_configuration():
    with pytest.raises(ValueError, match="max_shelve_s"):
        AlarmRecord.new("a", max_shelve_s=0)
    with pytest.raises(ValueError, match="alarm_id"):
        AlarmRecord.new("")
