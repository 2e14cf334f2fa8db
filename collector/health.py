"""Is ingest moving? The collector's answer on ``/health`` and in its metrics.

A collector can look alive - its process up, its port answering - while nothing is
stored: a stage stuck on a message, a store that can write neither to InfluxDB nor to
the spool. Each stage records when it last finished something (:class:`Stats`
``progress_receive`` / ``progress_store``); a stage is *stalled* when work waits for it
and it has not moved for ``stall_s``. Idle is healthy: no messages, no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.stats import Stats


@dataclass(frozen=True, slots=True)
class Waiting:
    """What waits for each stage right now."""

    inbox: int  # messages from the broker not yet taken by the receive stage
    store_queue: int  # messages validated, waiting to be stored
    store_busy_since: float | None  # a batch being stored since (monotonic), or None


def stalled_stages(stats: Stats, waiting: Waiting, now: float, stall_s: float) -> dict[str, float]:
    """Stage name -> seconds since it last moved, for each stage stalled at ``now``."""
    stalled = {}
    receive_idle = now - stats.progress_receive
    if waiting.inbox > 0 and receive_idle > stall_s:
        stalled["receive"] = round(receive_idle, 1)
    store_idle = now - stats.progress_store
    store_has_work = waiting.store_queue > 0 or waiting.store_busy_since is not None
    if store_has_work and store_idle > stall_s:
        stalled["store"] = round(store_idle, 1)
    return stalled


def health(stats: Stats, waiting: Waiting, now: float, stall_s: float) -> dict[str, object]:
    """The ``/health`` document: ``ok`` false with the stalled stages when ingest is stuck."""
    stalled = stalled_stages(stats, waiting, now, stall_s)
    report: dict[str, object] = {
        "ok": not stalled,
        "inbox": waiting.inbox,
        "store_queue": waiting.store_queue,
        "messages": stats.messages,
        "acked": stats.acked,
    }
    if stalled:
        report["stalled"] = stalled
        report["reason"] = ", ".join(
            f"{stage} stage has not moved for {seconds} s while messages wait"
            for stage, seconds in stalled.items()
        )
    return report
