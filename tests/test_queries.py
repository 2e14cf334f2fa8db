"""The console's reads from a real InfluxDB 1.6: the journal's filters, InfluxQL string
escaping (no injection through a user name), and an asset's latest values."""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial
from typing import Any

import pytest

from collector import queries
from collector.config import InfluxV1, InfluxV2
from collector.influx import DataRejected, StoreError, StoreUnavailable, V1Writer, V2Writer
from collector.lineproto import encode_alarm
from derrick.wire.payloads import AlarmNotice
from devstack.services import Influx1, free_port
from tests.test_console import Console, logged_in

pytestmark = pytest.mark.integration

S = 1_000_000_000
BASE = 1_780_000_000 * S  # a fixed instant in 2026


def notice(
    offset_s: int,
    event: str = "announce",
    *,
    site: str = "yard",
    asset: str = "crane-01",
    rule: str = "crane_overload",
    who: str = "",
    comment: str = "",
    reason: str = "new",
) -> AlarmNotice:
    return AlarmNotice(
        key=uuid.uuid4().hex,
        event=event,
        alarm_id=f"{rule}:{site}:{asset}:lmi",
        rule=rule,
        site=site,
        asset=asset,
        device="lmi",
        priority="high",
        state="active_unacked" if event == "announce" else "active_acked",
        message=f"{rule} at {offset_s}",
        reason=reason,
        value=16.5,
        limit=15.3,
        who=who,
        comment=comment,
        ts_ns=BASE + offset_s * S,
    )


NOTICES = [
    notice(0),
    notice(10, "journal", who="j.smith", comment="seen", reason="acknowledge"),
    notice(20, site="port", asset="crane-07"),
    notice(30, rule="wind_high"),
    notice(40, "journal", who="o'brien", comment="quote", reason="acknowledge"),
    notice(50, "journal", who="back\\slash", comment="slash", reason="acknowledge"),
    notice(60, "clear", reason=""),
]


def run(writer: V1Writer, coro: Any) -> Any:
    async def go() -> Any:
        try:
            return await coro
        finally:
            await writer.close()

    return asyncio.run(go())


@pytest.fixture
def writer(influx1, influx_db):
    influx1.write(influx_db, "\n".join(encode_alarm(n) for n in NOTICES))
    return V1Writer(InfluxV1(api="v1", url=influx1.url, database=influx_db))


def journal(writer: V1Writer, **filters: Any) -> list[dict[str, Any]]:
    window = {"start_ns": BASE, "end_ns": BASE + 3600 * S}
    return run(writer, queries.journal(writer, **{**window, **filters}))


def offsets(rows: list[dict[str, Any]]) -> list[int]:
    return [(row["ts_ns"] - BASE) // S for row in rows]


def test_journal_rows_newest_first_with_every_column(writer):
    rows = journal(writer)
    assert offsets(rows) == [60, 50, 40, 30, 20, 10, 0]
    acked = rows[5]
    assert acked == {
        "ts_ns": BASE + 10 * S,
        "site": "yard",
        "asset": "crane-01",
        "device": "lmi",
        "rule": "crane_overload",
        "event": "journal",
        "priority": "high",
        "state": "active_acked",
        "reason": "acknowledge",
        "who": "j.smith",
        "comment": "seen",
        "message": "crane_overload at 10",
        "value": 16.5,
        "limit": 15.3,
        "notice_key": NOTICES[1].key,
        "duration_s": None,
    }


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"start_ns": BASE + 10 * S, "end_ns": BASE + 40 * S}, [30, 20, 10]),
        ({"site": "port"}, [20]),
        ({"asset": "crane-01"}, [60, 50, 40, 30, 10, 0]),
        ({"rule": "wind_high"}, [30]),
        ({"who": "j.smith"}, [10]),
        ({"event": "journal"}, [50, 40, 10]),
        ({"event": "announce", "site": "yard"}, [30, 0]),
        ({"limit": 2}, [60, 50]),
        ({"site": "nowhere"}, []),
    ],
)
def test_journal_filters(writer, filters, expected):
    assert offsets(journal(writer, **filters)) == expected


@pytest.mark.parametrize(
    ("who", "expected"), [("o'brien", [40]), ("back\\slash", [50]), ("o\\'brien", [])]
)
def test_quotes_and_backslashes_are_matched_literally(writer, who, expected):
    assert offsets(journal(writer, who=who)) == expected


@pytest.mark.parametrize(
    "hostile",
    [
        "x' OR 1=1 --",
        "x' OR \"who\" =~ /.*/ OR 'a' = 'a",
        "x'; DROP DATABASE derrick; --",
        "\\",
        "'",
        "line\nbreak",
    ],
)
def test_no_influxql_injection_through_filters(writer, influx1, influx_db, hostile):
    assert journal(writer, who=hostile) == []
    assert journal(writer, site=hostile, event=hostile) == []
    assert influx_db in str(influx1.query("SHOW DATABASES"))  # still there


