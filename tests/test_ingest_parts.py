"""Small parts of poison-proof ingest: the redelivery ledger, daemon worker threads,
the stall verdict behind /health, field types from InfluxDB's words, topics of lines."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from collector.fieldtypes import FieldTypes, line_field_type, refused_fields
from collector.health import Waiting, health, stalled_stages
from collector.lineproto import topic_of_line
from collector.redelivery import Redeliveries
from collector.stats import Stats
from derrick.plumbing.threads import DaemonThreads

REFUSAL = (
    '{"error":"partial write: field type conflict: input field \\"hook_load\\" on '
    'measurement \\"telemetry\\" is type string, already exists as type float dropped=1"}'
)


def test_ledger_counts_redeliveries_durably_per_client_and_message(tmp_path):
    ledger = Redeliveries(tmp_path / "d.db", max_deliveries=3)
    assert ledger.count("c1", "t", b"x") == 2  # the first delivery had no DUP flag
    assert ledger.count("c1", "t", b"y") == 2
    assert ledger.count("c2", "t", b"x") == 2, "each session counts its own deliveries"
    ledger.close()
    reopened = Redeliveries(tmp_path / "d.db", max_deliveries=3)
    assert reopened.count("c1", "t", b"x") == 3
    reopened.close()


def test_ledger_needs_a_retry_to_count():
    with pytest.raises(ValueError, match="at least 2"):
        Redeliveries(Path("/nonexistent/x.db"), max_deliveries=1)


def test_daemon_threads_run_calls_in_order_and_pass_errors():
    async def main() -> list[object]:
        threads = DaemonThreads("test")
        seen: list[int] = []
        await asyncio.gather(*(threads.run(seen.append, n) for n in range(20)))
        with pytest.raises(ZeroDivisionError):
            await threads.run(lambda: 1 / 0)
        name = await threads.run(lambda: threading.current_thread().name)
        threads.close()
        return [seen, name, await threads.run(lambda: "again")]

    seen, name, again = asyncio.run(main())
    assert seen == list(range(20))
    assert name == "test-0"
    assert again == "again", "a closed pool starts a new thread on the next call"


def test_a_call_hung_in_a_daemon_thread_does_not_hold_up_the_exit():
    """What asyncio.to_thread would do: the interpreter waits for the thread at exit."""
    script = textwrap.dedent(
        """
        import asyncio, time
        from derrick.plumbing.threads import DaemonThreads
        async def main():
            threads = DaemonThreads("hang")
            task = asyncio.ensure_future(threads.run(time.sleep, 30))
            await asyncio.sleep(0.2)
            task.cancel()
        asyncio.run(main())
        """
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=20)
    assert time.monotonic() - started < 10


def test_stalled_only_when_work_waits():
    stats = Stats(progress_receive=100.0, progress_store=100.0)
    idle = Waiting(inbox=0, store_queue=0, store_busy_since=None)
    assert stalled_stages(stats, idle, now=1000.0, stall_s=30) == {}
    stuck_store = Waiting(inbox=5, store_queue=10, store_busy_since=101.0)
    assert stalled_stages(stats, stuck_store, now=131.0, stall_s=30) == {
        "receive": 31.0,
        "store": 31.0,
    }
    assert stalled_stages(stats, stuck_store, now=129.0, stall_s=30) == {}
    report = health(stats, stuck_store, now=200.0, stall_s=30)
    assert report["ok"] is False
    assert report["reason"] == (
        "receive stage has not moved for 100.0 s while messages wait, "
        "store stage has not moved for 100.0 s while messages wait"
    )
    assert health(stats, idle, now=200.0, stall_s=30)["ok"] is True


def test_field_types_from_a_refusal_and_from_a_line():
    assert refused_fields(REFUSAL) == [("telemetry", "hook_load", "string")]
    fields = FieldTypes()
    assert fields.learn_from_refusal(REFUSAL) == ["hook_load"]
    assert fields.get("hook_load") == "float"
    line = 'telemetry,asset=a,device=d,kind=k,site=s a=1.5,b="x y,z=1",c=true,d=3i,z=2 5'
    assert [line_field_type(line, f) for f in "abcdze"] == [
        "float",
        "string",
        "boolean",
        "integer",
        "float",
        None,
    ]


@pytest.mark.parametrize(
    ("line", "topic"),
    [
        (
            "telemetry,asset=crane-01,device=lmi,kind=crane,site=yard t0=1.5 1",
            "derrick/v1/yard/crane-01/lmi/telemetry",
        ),
        (
            'device_status,asset=crane-01,device=lmi,site=yard up=false,reason="x" 1',
            "derrick/v1/yard/crane-01/lmi/status",
        ),
        ("agent,agent=gw-1,site=yard queue_depth=1 1", "derrick/v1/agents/gw-1/metrics"),
        ("collector,collector=c1 messages=1 1", None),
        ("telemetry t0=1 1", None),
    ],
)
def test_the_topic_of_a_spooled_line(line, topic):
    assert topic_of_line(line) == topic


@pytest.mark.parametrize(
    ("ingest", "says"),
    [
        ({}, "MQTT 5, Receive Maximum 10000"),
        ({"mqtt_version": "3.1.1"}, "MQTT 3.1.1: held to the broker's max_inflight_messages"),
        ({"broker_drops": False}, "does not watch the broker's drop counter"),
    ],
)
def test_check_says_what_it_can_and_cannot_verify_of_the_broker(tmp_path, capsys, ingest, says):
    from collector.main import main  # noqa: PLC0415 - the CLI, imported where it is tested

    config = tmp_path / "collector.yaml"
    config.write_text(
        yaml.safe_dump({"collector": {"id": "c1"}, "influx": {"api": "v1"}, "ingest": ingest})
    )
    assert main(["--config", str(config), "--check"]) == 0
    out = capsys.readouterr().out
    assert says in out
    assert "not checkable over MQTT: the broker's persistence, autosave and per-client queue" in out
