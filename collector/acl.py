"""Least privilege on the broker: a mosquitto ACL and password file from the configs.

``derrick-collector acl`` reads the agent and collector configs (and the operator and
admin names given on the command line) and writes a mosquitto ``acl_file`` in which

* an agent may publish only its own agent topics (status, metrics, events) and the
  telemetry and status of the devices its config lists, at its site; one with ``format:
  sparkplug`` its Sparkplug node and device topics instead of status and telemetry, and
  it reads the host commands (NCMD, DCMD) addressed to it;
* only collectors publish alarm state, alarm events and command replies, and only they
  read ``alarm-commands``; as Sparkplug hosts they read every node's births, deaths and
  data and publish rebirth requests (NCMD);
* only operators publish alarm commands (and read alarm state, events and replies);
* an admin reads everything except alarm commands (Sparkplug B included), and
  publishes nothing;
* anyone else, anonymous clients included, may do nothing (mosquitto's default with an
  ``acl_file``).

Every line is per user, spelled out from the topic builders of :mod:`derrick.wire`.
There are no ``pattern`` lines on purpose: ``%c`` is the client id, which a client picks
itself, so ``pattern write derrick/v1/agents/%c/status`` would let any account (an
operator's too) speak for any agent by connecting under its id -- the forged ``offline``
of issue 13. ``%u`` is authenticated, but a pattern applies to every account and needs
user name = agent id; explicit lines say the same without either condition.

``derrick-collector passwd`` writes the matching password file by driving
``mosquitto_passwd -U`` (mosquitto's own PBKDF2-SHA512 hashing, not a copy of it).

Generation is pure (configs in, text out) apart from :func:`write_password_file`. Only
the keys the ACL needs are read from each config (``agent.id``, ``agent.site``,
``devices[].name`` / ``asset``, ``collector.id`` / ``group``, ``broker.username``), so it
runs where the files a config names (certificates, profiles, rule files) are absent;
each program's ``--check`` validates the rest.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from agent.config import AgentIdentity
from collector.config import CollectorIdentity
from derrick.plumbing import configfile
from derrick.plumbing.configfile import ConfigError
from derrick.wire import sparkplug as sp
from derrick.wire.ids import Ident
from derrick.wire.topics import (
    AGENT_METRICS_SUBSCRIPTION,
    AGENT_STATUS_SUBSCRIPTION,
    ALARM_COMMANDS_SUBSCRIPTION,
    ALARM_EVENTS_SUBSCRIPTION,
    ALARM_STATE_SUBSCRIPTION,
    BROKER_DROPPED_TOPIC,
    COLLECTOR_STATUS_SUBSCRIPTION,
    CONDITION_SUBSCRIPTION,
    DEVICE_STATUS_SUBSCRIPTION,
    TELEMETRY_SUBSCRIPTION,
    TOPIC_ROOT,
    agent_events_topic,
    agent_metrics_topic,
    agent_status_topic,
    alarm_replies_topic,
    collector_status_topic,
    condition_topic,
    device_status_topic,
    telemetry_topic,
)

COMMANDS = ("acl", "passwd")
PROG = "derrick-collector"

# mosquitto's own counter of messages it dropped (queues full); collectors alarm on it.

# Safe as an ACL "user" line, a password-file entry and a certificate CN.
USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,128}$"
_USERNAME = re.compile(USERNAME_PATTERN)
USERNAME_RULE = "letters, digits and _ . @ - only (at most 128)"

Rule = tuple[str, str]  # (read | write | deny, topic or filter)

COLLECTOR_RULES: tuple[Rule, ...] = (
    ("read", TELEMETRY_SUBSCRIPTION),
    ("read", DEVICE_STATUS_SUBSCRIPTION),
    ("read", CONDITION_SUBSCRIPTION),
    ("read", AGENT_STATUS_SUBSCRIPTION),
    ("read", AGENT_METRICS_SUBSCRIPTION),
    ("read", agent_events_topic("+")),
    ("read", ALARM_COMMANDS_SUBSCRIPTION),
    ("read", BROKER_DROPPED_TOPIC),
    ("write", ALARM_STATE_SUBSCRIPTION),
    ("write", ALARM_EVENTS_SUBSCRIPTION),
    ("write", alarm_replies_topic("+", "+")),
)
SPARKPLUG_HOST_RULES: tuple[Rule, ...] = (
    *(("read", subscription) for subscription in sp.SESSION_SUBSCRIPTIONS),
    ("read", sp.DATA_SUBSCRIPTION),
    ("write", sp.sparkplug_topic("+", sp.MessageType.NCMD, "+")),
)
OPERATOR_RULES: tuple[Rule, ...] = (
    ("write", ALARM_COMMANDS_SUBSCRIPTION),
    ("read", ALARM_STATE_SUBSCRIPTION),
    ("read", ALARM_EVENTS_SUBSCRIPTION),
    ("read", alarm_replies_topic("+", "+")),
)
# mosquitto applies "deny" lines before the grants of the same user.
ADMIN_RULES: tuple[Rule, ...] = (
    ("deny", ALARM_COMMANDS_SUBSCRIPTION),
    ("read", f"{TOPIC_ROOT}/#"),
    ("read", sp.SUBSCRIPTION),
    ("read", "$SYS/#"),
)


class AclError(Exception):
    """The accounts cannot be turned into an ACL; one line per problem."""


# -- what the ACL reads from each config -------------------------------------------------


class _Keys(BaseModel):
    """Only the keys the ACL needs; the rest of the file is the program's business."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class _Login(_Keys):
    username: str | None = None

    @field_validator("username")
    @classmethod
    def _usable(cls, value: str | None) -> str | None:
        if value is not None:
            check_username(value)
        return value


