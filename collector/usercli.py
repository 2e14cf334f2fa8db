"""``derrick-collector users ...``: the named users of the operator console and API.

Adds, lists and changes the users in the collector's users file (``alarms.http.users_file``
of ``--config``, or ``--file``), see :mod:`collector.users`. A running collector picks
the changes up within a second or so. Run it as the user the collector runs as (the
file is 0600). Exit 0 done; 2 usage or config error; 1 refused (unknown user, weak
password, unusable users file...).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from collector.config import load_config
from collector.users import PERMISSIONS, Role, UserInfo, UsersError, UserStore, check_name
from derrick.plumbing.configfile import ConfigError

PROG = "derrick-collector users"
ROLES = [role.value for role in Role]


class UsageError(Exception):
    """Bad options or config: exit 2."""


def build_parser() -> argparse.ArgumentParser:
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", type=Path, help="a collector config with alarms.http.users_file")
    group.add_argument("--file", type=Path, help="the users file itself")
    secret = argparse.ArgumentParser(add_help=False)
    source = secret.add_mutually_exclusive_group()
    source.add_argument("--password-env", metavar="VAR", help="take the password from $VAR")
    source.add_argument(
        "--password-file",
        type=Path,
        metavar="PATH",
        help="take it from a file (without its final newline)",
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Users of the operator console and alarm API: roles, passwords, tokens.",
        epilog="roles, each allowed what the ones above it are, plus:\n"
        + "\n".join(_role_line(role) for role in Role)
        + "\n\nexamples:\n"
        "  derrick-collector users add j.smith --role operator --config collector.yaml\n"
        "  derrick-collector users token scada --label historian --config collector.yaml\n"
        "  derrick-collector users list --config collector.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_, parents=[where, *parents])
        if name != "list":
            sub.add_argument("name", metavar="NAME", help="user name")
        return sub

    action("add", "add a user (asks for the password)", secret).add_argument(
        "--role", required=True, choices=ROLES
    )
    action("list", "list users, roles and token counts")
    action("passwd", "set a user's password (asks for it)", secret)
    action("role", "change a user's role").add_argument("role", choices=ROLES)
    action("disable", "refuse a user's logins and tokens")
    action("enable", "allow a disabled user again")
    action("remove", "remove a user and their tokens")
    action("token", "make an API token for a user (shown once)").add_argument(
        "--label", default="", help="what the token is for"
    )
    action("revoke", "revoke one of a user's API tokens").add_argument(
        "token_id", metavar="TOKEN_ID"
    )
    return parser


def _role_line(role: Role) -> str:
    allowed = ", ".join(what for what, least in PERMISSIONS.items() if least == role)
    return f"  {role:<11} {allowed}"


def main(argv: Sequence[str]) -> int:
    """``derrick-collector users ACTION ...``; argv may start with ``users``."""
    argv = list(argv)
    args = build_parser().parse_args(argv[1:] if argv[:1] == ["users"] else argv)
    try:
        store = UserStore(users_file(args))
        return ACTIONS[args.action](store, args)
    except UsageError as exc:
        sys.stderr.write(f"{PROG} {args.action}: {exc}\n")
        return 2
    except UsersError as exc:
        sys.stderr.write(f"{PROG} {args.action}: {exc}\n")
        return 1


def users_file(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return args.file
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise UsageError(str(exc).replace("\n", "; ")) from exc
    path = config.alarms.http.users_file
    if path is None:
        raise UsageError(
            f"{args.config}: alarms.http.users_file is not set: set alarms.http.users_file "
            "to name the users file (or give --file)"
        )
    return path


def read_password(args: argparse.Namespace) -> str:
    """From --password-env, --password-file, or asked twice on the terminal (no echo)."""
    if args.password_env:
        value = os.environ.get(args.password_env)
        if not value:
            raise UsageError(f"--password-env: environment variable {args.password_env} is unset")
        return value
    if args.password_file is not None:
        try:
            text = args.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--password-file {args.password_file}: {exc.strerror}") from exc
        return text.removesuffix("\n").removesuffix("\r")
    try:
        first = getpass.getpass(f"password for {args.name}: ")
        second = getpass.getpass("the same again: ")
    except EOFError as exc:
        raise UsageError("no password given (or use --password-env / --password-file)") from exc
    if first != second:
        raise UsersError("the two passwords differ: nothing changed")
    return first


def _add(store: UserStore, args: argparse.Namespace) -> int:
    check_name(args.name)
    if store.path.exists() and store.user(args.name) is not None:
        raise UsersError(f"user {args.name!r} exists already")
    store.add(args.name, Role(args.role), read_password(args))
    print(f"{args.name}: added as {args.role} to {store.path}")
    return 0


def _list(store: UserStore, args: argparse.Namespace) -> int:
    users = store.users()
    if not users:
        print(f"{store.path}: no users")
        return 0
    print(render_table(users))
    return 0


def render_table(users: list[UserInfo]) -> str:
    rows = [("NAME", "ROLE", "DISABLED", "TOKENS")]
    rows += [
        (u.name, u.role.value, "yes" if u.disabled else "no", str(len(u.tokens))) for u in users
    ]
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _passwd(store: UserStore, args: argparse.Namespace) -> int:
    if store.user(args.name) is None:
        raise UsersError(f"no user {args.name!r}")
    store.set_password(args.name, read_password(args))
    print(f"{args.name}: password changed")
    return 0


def _role(store: UserStore, args: argparse.Namespace) -> int:
    store.set_role(args.name, Role(args.role))
    print(f"{args.name}: now {args.role}")
    return 0


def _disable(store: UserStore, args: argparse.Namespace) -> int:
    store.set_disabled(args.name, True)
    print(f"{args.name}: disabled (logins and tokens refused)")
    return 0


def _enable(store: UserStore, args: argparse.Namespace) -> int:
    store.set_disabled(args.name, False)
    print(f"{args.name}: enabled")
    return 0


def _remove(store: UserStore, args: argparse.Namespace) -> int:
    store.remove(args.name)
    print(f"{args.name}: removed, with their tokens")
    return 0


def _token(store: UserStore, args: argparse.Namespace) -> int:
    token = store.new_token(args.name, args.label)
    token_id = token.split("_")[1]
    print(token)
    print(f"This is API token {token_id} of {args.name}. It will not be shown again: store it now.")
    print(f"Send it with each request as the header  Authorization: Bearer {token}")
    print(f"Revoke it with: {PROG} revoke {args.name} {token_id}")
    return 0


def _revoke(store: UserStore, args: argparse.Namespace) -> int:
    store.revoke_token(args.name, args.token_id)
    print(f"{args.name}: token {args.token_id} revoked")
    return 0


ACTIONS: dict[str, Callable[[UserStore, argparse.Namespace], int]] = {
    "add": _add,
    "list": _list,
    "passwd": _passwd,
    "role": _role,
    "disable": _disable,
    "enable": _enable,
    "remove": _remove,
    "token": _token,
    "revoke": _revoke,
}
