"""Named users of the console and API: the users file, roles, passwords, tokens, the CLI."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from structlog.testing import capture_logs

from collector import usercli
from collector import users as users_module
from collector.main import main as collector_main
from collector.users import (
    PERMISSIONS,
    Identity,
    Role,
    UsersError,
    UserStore,
    least_role,
    may,
    split_token,
)

# argon2id at the lowest cost: these tests are about the store, not the hash's strength
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery"
OTHER = "another long password"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(str(hash))
        return super().verify(hash, password)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "users.yaml"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(path: Path, clock: Clock) -> UserStore:
    return UserStore(path, hasher=CHEAP, clock=clock)


def touch_forward(path: Path, clock: Clock) -> None:
    """Make a change visible now: a later mtime, and more than the recheck interval on."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    clock.now += 2


# --- roles ---------------------------------------------------------------------------


def test_roles_are_ranked_and_the_table_says_who_may_do_what():
    assert [r.value for r in Role] == ["viewer", "operator", "supervisor", "admin"]
    assert may(Role.VIEWER, "view")
    assert not may(Role.VIEWER, "acknowledge")
    assert may(Role.OPERATOR, "acknowledge") and may(Role.OPERATOR, "reset")
    assert not may(Role.OPERATOR, "shelve")
    assert all(
        may(Role.SUPERVISOR, w)
        for w in ("shelve", "unshelve", "remove_from_service", "return_to_service", "view")
    )
    assert not may(Role.SUPERVISOR, "manage_users")
    assert all(may(Role.ADMIN, what) for what in PERMISSIONS)
    assert not may(Role.ADMIN, "launch_missiles")
    assert least_role("shelve") is Role.SUPERVISOR
    assert least_role("manage_users") is Role.ADMIN
    with pytest.raises(KeyError):
        least_role("launch_missiles")
    who = Identity("j.smith", Role.OPERATOR, "password")
    assert who.may("acknowledge") and not who.may("unshelve")


# --- passwords -----------------------------------------------------------------------


def test_add_and_verify_password(store: UserStore, path: Path):
    store.add("j.smith", Role.OPERATOR, PASSWORD)
    assert store.verify_password("j.smith", PASSWORD) == Identity(
        "j.smith", Role.OPERATOR, "password"
    )
    assert store.verify_password("j.smith", OTHER) is None
    assert store.verify_password("J.Smith", PASSWORD) is None  # names are case-sensitive
    assert store.verify_password("nobody", PASSWORD) is None
    store.set_disabled("j.smith", True)
    assert store.verify_password("j.smith", PASSWORD) is None
    store.set_disabled("j.smith", False)
    assert store.verify_password("j.smith", PASSWORD) is not None
    store.set_password("j.smith", OTHER)
    assert store.verify_password("j.smith", PASSWORD) is None
    assert store.verify_password("j.smith", OTHER) is not None
    text = path.read_text()
    assert PASSWORD not in text and OTHER not in text and "$argon2id$" in text


def test_unknown_and_disabled_names_cost_an_argon2_verify_too(path: Path, clock: Clock):
    hasher = CountingHasher()
    store = UserStore(path, hasher=hasher, clock=clock)
    store.add("a", Role.VIEWER, PASSWORD)
    store.add("b", Role.VIEWER, PASSWORD)
    store.set_disabled("b", True)
    for name in ("a", "b", "nobody", "bad name!"):
        assert store.verify_password(name, OTHER) is None
    assert len(hasher.verified) == 4
    assert hasher.verified[0] != hasher.verified[1] == hasher.verified[2] == hasher.verified[3]


def test_an_outdated_hash_is_replaced_on_login(path: Path, clock: Clock):
    UserStore(path, hasher=CHEAP, clock=clock).add("j.smith", Role.OPERATOR, PASSWORD)
    assert "m=8," in path.read_text()
    stronger = PasswordHasher(time_cost=1, memory_cost=16, parallelism=1)
    store = UserStore(path, hasher=stronger, clock=clock)
    assert store.verify_password("j.smith", PASSWORD) is not None
    assert "m=16," in path.read_text() and "m=8," not in path.read_text()
    assert store.verify_password("j.smith", PASSWORD) is not None


@pytest.mark.parametrize(
    ("name", "password", "says"),
    [
        ("j.smith", "short", "at least 10 characters"),
        ("long.enough.name", "long.enough.name", "must not be the user name"),
        ("bad name", PASSWORD, "bad user name"),
        ("", PASSWORD, "bad user name"),
        ("x" * 65, PASSWORD, "bad user name"),
    ],
)
def test_weak_passwords_and_bad_names_are_refused(store: UserStore, name, password, says):
    with pytest.raises(UsersError, match=says):
        store.add(name, Role.VIEWER, password)


