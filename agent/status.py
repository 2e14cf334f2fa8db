"""``derrick-agent status``: what the technician checks before leaving the cab.

It answers from the gateway alone (no broker, no collector): are the devices up, is
the spool draining, is the broker connected, is the agent running at all. Exit status
0 when all is well, 1 when something is not (each problem one line), 2 when the config
cannot be read.

Where the answers come from. A running agent owns its spool exclusively
(:mod:`derrick.spool.store`: ``locking_mode=EXCLUSIVE``, no reader can share the file,
and a reader holding a lock could make the agent's next write fail), and the spool
holds only what was not sent yet: once the broker acknowledged them, the agent's
metrics and the devices' status messages are gone from it. So a running agent also
keeps a **snapshot** beside its spool, ``<spool>.status.json``, rewritten every
``SNAPSHOT_EVERY_S`` (:func:`keep_snapshot_forever`: its own metrics message, the
devices' last failure, its pid); the status command reads that file and leaves the spool
alone while the snapshot is fresh and its pid alive. When the agent is not running
(stopped, crashed, not started yet) nobody holds the spool: the command opens it
read-only with a short busy timeout and takes what is queued there: depth, bytes, the
oldest unsent message's age, the last agent metrics message not yet sent and, on the
JSON wire, the devices' last status messages not yet sent, each with its age.

Problems (exit 1):

* the agent is not running, or its snapshot is older than ``STALE_AFTER_S`` (stuck);
* a device is down, or not polled yet (wait a few seconds and ask again);
* the broker is not connected (what the agent's last metrics say);
* the spool backs up: its oldest unsent message is older than ``--max-oldest-s``
  (default ``MAX_OLDEST_S``: with a connected broker a message leaves within a second),
  or it holds more than ``FULL_SHARE`` of ``spool.max_mb`` (dropping is near).

Also here, for the running agent: the health check behind the systemd watchdog
(:func:`stalled_polls`): a poll loop that has not finished a cycle for far longer than
its worst case stops the watchdog being fed (:func:`derrick.plumbing.sdnotify.watchdog_forever`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from pydantic import ValidationError

from agent.config import AgentConfig, load_config
from derrick.plumbing import sdnotify
from derrick.plumbing.configfile import ConfigError
from derrick.spool.store import Priority
from derrick.wire.payloads import AgentMetrics, DeviceStatus
from derrick.wire.topics import agent_metrics_topic, device_status_topic

if TYPE_CHECKING:  # agent.metrics and agent.poll bring pymodbus in
    from agent.metrics import AgentHealth
    from agent.poll import DevicePoller

log = structlog.get_logger(__name__)

PROG = "derrick-agent status"
SNAPSHOT_EVERY_S = 5.0
"""How often a running agent rewrites its snapshot (a small file; the spool itself is
written every second or so)."""
STALE_AFTER_S = 30.0
"""A snapshot older than this (or three of its intervals), of an agent whose pid is
alive: the agent is stuck."""
MAX_OLDEST_S = 60.0
"""Default of ``--max-oldest-s``: an unsent message older than this means the spool backs up."""
FULL_SHARE = 0.8
"""A spool holding more than this share of ``spool.max_mb`` is about to drop messages."""
BUSY_TIMEOUT_S = 0.2
"""How long the command waits for a lock on the spool (a starting agent's, say)."""
STALL_MIN_S = 120.0
"""A poll loop is stalled only after at least this long without finishing a cycle."""
_SCAN_TELEMETRY = 20_000  # newest telemetry rows searched for the last metrics message
_SCAN_STATUS = 5_000  # newest status rows searched for the devices' last status


def snapshot_path(spool_path: Path) -> Path:
    """Where the agent using ``spool_path`` keeps its snapshot."""
    return spool_path.with_name(spool_path.name + ".status.json")


# ------------------------------------------------------------------ the running agent


def write_snapshot(
    path: Path, metrics: AgentMetrics, reasons: dict[str, str], every_s: float = SNAPSHOT_EVERY_S
) -> None:
    """Replace the snapshot atomically (a reader sees the old file or the new one)."""
    document = {
        "pid": os.getpid(),
        "written_ns": time.time_ns(),
        "every_s": every_s,
        "metrics": metrics.model_dump(mode="json"),
        "reasons": reasons,
    }
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o640)
            json.dump(document, out, separators=(",", ":"))
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def summary_line(metrics: AgentMetrics) -> str:
    """One line for ``systemctl status`` (sd_notify STATUS=)."""
    states = [counters.state for counters in metrics.devices.values()]
    up = sum(state == "up" for state in states)
    queue = metrics.queue
    oldest = "" if queue.oldest_age_s is None else f", oldest {_duration(queue.oldest_age_s)}"
    broker = "connected" if metrics.broker_connected else "NOT connected"
    return f"{up}/{len(states)} devices up; broker {broker}; spool {queue.depth} unsent{oldest}"


