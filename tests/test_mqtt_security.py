"""MQTT security against a real mosquitto 2.0: password file, ACL, TLS and mutual TLS.

Every certificate is made here (devstack.certs) in temp dirs: a CA, the broker's
certificate for 127.0.0.1/localhost, client certificates, and an unrelated "rogue" CA
for the wrong-CA case. One secured broker serves the module: a plain listener, a TLS
listener (username/password) and a mutual-TLS listener (client certificate, CN = user).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.config import load_config as load_agent_config
from derrick.mqtt.client import MqttClient, MqttError
from derrick.mqtt.settings import BrokerSettings, BrokerTls
from derrick.plumbing.configfile import ConfigError
from derrick.wire.topics import telemetry_topic
from devstack.certs import CertificateAuthority, IssuedCert
from devstack.programs import Program, start_simulator, wait_for, write_yaml
from devstack.services import Mosquitto

pytestmark = pytest.mark.integration

# Distinctive, so that a leak into any log is found by a plain substring search.
AGENT_PASSWORD = "agent-Pw-8d1e5c"
COLLECTOR_PASSWORD = "collector-Pw-47b2a0"
WRONG_PASSWORD = "wrong-Pw-c3f9e1"
LATE_PASSWORD = "late-Pw-5a7d02"
KEY_PASSPHRASE = "key-Pp-e60b9f"
SECRETS = (AGENT_PASSWORD, COLLECTOR_PASSWORD, WRONG_PASSWORD, LATE_PASSWORD, KEY_PASSPHRASE)

SITE = "site-a"
ACL = f"""\
user agent
topic write derrick/v1/{SITE}/#
topic write derrick/v1/agents/#

user collector
topic read derrick/v1/#

# Identities from client certificates (mutual-TLS listener, use_identity_as_username).
user device-cert
topic write derrick/v1/site-m/#

user collector-cert
topic readwrite derrick/v1/#

