"""etcd v3 boundary: the only module that imports the etcd client (``aetcd``).

Collectors that fail over (:mod:`collector.alarms.ha`) keep their membership, the owner
of each asset's alarms, the alarm records and the notice outbox in etcd. This module
gives them a small vocabulary - :class:`Entry`, :class:`Put`, :class:`Delete`,
:class:`Compare`, :class:`Txn` - over the client, and one table mapping the client's
errors into :class:`EtcdError` (``from exc``); ``CancelledError`` goes through.

Why ``aetcd`` (1.0, June 2026): asyncio-native over etcd's gRPC API, maintained, with
leases, watches, range compares and nested transactions (one atomic commit of any
number of keys, under etcd's 128 operations per level). ``etcd3gw`` (OpenStack, also
maintained) is synchronous over the JSON gateway; ``etcetra`` pins grpcio 1.62 and has
had no release since 2024; ``etcd3`` is unmaintained.

Two things the client does not do, done here:

* **Several endpoints.** ``aetcd`` talks to one ``host:port``. A call that finds its
  member unavailable moves to the next endpoint and is tried again there, each try
  within ``timeout_s`` - so a dead etcd member costs one timeout, not the cluster.
  Leases and keys are the cluster's, so a member change loses nothing. A retried
  transaction may run twice; every transaction of ours is written to be harmless the
  second time (compares on create revisions, puts of the same value).
* **Calls from synchronous code.** The alarm lifecycle commits its records and notices
  synchronously (as it does to SQLite). The client runs on an event loop of its own in
  a daemon thread: :meth:`Etcd.call` awaits a coroutine of this module from the
  collector's loop without blocking it; :meth:`Etcd.block` waits for it (an alarm
  commit: about a millisecond on loopback, at most the timeout per endpoint).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aetcd
import aetcd.exceptions
from aetcd import transactions as ops

if TYPE_CHECKING:
    from collector.config import EtcdSettings

_T = TypeVar("_T")


class EtcdError(Exception):
    """etcd did not do what was asked; ``retryable`` when trying again later may work."""

    retryable = True


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the timeout."""


class EtcdRefused(EtcdError):
    """etcd refused the request (authentication, a bad argument): not retryable."""

    retryable = False


# The client's errors -> ours (first match wins; subclasses before their bases).
_ERRORS: tuple[tuple[type[Exception], type[EtcdError]], ...] = (
    (aetcd.exceptions.ConnectionFailedError, EtcdUnavailable),
    (aetcd.exceptions.ConnectionTimeoutError, EtcdUnavailable),
    (aetcd.exceptions.InternalError, EtcdUnavailable),
    (aetcd.exceptions.UnauthenticatedError, EtcdRefused),
    (aetcd.exceptions.InvalidArgumentError, EtcdRefused),
    (aetcd.exceptions.PreconditionFailedError, EtcdRefused),
    (aetcd.exceptions.ClientError, EtcdError),
    (TimeoutError, EtcdUnavailable),
)


