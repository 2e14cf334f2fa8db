"""Publish stage: take messages from the outbox and publish them, QoS 1, one at a time.

A message leaves this stage only when the broker acknowledged it. While the broker is
away, paho holds the message and sends it again on reconnect; this stage waits (logging
once) and the outbox absorbs what the pollers keep producing.
"""

from __future__ import annotations

import asyncio

import structlog

from agent.outbox import Outbox
from derrick.contract import AgentStatus, agent_status_topic, now_ns, telemetry_topic
from derrick.mqtt import MqttClient

log = structlog.get_logger(__name__)


async def publish_forever(outbox: Outbox, client: MqttClient, ack_wait_s: float) -> None:
    while True:
        message = await outbox.get()
        topic = telemetry_topic(message.site, message.asset, message.device)
        puback = client.publish_nowait(topic, message.model_dump_json().encode())
        await _await_ack(puback, topic, ack_wait_s)


async def _await_ack(puback: asyncio.Future[None], topic: str, ack_wait_s: float) -> None:
    waited = False
    while True:
        try:
            await asyncio.wait_for(asyncio.shield(puback), ack_wait_s)
        except TimeoutError:
            if not waited:
                log.warning("waiting for broker to acknowledge", topic=topic, waited_s=ack_wait_s)
            waited = True
            continue
        if waited:
            log.info("broker acknowledged again", topic=topic)
        return


def status_payload(agent_id: str, boot: str, state: str) -> bytes:
    status = AgentStatus(agent=agent_id, state=state, boot=boot, ts_ns=now_ns())
    return status.model_dump_json().encode()


async def announce_forever(client: MqttClient, agent_id: str, boot: str) -> None:
    """Publish the retained 'online' birth message after every (re)connect.

    The broker publishes our last will ('offline', retained) when we vanish; the next
    birth message replaces it.
    """
    topic = agent_status_topic(agent_id)
    while True:
        await client.wait_connected(timeout=float("inf"))
        client.publish_nowait(topic, status_payload(agent_id, boot, "online"), retain=True)
        await client.wait_disconnected()