class _DeviceKeys(_Keys):
    name: Ident
    asset: Ident


class _SparkplugKeys(_Keys):
    enabled: bool = True
    host_id: Ident | None = None


class _EdgeKeys(_Keys):
    primary_host: Ident | None = None


class AgentKeys(_Keys):
    agent: AgentIdentity
    broker: _Login = _Login()
    format: Literal["json", "sparkplug"] = "sparkplug"  # the agent's own default
    sparkplug: _EdgeKeys = _EdgeKeys()
    devices: list[_DeviceKeys] = Field(min_length=1)

    @field_validator("devices")
    @classmethod
    def _unique(cls, devices: list[_DeviceKeys]) -> list[_DeviceKeys]:
        configfile.require_unique([dev.name for dev in devices], "device names")
        return devices


class CollectorKeys(_Keys):
    collector: CollectorIdentity
    broker: _Login = _Login()
    sparkplug: _SparkplugKeys = _SparkplugKeys()


def check_username(name: str) -> str:
    """``name`` if mosquitto can take it as a user everywhere; ValueError otherwise."""
    if not _USERNAME.match(name):
        raise ValueError(f"{name!r} is not usable as a broker user name: {USERNAME_RULE}")
    return name


# -- accounts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Agent:
    username: str
    agent_id: str
    site: str
    devices: tuple[tuple[str, str], ...]  # (asset, device), sorted
    source: str  # the config file, as given
    assumed: bool  # username not in the config: the default was taken
    wire: str = "sparkplug"  # the agent's format: sparkplug (its default) or json
    primary_host: str | None = None  # Sparkplug: the host whose STATE it follows

    @property
    def label(self) -> str:
        return f"agent {self.agent_id} ({self.source})"


@dataclass(frozen=True, slots=True)
class Collector:
    username: str
    collector_id: str
    group: str | None
    source: str
    assumed: bool
    sparkplug: bool = True  # reads Sparkplug B (sparkplug.enabled)
    host_id: str | None = None  # Sparkplug: publishes this primary host's STATE

    @property
    def label(self) -> str:
        return f"collector {self.collector_id} ({self.source})"


