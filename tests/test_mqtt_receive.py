"""The MQTT client's receive path, byte by byte: the buffer under paho and the PUBLISH
fast path (derrick.mqtt.client._Paho).

No broker here: the client's paho socket is one end of a socket pair (wrapped to count
its ``recv()`` calls) and the test writes MQTT packets into the other end, whole, split
anywhere, several at once, then closes it. Every message must come out exactly as paho's
own PUBLISH handling (``deliver`` unset) makes it. The same path against a real
mosquitto, with TLS, is in tests/test_mqtt_security.py.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from derrick.mqtt.client import READ_BURST, RECV_SIZE, InboundMessage, MqttClient
from derrick.mqtt.settings import BrokerSettings

TOPIC = "derrick/v1/site-a/crane-01/lmi/telemetry"
PUBACK = 0x40


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def publish(
    topic: bytes | str = TOPIC,
    payload: bytes = b"{}",
    *,
    qos: int = 1,
    mid: int = 7,
    retain: bool = False,
    dup: bool = False,
    v5: bool = True,
    properties: bytes = b"",
) -> bytes:
    """A PUBLISH packet as a broker sends it."""
    name = topic.encode() if isinstance(topic, str) else topic
    body = struct.pack("!H", len(name)) + name
    if qos:
        body += struct.pack("!H", mid)
    if v5:
        body += varint(len(properties)) + properties
    header = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes([header]) + varint(len(body + payload)) + body + payload


class CountingSocket:
    """The client's end of the pair, counting the ``recv()`` calls paho's reads cost."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(size)

    def send(self, data: bytes) -> int:
        return self.sock.send(data)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)


class Wired:
    """An MqttClient whose paho socket is ours; ``feed`` writes to it, ``read`` reads."""

    def __init__(self, *, v5: bool = True, manual_ack: bool = True, fast: bool = True) -> None:
        self.client = MqttClient(
            BrokerSettings(),
            "receive-test",
            manual_ack=manual_ack,
            receive_maximum=100 if v5 else None,
        )
        self.client._loop = asyncio.get_running_loop()
        self.client._loop_thread = threading.get_ident()  # the test runs in the loop
        if not fast:
            self.client._client.deliver = None  # paho's own PUBLISH handling
        ours, self.broker = socket.socketpair()
        ours.setblocking(False)
        self.sock = CountingSocket(ours)
        self.client._client._sock = self.sock

    def feed(self, data: bytes) -> None:
        self.broker.sendall(data)

    def read(self) -> list[InboundMessage]:
        self.client._read()
        return self.drain()

    def drain(self) -> list[InboundMessage]:
        out = []
        while not self.client.inbox.empty():
            out.append(self.client.inbox.get_nowait())
        return out

    def sent(self) -> bytes:
        """What the client wrote to the broker (PUBACKs) so far."""
        self.client._client.loop_write()
        self.broker.setblocking(False)
        try:
            return self.broker.recv(65536)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        if self.client._client._sock is not None:
            self.client._client._sock = None
            self.sock.close()
        self.broker.close()


def run(scenario: Callable[..., Any], **kwargs: Any) -> None:
    async def main() -> None:
        wired = Wired(**kwargs)
        try:
            result = scenario(wired)
            if asyncio.iscoroutine(result):
                await result
        finally:
            wired.close()

    asyncio.run(main())


PACKETS = {
    "qos1": publish(),
    "qos0": publish(qos=0, payload=b"zero"),
    "retained": publish(retain=True, mid=65535),
    "redelivered": publish(dup=True, mid=1),
    "empty payload": publish(payload=b""),
    "long payload": publish(payload=bytes(range(256)) * 100),  # 3-byte remaining length
    "unicode topic": publish("derrick/v1/site-ä/kran-01/lmi/telemetry"),
    "properties": publish(properties=b"\x03\x00\x10application/json" + b"\x01\x01"),
    "user property": publish(properties=b"\x26\x00\x01k\x00\x01v"),
}


