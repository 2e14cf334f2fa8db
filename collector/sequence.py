"""Sequence accounting: gaps and duplicates in each agent's message numbers.

Every agent numbers its messages per boot (``boot``, ``seq``). Arrival order is not
sequence order: after an outage an agent sends live data first and replays its backlog
behind it. So a missing number is only *pending* at first; it becomes a gap when it is
still missing ``grace_s`` after a later number arrived. A number seen twice is a
duplicate (a redelivery after a collector restart, or a replay of a message whose
PUBACK was lost) - harmless for storage, worth counting.

A hole can be proven lost sooner (:meth:`SequenceTracker.confirm`): when the agent,
in a live metrics message that arrived ``settle_s`` or more after the hole appeared,
reports an empty spool, everything it made before was acknowledged by the broker and
should have been delivered; what has not come was lost on the way (see
:mod:`collector.loss`).

This works on the whole stream of an agent, i.e. for a collector that is not in a
shared-subscription group. In a group each collector sees only its share of every
agent's numbers, so the tracker runs in the alarm session, which sees them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

MAX_PENDING = 1_000_000  # missing numbers held per tracker before they count as gaps at once
FORGET_BOOT_S = 3600.0  # a boot silent this long is forgotten (its agent restarted long ago)


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages of one agent boot that will never arrive."""

    agent: str
    boot: str
    count: int
    where: str


@dataclass(slots=True)
class _Boot:
    highest: int
    last_seen_s: float
    pending: dict[int, float] = field(default_factory=dict)  # seq -> when it became missing


class SequenceTracker:
    def __init__(self, grace_s: float = 300.0) -> None:
        self.grace_s = grace_s
        self.gaps = 0
        self.duplicates = 0
        self._boots: dict[tuple[str, str], _Boot] = {}
        self._pending_total = 0
        self._lost: list[Gap] = []

    def observe(self, agent: str, boot: str, seq: int, now_s: float) -> None:
        key = (agent, boot)
        state = self._boots.get(key)
        if state is None:
            self._boots[key] = _Boot(seq, now_s)
            return
        state.last_seen_s = now_s
        if seq > state.highest:
            room = MAX_PENDING - self._pending_total
            missing = range(state.highest + 1, seq)
            for number in missing[:room]:
                state.pending[number] = now_s
            self._pending_total += min(len(missing), max(room, 0))
            if len(missing) > room:
                self._report(agent, boot, len(missing) - max(room, 0), "too many missing")
            state.highest = seq
        elif state.pending.pop(seq, None) is not None:
            self._pending_total -= 1  # a late arrival (a replay): fills its hole
        else:
            self.duplicates += 1
            if self.duplicates & (self.duplicates - 1) == 0:  # 1, 2, 4 ...: a line, not a flood
                log.info(
                    "duplicate messages", agent=agent, boot=boot, seq=seq, total=self.duplicates
                )

    def expire(self, now_s: float) -> None:
        """Turn numbers missing longer than ``grace_s`` into gaps; forget silent boots."""
        for (agent, boot), state in list(self._boots.items()):
            overdue = sorted(
                s for s, since in state.pending.items() if now_s - since >= self.grace_s
            )
            for number in overdue:
                del state.pending[number]
            self._pending_total -= len(overdue)
            if overdue:
                self._report(agent, boot, len(overdue), f"seq {overdue[0]}..{overdue[-1]}")
            if now_s - state.last_seen_s > FORGET_BOOT_S:
                self._pending_total -= len(state.pending)
                del self._boots[(agent, boot)]

    def confirm(self, agent: str, boot: str, now_s: float, settle_s: float) -> None:
        """The agent's spool is empty (a live report that arrived at ``now_s``): numbers
        of this boot missing since ``settle_s`` before are lost, now."""
        state = self._boots.get((agent, boot))
        if state is None or not state.pending:
            return
        certain = sorted(s for s, since in state.pending.items() if now_s - since >= settle_s)
        for number in certain:
            del state.pending[number]
        self._pending_total -= len(certain)
        if certain:
            where = f"seq {certain[0]}..{certain[-1]}, its spool empty"
            self._report(agent, boot, len(certain), where)

    def drain_lost(self) -> list[Gap]:
        """The gaps reported since the last call."""
        lost, self._lost = self._lost, []
        return lost

    @property
    def pending(self) -> int:
        return self._pending_total

    def _report(self, agent: str, boot: str, count: int, where: str) -> None:
        self._lost.append(Gap(agent, boot, count, where))
        self.gaps += count
        log.warning(
            "sequence gap: messages never arrived",
            agent=agent,
            boot=boot,
            missing=count,
            where=where,
            grace_s=self.grace_s,
        )