def test_refused_changes(store: UserStore):
    store.add("j.smith", Role.OPERATOR, PASSWORD)
    with pytest.raises(UsersError, match="exists already"):
        store.add("j.smith", Role.ADMIN, OTHER)
    with pytest.raises(UsersError, match="at least 10"):
        store.set_password("j.smith", "short")
    for change in (
        lambda: store.set_role("ghost", Role.ADMIN),
        lambda: store.set_disabled("ghost", True),
        lambda: store.remove("ghost"),
        lambda: store.new_token("ghost", ""),
        lambda: store.revoke_token("j.smith", "00000000"),
    ):
        with pytest.raises(UsersError, match=r"no (user|token)"):
            change()


def test_users_and_user_show_no_hashes(store: UserStore):
    store.add("b.jones", Role.SUPERVISOR, PASSWORD)
    store.add("a.admin", Role.ADMIN, OTHER)
    store.new_token("b.jones", "scada")
    listed = store.users()
    assert [(u.name, u.role, u.disabled) for u in listed] == [
        ("a.admin", Role.ADMIN, False),
        ("b.jones", Role.SUPERVISOR, False),
    ]
    info = store.user("b.jones")
    assert info is not None and [t.label for t in info.tokens] == ["scada"]
    assert "argon2" not in repr(listed) and "sha256" not in repr(info)
    assert store.user("ghost") is None
    store.set_role("b.jones", Role.VIEWER)
    store.remove("a.admin")
    assert [(u.name, u.role) for u in store.users()] == [("b.jones", Role.VIEWER)]


# --- tokens --------------------------------------------------------------------------


def test_token_create_verify_revoke(store: UserStore, path: Path):
    store.add("scada", Role.OPERATOR, PASSWORD)
    token = store.new_token("scada", "historian")
    token_id, secret = split_token(token) or ("", "")
    assert token.startswith(f"drk_{token_id}_") and len(token_id) == 8 and len(secret) >= 40
    assert store.verify_token(token) == Identity("scada", Role.OPERATOR, "token")
    assert secret not in path.read_text() and token_id in path.read_text()
    info = store.user("scada")
    assert info is not None and info.tokens[0].id == token_id
    assert info.tokens[0].created.endswith("Z")

    second = store.new_token("scada", "")
    assert store.verify_token(second) is not None
    store.set_disabled("scada", True)
    assert store.verify_token(token) is None
    store.set_disabled("scada", False)
    store.revoke_token("scada", token_id)
    assert store.verify_token(token) is None
    assert store.verify_token(second) is not None


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "drk_",
        "Bearer drk_0123abcd_" + "A" * 43,
        "drk_0123ABCD_" + "A" * 43,  # the id is lower-case hex
        "drk_0123abc_" + "A" * 43,
        "drk_0123abcd_" + "A" * 5,
        "drk_0123abcd_" + "A" * 500,
        "drk_0123abcd_" + "A" * 42 + "!",
        "xyz_0123abcd_" + "A" * 43,
    ],
)
def test_malformed_tokens_are_refused(store: UserStore, bad: str):
    store.add("scada", Role.OPERATOR, PASSWORD)
    store.new_token("scada", "")
    assert store.verify_token(bad) is None


def test_a_forged_secret_with_a_real_id_is_refused(store: UserStore):
    store.add("scada", Role.OPERATOR, PASSWORD)
    token = store.new_token("scada", "")
    forged = token[:-1] + ("B" if token[-1] != "B" else "C")
    assert store.verify_token(forged) is None


# --- the file ------------------------------------------------------------------------


def test_file_is_private_readable_and_written_atomically(store: UserStore, path: Path):
    store.add("j.smith", Role.OPERATOR, PASSWORD)
    store.new_token("j.smith", "scada")
    store.set_role("j.smith", Role.SUPERVISOR)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["users.yaml"]
    text = path.read_text()
    assert text.startswith("#") and "derrick-collector users" in text.split("\n\n")[0]
    assert "role: supervisor" in text and "label: scada" in text


def test_failed_write_leaves_no_temp_file(store: UserStore, path: Path, monkeypatch):
    store.add("j.smith", Role.OPERATOR, PASSWORD)
    before = path.read_text()

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(users_module.os, "replace", fail)
    with pytest.raises(UsersError, match="cannot write: No space left"):
        store.set_role("j.smith", Role.ADMIN)
    assert sorted(p.name for p in path.parent.iterdir()) == ["users.yaml"]
    assert path.read_text() == before


