"""Dead-letter store: what the collector could not use, kept for a person to look at.

Rejected MQTT messages (see :mod:`collector.validate`) and points InfluxDB refused are
appended, one JSON object per line, to ``deadletter-YYYYMMDD-NNNN.jsonl`` in one directory
(UTC day; ``NNNN`` counts files within the day, and every collector start begins a new
file). A file is closed at ``file_mb`` and a new one started; when all files together
would pass ``max_mb`` the oldest file is deleted (logged and counted as
``files_deleted``). Give every collector its own directory.

Each record::

    {"received_at": "2024-05-01T12:00:00.123456+00:00",   # UTC, when stored
     "topic": "derrick/v1/yard/crane-01/lmi/telemetry",    # null: the collector's own lines
     "kind": "schema",        # a collector.validate kind; "refused" (InfluxDB said no);
                              # "internal" (handling it raised: a collector bug);
                              # "poison" (redelivered too often, see collector.redelivery)
     "reason": "readings[3].value: Input should be ...",   # for "refused": the server's words
     "payload_bytes": 9123,   # size as received
     "truncated": false,      # true: only the first max_payload_bytes are kept
     "payload_encoding": "utf-8",   # or "base64" when the bytes are not UTF-8
     "payload": "{\\"v\\": 1, ...}"}   # for "refused": the line-protocol lines, "\\n"-joined
    # "refused" records also have "lines": how many of the message's lines InfluxDB
    # refused (only those are kept; the message's other lines were stored).

Writes are one unbuffered ``write`` per record (no fsync): a killed process leaves every
earlier line intact; at worst the last line of a file is torn, which
:func:`read_dead_letters` skips with a warning. A disk error never reaches the caller:
it is counted (``write_failures``) and logged once until writes work again. Payloads
are never logged, only topic, kind, reason and sizes.

For operators (``jq`` 1.6+; run in the dead-letter directory)::

    # what was rejected, by kind
    jq -r .kind deadletter-*.jsonl | sort | uniq -c
    # one line per rejection, without payloads
    jq -c '{received_at, kind, topic, reason}' deadletter-*.jsonl
    # everything one device sent that was rejected
    jq -c 'select(.topic == "derrick/v1/yard/crane-01/lmi/telemetry")' deadletter-*.jsonl
    # the payload of the last schema rejection, pretty-printed (if it is JSON at all)
    jq -r 'select(.kind == "schema") | .payload' deadletter-*.jsonl | tail -n 1 | jq .
    # the raw bytes of non-UTF-8 payloads
    jq -r 'select(.payload_encoding == "base64") | .payload | @base64d' deadletter-*.jsonl
    # the line protocol InfluxDB refused, ready to fix and POST again
    jq -r 'select(.kind == "refused") | .payload' deadletter-*.jsonl > refused.lp

(``jq`` reports a torn last line as a parse error after printing the records before it.)
In Python: ``read_dead_letters(directory)`` and ``payload_bytes(record)``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import structlog

log = structlog.get_logger(__name__)

MB = 1_000_000
REFUSED = "refused"
_NAME = re.compile(r"^deadletter-(\d{8})-(\d+)\.jsonl$")


@dataclass
class _File:
    path: Path
    day: str
    number: int
    size: int


class DeadLetters:
    """Bounded, append-only JSON-lines store; quick, and never raises on disk errors."""

    def __init__(
        self,
        directory: Path,
        max_mb: float = 100,
        max_payload_bytes: int = 64_000,
        file_mb: float | None = None,
    ) -> None:
        if max_mb <= 0 or max_payload_bytes <= 0 or (file_mb is not None and file_mb <= 0):
            raise ValueError("max_mb, max_payload_bytes and file_mb must be positive")
        self.directory = Path(directory)
        self.max_bytes = int(max_mb * MB)
        self.file_bytes = int((file_mb if file_mb is not None else max_mb / 10) * MB)
        self.max_payload_bytes = max_payload_bytes
        self._files: list[_File] = []  # oldest first; the last one is being written
        self._out: BinaryIO | None = None
        self._scanned = False
        self._failing = False
        self._counts: dict[str, int] = {
            "written": 0,
            "truncated": 0,
            "write_failures": 0,
            "files_deleted": 0,
        }
        try:
            self._scan()
        except OSError as exc:
            self._report_failure(exc)

    @property
    def counts(self) -> dict[str, int]:
        """``written``, ``truncated``, ``write_failures``, ``files_deleted``, and records
        written per kind (a key appears with the first record of its kind)."""
        return dict(self._counts)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self._files)

    def put(self, topic: str, payload: bytes, kind: str, reason: str) -> None:
        """Store one rejected message."""
        self._append(self._record(topic, payload, kind, reason))

    def put_refused(self, topic: str | None, lines: list[str], reason: str) -> None:
        """Store the line-protocol lines of one message that InfluxDB refused, with the
        server's message (``topic`` None: lines the collector made itself)."""
        record = self._record(topic, "\n".join(lines).encode(), REFUSED, reason)
        record["lines"] = len(lines)
        self._append(record)

    def close(self) -> None:
        """Close the current file; a later ``put`` starts a new one."""
        self._close_quietly()

    def __enter__(self) -> DeadLetters:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _record(self, topic: str | None, payload: bytes, kind: str, reason: str) -> dict[str, Any]:
        kept = payload[: self.max_payload_bytes]
        truncated = len(kept) < len(payload)
        encoding, text = _payload_text(kept, truncated)
        return {
            "received_at": datetime.now(UTC).isoformat(),
            "topic": topic,
            "kind": kind,
            "reason": reason,
            "payload_bytes": len(payload),
            "truncated": truncated,
            "payload_encoding": encoding,
            "payload": text,
        }

    def _append(self, record: dict[str, Any]) -> None:
        # ensure_ascii: a topic or reason with a lone surrogate cannot fail the encode
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")
        day = record["received_at"][:10].replace("-", "")
        try:
            out = self._writable(day, len(data))
            written = out.write(data)
            if written != len(data):
                raise OSError(f"short write: {written} of {len(data)} bytes")
        except OSError as exc:
            self._counts["write_failures"] += 1
            self._report_failure(exc)
            self._close_quietly()  # a later record starts a new file, after any torn line
            return
        self._files[-1].size += written
        self._counts["written"] += 1
        self._counts[record["kind"]] = self._counts.get(record["kind"], 0) + 1
        self._counts["truncated"] += record["truncated"]
        if self._failing:
            self._failing = False
            log.info(
                "dead-letter store writable again",
                directory=str(self.directory),
                write_failures=self._counts["write_failures"],
            )

    def _writable(self, day: str, size: int) -> BinaryIO:
        """The file to append ``size`` bytes to: rotated by day and size, total bounded."""
        current = self._files[-1] if self._out is not None else None
        if (
            current is None
            or current.day != day
            or (current.size and current.size + size > self.file_bytes)
        ):
            self._open_new(day)
        self._enforce_bound(size)
        assert self._out is not None
        return self._out

    def _open_new(self, day: str) -> None:
        self._close_quietly()
        if not self._scanned:
            self._scan()
        number = max((f.number for f in self._files if f.day == day), default=0) + 1
        while True:
            path = self.directory / f"deadletter-{day}-{number:04d}.jsonl"
            try:
                self._out = open(path, "xb", buffering=0)  # noqa: SIM115 (kept open)
            except FileExistsError:  # another process, or a file made since the scan
                number += 1
                continue
            self._files.append(_File(path, day, number, 0))
            return

    def _enforce_bound(self, incoming: int) -> None:
        """Delete the oldest files (never the current one) until ``incoming`` fits."""
        while len(self._files) > 1 and self.total_bytes + incoming > self.max_bytes:
            oldest = self._files.pop(0)
            try:
                oldest.path.unlink(missing_ok=True)
            except OSError as exc:
                log.error(
                    "dead-letter file could not be deleted",
                    file=str(oldest.path),
                    error=str(exc),
                )
                continue
            self._counts["files_deleted"] += 1
            log.warning(
                "dead-letter store full, oldest file deleted",
                file=oldest.path.name,
                bytes=oldest.size,
                max_mb=self.max_bytes / MB,
                files_deleted=self._counts["files_deleted"],
            )

    def _scan(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_file():
                found.append(_File(path, match[1], int(match[2]), path.stat().st_size))
        found.sort(key=lambda f: (f.day, f.number))
        self._files = found
        self._scanned = True

    def _report_failure(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.error(
                "dead-letter store not writable; rejects are only logged until it is",
                directory=str(self.directory),
                error=str(exc),
            )

    def _close_quietly(self) -> None:
        out, self._out = self._out, None
        if out is not None:
            try:
                out.close()
            except OSError as exc:
                log.warning("dead-letter file close failed", error=str(exc))


def _payload_text(kept: bytes, truncated: bool) -> tuple[str, str]:
    """(encoding, text): UTF-8 when it decodes, else base64.

    A cut at ``max_payload_bytes`` may split a UTF-8 character; up to 3 bytes are dropped
    to keep such a payload readable.
    """
    for cut in range(4 if truncated else 1):
        try:
            return "utf-8", kept[: len(kept) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return "base64", base64.b64encode(kept).decode("ascii")


def read_dead_letters(directory: Path) -> list[dict[str, Any]]:
    """Every record in ``directory``, oldest first; torn or corrupt lines are skipped and
    logged (``"torn last line skipped"``: the writer was killed mid-line)."""
    directory = Path(directory)
    files = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            files.append(((match[1], int(match[2])), path))
    records: list[dict[str, Any]] = []
    for _key, path in sorted(files):
        lines = path.read_bytes().split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
                continue
            last = number == len(lines)  # no newline after it: the write never finished
            log.warning(
                "torn last line skipped" if last else "corrupt line skipped",
                file=path.name,
                line=number,
                bytes=len(line),
            )
    return records


def payload_bytes(record: dict[str, Any]) -> bytes:
    """The stored payload bytes of a record (the first ``max_payload_bytes`` if truncated)."""
    if record["payload_encoding"] == "base64":
        try:
            return base64.b64decode(record["payload"], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"record payload is not valid base64: {exc}") from exc
    return record["payload"].encode("utf-8")