user late
topic write derrick/v1/{SITE}/#
"""
FAILED = "broker connection failed"
NOT_AUTHORISED = (
    "broker refused the connection: Not authorized (check broker.username and the password)"
)


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    rogue: CertificateAuthority
    server: IssuedCert
    device: IssuedCert
    collector: IssuedCert  # key protected by KEY_PASSPHRASE


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = CertificateAuthority(tmp_path_factory.mktemp("pki"), "derrick")
    rogue = CertificateAuthority(tmp_path_factory.mktemp("rogue-pki"), "rogue")
    return Pki(
        ca=ca,
        rogue=rogue,
        server=ca.issue_server("broker", hosts=["127.0.0.1", "localhost"]),
        device=ca.issue_client("device-cert"),
        collector=ca.issue_client("collector-cert", passphrase=KEY_PASSPHRASE),
    )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Mosquitto]:
    users = {"agent": AGENT_PASSWORD, "collector": COLLECTOR_PASSWORD}
    with Mosquitto(
        tmp_path_factory.mktemp("secure-mosquitto"),
        users=users,
        acl=ACL,
        tls=(pki.ca.cert, pki.server.cert, pki.server.key),
    ) as secured:
        yield secured


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[dict]]:
    """structlog events of the test; afterwards, no secret in them or in stdlib logging."""
    with caplog.at_level(logging.DEBUG), capture_logs() as events:
        yield events
    text = repr(events) + caplog.text
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.pass"
    path.write_text(AGENT_PASSWORD + "\n")
    return path


def tls_settings(port: int, tls: BrokerTls, **kwargs: object) -> BrokerSettings:
    return BrokerSettings.model_validate(
        {"host": "127.0.0.1", "port": port, "tls": tls, "connect_timeout_s": 10, **kwargs}
    )


def tls_logins(broker, pki, password_file, monkeypatch) -> tuple[BrokerSettings, BrokerSettings]:
    """(agent, collector) over TLS: the agent's password from a file, the collector's
    from the environment."""
    monkeypatch.setenv("TEST_COLLECTOR_PW", COLLECTOR_PASSWORD)
    tls = BrokerTls(ca_file=pki.ca.cert)
    agent = tls_settings(broker.tls_port, tls, username="agent", password_file=password_file)
    collector = tls_settings(
        broker.tls_port, tls, username="collector", password_env="TEST_COLLECTOR_PW"
    )
    return agent, collector


@contextlib.asynccontextmanager
async def running(
    settings: BrokerSettings, client_id: str, *, subscribe: str | None = None
) -> AsyncIterator[MqttClient]:
    client = MqttClient(settings, client_id, persistent=False)
    if subscribe:
        await client.subscribe(subscribe)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


def failures_logged(events: list[dict], client_id: str) -> list[dict]:
    return [e for e in events if e["event"] == FAILED and e["client_id"] == client_id]


# -- connecting, publishing, receiving ---------------------------------------------------


def test_tls_login_from_password_file_and_env_publishes_qos1_to_a_subscriber(
    broker, pki, password_file, monkeypatch, logs
):
    agent, collector = tls_logins(broker, pki, password_file, monkeypatch)
    topic = telemetry_topic(SITE, "crane-01", "lmi")

    async def scenario() -> None:
        async with (
            running(collector, "sec-sub", subscribe="derrick/v1/#") as sub,
            running(agent, "sec-pub") as pub,
        ):
            await sub.wait_subscribed()
            await pub.wait_connected()
            await pub.publish(topic, b"over tls", qos=1, timeout=10)
            message = await asyncio.wait_for(sub.inbox.get(), 10)
            assert (message.topic, message.payload, message.qos) == (topic, b"over tls", 1)
            assert pub.last_error == "" and pub.connect_failures == 0

    asyncio.run(scenario())
    connected = [e for e in logs if e["event"] == "broker connected"]
    assert {e["broker"] for e in connected} == {f"mqtts://127.0.0.1:{broker.tls_port}"}
    assert not [e for e in logs if e["event"] == FAILED]


def test_a_burst_over_tls_arrives_whole_in_order_and_acknowledged(
    broker, pki, password_file, monkeypatch, logs
):
    """The client reads through a buffer under paho (derrick.mqtt.client._Paho): over TLS
    a recv() returns at most one TLS record, so packets straddle records and reads; one
    message is larger than a record and than the buffer's read (RECV_SIZE)."""
    agent, collector = tls_logins(broker, pki, password_file, monkeypatch)
    topic = telemetry_topic(SITE, "crane-01", "lmi")
    sizes = [(i * 37) % 3000 for i in range(600)]
    sizes[300] = 100_000
    payloads = [bytes([i % 256]) * size for i, size in enumerate(sizes)]

    async def scenario() -> None:
        sub = MqttClient(collector, "burst-sub", manual_ack=True, receive_maximum=1000)
        await sub.subscribe(topic)
        await sub.start()
        try:
            async with running(agent, "burst-pub") as pub:
                await sub.wait_subscribed()
                await pub.wait_connected()
                sent = [pub.publish_nowait(topic, payload) for payload in payloads]
                await asyncio.wait_for(asyncio.gather(*sent), 30)
                got = [await asyncio.wait_for(sub.inbox.get(), 10) for _ in payloads]
                assert [m.payload for m in got] == payloads
                assert sub.unacked == len(payloads)
                for message in got:
                    sub.ack(message)
                assert sub.unacked == 0
                # Let the broker read the PUBACKs before the DISCONNECT: closing right
                # after them loses some now and then, with or without the buffer (seen
                # with the client before it too; they come back as redeliveries).
                await asyncio.sleep(0.5)
        finally:
            await sub.stop()
        # Acknowledged: the persistent session has nothing to deliver again.
        again = MqttClient(collector, "burst-sub", manual_ack=True, receive_maximum=1000)
        await again.subscribe(topic)
        await again.start()
        try:
            await again.wait_subscribed()
            await asyncio.sleep(0.5)
            assert again.inbox.empty()
        finally:
            await again.stop()

    asyncio.run(scenario())


def test_acl_denied_publish_is_acknowledged_but_not_delivered(
    broker, pki, password_file, monkeypatch, logs
):
    """mosquitto, MQTT 3.1.1: PUBACK for a denied QoS 1 publish, then it drops it."""
    agent, collector = tls_logins(broker, pki, password_file, monkeypatch)
    denied = telemetry_topic("site-b", "crane-01", "lmi")  # the collector may read it
    allowed = telemetry_topic(SITE, "crane-01", "lmi")

    async def scenario() -> None:
        async with (
            running(collector, "acl-sub", subscribe="derrick/v1/#") as sub,
            running(agent, "acl-pub") as pub,
        ):
            await sub.wait_subscribed()
            await pub.wait_connected()
            await pub.publish(denied, b"denied", qos=1, timeout=10)  # PUBACK all the same
            await pub.publish(allowed, b"allowed", qos=1, timeout=10)
            # One publisher, one subscriber: mosquitto forwards in order, so the denied
            # message would have arrived first.
            first = await asyncio.wait_for(sub.inbox.get(), 10)
            assert (first.topic, first.payload) == (allowed, b"allowed")
            assert sub.inbox.empty()

    asyncio.run(scenario())