def test_changes_by_another_process_apply_without_restart(path: Path, clock: Clock):
    running = UserStore(path, hasher=CHEAP, clock=clock)
    cli = UserStore(path, hasher=CHEAP)
    cli.add("j.smith", Role.OPERATOR, PASSWORD)
    assert running.load() == 1
    cli.add("b.jones", Role.VIEWER, PASSWORD)
    cli.set_role("j.smith", Role.SUPERVISOR)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert running.user("b.jones") is None  # looked at most once a second
    clock.now += 2
    assert running.user("b.jones") is not None
    assert running.verify_password("j.smith", PASSWORD) == Identity(
        "j.smith", Role.SUPERVISOR, "password"
    )


def test_missing_file_at_first_load(store: UserStore, path: Path):
    with pytest.raises(UsersError, match="derrick-collector users add") as caught:
        store.load()
    assert str(path) in str(caught.value)
    with pytest.raises(UsersError):
        store.verify_password("j.smith", PASSWORD)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("users:\n  j.smith:\n    role: boss\n    password: $argon2id$x\n", "users.j.smith.role"),
        ("users:\n  j.smith:\n    role: viewer\n    password: plain\n", "users.j.smith.password"),
        ("users:\n  j.smith:\n    role: viewer\n    colour: red\n", "users.j.smith.colour"),
        ("users:\n  j.smith: [\n", "invalid YAML: line"),
        ("", "file is empty"),
        (
            "users:\n  a:\n    role: viewer\n    password: $argon2id$x\n    disabled: 'no'\n",
            "disabled",
        ),
    ],
)
def test_a_broken_file_at_first_load_names_file_and_key(path: Path, text: str, says: str):
    path.write_text(text)
    with pytest.raises(UsersError) as caught:
        UserStore(path, hasher=CHEAP).load()
    assert str(caught.value).startswith(f"{path}: ") and says in str(caught.value)


def test_a_file_broken_later_keeps_the_last_good_users(store: UserStore, path: Path, clock):
    store.add("j.smith", Role.OPERATOR, PASSWORD)
    token = store.new_token("j.smith", "")
    with capture_logs() as logs:
        path.write_text("users:\n  j.smith:\n    role: [\n")
        touch_forward(path, clock)
        assert store.verify_password("j.smith", PASSWORD) is not None
        clock.now += 2
        assert store.verify_token(token) is not None
        path.unlink()
        clock.now += 2
        assert store.user("j.smith") is not None
    assert [e["log_level"] for e in logs] == ["error", "error"]  # once per problem
    assert str(path) in logs[0]["error"] and "invalid YAML" in logs[0]["error"]
    assert all(PASSWORD not in repr(e) and token not in repr(e) for e in logs)
    with pytest.raises(UsersError, match="no such file"):
        store.load()  # a forced read says what is wrong


def test_no_password_hash_or_token_in_logs(path: Path, clock: Clock, monkeypatch):
    UserStore(path, hasher=CHEAP, clock=clock).add("j.smith", Role.OPERATOR, PASSWORD)
    stronger = PasswordHasher(time_cost=1, memory_cost=16, parallelism=1)
    store = UserStore(path, hasher=stronger, clock=clock)
    token = store.new_token("j.smith", "scada")
    monkeypatch.setattr(
        users_module.os,
        "replace",
        lambda *_: (_ for _ in ()).throw(OSError(13, "Permission denied")),
    )
    with capture_logs() as logs:
        assert store.verify_password("j.smith", PASSWORD) is not None  # rehash not saved
        assert store.verify_password("j.smith", OTHER) is None
        assert store.verify_token(token) is not None
    assert [e["event"] for e in logs] == ["could not save a rehashed password"]
    text = repr(logs)
    assert PASSWORD not in text and OTHER not in text and token not in text
    assert "argon2" not in text and token.split("_")[2] not in text


# --- the CLI -------------------------------------------------------------------------


