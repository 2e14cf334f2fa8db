"""Operator console benchmark (issue 18); prints ``name: value unit`` lines.

The collector's operator API and console (:class:`collector.alarms.httpapi.AlarmApi`,
uvicorn in its own event loop on a thread of this process) over ``BENCH_CONSOLE_ALARMS``
(2,000) standing alarms on 200 assets, all priorities, half unacknowledged; a real users
file; a real HTTP client logged in as an operator.

* ``console_summary_ms_p50`` / ``_p95``: ``GET /console`` (the whole summary of 2,000
  alarms rendered) over ``BENCH_CONSOLE_RUNS`` (50) requests, each timed from the request
  sent to the last byte read on loopback: the server's time plus a loopback round trip.
* ``console_push_ms_p50`` / ``_p99``: an alarm change committed (the alarm service's
  :class:`~collector.alarms.changes.Changes` bumped, as it is after each commit: here
  the bench changes one alarm and bumps) -> the ``summary`` event with that change read
  by a client connected to ``/console/events`` (the browser's stream). One change every
  0.2 s, ``BENCH_CONSOLE_RUNS`` of them.
* ``console_summary_kb``: the size of the summary page.
* ``console_push_kb_per_change``: the size of one such event (the changed row, the
  banner; the order of the rows only when it changed).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from argon2 import PasswordHasher

from collector.alarms.changes import Changes
from collector.alarms.httpapi import AlarmApi, HttpApiSettings
from collector.users import Role, UserStore
from derrick.plumbing import logs
from derrick.wire.payloads import AlarmCommandResult
from devstack.served import ServedApi

ALARMS = int(os.environ.get("BENCH_CONSOLE_ALARMS", "2000"))
RUNS = int(os.environ.get("BENCH_CONSOLE_RUNS", "50"))
PASSWORD = "bench password 1"
PRIORITIES = ("critical", "high", "medium", "low")


def alarm(index: int, now_ns: int) -> dict[str, Any]:
    site, asset, rule = f"site-{index % 5}", f"crane-{index % 200:03d}", f"rule_{index // 200}"
    unacked = index % 2 == 0
    return {
        "v": 1, "alarm_id": f"{rule}:{site}:{asset}:plc", "rule": rule, "site": site,
        "asset": asset, "device": "plc",
        "state": "active_unacked" if unacked else "active_acked", "active": True,
        "acked": not unacked, "priority": PRIORITIES[index % 4], "value": 12.5 + index,
        "limit": 10.0, "message": f"hook load above limit on {asset}",
        "shelved_until_ns": None, "ts_ns": now_ns - index * 1_000_000_000, "latched": False,
        "max_shelve_s": 28800.0, "suppressed": False, "out_of_service": False,
        "shelved_by": "", "shelve_reason": "", "removed_by": "", "remove_reason": "",
    }  # fmt: skip


def login(port: int) -> str:
    """The session cookie of an operator."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = urllib.parse.urlencode({"name": "op", "password": PASSWORD, "next": "/console"})
    conn.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    conn.close()
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    if response.status != 303:
        raise SystemExit(f"login failed: {response.status}")
    return cookie


def summary_times(port: int, cookie: str) -> tuple[list[float], int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times, size = [], 0
    for _ in range(RUNS):
        began = time.perf_counter()
        conn.request("GET", "/console", headers={"Cookie": cookie})
        response = conn.getresponse()
        page = response.read()
        times.append((time.perf_counter() - began) * 1000)
        if response.status != 200:
            raise SystemExit(f"GET /console: {response.status}")
        size = len(page)
    conn.close()
    return times, size


def events(sock: socket.socket) -> Any:
    """Parsed ``summary`` events from a raw event stream (chunked HTTP/1.1 framing is
    skipped by looking for the event lines themselves)."""
    buffer = b""
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
            if b"event: summary" in block and data:
                yield time.time_ns(), json.loads(data[-1]), len(data[-1])


def push_times(
    served: ServedApi, alarms: list[dict[str, Any]], changes: Changes, cookie: str
) -> tuple[list[float], list[int]]:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    sock.sendall(
        f"GET /console/events HTTP/1.1\r\nHost: bench\r\nCookie: {cookie}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    stream = events(sock)
    next(stream)  # the first summary, on connecting
    latencies, sizes = [], []
    for run in range(RUNS):
        target = alarms[run % len(alarms)]

        def change(target: dict[str, Any] = target, run: int = run) -> None:
            target["value"] = 1000.0 + run  # seen in the rendered rows
            changes.bump()

        served.loop.call_soon_threadsafe(change)
        for received_ns, data, size in stream:
            if any(f"{1000.0 + run:g}" in html for html in data.get("rows", {}).values()):
                latencies.append((received_ns - changes.changed_ns) / 1e6)
                sizes.append(size)
                break
        time.sleep(0.2)
    sock.close()
    return latencies, sizes


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def main() -> None:
    logs.configure("json", "warning")
    now = time.time_ns()
    alarms = [alarm(i, now) for i in range(ALARMS)]
    changes = Changes()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        users = UserStore(
            Path(tmp) / "users.yaml",
            hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
        )
        users.add("op", Role.OPERATOR, PASSWORD)

        async def command(order: Any) -> tuple[int, AlarmCommandResult]:
            return 409, AlarmCommandResult(
                request_id="", alarm_id=order.alarm_id, action=order.action, ok=False, ts_ns=now
            )

        settings = HttpApiSettings(enabled=True, port=0, users_file=users.path)
        api = AlarmApi(
            settings, list_alarms=lambda: alarms, command=command, users=users, changes=changes
        )
        load_start = os.getloadavg()[0]
        cpu_start = time.process_time()
        with ServedApi(api, timeout_s=60) as served:
            cookie = login(api.port)
            summary, size = summary_times(api.port, cookie)
            pushes, sizes = push_times(served, alarms, changes, cookie)
        cpu = time.process_time() - cpu_start
    print(f"console_alarms: {ALARMS} alarms")
    print(f"console_summary_ms_p50: {statistics.median(summary):.1f} ms")
    print(f"console_summary_ms_p95: {percentile(summary, 0.95):.1f} ms")
    print(f"console_summary_kb: {size / 1024:.0f} KiB")
    print(f"console_push_ms_p50: {statistics.median(pushes):.1f} ms")
    print(f"console_push_ms_p99: {percentile(pushes, 0.99):.1f} ms")
    print(f"console_push_kb_per_change: {statistics.median(sizes) / 1024:.1f} KiB")
    print(f"console_bench_cpu_s: {cpu:.2f} s (server and client, one process)")
    print(f"load_average: {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (1 min)")


if __name__ == "__main__":
    main()
