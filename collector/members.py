"""``derrick-collector members --config FILE``: who shares the alarms now, read from etcd.

For the operations engineer of collectors that fail over (docs/failover.md): the live
members and their operator APIs, which member owns each asset, whose MQTT session is
being drained by whom, and how many notices wait per channel. Reads only; prints a
table, or JSON with ``--json``. Exit 0; 2 when the config is bad or has no ``etcd``
section; 1 when etcd does not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence

from collector.config import load_config
from collector.etcd import Etcd, EtcdError
from derrick.plumbing.configfile import ConfigError

PROG = "derrick-collector members"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Show the collectors that share the alarms through etcd: live "
        "members, the owner of each asset, drained MQTT sessions, notices waiting.",
        epilog="example:\n  derrick-collector members --config /etc/derrick/collector.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["members"], help=argparse.SUPPRESS)
    parser.add_argument("--config", required=True, help="a collector config with an etcd section")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def read(etcd: Etcd, prefix: str) -> dict[str, object]:
    """What etcd holds under ``prefix`` now."""

    def under(part: str) -> list[tuple[str, bytes]]:
        entries = etcd.block(etcd.get_prefix(f"{prefix}/{part}/"))
        cut = len(prefix) + len(part) + 2
        return [(e.key[cut:], e.value) for e in entries]

    members = {}
    for name, value in under("members"):
        try:
            members[name] = json.loads(value).get("api")
        except (ValueError, AttributeError):
            members[name] = None
    owners = {asset: value.decode() for asset, value in under("owners")}
    sessions = sorted(name for name, _ in under("sessions"))
    adopted = {name: value.decode() for name, value in under("adopted")}
    waiting = Counter(key.partition("/")[0] for key, _ in under("outbox"))
    alarms = Counter("/".join(key.split("/", 2)[:2]) for key, _ in under("alarms"))
    return {
        "members": members,
        "owners": owners,
        "sessions": {
            name: "live" if name in members else f"drained by {adopted.get(name, 'nobody')}"
            for name in sessions
        },
        "notices_waiting": dict(waiting),
        "assets_with_alarms": sorted(alarms),
    }


def render(state: dict[str, object]) -> str:
    members = state["members"]
    owners = state["owners"]
    assert isinstance(members, dict) and isinstance(owners, dict)
    lines = [f"members ({len(members)} live):"]
    for name, api in sorted(members.items()):
        held = sorted(asset for asset, owner in owners.items() if owner == name)
        lines.append(f"  {name}  api {api or '-'}  owns {len(held)}: {', '.join(held) or '-'}")
    unowned = [a for a in state["assets_with_alarms"] if a not in owners]  # type: ignore[attr-defined]
    lines.append(f"assets with stored alarms and no owner: {', '.join(unowned) or 'none'}")
    sessions = state["sessions"]
    assert isinstance(sessions, dict)
    lines.append("MQTT sessions: " + (", ".join(f"{n} {s}" for n, s in sessions.items()) or "-"))
    waiting = state["notices_waiting"]
    assert isinstance(waiting, dict)
    lines.append(
        "notices waiting: " + (", ".join(f"{c} {n}" for c, n in sorted(waiting.items())) or "none")
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 2
    settings = config.etcd
    if settings is None:
        sys.stderr.write(f"{PROG}: {args.config} has no etcd section: this collector runs alone\n")
        return 2
    etcd = Etcd.for_settings(settings)
    try:
        state = read(etcd, settings.prefix)
    except EtcdError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    finally:
        etcd.stop()
    sys.stdout.write(json.dumps(state, indent=2) + "\n" if args.json else render(state))
    return 0
