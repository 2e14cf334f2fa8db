"""Lost messages become alarms, as soon as the loss is certain.

Two witnesses, both outside the collector's own code path:

* **The broker's drop counter.** mosquitto counts every message it threw away - a
  client's queue full (``max_queued_messages``), a message too large - in
  ``$SYS/broker/publish/messages/dropped``, published every ``sys_interval`` (10 s by
  default). The first value a collector sees is its baseline; any rise after it is
  loss. The counter is broker-wide: it also counts what other subscribers lost, which an
  operator wants to hear about just the same. The counter going down means the broker
  restarted: a new baseline.
* **Sequence gaps that cannot fill any more.** Agents number their messages
  (:mod:`collector.sequence`). A missing number may still come (an agent replays its
  backlog after live data), so it is only *pending* - until the agent, in a live
  metrics message received at least ``settle_s`` after the hole appeared, reports an
  empty spool. Then every message it made before that report has been acknowledged by
  the broker, and one that has not reached the collector was lost on the way. Holes
  older than ``sequence_grace_s`` count as lost without that proof.

Each becomes a condition of a built-in alarm (high priority), cleared ``clear_after_s``
after the last loss, through the same ISA-18.2 lifecycle and channels as every other
alarm: ``broker_messages_dropped`` on ``derrick/broker/queue`` and
``agent_messages_lost`` on ``agents/<agent>/sequence`` (owned, in a group, by the
collector owning that agent). Pure: no clock and no I/O; times come in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from derrick.alarms.engine import ConditionChange
from derrick.alarms.rules import BROKER_RULE, GAP_RULE

BROKER_ALARM = ("derrick", "broker", "queue")  # site, asset, device of the broker alarm
AGENTS_SITE = "agents"
GAP_DEVICE = "sequence"
PRIORITY = "high"
NS = 1_000_000_000


@dataclass(slots=True)
class _Episode:
    """One alarm's losses since it became active."""

    lost: int = 0
    last_ns: int = 0


@dataclass
class LossWatch:
    clear_after_s: float = 300.0
    lost_total: int = 0
    """Messages lost since the start, both witnesses together."""
    _baseline: int | None = None
    _active: dict[tuple[str, str, str, str], _Episode] = field(default_factory=dict)

    @property
    def watching_broker(self) -> bool:
        """A value of the broker's drop counter has come."""
        return self._baseline is not None

    def broker_counter(self, total: int, now_ns: int) -> list[ConditionChange]:
        """A new value of the broker's drop counter."""
        previous, self._baseline = self._baseline, total
        if previous is None or total <= previous:
            return []  # the baseline, or a restarted broker
        lost = total - previous
        return [self._lost((BROKER_RULE, *BROKER_ALARM), lost, now_ns, "dropped by the broker")]

    def messages_lost(
        self, agent: str, boot: str, count: int, where: str, now_ns: int
    ) -> list[ConditionChange]:
        """``count`` messages of ``agent`` (boot ``boot``) will never arrive."""
        key = (GAP_RULE, AGENTS_SITE, agent, GAP_DEVICE)
        return [self._lost(key, count, now_ns, f"of agent {agent} (boot {boot}, {where})")]

    def tick(self, now_ns: int) -> list[ConditionChange]:
        """Clear the alarms whose last loss is ``clear_after_s`` old."""
        due = [
            key
            for key, episode in self._active.items()
            if now_ns - episode.last_ns >= self.clear_after_s * NS
        ]
        return [self._cleared(key, now_ns) for key in due]

    def restore(self, alarms: list[tuple[str, str, str, str]], now_ns: int) -> None:
        """Loss alarms (rule, site, asset, device) standing when the collector stopped:
        cleared ``clear_after_s`` from now unless more is lost."""
        for key in alarms:
            if key[0] in (BROKER_RULE, GAP_RULE):
                self._active[key] = _Episode(0, now_ns)

    def _lost(
        self, key: tuple[str, str, str, str], count: int, now_ns: int, what: str
    ) -> ConditionChange:
        episode = self._active.setdefault(key, _Episode())
        episode.lost += count
        self.lost_total += count
        episode.last_ns = now_ns
        message = f"{episode.lost} messages lost, {what}"
        return self._change(key, True, now_ns, message, episode.lost)

    def _cleared(self, key: tuple[str, str, str, str], now_ns: int) -> ConditionChange:
        episode = self._active.pop(key)
        quiet = f"no loss for {self.clear_after_s:.0f} s"
        message = f"{episode.lost} messages lost; {quiet}"
        return self._change(key, False, now_ns, message, episode.lost)

    @staticmethod
    def _change(
        key: tuple[str, str, str, str], active: bool, now_ns: int, message: str, lost: int
    ) -> ConditionChange:
        rule, site, asset, device = key
        return ConditionChange(
            rule=rule,
            site=site,
            asset=asset,
            device=device,
            active=active,
            suppressed=False,
            value=float(lost),
            limit=0.0,
            priority=PRIORITY,
            ts_ns=now_ns,
            message=message,
            type="loss",
            agent=asset if rule == GAP_RULE else "",
        )