@dataclass(frozen=True, slots=True)
class Accounts:
    """Everyone the broker should know, by role; validated by :func:`gather`."""

    agents: tuple[Agent, ...]
    collectors: tuple[Collector, ...]
    operators: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()

    def usernames(self) -> list[str]:
        """Every distinct user name, in ACL order."""
        names = [c.username for c in self.collectors] + [a.username for a in self.agents]
        return list(dict.fromkeys([*names, *self.operators, *self.admins]))


def default_agent_username(agent_id: str) -> str:
    """The account of an agent whose config names none (as the example configs suggest)."""
    return f"agent-{agent_id}"


def read_agent(path: Path | str) -> Agent:
    """The agent account of one agent config; ConfigError names file, key and reason."""
    keys = configfile.load(path, AgentKeys)
    username = keys.broker.username or default_agent_username(keys.agent.id)
    return Agent(
        username=username,
        agent_id=keys.agent.id,
        site=keys.agent.site,
        devices=tuple(sorted({(dev.asset, dev.name) for dev in keys.devices})),
        source=str(path),
        assumed=keys.broker.username is None,
        wire=keys.format,
        primary_host=keys.sparkplug.primary_host,
    )


def read_collector(path: Path | str) -> Collector:
    """The collector account of one collector config (user name default: collector.id)."""
    keys = configfile.load(path, CollectorKeys)
    return Collector(
        username=keys.broker.username or keys.collector.id,
        collector_id=keys.collector.id,
        group=keys.collector.group,
        source=str(path),
        assumed=keys.broker.username is None,
        sparkplug=keys.sparkplug.enabled,
        host_id=keys.sparkplug.host_id if keys.sparkplug.enabled else None,
    )


def gather(
    agent_configs: Sequence[Path | str],
    collector_configs: Sequence[Path | str],
    operators: Sequence[str] = (),
    admins: Sequence[str] = (),
) -> Accounts:
    """Read every config and check that the accounts fit together.

    Raises ConfigError (a config file: file, key, reason) or AclError (accounts that
    clash across files, or a bad name on the command line).
    """
    accounts = Accounts(
        agents=tuple(sorted(map(read_agent, agent_configs), key=lambda a: a.agent_id)),
        collectors=tuple(
            sorted(map(read_collector, collector_configs), key=lambda c: c.collector_id)
        ),
        operators=tuple(sorted(set(operators))),
        admins=tuple(sorted(set(admins))),
    )
    problems = _name_problems(accounts) + _clashes(accounts)
    if problems:
        raise AclError("\n".join(problems))
    return accounts


def _name_problems(accounts: Accounts) -> list[str]:
    problems = []
    for option, names in (("--operator", accounts.operators), ("--admin", accounts.admins)):
        for name in names:
            try:
                check_username(name)
            except ValueError as exc:
                problems.append(f"{option}: {exc}")
    return problems


def _clashes(accounts: Accounts) -> list[str]:
    """Agent ids used twice, and user names shared by two roles or two agents."""
    return _repeated_agent_ids(accounts.agents) + _shared_usernames(accounts)


def _repeated_agent_ids(agents: tuple[Agent, ...]) -> list[str]:
    by_id: dict[str, list[Agent]] = {}
    for agent in agents:
        by_id.setdefault(agent.agent_id, []).append(agent)
    return [
        f"agent id {ident} in {_and(a.source for a in same)}: each gateway needs an id of "
        "its own (it is its MQTT client id and names its topics)"
        for ident, same in by_id.items()
        if len(same) > 1
    ]


def _shared_usernames(accounts: Accounts) -> list[str]:
    """Collectors may share an account with each other; nobody else shares one."""
    holders: dict[str, list[str]] = {}
    for agent in accounts.agents:
        holders.setdefault(agent.username, []).append(agent.label)
    for name in dict.fromkeys(c.username for c in accounts.collectors):
        holders.setdefault(name, []).append("the collectors")
    for name in accounts.operators:
        holders.setdefault(name, []).append("operator (--operator)")
    for name in accounts.admins:
        holders.setdefault(name, []).append("admin (--admin)")
    return [
        f"user name {name} is used by {_and(roles)}: each gateway needs an account of its "
        "own, and one account has one role"
        for name, roles in holders.items()
        if len(roles) > 1
    ]


