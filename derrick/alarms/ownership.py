"""Which collector owns an asset's alarms: rendezvous hashing over the member list.

Telemetry is split between the collectors of a shared-subscription group message by
message, but an alarm needs every reading of its asset in one place, and its state in
exactly one. So each collector also reads the whole telemetry stream for alarms and
evaluates only the assets it owns. Ownership is the member with the highest hash of
``member + site/asset`` (highest random weight): every collector computes the same
owner from the same ``alarms.members`` list without talking to the others, and adding
or removing one member moves only that member's share of the assets.
"""

from __future__ import annotations

import hashlib


def _weight(member: str, site: str, asset: str) -> int:
    digest = hashlib.blake2b(f"{member}\0{site}/{asset}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(site: str, asset: str, members: list[str] | tuple[str, ...]) -> str:
    """The member that owns ``site/asset``; stable for a given member list."""
    if not members:
        raise ValueError("no members to own alarms")
    return max(members, key=lambda member: (_weight(member, site, asset), member))


class Ownership:
    """This collector's share of the assets, cached per asset."""

    def __init__(self, me: str, members: list[str] | tuple[str, ...]) -> None:
        if me not in members:
            raise ValueError(f"collector {me!r} is not one of the alarm members {list(members)}")
        self.me = me
        self.members = tuple(members)
        self._owner: dict[tuple[str, str], str] = {}

    def owner(self, site: str, asset: str) -> str:
        key = (site, asset)
        found = self._owner.get(key)
        if found is None:
            found = self._owner[key] = owner_of(site, asset, self.members)
        return found

    def owns(self, site: str, asset: str) -> bool:
        return len(self.members) == 1 or self.owner(site, asset) == self.me

    def evaluates(self, site: str, asset: str) -> bool:
        """A static member evaluates only what it owns (collectors that fail over
        evaluate every asset: collector.alarms.ha)."""
        return self.owns(site, asset)