def paho_made(packet: bytes, *, v5: bool = True) -> InboundMessage:
    """The message paho's own handling makes of a packet."""
    made: list[InboundMessage] = []

    def scenario(wired: Wired) -> None:
        wired.feed(packet)
        made.extend(wired.read())

    run(scenario, v5=v5, fast=False)
    (message,) = made
    return message


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("name", [n for n in PACKETS if n not in {"properties", "user property"}])
def test_each_message_is_what_paho_makes_of_it(name, v5):
    packet = PACKETS[name] if v5 else _v311(name)
    expected = paho_made(packet, v5=v5)

    def scenario(wired: Wired) -> None:
        wired.feed(packet)
        assert wired.read() == [expected]

    run(scenario, v5=v5)


def _v311(name: str) -> bytes:
    kwargs: dict[str, Any] = {
        "qos0": {"qos": 0, "payload": b"zero"},
        "retained": {"retain": True, "mid": 65535},
        "redelivered": {"dup": True, "mid": 1},
        "empty payload": {"payload": b""},
        "long payload": {"payload": bytes(range(256)) * 100},
        "unicode topic": {"topic": "derrick/v1/site-ä/kran-01/lmi/telemetry"},
    }.get(name, {})
    return publish(v5=False, **kwargs)


@pytest.mark.parametrize("name", ["properties", "user property"])
def test_a_message_with_properties_is_left_to_paho(name):
    expected = paho_made(PACKETS[name])
    assert expected.payload == b"{}"

    def scenario(wired: Wired) -> None:
        wired.feed(PACKETS[name])
        assert wired.read() == [expected]

    run(scenario)


def test_many_packets_come_from_one_recv():
    packets = [publish(mid=mid, payload=b"x" * mid) for mid in range(1, 101)]

    def scenario(wired: Wired) -> None:
        wired.feed(b"".join(packets))
        messages = wired.read()
        assert [m.mid for m in messages] == list(range(1, 101))
        assert [len(m.payload) for m in messages] == list(range(1, 101))
        # one recv() for all of them and one that found the socket empty
        assert wired.sock.recvs == 2

    run(scenario)


@pytest.mark.parametrize("cut", [1, 2, 3, 10, 50, -1])
def test_a_packet_split_anywhere_is_put_together(cut):
    long = publish(payload=b"y" * 300, mid=2)  # two bytes of remaining length
    data = publish(mid=1) + long + publish(mid=3)
    at = len(publish(mid=1)) + (cut if cut > 0 else len(long) + cut)

    def scenario(wired: Wired) -> None:
        wired.feed(data[:at])
        first = wired.read()
        assert [m.mid for m in first] == [1]
        assert wired.client._client.starved
        wired.feed(data[at:])
        rest = wired.read()
        assert [m.mid for m in rest] == [2, 3]
        assert rest[0].payload == b"y" * 300

    run(scenario)


def test_a_packet_trickling_in_byte_by_byte_arrives_whole():
    data = publish(payload=b"z" * 200, mid=9) + publish(mid=10)

    def scenario(wired: Wired) -> None:
        got: list[InboundMessage] = []
        for byte in data:
            wired.feed(bytes([byte]))
            got.extend(wired.read())
        assert [(m.mid, len(m.payload)) for m in got] == [(9, 200), (10, 2)]

    run(scenario)


def test_more_than_a_burst_is_read_on_the_next_loop_turn_without_new_bytes():
    count = READ_BURST + 20
    data = b"".join(publish(mid=mid % 65535 + 1, payload=b"") for mid in range(count))
    assert len(data) < RECV_SIZE  # all of it in the buffer after the first recv()

    async def scenario(wired: Wired) -> None:
        wired.feed(data)
        wired.client._read()
        assert wired.client.inbox.qsize() == READ_BURST
        assert wired.client._client.buffered()
        for _ in range(3):
            await asyncio.sleep(0)
        assert wired.client.inbox.qsize() == count
        assert wired.sock.recvs == 2  # the bytes, then "no more"

    run(scenario)


def test_the_end_of_the_stream_comes_after_the_buffered_packets():
    async def scenario(wired: Wired) -> None:
        wired.feed(publish(mid=1) + publish(mid=2))
        wired.broker.shutdown(socket.SHUT_WR)
        assert [m.mid for m in wired.read()] == [1, 2]
        assert wired.client._client.socket() is None  # paho saw the end and closed
        await asyncio.sleep(0)
        assert wired.client._disconnected.is_set()

    run(scenario)


