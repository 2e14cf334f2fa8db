"""Skeleton pipeline benchmark; prints ``name: value unit`` lines.

* ``pipeline_readings_per_s``: readings per second from an MQTT publisher through
  mosquitto and one derrick-collector process into InfluxDB 1.6 (real servers, loopback).
* ``collector_us_per_reading``: CPU of the collector's hot path (validate + encode) per
  reading, in process.
* ``agent_decode_us_per_reading``: CPU of the agent's decode + serialise per reading.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.decode import decode_request
from agent.plan import plan_reads
from collector.lineproto import encode_telemetry
from collector.validate import validate
from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.plc.profile import Register
from derrick.plc.registers import DataType, encode
from derrick.plumbing import logs
from derrick.wire.payloads import Reading, Telemetry, now_ns
from derrick.wire.topics import telemetry_topic
from devstack.programs import Program, wait_for, write_yaml
from devstack.services import Influx1, Mosquitto

TAGS = 100
MESSAGES = 3000


def message(seq: int, site: str = "bench") -> Telemetry:
    ts = now_ns()
    return Telemetry(
        site=site,
        asset="crane-01",
        device="lmi",
        kind="crane",
        agent="bench",
        boot="b",
        seq=seq,
        readings=[
            Reading(tag=f"t{i}", value=seq + i / 10, unit="t", ts_ns=ts) for i in range(TAGS)
        ],
    )


def collector_hot_path() -> float:
    topic = telemetry_topic("bench", "crane-01", "lmi")
    payloads = [message(i).model_dump_json().encode() for i in range(500)]
    started = time.process_time()
    for payload in payloads:
        encode_telemetry(validate(topic, payload))
    return (time.process_time() - started) / (len(payloads) * TAGS) * 1e6


def agent_decode() -> float:
    registers = [
        Register(tag=f"t{i}", table="holding", address=2 * i, type=DataType.FLOAT32)
        for i in range(TAGS)
    ]
    plan = plan_reads(registers)
    words = {
        req.address: [w for reg in req.registers for w in encode(1.5, reg.type)] for req in plan
    }
    rounds = 500
    started = time.process_time()
    for seq in range(rounds):
        ts = now_ns()
        readings = [r for req in plan for r in decode_request(req, words[req.address], ts)]
        Telemetry.model_construct(
            v=1,
            site="b",
            asset="a",
            device="d",
            kind="crane",
            agent="g",
            boot="b",
            seq=seq,
            readings=readings,
        ).model_dump_json()
    return (time.process_time() - started) / (rounds * TAGS) * 1e6


async def publish_all(broker: BrokerSettings) -> None:
    client = MqttClient(broker, client_id="bench-publisher", persistent=False)
    await client.start()
    await client.wait_connected(10)
    topic = telemetry_topic("bench", "crane-01", "lmi")
    payloads = [message(i).model_dump_json().encode() for i in range(MESSAGES)]
    window: list[asyncio.Future[None]] = []
    for payload in payloads:
        window.append(client.publish_nowait(topic, payload))
        if len(window) >= 100:
            await asyncio.gather(*window)
            window.clear()
    await asyncio.gather(*window)
    await client.stop()


def stored(influx: Influx1) -> int:
    result = influx.query("SELECT count(t0) FROM telemetry", db="bench")
    series = result["results"][0].get("series")
    return series[0]["values"][0][1] * TAGS if series else 0


def pipeline() -> float:
    with (
        tempfile.TemporaryDirectory(prefix="derrick-bench-") as tmp,
        Mosquitto(Path(tmp)) as broker_srv,
        Influx1(Path(tmp)) as influx,
    ):
        base = Path(tmp)
        config = write_yaml(
            base / "collector.yaml",
            {
                "collector": {"id": "bench-collector"},
                "broker": {"host": "127.0.0.1", "port": broker_srv.port},
                "influx": {
                    "api": "v1",
                    "url": influx.url,
                    "database": "bench",
                    "create_database": True,
                },
                "log": {"format": "json", "level": "warning"},
            },
        )
        with Program("collector", ["--config", str(config)], base / "collector.log") as col:
            wait_for(
                lambda: "bench" in str(influx.query("SHOW DATABASES")),
                30,
                "collector start",
                program=col,
            )
            time.sleep(0.5)  # subscribed
            broker = BrokerSettings(host="127.0.0.1", port=broker_srv.port)
            started = time.perf_counter()
            asyncio.run(publish_all(broker))
            wait_for(
                lambda: stored(influx) >= MESSAGES * TAGS,
                120,
                "all readings stored",
                interval=0.05,
                program=col,
            )
            return MESSAGES * TAGS / (time.perf_counter() - started)


def main() -> None:
    logs.configure("console", "warning")
    print(f"pipeline_readings_per_s: {pipeline():.0f} readings/s")
    print(f"collector_us_per_reading: {collector_hot_path():.2f} us")
    print(f"agent_decode_us_per_reading: {agent_decode():.2f} us")


if __name__ == "__main__":
    main()
