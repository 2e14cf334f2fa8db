"""derrick-sparkplug: read Sparkplug B messages as JSON, for a technician with mosquitto_sub.

Sparkplug payloads are protobuf, unreadable on a terminal. This turns what
``mosquitto_sub -F '%t %x'`` prints (the topic, a space, the payload in hex; one message
per line) into one JSON object per message: its type, group, node and device, seq, and
every metric with its name, alias, datatype, value, timestamp and properties. Aliases in
data messages are named from the births seen earlier in the same stream, so start it
before the edge node connects, or ask for a rebirth, to see names.

A line that cannot be read is reported on stderr with its line number and why; the
others are still printed. Exit status 1 if any line was bad, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

from derrick.wire import sparkplug as sp
from derrick.wire.topics import TopicError

EXAMPLES = """\
examples:
  mosquitto_sub -h broker -t 'spBv1.0/#' -F '%t %x' | derrick-sparkplug
  mosquitto_sub -h broker -t 'spBv1.0/north-yard/DDATA/#' -F '%t %x' -C 5 | derrick-sparkplug
  derrick-sparkplug --topic spBv1.0/s/NBIRTH/gw-1 --hex 0880a4...   # one payload
  derrick-sparkplug captured.txt                                   # lines saved earlier
"""


def describe(topic: str, payload: bytes, names: dict[tuple[str, str, str], dict[int, str]]) -> dict:
    """One message as a JSON-ready dict; SparkplugError / TopicError say why not.

    ``names`` (group, node, device) -> alias -> name is learned from births and used to
    name the aliases of later data messages."""
    parsed = sp.parse_sparkplug_topic(topic)
    if isinstance(parsed, sp.HostStateTopic):
        online, stamp = sp.parse_host_state(payload)
        return {
            "topic": topic,
            "type": "STATE",
            "host": parsed.host,
            "online": online,
            "timestamp": stamp,
        }
    message = sp.decode_payload(payload)
    key = (parsed.group, parsed.node, parsed.device or "")
    if parsed.type in {sp.MessageType.NBIRTH, sp.MessageType.DBIRTH}:
        names[key] = {m.alias: m.name for m in message.metrics if m.name and m.HasField("alias")}
    known = names.get(key, {})
    out: dict = {
        "topic": topic,
        "type": parsed.type.value,
        "group": parsed.group,
        "node": parsed.node,
    }
    if parsed.device is not None:
        out["device"] = parsed.device
    if message.HasField("timestamp"):
        out["timestamp"] = message.timestamp
    if message.HasField("seq"):
        out["seq"] = message.seq
    out["metrics"] = [_metric(metric, known) for metric in message.metrics]
    return out


def _metric(metric: sp.pb.Payload.Metric, known: dict[int, str]) -> dict:
    kind = sp.metric_type_of(metric.datatype)
    out: dict = {}
    if metric.name:
        out["name"] = metric.name
    elif metric.HasField("alias") and metric.alias in known:
        out["name"] = known[metric.alias]
    if metric.HasField("alias"):
        out["alias"] = metric.alias
    if metric.HasField("datatype"):
        try:
            out["datatype"] = sp.pb.DataType.Name(metric.datatype)  # the spec's own names
        except ValueError:
            out["datatype"] = metric.datatype
    value = sp.metric_value(metric, kind)
    out["value"] = value
    if metric.HasField("timestamp"):
        out["timestamp"] = metric.timestamp
    for flag in ("is_historical", "is_transient", "is_null"):
        if getattr(metric, flag):
            out[flag] = True
    properties = sp.metric_properties(metric)
    if properties:
        out["properties"] = properties
    return out


def lines_of(sources: Iterable[TextIO]) -> Iterator[tuple[str, int, str]]:
    """(source name, line number, line) of every non-blank line."""
    for source in sources:
        for number, line in enumerate(source, start=1):
            if line.strip():
                yield getattr(source, "name", "-"), number, line.strip()


def decode_lines(sources: Iterable[TextIO], out: TextIO, err: TextIO) -> int:
    """Print each ``topic hex`` line as JSON; return how many lines were bad."""
    names: dict[tuple[str, str, str], dict[int, str]] = {}
    bad = 0
    for where, number, line in lines_of(sources):
        topic, _, hexed = line.partition(" ")
        try:
            payload = bytes.fromhex(hexed.strip())
            out.write(json.dumps(describe(topic, payload, names), ensure_ascii=False) + "\n")
        except (ValueError, TopicError) as exc:  # SparkplugError is a ValueError
            bad += 1
            err.write(f"derrick-sparkplug: {where}:{number}: {exc}\n")
    out.flush()
    return bad


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="derrick-sparkplug",
        description="Print Sparkplug B messages as JSON: reads lines of 'topic hex-payload' "
        "(mosquitto_sub -F '%%t %%x') from files or standard input.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="*", help="files of 'topic hex' lines (default: stdin)")
    parser.add_argument("--topic", help="with --hex: the topic of that one payload")
    parser.add_argument("--hex", dest="payload", help="one payload in hex (needs --topic)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.topic is None) != (args.payload is None):
        sys.stderr.write("derrick-sparkplug: --topic and --hex go together\n")
        return 2
    if args.topic is not None:
        sources: list[TextIO] = [_One(f"{args.topic} {args.payload}")]
    elif args.files:
        try:
            sources = [open(path, encoding="utf-8") for path in args.files]  # noqa: SIM115
        except OSError as exc:
            sys.stderr.write(f"derrick-sparkplug: {exc.filename}: {exc.strerror}\n")
            return 2
    else:
        sources = [sys.stdin]
    try:
        return 1 if decode_lines(sources, sys.stdout, sys.stderr) else 0
    except KeyboardInterrupt:
        return 130
    finally:
        for source in sources:
            if source is not sys.stdin:
                source.close()


class _One(list):
    """One line, as a source."""

    name = "--hex"

    def __init__(self, line: str) -> None:
        super().__init__([line])

    def close(self) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
