"""In-memory fakes at the collector's library seams (test-only code).

* :class:`MemoryWriter` has the face of :class:`collector.influx.Writer` (what
  :func:`collector.influx.make_writer` returns): it records the lines it takes and can be
  told to fail with each of the errors the real writers raise - an outage
  (:class:`~collector.influx.StoreUnavailable`), or a refusal
  (:class:`~collector.influx.DataRejected`) of the whole write or, as InfluxDB 1.x
  answers a "partial write", of the offending lines only.
* :class:`MemoryMqttClient` has the face of :class:`derrick.mqtt.client.MqttClient` that
  the receive and store stages use, as the collector wires it (a persistent session with
  manual acknowledgements): :meth:`~MemoryMqttClient.deliver` puts a message in the
  inbox the way the real client's ``_deliver`` does, counting it unacknowledged until
  :meth:`~MemoryMqttClient.ack`.

tests/test_seams.py checks that both keep the signatures of what they stand in for, and
uses them for fast tests of the stages; the integration tests run the same stages
against real servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from collector.influx import DataRejected, StoreUnavailable
from derrick.mqtt.client import InboundMessage

OUTAGE = "ConnectionRefusedError: [Errno 111] Connection refused"
REFUSAL = 'HTTP 400: {"error":"unable to parse points"}'


class MemoryWriter:
    """An InfluxDB in memory, behind the Writer interface.

    ``stored`` holds every line taken, in order (a line written again after a refusal or
    an outage appears again: InfluxDB overwrites it, series + timestamp being its
    identity); ``attempts`` every write asked for, taken or not.
    """

    url = "memory://influx"

    def __init__(self, field_types: dict[str, dict[str, set[str]]] | None = None) -> None:
        self.stored: list[str] = []
        self.attempts: list[list[str]] = []
        self.closed = False
        self.down = False
        """An outage: every write raises StoreUnavailable until it is set False."""
        self._outages = 0
        self._refuses: Callable[[str], bool] | None = None
        self._reason = REFUSAL
        self._partial = True
        self._open = asyncio.Event()
        self._open.set()
        self._field_types = field_types or {}

    # -- telling it how to fail ------------------------------------------------------------

    def fail_next(self, writes: int) -> None:
        """An outage of the next ``writes`` writes (StoreUnavailable), then it heals."""
        self._outages = writes

    def refuse(
        self, offending: Callable[[str], bool], *, reason: str = REFUSAL, partial: bool = True
    ) -> None:
        """Refuse (DataRejected, ``url: reason``) every write holding a line
        ``offending`` picks. ``partial``: the other lines of that write are taken, as
        InfluxDB 1.x does; else the whole write is refused."""
        self._refuses, self._reason, self._partial = offending, reason, partial

    def pause(self) -> None:
        """Hold every write (after recording the attempt) until :meth:`resume`."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    # -- the Writer interface --------------------------------------------------------------

    async def write(self, lines: list[str]) -> None:
        self.attempts.append(list(lines))
        await self._open.wait()
        if self.down or self._outages > 0:
            self._outages = max(0, self._outages - 1)
            raise StoreUnavailable(f"{self.url}: {OUTAGE}")
        offending = [line for line in lines if self._refuses is not None and self._refuses(line)]
        if offending:
            if self._partial:
                self.stored.extend(line for line in lines if line not in offending)
            raise DataRejected(f"{self.url}: {self._reason}")
        self.stored.extend(lines)

    async def field_types(self, measurement: str) -> dict[str, set[str]]:
        if self.down:
            raise StoreUnavailable(f"{self.url}: {OUTAGE}")
        return {
            field: set(types) for field, types in self._field_types.get(measurement, {}).items()
        }

    async def close(self) -> None:
        self.closed = True


class MemoryMqttClient:
    """What the collector's receive and store stages use of an MqttClient, in memory.

    As the collector's sessions are (``manual_ack=True``): a QoS 1 message counts in
    :attr:`unacked` from delivery until acknowledged. ``acked`` and ``published`` record
    what the stages did, in order.
    """

    def __init__(
        self,
        client_id: str = "collector-test",
        *,
        window: int | None = None,
        inbox_size: int = 10_000,
    ) -> None:
        self.client_id = client_id
        self.inbox: asyncio.Queue[InboundMessage] = asyncio.Queue(maxsize=inbox_size)
        self.inbox_dropped = 0
        self.window = window
        self.unacked = 0
        self.peak_unacked = 0
        self.acked: list[InboundMessage] = []
        self.published: list[tuple[str, bytes, int, bool]] = []
        self._mid = 0
        self._acks = asyncio.Event()

    def deliver(
        self, topic: str, payload: bytes, *, qos: int = 1, dup: bool = False, mid: int | None = None
    ) -> InboundMessage:
        """The broker sends ``payload`` on ``topic``: into the inbox, as the real client
        does (a full inbox drops it unacknowledged, for the broker to send again). ``mid``
        repeats an earlier message's id (with ``dup``: a redelivery)."""
        if mid is None:
            self._mid += 1
            mid = self._mid
        message = InboundMessage(topic, payload, qos, mid, False, dup)
        try:
            self.inbox.put_nowait(message)
        except asyncio.QueueFull:
            self.inbox_dropped += 1
            return message
        if qos > 0:
            self.unacked += 1
            self.peak_unacked = max(self.peak_unacked, self.unacked)
        return message

    def ack(self, message: InboundMessage) -> None:
        self.acked.append(message)
        if message.qos > 0 and self.unacked > 0:
            self.unacked -= 1
        self._acks.set()

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Recorded and confirmed at once (a broker that always sends the PUBACK)."""
        self.published.append((topic, payload, qos, retain))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    @property
    def acked_mids(self) -> list[int]:
        return [message.mid for message in self.acked]

    async def wait_acked(self, count: int, timeout: float = 5.0) -> None:
        """Until ``count`` messages in all were acknowledged (TimeoutError if not)."""
        async with asyncio.timeout(timeout):
            while len(self.acked) < count:
                self._acks.clear()
                await self._acks.wait()
