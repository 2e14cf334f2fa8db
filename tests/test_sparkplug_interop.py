"""Sparkplug B against an implementation that is not ours: Eclipse Tahu's JavaScript
libraries (tests/interop: ``sparkplug-client`` as an edge node, ``sparkplug-payload`` and
MQTT.js as a host application), with real mosquitto and InfluxDB 1.6.

* Tahu edge node -> Derrick's collector: what the node sends (Double with a unit, Int32,
  Int64, UInt32, Boolean, String; names with folders; by alias and by name) lands in
  InfluxDB as sent, and its DDEATH and NDEATH (the broker's will, or Tahu's own on stop)
  take the device down; nothing is dead-lettered.
* Derrick's agent -> a Tahu-decoding host: births, data by alias, seq, rebirth on NCMD and
  the NDEATH of a killed agent read as the spec says, with the values Derrick's own
  decoder reads from the same bytes; an edge alarm condition (``Alarms/<rule>``) with
  the properties Derrick's host reads.

The Node packages are installed by scripts/setup.sh (``npm ci`` from the committed lock
file); if they are missing the test installs them once the same way. Without ``node``
the tests are skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest

from collector.deadletter import read_dead_letters
from collector.sparkplug import TABLE_NOTE
from derrick.wire import sparkplug as sp
from devstack.programs import Program, start_simulator, wait_for, write_yaml

pytestmark = pytest.mark.integration

INTEROP = Path(__file__).resolve().parent / "interop"
NODE_MODULES = INTEROP / "node_modules"


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` executable, with tests/interop's packages installed."""
    executable = shutil.which("node")
    if executable is None:
        pytest.skip("node (Node.js) is not installed; scripts/setup.sh installs it")
    marker = NODE_MODULES / ".package-lock.json"  # npm writes it on every install
    if not marker.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("tests/interop/node_modules is missing and npm is not installed")
        done = subprocess.run(
            [npm, "ci", "--prefix", str(INTEROP), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                "npm ci --prefix tests/interop failed (run scripts/setup.sh):\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
    return executable


class NodeScript:
    """A script of tests/interop, its JSON stdout lines collected by a thread; its
    stderr goes to ``log``."""

    def __init__(self, node: str, script: str, *args: object, log: Path) -> None:
        self.name = script
        self.log = log
        self._lines: list[dict] = []
        self._lock = threading.Lock()
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [node, str(INTEROP / script), *map(str, args)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=INTEROP,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Every line, also kept in ``<log>.jsonl`` for a look after a failure."""
        assert self.process.stdout is not None
        with self.log.with_suffix(".jsonl").open("a") as copy:
            for text in self.process.stdout:
                copy.write(text)
                line = json.loads(text)
                with self._lock:
                    self._lines.append(line)

    def lines(self) -> list[dict]:
        with self._lock:
            return list(self._lines)

    def wait(self, predicate: Callable[[list[dict]], object], timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines()
            if predicate(lines):
                return lines
            if self.process.poll() is not None:
                self._reader.join(2)
                if predicate(self.lines()):
                    return self.lines()
                break
            time.sleep(0.05)
        raise TimeoutError(
            f"{self.name}: {what}: not within {timeout} s (exit {self.process.poll()}); "
            f"stderr: {self.log.read_text()[-2000:]}\nlast lines: {self.lines()[-5:]}"
        )

    def finish(self, timeout: float = 20) -> list[dict]:
        """Wait for the script to exit by itself; its lines."""
        code = self.process.wait(timeout)
        self._close()
        assert code == 0, f"{self.name} exited {code}: {self.log.read_text()[-2000:]}"
        return self.lines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._close()

    def _close(self) -> None:
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def rows(influx1, db: str, query: str) -> list[dict]:
    result = influx1.query(query, db=db)
    out = []
    for series in result["results"][0].get("series", []):
        out += [dict(zip(series["columns"], values, strict=True)) for values in series["values"]]
    return out


# -- Tahu edge node -> Derrick's collector ------------------------------------------------


def expected_points(sent: list[dict]) -> dict[int, dict[str, object]]:
    """What the edge node sent in its DBIRTH and DDATA: fields by time (ns)."""
    names: dict[int, str] = {}
    points: dict[int, dict[str, object]] = {}
    for message in sent:
        if message.get("sent") not in {"DBIRTH", "DDATA"}:
            continue
        fields = {}
        for metric in message["metrics"]:
            name = metric.get("name")
            if name is None:
                name = names[metric["alias"]]
            elif "alias" in metric:
                names[metric["alias"]] = name
            fields[name.replace("/", ".")] = metric["value"]  # the field key of a folder
        points[message["timestamp"] * 1_000_000] = fields
    return points


def wait_until_subscribed(collector: Program, port: int, influx1, db: str, group: str) -> None:
    """Until the collector reads Sparkplug: births are QoS 0 and not retained, so a node
    born before the collector's subscriptions are in place would not be seen born. A
    DDEATH (the last subscription it makes) of a probe device in another group, without
    seq, is published until its device_status row is stored."""
    topic = sp.sparkplug_topic(group, sp.MessageType.DDEATH, "probe", "probe")

    def stored() -> list[dict]:
        payload = sp.encode_device_death(time.time_ns())
        mqtt_publish.single(topic, payload, qos=1, hostname="127.0.0.1", port=port)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            found = rows(influx1, db, f"SELECT up FROM device_status WHERE site='{group}'")
            if found:
                return found
            time.sleep(0.05)
        return []

    wait_for(stored, 30, "the collector reading Sparkplug", program=collector)


def test_a_tahu_edge_node_is_stored_by_the_collector(tmp_path, mosquitto, influx1, influx_db, node):
    site = f"t{uuid.uuid4().hex[:8]}"
    collector_id = f"col-{site}"
    config = write_yaml(
        tmp_path / "collector.yaml",
        {
            "collector": {"id": collector_id},
            "broker": {"host": "127.0.0.1", "port": mosquitto.port, "reconnect_max_s": 2},
            "influx": {"api": "v1", "url": influx1.url, "database": influx_db},
            "batch": {"max_lines": 500, "max_delay_s": 0.1},
            "spool": {"path": str(tmp_path / "collector-spool.db")},
            "dead_letter": {"dir": str(tmp_path / "deadletter")},
            "log": {"format": "json"},
        },
    )
    collector = Program("collector", ["--config", str(config)], tmp_path / "collector.log")
    collector.start()
    # node "tahu-a": DDATA by alias, ends by dropping its connection (the broker sends
    # its will); node "tahu-n": DDATA by name, ends with Tahu's stop() (its own NDEATH).
    nodes = {
        "tahu-a": ("meter-a", "--aliases", "--end", "will"),
        "tahu-n": ("meter-n", "--end", "stop"),
    }
    scripts: list[NodeScript] = []
    try:
        wait_until_subscribed(collector, mosquitto.port, influx1, influx_db, f"{site}-probe")
        scripts = [
            NodeScript(
                node,
                "edge_node.js",
                mosquitto.port,
                site,
                edge,
                device,
                "--data",
                5,
                *options,
                log=tmp_path / f"{edge}.log",
            )
            for edge, (device, *options) in nodes.items()
        ]
        sent = {edge: script.finish() for edge, script in zip(nodes, scripts, strict=True)}
        want = {nodes[edge][0]: expected_points(lines) for edge, lines in sent.items()}
        total = sum(len(points) for points in want.values())
        assert total == 12  # a DBIRTH and five DDATA each

        def stored() -> list[dict]:
            found = rows(influx1, influx_db, f"SELECT * FROM telemetry WHERE site='{site}'")
            return found if len(found) >= total else []

        def down() -> list[dict]:
            found = rows(
                influx1,
                influx_db,
                f"SELECT up, reason, asset FROM device_status WHERE site='{site}' GROUP BY device",
            )
            return found if sum(row["reason"].startswith("NDEATH") for row in found) >= 2 else []

        telemetry = wait_for(stored, 20, "the edge nodes' readings", program=collector)
        wait_for(down, 20, "both devices down by NDEATH", program=collector)
    finally:
        for script in scripts:
            script.stop()
        code = collector.stop()
    assert code == 0, collector.log_tail()

    assert len(telemetry) == total
    for row in telemetry:
        device = row["device"]
        assert (row["site"], row["asset"], row["kind"]) == (site, device, sp.THIRD_PARTY_KIND)
        fields = {k: v for k, v in row.items() if k in want[device][row["time"]]}
        assert fields == want[device][row["time"]], (device, row["time"])
        assert not [k for k, v in row.items() if k.endswith("_q") and v is not None]  # all good
    types = {
        r["fieldKey"]: r["fieldType"]
        for r in rows(influx1, influx_db, "SHOW FIELD KEYS FROM telemetry")
    }
    assert types == {
        "Inputs.pressure": "float",
        "count": "float",  # integers are stored as floats (collector.lineproto)
        "offset": "float",
        "Totals.energy": "float",
        "Status.running": "boolean",
        "state": "string",
    }

    statuses = rows(
        influx1,
        influx_db,
        f"SELECT up, reason, asset, device FROM device_status WHERE site='{site}'",
    )
    for device in ("meter-a", "meter-n"):
        mine = [(r["up"], r["reason"]) for r in statuses if r["device"] == device]
        assert mine == [
            (True, "DBIRTH"),
            (False, "DDEATH"),
            (False, "NDEATH: its agent went offline"),
        ], device
        assert {r["asset"] for r in statuses if r["device"] == device} == {device}

    # Units: kept in the collector's alias table of each device, from engUnit.
    with contextlib.closing(sqlite3.connect(tmp_path / "collector-spool.db")) as db:
        notes = dict(db.execute("SELECT key, value FROM notes WHERE key LIKE 'sparkplug:table:%'"))
    for edge, (device, *_) in nodes.items():
        table = json.loads(notes[f"{TABLE_NOTE}{site}/{edge}/{device}"])
        units = {wire: (name, unit) for wire, name, _alias, _type, unit in table["metrics"]}
        assert units["Inputs/pressure"] == ("Inputs.pressure", "bar")
        assert units["Totals/energy"] == ("Totals.energy", "kWh")
        assert units["count"] == ("count", "")

    log = (tmp_path / "collector.log").read_text()
    assert '"message rejected"' not in log, log
    assert "rebirth" not in log, log  # every message was readable: no rebirth asked
    assert list(read_dead_letters(tmp_path / "deadletter")) == []


# -- Derrick's agent -> a Tahu-decoding host -----------------------------------------------


EDGE_RULE = "crane_load_seen"
"""An edge alarm rule that holds from the first poll (a hook load above -1 t): its
condition goes out at once, so the third party's host reads one."""


def start_agent(tmp_path: Path, broker_port: int, plc_port: int, site: str) -> Program:
    rules = write_yaml(
        tmp_path / "edge-rules.yaml",
        {
            "rules": [
                {"name": EDGE_RULE, "kind": "crane", "type": "high", "tag": "hook_load",
                 "limit": -1, "priority": "low", "message": "load {value:.1f} t"}
            ]
        },
    )  # fmt: skip
    config = write_yaml(
        tmp_path / "agent.yaml",
        {
            "agent": {"id": "gw-1", "site": site},
            "broker": {"host": "127.0.0.1", "port": broker_port},
            "format": "sparkplug",
            "alarms": {"rules": [str(rules)]},
            "devices": [
                {
                    "name": "lmi",
                    "asset": "crane-01",
                    "profile": "crane",
                    "host": "127.0.0.1",
                    "port": plc_port,
                    "interval_s": 0.2,
                    "timeout_s": 0.5,
                }
            ],
            "spool": {"path": str(tmp_path / "spool.db")},
            "log": {"format": "json"},
        },
    )
    return Program("agent", ["--config", str(config)], tmp_path / "agent.log").start()


def of_type(lines: list[dict], kind: str) -> list[dict]:
    return [line for line in lines if line.get("type") == kind]


def metric(message: dict, name: str) -> dict:
    (found,) = [m for m in message["metrics"] if m.get("name") == name]
    return found


def same_value(tahu: object, derrick: object) -> bool:
    if isinstance(derrick, float) and isinstance(tahu, int | float):
        return tahu == derrick or (math.isnan(derrick) and tahu is None)
    return tahu == derrick


def test_a_tahu_host_reads_the_agent(tmp_path, mosquitto, node):
    site = f"t{uuid.uuid4().hex[:8]}"
    sim = start_simulator(tmp_path, "--no-demo-overload")
    host = NodeScript(
        node, "host.js", mosquitto.port, site, 30, "--rebirth", "gw-1", log=tmp_path / "host.log"
    )
    agent = None
    try:
        host.wait(lambda ls: {"event": "subscribed"} in ls, 10, "subscribed")
        agent = start_agent(tmp_path, mosquitto.port, sim.port, site)

        def reborn_with_data(lines: list[dict]) -> bool:
            births = [i for i, line in enumerate(lines) if line.get("type") == "NBIRTH"]
            return len(births) >= 2 and len(of_type(lines[births[1] :], "DDATA")) >= 5

        host.wait(reborn_with_data, 30, "a second NBIRTH after the NCMD, then data")
        agent.kill()
        lines = host.wait(lambda ls: of_type(ls, "NDEATH"), 10, "NDEATH of the killed agent")
    finally:
        host.stop()
        if agent is not None:
            agent.kill()
        sim.program.stop()
    assert not [line for line in lines if "error" in line], "Tahu could not decode some"

    births = of_type(lines, "NBIRTH")
    assert len(births) == 2
    for birth in births:
        assert birth["seq"] == 0
        assert metric(birth, "bdSeq")["type"] == "Int64"
        rebirth = metric(birth, "Node Control/Rebirth")
        assert (rebirth["type"], rebirth["value"]) == ("Boolean", False)
    bdseq = metric(births[0], "bdSeq")["value"]
    assert metric(births[1], "bdSeq")["value"] == bdseq  # a rebirth keeps the connection's
    (death,) = of_type(lines, "NDEATH")
    assert metric(death, "bdSeq")["value"] == bdseq
    assert "seq" not in death

    # The host's NCMD (as the broker echoed it) came after the first data, and the
    # second NBIRTH after it.
    assert {"event": "rebirth requested", "node": "gw-1"} in lines
    (ncmd,) = of_type(lines, "NCMD")
    assert metric(ncmd, sp.REBIRTH)["value"] is True
    first_data = lines.index(of_type(lines, "DDATA")[0])
    assert first_data < lines.index(ncmd) < lines.index(births[1])

    dbirths = of_type(lines, "DBIRTH")
    assert len(dbirths) == 2
    for dbirth in dbirths:
        assert dbirth["device"] == "lmi"
        hook = metric(dbirth, "hook_load")
        assert hook["type"] == "Float"
        assert hook["properties"]["engUnit"] == {"type": "String", "value": "t"}
        assert hook["properties"]["Quality"]["type"] == "Int32"
        assert metric(dbirth, sp.ASSET)["value"] == "crane-01"
        assert metric(dbirth, sp.KIND)["value"] == "crane"
        assert isinstance(hook["alias"], int)

    # Data by alias only; Tahu's values are Derrick's own decoder's, from the same bytes.
    data = of_type(lines, "DDATA")
    assert len(data) >= 6
    table = None
    loads = []
    for line in lines:
        if line.get("type") == "DBIRTH":
            table = sp.DeviceTable.from_birth(sp.decode_payload(bytes.fromhex(line["hex"])), "lmi")
        if line.get("type") not in {"DBIRTH", "DDATA"}:
            continue
        assert table is not None
        readings, unknown = table.readings(sp.decode_payload(bytes.fromhex(line["hex"])))
        assert unknown == []
        derrick = {reading.tag: reading.value for reading in readings}
        tahu = [
            m
            for m in line["metrics"]
            if m.get("name") not in {sp.ASSET, sp.KIND}
            and not m.get("name", "").startswith(sp.ALARMS_FOLDER)
        ]
        assert [m["name"] for m in tahu] == list(derrick)
        for m in tahu:
            spec = table.by_name[m["name"]]
            if line["type"] == "DDATA":
                assert m["byAlias"] and m["alias"] == spec.alias, m
            if derrick[m["name"]] is None:  # no reading yet (a birth): null, bad
                assert m["value"] is None and m["isNull"], m
                continue
            if spec.type is sp.MetricType.UINT32:
                # Spec 3.0: a UInt32 travels in int_value. Tahu's sparkplug-payload 1.0.3
                # reads UInt32 only from long_value (eclipse-tahu/tahu#397), so it sees
                # no value; Derrick's host reads both.
                assert m["field"] == "intValue", m
                assert m["value"] in (derrick[m["name"]], None), m
                continue
            assert same_value(m["value"], derrick[m["name"]]), (m, derrick[m["name"]])
        if line["type"] == "DDATA":
            loads += [m["value"] for m in tahu if m["name"] == "hook_load"]
    assert loads
    assert all(isinstance(v, int | float) and 0 <= v < 1000 for v in loads)
    assert_the_edge_alarm_reads_as_derrick_reads_it(lines, site)

    # seq: consecutive from each NBIRTH (0) through everything the node sends after it.
    wire = [line for line in lines if line.get("type") in {"NBIRTH", "DBIRTH", "DDATA", "DDEATH"}]
    starts = [i for i, line in enumerate(wire) if line["type"] == "NBIRTH"]
    for start, end in itertools.pairwise([*starts, len(wire)]):
        seqs = [line["seq"] for line in wire[start:end]]
        assert seqs[0] == 0
        for before, after in itertools.pairwise(seqs):
            assert after == (before + 1) % 256, seqs

    log = agent.log_tail(300)
    assert log.count('"rebirth requested by a host"') == 1, log
    assert '"host command refused"' not in log, log


def assert_the_edge_alarm_reads_as_derrick_reads_it(lines: list[dict], site: str) -> None:
    """The edge alarm condition: a Boolean metric of the DBIRTH, marked; its change a
    DDATA by alias whose properties Tahu reads as Derrick's own host does."""
    name = sp.ALARMS_FOLDER + EDGE_RULE
    for dbirth in of_type(lines, "DBIRTH"):
        born = metric(dbirth, name)
        assert born["type"] == "Boolean"
        assert born["properties"]["Derrick"] == {"type": "String", "value": "condition"}
    changes = [
        (line, m)
        for line in of_type(lines, "DDATA")
        for m in line["metrics"]
        if m.get("name") == name
    ]
    assert changes, "no condition change read by the Tahu host"
    line, tahu = changes[0]
    assert tahu["byAlias"] and tahu["value"] is True
    table = sp.DeviceTable.from_birth(
        sp.decode_payload(bytes.fromhex(of_type(lines, "DBIRTH")[0]["hex"])), "lmi"
    )
    message = sp.decode_payload(bytes.fromhex(line["hex"]))
    [(rule, raw)] = table.rows(message).conditions
    source = sp.ConditionSource(site, "crane-01", "lmi", "crane", "gw-1")
    derrick = sp.decode_condition(raw, rule, source, message.timestamp)
    props = {key: value["value"] for key, value in tahu["properties"].items()}
    assert (props["State"], props["Priority"], props["Type"]) == ("active", "low", "high")
    assert (derrick.state, derrick.priority, derrick.type) == ("active", "low", "high")
    assert props["Limit"] == derrick.limit == -1.0
    assert same_value(props["Value"], derrick.value)
    assert props["Message"] == derrick.message
    assert int(props["TimeNs"]) == derrick.ts_ns  # a Long: Tahu prints it as a string
    assert tahu["properties"]["Latched"] == {"type": "Boolean", "value": False}
