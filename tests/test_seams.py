"""The library seams, fast: one error map per boundary, and the collector's stages on fakes.

* The error maps of the Modbus boundary (agent/modbus.py) and the InfluxDB boundary
  (collector/influx.py): every library error becomes ours, chained, and cancellation
  goes through untouched.
* The receive, store and alarm-journal stages wired as collector/main.py wires them, at
  the in-memory fakes of tests/fakes.py instead of mosquitto and InfluxDB: a message is
  acknowledged only once its lines are stored (in InfluxDB or the spool), an outage is
  retried or spooled, a refusal dead-letters exactly the offending lines. The same
  stages run against the real servers in test_ingest.py, test_collector_outages.py and
  test_poison.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import inspect
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import urllib3
from fakes import MemoryMqttClient, MemoryWriter
from influxdb_client.rest import ApiException
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from agent.modbus import (
    MODBUS_EXC_MAP,
    BadReply,
    DeviceTimeout,
    DeviceUnreachable,
    map_modbus_errors,
)
from collector import store as store_module
from collector.alarms.builtin import JournalSender
from collector.config import InfluxV2
from collector.deadletter import DeadLetters, read_dead_letters
from collector.influx import (
    INFLUX_EXC_MAP,
    DataRejected,
    StoreError,
    StoreUnavailable,
    V1Writer,
    V2Writer,
    Writer,
    map_influx_errors,
)
from collector.lineproto import encode_telemetry
from collector.receive import Receiver
from collector.stats import Stats
from collector.store import Batchable, Batching, Store
from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.notify.settings import DeliveryError
from derrick.plumbing.serial import TtyError, close_refused_port
from derrick.spool.store import Spool
from derrick.wire.payloads import AlarmNotice, Reading, Telemetry
from derrick.wire.topics import telemetry_topic

T0 = 1_700_000_000_000_000_000


# -- the error maps ---------------------------------------------------------------------------


@pytest.mark.parametrize("table", [MODBUS_EXC_MAP, INFLUX_EXC_MAP], ids=["modbus", "influx"])
def test_an_error_map_lists_the_most_specific_first(table):
    """The first match wins: an entry after one of its base classes would never apply."""
    theirs = list(table)
    shadowed = [
        f"{later.__name__} after {earlier.__name__}"
        for i, earlier in enumerate(theirs)
        for later in theirs[i + 1 :]
        if issubclass(later, earlier)
    ]
    assert not shadowed


@pytest.mark.parametrize(
    ("raised", "ours", "message"),
    [
        (TimeoutError(), DeviceTimeout, "plc:502: no reply within 1 s"),
        (ModbusIOException("No response received"), DeviceTimeout, "plc:502: no reply within 1 s"),
        (ConnectionException("Not connected"), DeviceUnreachable, "plc:502: Modbus Error: "),
        (
            ConnectionRefusedError(111, "Connection refused"),
            DeviceUnreachable,
            "Connection refused",
        ),
        (ModbusException("bad length"), BadReply, "plc:502: Modbus Error: bad length"),
        (TtyError(22, "Invalid argument"), DeviceUnreachable, "the tty refuses these line"),
    ],
)
def test_the_modbus_map_raises_ours_chained(raised, ours, message):
    mapping = map_modbus_errors("plc:502", timed_out="no reply within 1 s")
    with pytest.raises(ours, match=message) as caught, mapping:
        raise raised
    assert type(caught.value) is ours
    assert caught.value.__cause__ is raised


@pytest.mark.parametrize(
    "passing",
    [
        asyncio.CancelledError(),
        KeyboardInterrupt(),
        ValueError("not a library error"),
        DeviceTimeout("already ours"),
    ],
)
def test_the_modbus_map_lets_everything_else_through_untouched(passing):
    with pytest.raises(type(passing)) as caught, map_modbus_errors("plc:502"):
        raise passing
    assert caught.value is passing
    assert caught.value.__cause__ is None


class _Port:
    closed = False

    def close(self) -> None:
        self.closed = True


class _HalfOpenTransport:
    """Stands in for pymodbus' serial transport: the port opened, then the tty refused."""

    def __init__(self, port: _Port) -> None:
        self.sync_serial = port
        raise TtyError(22, "Invalid argument")


