"""A standby pair: two collectors in one shared-subscription group on a three-member etcd
cluster (etcd needs three for its quorum; the collectors need only two), three simulated
cranes, one agent, a webhook receiver. One collector is SIGKILLed for good: the other
takes every asset's alarms and drains the dead one's share of the telemetry.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from derrick.alarms.ownership import owner_of
from derrick.mqtt.client import MqttClient
from derrick.mqtt.settings import BrokerSettings
from derrick.wire.payloads import CollectorStatus
from derrick.wire.topics import collector_status_topic
from devstack.alarmstack import AlarmStack, AssetSpec
from devstack.programs import wait_for
from devstack.receivers import HttpReceiver, SmtpReceiver
from devstack.services import EtcdCluster

pytestmark = pytest.mark.integration

TTL_S = 3
S_NS = 1_000_000_000
CRANES = [AssetSpec(f"crane-{i}") for i in range(1, 4)]


def points(influx, db: str, site: str, asset: str, start_ns: int, end_ns: int) -> int:
    result = influx.query(
        f"SELECT * FROM telemetry WHERE site = '{site}' AND asset = '{asset}' "
        f"AND time >= {start_ns} AND time < {end_ns}",
        db=db,
    )
    series = result["results"][0].get("series") or [{"values": []}]
    return len({row[0] for row in series[0]["values"]})


def retained_status(port: int, collector: str) -> str | None:
    async def read() -> str | None:
        client = MqttClient(
            BrokerSettings(host="127.0.0.1", port=port),
            client_id=f"t-{uuid.uuid4().hex[:6]}",
            persistent=False,
        )
        await client.subscribe(collector_status_topic(collector), qos=1)
        await client.start()
        try:
            async with asyncio.timeout(2):
                message = await client.inbox.get()
                return CollectorStatus.model_validate_json(message.payload).state
        except TimeoutError:
            return None
        finally:
            await client.stop()

    return asyncio.run(read())


def shared_site() -> str:
    """A site name under which each of the two collectors owns a crane (with three cranes
    one in eight random names gives the second collector none: the test needs one)."""
    while True:
        site = f"t{uuid.uuid4().hex[:8]}"
        ids = [f"col-{site}-1", f"col-{site}-2"]
        owners = {owner_of(site, crane.name, ids) for crane in CRANES}
        if owners == set(ids):
            return site


def test_the_survivor_of_a_pair_takes_every_alarm_and_all_the_telemetry(
    tmp_path, mosquitto, influx1, influx_db
):
    with EtcdCluster(tmp_path / "etcd") as cluster, HttpReceiver() as hooks, SmtpReceiver() as mail:
        stack = AlarmStack(
            tmp_path,
            broker_port=mosquitto.port,
            influx={"api": "v1", "url": influx1.url, "database": influx_db},
            hook_url=hooks.url,
            smtp_port=mail.port,
            assets=CRANES,
            collectors=2,
            etcd={"endpoints": cluster.endpoints, "ttl_s": TTL_S, "refresh_s": 0.5},
            site=shared_site(),
        )
        try:
            stack.start()
            site = stack.site
            ids = [stack.collector_id(0), stack.collector_id(1)]
            crane = next(c.name for c in CRANES if owner_of(site, c.name, ids) == ids[1])
            time.sleep(12)  # ten seconds of telemetry, to compare with
            killed_ns = time.time_ns()
            stack.collectors[1].kill()
            assert wait_for(lambda: retained_status(mosquitto.port, ids[1]) == "offline", 10,
                            "the dead collector's last will")  # fmt: skip
            stack.control(crane, "/overload", {"active": True})
            # the survivor announces the dead one's crane and takes commands for it
            wait_for(
                lambda: any(
                    isinstance(r.json, dict) and r.json.get("asset") == crane
                    and r.json.get("rule") == "crane_overload" for r in hooks.requests
                ),
                TTL_S + 30,
                "the overload of the dead collector's crane",
            )  # fmt: skip
            status, answer = stack.command("crane_overload", crane, "acknowledge", "ana")
            assert (status, answer["state"]) == (200, "active_acked"), answer
            time.sleep(max(0.0, (killed_ns + 12 * S_NS - time.time_ns()) / S_NS))
            for spec in CRANES:
                before = points(
                    influx1, influx_db, site, spec.name, killed_ns - 10 * S_NS, killed_ns
                )
                after = points(
                    influx1, influx_db, site, spec.name, killed_ns, killed_ns + 10 * S_NS
                )
                assert after >= 0.9 * before > 0, (spec.name, before, after)
        finally:
            codes = stack.stop()
    assert codes["collector"] == 0 and codes["agent"] == 0, codes
