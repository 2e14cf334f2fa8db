"""What a message of 20 readings costs the collector at the least (issue 16); prints
``name: value unit`` lines.

bench/collector_small.py measures the whole collector process per reading on messages
of 20 readings. This measures, in one process and on the same messages, how much of
that is the floor of doing the job in CPython at all, so a reader can tell how far the
target (``collector_cpu_us_per_reading_20`` <= 3 us on the issue's machine, scaled by
this machine's ``sim_fleet_cpu_ms_per_poll`` / 2.1) is from what Python can do:

* ``floor_receive_us_per_reading_20``: paho reading the messages from a real mosquitto,
  handing them to the event loop and sending the PUBACKs (derrick.mqtt.client with
  ``manual_ack``, as the collector runs it), per reading;
* ``floor_parse_us_per_reading_20`` / ``_sparkplug``: only parsing the payload (JSON by
  pydantic_core's parser, protobuf by upb), per reading;
* ``floor_parse_format_us_per_reading_20`` / ``_sparkplug``: parsing and writing each
  reading's ``tag=value`` text into one line, with no check of anything (no
  validation, no quality, no type rules): the least any line-protocol writer in Python
  does;
* ``collector_path_us_per_reading_20`` / ``_sparkplug``: what the collector does between
  receiving and writing (its checks and encoding: ``read_telemetry`` +
  ``encode_telemetry``; the Sparkplug host's ``read`` + ``check_rows`` + the same
  encoding), on the same messages;
* ``floor_us_per_reading_20``: receive + parse-and-format, the floor of the process's
  figure (writing to InfluxDB adds ≈ 0.01 us per reading, bench/collector.py).

Environment: ``BENCH_MESSAGES`` (20000), ``BENCH_ROUNDS`` (3: the best of them is
printed, as the floor is what the machine can do at its quietest).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic_core import from_json

from bench.collector import payloads, publish_all, settings_of
from bench.collector_small import sparkplug_messages
from collector.lineproto import encode_telemetry
from collector.sparkplug import Decoded, SparkplugHost
from collector.validate import DEFAULT_WINDOW, check_rows, read_telemetry
from derrick.mqtt.client import MqttClient
from derrick.wire import sparkplug as sp
from derrick.wire.topics import TelemetryTopic, parse_topic, telemetry_topic
from devstack.services import Mosquitto

TAGS = 20
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "20000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SERIES = "telemetry,asset=crane-01,device=lmi,kind=crane,site=bench "


def us_per_reading(work: Callable[[], None]) -> float:
    """The best of ``ROUNDS`` runs of ``work`` (all the messages once), per reading."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best / (MESSAGES * TAGS) * 1e6


def json_figures(messages: list[bytes]) -> dict[str, float]:
    topic = parse_topic(telemetry_topic("bench", "crane-01", "lmi"))
    assert isinstance(topic, TelemetryTopic)

    def parse() -> None:
        for payload in messages:
            from_json(payload, allow_inf_nan=False, cache_strings="keys")

    def parse_format() -> None:
        size = 0
        for payload in messages:
            data = from_json(payload, allow_inf_nan=False, cache_strings="keys")
            fields = [f"{r['tag']}={r['value']!r}" for r in data["readings"]]
            size += len(f"{SERIES}{','.join(fields)} {data['readings'][0]['ts_ns']}")
        assert size

    def collector_path() -> None:
        for payload in messages:
            rows = read_telemetry(topic, payload, DEFAULT_WINDOW, None)
            encode_telemetry(rows)  # type: ignore[arg-type]

    return {
        "floor_parse_us_per_reading_20": us_per_reading(parse),
        "floor_parse_format_us_per_reading_20": us_per_reading(parse_format),
        "collector_path_us_per_reading_20": us_per_reading(collector_path),
    }


def sparkplug_figures() -> dict[str, float]:
    births, data = sparkplug_messages("bench", TAGS)
    data = data[:MESSAGES]
    host = SparkplugHost(None, lambda *_a: None, tracks_seq=False)
    for topic, payload in births:
        parsed = sp.parse_sparkplug_topic(topic)
        assert isinstance(parsed, sp.SparkplugTopic)
        host.read(parsed, payload, 0.0, time.time_ns())
    ddata = sp.parse_sparkplug_topic(
        sp.sparkplug_topic("bench", sp.MessageType.DDATA, "bench", "lmi")
    )
    assert isinstance(ddata, sp.SparkplugTopic)
    names = {alias: f"t{alias - 1}" for alias in range(1, TAGS + 1)}

    def parse() -> None:
        for payload in data:
            sp.pb.Payload.FromString(payload)

    def parse_format() -> None:
        size = 0
        for payload in data:
            message = sp.pb.Payload.FromString(payload)
            fields = [f"{names[m.alias]}={m.double_value!r}" for m in message.metrics]
            size += len(f"{SERIES}{','.join(fields)} {message.timestamp * 1_000_000}")
        assert size

    def collector_path() -> None:
        for payload in data:
            decoded = host.read(ddata, payload, 0.0, 0)
            assert isinstance(decoded, Decoded)
            assert decoded.rows is not None
            checked = check_rows(decoded.rows, DEFAULT_WINDOW, None)
            encode_telemetry(checked)  # type: ignore[arg-type]

    return {
        "floor_parse_us_per_reading_20_sparkplug": us_per_reading(parse),
        "floor_parse_format_us_per_reading_20_sparkplug": us_per_reading(parse_format),
        "collector_path_us_per_reading_20_sparkplug": us_per_reading(collector_path),
    }


async def receive_us_per_reading(broker: Mosquitto, messages: list[bytes]) -> float:
    """paho receiving queued messages, the hand-off to the loop and the PUBACKs."""
    settings = settings_of(broker)
    topic = telemetry_topic("benchfloor", "crane-01", "lmi")

    def subscriber() -> MqttClient:
        return MqttClient(
            settings, client_id="bench-floor", manual_ack=True, inbox_size=len(messages) + 10
        )

    first = subscriber()
    await first.subscribe(topic)
    await first.start()
    await first.wait_subscribed(10)
    await first.stop()  # the session stays: mosquitto queues what follows for it
    await publish_all(settings, topic, messages)
    client = subscriber()
    await client.start()
    client.ack(await asyncio.wait_for(client.inbox.get(), 30))
    started = time.process_time()  # from the first message on: not the connect
    async with asyncio.timeout(30):  # one timer, not one per message (bench overhead)
        for _ in messages[1:]:
            client.ack(await client.inbox.get())
    used = time.process_time() - started
    await client.stop()
    return used / ((len(messages) - 1) * TAGS) * 1e6


def main() -> None:
    print(f"load_average: {os.getloadavg()[0]:.2f}")
    messages = payloads("bench", MESSAGES, TAGS)
    figures = {**json_figures(messages), **sparkplug_figures()}
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
        # the mosquitto queue for an offline session holds 1000 by default: no more
        received = asyncio.run(receive_us_per_reading(broker, messages[:900]))
    figures["floor_receive_us_per_reading_20"] = received
    figures["floor_us_per_reading_20"] = received + figures["floor_parse_format_us_per_reading_20"]
    for name, value in figures.items():
        print(f"{name}: {value:.2f} us")
    print(f"load_average_end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
