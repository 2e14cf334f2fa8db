"""A steady telemetry load for tests and benchmarks: N readings a second, in messages of
20 readings (one device's poll), published at QoS 1 from a thread of its own.

The publisher speaks MQTT 3.1.1 on a raw asyncio stream, written by hand on purpose: a
load generator must cost next to nothing, or it takes the CPU the collector under test
needs (two cores here). paho spends about 170 us of CPU per published message (84 % of
a core at 5,000 messages/s); this one, which only sends PUBLISH and counts PUBACKs,
about 10 us. Messages are made from a template (no pydantic on the way), each with its
own timestamp, so every message is one line in InfluxDB and ``count()`` counts them.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

from derrick.wire.payloads import now_ns
from derrick.wire.topics import telemetry_topic
from devstack.services import mqtt_remaining_length, mqtt_string

READINGS = 20
TICK_S = 0.01
MAX_IN_FLIGHT = 5000
PUBACK = 0x40


def template(site: str, asset: str, readings: int = READINGS) -> str:
    """A telemetry payload with ``@SEQ@`` and ``@TS@`` to fill in (see :func:`fill`)."""
    values = ",".join(
        f'{{"tag":"t{i}","value":{i}.5,"unit":"t","quality":"good","ts_ns":@TS@}}'
        for i in range(readings)
    )
    return (
        f'{{"v":1,"historical":false,"site":"{site}","asset":"{asset}","device":"lmi",'
        f'"kind":"crane","agent":"load-{asset}","boot":"b","seq":@SEQ@,"readings":[{values}]}}'
    )


def fill(template_text: str, seq: int, ts_ns: int) -> bytes:
    return template_text.replace("@SEQ@", str(seq)).replace("@TS@", str(ts_ns)).encode()


def publish_packet(topic: str, packet_id: int, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH, QoS 1."""
    body = mqtt_string(topic) + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + mqtt_remaining_length(len(body)) + body


class Load:
    """Publishes ``readings_per_s`` for ``seconds`` on ``assets`` telemetry topics in turn
    (each asset its own agent, numbering its messages from 0).

    ``published`` counts messages the broker acknowledged (PUBACK), ``offered`` those
    sent; ``behind_s`` is how far the publisher fell behind its schedule at worst (a
    machine too busy to offer the load)."""

    def __init__(
        self,
        port: int,
        site: str,
        readings_per_s: int,
        seconds: float,
        *,
        assets: int = 10,
        host: str = "127.0.0.1",
    ) -> None:
        self.host, self.port = host, port
        self.site = site
        self.messages_per_s = readings_per_s / READINGS
        self.seconds = seconds
        self.assets = [f"crane-{n:02d}" for n in range(assets)]
        self.published = 0
        self.offered = 0
        self.behind_s = 0.0
        self.error: BaseException | None = None
        self._in_flight = 0
        self._thread = threading.Thread(target=self._main, name="load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def join(self, timeout: float) -> Load:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"load still publishing after {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"load failed: {self.error}") from self.error
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by join
            self.error = exc

    async def _run(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        await _connect(reader, writer, f"load-{uuid.uuid4().hex[:8]}")
        acks = asyncio.create_task(self._count_pubacks(reader))
        try:
            await self._publish_all(writer)
            async with asyncio.timeout(120):
                while self._in_flight:  # noqa: ASYNC110 - counted by the reader task
                    await asyncio.sleep(0.05)
        finally:
            acks.cancel()
            writer.write(b"\xe0\x00")  # DISCONNECT
            writer.close()

    async def _publish_all(self, writer: asyncio.StreamWriter) -> None:
        topics = [telemetry_topic(self.site, asset, "lmi") for asset in self.assets]
        templates = [template(self.site, asset) for asset in self.assets]
        loop = asyncio.get_running_loop()
        began = loop.time()
        total = int(self.messages_per_s * self.seconds)
        while self.offered < total:
            now = loop.time()
            self.behind_s = max(self.behind_s, now - began - self.offered / self.messages_per_s)
            due = min(total, int((now - began) * self.messages_per_s) + 1)
            for number in range(self.offered, due):
                if self._in_flight >= MAX_IN_FLIGHT:
                    break
                which = number % len(topics)
                payload = fill(templates[which], number // len(topics), now_ns())
                writer.write(publish_packet(topics[which], number % 65535 + 1, payload))
                self._in_flight += 1
                self.offered += 1
            await writer.drain()
            await asyncio.sleep(TICK_S)

    async def _count_pubacks(self, reader: asyncio.StreamReader) -> None:
        """PUBACKs (4 bytes each); anything else from the broker is an error."""
        while True:
            header = await reader.readexactly(2)
            rest = await reader.readexactly(header[1])
            if header[0] != PUBACK:
                raise ConnectionError(f"unexpected MQTT packet {header[0]:#x} {rest!r}")
            self._in_flight -= 1
            self.published += 1


async def _connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cid: str) -> None:
    """CONNECT (clean session, keep-alive off) and wait for a CONNACK that accepts."""
    variable = mqtt_string("MQTT") + bytes([4, 0x02]) + (0).to_bytes(2, "big")
    body = variable + mqtt_string(cid)
    writer.write(b"\x10" + mqtt_remaining_length(len(body)) + body)
    connack = await asyncio.wait_for(reader.readexactly(4), 10)
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"broker refused the load's connection: {connack!r}")
