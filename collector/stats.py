"""Counters the stages share (one event loop, so plain integers are safe)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Stats:
    messages: int = 0
    rejected: int = 0
    readings: int = 0
    lines_written: int = 0
    lines_refused: int = 0
    batches: int = 0
    alarms_raised: int = 0
    alarms_cleared: int = 0
    alarms_dropped: int = 0
    write_ms: float = 0.0  # time spent in successful InfluxDB writes
    lines_spooled: int = 0
    lines_replayed: int = 0
    spool_dropped: int = 0
    seq_gaps: int = 0
    seq_duplicates: int = 0
    dead_letters: int = 0
    acked: int = 0  # messages acknowledged to the broker once stored or rejected
    internal_errors: int = 0  # messages dead-lettered because handling them raised
    redelivered: int = 0  # messages the broker sent again (DUP), e.g. after a restart
    poison: int = 0  # redelivered too often without being stored or rejected
    alarm_errors: int = 0  # alarm evaluations that raised (the message was still stored)
    messages_lost: int = 0  # dropped by the broker, or certain gaps (collector.loss)
    # Monotonic times the receive and store stages last finished a message or a batch.
    progress_receive: float = 0.0
    progress_store: float = 0.0

    def snapshot(self) -> dict[str, int | float]:
        """The counters (not the progress times)."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("progress_")}


def interval_fields(  # noqa: PLR0917 - one interval's inputs
    now: dict[str, int | float],
    then: dict[str, int | float],
    seconds: float,
    queued: int,
    spool_depth: int = 0,
    spool_oldest_age_s: float | None = None,
) -> dict[str, object]:
    """The ``collector`` measurement's fields for one stats interval."""
    batches = now["batches"] - then["batches"]
    readings = now["readings"] - then["readings"]
    return {
        "messages": now["messages"] - then["messages"],
        "acked": now["acked"] - then["acked"],
        "readings": readings,
        "readings_per_s": readings / seconds,
        "lines_written": now["lines_written"] - then["lines_written"],
        "lines_refused": now["lines_refused"] - then["lines_refused"],
        "bad_messages": now["rejected"] - then["rejected"],
        "batches": batches,
        "batch_latency_ms": (now["write_ms"] - then["write_ms"]) / batches if batches else None,
        "queue_depth": queued,
        "lines_spooled": now["lines_spooled"] - then["lines_spooled"],
        "lines_replayed": now["lines_replayed"] - then["lines_replayed"],
        "spool_dropped": now["spool_dropped"] - then["spool_dropped"],
        "dead_letters": now["dead_letters"] - then["dead_letters"],
        "messages_lost": now["messages_lost"] - then["messages_lost"],
        "internal_errors": now["internal_errors"] - then["internal_errors"],
        "poison": now["poison"] - then["poison"],
        "seq_gaps": now["seq_gaps"] - then["seq_gaps"],
        "seq_duplicates": now["seq_duplicates"] - then["seq_duplicates"],
        "spool_depth": spool_depth,
        "spool_oldest_age_s": spool_oldest_age_s or 0.0,
    }
