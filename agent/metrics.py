"""Health stage: the agent's own metrics, published on ``metrics_interval_s``.

An unattended gateway has no one watching its logs; these messages are how the
operations engineer sees, from the fleet side, that a device keeps failing, the queue
grows, or PUBACKs slow down. They go through the spool like telemetry (and are dropped
with it when the spool is full).
"""

from __future__ import annotations

import asyncio
import time

from agent.filter import FilterStage
from agent.outbox import Outbox
from agent.poll import DevicePoller
from agent.publish import Publisher
from derrick.mqtt.client import MqttClient
from derrick.spool.store import Priority
from derrick.wire.payloads import AgentMetrics, DeviceCounters, QueueMetrics, now_ns
from derrick.wire.topics import agent_metrics_topic


class AgentHealth:
    def __init__(
        self,
        outbox: Outbox,
        pollers: dict[str, DevicePoller],
        filters: dict[str, FilterStage],
        publisher: Publisher,
        client: MqttClient,
    ) -> None:
        self.outbox = outbox
        self.pollers = pollers
        self.filters = filters  # device name -> its filter stage, which counts what it passed
        self.publisher = publisher
        self.client = client
        self.started = time.monotonic()

    def snapshot(self) -> AgentMetrics:
        stats = self.outbox.spool.stats()
        p50, worst = self.publisher.latency_summary()
        dropped = stats.dropped  # cumulative, kept in the spool across restarts
        return AgentMetrics(
            agent=self.outbox.agent_id,
            site=self.outbox.site,
            boot=self.outbox.boot,
            ts_ns=now_ns(),
            uptime_s=round(time.monotonic() - self.started, 3),
            broker_connected=self.client.connected,
            devices={name: self._device(name, poller) for name, poller in self.pollers.items()},
            queue=QueueMetrics(
                depth=stats.depth,
                bytes=stats.bytes,
                oldest_age_s=stats.oldest_age_s,
                dropped_telemetry=dropped[Priority.TELEMETRY],
                dropped_status=dropped[Priority.STATUS],
                dropped_alarm=dropped[Priority.ALARM],
            ),
            messages_published=self.publisher.published,
            publish_latency_ms_p50=p50,
            publish_latency_ms_max=worst,
        )

    def _device(self, name: str, poller: DevicePoller) -> DeviceCounters:
        counters = poller.counters
        return DeviceCounters(
            state=poller.state,
            cycles_ok=counters.cycles_ok,
            cycles_failed=counters.cycles_failed,
            requests=counters.requests,
            readings=counters.readings,
            readings_published=self.filters[name].published,
            last_cycle_ms=round(counters.last_cycle_ms, 3),
            last_cycle_requests=counters.last_cycle_requests,
            poll_overruns=counters.poll_overruns,
            overrunning=tuple(poller.overrunning),
        )

    async def publish_forever(self, interval_s: float) -> None:
        topic = agent_metrics_topic(self.outbox.agent_id)
        while True:
            await asyncio.sleep(interval_s)
            payload = self.snapshot().model_dump_json().encode()
            self.outbox.put(topic, payload, Priority.TELEMETRY)
