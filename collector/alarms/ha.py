"""Collectors that fail over: membership by lease, and one owner per asset, in etcd.

Keys under the prefix ``P`` (``etcd.prefix``):

* ``P/members/<id>``: a live collector (JSON: its operator API), bound to its lease;
* ``P/owners/<site>/<asset>``: the collector that owns the asset's alarms, bound to
  that collector's lease;
* ``P/sessions/<id>``: every collector that ever joined (no lease): its storage
  session on the broker, a member of the shared subscription;
* ``P/adopted/<id>``: the live collector draining a dead one's storage session, bound
  to the adopter's lease.

**A dead member strands no telemetry.** mosquitto 2.0 goes on giving a dead member of a
shared subscription its turn: its share waits in the broker for a session nobody reads.
So one live member - the rendezvous hash of the dead member's id over the live ones -
claims ``P/adopted/<id>`` and resumes that session with the dead member's client id:
it stores what was queued and the share that goes on coming. When the dead member
comes back it joins first, waits until the adopter has let the session go (the adopter
sees it live on its next refresh), and only then connects.

Every member computes the owner each asset should have - the rendezvous hash of
:mod:`derrick.alarms.ownership` over the live members - for every asset it has heard of
(each member reads the whole telemetry stream). It **claims** an asset it should own
that nobody holds (a transaction: create revision 0, then a put with its lease), and
**releases** one it holds that another live member should own, once its deliveries of
that asset are done. A member that dies stops renewing its lease; ``ttl_s`` later etcd
deletes its member key and claims, and the others claim those assets on their next
refresh (every ``refresh_s``). A member that comes back gets its share back the same
way: the holder releases, the returner claims - no time when two own an asset.

**Fencing, not timing.** Every commit for an asset (alarm records, notices, delivery
marks; :mod:`collector.alarms.shared`) carries a compare on the create revision of the
claim this member made. A member that lost the claim - its lease ended while it was
frozen, partitioned or slow, and another claimed the asset - commits nothing for it:
the compare fails. And it sends nothing: :meth:`Coordinator.owns` is false once the
lease's time is up by this process's monotonic clock (which runs on while the process
is stopped), so a member woken from SIGSTOP finds its lease over before it sends.

**While etcd cannot be reached** the member stands down for its assets once its lease
is over by its own clock (nobody else can own them before that, and it can commit
nothing): no alarm changes, no notices. It says so: ``coordination_lost`` on its own
channels (:mod:`collector.alarms.service`, stored locally). When etcd answers again it
joins with a new lease if the old one ended, claims its share, and brings each asset's
stored alarms up to what its engine sees (a standing condition is announced, one that
ended is cleared).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog

from collector.etcd import Compare, Delete, Etcd, EtcdError, Put, Txn
from derrick.alarms.engine import ConditionChange
from derrick.alarms.ownership import owner_of
from derrick.alarms.rules import COORDINATION_RULE, UNOWNED_RULE

log = structlog.get_logger(__name__)

Asset = tuple[str, str]  # (site, asset)

COLLECTORS_SITE = "collectors"
"""The site of a collector's own alarms (asset: its id): kept locally, never in etcd,
always owned by that collector."""


class CoordinationError(Exception):
    """This collector cannot take part (its id is live already, etcd refuses it)."""


class Coordinator:
    """This member's lease, the live members and the owner of every known asset."""

    def __init__(
        self,
        etcd: Etcd,
        me: str,
        *,
        prefix: str,
        ttl_s: int,
        refresh_s: float,
        api: str | None = None,
    ) -> None:
        self.etcd = etcd
        self.me = me
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self.api = api  # this member's operator API, for the others' 421 answers
        self.members: tuple[str, ...] = ()
        self.member_info: dict[str, dict[str, object]] = {}
        self.assets: set[Asset] = set()
        self.holders: dict[Asset, str] = {}  # every claim, as last read
        self._claims: dict[Asset, int] = {}  # mine: their create revisions (the fence)
        self._leaving: set[Asset] = set()  # mine, being released: no new work
        self._lease = 0
        self._valid_until = 0.0  # monotonic: the lease's end if no keepalive since
        self._renewed_at = 0.0
        self.reachable = False
        self.unreachable_since: float | None = None
        self.on_gain: Callable[[list[Asset]], None] = lambda assets: None
        self.on_loss: Callable[[list[Asset]], None] = lambda assets: None
        self.busy: Callable[[Asset], bool] = lambda asset: False  # deliveries in flight
        # Dead members' storage sessions this member drains (collector.main starts them)
        self.adopted: set[str] = set()
        self.on_adopt: Callable[[str], Awaitable[None]] = _nothing
        self.on_release: Callable[[str], Awaitable[None]] = _nothing
        self._unowned_since: dict[Asset, float] = {}
        self._raised: dict[str, bool] = {COORDINATION_RULE: False, UNOWNED_RULE: False}

    # --- keys -------------------------------------------------------------------------

    def _info(self) -> bytes:
        return json.dumps({"api": self.api}).encode()

    def member_key(self, member: str) -> str:
        return f"{self.prefix}/members/{member}"

    def owner_key(self, asset: Asset) -> str:
        return f"{self.prefix}/owners/{asset[0]}/{asset[1]}"

    def session_key(self, member: str) -> str:
        return f"{self.prefix}/sessions/{member}"

    def adopted_key(self, member: str) -> str:
        return f"{self.prefix}/adopted/{member}"

    # --- what the alarm service asks --------------------------------------------------

    def evaluates(self, site: str, asset: str) -> bool:
        """Hot standby: every member evaluates every asset (and learns of it here)."""
        if site != COLLECTORS_SITE:
            self.assets.add((site, asset))
        return True

    def owns(self, site: str, asset: str) -> bool:
        """This member may commit and send for the asset now: it holds the claim, is not
        handing it over, and its lease has time left by its own clock."""
        if site == COLLECTORS_SITE:
            return asset == self.me
        key = (site, asset)
        return (
            key in self._claims
            and key not in self._leaving
            and time.monotonic() < self._valid_until
        )

    def holds(self, site: str, asset: str) -> bool:
        """This member holds the asset's claim and keeps it, whatever its clock says of
        the lease: what it cannot act on now it must catch up on once it owns it again."""
        key = (site, asset)
        return key in self._claims and key not in self._leaving

    def fence(self, site: str, asset: str) -> Compare | None:
        """The compare every commit for the asset carries; None: not ours."""
        revision = self._claims.get((site, asset))
        if revision is None:
            return None
        return Compare(self.owner_key((site, asset)), "create", "==", revision)

    def owner(self, site: str, asset: str) -> str | None:
        """Who holds the asset, as last read (None: nobody)."""
        if (site, asset) in self._claims:
            return self.me
        return self.holders.get((site, asset))

    def api_of(self, member: str) -> str | None:
        api = self.member_info.get(member, {}).get("api")
        return api if isinstance(api, str) else None

    def owned(self) -> list[Asset]:
        return [asset for asset in self._claims if asset not in self._leaving]

    def unowned(self) -> list[Asset]:
        """Known assets that nobody holds."""
        return sorted(asset for asset in self.assets if asset not in self.holders)

    @property
    def lease_valid(self) -> bool:
        return self._lease != 0 and time.monotonic() < self._valid_until

    # --- membership -------------------------------------------------------------------

    async def join(self) -> None:
        """A new lease, and this member's key on it; CoordinationError if the id is live."""
        etcd = self.etcd
        began = time.monotonic()
        lease = await etcd.call(etcd.grant(self.ttl_s))
        key = self.member_key(self.me)
        created = await etcd.call(
            etcd.txn(
                Txn(
                    [Compare(key, "create", "==", 0)],
                    [Put(key, self._info(), lease), Put(self.session_key(self.me), b"")],
                )
            )
        )
        if not created:
            await etcd.call(etcd.revoke(lease))
            raise CoordinationError(
                f"collector id {self.me!r} is live already ({key} exists in etcd): another "
                f"collector with this id runs, or a killed one's lease has not ended yet "
                f"(wait etcd.ttl_s = {self.ttl_s} s)"
            )
        self._lease = lease
        self._renewed_at = began
        self._valid_until = began + self.ttl_s
        self.reachable = True
        # assets with stored alarms, heard of or not: a silent one's alarms need an owner
        cut = len(self.prefix) + len("/alarms/")
        for entry in await etcd.call(etcd.get_prefix(f"{self.prefix}/alarms/")):
            site, asset, _alarm = entry.key[cut:].split("/", 2)
            self.assets.add((site, asset))
        log.info("joined the collectors", member=self.me, lease=f"{lease:x}", ttl_s=self.ttl_s)

    async def peer_secret(self) -> str:
        """The group's secret for commands one member passes on to another
        (:mod:`collector.alarms.forward`): made by the first member to ask, kept in etcd
        under ``<prefix>/peer-secret`` (whoever can read that could already rewrite the
        alarms themselves)."""
        etcd = self.etcd
        key = f"{self.prefix}/peer-secret"
        fresh = secrets.token_urlsafe(32)
        await etcd.call(
            etcd.txn(Txn([Compare(key, "create", "==", 0)], [Put(key, fresh.encode())]))
        )
        entry = await etcd.call(etcd.get(key))
        if entry is None:
            raise EtcdError(f"{key} vanished just after it was made")
        return entry.value.decode()

    async def session_free(self, timeout_s: float) -> str | None:
        """Wait until no other member drains this member's storage session (it hands it
        back on its next refresh, seeing this member live); the adopter still holding it
        after ``timeout_s``, or None."""
        etcd, key = self.etcd, self.adopted_key(self.me)
        deadline = time.monotonic() + timeout_s
        said = False
        while True:
            entry = await etcd.call(etcd.get(key))
            if entry is None:
                return None
            if time.monotonic() >= deadline:
                return entry.value.decode()
            if not said:
                log.info("waiting for this collector's MQTT session to be handed back",
                         adopter=entry.value.decode())  # fmt: skip
                said = True
            await asyncio.sleep(self.refresh_s)

    async def refresh(self) -> None:
        """Renew, read, claim and release, adopt and hand back: one round, every
        ``refresh_s`` (collector.main). etcd errors are logged once per outage, never
        raised."""
        try:
            await self._renew()
            await self._read()
            await self._rebalance()
            await self._adopt()
        except (EtcdError, CoordinationError) as exc:
            self._unreachable(str(exc))
            if not self.lease_valid:
                await self._stop_draining()
        else:
            if not self.reachable:
                log.info("etcd reachable again", member=self.me)
            self.reachable, self.unreachable_since = True, None

    async def leave(self) -> None:
        """A clean stop: hand every asset back at once (revoking the lease deletes the
        member key and the claims)."""
        if self._lease:
            lease, self._lease = self._lease, 0
            self._drop(list(self._claims))
            for member in sorted(self.adopted):
                await self._let_go(member)
            try:
                await self.etcd.call(self.etcd.revoke(lease))
            except EtcdError as exc:
                log.warning("lease not revoked; it ends by itself", reason=str(exc))

    async def _renew(self) -> None:
        etcd = self.etcd
        if not self._lease:
            await self.join()
            return
        if time.monotonic() - self._renewed_at < self.ttl_s / 3:
            return
        began = time.monotonic()
        ttl = await etcd.call(etcd.keepalive(self._lease))
        if ttl <= 0:
            log.error("lease ended; taking part again with a new one", member=self.me,
                      assets=len(self._claims))  # fmt: skip
            self._lease = 0
            self._drop(list(self._claims))
            await self._stop_draining()
            await self.join()
            return
        self._renewed_at = began
        self._valid_until = began + ttl

    async def _read(self) -> None:
        etcd = self.etcd
        members = await etcd.call(etcd.get_prefix(f"{self.prefix}/members/"))
        owners = await etcd.call(etcd.get_prefix(f"{self.prefix}/owners/"))
        cut = len(self.prefix) + len("/members/")
        self.member_info = {}
        for entry in members:
            try:
                info = json.loads(entry.value)
            except ValueError:
                info = {}
            self.member_info[entry.key[cut:]] = info if isinstance(info, dict) else {}
        self.members = tuple(sorted(self.member_info))
        cut = len(self.prefix) + len("/owners/")
        holders: dict[Asset, str] = {}
        mine: dict[Asset, int] = {}
        for entry in owners:
            site, _, asset = entry.key[cut:].partition("/")
            holders[(site, asset)] = holder = entry.value.decode()
            if holder == self.me and entry.lease == self._lease:
                mine[(site, asset)] = entry.create
        self.holders = holders
        lost = [asset for asset in self._claims if self._claims[asset] != mine.get(asset)]
        if lost:
            log.warning("assets taken away", member=self.me, assets=_names(lost))
            self._drop(lost)

    async def _rebalance(self) -> None:
        """Claim what should be ours and is free; release what should be another's."""
        if not self.lease_valid or not self.members:
            return
        members = self.members if self.me in self.members else (*self.members, self.me)
        gained: list[Asset] = []
        for asset in sorted(self.assets | set(self.holders)):
            should = owner_of(asset[0], asset[1], members)
            holder = self.holders.get(asset)
            if should == self.me and holder is None:
                if await self._claim(asset):
                    gained.append(asset)
            elif asset in self._claims and should != self.me:
                await self._release(asset)
        if gained:
            log.info("assets taken", member=self.me, assets=_names(gained))
            self.on_gain(gained)

    async def _claim(self, asset: Asset) -> bool:
        etcd, key = self.etcd, self.owner_key(asset)
        taken = await etcd.call(
            etcd.txn(
                Txn(
                    [Compare(key, "create", "==", 0)],
                    [Put(key, self.me.encode(), self._lease)],
                )
            )
        )
        if not taken:
            return False
        entry = await etcd.call(etcd.get(key))
        if entry is None or entry.value.decode() != self.me:
            return False  # gone already (our lease ended in between)
        self._claims[asset] = entry.create
        self.holders[asset] = self.me
        return True

    async def _release(self, asset: Asset) -> None:
        """Stop new work on the asset; delete the claim once no delivery of it is in
        flight (a mark after the release would fail its fence, and the new owner would
        send that notice again)."""
        if asset not in self._leaving:
            self._leaving.add(asset)
            self.on_loss([asset])
        if self.busy(asset):
            return
        fence = self.fence(*asset)
        if fence is not None:
            await self.etcd.call(self.etcd.txn(Txn([fence], [Delete(self.owner_key(asset))])))
        self._claims.pop(asset, None)
        self._leaving.discard(asset)
        self.holders.pop(asset, None)
        log.info("asset handed over", member=self.me, asset="/".join(asset))

    async def _adopt(self) -> None:
        """Drain the storage sessions of dead members this member should; hand back
        those whose member is live again (or that another member holds now)."""
        if not self.lease_valid:
            return
        etcd = self.etcd
        cut = len(self.prefix) + len("/sessions/")
        known = {e.key[cut:] for e in await etcd.call(etcd.get_prefix(f"{self.prefix}/sessions/"))}
        cut = len(self.prefix) + len("/adopted/")
        held = {
            e.key[cut:]: e.value.decode()
            for e in await etcd.call(etcd.get_prefix(f"{self.prefix}/adopted/"))
        }
        live = set(self.members) | {self.me}
        for member in sorted(self.adopted):
            if member in live or held.get(member) != self.me:
                await self._let_go(member)
        for member in sorted(known - live - set(held)):
            if owner_of("sessions", member, sorted(live)) != self.me:
                continue
            key = self.adopted_key(member)
            taken = await etcd.call(
                etcd.txn(
                    Txn(
                        [
                            Compare(key, "create", "==", 0),
                            Compare(self.member_key(member), "create", "==", 0),
                        ],
                        [Put(key, self.me.encode(), self._lease)],
                    )
                )
            )
            if taken:
                log.warning("draining a dead collector's MQTT session", member=self.me,
                            dead=member)  # fmt: skip
                self.adopted.add(member)
                await self.on_adopt(member)

    async def _stop_draining(self) -> None:
        """The lease is over: the claims on adopted sessions went with it."""
        for member in sorted(self.adopted):
            self.adopted.discard(member)
            await self.on_release(member)

    async def _let_go(self, member: str) -> None:
        """Stop draining ``member``'s session, then give up the claim on it."""
        self.adopted.discard(member)
        await self.on_release(member)
        key = self.adopted_key(member)
        try:
            await self.etcd.call(
                self.etcd.txn(Txn([Compare(key, "value", "==", self.me.encode())], [Delete(key)]))
            )
        except EtcdError as exc:  # it ends with the lease anyway
            log.warning("session claim not deleted", dead=member, reason=str(exc))
        log.info("dead collector's MQTT session handed back", member=self.me, to=member)

    def _drop(self, assets: Iterable[Asset]) -> None:
        assets = [a for a in assets if a in self._claims]
        for asset in assets:
            self._claims.pop(asset, None)
            self._leaving.discard(asset)
        if assets:
            self.on_loss(assets)

    def _unreachable(self, reason: str) -> None:
        if self.reachable:
            left_s = round(max(0.0, self._valid_until - time.monotonic()), 1)
            log.error("etcd unreachable; standing down when the lease's time is up",
                      member=self.me, reason=reason, lease_left_s=left_s)  # fmt: skip
            self.unreachable_since = time.monotonic()
        self.reachable = False
        if self._claims and not self.lease_valid:
            log.error("standing down: lease over, etcd unreachable", member=self.me,
                      assets=len(self._claims))  # fmt: skip
            self._lease = 0
            self._drop(list(self._claims))

    # --- the collector's own alarms ---------------------------------------------------

    def conditions(self, now_ns: int) -> list[ConditionChange]:
        """``coordination_lost`` (etcd unreachable for two refreshes) and
        ``unowned_assets`` (an asset nobody has held for two refreshes, while etcd
        answers), as condition changes when they start or end."""
        now = time.monotonic()
        grace = 2 * self.refresh_s
        lost = self.unreachable_since is not None and now - self.unreachable_since >= grace
        unowned = self.unowned() if self.reachable else []
        self._unowned_since = {a: self._unowned_since.get(a, now) for a in unowned}
        stuck = sorted(a for a, since in self._unowned_since.items() if now - since >= grace)
        changes = []
        if lost != self._raised[COORDINATION_RULE]:
            text = (
                f"collector {self.me} cannot reach etcd: it commits and sends nothing for "
                "the assets it owned"
                if lost
                else f"collector {self.me} reaches etcd again"
            )
            changes.append(self._own_change(COORDINATION_RULE, "etcd", lost, 0, text, now_ns))
        if bool(stuck) != self._raised[UNOWNED_RULE] and (stuck or not lost):
            names = ", ".join(_names(stuck[:10])) + (" ..." if len(stuck) > 10 else "")
            text = (
                f"{len(stuck)} assets have no collector: {names}"
                if stuck
                else "every asset has a collector"
            )
            changes.append(
                self._own_change(UNOWNED_RULE, "assets", bool(stuck), len(stuck), text, now_ns)
            )
        return changes

    def _own_change(  # noqa: PLR0917 - one alarm's fields
        self, rule: str, device: str, active: bool, value: int, text: str, now_ns: int
    ) -> ConditionChange:
        self._raised[rule] = active
        log.log(40 if active else 20, "coordination alarm", rule=rule, active=active, message=text)
        return ConditionChange(
            rule=rule, site=COLLECTORS_SITE, asset=self.me, device=device, active=active,
            suppressed=False, value=float(value), limit=0.0, priority="high", ts_ns=now_ns,
            message=text, type="coordination",
        )  # fmt: skip


async def _nothing(_member: str) -> None:
    return None


def _names(assets: Iterable[Asset]) -> list[str]:
    return ["/".join(asset) for asset in assets]
