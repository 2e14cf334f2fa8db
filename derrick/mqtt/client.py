"""The MQTT boundary: the only module that imports paho-mqtt.

paho's network I/O runs in the program's asyncio loop, through paho's external-loop
interface (``loop_read`` / ``loop_write`` / ``loop_misc`` and the ``on_socket_*``
callbacks): the socket is a reader (and, while paho has bytes to send, a writer) of the
loop, and paho's callbacks run in the loop's thread. Only opening a connection (TCP and
the TLS handshake block) runs in a worker thread; the socket callbacks it triggers are
handed to the loop with ``call_soon_threadsafe``. paho's own thread (``loop_start``) cost
twice the CPU per message: a wake-up byte on a socket pair for every acknowledgement
and the interpreter lock passed between the two threads for every message (measured:
195 against 89 us of CPU per received and acknowledged message; at 5,000 messages a
second that is the difference between a core and half of one).

The receive path replaces two of paho's steps (:class:`_Paho`, paho pinned below 3):
its reads of the socket go through a buffer (one ``recv()`` for whatever arrived, not
three or more per packet), and an ordinary QoS 0/1 PUBLISH becomes an
:class:`InboundMessage` without paho's MQTTMessage, MQTT 5 Properties object and topic
matcher; everything else (QoS 2, properties, odd packets) still takes paho's way.
Measured on PUBLISH packets of 700 bytes through a socket pair, MQTT 5: 50 -> 10 us of
CPU per message, the buffer a tenth of that.

Errors from paho become :class:`MqttError` and its subclasses, chained ``from exc``.

Connection failures
-------------------
:meth:`MqttClient.start` starts a task that connects and, after a drop, connects again,
waiting ``reconnect_min_s`` doubling up to ``reconnect_max_s`` (back to the minimum after
a connection that was accepted). A failed attempt shows in one of three ways:

* the broker refuses the CONNECT (bad user name or password, not authorised):
  ``on_connect`` with a failure reason, then ``on_disconnect`` when it closes the socket;
* an ``OSError`` while opening the connection -- refused, timed out, TLS handshake or
  certificate verification -- raised by paho's ``reconnect`` in the worker thread;
* no CONNACK within ``connect_timeout_s``;
* the socket dies before a CONNACK. With TLS 1.3 a broker that rejects our client
  certificate sends its alert *after* the handshake, so it shows up as a receive error:
  paho logs it at ERROR through the logger handed to ``enable_logger`` (which we keep to
  ourselves) and calls ``on_disconnect``.

Every failed attempt counts in :attr:`MqttClient.connect_failures` and sets
:attr:`MqttClient.last_error`. The log gets ONE line per distinct reason, not one per
retry: an error for authentication and TLS problems (they do not heal by themselves), a
warning for network ones (connection refused while the broker restarts). The password is
never logged: paho keeps it and only sends it in the CONNECT packet.

In-flight window (MQTT 5 Receive Maximum)
------------------------------------------
A broker sends a subscriber only so many QoS 1 messages it has not acknowledged yet;
mosquitto's stock ``max_inflight_messages`` is 20 and everything beyond waits in a queue
of ``max_queued_messages`` (1,000), past which new messages are silently dropped. A
subscriber that acknowledges only after storing (``manual_ack``) is held to that window.
With ``receive_maximum`` the client speaks MQTT 5 and announces how many unacknowledged
messages it takes; mosquitto 2.0 then uses that number *instead of* its own
``max_inflight_messages`` (checked with 2.0.11: 20 delivered unacknowledged under MQTT
3.1.1 or MQTT 5 without the property, 1,000 with ``Receive Maximum`` 1000).
:attr:`MqttClient.unacked` counts what was delivered and not acknowledged yet, and
:attr:`MqttClient.window` is the announced limit (None under MQTT 3.1.1: unknown).

ACL denials (mosquitto 2.0, MQTT 3.1.1)
---------------------------------------
MQTT 3.1.1 cannot refuse a PUBLISH. mosquitto answers a QoS 1 publish to a topic the ACL
denies with an ordinary PUBACK and drops the message, so :meth:`MqttClient.publish`
succeeds and no subscriber receives it; a wrong ACL shows only as missing data (and as
"Denied PUBLISH" in the broker's debug log). Reading is the same: mosquitto's acl_file
grants every SUBSCRIBE (SUBACK "Granted QoS 1", checked with 2.0.11) and filters on
delivery, so a client without read rights is subscribed and simply gets nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from derrick.mqtt.settings import BrokerSettings
from derrick.plumbing.threads import DaemonThreads

log = structlog.get_logger(__name__)

MAX_RECEIVE = 65535  # the largest Receive Maximum MQTT 5 can announce
READ_BURST = 256  # packets read per readable event, at most
RECV_SIZE = 65536  # bytes asked of the socket per recv() under paho's small reads
MISC_EVERY_S = 1.0  # paho's keep-alive and timeout housekeeping (loop_misc)
STOP_TIMEOUT_S = 2.0  # how long stop() waits for the DISCONNECT to go out
NEVER_EXPIRES = 0xFFFFFFFF  # Session Expiry Interval: keep the session, as 3.1.1 does
PUBACK = 0x40  # its fixed header's first byte
_PUBACK = struct.Struct("!BBH")  # PUBACK: type, remaining length (2), packet identifier


class MqttError(Exception):
    """Something went wrong talking to the broker."""


class MqttTimeout(MqttError):
    """The broker did not answer in time (CONNACK, PUBACK, SUBACK)."""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message from the broker. With manual ack, pass it to :meth:`MqttClient.ack`."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    dup: bool = False
    """The broker sent it before (a redelivery after a reconnect, not yet acknowledged)."""


# CONNACK refusals that mean the credentials (mosquitto 2.0 answers a wrong password
# with "Not authorized").
_LOGIN_REFUSALS = {"Bad user name or password", "Not authorized"}
# Certificate verification codes (OpenSSL X509_V_ERR_*) that mean "not our CA".
_UNTRUSTED_CODES = {2, 18, 19, 20, 21}
# X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH_CODES = {62, 64}


def describe_connect_error(exc: BaseException | None) -> tuple[str, bool]:
    """A readable reason for an exception raised while connecting, and whether it is a
    set-up problem (TLS: wrong CA, wrong name, no client certificate) rather than the
    network. Never includes secrets: ssl and socket errors carry none."""
    if isinstance(exc, ssl.SSLError):
        return _describe_tls_error(exc), True
    if isinstance(exc, OSError):
        return _describe_network_error(exc), False
    return "connection failed", False


def _describe_tls_error(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = f"TLS certificate verify failed: {exc.verify_message}"
        if exc.verify_code in _UNTRUSTED_CODES:
            reason += " (the broker certificate is not signed by a CA in tls.ca_file)"
        elif exc.verify_code in _NAME_MISMATCH_CODES:
            reason += " (the broker certificate does not name the host in broker.host)"
        return reason
    reason = f"TLS handshake failed: {exc.strerror or exc}"
    if exc.reason == "WRONG_VERSION_NUMBER":
        reason += " (is the port a TLS listener?)"
    return reason


def _describe_network_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    return exc.strerror or str(exc) or type(exc).__name__


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the handshake fails.

    paho (2.2) wraps the TCP socket and calls ``do_handshake()`` without closing the
    socket if that raises (wrong CA, wrong name, not a TLS port), so every failed attempt
    would leave an open socket for the garbage collector (a ResourceWarning). Installed
    through ``SSLContext.sslsocket_class``.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class _Paho(paho.Client):
    """paho's client, reading the socket through a buffer of its own.

    paho reads a packet's first byte and each byte of its remaining length with a
    ``recv()`` of one byte, then the rest with one more: three system calls or more per
    message (a TLS socket also goes through OpenSSL each time). Here ``_sock_recv``, the
    one place paho reads, asks the socket for up to :data:`RECV_SIZE` bytes and serves
    paho's small reads from what it got, so a read of the socket yields as many packets
    as arrived. paho still frames and parses every packet; this changes only how many
    bytes each ``recv()`` takes. The semantics paho relies on are kept: ``b""`` at the
    end of the stream (after what is buffered), ``BlockingIOError`` when nothing is
    there, TLS's want-read / want-write mapped as paho maps them.

    Buffered bytes do not make the socket readable: :meth:`MqttClient._read` reads until
    the socket had nothing more (:attr:`starved`) and comes back by itself while
    :meth:`buffered` (see there). A new socket (reconnect) starts with an empty buffer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deliver: Callable[[InboundMessage], None] | None = None
        """Where :meth:`_handle_publish` hands inbound messages (None: paho's way)."""
        self._rbuf = b""
        self._rpos = 0
        self._rsock: Any = None  # the socket the buffer was read from
        self.starved = False
        """The last read found the socket empty (BlockingIOError or TLS want-read)."""

    def buffered(self) -> bool:
        """Bytes read from the current socket that paho has not taken yet."""
        return self._rpos < len(self._rbuf) and self._rsock is self._sock

    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._sock
        if sock is None:
            raise ConnectionError("self._sock is None")
        pos = self._rpos
        if pos < len(self._rbuf) and self._rsock is sock:
            end = pos + bufsize
            self._rpos = end
            return self._rbuf[pos:end]
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError) as err:
            self.starved = True
            raise BlockingIOError() from err
        except ssl.SSLWantWriteError as err:
            self.starved = True
            self._call_socket_register_write()
            raise BlockingIOError() from err
        if len(data) <= bufsize:
            self._rbuf = b""
            self._rpos = 0
            return data
        self._rbuf = data
        self._rpos = bufsize
        self._rsock = sock
        return data[:bufsize]

    def send_pubacks(self, mids: list[int]) -> None:
        """Acknowledge these QoS 1 messages (manual ack) with one write.

        paho's ``ack()`` queues one packet per message, and its ``loop_write`` sends each
        with a ``send()`` of its own (4 bytes); acknowledging a stored batch of a
        thousand messages cost a thousand system calls, about 5 us per message. These
        are the PUBACKs ``ack()`` makes, byte for byte (``_send_command_with_mid``:
        type, remaining length 2, packet identifier; under MQTT 5 no reason code means
        success), in the same order, queued as one packet that paho writes as it writes
        any other (partial writes, reconnect: dropped with the rest of the queue).
        """
        data = b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids])
        self._packet_queue(PUBACK, data, mids[-1], 1)

    def _handle_publish(self) -> MQTTErrorCode:
        """An inbound QoS 0 or 1 PUBLISH straight to :attr:`deliver` as an InboundMessage.

        paho's own handling (``_packet.decode_publish`` and ``_handle_on_message``) builds
        an MQTT 5 ``Properties`` object per message even when there are none (it probes
        all 27 property names with ``hasattr``), then an ``MQTTMessage``, decodes the
        topic twice for a debug line, runs its per-topic callback matcher (we register no
        per-topic callbacks) and takes two locks: about half the receive path's CPU.
        This takes the common case itself -- topic, packet identifier, an empty property
        list, payload -- and hands everything else to paho unchanged: QoS 2, properties,
        an empty topic (MQTT 5 topic alias), a topic that is not UTF-8, a short packet.
        The PUBACK (without manual ack) goes out as paho sends it.
        """
        deliver = self.deliver
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        packet = self._in_packet["packet"]
        size = len(packet)
        if deliver is None or qos == 2 or size < 2:  # not even a topic length
            return super()._handle_publish()
        topic_end = 2 + ((packet[0] << 8) | packet[1])
        end = topic_end + (2 if qos else 0) + (self._protocol == paho.MQTTv5)
        if topic_end == 2 or end > size:  # an empty topic, or too short
            return super()._handle_publish()
        if self._protocol == paho.MQTTv5 and packet[end - 1] != 0:
            return super()._handle_publish()  # properties: paho decodes them
        try:
            topic = packet[2:topic_end].decode()
        except UnicodeDecodeError:
            return super()._handle_publish()
        mid = ((packet[topic_end] << 8) | packet[topic_end + 1]) if qos else 0
        message = InboundMessage(
            topic, bytes(packet[end:]), qos, mid, bool(header & 0x01), bool(header & 0x08)
        )
        try:
            deliver(message)
        except Exception as err:  # as paho reports an exception in on_message
            self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
            raise
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class _PahoErrors(logging.Handler):
    """Hands paho's ERROR log lines (socket errors, e.g. a TLS alert) to a callback."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__(logging.ERROR)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self._sink(record.getMessage())


class MqttClient:
    """An asyncio face on a paho client: await connect, publish (until PUBACK), subscribe.

    ``persistent=True`` keeps the session on the broker (clean_session false), so QoS 1
    messages queued while we are away are delivered when we come back. ``manual_ack``
    withholds the PUBACK of inbound messages until :meth:`ack` is called, so the broker
    redelivers anything we had not safely stored when we died.

    ``receive_maximum`` connects with MQTT 5 and announces that many unacknowledged
    inbound messages (see the module docstring); without it the client speaks 3.1.1. A
    persistent MQTT 5 session never expires, as a 3.1.1 one does not.

    ``settings.tls`` switches to TLS (``tls_set_context``; TLS 1.2 or newer, the broker
    certificate always verified). A failed connection attempt never raises: it is
    counted (:attr:`connect_failures`), described (:attr:`last_error`), logged once per
    reason, and retried with backoff.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        *,
        persistent: bool = True,
        manual_ack: bool = False,
        will: tuple[str, bytes] | Callable[[], tuple[str, bytes, bool]] | None = None,
        inbox_size: int = 10_000,
        receive_maximum: int | None = None,
        resend_after_reconnect: bool = True,
    ) -> None:
        if receive_maximum is not None and not 1 <= receive_maximum <= MAX_RECEIVE:
            raise ValueError(f"receive_maximum must be 1..{MAX_RECEIVE}")
        self.settings = settings
        self.client_id = client_id
        self.inbox: asyncio.Queue[InboundMessage] = asyncio.Queue(maxsize=inbox_size)
        self.inbox_dropped = 0
        self.window = receive_maximum
        self.unacked = 0
        """Inbound QoS 1 messages delivered to :attr:`inbox` and not acknowledged yet."""
        self.peak_unacked = 0
        """The most :attr:`unacked` has been: under MQTT 3.1.1, where the broker's window
        is not announced, what it has allowed so far (it never sends more)."""
        self._manual_ack = manual_ack
        self._persistent = persistent
        self._last_error = ""
        self._connect_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._logged_error = ""
        self._attempt_open = False
        self._accepted = False  # the current attempt got a CONNACK that accepted us
        self._socket_error = ""
        self._stopping = False
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._acks: list[int] = []  # mids acknowledged, their PUBACKs not queued yet
        self._subscriptions: dict[str, int] = {}
        self._unacked_subscribes: set[int] = set()  # SUBSCRIBE mids awaiting their SUBACK
        self._all_subscribed = asyncio.Event()
        self._all_subscribed.set()
        self._settled = asyncio.Event()  # the current attempt was accepted or ended
        self._tasks: list[asyncio.Task[None]] = []
        self._opener = DaemonThreads(f"mqtt-connect-{client_id}")
        self._reading: int | None = None  # the fd registered as a reader of the loop
        self._writing: int | None = None
        v5 = receive_maximum is not None
        self._client = _Paho(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else not persistent,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            manual_ack=manual_ack,
        )
        self._client.max_inflight_messages_set(100)
        self._client.connect_timeout = settings.connect_timeout_s
        self._will = will if callable(will) else None
        self._resend = resend_after_reconnect
        if will and not callable(will):
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.enable_logger(self._paho_logger())
        self._client.deliver = self._deliver
        self._wire(self._client)

    def _wire(self, client: paho.Client) -> None:
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    def _paho_logger(self) -> logging.Logger:
        """A logger of our own (not in logging's tree, so nothing else sees paho's chatter)
        whose ERROR records -- the only ones it lets through -- come to the loop."""
        logger = logging.Logger(f"{__name__}.paho.{self.client_id}", logging.ERROR)
        logger.propagate = False
        logger.addHandler(_PahoErrors(lambda text: self._call_in_loop(self._socket_failed, text)))
        return logger

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background; after a drop, connect again.

        Raises MqttError only for local set-up problems (password or key passphrase not
        readable, unusable certificate or key); a broker that refuses us or cannot be
        reached is retried, see :attr:`last_error`.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        url = self.settings.url
        try:
            password = self.settings.password()
        except (OSError, ValueError) as exc:
            raise MqttError(f"password for {url}: {exc}") from exc
        if self.settings.username:
            self._client.username_pw_set(
                self.settings.username, password.get_secret_value() if password else None
            )
        if self.settings.tls is not None:
            try:
                context = self.settings.tls.context()
                context.sslsocket_class = _ClosingSSLSocket
                self._client.tls_set_context(context)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise MqttError(f"TLS set-up for {url} failed: {exc}") from exc
        try:
            self._client.connect_async(
                self.settings.host,
                self.settings.port,
                self.settings.keepalive_s,
                **self._v5_connect(),
            )
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {url}: {exc}") from exc
        self._tasks = [
            asyncio.create_task(self._connect_forever(), name=f"mqtt-{self.client_id}"),
            asyncio.create_task(self._misc_forever(), name=f"mqtt-misc-{self.client_id}"),
        ]

    def _v5_connect(self) -> dict[str, Any]:
        """CONNECT arguments of an MQTT 5 session: clean start, expiry, Receive Maximum."""
        if self.window is None:
            return {}
        properties = Properties(PacketTypes.CONNECT)
        properties.ReceiveMaximum = self.window
        if self._persistent:
            properties.SessionExpiryInterval = NEVER_EXPIRES
        return {"clean_start": not self._persistent, "properties": properties}

    async def _connect_forever(self) -> None:
        """Connect; after every failed attempt or drop, wait (backoff) and connect again."""
        delay = self.settings.reconnect_min_s
        while not self._stopping:
            self._accepted = False
            await self._attempt()
            if self._stopping:
                return
            if self._accepted:  # a connection that worked: start the backoff again
                delay = self.settings.reconnect_min_s
            await asyncio.sleep(delay)
            delay = min(self.settings.reconnect_max_s, delay * 2)

    async def _attempt(self) -> None:
        """One connection: open it (TCP, TLS, CONNECT), then wait until it ends."""
        self._disconnected.clear()
        self._settled.clear()
        try:
            await self._opener.run(self._client.reconnect)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason, setup_problem = describe_connect_error(exc)
            self._attempt_failed(reason, setup_problem)
            self._disconnected.set()
            return
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await self._settled.wait()
        except TimeoutError:
            self._attempt_failed(
                f"no CONNACK within {self.settings.connect_timeout_s} s", setup_problem=False
            )
            self._client.disconnect()
        await self._disconnected.wait()

    async def _misc_forever(self) -> None:
        """paho's housekeeping: keep-alive PINGREQ, and a dead connection noticed."""
        while True:
            await asyncio.sleep(MISC_EVERY_S)
            self._client.loop_misc()

    async def wait_connected(self, timeout: float | None = None) -> None:
        limit = self.settings.connect_timeout_s if timeout is None else timeout
        try:
            await asyncio.wait_for(self._connected.wait(), limit)
        except TimeoutError as exc:
            why = f": {self.last_error}" if self.last_error else ""
            raise MqttTimeout(
                f"no connection to {self.settings.url} within {limit} s{why}"
            ) from exc

    async def wait_subscribed(self, timeout: float | None = None) -> None:
        """Wait until connected and every subscription is confirmed by a SUBACK, i.e. the
        broker will forward what is published from now on."""
        limit = self.settings.connect_timeout_s if timeout is None else timeout

        async def ready() -> None:
            while not (self.connected and self._all_subscribed.is_set()):
                await self._connected.wait()
                await self._all_subscribed.wait()

        try:
            await asyncio.wait_for(ready(), limit)
        except TimeoutError as exc:
            raise MqttTimeout(f"subscriptions on {self.settings.url} not confirmed") from exc

    async def wait_disconnected(self) -> None:
        await self._disconnected.wait()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def last_error(self) -> str:
        """Why the last connection attempt failed; "" once connected. No secrets in it."""
        return self._last_error

    @property
    def connect_failures(self) -> int:
        """Failed connection attempts since the last successful connection."""
        return self._connect_failures

    async def stop(self, final: tuple[str, bytes] | None = None) -> None:
        """Optionally publish a last retained message, then disconnect cleanly."""
        if final and self.connected:
            try:
                await self.publish(final[0], final[1], retain=True, timeout=2.0)
            except MqttError:
                log.warning("final message not acknowledged", topic=final[0])
        self._stopping = True
        self._send_acks()  # before the DISCONNECT
        for task in self._tasks:
            task.cancel()
        self._client.disconnect()
        if self._reading is not None:  # the DISCONNECT goes out through the loop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._disconnected.wait(), STOP_TIMEOUT_S)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._unregister(reading=True, writing=True)
        self._opener.close()
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()

    # -- outbound ----------------------------------------------------------------------

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Hand a message to paho; the future completes on PUBACK (at once for QoS 0).

        While disconnected paho keeps the message and sends it again on reconnect, so a
        future that is still pending is not lost, only not confirmed yet. A PUBACK does
        not mean the broker's ACL let the message through (see the module docstring).
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic} refused: {paho.error_string(info.rc)}")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if qos == 0:
            future.set_result(None)
        else:
            self._pending[info.mid] = future
        return future

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 30.0,
    ) -> None:
        """Publish and wait for the PUBACK; MqttTimeout when it does not come in time,
        MqttError when the message was dropped (queued while disconnected by a client
        that sends nothing of a connection again on the next, or stopped)."""
        future = self.publish_nowait(topic, payload, qos=qos, retain=retain)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError as exc:
            raise MqttTimeout(f"no PUBACK for {topic} within {timeout} s") from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and task is not None and not task.cancelling():
                raise MqttError(f"publish to {topic} dropped: its connection ended") from None
            raise

    async def wait_published(self, timeout: float) -> bool:
        """Wait until every outstanding PUBACK arrived; False on timeout."""
        pending = [fut for fut in self._pending.values() if not fut.done()]
        if not pending:
            return True
        done, _ = await asyncio.wait(pending, timeout=timeout)
        return len(done) == len(pending)

    # -- inbound -----------------------------------------------------------------------

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now and again after every reconnect."""
        self._subscriptions[topic] = qos
        if self.connected:
            _rc, mid = self._client.subscribe(topic, qos)
            self._subscribing([mid], reset=False)

    def ack(self, message: InboundMessage) -> None:
        """Acknowledge an inbound message (manual ack mode): the broker may forget it.

        In the loop's thread, QoS 1 acknowledgements are gathered until the loop's next
        turn and go out together (:meth:`_Paho.send_pubacks`), in the order of the calls;
        paho would write them one by one in that next turn anyway."""
        if self._manual_ack and message.qos == 1 and threading.get_ident() == self._loop_thread:
            if not self._acks:
                self._loop.call_soon(self._send_acks)  # type: ignore[union-attr]
            self._acks.append(message.mid)
        else:
            self._client.ack(message.mid, message.qos)
        if self._manual_ack and message.qos > 0 and self.unacked > 0:
            self.unacked -= 1

    def _send_acks(self) -> None:
        mids, self._acks = self._acks, []
        if mids:
            self._client.send_pubacks(mids)

    # -- the socket in the event loop ---------------------------------------------------

    def _read(self) -> None:
        """Packets while the socket has them: paho's ``loop_read`` reads one packet at a
        time here (it reads more only for QoS messages it tracks itself), and a trip
        through the event loop per message cost more than the message. Bytes left in
        :class:`_Paho`'s buffer (after :data:`READ_BURST` packets) do not make the
        socket readable again, so this comes back for them by itself."""
        client = self._client
        for _ in range(READ_BURST):
            client.starved = False
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if client.starved or client.socket() is None:
                return  # the socket had nothing more (or the connection ended)
        if client.buffered() and self._loop is not None:
            self._loop.call_soon(self._read)

    def _write(self) -> None:
        self._client.loop_write()

    def _on_socket_open(self, _c: paho.Client, _ud: Any, sock: Any) -> None:
        self._call_in_loop(self._register_reader, sock.fileno())

    def _on_socket_close(self, _c: paho.Client, _ud: Any, _sock: Any) -> None:
        # paho closes the socket right after this returns: unregister now (in the loop's
        # thread: connections are only opened in the worker, and closed in the loop)
        self._unregister(reading=True, writing=True)

    def _on_socket_register_write(self, _c: paho.Client, _ud: Any, sock: Any) -> None:
        self._call_in_loop(self._register_writer, sock.fileno())

    def _on_socket_unregister_write(self, _c: paho.Client, _ud: Any, _sock: Any) -> None:
        self._call_in_loop(self._unregister, False, True)

    def _register_reader(self, fd: int) -> None:
        if self._loop is None or self._client.socket() is None:
            return  # closed again before the loop got here
        if self._stopping:  # opened while stop() ran: say goodbye at once
            self._client.disconnect()
            self._client.loop_write()
            return
        self._reading = fd
        self._loop.add_reader(fd, self._read)

    def _register_writer(self, fd: int) -> None:
        sock = self._client.socket()
        if self._loop is None or sock is None or sock.fileno() != fd:
            return
        self._writing = fd
        self._loop.add_writer(fd, self._write)

    def _unregister(self, reading: bool, writing: bool) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        if reading and self._reading is not None:
            self._loop.remove_reader(self._reading)
            self._reading = None
        if writing and self._writing is not None:
            self._loop.remove_writer(self._writing)
            self._writing = None

    # -- paho callbacks: in the loop's thread (but on_pre_connect and the socket-open
    #    callbacks, which come from the connecting worker) ------------------------------

    def _call_in_loop(self, func: Any, *args: Any) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            func(*args)
        else:
            self._loop.call_soon_threadsafe(func, *args)

    def _on_pre_connect(self, client: paho.Client, _ud: Any) -> None:
        if self._will is not None:  # a will that changes per connection (Sparkplug NDEATH)
            topic, payload, retain = self._will()
            client.will_set(topic, payload, qos=1, retain=retain)
        self._call_in_loop(self._attempt_started)

    def _on_connect(self, client: paho.Client, _ud: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            text = f"broker refused the connection: {reason}"
            login = str(reason) in _LOGIN_REFUSALS
            if login:
                text += " (check broker.username and the password)"
            self._attempt_failed(text, login)
            return
        if not self._resend:
            self._forget_unsent(client)
        mids = [client.subscribe(topic, qos)[1] for topic, qos in self._subscriptions.items()]
        self._subscribing(mids, True)
        self._accepted = True
        self._set_connected()

    def _forget_unsent(self, client: paho.Client) -> None:
        """Drop what paho would send again on this new connection; their futures are
        cancelled, so the caller (whose spool still holds them) sends them itself.

        For a Sparkplug edge node: each connection numbers its messages from its birth
        on, so a message numbered in the last one must not arrive before the new birth.
        paho keeps no public way to do this; its out-queue is cleared under its own lock
        (paho is pinned below 3, see pyproject.toml). Runs in paho's CONNACK handling,
        on the loop's thread, before paho resends."""
        with client._out_message_mutex:
            client._out_messages.clear()
            client._inflight_messages = 0
        pending, self._pending = self._pending, {}
        for future in pending.values():
            future.cancel()

    def _on_disconnect(self, _c: paho.Client, _ud: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self._call_in_loop(self._set_disconnected, str(reason))

    def _on_publish(self, _c: paho.Client, _ud: Any, mid: int, _reason: Any, _p: Any) -> None:
        self._published(mid)

    def _on_subscribe(self, _c: paho.Client, _ud: Any, mid: int, _rcs: Any, _p: Any) -> None:
        self._subscribe_acked(mid)

    def _on_message(self, _c: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        self._deliver(
            InboundMessage(
                msg.topic, msg.payload, msg.qos, msg.mid, bool(msg.retain), bool(msg.dup)
            )
        )

    # -- state changes ------------------------------------------------------------------

    def _attempt_started(self) -> None:
        self._attempt_open = True
        self._socket_error = ""

    def _set_connected(self) -> None:
        if not self._connected.is_set():
            log.info(
                "broker connected",
                broker=self.settings.url,
                client_id=self.client_id,
                failed_attempts=self.connect_failures,
            )
        self._connected.set()
        self._settled.set()
        self._disconnected.clear()
        self._attempt_open = False
        self._logged_error = ""
        self._last_error = ""
        self._connect_failures = 0

    def _set_disconnected(self, reason: str) -> None:
        if self._connected.is_set() and not self._stopping:
            details = {"error": self._socket_error} if self._socket_error else {}
            log.warning("broker disconnected", broker=self.settings.url, reason=reason, **details)
        elif self._attempt_open and not self._stopping:
            # The socket closed before any CONNACK (on_connect would have closed the attempt).
            error = self._socket_error or reason
            self._attempt_failed(f"connection lost before CONNACK: {error}", "SSL" in error)
        self._connected.clear()
        self._disconnected.set()
        self._settled.set()

    def _subscribing(self, mids: list[int], reset: bool) -> None:
        """SUBSCRIBEs sent; ``reset`` on a new connection, where older ones never return."""
        if reset:
            self._unacked_subscribes.clear()
        self._unacked_subscribes.update(mids)
        if self._unacked_subscribes:
            self._all_subscribed.clear()
        else:
            self._all_subscribed.set()

    def _subscribe_acked(self, mid: int) -> None:
        self._unacked_subscribes.discard(mid)
        if not self._unacked_subscribes:
            self._all_subscribed.set()

    def _socket_failed(self, text: str) -> None:
        self._socket_error = text

    def _attempt_failed(self, reason: str, setup_problem: bool) -> None:
        """Count and describe a failed attempt; log it once per reason.

        paho has already scheduled the retry, with backoff.
        """
        if self._stopping:
            return
        self._attempt_open = False
        self._connect_failures += 1
        self._last_error = reason
        if reason == self._logged_error:
            return
        self._logged_error = reason
        emit = log.error if setup_problem else log.warning
        emit(
            "broker connection failed",
            broker=self.settings.url,
            reason=reason,
            client_id=self.client_id,
            username=self.settings.username,
            retry_max_s=self.settings.reconnect_max_s,
        )

    def _published(self, mid: int) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _deliver(self, message: InboundMessage) -> None:
        try:
            self.inbox.put_nowait(message)
            if self._manual_ack and message.qos > 0:
                self.unacked += 1
                self.peak_unacked = max(self.peak_unacked, self.unacked)
        except asyncio.QueueFull:
            # Not acknowledged, so with manual ack the broker sends it again on reconnect.
            self.inbox_dropped += 1
            if self.inbox_dropped == 1 or self.inbox_dropped % 1000 == 0:
                log.warning(
                    "inbox full, message dropped", dropped=self.inbox_dropped, topic=message.topic
                )