async def keep_snapshot_forever(
    health: AgentHealth, path: Path, every_s: float = SNAPSHOT_EVERY_S
) -> None:
    """Write the agent's snapshot now and every ``every_s``, and tell systemd the
    summary. A file that cannot be written is logged once, and tried again."""
    failing = False
    while True:
        metrics = health.snapshot()
        reasons = {name: poller.last_failure for name, poller in health.pollers.items()}
        try:
            write_snapshot(path, metrics, reasons, every_s)
        except OSError as exc:
            if not failing:
                log.warning("status snapshot not written", path=str(path), error=str(exc))
            failing = True
        else:
            if failing:
                log.info("status snapshot written again", path=str(path))
            failing = False
        sdnotify.status(summary_line(metrics))
        await asyncio.sleep(every_s)


def stalled_polls(pollers: Iterable[DevicePoller], now: float | None = None) -> list[str]:
    """The devices whose poll loop has not finished a cycle for far longer than it can
    take: what keeps the systemd watchdog from being fed.

    A group's ``due`` is moved on only when its cycle ends (``DevicePoller.reschedule``),
    so ``now - min(due)`` is how long the device's loop has been overdue. A healthy loop
    is overdue at most one full cycle of every device on its link (requests are
    serialised per link): per request attempt ``timeout_s``, as much again for an RTU
    drain, and the device's pause between requests; ``retries + 1`` attempts; plus a
    connect and its delay. Stalled is three times that, and at least ``STALL_MIN_S``.
    ``now`` is the event loop's clock (``loop.time()``).
    """
    pollers = list(pollers)
    if now is None:
        now = asyncio.get_running_loop().time()
    budget: dict[int, float] = {}
    for poller in pollers:
        device = poller.device
        pause = getattr(device, "pause_between_requests_s", 0.0) or 0.0
        settle = getattr(device, "delay_after_connect_s", 0.0) or 0.0
        attempt = (2 * device.timeout_s + pause) * (device.retries + 1)
        cycle = attempt * (poller.requests_per_cycle + 1) + settle
        link = id(poller.connection)
        budget[link] = budget.get(link, 0.0) + cycle
    stalled = []
    for poller in pollers:
        dues = [group.due for group in poller.groups if group.due > 0]  # 0: not started
        if not dues:
            continue
        limit = max(STALL_MIN_S, 3 * budget[id(poller.connection)])
        overdue = now - min(dues)
        if overdue > limit:
            stalled.append(
                f"device {poller.device.name}: no poll cycle finished for "
                f"{overdue:.0f} s (limit {limit:.0f} s)"
            )
    return stalled


# ------------------------------------------------------------------ the report


@dataclass
class DeviceLine:
    name: str
    asset: str
    state: str  # up, down, unknown
    detail: str = ""
    age_s: float | None = None  # how old the information is (None: live)


@dataclass
class SpoolFigures:
    depth: int
    bytes: int
    oldest_age_s: float | None
    dropped: dict[str, int]
    source: str  # "spool file" or "agent snapshot"
    age_s: float | None = None  # the figures' age when they come from an older snapshot


