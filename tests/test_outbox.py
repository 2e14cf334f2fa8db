"""Queue stage: sequence numbers, and drops at the spool's bound counted and published."""

import asyncio

from structlog.testing import capture_logs

from agent.outbox import COMMIT_LINGER_S, Outbox
from derrick.spool.store import Priority, Spool
from derrick.wire.payloads import AgentEvent, DeviceState, Reading, Telemetry


def readings(n=20):
    return [Reading(tag=f"t{i}", value=float(i), ts_ns=1) for i in range(n)]


def stored(spool):
    return spool.read(after_id=0, limit=100_000)


def test_every_message_is_committed_with_consecutive_seqs(tmp_path):
    with Spool(tmp_path / "s.db", max_bytes=10**7, max_age_s=3600) as spool:
        outbox = Outbox("gw", "site", spool)
        woken = []
        outbox.stored_callback = lambda: woken.append(1)
        for _ in range(5):
            outbox.put_readings("crane-01", "lmi", "crane", readings())
        outbox.put_device_status("crane-01", "lmi", DeviceState.DOWN, "timeout", "127.0.0.1:502")
        entries = stored(spool)
    seqs = [Telemetry.model_validate_json(e.payload).seq for e in entries[:5]]
    assert seqs == [0, 1, 2, 3, 4] and len(woken) == 6
    assert entries[5].topic == "derrick/v1/site/crane-01/lmi/status"
    assert entries[5].retain and entries[5].priority == Priority.STATUS
    assert all(not e.retain and e.priority == Priority.TELEMETRY for e in entries[:5])


def test_drops_at_the_bound_are_counted_logged_once_and_published(tmp_path):
    with Spool(tmp_path / "s.db", max_bytes=20_000, max_age_s=3600) as spool:
        outbox = Outbox("gw", "site", spool)
        outbox.put_device_status("crane-01", "lmi", DeviceState.UP, "", "127.0.0.1:502")
        with capture_logs() as logs:
            for _ in range(200):  # ~1.1 kB each: ten times the bound
                outbox.put_readings("crane-01", "lmi", "crane", readings())
        entries = stored(spool)
        stats = spool.stats()
    assert stats.bytes <= 20_000
    assert outbox.spool_dropped[Priority.TELEMETRY] > 150
    assert outbox.spool_dropped[Priority.STATUS] == 0  # telemetry goes first
    assert any(e.topic.endswith("/lmi/status") for e in entries), "status must outlive telemetry"
    events = [AgentEvent.model_validate_json(e.payload) for e in entries if "/events" in e.topic]
    assert len(events) == 1, "one announcement when dropping starts, then at most one a minute"
    assert events[0].event == "spool_dropped" and events[0].dropped_telemetry >= 1
    warnings = [e for e in logs if e["event"] == "spool full, dropping oldest messages"]
    assert len(warnings) == 1
    seqs = [Telemetry.model_validate_json(e.payload).seq for e in entries if "telemetry" in e.topic]
    assert seqs == sorted(seqs) and seqs[-1] == 199  # the newest kept, the oldest dropped


def test_grouped_telemetry_is_numbered_and_committed_together_in_order(tmp_path):
    """group_per_tick (the agent's way): the polls that end together are committed in one
    transaction and wake the publisher once; nothing is in the spool before, so nothing
    had a number; a status change commits the waiting polls first, keeping the order."""

    async def scenario(spool):
        outbox = Outbox("gw", "site", spool, group_per_tick=True)
        woken = []
        outbox.stored_callback = lambda: woken.append(len(stored(spool)))
        committing = asyncio.create_task(outbox.commit_forever())
        try:
            for device in ("lmi", "slew", "winch"):
                outbox.put_readings("crane-01", device, "crane", readings())
            before = len(stored(spool))
            await asyncio.sleep(COMMIT_LINGER_S * 5)
            grouped = list(woken)
            outbox.put_readings("crane-01", "lmi", "crane", readings())
            outbox.put_device_status("crane-01", "lmi", DeviceState.DOWN, "timeout", "x:502")
            return before, grouped, woken
        finally:
            committing.cancel()

    with Spool(tmp_path / "s.db", max_bytes=10**7, max_age_s=3600) as spool:
        before, grouped, woken = asyncio.run(scenario(spool))
        entries = stored(spool)
    assert before == 0
    assert grouped == [3], "three polls, one transaction, one wake-up"
    assert woken == [3, 4, 5], "the waiting poll goes first, then the status"
    telemetry = [Telemetry.model_validate_json(e.payload) for e in entries[:4]]
    assert [(t.device, t.seq) for t in telemetry] == [
        ("lmi", 0), ("slew", 1), ("winch", 2), ("lmi", 3)
    ]  # fmt: skip
    assert entries[4].topic.endswith("/lmi/status")


def test_a_flush_commits_what_waits_and_nothing_twice(tmp_path):
    with Spool(tmp_path / "s.db", max_bytes=10**7, max_age_s=3600) as spool:
        outbox = Outbox("gw", "site", spool, group_per_tick=True)
        outbox.put_readings("crane-01", "lmi", "crane", readings())
        outbox.put_readings("crane-01", "lmi", "crane", readings())
        assert stored(spool) == []
        outbox.flush()
        outbox.flush()
        entries = stored(spool)
    assert [Telemetry.model_validate_json(e.payload).seq for e in entries] == [0, 1]
