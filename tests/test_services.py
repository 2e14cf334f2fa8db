"""The dev-stack launchers against the real servers: write/read back, restart, failure."""

from __future__ import annotations

import socket
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from devstack.services import (
    Influx1,
    Mosquitto,
    ServiceError,
    ServiceStartError,
    VictoriaMetrics,
    free_port,
    mqtt_connack,
)

# -- raw MQTT 3.1.1 bits (no client library: we test the broker, not a client) -----------


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([first_byte]) + bytes(length) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def _recv_packet(sock: socket.socket) -> tuple[int, bytes]:
    first = _recv_exact(sock, 1)[0]
    length, shift = 0, 0
    while True:
        byte = _recv_exact(sock, 1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, _recv_exact(sock, length)


def _connect(broker: Mosquitto, client_id: str) -> socket.socket:
    sock = socket.create_connection((broker.host, broker.port), timeout=5)
    body = _string("MQTT") + bytes([4, 0x02]) + (30).to_bytes(2, "big") + _string(client_id)
    sock.sendall(_packet(0x10, body))
    kind, connack = _recv_packet(sock)
    assert (kind, connack) == (0x20, b"\x00\x00"), (kind, connack)
    return sock


def _publish_retained(broker: Mosquitto, topic: str, payload: bytes) -> None:
    with _connect(broker, f"pub-{uuid.uuid4().hex[:8]}") as sock:
        sock.sendall(_packet(0x31, _string(topic) + payload))  # PUBLISH QoS0 retain
        sock.sendall(b"\xe0\x00")  # DISCONNECT
        assert sock.recv(1) == b""  # the broker closes after DISCONNECT


def _retained(broker: Mosquitto, topic: str) -> bytes:
    with _connect(broker, f"sub-{uuid.uuid4().hex[:8]}") as sock:
        sock.sendall(_packet(0x82, (1).to_bytes(2, "big") + _string(topic) + b"\x00"))
        kind, suback = _recv_packet(sock)
        assert (kind, suback) == (0x90, b"\x00\x01\x00"), (kind, suback)
        kind, publish = _recv_packet(sock)
        assert kind == 0x31, hex(kind)  # PUBLISH, QoS0, retain flag set
        topic_len = int.from_bytes(publish[:2], "big")
        assert publish[2 : 2 + topic_len].decode() == topic
        sock.sendall(b"\xe0\x00")
        return publish[2 + topic_len :]


# -- unit ---------------------------------------------------------------------------------


def test_free_port_gives_distinct_bindable_loopback_ports():
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    for port in ports[:3]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_missing_binary_is_a_clear_error(tmp_path):
    service = Mosquitto(tmp_path, binary=str(tmp_path / "no-such-mosquitto"))
    with pytest.raises(ServiceStartError, match="mosquitto: cannot run"):
        service.start()
    assert not service.running


# -- InfluxDB 1.x -----------------------------------------------------------------------


@pytest.mark.integration
def test_influx1_line_protocol_write_reads_back(influx1, influx_db):
    stamp = time.time_ns()
    line = f"telemetry,site=yard,asset=crane-01 hook_load=12.5,cutout=false {stamp}"
    query = urllib.parse.urlencode({"db": influx_db, "precision": "ns"})
    request = urllib.request.Request(
        f"{influx1.url}/write?{query}", data=line.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 204

    result = influx1.query("SELECT hook_load, cutout, site FROM telemetry", db=influx_db)
    series = result["results"][0]["series"]
    assert series[0]["columns"] == ["time", "hook_load", "cutout", "site"]
    assert series[0]["values"] == [[stamp, 12.5, False, "yard"]]


@pytest.mark.integration
def test_influx1_query_errors_raise(influx1, influx_db):
    with pytest.raises(ServiceError, match="database not found"):
        influx1.query("SELECT * FROM telemetry", db=f"{influx_db}_missing")
    with pytest.raises(ServiceError, match="HTTP 400"):
        influx1.query("SELEKT nonsense", db=influx_db)


@pytest.mark.integration
def test_influx1_keeps_data_across_kill_and_restart_on_same_port(tmp_path):
    with Influx1(tmp_path) as influx:
        port = influx.port
        influx.create_database("outage")
        influx.write("outage", "m,t=a v=1i 1700000000000000000")
        influx.kill()
        assert not influx.running
        assert not influx.ping(timeout=0.5)
        influx.start()
        assert influx.port == port
        values = influx.query("SELECT v FROM m", db="outage")["results"][0]["series"][0]
        assert values["values"] == [[1700000000000000000, 1]]
    assert not influx.running


# -- VictoriaMetrics --------------------------------------------------------------------


@pytest.mark.integration
def test_victoria_v2_write_is_readable_at_once(victoria):
    site = f"site{uuid.uuid4().hex[:8]}"
    stamp = time.time_ns()
    line = f"telemetry,site={site},asset=crane-01 hook_load=12.5,wind_speed=7.75 {stamp}"
    request = urllib.request.Request(
        f"{victoria.url}/api/v2/write", data=line.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 204

    series = victoria.export(f'{{__name__=~"telemetry_.*",site="{site}"}}')
    latest = {s["metric"]["__name__"]: (s["values"], s["timestamps"]) for s in series}
    assert latest == {
        "telemetry_hook_load": ([12.5], [stamp // 1_000_000]),
        "telemetry_wind_speed": ([7.75], [stamp // 1_000_000]),
    }
    assert all(s["metric"]["asset"] == "crane-01" for s in series)


# -- mosquitto --------------------------------------------------------------------------


@pytest.mark.integration
def test_mosquitto_session_broker_accepts_mqtt(mosquitto):
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert mqtt_connack(mosquitto.host, mosquitto.port) == 0


@pytest.mark.integration
def test_mosquitto_restart_on_same_port_keeps_working_and_persists(tmp_path):
    with Mosquitto(tmp_path) as broker:
        port = broker.port
        _publish_retained(broker, "derrick/test/retained", b"before restart")
        broker.stop()
        assert not broker.ping(timeout=0.5)
        broker.start()
        assert broker.port == port
        assert broker.ping()
        # persistence true + our own persistence_location: the retained message
        # was saved on SIGTERM and loaded again.
        assert _retained(broker, "derrick/test/retained") == b"before restart"
        broker.kill()
        broker.start()
        assert mqtt_connack(broker.host, port) == 0
    assert "Opening ipv4 listen socket on port" in broker.log_path.read_text()


# -- failures ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("kind", [Mosquitto, Influx1, VictoriaMetrics])
def test_port_already_taken_is_a_clear_error(tmp_path, kind):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        service = kind(tmp_path, port=port, start_timeout=20)
        with pytest.raises(ServiceStartError) as failure:
            service.start()
    message = str(failure.value)
    assert service.name in message
    assert f"127.0.0.1:{port}" in message
    assert "exited with code" in message
    assert str(service.log_path) in message
    assert "address already in use" in message.lower()  # the server's own words
    assert not service.running


class _NeverReady(VictoriaMetrics):
    def _probe(self) -> bool:
        return False


@pytest.mark.integration
def test_not_ready_before_deadline_kills_and_says_so(tmp_path):
    service = _NeverReady(tmp_path, start_timeout=0.5)
    began = time.monotonic()
    with pytest.raises(ServiceStartError, match=r"not ready after 0\.5s \(killed it\)"):
        service.start()
    assert time.monotonic() - began < 5
    assert not service.running
    assert "=== devstack: exited with code -9" in service.log_path.read_text()