def test_mutual_tls_client_certificate_is_the_identity(broker, pki, monkeypatch, logs):
    """No username or password: the CN of the certificate is the user the ACL knows."""
    monkeypatch.setenv("TEST_KEY_PASSPHRASE", KEY_PASSPHRASE)
    device = tls_settings(
        broker.mtls_port,
        BrokerTls(ca_file=pki.ca.cert, cert_file=pki.device.cert, key_file=pki.device.key),
    )
    collector = tls_settings(
        broker.mtls_port,
        BrokerTls(
            ca_file=pki.ca.cert,
            cert_file=pki.collector.cert,
            key_file=pki.collector.key,
            key_password_env="TEST_KEY_PASSPHRASE",
        ),
    )
    topic = telemetry_topic("site-m", "rig-01", "mud")

    async def scenario() -> None:
        async with (
            running(collector, "mtls-sub", subscribe="derrick/v1/#") as sub,
            running(device, "mtls-pub") as pub,
        ):
            await sub.wait_subscribed()
            await pub.wait_connected()
            await pub.publish(topic, b"mutual", qos=1, timeout=10)
            message = await asyncio.wait_for(sub.inbox.get(), 10)
            assert (message.topic, message.payload) == (topic, b"mutual")

    asyncio.run(scenario())
    assert "as mtls-pub (p2, c1, k30, u'device-cert')" in broker.log_path.read_text()


def test_mutual_tls_listener_without_client_certificate_is_one_clear_error(broker, pki, logs):
    settings = tls_settings(broker.mtls_port, BrokerTls(ca_file=pki.ca.cert))

    async def scenario() -> None:
        async with running(settings, "mtls-nocert") as client:
            await until(lambda: client.connect_failures >= 2, 10, "two failed attempts")
            assert "certificate required" in client.last_error
            assert not client.connected

    asyncio.run(scenario())
    [line] = failures_logged(logs, "mtls-nocert")
    assert line["log_level"] == "error"
    assert line["broker"] == f"mqtts://127.0.0.1:{broker.mtls_port}"


# -- failures: one clear line, retries with backoff, no crash ------------------------------


def test_bad_password_is_logged_once_retried_with_backoff_and_recovers(broker, pki, logs):
    """The login fails until the broker learns the user; meanwhile one error line only,
    and the client keeps trying on its own (1 s, then 2 s apart) until it gets in."""
    settings = tls_settings(
        broker.tls_port,
        BrokerTls(ca_file=pki.ca.cert),
        username="late",
        password_env="TEST_LATE_PW",
        reconnect_min_s=1,
        reconnect_max_s=2,
    )

    async def scenario() -> None:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("TEST_LATE_PW", LATE_PASSWORD)
            client = MqttClient(settings, "late-login", persistent=False)
            await client.start()
        try:
            await until(lambda: client.connect_failures >= 3, 15, "three failed logins")
            assert client.last_error == NOT_AUTHORISED
            assert not client.connected
            broker.users["late"] = LATE_PASSWORD  # the operator adds the user
            broker.reload()
            await client.wait_connected(10)
            await client.publish(telemetry_topic(SITE, "crane-02", "lmi"), b"late", timeout=10)
            assert (client.last_error, client.connect_failures) == ("", 0)
        finally:
            await client.stop()

    refusals_before = broker.log_path.read_text().count("disconnected, not authorised")
    try:
        asyncio.run(scenario())
    finally:
        del broker.users["late"]
        broker.reload()
    [line] = failures_logged(logs, "late-login")
    assert line["log_level"] == "error"
    assert line["broker"] == f"mqtts://127.0.0.1:{broker.tls_port}"
    assert line["reason"] == NOT_AUTHORISED
    assert line["username"] == "late"
    [connected] = [e for e in logs if e["event"] == "broker connected"]
    assert connected["failed_attempts"] >= 3
    refusals = broker.log_path.read_text().count("disconnected, not authorised")
    assert refusals - refusals_before >= 3  # the broker saw every attempt


def test_wrong_password_for_known_user_is_not_authorised(broker, pki, monkeypatch, logs):
    monkeypatch.setenv("TEST_WRONG_PW", WRONG_PASSWORD)
    settings = tls_settings(
        broker.tls_port,
        BrokerTls(ca_file=pki.ca.cert),
        username="agent",
        password_env="TEST_WRONG_PW",
    )

    async def scenario() -> None:
        async with running(settings, "wrong-pw") as client:
            await until(lambda: client.connect_failures >= 1, 10, "a failed login")
            assert client.last_error == NOT_AUTHORISED

    asyncio.run(scenario())
    [line] = failures_logged(logs, "wrong-pw")
    assert line["log_level"] == "error"


