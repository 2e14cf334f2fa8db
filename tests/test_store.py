"""Store stage, fast: when a batch is written and how a refusal is narrowed to its lines.

A fake writer at the InfluxDB seam refuses the lines a rule names, the way InfluxDB 1.x
does (a "partial write" stores the rest); the integration tests in test_ingest.py do the
same against a real InfluxDB.
"""

from __future__ import annotations

import asyncio

import pytest

from collector.fieldtypes import FieldTypes
from collector.influx import DataRejected, StoreUnavailable
from collector.stats import Stats
from collector.store import Batchable, Batching, Store
from derrick.mqtt.client import InboundMessage
from derrick.wire.topics import telemetry_topic

CONFLICT = (
    'HTTP 400: {"error":"partial write: field type conflict: input field \\"x\\" on '
    'measurement \\"telemetry\\" is type string, already exists as type float dropped=1"}'
)


class FakeWriter:
    """Takes every line but those holding ``x="``; records each write's size."""

    url = "fake://influx"

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.writes: list[int] = []
        self.down = False

    async def write(self, lines: list[str]) -> None:
        if self.down:
            raise StoreUnavailable("down")
        self.writes.append(len(lines))
        bad = [line for line in lines if 'x="' in line]
        self.stored.extend(line for line in lines if line not in bad)
        if bad:
            raise DataRejected(CONFLICT)

    async def field_types(self, measurement: str) -> dict[str, set[str]]:
        return {}

    async def close(self) -> None:
        pass


def line(site: str, n: int, value: str = "1.5") -> str:
    return f"telemetry,asset=a,device=d,kind=k,site={site} x={value},y=2.0 {n}"


def inbound(mid: int, site: str) -> InboundMessage:
    return InboundMessage(telemetry_topic(site, "a", "d"), b"{}", 1, mid, False)


class Harness:
    def __init__(self, batching: Batching, window_full=lambda: False) -> None:
        self.writer = FakeWriter()
        self.acked: list[int] = []
        self.letters: list[tuple[str | None, list[str], str]] = []
        self.stats = Stats()
        self.fields = FieldTypes()
        self.store = Store(
            self.writer,
            lambda message: self.acked.append(message.mid),
            self.stats,
            batching,
            None,
            lambda topic, lines, reason: self.letters.append((topic, lines, reason)),
            window_full=window_full,
            fields=self.fields,
        )
        self.queue: asyncio.Queue[Batchable] = asyncio.Queue()


async def run_until(harness: Harness, done, timeout: float = 2.0) -> None:
    """Run the store stage until ``done()``: checked after every acknowledgement."""
    finished = asyncio.Event()
    ack = harness.store.ack

    def acked(message: InboundMessage) -> None:
        ack(message)
        if done():
            finished.set()

    harness.store.ack = acked
    task = asyncio.create_task(harness.store.run(harness.queue))
    try:
        async with asyncio.timeout(timeout):
            await finished.wait()
    finally:
        task.cancel()


def test_one_refused_line_among_many_is_the_only_dead_letter():
    async def main() -> Harness:
        harness = Harness(Batching(max_lines=1000, max_delay_s=0.05))
        for n in range(200):
            site = f"s{n}"
            lines = [line(site, n), line(site, n + 1000)]
            if n == 77:
                lines[1] = line(site, n + 1000, '"oops"')
            harness.queue.put_nowait(Batchable(lines, inbound(n, site)))
        await run_until(harness, lambda: len(harness.acked) == 200)
        return harness

    harness = asyncio.run(main())
    (topic, lines, reason), *more = harness.letters
    assert not more
    assert topic == telemetry_topic("s77", "a", "d")
    assert lines == [line("s77", 1077, '"oops"')]
    assert "field type conflict" in reason
    assert len(set(harness.writer.stored)) == 399, "every good line, of that message too"
    assert harness.stats.lines_written == 399
    assert harness.stats.lines_refused == 1
    # the named field's lines go apart: the rest in one write, then the suspects
    assert harness.writer.writes == [400, 399, 1]
    assert harness.fields.get("x") == "float", "learned from the refusal"