def _and(items: Iterable[str]) -> str:
    items = list(items)
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def warnings(accounts: Accounts) -> list[str]:
    """What is allowed but worth a look: assumed user names, devices two agents publish."""
    notes = [
        f"{who.source}: broker.username is not set; the ACL assumes {who.username}"
        for who in (*accounts.collectors, *accounts.agents)
        if who.assumed
    ]
    publishers: dict[tuple[str, str, str], list[Agent]] = {}
    for agent in accounts.agents:
        for asset, device in agent.devices:
            publishers.setdefault((agent.site, asset, device), []).append(agent)
    notes += [
        f"device {'/'.join(key)} is in {_and(a.label for a in agents)}: each of them may "
        "publish its telemetry and status"
        for key, agents in sorted(publishers.items())
        if len(agents) > 1
    ]
    return notes


# -- the ACL text ---------------------------------------------------------------------------


def agent_rules(agent: Agent) -> list[Rule]:
    """Its own agent topics, then telemetry, status and alarm conditions (edge alarms)
    of each configured device; a Sparkplug agent's node and device topics instead of
    its status and telemetry (:func:`sparkplug_agent_rules`)."""
    if agent.wire == "sparkplug":
        return sparkplug_agent_rules(agent)
    own = [agent_status_topic, agent_metrics_topic, agent_events_topic]
    rules = [("write", topic(agent.agent_id)) for topic in own]
    rules.append(("read", COLLECTOR_STATUS_SUBSCRIPTION))  # "no collector online"
    for asset, device in agent.devices:
        rules.append(("write", telemetry_topic(agent.site, asset, device)))
        rules.append(("write", device_status_topic(agent.site, asset, device)))
        rules.append(("write", condition_topic(agent.site, asset, device)))
    return rules


def sparkplug_agent_rules(agent: Agent) -> list[Rule]:
    """Metrics and events (JSON, as ever), its NBIRTH and NDEATH, each device's DBIRTH,
    DDATA (readings and edge alarm conditions) and DDEATH; it reads the commands to it
    (only Rebirth is honoured, see agent.sparkplug). Each device's JSON condition topic
    stays writable: an agent upgraded with changes still in its spool from before
    conditions moved into DDATA sends those as they were stored."""
    site, node = agent.site, agent.agent_id
    rules: list[Rule] = [
        ("write", agent_metrics_topic(node)),
        ("write", agent_events_topic(node)),
        ("write", sp.sparkplug_topic(site, sp.MessageType.NBIRTH, node)),
        ("write", sp.sparkplug_topic(site, sp.MessageType.NDEATH, node)),
        ("read", sp.sparkplug_topic(site, sp.MessageType.NCMD, node)),
        ("read", COLLECTOR_STATUS_SUBSCRIPTION),
    ]
    if agent.primary_host is not None:
        rules.append(("read", sp.host_state_topic(agent.primary_host)))
    for asset, device in agent.devices:
        for kind in (sp.MessageType.DBIRTH, sp.MessageType.DDATA, sp.MessageType.DDEATH):
            rules.append(("write", sp.sparkplug_topic(site, kind, node, device)))
        rules.append(("read", sp.sparkplug_topic(site, sp.MessageType.DCMD, node, device)))
        rules.append(("write", condition_topic(site, asset, device)))
    return rules


def render_acl(accounts: Accounts) -> str:
    """The acl_file text: header, then one section per account; stable for equal input."""
    parts = [_header(accounts), *_collector_sections(accounts.collectors)]
    parts += ["# === agents: own agent topics, telemetry and status of their own devices ===\n"]
    parts += [_agent_section(agent) for agent in accounts.agents]
    if accounts.operators:
        parts.append(
            "# === operators: publish alarm commands; read alarm state, events, replies ===\n"
        )
        parts += [
            _section([f"operator {name}"], name, OPERATOR_RULES) for name in accounts.operators
        ]
    if accounts.admins:
        parts.append("# === admins: read everything but alarm commands; publish nothing ===\n")
        parts += [_section([f"admin {name}"], name, ADMIN_RULES) for name in accounts.admins]
    return "\n".join(parts)


