"""The agent's durable spool: order, ids, bounds, crash safety, damaged files (real files)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from derrick.spool.store import Dropped, Entry, Priority, Spool, SpoolError

REPO = Path(__file__).resolve().parent.parent
T, S, A = Priority.TELEMETRY, Priority.STATUS, Priority.ALARM
HOUR = 3600.0


def item(
    topic: str, priority: Priority = T, size: int = 100, created_ns: int | None = None
) -> tuple[str, bytes, Priority, bool, int]:
    """A message of exactly ``size`` counted bytes (topic + payload) whose payload names it."""
    payload = topic.encode().ljust(size - len(topic.encode()), b".")
    ts = time.time_ns() if created_ns is None else created_ns
    return (topic, payload, priority, priority is not T, ts)


def topics(spool: Spool) -> list[str]:
    return [entry.topic for entry in spool.read(limit=10_000)]


def test_order_and_content_survive_batches_and_reopen(tmp_path):
    path = tmp_path / "sub" / "dir" / "spool.db"  # parents are created
    spool = Spool(path, max_bytes=1 << 20, max_age_s=HOUR)
    assert spool.last_id() == 0
    sent = [item(f"m{i}", Priority(i % 3)) for i in range(25)]
    for start in range(0, 25, 7):
        spool.append(sent[start : start + 7])
    spool.close()

    with Spool(path, max_bytes=1 << 20, max_age_s=HOUR) as spool:
        entries = spool.read(limit=100)
        assert [(e.topic, e.payload, e.priority, e.retain, e.created_ns) for e in entries] == sent
        assert all(isinstance(e.priority, Priority) for e in entries)
        ids = [e.id for e in entries]
        assert ids == sorted(ids) and len(set(ids)) == 25
        assert spool.last_id() == ids[-1]


def test_ids_are_never_reused_after_removal_and_reopen(tmp_path):
    path = tmp_path / "spool.db"
    with Spool(path, 1 << 20, HOUR) as spool:
        spool.append([item("a"), item("b"), item("c")])
        spool.remove([e.id for e in spool.read()])
        assert spool.read() == []
        assert spool.last_id() == 3
    with Spool(path, 1 << 20, HOUR) as spool:
        assert spool.last_id() == 3
        spool.append([item("d")])
        assert [(e.id, e.topic) for e in spool.read()] == [(4, "d")]


def test_read_windows_and_remove(tmp_path):
    with Spool(tmp_path / "spool.db", 1 << 20, HOUR) as spool:
        spool.append([item(f"m{i}") for i in range(1, 11)])  # ids 1..10

        def ids(**kwargs: int) -> list[int]:
            return [e.id for e in spool.read(**kwargs)]

        assert ids() == list(range(1, 11))
        assert ids(limit=3) == [1, 2, 3]
        assert ids(after_id=3, limit=3) == [4, 5, 6]
        assert ids(after_id=3, up_to_id=5) == [4, 5]
        assert ids(after_id=8, limit=5, up_to_id=100) == [9, 10]
        assert ids(after_id=10) == []
        assert ids(up_to_id=0) == []

        spool.remove([2, 4, 4, 99, -1])  # duplicates and unknown ids are ignored
        assert ids() == [1, 3, 5, 6, 7, 8, 9, 10]
        assert ids(after_id=1, limit=2) == [3, 5]
        assert spool.stats().depth == 8
        assert spool.stats().bytes == 800
        spool.remove([])
        spool.remove(iter(range(1, 2000)))  # more ids than one IN (...) chunk
        assert ids() == []
        assert spool.stats().bytes == 0


def test_byte_bound_drops_oldest_telemetry_then_status_then_alarm(tmp_path):
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=1000, max_age_s=HOUR)  # room for ten 100-byte messages
    assert (
        spool.append(
            [
                item(n, p)
                for n, p in [
                    ("t1", T),
                    ("s1", S),
                    ("t2", T),
                    ("a1", A),
                    ("t3", T),
                    ("s2", S),
                    ("t4", T),
                    ("a2", A),
                    ("s3", S),
                    ("a3", A),
                ]
            ]
        )
        == []
    )  # exactly full

    assert spool.append([item("t5", T)]) == [Dropped({T: 1}, "bytes", 0)]
    assert topics(spool) == ["s1", "t2", "a1", "t3", "s2", "t4", "a2", "s3", "a3", "t5"]

    # Status arrives: still telemetry left, so telemetry goes, oldest first.
    assert spool.append([item("s4", S), item("a4", A)]) == [Dropped({T: 2}, "bytes", 0)]
    assert topics(spool) == ["s1", "a1", "s2", "t4", "a2", "s3", "a3", "t5", "s4", "a4"]

    # Three more: the last two telemetry, then (none left) the oldest status.
    drops = spool.append([item("a5", A), item("a6", A), item("a7", A)])
    assert drops == [Dropped({T: 2, S: 1}, "bytes", 0)]
    assert drops[0].total() == 3
    assert topics(spool) == ["a1", "s2", "a2", "s3", "a3", "s4", "a4", "a5", "a6", "a7"]

    # Alarms go only when nothing else is left, oldest first.
    drops = spool.append([item(f"b{i}", A) for i in range(5)])
    assert drops == [Dropped({S: 3, A: 2}, "bytes", 0)]
    assert topics(spool) == ["a3", "a4", "a5", "a6", "a7", "b0", "b1", "b2", "b3", "b4"]
    assert spool.stats().bytes == 1000

    cumulative = {T: 5, S: 4, A: 2}
    assert spool.stats().dropped == cumulative
    spool.close()
    with Spool(path, max_bytes=1000, max_age_s=HOUR) as spool:
        assert spool.stats().dropped == cumulative
        assert spool.stats().bytes == 1000


def test_a_batch_larger_than_the_bound_drops_part_of_itself(tmp_path):
    with Spool(tmp_path / "spool.db", max_bytes=1000, max_age_s=HOUR) as spool:
        spool.append([item("old-alarm", A)])
        drops = spool.append([item(f"n{i}") for i in range(15)])
        assert drops == [Dropped({T: 6}, "bytes", from_batch=6)]
        assert topics(spool) == ["old-alarm"] + [f"n{i}" for i in range(6, 15)]


def test_shrinking_max_bytes_is_enforced_at_the_next_enforce(tmp_path):
    path = tmp_path / "spool.db"
    with Spool(path, max_bytes=1000, max_age_s=HOUR) as spool:
        spool.append([item("s", S)] + [item(f"t{i}") for i in range(5)])
    with Spool(path, max_bytes=300, max_age_s=HOUR) as spool:
        assert spool.enforce() == [Dropped({T: 3}, "bytes")]
        assert topics(spool) == ["s", "t3", "t4"]


def test_age_bound_drops_every_priority(tmp_path):
    now = time.time_ns()
    sec = 1_000_000_000
    with Spool(tmp_path / "spool.db", max_bytes=1 << 20, max_age_s=60) as spool:
        spool.append(
            [
                item("alarm-50s", A, created_ns=now - 50 * sec),
                item("tele-40s", T, created_ns=now - 40 * sec),
                item("status-10s", S, created_ns=now - 10 * sec),
                item("tele-now", T, created_ns=now),
            ]
        )
        assert spool.enforce(now_ns=now) == []
        drops = spool.enforce(now_ns=now + 45 * sec)  # alarm is 95 s old, tele 85 s
        assert drops == [Dropped({A: 1, T: 1}, "age")]
        assert topics(spool) == ["status-10s", "tele-now"]
        assert spool.enforce(now_ns=now + 61 * sec) == [Dropped({S: 1, T: 1}, "age")]
        assert topics(spool) == []

        # A message already too old when appended is dropped by that append.
        drops = spool.append(
            [item("stale", A, created_ns=time.time_ns() - 2 * 60 * sec), item("fresh", T)]
        )
        assert drops == [Dropped({A: 1}, "age", from_batch=1)]
        assert topics(spool) == ["fresh"]
        assert spool.stats().dropped == {T: 2, S: 1, A: 2}


def test_stats_depth_bytes_and_oldest_age(tmp_path):
    t0 = time.time_ns()
    with Spool(tmp_path / "spool.db", max_bytes=1 << 20, max_age_s=HOUR) as spool:
        empty = spool.stats()
        assert (empty.depth, empty.bytes, empty.oldest_age_s, empty.last_id) == (0, 0, None, 0)
        assert empty.dropped == {T: 0, S: 0, A: 0}
        spool.append(
            [
                ("kran/öl", b"x" * 50, T, False, t0),  # topic counted in UTF-8: 8 bytes
                ("b", b"y" * 1000, A, True, t0 + 2_000_000_000),
            ]
        )
        stats = spool.stats(now_ns=t0 + 2_500_000_000)
        assert (stats.depth, stats.bytes, stats.last_id) == (2, 58 + 1001, 2)
        assert stats.oldest_age_s == pytest.approx(2.5)
        assert stats.file_bytes > 0
        spool.remove([1])
        stats = spool.stats(now_ns=t0 + 2_500_000_000)
        assert (stats.depth, stats.bytes) == (1, 1001)
        assert stats.oldest_age_s == pytest.approx(0.5)
        assert spool.stats(now_ns=t0).oldest_age_s == 0.0  # clock went back: not negative


def test_running_totals_match_the_file_after_a_random_workload(tmp_path):
    path = tmp_path / "spool.db"
    rng = random.Random(7)
    now = time.time_ns()
    spool = Spool(path, max_bytes=50_000, max_age_s=HOUR)
    for step in range(300):
        action = rng.random()
        if action < 0.6:
            spool.append(
                [
                    item(
                        f"s{step}-{i}",
                        Priority(rng.randrange(3)),
                        rng.randrange(20, 2000),
                        created_ns=now - rng.randrange(0, 7200) * 1_000_000_000,
                    )
                    for i in range(rng.randrange(1, 20))
                ]
            )
        elif action < 0.9:
            queued = [e.id for e in spool.read(limit=1000)]
            spool.remove([*rng.sample(queued, min(len(queued), rng.randrange(0, 30))), 10**9])
        else:
            spool.enforce()
        assert spool.stats().bytes <= 50_000
    before = spool.stats(now_ns=now)
    spool.close()
    with Spool(path, max_bytes=50_000, max_age_s=HOUR) as spool:
        after = spool.stats(now_ns=now)  # counted from the table on open
        assert replace(after, file_bytes=0) == replace(before, file_bytes=0)
        assert before.depth == len(spool.read(limit=100_000))


def test_space_is_given_back_in_steps_once_drained(tmp_path):
    path = tmp_path / "spool.db"
    with Spool(path, 1 << 30, HOUR, keep_free_bytes=64 << 10, reclaim_step_bytes=1 << 20) as spool:
        for start in range(0, 4000, 100):
            spool.append([item(f"m{start + i}", size=1000) for i in range(100)])
        assert spool.reclaim() == 0  # a backlog is queued: nothing to give back
        spool.enforce()
        assert spool.stats().file_bytes > 4_000_000
        spool.remove(e.id for e in spool.read(limit=3950))  # drained but for 50 messages

        before = spool.stats().file_bytes
        assert spool.reclaim() == 1 << 20  # one bounded step per call
        assert before - spool.stats().file_bytes >= 1 << 20
        steps = 1
        while spool.reclaim():
            steps += 1
        assert 4 <= steps <= 8  # ~5.5 MB in 1 MiB steps
        spool.enforce()
        assert path.stat().st_size < 512 << 10
        assert spool.stats().file_bytes == path.stat().st_size  # WAL truncated too
        assert topics(spool) == [f"m{i}" for i in range(3950, 4000)]  # survivors intact
        assert all(e.payload.startswith(e.topic.encode()) for e in spool.read(limit=100))
    with Spool(path, 1 << 30, HOUR) as spool:
        assert len(spool.read(limit=100)) == 50


CHILD = """
import sys, time
from pathlib import Path
from derrick.spool.store import Priority, Spool
spool = Spool(Path(sys.argv[1]), 1 << 30, 1e9)
batch = 0
while True:
    spool.append([
        (f"b{batch}", f"{batch}:{i}:".encode() + bytes([batch % 251]) * 3000,
         Priority(i % 3), i % 2 == 0, time.time_ns())
        for i in range(10)
    ])
    last = spool.last_id()
    print("appended", batch, last, flush=True)
    if batch % 3 == 0:
        spool.remove(range(last - 9, last + 1))
        print("removed", batch, flush=True)
    batch += 1
