"""Named users of the operator console and alarm API: roles, passwords, API tokens.

The users file (the collector config's ``alarms.http.users_file``) is YAML written only
by this module (``derrick-collector users``, :mod:`collector.usercli`)::

    users:
      j.smith:
        role: operator
        password: $argon2id$v=19$m=65536,t=3,p=4$...
        disabled: false
        tokens:
          - id: 3f9a1c2e
            sha256: <hex of sha256 of the token's secret part>
            label: scada
            created: '2026-12-04T15:20:00Z'

It holds hashes only: argon2id for passwords, sha256 for API tokens. A running collector
re-reads it when it changes (checked at most once a second), so users added or disabled
with the CLI apply without a restart; a file that turns bad keeps the last good users.

Roles are ranked viewer < operator < supervisor < admin; :data:`PERMISSIONS` says which
least role may do what. No web framework and no I/O here but the users file.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Literal

import structlog
import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from derrick.plumbing.configfile import one_line

log = structlog.get_logger(__name__)

RECHECK_S = 1.0
"""How often, at most, the file's mtime and size are looked at for changes."""
MIN_PASSWORD = 10
NAME_PATTERN = r"^[A-Za-z0-9._@-]{1,64}$"
TOKEN_PREFIX = "drk_"  # noqa: S105 (a prefix, not a secret)
_NAME = re.compile(NAME_PATTERN)
_TOKEN = re.compile(r"drk_([0-9a-f]{8})_([A-Za-z0-9_-]{20,128})")

HEADER = """\
# Users of the Derrick operator console and alarm API: roles, password and token hashes.
# Written by `derrick-collector users` (add, passwd, role, token, ...): use it, not an editor.
# Holds hashes only (argon2id for passwords, sha256 for API tokens), never a password or
# token. Keep it private: mode 0600, owned by the user the collector runs as.
"""


class Role(StrEnum):
    """What a user may do, ranked: each role may do all that the roles before it may."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANKS = {role: rank for rank, role in enumerate(Role)}

PERMISSIONS: Mapping[str, Role] = MappingProxyType(
    {
        "view": Role.VIEWER,
        "acknowledge": Role.OPERATOR,
        "reset": Role.OPERATOR,
        "shelve": Role.SUPERVISOR,
        "unshelve": Role.SUPERVISOR,
        "remove_from_service": Role.SUPERVISOR,
        "return_to_service": Role.SUPERVISOR,
        "manage_users": Role.ADMIN,
    }
)
"""What is done -> the least role allowed to do it."""


def may(role: Role, what: str) -> bool:
    """Whether ``role`` may do ``what``; an action not in :data:`PERMISSIONS` is refused."""
    least = PERMISSIONS.get(what)
    return least is not None and role.at_least(least)


def least_role(what: str) -> Role:
    """The least role allowed to do ``what``; KeyError for an unknown action."""
    return PERMISSIONS[what]


Via = Literal["password", "token", "shared-token", "peer", "open"]


@dataclass(frozen=True)
class Identity:
    """Who made a request and how that was established."""

    name: str
    role: Role
    via: Via

    def may(self, what: str) -> bool:
        return may(self.role, what)


@dataclass(frozen=True)
class TokenInfo:
    id: str
    label: str
    created: str


@dataclass(frozen=True)
class UserInfo:
    """A user as shown to people: never a hash."""

    name: str
    role: Role
    disabled: bool
    tokens: tuple[TokenInfo, ...]


class UsersError(Exception):
    """A users file that cannot be used, or a change that is refused; one line."""


# --- the file ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


UserName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class TokenRecord(_Strict):
    id: str = Field(pattern=r"^[0-9a-f]{8}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    label: str = Field(default="", max_length=200)
    created: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class UserRecord(_Strict):
    role: Role = Field(strict=False)  # the YAML string "operator" -> Role.OPERATOR
    password: str = Field(pattern=r"^\$argon2(id|i|d)\$")
    disabled: bool = False
    tokens: list[TokenRecord] = Field(default_factory=list)

    def info(self, name: str) -> UserInfo:
        tokens = tuple(TokenInfo(t.id, t.label, t.created) for t in self.tokens)
        return UserInfo(name, self.role, self.disabled, tokens)


class UsersFile(_Strict):
    users: dict[UserName, UserRecord] = Field(default_factory=dict)


Users = dict[str, UserRecord]
Stamp = tuple[int, int]


def parse(path: Path, text: str) -> Users:
    """The users of a file's ``text``; UsersError naming file, line or key and reason."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise UsersError(f"{path}: invalid YAML: {where}{problem}") from exc
    if data is None:
        raise UsersError(f"{path}: file is empty (expected a users: mapping)")
    try:
        return dict(UsersFile.model_validate(data).users)
    except ValidationError as exc:
        raise UsersError(f"{path}: {one_line(exc)}") from exc


