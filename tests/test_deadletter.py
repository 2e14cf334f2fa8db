"""Dead-letter store: records round-trip, files rotate and stay bounded, a killed writer
leaves readable files, and disk trouble is counted and logged once, never raised."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from collector.deadletter import DeadLetters, payload_bytes, read_dead_letters
from collector.validate import Rejected, validate
from derrick.wire.topics import telemetry_topic

TOPIC = telemetry_topic("yard", "crane-01", "lmi")
SECRET = b"SECRET-PAYLOAD-CONTENT"


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob("deadletter-*.jsonl"))


def test_records_round_trip(tmp_path):
    letters = DeadLetters(tmp_path / "dl")
    text = b'{"v": 1, "site": "yard", "note": "caf\xc3\xa9\nnext line"}'
    binary = b"\xff\xfe" + SECRET
    letters.put(TOPIC, text, "schema", "readings[3].value: bad")
    letters.put("odd/topic", binary, "json", "payload is not UTF-8")
    lines = ["telemetry,site=a x=1 1", 'telemetry,site=a x="s" 2']
    letters.put_refused("derrick/v1/a/b/c/telemetry", lines, "field type conflict")
    letters.close()

    first, second, refused = read_dead_letters(tmp_path / "dl")
    assert first["topic"] == TOPIC
    assert first["kind"] == "schema"
    assert first["reason"] == "readings[3].value: bad"
    assert first["payload_encoding"] == "utf-8"
    assert first["payload"] == text.decode()
    assert first["payload_bytes"] == len(text)
    assert first["truncated"] is False
    received = datetime.fromisoformat(first["received_at"])
    assert received.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - received).total_seconds()) < 3600

    assert second["payload_encoding"] == "base64"
    assert payload_bytes(second) == binary
    assert payload_bytes(first) == text

    assert refused["kind"] == "refused"
    assert refused["topic"] == "derrick/v1/a/b/c/telemetry"
    assert refused["reason"] == "field type conflict"
    assert refused["lines"] == 2
    assert refused["payload"].splitlines() == lines
    assert letters.counts == {
        "written": 3,
        "truncated": 0,
        "write_failures": 0,
        "files_deleted": 0,
        "schema": 1,
        "json": 1,
        "refused": 1,
    }
    # one record per line, so grep/jq/tail work on the files as they are
    assert sum(len(p.read_bytes().splitlines()) for p in files(tmp_path / "dl")) == 3


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (TOPIC, b"{not json"),
        (TOPIC, b'{"v": 2}'),
        (TOPIC, b'{"v": 1, "site": 5}'),
        ("derrick/v1/x/telemetry", b"{}"),
    ],
)
def test_rejections_from_validate_are_stored_with_their_kind(tmp_path, topic, payload):
    result = validate(topic, payload)
    assert isinstance(result, Rejected)
    with DeadLetters(tmp_path) as letters:
        letters.put(topic, payload, result.kind, result.reason)
    (record,) = read_dead_letters(tmp_path)
    assert (record["kind"], record["reason"]) == (result.kind, result.reason)
    assert payload_bytes(record) == payload


def test_large_payloads_are_truncated_and_flagged(tmp_path):
    letters = DeadLetters(tmp_path, max_payload_bytes=100)
    # a two-byte character straddles the cut: the text stays UTF-8, one byte shorter
    text = b"a" * 99 + "é".encode() + b"b" * 1000
    letters.put(TOPIC, text, "oversized", "too big")
    letters.put(TOPIC, b"\xff" * 500, "oversized", "too big")
    letters.put(TOPIC, b"x" * 100, "schema", "exactly the limit")
    letters.close()

    cut_text, cut_binary, exact = read_dead_letters(tmp_path)
    assert cut_text["truncated"] is True
    assert cut_text["payload_bytes"] == len(text)
    assert cut_text["payload_encoding"] == "utf-8"
    assert cut_text["payload"] == "a" * 99
    assert cut_binary["truncated"] is True
    assert payload_bytes(cut_binary) == b"\xff" * 100
    assert exact["truncated"] is False
    assert exact["payload"] == "x" * 100
    assert letters.counts["truncated"] == 2


def test_files_rotate_by_size_and_total_stays_bounded(tmp_path):
    # ~1.2 kB records, 10 kB files, 50 kB in all
    letters = DeadLetters(tmp_path, max_mb=0.05, file_mb=0.01)
    with capture_logs() as logs:
        for seq in range(200):
            letters.put(f"{TOPIC}/{seq}", SECRET + b"x" * 1000, "schema", f"record {seq}")
    letters.close()

    on_disk = files(tmp_path)
    sizes = [p.stat().st_size for p in on_disk]
    assert len(on_disk) >= 4
    assert max(sizes) <= 10_000
    assert sum(sizes) <= 50_000
    assert letters.total_bytes == sum(sizes)

    kept = [int(r["reason"].split()[1]) for r in read_dead_letters(tmp_path)]
    assert kept == list(range(kept[0], 200))  # the newest, in order, none missing
    assert kept[0] > 100

    deleted = [e for e in logs if e["event"] == "dead-letter store full, oldest file deleted"]
    assert deleted
    assert len(deleted) == letters.counts["files_deleted"]
    assert all(e["log_level"] == "warning" for e in deleted)
    assert SECRET.decode() not in repr(logs)


def test_a_restart_starts_a_new_file_and_counts_the_old_ones_in_the_bound(tmp_path):
    with DeadLetters(tmp_path) as first:
        for seq in range(30):
            first.put(TOPIC, b"x" * 1000, "schema", f"old {seq}")
    (old_file,) = files(tmp_path)

    second = DeadLetters(tmp_path, max_mb=0.02, file_mb=0.01)
    assert second.total_bytes == old_file.stat().st_size
    second.put(TOPIC, b"y", "json", "new")
    second.close()

    # the old file (30 kB) no longer fits a 20 kB bound: it went; the new record did not
    # land in it
    assert not old_file.exists()
    assert [r["reason"] for r in read_dead_letters(tmp_path)] == ["new"]
    assert second.counts["files_deleted"] == 1


def test_other_files_in_the_directory_are_left_alone(tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("operator notes")
    letters = DeadLetters(tmp_path, max_mb=0.005, file_mb=0.002)
    for _ in range(20):
        letters.put(TOPIC, b"x" * 1000, "schema", "r")
    letters.close()
    assert keep.read_text() == "operator notes"
    assert len(read_dead_letters(tmp_path)) < 20


def test_a_torn_last_line_is_skipped_and_reported(tmp_path):
    with DeadLetters(tmp_path) as letters:
        for seq in range(3):
            letters.put(TOPIC, b"{}", "schema", f"r{seq}")
    (path,) = files(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the last write stopped part-way

    with capture_logs() as logs:
        records = read_dead_letters(tmp_path)
    assert [r["reason"] for r in records] == ["r0", "r1"]
    assert [(e["event"], e["log_level"], e["line"]) for e in logs] == [
        ("torn last line skipped", "warning", 3)
    ]


def test_a_corrupt_line_inside_a_file_is_skipped_and_reported(tmp_path):
    with DeadLetters(tmp_path) as letters:
        for seq in range(3):
            letters.put(TOPIC, b"{}", "schema", f"r{seq}")
    (path,) = files(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"{garbage\n" + lines[1] + lines[2])

    with capture_logs() as logs:
        records = read_dead_letters(tmp_path)
    assert [r["reason"] for r in records] == ["r0", "r1", "r2"]
    assert [(e["event"], e["line"]) for e in logs] == [("corrupt line skipped", 2)]


WRITER = """
import sys
from pathlib import Path
from collector.deadletter import DeadLetters
letters = DeadLetters(Path(sys.argv[1]), max_mb=1000)
seq = 0
while True:
    letters.put("t", b"p" * 3000, "schema", str(seq))
    seq += 1
