"""The InfluxDB boundary against real servers: what is retried and what is bad data."""

import asyncio
import uuid

import pytest

from collector.config import InfluxV1, InfluxV2
from collector.influx import DataRejected, StoreUnavailable, V1Writer, V2Writer, _classify
from devstack.services import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (0, StoreUnavailable),
        (404, StoreUnavailable),
        (429, StoreUnavailable),
        (500, StoreUnavailable),
        (503, StoreUnavailable),
        (400, DataRejected),
        (401, DataRejected),
        (413, DataRejected),
    ],
)
def test_status_classification(status, kind):
    assert isinstance(_classify(status, "body", "http://x"), kind)


def write(writer, lines):
    async def go():
        try:
            await writer.write(lines)
        finally:
            await writer.close()

    asyncio.run(go())


def test_v1_writes_and_rejects_a_type_conflict_with_the_servers_reason(influx1, influx_db):
    settings = InfluxV1(api="v1", url=influx1.url, database=influx_db)
    write(V1Writer(settings), ["telemetry,site=a x=1.5 1000"])
    with pytest.raises(DataRejected, match=r"HTTP 400.*field type conflict"):
        write(V1Writer(settings), ['telemetry,site=a x="text" 2000'])
    rows = influx1.query("SELECT x FROM telemetry", db=influx_db)
    assert rows["results"][0]["series"][0]["values"] == [[1000, 1.5]]


def test_v1_missing_database_is_created_when_allowed(influx1):
    db = f"db_{uuid.uuid4().hex[:8]}"
    with pytest.raises(StoreUnavailable, match="HTTP 404"):
        write(V1Writer(InfluxV1(api="v1", url=influx1.url, database=db)), ["m x=1.0 1"])
    write(
        V1Writer(InfluxV1(api="v1", url=influx1.url, database=db, create_database=True)),
        ["m x=1.0 1"],
    )
    assert influx1.query("SELECT x FROM m", db=db)["results"][0]["series"]
    influx1.drop_database(db)


@pytest.mark.parametrize(
    "make",
    [
        lambda url: V1Writer(InfluxV1(api="v1", url=url, timeout_s=2)),
        lambda url: V2Writer(InfluxV2(api="v2", url=url, timeout_s=2)),
    ],
    ids=["v1", "v2"],
)
def test_nothing_listening_is_unavailable_not_bad_data(make):
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1"):
        write(make(f"http://127.0.0.1:{free_port()}"), ["m x=1.0 1"])


def test_v2_writes_to_victoriametrics(victoria):
    site = f"t{uuid.uuid4().hex[:8]}"
    write(
        V2Writer(InfluxV2(api="v2", url=victoria.url)),
        [f"telemetry,site={site} hook_load=12.5 1700000000000000000"],
    )
    series = victoria.export(f'{{__name__="telemetry_hook_load",site="{site}"}}', start=1699999990)
    assert series[0]["values"] == [12.5]
