"""Sequence accounting: late numbers fill holes, overdue holes are gaps, repeats count."""

from structlog.testing import capture_logs

from collector.receive import _SEQUENCE
from collector.sequence import SequenceTracker
from derrick.wire.payloads import Reading, Telemetry, mark_historical


def feed(tracker, seqs, boot="b", at=0.0):
    for seq in seqs:
        tracker.observe("gw", boot, seq, at)


def test_in_order_stream_has_no_gaps_or_duplicates():
    tracker = SequenceTracker(grace_s=10)
    feed(tracker, range(100))
    tracker.expire(1000)
    assert (tracker.gaps, tracker.duplicates, tracker.pending) == (0, 0, 0)


def test_live_first_then_backlog_replay_fills_the_hole():
    tracker = SequenceTracker(grace_s=10)
    feed(tracker, range(10))
    feed(tracker, range(50, 60), at=1)  # live data after an outage
    assert tracker.pending == 40
    feed(tracker, range(10, 50), at=5)  # the replayed backlog
    tracker.expire(100)
    assert (tracker.gaps, tracker.duplicates, tracker.pending) == (0, 0, 0)


def test_a_hole_still_open_after_the_grace_period_is_a_gap_logged_once():
    tracker = SequenceTracker(grace_s=10)
    feed(tracker, [0, 1, 5, 6], at=0)
    with capture_logs() as logs:
        tracker.expire(9)
        assert tracker.gaps == 0
        tracker.expire(10)
        tracker.expire(20)
    assert tracker.gaps == 3
    gaps = [e for e in logs if e["event"].startswith("sequence gap")]
    assert len(gaps) == 1 and gaps[0]["where"] == "seq 2..4" and gaps[0]["missing"] == 3


def test_repeats_are_duplicates_and_boots_are_separate():
    tracker = SequenceTracker(grace_s=10)
    feed(tracker, range(5))
    feed(tracker, [3, 4])  # redelivered
    feed(tracker, range(3), boot="new")  # the agent restarted: numbers start again
    assert (tracker.duplicates, tracker.gaps) == (2, 0)


def test_the_group_alarm_session_reads_numbers_from_agent_payloads_without_parsing():
    """receive._SEQUENCE depends on the agent's field order (derrick.wire.payloads.Telemetry)."""
    payload = Telemetry(
        site="s", asset="a", device="d", kind="crane", agent="gw-1.x", boot="5f0c-9", seq=1042,
        readings=[Reading(tag="agent", value=1.0, ts_ns=1)],
    ).model_dump_json().encode()  # fmt: skip
    for raw in (payload, mark_historical(payload)):
        found = _SEQUENCE.search(raw, 0, 600)
        assert found is not None and found.groups() == (b"gw-1.x", b"5f0c-9", b"1042")
