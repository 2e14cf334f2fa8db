"""Who is asking, and may they: sessions, CSRF, login throttling, security headers.

A request is identified by exactly one credential, in this order:

1. ``X-Derrick-Peer: <secret>``: another collector of the group passing on a command its
   user was already checked for (:mod:`collector.alarms.forward`); ``X-Derrick-User``
   names that user, whose role is looked up here again.
2. ``Authorization: Bearer drk_...``: a user's API token (:mod:`collector.users`).
3. ``Authorization: Bearer <shared token>``: the deprecated shared token
   (``token_env`` / ``token_file``), a machine identity that names ``who`` itself.
4. The console's session cookie (then every state change needs the session's CSRF token).
5. Nothing: only when neither users nor a token are configured (loopback only, as the
   settings enforce): the deprecated open mode, where ``who`` is whatever the client says.

Sessions live in this process's memory, keyed by the SHA-256 of their id (a restart
logs everyone out; each collector of a group has its own). The session id, tokens and
passwords are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pydantic import SecretStr

from collector.users import Identity, Role, UserStore

SESSION_COOKIE = "derrick_session"
SECURE_SESSION_COOKIE = "__Host-derrick_session"  # the prefix binds it to this host, Secure
CSRF_HEADER = "x-csrf-token"
MAX_SESSIONS = 10_000
MAX_THROTTLED_KEYS = 10_000
MAX_DELAY_S = 300.0

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class Session:
    identity: Identity
    csrf: str
    expires: float  # time.monotonic()
    started_ns: int = field(default_factory=time.time_ns)


class Sessions:
    """Logged-in console users, bounded (the oldest session goes first beyond the cap)."""

    def __init__(self, lifetime_s: float, max_sessions: int = MAX_SESSIONS) -> None:
        self._lifetime_s = lifetime_s
        self._max = max_sessions
        self._by_digest: OrderedDict[str, Session] = OrderedDict()

    def create(self, identity: Identity) -> tuple[str, Session]:
        """A new session: (its id for the cookie, the session)."""
        session_id = secrets.token_urlsafe(32)
        session = Session(identity, secrets.token_urlsafe(32), time.monotonic() + self._lifetime_s)
        self._by_digest[_digest(session_id)] = session
        while len(self._by_digest) > self._max:
            self._by_digest.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        key = _digest(session_id)
        session = self._by_digest.get(key)
        if session is not None and session.expires <= time.monotonic():
            del self._by_digest[key]
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._by_digest.pop(_digest(session_id), None)

    def drop_user(self, name: str) -> int:
        """End every session of one user (removed, disabled, role changed)."""
        keys = [k for k, s in self._by_digest.items() if s.identity.name == name]
        for key in keys:
            del self._by_digest[key]
        return len(keys)

    def __len__(self) -> int:
        return len(self._by_digest)


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())


class LoginThrottle:
    """Failed logins per key (the user name, the client address): after ``free`` failures
    each further attempt must wait, doubling from 1 s up to 5 minutes; a success of the
    name clears it. Bounded: the least recently failed keys are forgotten first."""

    def __init__(self, free: int, max_keys: int = MAX_THROTTLED_KEYS) -> None:
        self._free = free
        self._max = max_keys
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def wait_s(self, keys: list[str]) -> float:
        """Seconds before another attempt for these keys is heard (0: now)."""
        now = time.monotonic()
        return max((self._failures.get(k, (0, now))[1] - now for k in keys), default=0.0)

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        for key in keys:
            count = self._failures.pop(key, (0, now))[0] + 1
            over = count - self._free
            delay = 0.0 if over <= 0 else min(2.0 ** (over - 1), MAX_DELAY_S)
            self._failures[key] = (count, now + delay)
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)

    def succeeded(self, keys: list[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)


@dataclass
class Credentials:
    """What one request presented (headers lower-case, cookie value)."""

    authorization: str = ""
    peer: str = ""
    peer_user: str = ""
    peer_role: str = ""
    session_id: str | None = None


class Refused(Exception):
    """No acceptable credential: answer 401 with this message."""


class Authenticator:
    """Turns a request's credentials into an :class:`Identity` (see the module doc)."""

    def __init__(
        self,
        users: UserStore | None,
        shared_token: SecretStr | None,
        sessions: Sessions,
        peer_secret: SecretStr | None = None,
    ) -> None:
        self.users = users
        self.sessions = sessions
        self._shared = shared_token.get_secret_value().encode() if shared_token else None
        self._peer = peer_secret.get_secret_value().encode() if peer_secret else None

    @property
    def open(self) -> bool:
        """No users and no token: the deprecated open mode (loopback only)."""
        return self.users is None and self._shared is None

    def set_peer_secret(self, secret: SecretStr | None) -> None:
        self._peer = secret.get_secret_value().encode() if secret else None

    def identify(self, given: Credentials) -> tuple[Identity, Session | None]:
        """The identity and, for a console login, its session; :class:`Refused` if none."""
        if given.peer:
            return self._peer_identity(given), None
        if given.authorization:
            return self._bearer(given.authorization), None
        session = self.sessions.get(given.session_id)
        if session is not None:
            return self._current(session), session
        if self.open:
            return Identity("local", Role.SUPERVISOR, "open"), None
        raise Refused("Authorization: Bearer <token> required")

    def _current(self, session: Session) -> Identity:
        """The session's user as the users file says now: removed or disabled ends it."""
        name = session.identity.name
        info = self.users.user(name) if self.users is not None else None
        if info is None or info.disabled:
            self.sessions.drop_user(name)
            raise Refused("your login has ended; log in again")
        if info.role != session.identity.role:
            session.identity = Identity(name, info.role, session.identity.via)
        return session.identity

    def _bearer(self, header: str) -> Identity:
        scheme, _, given = header.partition(" ")
        token = given.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused("Authorization: Bearer <token> required")
        if token.startswith("drk_") and self.users is not None:
            identity = self.users.verify_token(token)
            if identity is not None:
                return identity
        elif self._shared is not None and hmac.compare_digest(token.encode(), self._shared):
            return Identity("shared-token", Role.SUPERVISOR, "shared-token")
        raise Refused("token not accepted")

    def _peer_identity(self, given: Credentials) -> Identity:
        """A member of the group acting for a user it has checked: its name and role as
        the member says (the peer secret is trusted as much as etcd itself)."""
        if self._peer is None or not hmac.compare_digest(given.peer.encode(), self._peer):
            raise Refused("peer credential not accepted")
        if not given.peer_user:
            raise Refused("a peer must name the user it acts for (X-Derrick-User)")
        try:
            role = Role(given.peer_role or Role.SUPERVISOR.value)
        except ValueError as exc:
            raise Refused(f"unknown role {given.peer_role[:20]!r}") from exc
        return Identity(given.peer_user, role, "peer")