def command_line(accounts: Accounts) -> list[str]:
    """The arguments that generate this ACL again (files sorted: the order given does not
    change the ACL, so it does not change its header either)."""
    args = [f"--agent-config {source}" for source in sorted(a.source for a in accounts.agents)]
    args += [
        f"--collector-config {source}" for source in sorted(c.source for c in accounts.collectors)
    ]
    args += [f"--operator {name}" for name in accounts.operators]
    args += [f"--admin {name}" for name in accounts.admins]
    return args


def _header(accounts: Accounts) -> str:
    lines = [
        "# mosquitto acl_file for Derrick, generated by derrick-collector acl -- do not edit.",
        "# Regenerate it when an agent, a collector or an operator changes (docs/broker.md):",
        f"#   {PROG} acl" + "".join(f" \\\n#     {arg}" for arg in command_line(accounts)),
        "#",
        "# Default deny: an account may do only what its section says; an account not named",
        "# here, and an anonymous client, may do nothing. No passwords in this file (those",
        "# are in the password file, see derrick-collector passwd). No %c / %u patterns: a",
        "# client picks its own client id, and a pattern holds for every account.",
    ]
    notes = warnings(accounts)
    if notes:
        lines.append("#")
        for note in notes:
            lines += textwrap.wrap(
                note,
                88,
                initial_indent="# warning: ",
                subsequent_indent="#   ",
                break_on_hyphens=False,
            )
    return "\n".join(lines) + "\n"


def _collector_sections(collectors: tuple[Collector, ...]) -> list[str]:
    """One section per collector account; collectors of one account share it."""
    title = (
        "# === collectors: read data and alarm commands; publish alarm state, events, replies ===\n"
    )
    by_user: dict[str, list[Collector]] = {}
    for collector in collectors:
        by_user.setdefault(collector.username, []).append(collector)
    sections = [title]
    for username, members in by_user.items():
        comments = []
        for c in members:
            alarms = f", and {c.collector_id}-alarms for alarms in group {c.group}"
            sessions = f"client id {c.collector_id}{alarms if c.group else ''}"
            comments.append(f"collector {c.collector_id} ({c.source}), {sessions}")
        rules = COLLECTOR_RULES
        if any(member.sparkplug for member in members):
            rules += SPARKPLUG_HOST_RULES
        hosts = sorted({member.host_id for member in members if member.host_id})
        rules += tuple(("write", sp.host_state_topic(host)) for host in hosts)
        rules += tuple(("write", collector_status_topic(m.collector_id)) for m in members)
        sections.append(_section(comments, username, rules))
    return sections


def _agent_section(agent: Agent) -> str:
    comment = f"agent {agent.agent_id} at site {agent.site} ({agent.source})"
    return _section([comment], agent.username, agent_rules(agent))


def _section(comments: list[str], username: str, rules: Iterable[Rule]) -> str:
    lines = [f"# {comment}" for comment in comments]
    lines.append(f"user {username}")
    lines += [f"topic {access} {topic}" for access, topic in rules]
    return "\n".join(lines) + "\n"


def generate_acl(
    agent_configs: Sequence[Path | str],
    collector_configs: Sequence[Path | str],
    operators: Sequence[str] = (),
    admins: Sequence[str] = (),
) -> str:
    """The ACL for these configs and names (see :func:`gather` for the errors)."""
    return render_acl(gather(agent_configs, collector_configs, operators, admins))


# -- the password file --------------------------------------------------------------------


