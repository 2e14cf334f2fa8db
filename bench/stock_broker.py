"""The collector on a stock mosquitto: how much it stores of a steady load, and what it
costs. Prints ``name: value unit`` lines.

* ``mqtt_receive_ack_us_per_msg_{v5,v311}``: CPU of receiving and acknowledging one 20-
  reading message through :class:`derrick.mqtt.client.MqttClient` (a backlog drained in
  process, nothing else done with it): the floor under the collector's cost per message.
* ``stock_<rate>_<n>c_stored_pct``: a steady load of ``rate`` readings/s in 20-reading
  messages for ``SECONDS`` through mosquitto with its default limits (20 in flight, 1,000
  queued) into ``n`` collectors (a shared-subscription group when 2) and InfluxDB 1.6:
  what InfluxDB holds, as a share of what the broker acknowledged; and the broker's own
  drop count (``_dropped``).
* ``stock_<rate>_<n>c_cpu_us_per_reading_{collector,mosquitto,influxdb,load}``: every
  process's CPU per reading offered (the load generator is lean by design, see
  devstack/loadgen.py).
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from devstack.loadgen import READINGS, Load
from devstack.programs import Program, wait_for, write_yaml
from devstack.services import Influx1, Mosquitto
from devstack.tap import Tap

SECONDS = 20
BACKLOG = 30_000
LOADS = [(20_000, 1), (60_000, 1), (100_000, 1), (100_000, 2)]
DROPPED = "$SYS/broker/publish/messages/dropped"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def receive_cost(base: Path, v5: bool) -> float:
    """CPU per message of draining a backlog of BACKLOG messages (receive + ack)."""
    name = "v5" if v5 else "v311"
    queue = "max_queued_messages 1000000\nmax_inflight_messages 1000"
    with Mosquitto(base / f"recv-{name}", extra_config=queue) as broker:

        async def main() -> float:
            def client() -> MqttClient:
                return MqttClient(
                    BrokerSettings(port=broker.port),
                    f"bench-{name}",
                    manual_ack=True,
                    inbox_size=BACKLOG * 2,
                    receive_maximum=1000 if v5 else None,
                )

            first = client()
            await first.subscribe("derrick/v1/+/+/+/telemetry")
            await first.start()
            await first.wait_subscribed(10)
            await first.stop()
            Load(broker.port, "bench", BACKLOG * READINGS, 1.0).start().join(120)
            drain = client()
            await drain.subscribe("derrick/v1/+/+/+/telemetry")
            before = resource.getrusage(resource.RUSAGE_SELF)
            await drain.start()
            for _ in range(BACKLOG):
                drain.ack(await drain.inbox.get())
            after = resource.getrusage(resource.RUSAGE_SELF)
            await drain.stop()
            used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            return used / BACKLOG * 1e6

        return asyncio.run(main())


def steady(base: Path, influx: Influx1, rate: int, collectors: int) -> dict[str, float]:
    tag = f"stock_{rate // 1000}k_{collectors}c"
    db = f"bench_{uuid.uuid4().hex[:8]}"
    influx.create_database(db)
    with Mosquitto(base / tag, stock=True, extra_config="sys_interval 1") as broker:
        programs = []
        for n in range(collectors):
            config = write_yaml(
                base / f"{tag}-{n}.yaml",
                {
                    "collector": {"id": f"{tag}-{n}", "group": "g" if collectors > 1 else None},
                    "broker": {"port": broker.port},
                    "influx": {"api": "v1", "url": influx.url, "database": db},
                    "log": {"format": "json"},
                },
            )
            program = Program("collector", ["--config", str(config)], base / f"{tag}-{n}.log")
            programs.append(program.start())
        for program in programs:
            wait_for(lambda p=program: "broker connected" in p.log_tail(20), 20, "up")
        time.sleep(1.5)
        with Tap(broker.port, DROPPED) as tap:
            time.sleep(1.5)
            dropped_before = last_count(tap)
            pids = {
                "collector": [p.process.pid for p in programs if p.process],
                "mosquitto": [broker.pid],
                "influxdb": [influx.pid],
                "load": [os.getpid()],
            }
            cpu_before = {k: sum(cpu_s(pid) for pid in v) for k, v in pids.items()}
            load = Load(broker.port, "bench", rate, SECONDS).start()
            load.join(SECONDS * 5)
            cpu_after = {k: sum(cpu_s(pid) for pid in v) for k, v in pids.items()}
            deadline = time.monotonic() + 60
            while stored(influx, db) < load.published and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(1.5)
            dropped = last_count(tap) - dropped_before
        for program in programs:
            program.stop()
    readings = load.offered * READINGS
    figures = {
        f"{tag}_stored_pct": 100.0 * stored(influx, db) / max(load.published, 1),
        f"{tag}_dropped": float(dropped),
    }
    for name in pids:
        used = cpu_after[name] - cpu_before[name]
        figures[f"{tag}_cpu_us_per_reading_{name}"] = used / readings * 1e6
    return figures


def last_count(tap: Tap) -> int:
    values = [int(m.payload) for m in tap.messages() if m.topic == DROPPED]
    return values[-1] if values else 0


def stored(influx: Influx1, db: str) -> int:
    series = influx.query("SELECT count(t0) FROM telemetry", db=db)["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="derrick-bench-stock-") as tmp:
        base = Path(tmp)
        for v5 in (True, False):
            cost = receive_cost(base, v5)
            print(f"mqtt_receive_ack_us_per_msg_{'v5' if v5 else 'v311'}: {cost:.1f} us")
        with Influx1(base / "influx") as influx:
            for rate, collectors in LOADS:
                for name, value in steady(base, influx, rate, collectors).items():
                    unit = "%" if name.endswith("pct") else "" if name.endswith("dropped") else "us"
                    print(f"{name}: {value:.2f} {unit}".rstrip())


if __name__ == "__main__":
    main()