def render(users: Users) -> str:
    """The file's text: header comment, then the users sorted by name."""
    doc = {"users": {name: users[name].model_dump(mode="json") for name in sorted(users)}}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_mtime_ns, st.st_size)


def _read(path: Path) -> tuple[Users, Stamp]:
    try:
        with path.open("rb") as file:
            stamp = _stamp(os.fstat(file.fileno()))
            raw = file.read()
    except FileNotFoundError as exc:
        raise UsersError(
            f"{path}: no such file: create users with `derrick-collector users add NAME "
            f"--role ROLE --file {path}`"
        ) from exc
    except OSError as exc:
        raise UsersError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsersError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    return parse(path, text), stamp


def _write(path: Path, text: str) -> Stamp:
    """Replace ``path`` atomically with ``text``, mode 0600: a reader sees the old file
    or the new one, never half of one, and a crash leaves no partial file."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        _keep_owner(path, temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)
    return _stamp(path.stat())


def _keep_owner(path: Path, temp: str) -> None:
    """Run as root, keep the owner of an existing file (the collector's user), or the
    collector could no longer read it."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        os.chown(temp, st.st_uid, st.st_gid)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- rules for names, passwords, tokens ------------------------------------------------


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise UsersError(f"bad user name {name!r}: 1 to 64 characters of A-Z a-z 0-9 . _ @ -")


def check_password(name: str, password: str) -> None:
    """The password policy: at least :data:`MIN_PASSWORD` characters, not the name."""
    if len(password) < MIN_PASSWORD:
        raise UsersError(f"password too short: at least {MIN_PASSWORD} characters")
    if password.casefold() == name.casefold():
        raise UsersError("password refused: it must not be the user name")


def token_digest(secret: str) -> str:
    """sha256 of a token's secret part, hex.

    A fast hash is right here, unlike for passwords: the secret is 256 random bits, so
    there is nothing to guess by brute force, while argon2 on every API request would cost
    some 50 ms of CPU each.
    """
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a ``drk_<id>_<secret>`` token, None when malformed."""
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    return (match[1], match[2]) if match else None


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the store -----------------------------------------------------------------------


class UserStore:
    """The users of one file, re-read when it changes; verifies passwords and tokens.

    Safe to share between threads (password checks are slow and may run in a pool).
    Changes from two processes at once (the CLI and a rehash on login) are not locked
    against each other: each re-reads the file just before writing it.
    """

    def __init__(
        self,
        path: Path,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = Path(path)
        self._hasher = hasher or PasswordHasher()
        self._clock = clock
        self._lock = threading.RLock()
        self._users: Users | None = None
        self._stamp: Stamp | None = None
        self._checked = 0.0
        self._complained: str | None = None
        self._dummy: str | None = None

    # reading

    def load(self) -> int:
        """Read the file now (a start-up check): the number of users, or UsersError."""
        with self._lock:
            self._adopt(*_read(self.path))
            return len(self._users or {})

    def user(self, name: str) -> UserInfo | None:
        record = self._current().get(name)
        return record.info(name) if record else None

    def users(self) -> list[UserInfo]:
        current = self._current()
        return [current[name].info(name) for name in sorted(current)]

    def _current(self) -> Users:
        """The users, re-read if the file changed; the last good ones if it went bad."""
        with self._lock:
            now = self._clock()
            if self._users is not None and now - self._checked < RECHECK_S:
                return self._users
            self._checked = now
            if self._users is None:
                return self._adopt(*_read(self.path))
            try:
                if self._changed():
                    self._adopt(*_read(self.path))
            except UsersError as exc:
                self._complain(exc)
            return self._users

    def _changed(self) -> bool:
        try:
            return _stamp(self.path.stat()) != self._stamp
        except OSError as exc:
            raise UsersError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc

    def _adopt(self, users: Users, stamp: Stamp) -> Users:
        self._users, self._stamp, self._complained = users, stamp, None
        self._checked = self._clock()
        return users

    def _complain(self, exc: UsersError) -> None:
        """Log a bad file once (per problem), not on every request."""
        if str(exc) != self._complained:
            self._complained = str(exc)
            log.error("users file unusable, keeping the last good users", error=str(exc))

    # verifying

    def verify_password(self, name: str, password: str) -> Identity | None:
        """The user's identity if ``password`` is theirs and they are enabled.

        An unknown or disabled name still costs one argon2 verification (against a dummy
        hash), so the time taken does not tell which names exist.
        """
        dummy = self._dummy_hash()
        record = self._current().get(name)
        if record is not None and record.disabled:
            record = None
        stored = record.password if record is not None else dummy
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if record is None:
            return None
        if self._hasher.check_needs_rehash(stored):
            self._rehash(name, stored, password)
        return Identity(name, record.role, "password")

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy

    def _rehash(self, name: str, old: str, password: str) -> None:
        """Store the password hashed with today's parameters (after a successful login,
        the only time the password is at hand). A failure to save only gets logged."""
        new = self._hasher.hash(password)

        def change(users: Users) -> None:
            record = users.get(name)
            if record is not None and record.password == old:  # not changed meanwhile
                users[name] = record.model_copy(update={"password": new})

        try:
            self._change(change)
        except UsersError as exc:
            log.warning("could not save a rehashed password", user=name, error=str(exc))

    def verify_token(self, token: str) -> Identity | None:
        """The identity of an API token's user; None if malformed, unknown, revoked, or
        its user is disabled."""
        parts = split_token(token)
        if parts is None:
            return None
        token_id, secret = parts
        digest = token_digest(secret)
        for name, record in self._current().items():
            for known in record.tokens:
                if known.id == token_id and hmac.compare_digest(known.sha256, digest):
                    return None if record.disabled else Identity(name, record.role, "token")
        return None

    # changing

    def add(self, name: str, role: Role, password: str) -> None:
        check_name(name)
        check_password(name, password)
        record = UserRecord(role=Role(role), password=self._hasher.hash(password))

        def change(users: Users) -> None:
            if name in users:
                raise UsersError(f"user {name!r} exists already")
            users[name] = record

        self._change(change, create=True)

    def set_password(self, name: str, password: str) -> None:
        check_password(name, password)
        hashed = self._hasher.hash(password)
        self._update(name, password=hashed)

    def set_role(self, name: str, role: Role) -> None:
        self._update(name, role=Role(role))

    def set_disabled(self, name: str, disabled: bool) -> None:
        self._update(name, disabled=disabled)

    def remove(self, name: str) -> None:
        def change(users: Users) -> None:
            self._existing(users, name)
            del users[name]

        self._change(change)

    def new_token(self, name: str, label: str = "") -> str:
        """A new API token for ``name``: the plaintext is returned, only its hash kept."""
        secret = secrets.token_urlsafe(32)
        made: list[str] = []

        def change(users: Users) -> None:
            record = self._existing(users, name)
            taken = {t.id for r in users.values() for t in r.tokens}
            token_id = secrets.token_hex(4)
            while token_id in taken:
                token_id = secrets.token_hex(4)
            token = TokenRecord(
                id=token_id, sha256=token_digest(secret), label=label, created=_utc_now()
            )
            users[name] = record.model_copy(update={"tokens": [*record.tokens, token]})
            made.append(token_id)

        self._change(change)
        return f"{TOKEN_PREFIX}{made[0]}_{secret}"

    def revoke_token(self, name: str, token_id: str) -> None:
        def change(users: Users) -> None:
            record = self._existing(users, name)
            kept = [t for t in record.tokens if t.id != token_id]
            if len(kept) == len(record.tokens):
                raise UsersError(f"user {name!r} has no token {token_id!r}")
            users[name] = record.model_copy(update={"tokens": kept})

        self._change(change)

    def _update(self, name: str, **values: object) -> None:
        def change(users: Users) -> None:
            users[name] = self._existing(users, name).model_copy(update=values)

        self._change(change)

    @staticmethod
    def _existing(users: Users, name: str) -> UserRecord:
        record = users.get(name)
        if record is None:
            raise UsersError(f"no user {name!r}")
        return record

    def _change(self, change: Callable[[Users], None], *, create: bool = False) -> None:
        """Re-read the file, apply ``change`` to its users, write it back atomically."""
        with self._lock:
            if create and not self.path.exists():
                users: Users = {}
            else:
                users, _ = _read(self.path)
            change(users)
            try:
                stamp = _write(self.path, render(users))
            except OSError as exc:
                raise UsersError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc
            self._adopt(users, stamp)
