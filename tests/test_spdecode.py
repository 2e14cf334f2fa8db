"""derrick-sparkplug: mosquitto_sub's 'topic hex' lines as JSON, aliases named from
births, bad lines reported by number while the rest is printed."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from derrick.wire import sparkplug as sp
from derrick.wire.payloads import Quality, Reading
from derrick.wire.spdecode import decode_lines, main

T0 = 1_764_800_000_123_000_000
SPECS = [
    sp.MetricSpec("hook_load", 1, sp.MetricType.FLOAT, "t"),
    sp.MetricSpec("estop", 2, sp.MetricType.BOOLEAN),
]


def line(topic: str, payload: bytes) -> str:
    return f"{topic} {payload.hex()}\n"


def stream() -> str:
    dbirth = sp.encode_device_birth(SPECS, {}, T0, asset="crane-01", kind="crane")
    data = sp.DataEncoder(SPECS).encode(
        [
            Reading(tag="hook_load", value=12.5, ts_ns=T0),
            Reading(tag="estop", value=None, quality=Quality.BAD, ts_ns=T0 + 5_000_000),
        ]
    )
    assert data is not None
    return (
        line("spBv1.0/yard/NBIRTH/gw-1", sp.encode_node_birth(4, T0))
        + line("spBv1.0/yard/DBIRTH/gw-1/lmi", sp.with_seq(dbirth, 1))
        + "spBv1.0/yard/DDATA/gw-1/lmi zz-not-hex\n"
        + line("spBv1.0/yard/DDATA/gw-1/lmi", sp.with_seq(sp.as_historical(data), 2))
        + line("spBv1.0/STATE/main-host", sp.host_state_payload(True, T0))
    )


def test_each_message_is_one_json_line_with_aliases_named_from_the_birth():
    out, err = io.StringIO(), io.StringIO()
    bad = decode_lines([io.StringIO(stream())], out, err)
    assert bad == 1
    assert "-:3:" in err.getvalue() or ":3:" in err.getvalue()
    nbirth, dbirth, ddata, state = (json.loads(text) for text in out.getvalue().splitlines())
    assert (nbirth["type"], nbirth["seq"]) == ("NBIRTH", 0)
    assert {"name": "bdSeq", "datatype": "Int64", "value": 4} in [
        {k: m[k] for k in ("name", "datatype", "value")} for m in nbirth["metrics"]
    ]
    hook = dbirth["metrics"][0]
    assert (hook["name"], hook["alias"], hook["datatype"]) == ("hook_load", 1, "Float")
    assert hook["properties"] == {"engUnit": "t", "Quality": 0}
    assert (ddata["device"], ddata["seq"], ddata["timestamp"]) == ("lmi", 2, T0 // 1_000_000)
    load, estop = ddata["metrics"]
    assert (load["name"], load["value"], load["is_historical"]) == ("hook_load", 12.5, True)
    assert (estop["name"], estop["value"], estop["is_null"]) == ("estop", None, True)
    assert estop["properties"] == {"Quality": 0}
    assert estop["timestamp"] == T0 // 1_000_000 + 5
    assert state == {
        "topic": "spBv1.0/STATE/main-host",
        "type": "STATE",
        "host": "main-host",
        "online": True,
        "timestamp": T0 // 1_000_000,
    }


def test_one_payload_from_the_command_line(capsys):
    payload = sp.encode_node_death(9, T0).hex()
    assert main(["--topic", "spBv1.0/yard/NDEATH/gw-1", "--hex", payload]) == 0
    (death,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert (death["type"], death["metrics"][0]["value"]) == ("NDEATH", 9)
    assert main(["--topic", "spBv1.0/yard/NDEATH/gw-1"]) == 2
    assert "--topic and --hex go together" in capsys.readouterr().err


def test_the_installed_command_reads_stdin_and_says_which_line_was_bad(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "derrick.wire.spdecode"],
        input=stream() + "derrick/v1/a/b/c/telemetry 00\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert len(done.stdout.splitlines()) == 4
    errors = done.stderr.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("derrick-sparkplug: <stdin>:3: ")
    assert "not a Sparkplug B topic" in errors[1]
    assert "<stdin>:6:" in errors[1]