def test_a_tty_refusing_its_settings_has_its_port_closed():
    port = _Port()
    mapping = map_modbus_errors("/dev/ttyUSB0 19200 8E1")
    with pytest.raises(DeviceUnreachable, match="the tty refuses these line settings"), mapping:
        _HalfOpenTransport(port)
    assert port.closed, "else the port's exclusive lock fails the next connect as 'in use'"

    other = _Port()
    try:
        _HalfOpenTransport(other)
    except TtyError as exc:
        close_refused_port(exc)  # the simulator's boundary calls it directly
    assert other.closed


@pytest.mark.parametrize(
    ("raised", "ours", "message"),
    [
        (ApiException(status=400, reason="Bad Request"), DataRejected, "HTTP 400: Bad Request"),
        (ApiException(status=503, reason="Unavailable"), StoreUnavailable, "HTTP 503"),
        (ApiException(status=404, reason="Not Found"), StoreUnavailable, "HTTP 404"),
        (
            urllib3.exceptions.ReadTimeoutError(None, "/api/v2/write", "timed out"),
            StoreUnavailable,
            "ReadTimeoutError",
        ),
        (http.client.RemoteDisconnected("closed"), StoreUnavailable, "RemoteDisconnected"),
        (ConnectionRefusedError(111, "Connection refused"), StoreUnavailable, "Refused"),
    ],
)
def test_the_influx_map_raises_ours_chained(raised, ours, message):
    with pytest.raises(ours, match=message) as caught, map_influx_errors("http://influx:8086"):
        raise raised
    assert type(caught.value) is ours
    assert str(caught.value).startswith("http://influx:8086: ")
    assert caught.value.__cause__ is raised


@pytest.mark.parametrize(
    "passing", [asyncio.CancelledError(), KeyboardInterrupt(), ValueError("x"), DataRejected("x")]
)
def test_the_influx_map_lets_everything_else_through_untouched(passing):
    with pytest.raises(type(passing)) as caught, map_influx_errors("http://influx:8086"):
        raise passing
    assert caught.value is passing


class _RaisingWriteApi:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def write(self, **_kwargs: object) -> None:
        raise self.exc


@pytest.mark.parametrize(
    ("raised", "ours"),
    [
        (ApiException(status=422, reason="Unprocessable Entity"), DataRejected),
        (urllib3.exceptions.ProtocolError("Connection aborted."), StoreUnavailable),
    ],
)
def test_the_v2_writer_raises_through_the_map(raised, ours):
    async def main() -> None:
        writer = V2Writer(InfluxV2(api="v2", url="http://127.0.0.1:9"))
        writer._api = _RaisingWriteApi(raised)  # type: ignore[assignment]
        try:
            with pytest.raises(ours) as caught:
                await writer.write(["m x=1.0 1"])
            assert caught.value.__cause__ is raised
        finally:
            await writer.close()

    asyncio.run(main())


# -- the fakes keep the faces they stand in for -----------------------------------------------


@pytest.mark.parametrize("name", ["write", "field_types", "close"])
def test_the_memory_writer_has_the_writers_face(name):
    faces = {inspect.signature(getattr(cls, name)) for cls in (Writer, V1Writer, V2Writer)}
    assert faces == {inspect.signature(getattr(MemoryWriter, name))}
    assert inspect.iscoroutinefunction(getattr(MemoryWriter, name))
    assert hasattr(MemoryWriter, "url")


def test_the_memory_mqtt_client_has_the_face_the_stages_use():
    real = MqttClient(BrokerSettings(), "face", manual_ack=True)
    fake = MemoryMqttClient()
    for attribute in ("client_id", "inbox", "window", "unacked", "peak_unacked", "inbox_dropped"):
        assert type(getattr(fake, attribute)) is type(getattr(real, attribute)), attribute
    for method in ("ack", "publish_nowait"):
        real_sig = inspect.signature(getattr(MqttClient, method))
        assert inspect.signature(getattr(MemoryMqttClient, method)) == real_sig, method


# -- the stages, wired as collector/main.py wires them ------------------------------------------


