"""Config: examples validate; bad configs fail fast naming file, key and reason."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import load_config as load_agent_config
from collector.config import load_config as load_collector_config
from derrick.configfile import ConfigError
from derrick.profile import PROFILE_DIR, Profile, load_profile

CONFIG = Path(__file__).resolve().parent.parent / "config"


def test_agent_example_is_valid():
    config = load_agent_config(CONFIG / "agent.example.yaml")
    assert config.devices[0].equipment_kind == "crane"
    assert {r.tag for r in config.devices[0].selected_registers} >= {
        "hook_load",
        "safe_working_load",
    }


@pytest.mark.parametrize("name", ["collector.example.yaml", "collector.v2.example.yaml"])
def test_collector_examples_are_valid(name, monkeypatch):
    monkeypatch.setenv("DERRICK_INFLUX_TOKEN", "t")
    config = load_collector_config(CONFIG / name)
    assert [r.name for r in config.rules.rules] == ["crane_overload"]


@pytest.mark.parametrize("path", sorted(PROFILE_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_profile_is_valid(path):
    assert isinstance(load_profile(path.stem), Profile)


def write_agent(tmp_path, mutate):
    data = yaml.safe_load((CONFIG / "agent.example.yaml").read_text())
    mutate(data)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BAD_AGENT = {
    "unknown key": (
        lambda d: d["devices"][0].update(pollrate=5),
        "devices.0.pollrate",
        "Extra inputs are not permitted",
    ),
    "wrong type": (
        lambda d: d["devices"][0].update(port="five-oh-two"),
        "devices.0.port",
        "valid integer",
    ),
    "missing devices": (lambda d: d.pop("devices"), "devices", "Field required"),
    "empty devices": (lambda d: d.update(devices=[]), "devices", "at least 1 item"),
    "unknown profile": (
        lambda d: d["devices"][0].update(profile="excavator"),
        "devices.0.profile",
        "excavator.yaml: cannot read file",
    ),
    "unknown tag": (
        lambda d: d["devices"][0].update(tags=["hook_load", "jib_length"]),
        "devices.0",
        "tags not in the register map: jib_length",
    ),
    "bool in holding": (
        lambda d: d["devices"][0].update(
            profile=None,
            kind="crane",
            registers=[{"tag": "x", "table": "holding", "address": 0, "type": "bool"}],
        ),
        "devices.0.registers.0",
        "type bool needs a coil or discrete table",
    ),
    "overlapping registers": (
        lambda d: d["devices"][0].update(
            profile=None,
            kind="crane",
            registers=[
                {"tag": "a", "table": "holding", "address": 0, "type": "float32"},
                {"tag": "b", "table": "holding", "address": 1, "type": "uint16"},
            ],
        ),
        "devices.0",
        "tag 'b' overlaps tag 'a' at holding 1",
    ),
}


@pytest.mark.parametrize("case", BAD_AGENT, ids=list(BAD_AGENT))
def test_bad_agent_config_names_file_key_and_reason(tmp_path, case):
    mutate, key, reason = BAD_AGENT[case]
    path = write_agent(tmp_path, mutate)
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    assert f"{path}: {key}" in str(caught.value)
    assert reason in str(caught.value)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read file: No such file"):
        load_agent_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML: line 3"):
        load_agent_config(bad)


def test_bad_rules_file_is_named(tmp_path):
    (tmp_path / "rules.yaml").write_text("rules:\n  - {name: x, tag: hook_load}\n")
    (tmp_path / "c.yaml").write_text("collector: {id: c}\ninflux: {api: v1}\nrules: rules.yaml\n")
    with pytest.raises(ConfigError) as caught:
        load_collector_config(tmp_path / "c.yaml")
    assert "rules.yaml: rules.0: Value error, give either 'limit'" in str(caught.value)


CLI_CASES = {
    "unknown key": (
        "broker: {port: 1883, colour: red}\n",
        "broker.colour",
        "Extra inputs are not permitted",
    ),
    "wrong type": ("broker: {port: many}\n", "broker.port", "valid integer"),
    "missing device": ("broker: {port: 1883}\n", "devices", "Field required"),
    "unreadable file": (None, "", "cannot read file: No such file or directory"),
}


@pytest.mark.parametrize("case", CLI_CASES, ids=list(CLI_CASES))
def test_agent_cli_exits_non_zero_naming_file_key_and_reason(tmp_path, case):
    text, key, reason = CLI_CASES[case]
    path = tmp_path / "agent.yaml"
    if text is not None:
        path.write_text("agent: {id: gw, site: s}\n" + text)
    done = subprocess.run(
        [sys.executable, "-m", "agent.main", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert f"{path}: {key}{': ' if key else ''}" in done.stderr
    assert reason in done.stderr


def test_collector_cli_exits_non_zero_naming_file_key_and_reason(tmp_path):
    path = tmp_path / "collector.yaml"
    path.write_text("collector: {id: c}\ninflux: {api: v3}\n")
    done = subprocess.run(
        [sys.executable, "-m", "collector.main", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert f"{path}: influx: Input tag 'v3' found using 'api' does not match" in done.stderr


@pytest.mark.parametrize("program", ["agent.main", "collector.main", "simulators.main"])
def test_every_program_has_help(program):
    done = subprocess.run(
        [sys.executable, "-m", program, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    assert "usage:" in done.stdout


@pytest.mark.parametrize(
    ("table", "address", "protocol"),
    [
        ("holding", 40001, 0),
        ("holding", 40110, 109),
        ("holding", 400001, 0),
        ("input", 30005, 4),
        ("discrete", 10001, 0),
    ],
)
def test_modicon_1_based_address_is_caught_with_the_fix(tmp_path, table, address, protocol):
    type_ = "bool" if table == "discrete" else "uint16"
    path = write_agent(
        tmp_path,
        lambda d: d["devices"][0].update(
            profile=None,
            kind="crane",
            registers=[{"tag": "x", "table": table, "address": address, "type": type_}],
        ),
    )
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    message = str(caught.value)
    assert f"{path}: devices.0.registers.0" in message
    assert f"looks like 1-based Modicon numbering for a {table} register" in message
    assert f"the protocol address is {protocol};" in message


def test_a_real_high_protocol_address_can_be_declared(tmp_path):
    path = write_agent(
        tmp_path,
        lambda d: d["devices"][0].update(
            profile=None,
            kind="crane",
            registers=[
                {
                    "tag": "x",
                    "table": "holding",
                    "address": 40001,
                    "type": "uint16",
                    "protocol_address": True,
                },
                {"tag": "y", "table": "holding", "address": 39999, "type": "uint16"},
            ],
        ),
    )
    regs = load_agent_config(path).devices[0].selected_registers
    assert [r.address for r in regs] == [40001, 39999]
