"""Persisted alarm state: records survive a restart and a kill -9; a bad row is skipped."""

import signal
import subprocess
import sys
import textwrap

from structlog.testing import capture_logs

from collector.alarms.state import AlarmStateStore
from derrick.alarms.lifecycle import (
    Acknowledge,
    AlarmRecord,
    LifecycleState,
    ProcessActive,
    Transition,
    apply,
)


def active(alarm_id: str, acked: bool = False) -> AlarmRecord:
    record = AlarmRecord.new(alarm_id, priority="critical", now_ns=1)
    step = apply(record, ProcessActive(now_ns=2, value=12.5, limit=10.0, priority="critical"))
    assert isinstance(step, Transition)
    if acked:
        step = apply(step.record, Acknowledge(now_ns=3, who="crane op"))
        assert isinstance(step, Transition)
    return step.record


def test_records_survive_a_restart_and_replace_older_ones(tmp_path):
    store = AlarmStateStore(tmp_path / "alarms.db")
    store.save([active("overload:crane-01"), active("gust:crane-01")])
    store.save([active("overload:crane-01", acked=True)])
    store.forget(["gust:crane-01"])
    store.close()
    reopened = AlarmStateStore(tmp_path / "alarms.db")
    records = reopened.load()
    reopened.close()
    assert list(records) == ["overload:crane-01"]
    assert records["overload:crane-01"].state is LifecycleState.ACTIVE_ACKED
    assert records["overload:crane-01"] == active("overload:crane-01", acked=True)


def test_a_save_that_returned_survives_kill_9(tmp_path):
    path = tmp_path / "alarms.db"
    child = textwrap.dedent(
        f"""
        import sys, time
        from tests.test_alarm_state import active
        from collector.alarms.state import AlarmStateStore
        store = AlarmStateStore({str(path)!r})
        for i in range(50):
            store.save([active(f"a{{i}}")])
            print(i, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    saved = [proc.stdout.readline() for _ in range(50)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    assert saved[-1].strip() == "49"
    store = AlarmStateStore(path)
    assert sorted(store.load()) == sorted(f"a{i}" for i in range(50))
    store.close()


def test_a_row_that_no_longer_loads_is_skipped_with_one_error(tmp_path):
    store = AlarmStateStore(tmp_path / "alarms.db")
    store.save([active("good")])
    store._db.execute("INSERT INTO alarms VALUES ('broken', '{\"v\": 99}', 0)")
    store._db.execute("INSERT INTO alarms VALUES ('garbage', 'not json', 0)")
    with capture_logs() as logs:
        records = store.load()
    store.close()
    assert list(records) == ["good"]
    skipped = [e for e in logs if e["event"] == "stored alarm state skipped"]
    assert sorted(e["alarm_id"] for e in skipped) == ["broken", "garbage"]