def telemetry(asset: str, seq: int, second: float | str = 2.0) -> tuple[str, bytes, list[str]]:
    """A message of two readings at two instants (two lines), its topic and its lines."""
    ts = T0 + seq * 1000
    message = Telemetry(
        site="s",
        asset=asset,
        device="lmi",
        kind="crane",
        agent="gw",
        boot="b",
        seq=seq,
        readings=[
            Reading(tag="t0", value=float(seq), ts_ns=ts),
            Reading(tag="t1", value=second, ts_ns=ts + 1),
        ],
    )
    return (
        telemetry_topic("s", asset, "lmi"),
        message.model_dump_json().encode(),
        encode_telemetry(message),
    )


class Collector:
    """Receive and store stages at the fakes; the spool and dead letters are real."""

    def __init__(self, tmp_path: Path, *, spool: bool = False) -> None:
        self.client = MemoryMqttClient(window=20)
        self.writer = MemoryWriter()
        self.stats = Stats()
        self.letters_dir = tmp_path / "dead-letters"
        self.letters = DeadLetters(self.letters_dir)
        self.spool = (
            Spool(tmp_path / "spool.db", 10_000_000, 3600, fsync_from=None) if spool else None
        )
        self.queue: asyncio.Queue[Batchable] = asyncio.Queue(maxsize=1000)
        client = self.client
        self.store = Store(
            self.writer,
            client.ack,
            self.stats,
            Batching(max_lines=1000, max_delay_s=0.05, pause_s=0.01),
            self.spool,
            self.letters.put_refused,
            window_full=lambda: client.unacked >= (client.window or client.peak_unacked),
        )
        self.receiver = Receiver(client, self.queue, self.stats, self.letters)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Collector]:
        stages = [self.receiver.run(), self.store.run(self.queue), self.store.replay_forever()]
        tasks = [asyncio.create_task(stage) for stage in stages]
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.letters.close()
            if self.spool is not None:
                self.spool.close()

    def deliver(self, topic: str, payload: bytes) -> None:
        self.client.deliver(topic, payload)


