"""Config: examples validate; bad configs fail fast naming file, key and reason."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import AgentConfig, Device
from agent.config import load_config as load_agent_config
from collector.config import load_config as load_collector_config
from derrick.alarms.rules import load_rules
from derrick.plc.profile import PROFILE_DIR, Deadband, Profile, Register, load_profile
from derrick.plumbing import configfile
from derrick.plumbing.configfile import ConfigError, expand_env, location
from simulators.scenario import load_script

CONFIG = Path(__file__).resolve().parent.parent / "config"
BAD = Path(__file__).resolve().parent / "bad_configs"


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
    monkeypatch.setenv("DERRICK_SMTP_PASSWORD", "p")
    config = load_collector_config(CONFIG / name)
    names = [r.name for r in config.alarms.ruleset.rules]
    assert "crane_overload" in names and "rig_h2s_high" in names


@pytest.mark.parametrize("path", sorted(PROFILE_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_profile_is_valid(path):
    assert isinstance(load_profile(path.stem), Profile)


def _loader(path: Path):
    """The loader of a YAML in config/, by where it lives."""
    relative = path.relative_to(CONFIG)
    if relative.parts[0] == "profiles":
        return lambda p: configfile.load(p, Profile)
    if relative.parts[0] == "scenarios":
        return load_script
    if relative.parts[0] == "alarm-rules":  # alarm rule sets (also tests/test_alarm_rules.py)
        return load_rules
    if relative.parts[0] == "grafana":  # Grafana's own provisioning format (test_dashboards)
        return lambda p: yaml.safe_load(p.read_text())["apiVersion"] == 1 or None
    if path.name.startswith("agent"):
        return load_agent_config
    if path.name.startswith("collector"):
        return load_collector_config
    raise AssertionError(f"{relative}: no test knows which model this YAML is")


@pytest.mark.parametrize(
    "path", sorted(CONFIG.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG))
)
def test_every_yaml_in_config_is_valid(path, monkeypatch):
    monkeypatch.setenv("DERRICK_INFLUX_TOKEN", "t")
    monkeypatch.setenv("DERRICK_SMTP_PASSWORD", "p")
    assert _loader(path)(path) is not None


def write_agent(tmp_path, mutate):
    data = yaml.safe_load((CONFIG / "agent.example.yaml").read_text())
    mutate(data)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BAD_AGENT = {
    "unknown key": (
        lambda d: d["devices"][0].update(pollrate=5),
        "devices[0] (lmi).pollrate",
        "Extra inputs are not permitted",
    ),
    "wrong type": (
        lambda d: d["devices"][0].update(port="five-oh-two"),
        "devices[0] (lmi).port",
        "valid integer",
    ),
    "missing devices": (lambda d: d.pop("devices"), "devices", "Field required"),
    "empty devices": (lambda d: d.update(devices=[]), "devices", "at least 1 item"),
    "unknown profile": (
        lambda d: d["devices"][0].update(profile="excavator"),
        "devices[0] (lmi).profile",
        "excavator.yaml: cannot read file",
    ),
    "unknown tag": (
        lambda d: d["devices"][0].update(tags=["hook_load", "jib_length"]),
        "devices[0] (lmi)",
        "tags not in the register map: jib_length",
    ),
    "bool in holding": (
        lambda d: d["devices"][0].update(
            profile=None,
            kind="crane",
            registers=[{"tag": "x", "table": "holding", "address": 0, "type": "bool"}],
        ),
        "devices[0] (lmi).registers[0] (tag x)",
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
        "devices[0] (lmi)",
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
    (tmp_path / "rules.yaml").write_text("rules:\n  - {name: x, type: high, tag: hook_load}\n")
    (tmp_path / "c.yaml").write_text(
        "collector: {id: c}\ninflux: {api: v1}\nalarms: {rules: [rules.yaml]}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_collector_config(tmp_path / "c.yaml")
    assert "rules.yaml: rules[0] (x): give either 'limit'" in str(caught.value)


def test_old_rules_key_says_where_it_moved(tmp_path):
    (tmp_path / "c.yaml").write_text("collector: {id: c}\ninflux: {api: v1}\nrules: r.yaml\n")
    with pytest.raises(ConfigError, match=re.escape("'rules' moved to 'alarms.rules'")):
        load_collector_config(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    ("alarms", "message"),
    [
        ("{members: [a, b]}", "must include this collector's id 'c'"),
        (
            "{routes: [{name: r, channels: [pager]}]}",
            "routes[0] (r): unknown channel 'pager'",
        ),
        (
            "{routes: [{name: r, channels: [], reminder_s: 60}]}",
            "List should have at least 1 item",
        ),
        (
            "{http: {enabled: true, host: 0.0.0.0}}",
            "needs users or a token when it listens beyond loopback",
        ),
    ],
)
def test_bad_alarm_settings_are_named(tmp_path, alarms, message):
    (tmp_path / "c.yaml").write_text(
        f"collector: {{id: c}}\ninflux: {{api: v1}}\nalarms: {alarms}\n"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_collector_config(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("etcd: {endpoints: [127.0.0.1:2379]}", "etcd needs collector.group"),
        ("etcd: {endpoints: []}", "etcd.endpoints: List should have at least 1 item"),
        (
            "collector: {id: c, group: g}\netcd: {endpoints: [localhost]}",
            "'localhost' is not host:port",
        ),
        (
            "collector: {id: c, group: g}\netcd: {endpoints: ['h:1'], ttl_s: 2, refresh_s: 1}",
            "refresh_s (1.0) must be at most ttl_s / 3",
        ),
        (
            "collector: {id: c, group: g}\netcd: {endpoints: ['h:1']}\nalarms: {members: [c, d]}",
            "give alarms.members or etcd, not both",
        ),
        (
            "collector: {id: c, group: g}\netcd: {endpoints: ['h:1'], prefix: derrick}",
            "etcd.prefix",
        ),
    ],
)
def test_bad_etcd_settings_are_named(tmp_path, extra, message):
    text = f"influx: {{api: v1}}\n{extra}\n"
    if not extra.startswith("collector"):
        text = "collector: {id: c}\n" + text
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_collector_config(tmp_path / "c.yaml")


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
    assert f"{path}: devices[0] (lmi).registers[0] (tag x): address" in message
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


# --- helpers for the production-polling keys -------------------------------------------


def agent_data(*devices, **top):
    return {"agent": {"id": "gw", "site": "s"}, "devices": list(devices), **top}


def dev(name="lmi", **keys):
    """A crane device on the crane profile (pass profile=None and registers=[...] inline)."""
    data = {"name": name, "asset": "crane-01", "host": "127.0.0.1", "profile": "crane"}
    data.update(keys)
    if data.get("registers") is not None:
        data.pop("profile", None)
        data.setdefault("kind", "crane")
    return {key: value for key, value in data.items() if value is not None}


def reg(tag, address, type_="uint16", table="holding", **keys):
    return {"tag": tag, "table": table, "address": address, "type": type_, **keys}


def load_data(data, path="agent.yaml"):
    return configfile.validate(path, data, AgentConfig)


def error_of(data, path="agent.yaml") -> str:
    with pytest.raises(ConfigError) as caught:
        load_data(data, path)
    return str(caught.value)


def selected(device: Device) -> dict[str, Register]:
    return {r.tag: r for r in device.selected_registers}


# --- the gateway example ---------------------------------------------------------------


def test_gateway_example_shows_groups_overrides_links_and_spool(monkeypatch):
    for name in ("CRANE_GW_HOST", "CRANE_GW_PORT", "DERRICK_SITE", "DERRICK_BROKER_HOST"):
        monkeypatch.delenv(name, raising=False)
    config = load_agent_config(CONFIG / "agent.gateway.example.yaml")
    lmi, lmi_02, hpu = config.devices
    assert lmi.group_intervals() == {"default": 1.0, "fast": 0.2, "slow": 60.0}
    assert [r.tag for r in lmi.registers_in_group("fast")] == [
        "hook_load",
        "wind_speed",
        "wind_gust",
    ]
    regs = selected(lmi)
    assert regs["hook_load"].deadband == Deadband(value=0.05)  # tag override
    assert regs["boom_angle"].deadband == Deadband(value=1, percent=True)  # device default
    assert regs["boom_angle"].heartbeat_s == 60
    assert lmi.link_key == lmi_02.link_key == "tcp://127.0.0.1:5020"
    assert lmi.port == 5020  # "${CRANE_GW_PORT:-5020}" is a string until validated
    hook = selected(lmi_02)["hook_load"]
    assert (hook.scale, str(hook.word_order), hook.address) == (0.10197, "little", 0)
    assert hpu.link_key == "serial:///dev/ttyUSB0"
    assert (hpu.baudrate, hpu.parity, hpu.stopbits, hpu.bytesize, hpu.port) == (
        19200,
        "E",
        1,
        8,
        None,
    )
    bits = {r.tag: r.bit for r in hpu.selected_registers if r.type == "bit"}
    assert bits == {"pump_running": 0, "filter_clogged": 3, "low_oil_level": 4}
    assert config.spool.path == CONFIG / "state" / "derrick-agent-gw-yard-01.db"


# --- bit tags and overlaps -------------------------------------------------------------

MAPS_OK = {
    "bits of one word": [reg("a", 5, "bit", bit=0), reg("b", 5, "bit", bit=15)],
    "status word read whole and per bit": [
        reg("status", 5),
        reg("a", 5, "bit", bit=0),
        reg("b", 5, "bit", bit=1),
    ],
    "signed word and a bit": [reg("w", 5, "int16"), reg("a", 5, "bit", bit=15)],
    "input register bit": [reg("a", 0, "bit", "input", bit=3)],
    "same bit number in two words": [reg("a", 5, "bit", bit=3), reg("b", 6, "bit", bit=3)],
    "same bit number in holding and input": [
        reg("a", 5, "bit", bit=3),
        reg("b", 5, "bit", "input", bit=3),
    ],
}


@pytest.mark.parametrize("case", MAPS_OK, ids=list(MAPS_OK))
def test_bit_tags_may_share_a_word(case):
    profile = Profile(kind="x", registers=MAPS_OK[case])
    assert all(r.count == 1 for r in profile.registers)


MAPS_BAD = {
    "same bit twice": (
        [reg("a", 5, "bit", bit=3), reg("b", 5, "bit", bit=3)],
        "tag 'b' overlaps tag 'a' at holding 5 bit 3",
    ),
    "same wire bit in the other byte order": (
        [reg("a", 5, "bit", bit=3), reg("b", 5, "bit", bit=11, byte_order="little")],
        "tag 'b' overlaps tag 'a' at holding 5 bit 3",
    ),
    "bit inside a float32": (
        [reg("f", 4, "float32"), reg("a", 5, "bit", bit=0)],
        "tag 'a' overlaps tag 'f' at holding 5: a bit tag may share its word only",
    ),
    "bit inside a uint32": (
        [reg("a", 4, "bit", bit=0), reg("n", 4, "uint32")],
        "tag 'n' overlaps tag 'a' at holding 4: a bit tag may share",
    ),
    "bit inside a string": (
        [reg("s", 4, "string", length=4), reg("a", 5, "bit", bit=0)],
        "tag 'a' overlaps tag 's' at holding 5",
    ),
    "two words on one address": (
        [reg("a", 5), reg("b", 5, "int16"), reg("c", 5, "bit", bit=0)],
        "tag 'b' overlaps tag 'a' at holding 5",
    ),
    "tag defined twice": ([reg("a", 5), reg("a", 6)], "tag 'a' defined twice"),
}


@pytest.mark.parametrize("case", MAPS_BAD, ids=list(MAPS_BAD))
def test_overlaps_are_errors_naming_both_tags(case):
    registers, reason = MAPS_BAD[case]
    message = error_of(agent_data(dev(registers=registers)))
    assert f"agent.yaml: devices[0] (lmi): {reason}" in message


def test_every_overlap_is_reported_one_line_each():
    regs = [reg("a", 0, "float32"), reg("b", 1), reg("c", 10), reg("d", 10)]
    lines = error_of(agent_data(dev(registers=regs))).splitlines()
    assert lines == [
        "agent.yaml: devices[0] (lmi): tag 'b' overlaps tag 'a' at holding 1",
        "agent.yaml: devices[0] (lmi): tag 'd' overlaps tag 'c' at holding 10",
    ]


REGISTERS_BAD = {
    "bit on a coil": (reg("a", 0, "bit", "coil", bit=1), "", "type bit is one bit of a holding"),
    "bit without bit": (reg("a", 0, "bit"), "", "type bit needs bit: 0..15"),
    "bit on a uint16": (reg("a", 0, bit=1), "", "bit is only for type bit, not uint16"),
    "bit 16": (reg("a", 0, "bit", bit=16), ".bit", "less than or equal to 15"),
    "negative bit": (reg("a", 0, "bit", bit=-1), ".bit", "greater than or equal to 0"),
    "bool in an input register": (reg("a", 0, "bool", "input"), "", "type bool needs a coil"),
    "float32 on a discrete": (reg("a", 0, "float32", "discrete"), "", "must be bool, not float32"),
    "scale on a bit": (
        reg("a", 0, "bit", bit=0, scale=2),
        "",
        "scale and offset apply to numbers, not to type bit",
    ),
    "negative deadband": (
        reg("a", 0, deadband=-1),
        ".deadband",
        "deadband -1 must not be negative",
    ),
    "deadband not a number": (reg("a", 0, deadband="lots"), ".deadband", "give a number (0.5)"),
    "deadband true": (reg("a", 0, deadband=True), ".deadband", "give a number"),
    "deadband nan": (reg("a", 0, deadband="nan"), ".deadband", "must be a finite number"),
    "zero heartbeat": (reg("a", 0, heartbeat_s=0), ".heartbeat_s", "greater than 0"),
    "group not a name": (reg("a", 0, group="fast lane"), ".group", "should match pattern"),
}


@pytest.mark.parametrize("case", REGISTERS_BAD, ids=list(REGISTERS_BAD))
def test_bad_register_names_device_tag_and_reason(case):
    register, key, reason = REGISTERS_BAD[case]
    message = error_of(agent_data(dev(registers=[register])))
    assert f"agent.yaml: devices[0] (lmi).registers[0] (tag a){key}: " in message
    assert reason in message


# --- deadband and heartbeat ------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "value", "percent"),
    [
        (0.5, 0.5, False),
        ("0.5", 0.5, False),
        (0, 0.0, False),
        ("2%", 2.0, True),
        (" 2.5 % ", 2.5, True),
        ({"value": 1, "percent": True}, 1.0, True),
    ],
)
def test_deadband_is_a_number_or_a_percent(given, value, percent):
    register = Register.model_validate(reg("a", 0, deadband=given))
    assert register.deadband == Deadband(value=value, percent=percent)


@pytest.mark.parametrize(
    ("deadband", "last", "new", "publish"),
    [
        (Deadband(value=0.5), 10.0, 10.5, False),  # exactly the deadband: not beyond it
        (Deadband(value=0.5), 10.0, 10.51, True),
        (Deadband(value=0.5), 10.0, 9.4, True),
        (Deadband(value=0), 3, 3, False),  # 0: publish on change
        (Deadband(value=0), 3, 4, True),
        (Deadband(value=2, percent=True), 200.0, 203.9, False),
        (Deadband(value=2, percent=True), 200.0, 204.1, True),
        (Deadband(value=2, percent=True), -200.0, -195.9, True),  # magnitude of the last
        (Deadband(value=2, percent=True), 0.0, 0.001, True),
        (Deadband(value=5), True, True, False),  # bool: on change
        (Deadband(value=5), False, True, True),
        (Deadband(value=5), "A", "B", True),
        (Deadband(value=5), 1.0, None, True),  # a failed read is a change
        (Deadband(value=5), None, None, False),
    ],
)
def test_deadband_decides_what_is_worth_publishing(deadband, last, new, publish):
    assert deadband.exceeded(last, new) is publish


def test_device_defaults_fill_tags_that_set_none():
    regs = [
        reg("a", 0, deadband="5%", heartbeat_s=10),
        reg("b", 1),
        reg("c", 2, deadband=0),
    ]
    device = load_data(agent_data(dev(registers=regs, deadband=0.1, heartbeat_s=60))).devices[0]
    got = {r.tag: (str(r.deadband), r.heartbeat_s) for r in device.selected_registers}
    assert got == {"a": ("5%", 10.0), "b": ("0.1", 60.0), "c": ("0", 60.0)}
    plain = load_data(agent_data(dev(registers=regs))).devices[0]
    assert selected(plain)["b"].deadband is None  # no deadband anywhere: every poll
    assert selected(plain)["b"].heartbeat_s is None


# --- poll groups -----------------------------------------------------------------------


def test_poll_groups_give_intervals_and_tags():
    regs = [reg("a", 0, group="fast"), reg("b", 1), reg("c", 2, group="fast")]
    device = load_data(
        agent_data(dev(registers=regs, interval_s=2, poll_groups={"fast": 0.1, "slow": 60}))
    ).devices[0]
    assert device.group_intervals() == {"default": 2.0, "fast": 0.1}  # slow has no tag
    assert [r.tag for r in device.registers_in_group("fast")] == ["a", "c"]
    assert [r.tag for r in device.registers_in_group("default")] == ["b"]
    assert device.registers_in_group("slow") == []
    with pytest.raises(KeyError):
        device.registers_in_group("medium")


def test_groups_only_count_selected_tags():
    device = load_data(
        agent_data(dev(tags=["hook_load"], overrides={"boom_angle": {"group": "slow"}}))
    ).devices[0]  # boom_angle is not read, so its group need not exist
    assert device.group_intervals() == {"default": 1.0}


@pytest.mark.parametrize(
    ("groups", "reason"),
    [
        ({"default": 5}, "the 'default' group's interval is interval_s"),
        ({"fast": 0.01}, "greater than or equal to 0.05"),
        ({"fast": 7200}, "less than or equal to 3600"),
    ],
)
def test_bad_poll_groups(groups, reason):
    message = error_of(agent_data(dev(poll_groups=groups)))
    assert "agent.yaml: devices[0] (lmi).poll_groups" in message
    assert reason in message


# --- overrides -------------------------------------------------------------------------


def test_overrides_change_profile_tags_for_this_site():
    device = load_data(
        agent_data(
            dev(
                poll_groups={"fast": 0.5},
                overrides={
                    "hook_load": {"scale": 0.5, "offset": -1, "unit": "kN", "group": "fast"},
                    "utilisation": {"address": 40, "byte_order": "little", "description": "x"},
                    "boom_angle": {"deadband": "1%", "heartbeat_s": 5},
                },
            )
        )
    ).devices[0]
    regs = selected(device)
    assert (regs["hook_load"].scale, regs["hook_load"].offset, regs["hook_load"].unit) == (
        0.5,
        -1,
        "kN",
    )
    assert regs["hook_load"].group == "fast"
    assert (regs["utilisation"].address, str(regs["utilisation"].byte_order)) == (40, "little")
    assert regs["utilisation"].scale == 0.1  # not overridden: the profile's
    assert str(regs["boom_angle"].deadband) == "1%"
    assert load_profile("crane").register("hook_load").scale == 1  # the profile is unchanged


def test_an_override_null_falls_back_to_the_device_default(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "p.yaml").write_text(
        "kind: k\nregisters:\n  - {tag: a, table: holding, address: 0, type: uint16, "
        "deadband: 3}\n  - {tag: b, table: holding, address: 1, type: uint16, deadband: 3}\n"
    )
    path = tmp_path / "agent.yaml"
    data = agent_data(dev(profile="p", deadband="1%", overrides={"a": {"deadband": None}}))
    path.write_text(yaml.safe_dump(data))
    regs = selected(load_agent_config(path).devices[0])
    assert (str(regs["a"].deadband), str(regs["b"].deadband)) == ("1%", "3")


OVERRIDES_BAD = {
    "unknown tag": (
        {"jib_length": {"scale": 2}},
        "overrides for tags not in the register map: jib_length",
    ),
    "creates an overlap": (
        {"boom_angle": {"address": 3}},
        "tag 'boom_angle' overlaps tag 'safe_working_load' at holding 3",
    ),
    "modicon address": (
        {"boom_angle": {"address": 40101}},
        "override of tag 'boom_angle': address 40101 looks like 1-based Modicon numbering",
    ),
    "scale 0": ({"hook_load": {"scale": 0}}, "override of tag 'hook_load': scale must not be 0"),
    "scale on a bool": (
        {"estop": {"scale": 2}},
        "override of tag 'estop': scale and offset apply to numbers, not to type bool",
    ),
    "undefined group": (
        {"hook_load": {"group": "fast"}},
        "tag 'hook_load' is in poll group 'fast', which device 'lmi' does not define",
    ),
    "unknown key": ({"hook_load": {"type": "int16"}}, "Extra inputs are not permitted"),
}


@pytest.mark.parametrize("case", OVERRIDES_BAD, ids=list(OVERRIDES_BAD))
def test_bad_overrides_name_device_tag_and_reason(case):
    overrides, reason = OVERRIDES_BAD[case]
    message = error_of(agent_data(dev(overrides=overrides)))
    assert message.startswith("agent.yaml: devices[0] (lmi)")
    assert reason in message


def test_an_override_may_declare_a_real_high_address():
    device = load_data(
        agent_data(dev(overrides={"boom_angle": {"address": 40101, "protocol_address": True}}))
    ).devices[0]
    assert selected(device)["boom_angle"].address == 40101


# --- transport and links ---------------------------------------------------------------


def test_transports_and_their_link_keys():
    config = load_data(
        agent_data(
            dev("a", host="PLC.site"),
            dev("b", transport="rtu-over-tcp", host="10.0.0.9", port=4001),
            dev(
                "c",
                transport="rtu",
                host=None,
                serial_port="/dev/ttyS0",
                baudrate=9600,
                parity="N",
                stopbits=2,
            ),
        )
    )
    a, b, c = config.devices
    assert (a.port, a.link_key, a.endpoint) == (502, "tcp://plc.site:502", "PLC.site:502")
    assert b.link_key == "rtu-over-tcp://10.0.0.9:4001"
    assert (c.host, c.port, c.link_key, c.endpoint) == (
        None,
        None,
        "serial:///dev/ttyS0",
        "/dev/ttyS0",
    )
    assert (c.baudrate, c.parity, c.stopbits, c.bytesize) == (9600, "N", 2, 8)
    assert (a.retries, a.breaker_failures, a.breaker_open_s, a.max_gap) == (1, 3, 30.0, 0)


TRANSPORT_BAD = {
    "tcp without host": ({"host": None}, "transport tcp needs host"),
    "rtu without serial_port": (
        {"transport": "rtu", "host": None},
        "transport rtu needs serial_port",
    ),
    "host on rtu": (
        {"transport": "rtu", "serial_port": "/dev/ttyS0", "port": 502},
        "host, port: not for transport rtu",
    ),
    "serial settings on tcp": ({"baudrate": 9600}, "baudrate: only for transport rtu"),
    "odd baudrate": (
        {"transport": "rtu", "host": None, "serial_port": "/dev/ttyS0", "baudrate": 9800},
        "baudrate 9800 is not a standard rate",
    ),
    "parity": (
        {"transport": "rtu", "host": None, "serial_port": "/dev/ttyS0", "parity": "X"},
        "Input should be 'N', 'E' or 'O'",
    ),
    "rtu broadcast unit": (
        {"transport": "rtu-over-tcp", "unit_id": 0},
        "unit_id 0: a serial (RTU) slave address is 1..247",
    ),
    "unknown transport": ({"transport": "udp"}, "Input should be 'tcp', 'rtu-over-tcp' or 'rtu'"),
    "retries": ({"retries": 6}, "less than or equal to 5"),
    "max_gap": ({"max_gap": 125}, "less than or equal to 124"),
    "breaker_failures": ({"breaker_failures": 0}, "greater than or equal to 1"),
}


@pytest.mark.parametrize("case", TRANSPORT_BAD, ids=list(TRANSPORT_BAD))
def test_bad_transport_settings(case):
    keys, reason = TRANSPORT_BAD[case]
    message = error_of(agent_data(dev(**keys)))
    assert message.startswith("agent.yaml: devices[0] (lmi)")
    assert reason in message


def test_devices_on_one_link_need_distinct_unit_ids():
    config = load_data(
        agent_data(
            dev("a", host="gw", unit_id=1),
            dev("b", host="gw", unit_id=2),
            dev("c", host="gw", port=503, unit_id=1),  # another port: another link
            dev("d", host="gw", transport="rtu-over-tcp", unit_id=1, port=4001),
        )
    )
    assert len({d.link_key for d in config.devices}) == 3
    message = error_of(agent_data(dev("a", host="GW"), dev("b", host="gw")))
    assert message == (
        "agent.yaml: devices: devices 'a' and 'b' are both unit_id 1 on tcp://gw:502: "
        "devices sharing a link need distinct unit ids"
    )


def test_devices_on_one_serial_port_need_the_same_line_settings(tmp_path):
    link = tmp_path / "by-id-link"
    link.symlink_to(tmp_path / "ttyUSB0")
    serial = {"transport": "rtu", "host": None}
    message = error_of(
        agent_data(
            dev("a", serial_port=str(tmp_path / "ttyUSB0"), unit_id=1, **serial),
            dev("b", serial_port=str(link), unit_id=2, baudrate=9600, parity="N", **serial),
            dev("c", serial_port=str(link), unit_id=2, **serial),
        )
    )
    assert message.splitlines() == [
        f"agent.yaml: devices: devices 'a' and 'b' share serial port {link} but differ in "
        "baudrate 19200 vs 9600, parity E vs N",
        f"agent.yaml: devices: devices 'b' and 'c' are both unit_id 2 on "
        f"serial://{tmp_path / 'ttyUSB0'}: devices sharing a link need distinct unit ids",
    ]


# --- agent-level keys: spool, metrics, publish window ------------------------------------


def test_spool_defaults_to_a_state_dir_beside_the_config(tmp_path):
    path = tmp_path / "etc" / "agent.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(agent_data(dev())))
    config = load_agent_config(path)
    assert config.spool.path == tmp_path / "etc" / "state" / "derrick-agent-gw.db"
    assert (config.spool.max_mb, config.spool.max_age_h) == (256, 168)
    assert (config.metrics_interval_s, config.publish_window) == (30, 20)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("spool.db", "etc/spool.db"), ("../var/s.db", "etc/../var/s.db"), ("/abs/s.db", "/abs/s.db")],
)
def test_spool_path_is_relative_to_the_config_file(tmp_path, given, expected):
    path = tmp_path / "etc" / "agent.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(agent_data(dev(), spool={"path": given})))
    want = Path(expected) if expected.startswith("/") else tmp_path / expected
    assert load_agent_config(path).spool.path == want


@pytest.mark.parametrize(
    ("keys", "where", "reason"),
    [
        ({"metrics_interval_s": 1}, "metrics_interval_s", "greater than or equal to 5"),
        ({"publish_window": 0}, "publish_window", "greater than or equal to 1"),
        ({"publish_window": 101}, "publish_window", "less than or equal to 100"),
        ({"spool": {"max_mb": 0}}, "spool.max_mb", "greater than 0"),
        ({"spool": {"size": 1}}, "spool.size", "Extra inputs are not permitted"),
    ],
)
def test_bad_agent_level_keys(keys, where, reason):
    message = error_of(agent_data(dev(), **keys))
    assert message.startswith(f"agent.yaml: {where}: ")
    assert reason in message


# --- environment variables -------------------------------------------------------------

ENV = {"HOST": "10.1.2.3", "EMPTY": "", "PORT": "5020"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("${HOST}", "10.1.2.3"),
        ("plc-${HOST}:${PORT}", "plc-10.1.2.3:5020"),
        ("${UNSET:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),  # like the shell: empty takes the default
        ("${HOST:-fallback}", "10.1.2.3"),
        ("${UNSET:-}", ""),
        ("${EMPTY}", ""),
        ("cost $$5", "cost $5"),
        ("$${HOST}", "${HOST}"),  # escaped: not a reference
        ("$HOST and $", "$HOST and $"),  # only ${...} is a reference
        ("${UNSET:-a:b-c}", "a:b-c"),
    ],
)
def test_environment_variables_are_expanded(text, value):
    assert expand_env("f.yaml", {"k": [text]}, ENV) == {"k": [value]}


def test_only_string_values_are_expanded():
    data = {"${HOST}": 1, "n": 2, "b": True, "none": None, "nested": {"list": [{"x": "${PORT}"}]}}
    assert expand_env("f.yaml", data, ENV) == {
        "${HOST}": 1,
        "n": 2,
        "b": True,
        "none": None,
        "nested": {"list": [{"x": "5020"}]},
    }


def test_every_missing_variable_is_reported_with_its_key():
    data = {"devices": [{"name": "lmi", "host": "${PLC_HOST}", "x": "${A:-1}${B}"}], "y": "${C"}
    with pytest.raises(ConfigError) as caught:
        expand_env("agent.yaml", data, {})
    assert caught.value.problems == [
        ("devices[0] (lmi).host", "environment variable PLC_HOST is not set"),
        ("devices[0] (lmi).x", "environment variable B is not set"),
        ("y", "malformed '${C': write ${NAME}, ${NAME:-default} or $$"),
    ]


def test_files_are_expanded_before_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("DERRICK_TEST_HOST", "10.9.8.7")
    monkeypatch.setenv("DERRICK_TEST_UNIT", "t")
    monkeypatch.delenv("DERRICK_TEST_PORT", raising=False)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text(
        "kind: k\nregisters:\n"
        "  - {tag: a, table: holding, address: 0, type: float32, unit: '${DERRICK_TEST_UNIT}'}\n"
    )
    path = tmp_path / "agent.yaml"
    path.write_text(
        "agent: {id: gw, site: s}\n"
        "devices:\n"
        "  - {name: lmi, asset: x, profile: p, host: '${DERRICK_TEST_HOST}',"
        " port: '${DERRICK_TEST_PORT:-1502}', deadband: '${DERRICK_TEST_DB:-2%}'}\n"
    )
    device = load_agent_config(path).devices[0]
    assert (device.host, device.port, str(device.deadband)) == ("10.9.8.7", 1502, "2%")
    assert device.selected_registers[0].unit == "t"  # profiles are expanded too
    monkeypatch.delenv("DERRICK_TEST_UNIT")
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    assert str(caught.value) == (
        f"{path}: devices[0] (lmi).profile: profile 'p': {tmp_path}/profiles/p.yaml: "
        "registers[0] (tag a).unit: environment variable DERRICK_TEST_UNIT is not set"
    )


def test_collector_config_is_expanded_too(tmp_path, monkeypatch):
    monkeypatch.setenv("DERRICK_TEST_DB", "plant")
    path = tmp_path / "c.yaml"
    path.write_text("collector: {id: c}\ninflux: {api: v1, database: '${DERRICK_TEST_DB}'}\n")
    assert load_collector_config(path).influx.database == "plant"


# --- human keys --------------------------------------------------------------------------


def test_keys_name_list_items_by_name_or_tag():
    data = {
        "devices": [{"name": "lmi", "registers": [{"tag": "a"}, {"x": 1}]}],
        "rules": [{"name": "r", "tag": "t"}],
    }
    assert location(("devices", 0, "registers", 0, "address"), data) == (
        "devices[0] (lmi).registers[0] (tag a).address"
    )
    assert location(("devices", 0, "registers", 1), data) == "devices[0] (lmi).registers[1]"
    assert location(("rules", 0, "limit"), data) == "rules[0] (r).limit"  # name wins
    assert location(("devices", 5, "host"), data) == "devices[5].host"  # not in the data
    assert location(("devices", 0, "overrides", "hook_load", "scale"), data) == (
        "devices[0] (lmi).overrides.hook_load.scale"
    )
    assert location((), data) == "(top level)"


# --- the bad example configs -------------------------------------------------------------

# file -> (device named in the error or None, tag or None, reason)
BAD_FILES = {
    "overlapping_tags.yaml": ("lmi", "load_raw", "overlaps tag 'hook_load' at holding 1"),
    "bool_on_holding.yaml": ("lmi", "estop", "type bool needs a coil or discrete table"),
    "float32_on_coil.yaml": ("pumps", "pump1_spm", "a coil holds single bits"),
    "modicon_address.yaml": (
        "lmi",
        "safe_working_load",
        "address 40003 looks like 1-based Modicon numbering for a holding register "
        "(4xxxx): the protocol address is 2",
    ),
    "unknown_group.yaml": ("lmi", "hook_load", "is in poll group 'fast', which device"),
    "duplicate_unit_id.yaml": (
        "lmi-02",
        None,
        "both unit_id 1 on tcp://10.0.0.5:502: devices sharing a link need distinct unit ids",
    ),
    "missing_env_var.yaml": (
        "lmi",
        None,
        "host: environment variable DERRICK_TEST_PLC_HOST is not set",
    ),
    "bit_16.yaml": ("hpu", "low_oil_level", ".bit: Input should be less than or equal to 15"),
    "negative_deadband.yaml": ("hpu", "oil_temperature", "deadband '-1' must not be negative"),
    "bit_inside_float.yaml": (
        "lmi",
        "load_sign",
        "overlaps tag 'hook_load' at holding 0: a bit tag may share its word only",
    ),
    "override_makes_overlap.yaml": (
        "lmi",
        "boom_angle",
        "overlaps tag 'safe_working_load' at holding 2",
    ),
    "bad_profile_file.yaml": (
        "lmi",
        "estop",
        "profile 'broken_crane': {dir}/profiles/broken_crane.yaml: registers[1] (tag estop): "
        "type bool needs a coil",
    ),
}


def test_every_bad_config_is_in_the_table():
    assert sorted(p.name for p in BAD.glob("*.yaml")) == sorted(BAD_FILES)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_config_error_names_file_device_tag_and_reason(name, monkeypatch):
    monkeypatch.delenv("DERRICK_TEST_PLC_HOST", raising=False)
    device, tag, reason = BAD_FILES[name]
    path = BAD / name
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20, "say what is wrong in a comment"
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    reason = reason.format(dir=BAD)
    lines = [line for line in str(caught.value).splitlines() if reason in line]
    assert len(lines) == 1, str(caught.value)
    line = lines[0]
    assert line.startswith(f"{path}: ")
    if device is not None:
        assert f"({device})" in line or f"'{device}'" in line
    if tag is not None:
        assert f"(tag {tag})" in line or f"tag '{tag}'" in line


def test_a_bad_profile_reports_every_problem_on_its_own_line():
    path = BAD / "bad_profile_file.yaml"
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    profile = BAD / "profiles" / "broken_crane.yaml"
    prefix = f"{path}: devices[0] (lmi).profile: profile 'broken_crane': {profile}: "
    assert str(caught.value).splitlines() == [
        f"{prefix}registers[0] (tag hook_load).deadband: deadband '-2%' must not be negative",
        f"{prefix}registers[1] (tag estop): type bool needs a coil or discrete table, not "
        "holding (one bit of a register: type bit with bit: N)",
    ]