def test_a_new_socket_starts_with_an_empty_buffer():
    def scenario(wired: Wired) -> None:
        paho = wired.client._client
        wired.feed(publish(mid=1) + publish(mid=2))
        paho.loop_read()  # one packet taken, the second one buffered
        assert wired.drain()[0].mid == 1
        assert paho.buffered()
        ours, broker = socket.socketpair()
        ours.setblocking(False)
        paho._sock = CountingSocket(ours)
        assert not paho.buffered()
        broker.sendall(publish(mid=3))
        paho.loop_read()
        assert [m.mid for m in wired.drain()] == [3]
        paho._sock = wired.sock
        ours.close()
        broker.close()

    run(scenario)


def test_without_manual_ack_a_qos1_message_is_acknowledged_and_qos0_is_not():
    def scenario(wired: Wired) -> None:
        wired.feed(publish(mid=0x1234) + publish(qos=0) + publish(mid=0x0102))
        assert [m.qos for m in wired.read()] == [1, 0, 1]
        assert wired.sent() == bytes([PUBACK, 2, 0x12, 0x34, PUBACK, 2, 0x01, 0x02])

    run(scenario, manual_ack=False)


def test_with_manual_ack_nothing_is_acknowledged_until_ack():
    async def scenario(wired: Wired) -> None:
        wired.feed(publish(mid=5) + publish(mid=6))
        first, second = wired.read()
        assert wired.sent() == b""
        assert wired.client.unacked == 2
        wired.client.ack(second)
        assert wired.client.unacked == 1
        await asyncio.sleep(0)  # acknowledgements go out on the loop's next turn
        assert wired.sent() == bytes([PUBACK, 2, 0, 6])
        assert first.mid == 5

    run(scenario)


def test_the_acknowledgements_of_a_turn_go_out_in_one_write_in_call_order():
    mids = [3, 1, 258, 65535, 2]

    async def scenario(wired: Wired) -> None:
        wired.feed(b"".join(publish(mid=mid) for mid in mids))
        messages = wired.read()
        for message in reversed(messages):
            wired.client.ack(message)
        assert wired.client.unacked == 0
        assert not wired.client._client._out_packet  # nothing queued yet
        await asyncio.sleep(0)
        assert len(wired.client._client._out_packet) == 1  # one packet, one send()
        expected = b"".join(struct.pack("!BBH", PUBACK, 2, mid) for mid in reversed(mids))
        assert wired.sent() == expected

    run(scenario)


def test_stop_sends_the_gathered_acknowledgements_before_the_disconnect():
    async def scenario(wired: Wired) -> None:
        wired.feed(publish(mid=1) + publish(mid=2))
        for message in wired.read():
            wired.client.ack(message)
        await wired.client.stop()
        sent = wired.sent()
        assert sent[:8] == bytes([PUBACK, 2, 0, 1, PUBACK, 2, 0, 2])
        assert sent[8] == 0xE0  # DISCONNECT

    run(scenario)


def test_qos0_and_other_threads_acknowledge_through_paho():
    async def scenario(wired: Wired) -> None:
        wired.feed(publish(qos=0) + publish(mid=4))
        zero, one = wired.read()
        wired.client.ack(zero)  # nothing to send
        await asyncio.to_thread(wired.client.ack, one)  # queued by paho at once
        assert wired.client._acks == []
        assert wired.sent() == bytes([PUBACK, 2, 0, 4])

    run(scenario)


def test_a_qos2_message_is_left_to_paho():
    def scenario(wired: Wired) -> None:
        wired.feed(publish(qos=2, mid=11))
        assert wired.read() == []  # paho holds it until PUBREL
        assert wired.sent()[:1] == bytes([0x50])  # PUBREC

    run(scenario)


def test_a_malformed_publish_drops_the_connection_as_paho_does():
    bad = b"\x32\x03\x00\x05a"  # topic length 5, one byte of topic

    async def scenario(wired: Wired) -> None:
        wired.feed(bad)
        assert wired.read() == []
        assert wired.client._client.socket() is None

    run(scenario)