def test_wrong_ca_is_logged_once_and_retried_without_crashing(broker, pki, logs):
    settings = tls_settings(
        broker.tls_port,
        BrokerTls(ca_file=pki.rogue.cert),
        username="agent",
        password_env="UNUSED_NEVER_SENT",
        reconnect_min_s=1,
        reconnect_max_s=2,
    )

    async def scenario() -> None:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("UNUSED_NEVER_SENT", AGENT_PASSWORD)
            client = MqttClient(settings, "wrong-ca", persistent=False)
            await client.start()
        try:
            await until(lambda: client.connect_failures >= 2, 15, "two failed handshakes")
            assert client.last_error.startswith("TLS certificate verify failed")
            assert "not signed by a CA in tls.ca_file" in client.last_error
            assert not client.connected
        finally:
            await client.stop()

    asyncio.run(scenario())
    [line] = failures_logged(logs, "wrong-ca")
    assert line["log_level"] == "error"
    assert line["broker"] == f"mqtts://127.0.0.1:{broker.tls_port}"
    assert line["reason"].startswith("TLS certificate verify failed")


def test_hostname_check_rejects_a_certificate_for_another_name(tmp_path, pki, logs):
    """A broker whose certificate names only broker.example: refused when we connect to
    127.0.0.1, accepted once server_hostname_check is off (the chain is still checked)."""
    other = pki.ca.issue_server("elsewhere", hosts=["broker.example"])
    with Mosquitto(tmp_path, tls=(pki.ca.cert, other.cert, other.key)) as plain_auth:
        checked = tls_settings(plain_auth.tls_port, BrokerTls(ca_file=pki.ca.cert))
        unchecked = tls_settings(
            plain_auth.tls_port, BrokerTls(ca_file=pki.ca.cert, server_hostname_check=False)
        )

        async def scenario() -> None:
            async with running(checked, "name-checked") as client:
                await until(lambda: client.connect_failures >= 1, 10, "a failed handshake")
                assert "IP address mismatch" in client.last_error
                assert "does not name the host" in client.last_error
            async with running(unchecked, "name-unchecked") as client:
                await client.wait_connected()

        asyncio.run(scenario())
    [line] = failures_logged(logs, "name-checked")
    assert line["log_level"] == "error"


def test_tls_towards_a_plain_listener_fails_and_is_retried(broker, pki, logs):
    settings = tls_settings(broker.port, BrokerTls(ca_file=pki.ca.cert))

    async def scenario() -> None:
        async with running(settings, "tls-to-plain") as client:
            await until(lambda: client.connect_failures >= 1, 10, "a failed handshake")
            assert not client.connected

    asyncio.run(scenario())
    assert len(failures_logged(logs, "tls-to-plain")) == 1


def test_unusable_client_key_is_an_error_at_start(pki, monkeypatch):
    monkeypatch.setenv("TEST_KEY_PASSPHRASE", "not-the-passphrase")
    settings = tls_settings(
        1,
        BrokerTls(
            ca_file=pki.ca.cert,
            cert_file=pki.collector.cert,
            key_file=pki.collector.key,
            key_password_env="TEST_KEY_PASSPHRASE",
        ),
    )

    async def scenario() -> None:
        client = MqttClient(settings, "bad-key")
        with pytest.raises(MqttError, match=r"TLS set-up for mqtts://127\.0\.0\.1:1 failed"):
            await client.start()

    asyncio.run(scenario())


# -- config: keys, relative paths, missing files -------------------------------------------


def agent_yaml(path: Path, broker: dict, **device: object) -> Path:
    return write_yaml(
        path,
        {
            "agent": {"id": "gw-1", "site": SITE},
            "format": "json",
            "broker": broker,
            "devices": [
                {
                    "name": "lmi",
                    "asset": "crane-01",
                    "profile": "crane",
                    "host": "127.0.0.1",
                    **device,
                }
            ],
            "log": {"format": "json"},
        },
    )