"""


@pytest.mark.parametrize("kill_after", [1, 23, 60])
def test_kill_9_loses_no_committed_message(tmp_path, kill_after):
    path = tmp_path / "spool.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    appended: dict[int, int] = {}  # batch -> last id, as reported after the commit
    removed: set[int] = set()

    def take(line: str) -> None:
        words = line.split()
        if words[:1] == ["appended"]:
            appended[int(words[1])] = int(words[2])
        elif words[:1] == ["removed"]:
            removed.add(int(words[1]))

    try:
        while len(appended) < kill_after:
            line = child.stdout.readline()
            assert line, f"child ended early: {child.stderr.read()}"
            take(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        # What it reported before the kill but we had not read yet: a removal right
        # after the last append we waited for, say.
        for line in child.stdout.read().splitlines():
            take(line)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    with Spool(path, 1 << 30, 1e9) as spool:
        entries = spool.read(limit=100_000)
        assert spool.last_id() >= max(appended.values())
    by_batch: dict[int, list[Entry]] = {}
    for entry in entries:
        by_batch.setdefault(int(entry.topic[1:]), []).append(entry)

    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert list(by_batch) == sorted(by_batch)  # batches in append order
    for batch, last in appended.items():
        if batch in removed:
            assert batch not in by_batch
        else:
            assert [e.id for e in by_batch[batch]] == list(range(last - 9, last + 1))
    for batch, got in by_batch.items():  # reported or not: a batch is all there or absent
        assert len(got) == 10
        for i, entry in enumerate(got):
            assert entry.payload == f"{batch}:{i}:".encode() + bytes([batch % 251]) * 3000
            assert (entry.priority, entry.retain) == (Priority(i % 3), i % 2 == 0)


def test_a_file_that_is_not_a_database_is_moved_aside(tmp_path):
    path = tmp_path / "spool.db"
    garbage = bytes(random.Random(1).randrange(256) for _ in range(10_000))
    path.write_bytes(garbage)
    with capture_logs() as logs:
        spool = Spool(path, 1 << 20, HOUR)
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("spool.db.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_bytes() == garbage
    assert errors[0]["path"] == str(path)
    assert errors[0]["moved_to"] == str(aside[0])
    with spool:  # a fresh, working spool
        assert spool.read() == [] and spool.last_id() == 0
        spool.append([item("after")])
        assert topics(spool) == ["after"]


def test_a_damaged_spool_is_caught_by_the_check_at_open(tmp_path):
    path = tmp_path / "spool.db"
    with Spool(path, 1 << 20, HOUR) as spool:
        spool.append([item(f"m{i}", size=1000) for i in range(200)])
    size = path.stat().st_size
    with path.open("r+b") as f:  # keep the header page, overwrite the rest
        f.seek(4096)
        f.write(b"\xab" * (size - 4096))
    with capture_logs() as logs:
        spool = Spool(path, 1 << 20, HOUR)
    with spool:
        assert spool.read() == []
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 1
    assert Path(errors[0]["moved_to"]).read_bytes()[4096:8192] == b"\xab" * 4096


def test_a_foreign_database_is_moved_aside(tmp_path):
    path = tmp_path / "spool.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE unrelated (x)")
    other.commit()
    other.close()
    with capture_logs() as logs, Spool(path, 1 << 20, HOUR) as spool:
        spool.append([item("mine")])
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "spool file unreadable, moved aside; starting an empty spool"
    ]


def test_a_spool_in_use_is_refused_not_moved_aside(tmp_path):
    path = tmp_path / "spool.db"
    with Spool(path, 1 << 20, HOUR) as first:
        first.append([item("kept")])
        with pytest.raises(SpoolError, match="in use"):
            Spool(path, 1 << 20, HOUR)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.db", "spool.db-wal"]
        first.append([item("still working")])
        assert topics(first) == ["kept", "still working"]


def test_a_closed_spool_raises_and_bad_arguments_are_refused(tmp_path):
    spool = Spool(tmp_path / "spool.db", 1 << 20, HOUR)
    spool.close()
    spool.close()
    for call in (spool.read, lambda: spool.append([item("x")]), spool.stats):
        with pytest.raises(SpoolError, match="closed"):
            call()
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(tmp_path / "other.db", 0, HOUR)
    with Spool(tmp_path / "spool.db", 1 << 20, HOUR) as spool:
        with pytest.raises(TypeError, match="bytes"):
            spool.append([("t", "not bytes", T, False, 0)])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="is not a valid Priority"):
            spool.append([item("ok"), ("t", b"x", 7, False, 0)])  # type: ignore[list-item]
        assert spool.read() == []  # nothing of a refused batch is kept