def test_latest_values_per_device_of_the_last_hour(influx1, influx_db):
    now = time.time_ns()
    lines = [
        f"telemetry,asset=crane-01,device=lmi,kind=crane,site=yard hook_load=12.5,"
        f"overload=false {now - 60 * S}",
        f'telemetry,asset=crane-01,device=lmi,kind=crane,site=yard hook_load=13.0,mode="lift",'
        f'wind_q="bad" {now - 30 * S}',
        f"telemetry,asset=crane-01,device=slew,kind=crane,site=yard angle=90.0 {now - 20 * S}",
        f"telemetry,asset=crane-01,device=old,kind=crane,site=yard angle=1.0 {now - 7200 * S}",
        f"telemetry,asset=crane-02,device=lmi,kind=crane,site=yard hook_load=99.0 {now - 10 * S}",
    ]
    influx1.write(influx_db, "\n".join(lines))
    writer = V1Writer(InfluxV1(api="v1", url=influx1.url, database=influx_db))
    found = run(writer, queries.latest(writer, "yard", "crane-01", now_ns=now))
    assert found == {
        "lmi": {
            "ts_ns": now - 30 * S,
            "values": {"hook_load": 13.0, "mode": "lift", "overload": False},
        },
        "slew": {"ts_ns": now - 20 * S, "values": {"angle": 90.0}},
    }
    writer = V1Writer(InfluxV1(api="v1", url=influx1.url, database=influx_db))
    assert run(writer, queries.latest(writer, "yard", "o'brien", now_ns=now)) == {}


def test_query_errors_are_store_errors(influx1, influx_db):
    writer = V1Writer(InfluxV1(api="v1", url=influx1.url, database=influx_db))
    with pytest.raises(DataRejected, match="error parsing query"):
        run(writer, writer.query("SELECT FROM nothing"))
    missing = V1Writer(InfluxV1(api="v1", url=influx1.url, database="no_such_db"))
    with pytest.raises(DataRejected, match="query refused: database not found"):
        run(missing, queries.journal(missing, start_ns=0, end_ns=1))
    gone = V1Writer(InfluxV1(api="v1", url=f"http://127.0.0.1:{free_port()}", timeout_s=2))
    with pytest.raises(StoreUnavailable):
        run(gone, queries.journal(gone, start_ns=0, end_ns=1))


def test_a_v2_writer_cannot_serve_the_journal():
    writer = V2Writer(InfluxV2(api="v2", url=f"http://127.0.0.1:{free_port()}"))

    async def go() -> None:
        try:
            await queries.journal(writer, start_ns=0, end_ns=1)
        finally:
            await writer.close()

    with pytest.raises(StoreError, match=r"v1 query API \(InfluxDB 1.x\)"):
        asyncio.run(go())


def test_literal_escapes():
    assert queries.literal("plain") == "'plain'"
    assert queries.literal("o'brien") == "'o\\'brien'"
    assert queries.literal("a\\b") == "'a\\\\b'"
    assert queries.literal("a\nb") == "'a\\nb'"


# --- the console's journal through an InfluxDB outage --------------------------------------


def test_the_console_journal_through_an_influxdb_outage(tmp_path):
    """InfluxDB stopped: the journal page says so (the CSV answers 503), the summary still
    serves; InfluxDB back: the journal is there again, read over the same writer."""
    with Influx1(tmp_path / "influx") as influx:
        influx.create_database("outage")
        influx.write("outage", "\n".join(encode_alarm(n) for n in NOTICES))
        writer = V1Writer(InfluxV1(api="v1", url=influx.url, database="outage", timeout_s=2))
        reader = partial(queries.journal, writer)
        window = "?from=2026-05-28T00:00&to=2026-05-30T00:00"
        with Console(tmp_path, journal=reader) as served:
            browser = logged_in(served, "op1")
            page = browser.get(f"/console/journal{window}")
            assert page.status == 200
            assert page.body.count("<tr") > len(NOTICES) // 2, page.body[:2000]
            influx.stop()
            down = browser.get(f"/console/journal{window}")
            assert down.status == 200
            assert "the journal is not available" in down.body
            assert browser.get(f"/console/journal.csv{window}").status == 503
            assert browser.get("/console").status == 200
            influx.start()
            back = browser.get(f"/console/journal{window}")
            assert "the journal is not available" not in back.body
            assert back.body.count("<tr") > len(NOTICES) // 2
        asyncio.run(writer.close())
