"""The MQTT boundary: the only module that imports paho-mqtt.

paho runs its network loop in a thread of its own. Its callbacks never touch our state:
each hands its event to the asyncio loop with ``call_soon_threadsafe`` and the loop does
the rest, so there is no shared mutable state between threads.

Errors from paho become :class:`MqttError` and its subclasses, chained ``from exc``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from derrick.broker import BrokerSettings

log = structlog.get_logger(__name__)


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


class MqttClient:
    """An asyncio face on a paho client: await connect, publish (until PUBACK), subscribe.

    ``persistent=True`` keeps the session on the broker (clean_session false), so QoS 1
    messages queued while we are away are delivered when we come back. ``manual_ack``
    withholds the PUBACK of inbound messages until :meth:`ack` is called, so the broker
    redelivers anything we had not safely stored when we died.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        *,
        persistent: bool = True,
        manual_ack: bool = False,
        will: tuple[str, bytes] | None = None,
        inbox_size: int = 10_000,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.inbox: asyncio.Queue[InboundMessage] = asyncio.Queue(maxsize=inbox_size)
        self.inbox_dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._last_refusal = ""
        self._stopping = False
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._subscriptions: dict[str, int] = {}
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=not persistent,
            protocol=paho.MQTTv311,
            manual_ack=manual_ack,
        )
        self._client.max_inflight_messages_set(100)
        self._client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
        if will:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background; paho reconnects by itself after a drop."""
        self._loop = asyncio.get_running_loop()
        password = self.settings.password()
        if self.settings.username:
            self._client.username_pw_set(
                self.settings.username, password.get_secret_value() if password else None
            )
        try:
            self._client.connect_async(
                self.settings.host, self.settings.port, self.settings.keepalive_s
            )
        except (OSError, ValueError) as exc:
            raise MqttError(f"cannot connect to {self.settings.url}: {exc}") from exc
        self._client.loop_start()

    async def wait_connected(self, timeout: float | None = None) -> None:
        limit = self.settings.connect_timeout_s if timeout is None else timeout
        try:
            await asyncio.wait_for(self._connected.wait(), limit)
        except TimeoutError as exc:
            raise MqttTimeout(f"no connection to {self.settings.url} within {limit} s") from exc

    async def wait_disconnected(self) -> None:
        await self._disconnected.wait()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def stop(self, final: tuple[str, bytes] | None = None) -> None:
        """Optionally publish a last retained message, then disconnect cleanly."""
        if final and self.connected:
            try:
                await self.publish(final[0], final[1], retain=True, timeout=2.0)
            except MqttError:
                log.warning("final message not acknowledged", topic=final[0])
        self._stopping = True
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()

    # -- outbound ----------------------------------------------------------------------

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Hand a message to paho; the future completes on PUBACK (at once for QoS 0).

        While disconnected paho keeps the message and sends it again on reconnect, so a
        future that is still pending is not lost, only not confirmed yet.
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
        """Publish and wait for the PUBACK; MqttTimeout when it does not come in time."""
        future = self.publish_nowait(topic, payload, qos=qos, retain=retain)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError as exc:
            raise MqttTimeout(f"no PUBACK for {topic} within {timeout} s") from exc

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
            self._client.subscribe(topic, qos)

    def ack(self, message: InboundMessage) -> None:
        """Acknowledge an inbound message (manual ack mode): the broker may forget it."""
        self._client.ack(message.mid, message.qos)

    # -- paho callbacks: run in paho's thread, hand over to the loop --------------------

    def _call_in_loop(self, func: Any, *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(func, *args)

    def _on_connect(self, client: paho.Client, _ud: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._call_in_loop(self._connect_failed, str(reason))
            return
        for topic, qos in self._subscriptions.items():
            client.subscribe(topic, qos)
        self._call_in_loop(self._set_connected)

    def _on_disconnect(self, _c: paho.Client, _ud: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self._call_in_loop(self._set_disconnected, str(reason))

    def _on_publish(self, _c: paho.Client, _ud: Any, mid: int, _reason: Any, _p: Any) -> None:
        self._call_in_loop(self._published, mid)

    def _on_message(self, _c: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        message = InboundMessage(msg.topic, msg.payload, msg.qos, msg.mid, bool(msg.retain))
        self._call_in_loop(self._deliver, message)

    # -- the same events, now on the loop -----------------------------------------------

    def _set_connected(self) -> None:
        if not self._connected.is_set():
            log.info("broker connected", broker=self.settings.url, client_id=self.client_id)
        self._connected.set()
        self._disconnected.clear()
        self._last_refusal = ""

    def _set_disconnected(self, reason: str) -> None:
        if self._connected.is_set() and not self._stopping:
            log.warning("broker disconnected", broker=self.settings.url, reason=reason)
        self._connected.clear()
        self._disconnected.set()

    def _connect_failed(self, reason: str) -> None:
        """Log a refusal once per reason; paho keeps retrying with backoff."""
        if reason != self._last_refusal:
            log.error(
                "broker refused connection",
                broker=self.settings.url,
                reason=reason,
                retry_max_s=self.settings.reconnect_max_s,
            )
        self._last_refusal = reason

    def _published(self, mid: int) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _deliver(self, message: InboundMessage) -> None:
        try:
            self.inbox.put_nowait(message)
        except asyncio.QueueFull:
            # Not acknowledged, so with manual ack the broker sends it again on reconnect.
            self.inbox_dropped += 1
            if self.inbox_dropped == 1 or self.inbox_dropped % 1000 == 0:
                log.warning(
                    "inbox full, message dropped", dropped=self.inbox_dropped, topic=message.topic
                )