def test_several_refused_lines_of_one_message_make_one_dead_letter():
    async def main() -> Harness:
        harness = Harness(Batching(max_lines=1000, max_delay_s=0.05))
        bad = [line("s", 1, '"a"'), line("s", 2), line("s", 3, '"b"')]
        harness.queue.put_nowait(Batchable([line("t", 9)], inbound(1, "t")))
        harness.queue.put_nowait(Batchable(bad, inbound(2, "s")))
        await run_until(harness, lambda: len(harness.acked) == 2)
        return harness

    harness = asyncio.run(main())
    assert [(t, ls) for t, ls, _ in harness.letters] == [
        (telemetry_topic("s", "a", "d"), [line("s", 1, '"a"'), line("s", 3, '"b"')])
    ]
    assert sorted(set(harness.writer.stored)) == sorted([line("t", 9), line("s", 2)])


def test_an_outage_while_narrowing_dead_letters_nothing_yet():
    """The batch goes back whole (to the spool or a retry); only a finished search
    dead-letters, so a line is never dead-lettered twice."""

    async def main() -> Harness:
        harness = Harness(Batching(max_lines=1000, max_delay_s=0.05))
        writes = 0
        original = harness.writer.write

        async def flaky(lines: list[str]) -> None:
            nonlocal writes
            writes += 1
            harness.writer.down = writes in (2, 3)  # fails while narrowing, then heals
            await original(lines)

        harness.writer.write = flaky  # type: ignore[method-assign]
        harness.queue.put_nowait(Batchable([line("s", 1, '"a"'), line("s", 2)], inbound(1, "s")))
        await run_until(harness, lambda: len(harness.acked) == 1, timeout=5)
        return harness

    harness = asyncio.run(main())
    assert len(harness.letters) == 1
    assert harness.stats.lines_refused == 1


def test_a_batch_is_written_when_arrivals_pause_not_after_the_fixed_wait():
    async def main() -> list[float]:
        harness = Harness(Batching(max_lines=5000, max_delay_s=10, pause_s=0.01))
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(20):
            harness.queue.put_nowait(Batchable([line("s", n)], inbound(n, "s")))
        await run_until(harness, lambda: len(harness.acked) == 20)
        return [loop.time() - started, harness.writer.writes]

    elapsed, writes = asyncio.run(main())
    assert writes == [20]
    assert elapsed < 1.0, "a 10 s max_delay_s must not hold a batch once arrivals pause"


def test_a_batch_is_written_at_once_when_the_broker_window_is_full():
    async def main() -> tuple[list[int], float]:
        unacked = 0
        harness = Harness(
            Batching(max_lines=5000, max_delay_s=10, pause_s=10),
            window_full=lambda: unacked - len(harness.acked) >= 20,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(20):
            unacked += 1
            harness.queue.put_nowait(Batchable([line("s", n)], inbound(n, "s")))
        await run_until(harness, lambda: len(harness.acked) == 20)
        return harness.writer.writes, loop.time() - started

    writes, elapsed = asyncio.run(main())
    assert writes == [20]
    assert elapsed < 1.0, "with the window full nothing more can come: no pause to wait for"


def test_a_batch_stops_at_max_lines():
    async def main() -> list[int]:
        harness = Harness(Batching(max_lines=10, max_delay_s=0.05))
        for n in range(25):
            harness.queue.put_nowait(Batchable([line("s", n)], inbound(n, "s")))
        await run_until(harness, lambda: len(harness.acked) == 25)
        return harness.writer.writes

    assert asyncio.run(main()) == [10, 10, 5]


@pytest.mark.parametrize("field_line", ["telemetry,asset=a,device=d,kind=k,site=s x=1 1"])
def test_own_lines_have_no_topic(field_line):
    async def main() -> Harness:
        harness = Harness(Batching(max_lines=1000, max_delay_s=0.05))
        harness.queue.put_nowait(Batchable([line("s", 1, '"a"')], None))
        harness.queue.put_nowait(Batchable([field_line], inbound(5, "s")))
        await run_until(harness, lambda: len(harness.acked) == 1)
        await asyncio.sleep(0.05)
        return harness

    harness = asyncio.run(main())
    assert [t for t, _, _ in harness.letters] == [None]