def passwords(
    usernames: Sequence[str],
    password_dir: Path | None,
    password_env: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
) -> dict[str, SecretStr]:
    """Each user's password: ``password_env[user]`` names an environment variable, else
    the file ``password_dir/<user>`` holds it (stripped, as the programs read theirs).

    AclError lists every user without a usable password; the message names where it
    looked, never a password.
    """
    env = os.environ if environ is None else environ
    unknown = sorted(set(password_env) - set(usernames))
    problems = [f"--password-env {name}=...: no such account in the ACL" for name in unknown]
    found: dict[str, SecretStr] = {}
    for user in usernames:
        try:
            found[user] = _usable(_password_of(user, password_dir, password_env, env))
        except ValueError as exc:
            problems.append(f"user {user}: {exc}")
    if problems:
        raise AclError("\n".join(problems))
    return found


def _password_of(
    user: str, password_dir: Path | None, password_env: Mapping[str, str], env: Mapping[str, str]
) -> str:
    if user in password_env:
        var = password_env[user]
        if var not in env:
            raise ValueError(f"environment variable {var} (--password-env {user}={var}) is not set")
        return env[var].strip()
    if password_dir is None:
        raise ValueError(f"no password: give --password-env {user}=VAR or --password-dir")
    path = password_dir / user
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"no password: cannot read {path}: {exc.strerror or exc}") from None


def _usable(password: str) -> SecretStr:
    """mosquitto_passwd -U reads ``user:password`` lines and cuts the password at the next
    ``:`` (checked with 2.0.11), so such a password would not be the one stored."""
    if not password:
        raise ValueError("the password is empty")
    if ":" in password or "\n" in password or "\r" in password:
        raise ValueError(
            "the password contains ':' or a line break, which mosquitto_passwd -U cannot take"
        )
    return SecretStr(password)


def find_mosquitto_passwd(given: str | None = None) -> str:
    """The mosquitto_passwd executable; AclError saying how to get it when there is none."""
    tool = shutil.which(given or "mosquitto_passwd")
    if tool is None:
        raise AclError(
            f"{given or 'mosquitto_passwd'} not found: install mosquitto's tools (Debian and "
            "Ubuntu: apt install mosquitto; it is in the mosquitto package) or name the "
            "executable with --mosquitto-passwd"
        )
    return tool


def write_password_file(users: Mapping[str, SecretStr], output: Path, tool: str) -> None:
    """Hash ``users`` into the mosquitto password file ``output`` (mode 0600).

    The clear text goes to a 0600 temporary file beside ``output``, which
    ``mosquitto_passwd -U`` hashes in place; it then replaces ``output`` in one rename
    (a broker reloading meanwhile reads the old file or the new one, never half of one).
    The temporary file is removed whatever happens.
    """
    fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    temp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(f"{user}:{pw.get_secret_value()}\n" for user, pw in users.items())
        _hash_in_place(tool, temp, users)
        temp.chmod(0o600)
        temp.replace(output)
    finally:
        temp.unlink(missing_ok=True)