async def eventually(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - the stages have no event to wait on
            await asyncio.sleep(0.005)


@pytest.fixture
def quick_retries(monkeypatch):
    """The store's backoff from 10 ms, not 0.5 s."""
    monkeypatch.setattr(store_module, "RETRY_MIN_S", 0.01)


def test_a_message_is_acknowledged_only_after_its_lines_are_written(tmp_path):
    async def main() -> tuple[Collector, list[str]]:
        collector = Collector(tmp_path)
        expected: list[str] = []
        async with collector.running():
            collector.writer.pause()
            for seq in (1, 2, 3):
                topic, payload, lines = telemetry("crane-01", seq)
                collector.deliver(topic, payload)
                expected += lines
            await eventually(lambda: collector.writer.attempts)
            await asyncio.sleep(0.05)
            assert collector.client.acked == [], "acknowledged before the write finished"
            assert collector.client.unacked == 3
            collector.writer.resume()
            await collector.client.wait_acked(3)
        return collector, expected

    collector, expected = asyncio.run(main())
    assert collector.writer.stored == expected
    assert collector.client.acked_mids == [1, 2, 3]
    assert collector.client.unacked == 0
    assert (collector.stats.lines_written, collector.stats.acked) == (6, 3)


def test_an_outage_without_a_spool_is_retried_until_written(tmp_path, quick_retries):
    async def main() -> tuple[Collector, list[str]]:
        collector = Collector(tmp_path)
        collector.writer.fail_next(2)
        topic, payload, lines = telemetry("crane-01", 1)
        async with collector.running():
            collector.deliver(topic, payload)
            await collector.client.wait_acked(1)
        return collector, lines

    collector, lines = asyncio.run(main())
    assert collector.writer.attempts == [lines] * 3, "two failed tries, then stored"
    assert collector.writer.stored == lines
    assert collector.store.available


def test_an_outage_with_a_spool_spools_acknowledges_and_replays_in_order(tmp_path, quick_retries):
    async def main() -> tuple[Collector, list[str]]:
        collector = Collector(tmp_path, spool=True)
        writer, expected = collector.writer, []
        writer.down = True
        async with collector.running():
            for seq in (1, 2):
                topic, payload, lines = telemetry("crane-01", seq)
                collector.deliver(topic, payload)
                expected += lines
            await collector.client.wait_acked(2)  # durable in the spool: acknowledged
            assert writer.stored == []
            assert collector.store.spool_depth() > 0
            assert not collector.store.available
            writer.down = False
            await eventually(lambda: collector.store.spool_depth() == 0)
            topic, payload, lines = telemetry("crane-01", 3)
            collector.deliver(topic, payload)  # nothing waits before it: written at once
            expected += lines
            await collector.client.wait_acked(3)
        return collector, expected

    collector, expected = asyncio.run(main())
    assert collector.writer.stored == expected, "replayed oldest first, then the new one"
    assert collector.stats.lines_spooled == collector.stats.lines_replayed == 4
    assert collector.store.available


@pytest.mark.parametrize("partial", [True, False], ids=["partial-write", "whole-write-refused"])
def test_a_refused_write_dead_letters_exactly_the_offending_lines(tmp_path, partial):
    async def main() -> tuple[Collector, list[str], list[str], str]:
        collector = Collector(tmp_path)
        collector.writer.refuse(lambda line: 't1="' in line, partial=partial)
        good, bad, bad_topic = [], [], ""
        async with collector.running():
            for seq in range(1, 6):
                topic, payload, lines = telemetry(
                    f"crane-0{seq}", seq, "jammed" if seq == 3 else 2.0
                )
                collector.deliver(topic, payload)
                if seq == 3:
                    good.append(lines[0])
                    bad.append(lines[1])
                    bad_topic = topic
                else:
                    good += lines
            await collector.client.wait_acked(5)
        return collector, good, bad, bad_topic

    collector, good, bad, bad_topic = asyncio.run(main())
    (letter,) = read_dead_letters(tmp_path / "dead-letters")
    assert (letter["topic"], letter["kind"], letter["lines"]) == (bad_topic, "refused", 1)
    assert letter["payload"] == bad[0]
    assert letter["reason"].startswith("memory://influx: HTTP 400")
    assert set(collector.writer.stored) == set(good), "every other line stored"
    assert (collector.stats.lines_written, collector.stats.lines_refused) == (9, 1)
    assert collector.client.acked_mids == [1, 2, 3, 4, 5], "the refused message too"


def test_a_message_the_contract_refuses_is_acknowledged_at_once_and_never_written(tmp_path):
    async def main() -> Collector:
        collector = Collector(tmp_path)
        collector.writer.pause()  # nothing can be stored: the rejection must not wait for it
        async with collector.running():
            collector.deliver(telemetry_topic("s", "crane-01", "lmi"), b'{"v": 1}')
            await collector.client.wait_acked(1)
        return collector

    collector = asyncio.run(main())
    assert collector.writer.attempts == []
    assert collector.stats.rejected == 1
    (letter,) = read_dead_letters(tmp_path / "dead-letters")
    assert letter["kind"] != "refused"


# -- the alarm journal at the same seam ---------------------------------------------------------


def notice() -> AlarmNotice:
    return AlarmNotice(
        key="k1",
        event="announce",
        alarm_id="s/crane-01/lmi/overload",
        rule="overload",
        site="s",
        asset="crane-01",
        device="lmi",
        priority="high",
        state="active_unacked",
        message="hook load over 90 %",
        ts_ns=T0,
    )


@pytest.mark.parametrize(
    ("fail", "retryable"),
    [("outage", True), ("refused", False)],
)
def test_the_alarm_journal_retries_an_outage_and_gives_up_on_a_refusal(fail, retryable):
    async def main() -> tuple[MemoryWriter, DeliveryError]:
        writer = MemoryWriter()
        journal = JournalSender(writer)
        if fail == "outage":
            writer.fail_next(1)
        else:
            writer.refuse(lambda _line: True)
        with pytest.raises(DeliveryError) as caught:
            await journal.send(notice())
        if fail == "outage":
            await journal.send(notice())  # the retry the delivery loop makes
        return writer, caught.value

    writer, error = asyncio.run(main())
    assert error.retryable is retryable
    assert isinstance(error.__cause__, StoreError)
    assert writer.stored == (writer.attempts[-1] if retryable else [])
    assert all(line.startswith("alarms,") for line in writer.stored)