def test_tls_files_are_relative_to_the_config_file(tmp_path, pki, monkeypatch):
    (tmp_path / "certs").mkdir()
    shutil.copy(pki.ca.cert, tmp_path / "certs" / "ca.pem")
    shutil.copy(pki.device.cert, tmp_path / "certs" / "client.pem")
    shutil.copy(pki.device.key, tmp_path / "certs" / "client.key")
    (tmp_path / "mqtt.pass").write_text("x\n")
    monkeypatch.chdir("/")
    config = load_agent_config(
        agent_yaml(
            tmp_path / "agent.yaml",
            {
                "host": "localhost",
                "username": "agent",
                "password_file": "mqtt.pass",
                "tls": {
                    "ca_file": "certs/ca.pem",
                    "cert_file": "certs/client.pem",
                    "key_file": "certs/client.key",
                },
            },
        )
    )
    broker = config.broker
    assert broker.port == 8883  # the default with tls
    assert broker.url == "mqtts://localhost:8883"
    assert broker.password_file == tmp_path / "mqtt.pass"
    assert broker.tls is not None
    assert broker.tls.ca_file == tmp_path / "certs" / "ca.pem"
    assert broker.tls.key_file == tmp_path / "certs" / "client.key"
    assert broker.tls.server_hostname_check is True
    assert broker.tls.context().minimum_version >= ssl.TLSVersion.TLSv1_2


def test_missing_tls_file_fails_at_config_load(tmp_path):
    path = agent_yaml(tmp_path / "agent.yaml", {"tls": {"ca_file": "nope/ca.pem"}})
    with pytest.raises(ConfigError) as failed:
        load_agent_config(path)
    assert f"broker.tls.ca_file: {tmp_path}/nope/ca.pem: no such file" in str(failed.value)


def test_client_key_without_certificate_is_rejected(tmp_path, pki):
    path = agent_yaml(
        tmp_path / "agent.yaml", {"tls": {"ca_file": str(pki.ca.cert), "key_file": str(pki.ca.key)}}
    )
    with pytest.raises(ConfigError, match="key_file / key_password_env need cert_file"):
        load_agent_config(path)


# -- the real programs ----------------------------------------------------------------------


def test_agent_and_collector_programs_over_tls(
    tmp_path, broker, pki, influx1, influx_db, monkeypatch
):
    """simulator -> agent (TLS, password file) -> mosquitto (ACL) -> collector (mutual
    TLS, encrypted key) -> InfluxDB; config paths relative to each config file."""
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(pki.ca.cert, certs / "ca.pem")
    shutil.copy(pki.collector.cert, certs / "collector.pem")
    shutil.copy(pki.collector.key, certs / "collector.key")
    (tmp_path / "agent.pass").write_text(AGENT_PASSWORD + "\n")
    monkeypatch.setenv("TEST_KEY_PASSPHRASE", KEY_PASSPHRASE)
    sim = start_simulator(tmp_path, "--no-demo-overload")
    agent_cfg = agent_yaml(
        tmp_path / "agent.yaml",
        {
            "port": broker.tls_port,
            "username": "agent",
            "password_file": "agent.pass",
            "tls": {"ca_file": "certs/ca.pem"},
            "reconnect_max_s": 2,
        },
        port=sim.port,
        interval_s=0.2,
        timeout_s=0.5,
    )
    collector_cfg = write_yaml(
        tmp_path / "collector.yaml",
        {
            "collector": {"id": "col-tls"},
            "broker": {
                "port": broker.mtls_port,
                "tls": {
                    "ca_file": "certs/ca.pem",
                    "cert_file": "certs/collector.pem",
                    "key_file": "certs/collector.key",
                    "key_password_env": "TEST_KEY_PASSPHRASE",
                },
                "reconnect_max_s": 2,
            },
            "influx": {"api": "v1", "url": influx1.url, "database": influx_db},
            "batch": {"max_lines": 500, "max_delay_s": 0.1},
            "log": {"format": "json"},
        },
    )
    collector = Program("collector", ["--config", str(collector_cfg)], tmp_path / "col.log")
    agent = Program("agent", ["--config", str(agent_cfg)], tmp_path / "agent.log")
    programs = [sim.program, collector.start(), agent.start()]
    try:

        def stored() -> int:
            query = f"SELECT count(hook_load) FROM telemetry WHERE site='{SITE}'"
            result = influx1.query(query, db=influx_db)
            series = result["results"][0].get("series")
            return series[0]["values"][0][1] if series else 0

        wait_for(stored, 30, "telemetry in InfluxDB over TLS", program=collector)
    finally:
        codes = {p.name: (p.stop(), p.log_tail()) for p in reversed(programs)}
    for name, (code, tail) in codes.items():
        assert code == 0, f"{name} exit {code}:\n{tail}"
    for log_path, port in (
        (tmp_path / "agent.log", broker.tls_port),
        (tmp_path / "col.log", broker.mtls_port),
    ):
        text = log_path.read_text()
        assert f'"broker": "mqtts://127.0.0.1:{port}"' in text
        assert '"event": "broker connected"' in text
        assert "broker connection failed" not in text
        for secret in SECRETS:
            assert secret not in text