def _ours(exc: Exception, endpoint: str) -> EtcdError:
    for theirs, kind in _ERRORS:
        if isinstance(exc, theirs):
            return kind(f"etcd {endpoint}: {exc or type(exc).__name__}")
    return EtcdError(f"etcd {endpoint}: {type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class Entry:
    """A key as read: its value, the revisions it was created and last changed at, and
    the lease it lives by (0: none)."""

    key: str
    value: bytes
    create: int
    mod: int
    lease: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Compare:
    """``target`` of ``key`` (or of every key under it, ``prefix``) ``op`` ``value``.
    A key that does not exist has create revision 0."""

    key: str
    target: Literal["create", "mod", "version", "value"]
    op: Literal["==", "!=", "<", ">"]
    value: int | bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Txn:
    """Nested transaction: its ``success`` runs if its compares hold, else ``failure``."""

    compares: Sequence[Compare] = ()
    success: Sequence[Put | Delete | Txn] = ()
    failure: Sequence[Put | Delete | Txn] = field(default_factory=tuple)


MAX_OPS = 100  # per level of a transaction; etcd's default limit is 128


def _range_end(key: str) -> bytes:
    return aetcd.utils.prefix_range_end(key.encode())


def _compare(compare: Compare) -> Any:
    target = {
        "create": ops.Create,
        "mod": ops.Mod,
        "version": ops.Version,
        "value": ops.Value,
    }[compare.target]
    end = _range_end(compare.key) if compare.prefix else None
    built = target(compare.key.encode(), end)
    value = compare.value
    match compare.op:
        case "==":
            return built == value
        case "!=":
            return built != value
        case "<":
            return built < value
        case _:
            return built > value


def _op(op: Put | Delete | Txn) -> Any:
    if isinstance(op, Put):
        return ops.Put(op.key.encode(), op.value, lease=op.lease or None)
    if isinstance(op, Delete):
        return ops.Delete(op.key.encode(), _range_end(op.key) if op.prefix else None)
    return ops.Txn(
        [_compare(c) for c in op.compares],
        [_op(o) for o in _chunked(op.success)],
        [_op(o) for o in _chunked(op.failure)],
    )


def _chunked(operations: Sequence[Put | Delete | Txn]) -> Sequence[Put | Delete | Txn]:
    """Operations as they fit etcd's limit per level: nested transactions of at most
    ``MAX_OPS`` each (no compares, so they always run) when there are more."""
    if len(operations) <= MAX_OPS:
        return operations
    groups = [operations[i : i + MAX_OPS] for i in range(0, len(operations), MAX_OPS)]
    return _chunked([Txn((), group) for group in groups])


def _entry(meta: Any) -> Entry:
    return Entry(
        key=bytes(meta.key).decode(),
        value=bytes(meta.value),
        create=int(meta.create_revision),
        mod=int(meta.mod_revision),
        lease=int(meta.lease),
    )


class Etcd:
    """A client over ``endpoints`` (``host:port``), on a thread and event loop of its own.

    The coroutine methods (:meth:`grant`, :meth:`txn`...) run only on that loop: hand
    them to :meth:`call` (from asyncio code) or :meth:`block` (from synchronous code).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout_s: float = 2.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoints")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self._username = username
        self._password = password
        self._current = 0
        self._client: aetcd.Client | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="etcd", daemon=True)
        self._thread.start()

    @classmethod
    def for_settings(cls, settings: EtcdSettings) -> Etcd:
        """A client as a collector's ``etcd`` section describes it (password read now)."""
        password = settings.password()
        return cls(
            settings.endpoints,
            settings.timeout_s,
            settings.username,
            password.get_secret_value() if password is not None else None,
        )

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now."""
        return self.endpoints[self._current]

    # --- the two doors ----------------------------------------------------------------

    async def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Await ``coro`` on the etcd loop from the caller's loop."""
        try:
            return await asyncio.wrap_future(self._submit(coro))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the caller is being cancelled
            raise EtcdUnavailable(f"etcd {self.endpoint}: request cancelled") from None

    def block(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the etcd loop and wait for it (synchronous callers)."""
        future = self._submit(coro)
        try:
            return future.result(self.timeout_s * len(self.endpoints) + 1.0)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise EtcdUnavailable(f"etcd {self.endpoint}: no answer in time") from exc
        except concurrent.futures.CancelledError as exc:
            raise EtcdUnavailable(f"etcd {self.endpoint}: request cancelled") from exc

    def _submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # --- coroutines (etcd loop only) --------------------------------------------------

    async def grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds; its id."""
        lease = await self._try(lambda c: c.lease(ttl_s))
        return int(lease.id)

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease``; the TTL it has now (0: it expired, its keys are gone)."""
        reply = await self._try(lambda c: c.refresh_lease(lease))
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease: int) -> None:
        """End ``lease`` now: its keys go at once (a clean shutdown)."""
        await self._try(lambda c: c.revoke_lease(lease))

    async def get(self, key: str) -> Entry | None:
        found = await self._try(lambda c: c.get(key.encode()))
        return _entry(found) if found is not None else None

    async def get_prefix(self, prefix: str) -> list[Entry]:
        """Every key under ``prefix``, in key order."""
        found = await self._try(lambda c: c.get_prefix(prefix.encode()))
        return [_entry(item) for item in found]

    async def put(self, key: str, value: bytes, lease: int = 0) -> None:
        await self._try(lambda c: c.put(key.encode(), value, lease=lease or None))

    async def txn(self, txn: Txn) -> bool:
        """Run ``txn``; True when its compares held (its ``success`` ran)."""
        compares = [_compare(c) for c in txn.compares]
        success = [_op(o) for o in _chunked(txn.success)]
        failure = [_op(o) for o in _chunked(txn.failure)]
        succeeded, _ = await self._try(lambda c: c.transaction(compares, success, failure))
        return bool(succeeded)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def stop(self) -> None:
        """Close the client and stop the thread (idempotent)."""
        if not self._loop.is_closed() and self._thread.is_alive():
            with contextlib.suppress(EtcdError):
                self.block(self.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()

    async def _try(self, request: Callable[[aetcd.Client], Awaitable[_T]]) -> _T:
        """``request`` on the current endpoint, then on each other one while they are
        unavailable; the last error, ours, if none answers."""
        error: EtcdError | None = None
        for _ in self.endpoints:
            endpoint, client = self.endpoint, None
            try:
                client = await self._connected()
                return await asyncio.wait_for(request(client), self.timeout_s)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # not us: the channel was closed under the call (another call moved on)
                error = EtcdUnavailable(f"etcd {endpoint}: request cancelled")
                error.__cause__ = exc
            except Exception as exc:  # mapped into our tree by _ERRORS
                error = _ours(exc, endpoint)
                if not isinstance(error, EtcdUnavailable):
                    raise error from exc
                error.__cause__ = exc
            await self._next_endpoint(client)
        assert error is not None
        raise error

    async def _connected(self) -> aetcd.Client:
        if self._client is None:
            host, _, port = self.endpoint.rpartition(":")
            client = aetcd.Client(
                host,
                int(port),
                username=self._username,
                password=self._password,
                timeout=self.timeout_s,  # type: ignore[arg-type] - seconds, float works
            )
            await asyncio.wait_for(client.connect(), self.timeout_s)
            self._client = client
        return self._client

    async def _next_endpoint(self, failed: aetcd.Client | None) -> None:
        """Move on from the client that failed - unless a concurrent call did already."""
        if failed is not None and failed is not self._client:
            return
        await self.close()
        self._current = (self._current + 1) % len(self.endpoints)