@pytest.fixture
def cli(path: Path, monkeypatch, capsys):
    """Run ``derrick-collector users ...`` on ``path``: (exit status, stdout, stderr)."""
    monkeypatch.setattr(users_module, "PasswordHasher", lambda: CHEAP)
    monkeypatch.setenv("NEW_PASSWORD", PASSWORD)

    def run(*argv: str) -> tuple[int, str, str]:
        status = collector_main(["users", *argv, "--file", str(path)])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_cli_end_to_end(cli, path: Path, monkeypatch):
    assert cli("add", "j.smith", "--role", "operator", "--password-env", "NEW_PASSWORD")[0] == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cli("add", "b.jones", "--role", "viewer", "--password-env", "NEW_PASSWORD")[0] == 0

    status, out, _ = cli("token", "j.smith", "--label", "scada")
    token = out.splitlines()[0]
    assert status == 0 and "not be shown again" in out
    assert f"Authorization: Bearer {token}" in out
    store = UserStore(path, hasher=CHEAP)
    assert store.verify_token(token) == Identity("j.smith", Role.OPERATOR, "token")

    status, out, _ = cli("list")
    assert status == 0 and "$argon2" not in out and token not in out
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "DISABLED", "TOKENS"]
    assert lines[1].split() == ["b.jones", "viewer", "no", "0"]
    assert lines[2].split() == ["j.smith", "operator", "no", "1"]

    assert cli("revoke", "j.smith", token.split("_")[1])[0] == 0
    assert UserStore(path, hasher=CHEAP).verify_token(token) is None

    monkeypatch.setenv("NEW_PASSWORD", OTHER)
    assert cli("passwd", "j.smith", "--password-env", "NEW_PASSWORD")[0] == 0
    assert cli("role", "j.smith", "supervisor")[0] == 0
    assert UserStore(path, hasher=CHEAP).verify_password("j.smith", OTHER) == Identity(
        "j.smith", Role.SUPERVISOR, "password"
    )
    assert cli("disable", "b.jones")[0] == 0
    assert ["b.jones", "viewer", "yes", "0"] in [
        line.split() for line in cli("list")[1].splitlines()
    ]
    assert cli("enable", "b.jones")[0] == 0
    assert cli("remove", "b.jones")[0] == 0
    assert [u.name for u in UserStore(path, hasher=CHEAP).users()] == ["j.smith"]


def test_cli_refusals_exit_1(cli, path: Path, monkeypatch):
    status, _, err = cli("list")
    assert status == 1 and "derrick-collector users add" in err
    assert cli("add", "j.smith", "--role", "operator", "--password-env", "NEW_PASSWORD")[0] == 0
    monkeypatch.setenv("WEAK", "short")
    status, out, err = cli("add", "b.jones", "--role", "viewer", "--password-env", "WEAK")
    assert status == 1 and "at least 10 characters" in err and out == ""
    assert len(err.strip().splitlines()) == 1
    status, _, err = cli("add", "j.smith", "--role", "viewer", "--password-env", "NEW_PASSWORD")
    assert status == 1 and "exists already" in err
    status, _, err = cli("role", "ghost", "admin")
    assert status == 1 and "no user 'ghost'" in err
    assert cli("revoke", "j.smith", "0123abcd")[0] == 1


def test_cli_asks_twice_for_the_password(cli, path: Path, monkeypatch):
    answers = iter([PASSWORD, OTHER])
    monkeypatch.setattr(usercli.getpass, "getpass", lambda prompt: next(answers))
    status, _, err = cli("add", "j.smith", "--role", "viewer")
    assert status == 1 and "differ" in err and not path.exists()
    answers = iter([PASSWORD, PASSWORD])
    assert cli("add", "j.smith", "--role", "viewer")[0] == 0
    assert UserStore(path, hasher=CHEAP).verify_password("j.smith", PASSWORD) is not None


def test_cli_password_file(cli, path: Path, tmp_path: Path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    assert cli("add", "j.smith", "--role", "admin", "--password-file", str(secret))[0] == 0
    assert UserStore(path, hasher=CHEAP).verify_password("j.smith", PASSWORD) is not None
    assert cli("passwd", "j.smith", "--password-file", str(tmp_path / "none"))[0] == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["users"],
        ["users", "add", "j.smith", "--role", "operator"],  # neither --config nor --file
        ["users", "add", "j.smith", "--role", "boss", "--file", "u.yaml"],
        ["users", "list", "--file", "u.yaml", "--config", "c.yaml"],
        ["users", "frobnicate", "--file", "u.yaml"],
        ["users", "revoke", "j.smith", "--file", "u.yaml"],
    ],
)
def test_cli_wrong_usage_exits_2(argv: list[str], capsys):
    with pytest.raises(SystemExit) as caught:
        collector_main(argv)
    assert caught.value.code == 2
    assert "usage: derrick-collector users" in capsys.readouterr().err


def test_cli_with_a_collector_config(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(users_module, "PasswordHasher", lambda: CHEAP)
    monkeypatch.setenv("NEW_PASSWORD", PASSWORD)
    base = "collector: {id: c1}\ninflux: {api: v1, database: derrick}\n"
    config = tmp_path / "collector.yaml"
    config.write_text(base)
    add = ["users", "add", "j.smith", "--role", "viewer", "--password-env", "NEW_PASSWORD"]
    assert collector_main([*add, "--config", str(config)]) == 2
    assert "set alarms.http.users_file" in capsys.readouterr().err
    config.write_text(base + "alarms:\n  http:\n    users_file: etc/users.yaml\n")
    (tmp_path / "etc").mkdir()
    assert collector_main([*add, "--config", str(config)]) == 0
    assert UserStore(tmp_path / "etc" / "users.yaml").user("j.smith") is not None
    (tmp_path / "bad.yaml").write_text("collector: {}\n")
    assert collector_main(["users", "list", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "collector.id" in capsys.readouterr().err