"""


def test_a_killed_writer_leaves_every_earlier_record_readable(tmp_path):
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        deadline = time.monotonic() + 30
        while sum(p.stat().st_size for p in files(tmp_path)) < 1_000_000:
            assert writer.poll() is None, "writer exited"
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.01)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
    records = read_dead_letters(tmp_path)
    assert len(records) > 200
    assert [int(r["reason"]) for r in records] == list(range(len(records)))

    # a collector started after the kill carries on in a new file
    with DeadLetters(tmp_path) as letters:
        letters.put("t", b"after", "json", "after restart")
    assert len(files(tmp_path)) == 2
    assert read_dead_letters(tmp_path)[-1]["reason"] == "after restart"


def test_an_unwritable_directory_is_counted_and_logged_once(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory's parent should be")
    directory = blocker / "dl"

    with capture_logs() as logs:
        letters = DeadLetters(directory)
        for _ in range(5):
            letters.put(TOPIC, SECRET, "schema", "readings[0].tag: bad")
        letters.put_refused(None, [SECRET.decode()], "field type conflict")
        letters.close()
    assert letters.counts["write_failures"] == 6
    assert letters.counts["written"] == 0
    assert len(logs) == 1
    assert logs[0]["log_level"] == "error"
    assert logs[0]["directory"] == str(directory)
    assert SECRET.decode() not in repr(logs)

    # when the directory can be made, writing resumes, and that is logged once too
    blocker.unlink()
    with capture_logs() as logs:
        letters.put(TOPIC, SECRET, "schema", "after")
        letters.put(TOPIC, SECRET, "schema", "after")
        letters.close()
    assert [e["event"] for e in logs] == ["dead-letter store writable again"]
    assert logs[0]["write_failures"] == 6
    assert [r["reason"] for r in read_dead_letters(directory)] == ["after", "after"]
    assert SECRET.decode() not in repr(logs)


def test_records_are_plain_json_lines(tmp_path):
    """What the module docstring's jq examples rely on."""
    with DeadLetters(tmp_path) as letters:
        letters.put("a\udcfftopic", "ünïcode".encode(), "schema", "reason \udcff")
    (line,) = files(tmp_path)[0].read_bytes().splitlines()
    record = json.loads(line)
    assert set(record) == {
        "received_at",
        "topic",
        "kind",
        "reason",
        "payload_bytes",
        "truncated",
        "payload_encoding",
        "payload",
    }
    assert record["payload"] == "ünïcode"
