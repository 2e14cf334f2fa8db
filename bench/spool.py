"""Spool benchmark (derrick/spool/store.py, SQLite WAL); prints ``name: value unit`` lines.

Wall-clock times on a real file (the temp dir, or ``--dir DIR`` to measure the disk a
gateway will use: fsync costs differ by orders of magnitude between SSD, eMMC and SD).

* ``spool_append_b{1,50}_*``: appending 1 kB TELEMETRY messages one per transaction and
  50 per transaction (synchronous=NORMAL: no fsync).
* ``spool_append_b1_fsync_us_per_msg``: one ALARM per transaction: every commit fsyncs.
* ``spool_append_b50_10kb_us_per_msg``: 10 kB payloads, 50 per transaction.
* ``spool_append_at_bound_b50_us_per_msg``: appending while full, each batch dropping the
  oldest telemetry.
* ``spool_read_remove_msgs_per_s``: read 50, remove those 50 (as after their PUBACKs).
* ``spool_remove_one_us``: remove one id per call (one PUBACK, one transaction).
* ``spool_file_bytes_per_msg``: database + WAL size per queued 1 kB message (N = 20,000).
* ``spool_open_ms``: reopening with N queued (quick_check + totals).
* ``spool_reclaim_ms_per_step`` / ``spool_file_bytes_drained``: giving the space back
  after N were drained (8 MiB steps).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from derrick.plumbing import logs
from derrick.spool.store import Priority, Spool

TOPIC = "derrick/v1/bench-site/crane-01/lmi/telemetry"
N = 20_000
_counter = itertools.count()


def batch(size: int, payload_bytes: int = 1024, priority: Priority = Priority.TELEMETRY):
    now = time.time_ns()
    return [
        (TOPIC, next(_counter).to_bytes(8, "big") + bytes(payload_bytes - 8), priority, False, now)
        for _ in range(size)
    ]


def per_message_us(spool: Spool, batch_size: int, count: int, **kwargs: object) -> float:
    batches = [batch(batch_size, **kwargs) for _ in range(count // batch_size)]  # type: ignore[arg-type]
    started = time.perf_counter()
    for items in batches:
        spool.append(items)
    return (time.perf_counter() - started) / count * 1e6


def fresh(base: Path, name: str, max_bytes: int = 1 << 34) -> Spool:
    return Spool(base / f"{name}.db", max_bytes=max_bytes, max_age_s=86_400)


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to put the files (default: temp dir)")
    args = parser.parse_args()
    logs.configure("console", "warning")
    base = Path(tempfile.mkdtemp(prefix="derrick-bench-spool-", dir=args.dir))
    try:
        run(base)
    finally:
        shutil.rmtree(base)


def run(base: Path) -> None:
    with fresh(base, "b1") as spool:
        us = per_message_us(spool, 1, 5000)
        print(f"spool_append_b1_us_per_msg: {us:.1f} us")
        print(f"spool_append_b1_msgs_per_s: {1e6 / us:.0f} msgs/s")
    with fresh(base, "b50") as spool:
        us = per_message_us(spool, 50, 20_000)
        print(f"spool_append_b50_us_per_msg: {us:.1f} us")
        print(f"spool_append_b50_msgs_per_s: {1e6 / us:.0f} msgs/s")
    with fresh(base, "fsync") as spool:
        us = per_message_us(spool, 1, 300, priority=Priority.ALARM)
        print(f"spool_append_b1_fsync_us_per_msg: {us:.0f} us")
    with fresh(base, "10k") as spool:
        us = per_message_us(spool, 50, 5000, payload_bytes=10_240)
        print(f"spool_append_b50_10kb_us_per_msg: {us:.1f} us")
    with fresh(base, "bound", max_bytes=20 << 20) as spool:
        per_message_us(spool, 50, 25_000)  # fill to the bound
        us = per_message_us(spool, 50, 10_000)
        assert spool.stats().dropped[Priority.TELEMETRY] >= 10_000
        print(f"spool_append_at_bound_b50_us_per_msg: {us:.1f} us")

    path = base / "n.db"
    spool = Spool(path, max_bytes=1 << 34, max_age_s=86_400)
    for _ in range(N // 50):
        spool.append(batch(50))
    stats = spool.stats()
    print(
        f"spool_file_bytes_per_msg: {stats.file_bytes / N:.0f} bytes "
        f"(1 kB payload; {stats.file_bytes / 1e6:.1f} MB for {N})"
    )
    spool.close()
    seconds = timed(lambda: Spool(path, max_bytes=1 << 34, max_age_s=86_400).close())
    print(
        f"spool_open_ms: {seconds * 1e3:.0f} ms ({N} queued, {path.stat().st_size / 1e6:.0f} MB,"
        " with quick_check)"
    )

    spool = Spool(path, max_bytes=1 << 34, max_age_s=86_400)
    ids = [entry.id for entry in spool.read(limit=1000)]
    seconds = timed(lambda: [spool.remove([i]) for i in ids])
    print(f"spool_remove_one_us: {seconds / len(ids) * 1e6:.0f} us")

    def drain() -> int:
        done = 0
        while entries := spool.read(limit=50):
            spool.remove(entry.id for entry in entries)
            done += len(entries)
        return done

    started = time.perf_counter()
    drained = drain()
    print(f"spool_read_remove_msgs_per_s: {drained / (time.perf_counter() - started):.0f} msgs/s")
    steps: list[float] = []
    while True:
        started = time.perf_counter()
        if not spool.reclaim():
            break
        steps.append(time.perf_counter() - started)
    print(f"spool_reclaim_ms_per_step: {max(steps) * 1e3:.0f} ms (max of {len(steps)} steps)")
    print(f"spool_file_bytes_drained: {spool.stats().file_bytes / 1e6:.1f} MB")
    spool.close()


if __name__ == "__main__":
    main()
