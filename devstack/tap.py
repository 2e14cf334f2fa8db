"""A recording MQTT subscriber for tests and benchmarks, on a thread of its own.

Tests are synchronous; :class:`Tap` runs a :class:`derrick.mqtt.client.MqttClient` in its own
event loop on a background thread, with a persistent session (so messages published
while it is reconnecting are queued by the broker for it), and records every message.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass

from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.monotonic() when it arrived


class Tap:
    def __init__(self, port: int, topic: str, *, host: str = "127.0.0.1") -> None:
        self.settings = BrokerSettings(host=host, port=port, reconnect_max_s=1)
        self.topic = topic
        self.client_id = f"tap-{uuid.uuid4().hex[:8]}"
        self._messages: list[Received] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=self.client_id, daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> Tap:
        self._thread.start()
        if not self._ready.wait(15) or self._error:
            raise RuntimeError(f"tap did not subscribe to {self.topic}: {self._error}")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def wait(self, predicate, timeout: float, what: str) -> list[Received]:
        """Wait until ``predicate(messages)`` is truthy; TimeoutError names ``what``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.messages()
            if predicate(messages):
                return messages
            time.sleep(0.1)
        raise TimeoutError(f"{what}: not within {timeout} s ({len(self.messages())} messages)")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:  # noqa: BLE001 - reported to the test by __enter__
            self._error = exc
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        client = MqttClient(self.settings, self.client_id, persistent=True, inbox_size=1_000_000)
        await client.start()
        await client.subscribe(self.topic, qos=1)
        await client.wait_subscribed(timeout=10)  # the broker forwards from now on
        self._ready.set()
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            while not stopping.done():
                getting = asyncio.ensure_future(client.inbox.get())
                await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if getting.done():
                    msg = getting.result()
                    with self._lock:
                        self._messages.append(
                            Received(msg.topic, msg.payload, msg.retain, time.monotonic())
                        )
                else:
                    getting.cancel()
        finally:
            await client.stop()