def _hash_in_place(tool: str, path: Path, users: Mapping[str, SecretStr]) -> None:
    try:
        done = subprocess.run(
            [tool, "-U", str(path)], capture_output=True, text=True, timeout=120, check=False
        )
    except OSError as exc:
        raise AclError(f"cannot run {tool}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        for pw in users.values():  # it should never echo one; make sure
            said = said.replace(pw.get_secret_value(), "***")
        raise AclError(f"{tool} -U failed (exit {done.returncode}): {said}")


# -- command line ---------------------------------------------------------------------------


ACL_EPILOG = f"""\
examples:
  {PROG} acl --agent-config /etc/derrick/agents/gw-crane-01.yaml \\
      --agent-config /etc/derrick/agents/gw-yard-01.yaml \\
      --collector-config /etc/derrick/collector.yaml \\
      --operator ana --operator bob --admin ops -o /etc/mosquitto/derrick.acl
  {PROG} acl --agent-config config/agent.example.yaml \\
      --collector-config config/collector.example.yaml    # ACL to stdout

User names: broker.username of each config; an agent config without one is
agent-<agent.id>, a collector config without one is its collector.id (a warning
says so). Each config is read for agent.id, agent.site, devices (name, asset),
collector.id and broker.username only, with ${{NAME}} expanded from this
environment: run it with the environment the agents run with.
See docs/broker.md.
"""

PASSWD_EPILOG = f"""\
examples:
  {PROG} passwd --agent-config gw-crane-01.yaml --collector-config collector.yaml \\
      --operator ana --password-dir /root/derrick-mqtt-passwords \\
      -o /etc/mosquitto/derrick.passwd
  DERRICK_PW_ANA=... {PROG} passwd --agent-config gw-crane-01.yaml \\
      --collector-config collector.yaml --operator ana --password-env ana=DERRICK_PW_ANA \\
      --password-dir /root/derrick-mqtt-passwords -o /etc/mosquitto/derrick.passwd

The same accounts as the ACL; each password comes from --password-env USER=VAR,
else from the file <password-dir>/<user>. The file is hashed by mosquitto's own
mosquitto_passwd -U (which must be installed; it comes with mosquitto) and written
with mode 0600. Passwords may not contain ':'. See docs/broker.md.
"""


def _accounts_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--agent-config",
        type=Path,
        action="append",
        required=True,
        metavar="FILE",
        help="an agent's YAML config; repeat for every agent (gateway)",
    )
    add(
        "--collector-config",
        type=Path,
        action="append",
        required=True,
        metavar="FILE",
        help="a collector's YAML config; repeat for every collector",
    )
    add(
        "--operator",
        action="append",
        default=[],
        metavar="NAME",
        help="a broker account that may send alarm commands; repeat for each",
    )
    add(
        "--admin",
        action="append",
        default=[],
        metavar="NAME",
        help="a read-only account for troubleshooting: every Derrick topic and $SYS, "
        "alarm commands excepted; repeat for each",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Broker access control for Derrick: a mosquitto ACL and password file.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    acl = commands.add_parser(
        "acl",
        help="write the mosquitto acl_file",
        description="Write a least-privilege mosquitto acl_file for these agents, "
        "collectors, operators and admins.",
        epilog=ACL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _accounts_options(acl)
    acl.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write here instead of to stdout"
    )
    passwd = commands.add_parser(
        "passwd",
        help="write the mosquitto password_file",
        description="Write the mosquitto password_file for the same accounts, hashed by "
        "mosquitto_passwd.",
        epilog=PASSWD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _accounts_options(passwd)
    add = passwd.add_argument
    add("-o", "--output", type=Path, required=True, metavar="FILE", help="the password file")
    add("--password-dir", type=Path, metavar="DIR", help="DIR/<user> holds each password")
    add(
        "--password-env",
        action="append",
        default=[],
        metavar="USER=VAR",
        help="the environment variable VAR holds USER's password; repeat for each",
    )
    add(
        "--mosquitto-passwd",
        metavar="PATH",
        help="the mosquitto_passwd executable (default: found on PATH)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """``derrick-collector acl|passwd ...``: 0 done, 2 bad input, 1 could not write."""
    args = build_parser().parse_args(list(argv))
    try:
        accounts = gather(args.agent_config, args.collector_config, args.operator, args.admin)
        for note in warnings(accounts):
            sys.stderr.write(f"{PROG} {args.command}: warning: {note}\n")
        if args.command == "acl":
            _write_acl(render_acl(accounts), args.output)
        else:
            _write_passwords(accounts, args)
    except (ConfigError, AclError) as exc:
        sys.stderr.write(f"{PROG} {args.command}: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"{PROG} {args.command}: cannot write: {exc}\n")
        return 1
    return 0


def _write_acl(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    temp = output.with_name(f".{output.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    temp.replace(output)


def _write_passwords(accounts: Accounts, args: argparse.Namespace) -> None:
    envs = {}
    for item in args.password_env:
        user, sep, var = item.partition("=")
        if not sep or not user or not var:
            raise AclError(f"--password-env {item}: write USER=VAR")
        envs[user] = var
    found = passwords(accounts.usernames(), args.password_dir, envs)
    tool = find_mosquitto_passwd(args.mosquitto_passwd)
    write_password_file(found, args.output, tool)
    sys.stdout.write(f"{args.output}: {len(found)} accounts\n")