@dataclass
class Report:
    agent: str
    site: str
    running: str  # running, not running, stuck, unknown
    running_detail: str
    broker: str  # connected, disconnected, unknown
    broker_detail: str
    spool_path: str
    spool_max_bytes: int
    spool: SpoolFigures | None
    devices: list[DeviceLine]
    problems: list[str] = field(default_factory=list)


@dataclass
class _Snapshot:
    pid: int
    age_s: float
    every_s: float
    metrics: AgentMetrics
    reasons: dict[str, str]


@dataclass
class _Spooled:
    """What a spool file holds that the report uses."""

    figures: SpoolFigures
    metrics: tuple[AgentMetrics, float] | None  # the newest queued metrics, its age
    statuses: dict[str, tuple[DeviceStatus, float]]  # device -> newest queued status, age


class SpoolUnreadable(Exception):
    """The spool cannot be read: missing, damaged, not permitted."""


class SpoolLocked(SpoolUnreadable):
    """Another process (an agent) holds a lock on the spool."""


def read_snapshot(path: Path, now_ns: int | None = None) -> _Snapshot | None:
    """The agent's snapshot, None when there is none (or it is unreadable: logged as a
    detail by the caller's "not running")."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        metrics = AgentMetrics.model_validate(document["metrics"])
        now = time.time_ns() if now_ns is None else now_ns
        return _Snapshot(
            pid=int(document["pid"]),
            age_s=max(0.0, (now - int(document["written_ns"])) / 1e9),
            every_s=float(document.get("every_s", SNAPSHOT_EVERY_S)),
            metrics=metrics,
            reasons={str(k): str(v) for k, v in (document.get("reasons") or {}).items()},
        )
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (the service's): alive
        return True
    return True


def read_spool(
    path: Path, agent_id: str, devices: dict[str, str], site: str, now_ns: int | None = None
) -> _Spooled:
    """Depth, bytes, oldest age and the newest queued metrics and device statuses, read
    from a spool file no agent is using. ``devices``: name -> asset.

    Read-only, and leaving no file behind (a plain ``mode=ro`` open of a closed spool
    would create an empty ``-wal`` and a ``-shm``). Without a ``-wal`` beside it (closed
    cleanly: everything is in the main file, and no agent has it open, since an open
    spool always has one) the file is read ``immutable``: no locks, nothing created.
    With one (a running agent's, or a killed agent's: unsent messages may be only
    there) it is opened ``mode=ro``, which reads the WAL but creates a ``-shm`` index,
    removed again after.
    A running agent holds its spool exclusively: then SpoolLocked, after at most
    ``BUSY_TIMEOUT_S`` (the agent itself is never held up).
    """
    if not path.exists():
        raise SpoolUnreadable(f"no spool file at {path} (the agent never ran with this config?)")
    now = time.time_ns() if now_ns is None else now_ns
    wal = path.with_name(path.name + "-wal").exists()
    shm = path.with_name(path.name + "-shm")
    made_shm = wal and not shm.exists()
    uri = f"{path.resolve().as_uri()}?mode=ro" + ("" if wal else "&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise SpoolUnreadable(f"cannot open {path}: {exc}") from exc
    try:
        conn.execute("BEGIN")  # one consistent read
        depth, size, oldest = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created_ns) FROM messages"
        ).fetchone()
        dropped = {priority.name.lower(): 0 for priority in Priority} | {
            Priority(int(key.split(".")[1])).name.lower(): value
            for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE 'dropped.%'")
        }
        metrics_rows = conn.execute(
            "SELECT payload, created_ns FROM (SELECT topic, payload, created_ns FROM messages"
            " WHERE priority = ? ORDER BY id DESC LIMIT ?) WHERE topic = ? LIMIT 1",
            (int(Priority.TELEMETRY), _SCAN_TELEMETRY, agent_metrics_topic(agent_id)),
        ).fetchall()
        status_rows = conn.execute(
            "SELECT topic, payload, created_ns FROM messages WHERE priority = ?"
            " ORDER BY id DESC LIMIT ?",
            (int(Priority.STATUS), _SCAN_STATUS),
        ).fetchall()
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise SpoolLocked(f"{path} is locked by another process (an agent)") from exc
        if code == sqlite3.SQLITE_CORRUPT and not wal:
            raise SpoolUnreadable(f"{path} changed while it was read: ask again") from exc
        raise SpoolUnreadable(f"cannot read {path}: {exc}") from exc
    finally:
        conn.close()
        if made_shm:  # ours: an agent's connection (locking_mode=EXCLUSIVE) uses none
            with contextlib.suppress(OSError):
                shm.unlink()
    metrics = None
    for payload, created in metrics_rows:
        with contextlib.suppress(ValidationError):
            metrics = (AgentMetrics.model_validate_json(payload), _age(now, created))
    statuses: dict[str, tuple[DeviceStatus, float]] = {}
    wanted = {device_status_topic(site, asset, name): name for name, asset in devices.items()}
    for topic, payload, created in status_rows:  # newest first
        name = wanted.get(topic)
        if name is None or name in statuses:
            continue
        with contextlib.suppress(ValidationError):
            statuses[name] = (DeviceStatus.model_validate_json(payload), _age(now, created))
    oldest_age = None if oldest is None else _age(now, oldest)
    figures = SpoolFigures(depth, size, oldest_age, dropped, "spool file")
    return _Spooled(figures, metrics, statuses)


def build_report(
    config: AgentConfig, max_oldest_s: float = MAX_OLDEST_S, now_ns: int | None = None
) -> Report:
    now = time.time_ns() if now_ns is None else now_ns
    spool_path = Path(config.spool.path)
    devices = {device.name: device.asset for device in config.devices}
    report = Report(
        agent=config.agent.id,
        site=config.agent.site,
        running="unknown",
        running_detail="",
        broker="unknown",
        broker_detail="",
        spool_path=str(spool_path),
        spool_max_bytes=int(config.spool.max_mb * 1e6),
        spool=None,
        devices=[],
    )
    snapshot = read_snapshot(snapshot_path(spool_path), now)
    live = snapshot is not None and pid_alive(snapshot.pid)
    stale_after = max(STALE_AFTER_S, 3 * snapshot.every_s) if snapshot is not None else 0
    if snapshot is not None and live and snapshot.age_s <= stale_after:
        _from_snapshot(report, snapshot, devices, stale=False)
    else:
        if snapshot is not None and live:
            report.running = "stuck"
            report.running_detail = (
                f"pid {snapshot.pid} alive, but its snapshot is {_duration(snapshot.age_s)} old"
            )
            report.problems.append(f"agent stuck: {report.running_detail}")
        _from_spool(report, config, devices, snapshot, now)
    _judge(report, max_oldest_s)
    return report


def _from_snapshot(
    report: Report, snapshot: _Snapshot, devices: dict[str, str], *, stale: bool
) -> None:
    metrics = snapshot.metrics
    age = snapshot.age_s if stale else None
    if not stale:
        report.running = "running"
        report.running_detail = (
            f"pid {snapshot.pid}, up {_duration(metrics.uptime_s)}, "
            f"snapshot {_duration(snapshot.age_s)} old"
        )
    report.broker = "connected" if metrics.broker_connected else "disconnected"
    if stale:
        report.broker = "unknown"
        report.broker_detail = (
            f"the agent's last snapshot, {_duration(snapshot.age_s)} ago, said "
            f"{'connected' if metrics.broker_connected else 'disconnected'}"
        )
    queue = metrics.queue
    report.spool = SpoolFigures(
        depth=queue.depth,
        bytes=queue.bytes,
        oldest_age_s=None if queue.oldest_age_s is None else queue.oldest_age_s + snapshot.age_s,
        dropped={
            "telemetry": queue.dropped_telemetry,
            "status": queue.dropped_status,
            "alarm": queue.dropped_alarm,
        },
        source="agent snapshot",
        age_s=age,
    )
    for name, asset in devices.items():
        counters = metrics.devices.get(name)
        state = counters.state if counters is not None and counters.state else None
        detail = ""
        if counters is not None and state == "up":
            detail = f"last cycle {counters.last_cycle_ms:.0f} ms"
            if counters.overrunning:
                detail += f", overrunning: {', '.join(counters.overrunning)}"
        elif state == "down":
            detail = snapshot.reasons.get(name, "")
        elif counters is None or state is None:
            detail = "not polled yet"
        report.devices.append(
            DeviceLine(name, asset, str(state) if state else "unknown", detail, age)
        )


def _from_spool(
    report: Report,
    config: AgentConfig,
    devices: dict[str, str],
    snapshot: _Snapshot | None,
    now: int,
) -> None:
    """No live snapshot: the agent is not running (or keeps none); read the spool."""
    try:
        spooled = read_spool(
            Path(report.spool_path), config.agent.id, devices, config.agent.site, now
        )
    except SpoolLocked as exc:
        if report.running == "unknown":  # a lock, and no snapshot to explain it
            report.running_detail = f"{exc}, but it keeps no status snapshot"
            report.problems.append(f"agent state unknown: {report.running_detail}")
        _without_spool(report, devices, snapshot)
        return
    except SpoolUnreadable as exc:
        _not_running(report, snapshot)
        report.problems.append(f"spool not read: {exc}")
        _without_spool(report, devices, snapshot)
        return
    _not_running(report, snapshot)
    report.spool = spooled.figures
    # The newest of: the snapshot, the last queued metrics, each device's last status.
    latest = spooled.metrics
    if snapshot is not None and (latest is None or snapshot.age_s < latest[1]):
        latest = (snapshot.metrics, snapshot.age_s)
    if latest is not None:
        said = "connected" if latest[0].broker_connected else "disconnected"
        report.broker_detail = f"the agent's last metrics, {_duration(latest[1])} ago, said {said}"
    else:
        report.broker_detail = "nothing recorded: no snapshot, no unsent metrics in the spool"
    for name, asset in devices.items():
        line = DeviceLine(name, asset, "unknown", "nothing recorded")
        counters = latest[0].devices.get(name) if latest is not None else None
        if latest is not None and counters is not None and counters.state:
            line = DeviceLine(name, asset, str(counters.state), "", latest[1])
        status = spooled.statuses.get(name)
        if status is not None:
            message, age = status
            if line.age_s is None or age < line.age_s:  # the newer one says the state
                line = DeviceLine(name, asset, str(message.state), message.reason, age)
            elif str(message.state) == line.state and not line.detail:
                line.detail = message.reason  # metrics carry no reason
        if line.state == "down" and not line.detail and snapshot is not None:
            line.detail = snapshot.reasons.get(name, "")
        report.devices.append(line)


def _not_running(report: Report, snapshot: _Snapshot | None) -> None:
    if report.running != "unknown":  # stuck: said already
        return
    report.running = "not running"
    report.running_detail = (
        "no status snapshot beside the spool"
        if snapshot is None
        else f"pid {snapshot.pid} gone, its last snapshot {_duration(snapshot.age_s)} ago"
    )
    report.problems.append(f"agent not running ({report.running_detail})")


def _without_spool(report: Report, devices: dict[str, str], snapshot: _Snapshot | None) -> None:
    """The spool could not be read: what an old snapshot says, else nothing."""
    if snapshot is not None:
        _from_snapshot(report, snapshot, devices, stale=True)
        return
    report.devices = [DeviceLine(n, a, "unknown", "no information") for n, a in devices.items()]
    report.broker_detail = "nothing recorded: no snapshot, spool not read"


def _judge(report: Report, max_oldest_s: float) -> None:
    running = report.running == "running"
    for line in report.devices:
        when = "" if line.age_s is None else f" ({_duration(line.age_s)} ago)"
        if line.state == "down":
            report.problems.append(
                f"device {line.name} down{when}" + (f": {line.detail}" if line.detail else "")
            )
        elif line.state == "unknown" and running:
            report.problems.append(f"device {line.name}: {line.detail or 'state unknown'}")
    if report.broker == "disconnected":
        report.problems.append("broker not connected")
    spool = report.spool
    if spool is None:
        return
    if spool.oldest_age_s is not None and spool.oldest_age_s > max_oldest_s:
        report.problems.append(
            f"spool backs up: oldest unsent message {_duration(spool.oldest_age_s)} old "
            f"(more than {_duration(max_oldest_s)}), {spool.depth} messages"
        )
    if spool.bytes > FULL_SHARE * report.spool_max_bytes:
        report.problems.append(
            f"spool nearly full: {_megabytes(spool.bytes)} of {_megabytes(report.spool_max_bytes)}"
            " (spool.max_mb): the oldest telemetry is dropped at the limit"
        )


# ------------------------------------------------------------------ printing, CLI


def render(report: Report) -> str:
    lines = [f"agent {report.agent} (site {report.site})"]
    lines.append(f"  agent:   {report.running}" + _paren(report.running_detail))
    lines.append(f"  broker:  {report.broker}" + _paren(report.broker_detail))
    up = sum(line.state == "up" for line in report.devices)
    lines.append(f"  devices: {up} of {len(report.devices)} up")
    width = max((len(line.name) for line in report.devices), default=0)
    for line in report.devices:
        state = line.state.upper() if line.state == "down" else line.state
        when = "" if line.age_s is None else f" [{_duration(line.age_s)} ago]"
        detail = f"  {line.detail}" if line.detail else ""
        lines.append(f"    {line.name:<{width}}  {line.asset}  {state}{when}{detail}")
    spool = report.spool
    if spool is None:
        lines.append(f"  spool:   unknown  ({report.spool_path})")
    else:
        oldest = "-" if spool.oldest_age_s is None else _duration(spool.oldest_age_s)
        when = "" if spool.age_s is None else f", {_duration(spool.age_s)} ago"
        lines.append(
            f"  spool:   {spool.depth} unsent, {_megabytes(spool.bytes)} of "
            f"{_megabytes(report.spool_max_bytes)}, oldest unsent {oldest}"
            f"  (from the {spool.source}{when}: {report.spool_path})"
        )
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(spool.dropped.items()))
        lines.append(f"           dropped since the spool was created: {dropped or 'none'}")
    if report.problems:
        lines.append(f"PROBLEM ({len(report.problems)}):")
        lines += [f"  - {problem}" for problem in report.problems]
    else:
        lines.append("OK")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="What the agent on this gateway is doing, from local files only: "
        "devices up or down, broker connected, spool depth and the age of the oldest "
        "unsent message. Exit status 0: all is well; 1: a problem (listed); 2: the "
        "config cannot be read.",
        epilog="problems (exit 1): the agent is not running or stuck; a device is down or "
        "not polled yet; the broker is not connected; the oldest unsent message is older "
        f"than --max-oldest-s; the spool holds more than {FULL_SHARE:.0%} of spool.max_mb.\n"
        "example:\n  derrick-agent status --config /etc/derrick/agent.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="the agent's YAML config")
    parser.add_argument(
        "--max-oldest-s",
        type=float,
        default=MAX_OLDEST_S,
        help=f"an unsent message older than this means the spool backs up "
        f"(default {MAX_OLDEST_S:.0f})",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str]) -> int:
    """``derrick-agent status --config FILE``; argv may start with ``status``."""
    argv = list(argv)
    args = parser().parse_args(argv[1:] if argv[:1] == ["status"] else argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: invalid config\n{exc}\n")
        return 2
    report = build_report(config, args.max_oldest_s)
    if args.json:
        sys.stdout.write(json.dumps(asdict(report), indent=2) + "\n")
    else:
        sys.stdout.write(render(report))
    return 1 if report.problems else 0


def _age(now_ns: int, then_ns: int) -> float:
    return max(0.0, (now_ns - then_ns) / 1e9)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 180:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        return f"{hours:.0f} h {minutes % 60:.0f} min"
    return f"{hours / 24:.1f} days"


def _megabytes(count: int | float) -> str:
    return f"{count / 1e6:.1f} MB"


def _paren(text: str) -> str:
    return f"  ({text})" if text else ""


if __name__ == "__main__":  # python -m agent.status --config FILE
    sys.exit(main(sys.argv[1:]))
