"""Alarm-system KPIs after ISA-18.2 / EEMUA 191: flood, chattering, standing, top alarms.

Pure: no I/O, no clock reads, no logging. Every input carries its time in ns; the caller
logs the chattering starts/stops it is handed and writes :meth:`AlarmKpis.points` (the
collector encodes them as line protocol with :func:`collector.lineproto.encode_point`).

Inputs are the lifecycle's effects (:mod:`derrick.alarms.lifecycle`):

* every :class:`Annunciate` is one annunciation (flood rate, top alarms);
* an :class:`Annunciate` with reason ``NEW`` or ``REACTIVATED`` is one *activation* (the
  process went bad again): chattering counts these. Re-announcements after shelving,
  suppression or out-of-service are annunciations but not activations; one with reason
  ``OFFLINE`` (a whole episode that happened while an agent's link was down) is an
  activation already over: counted at its start, or when it is heard of if the KPIs'
  clock is past that already (it never runs backwards);
* a :class:`Clear` ends the alarm's excursion (its activation time is forgotten). It does
  not count towards chattering: "≥ 3 activations within 60 s" would otherwise be reached
  by two activations and the clear between them;
* a :class:`Journal` is ignored.

Decisions
---------
* Time never runs backwards. Every call's time is clamped to the newest time seen, so an
  effect older than that (a late, replayed message) is counted at the newest time.
* Windowed annunciation counts (``alarms_per_window``, :meth:`AlarmKpis.top`) are kept in
  600 steps of ``window_s / 600`` (1 s by default), each holding a count per alarm: memory
  is bounded by the steps, not by the annunciation rate. An annunciation counts from its
  time until ``window_s`` after the start of its step (up to one step early).
* Flood: more than ``flood_per_window`` annunciations in the last ``window_s``.
  ``flood_s_total`` is exact at step resolution whatever the call rate: the flood is
  integrated up to the instant the count fell back, not up to the next call.
* Chattering: an alarm starts chattering with the activation that makes
  ``chatter_transitions`` of them within ``chatter_window_s`` (strictly less than the window
  between the first and the last). It stops when ``chatter_window_s`` passes without an
  activation (hysteresis: one slow activation keeps it chattering, the status itself does
  not flap). Only the last ``chatter_transitions`` activations of an alarm are kept.
  :meth:`AlarmKpis.observe` returns the starts, :meth:`AlarmKpis.stopped_chattering` the
  stops, each alarm once per episode.
* Standing: an alarm annunciated and active (ACTIVE_UNACKED or ACTIVE_ACKED) for more than
  ``standing_after_s``, measured from its activation. ``last_transition_ns`` is no good for
  that (an acknowledgement moves it), so the activation time is taken from the
  ``NEW``/``REACTIVATED`` annunciation; a re-announcement after hiding keeps an activation
  time already known. An alarm already active when this object was created (restored from
  the state store) falls back to the record's ``last_transition_ns`` at the first snapshot
  that sees it: after a restart its age is under-estimated by the time between its
  activation and its last acknowledgement.
* The per-state counts partition the records by ``state``: an alarm that is both shelved
  and suppressed counts once, as suppressed (the strongest hiding state).
* The KPIs are per collector, which stands in for "per operator" (one control room).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import Field

from derrick.alarms.lifecycle import (
    NS_PER_S,
    AlarmRecord,
    AnnounceReason,
    Annunciate,
    Clear,
    Effect,
    LifecycleState,
)
from derrick.plumbing.configfile import StrictModel
from derrick.wire.ids import AlarmId

WINDOW_STEPS = 600  # resolution of the windowed counts: window_s / WINDOW_STEPS

_ACTIVATIONS = frozenset({AnnounceReason.NEW, AnnounceReason.REACTIVATED})
_ANNUNCIATED_ACTIVE = frozenset({LifecycleState.ACTIVE_UNACKED, LifecycleState.ACTIVE_ACKED})
_HIDDEN_COUNTS = {
    LifecycleState.SHELVED: "shelved",
    LifecycleState.SUPPRESSED_BY_DESIGN: "suppressed",
    LifecycleState.OUT_OF_SERVICE: "out_of_service",
}

Kpi = float | int | bool
"""A KPI's value; its Python type is its InfluxDB field type (int: integer, ``12i``)."""


@dataclass(frozen=True, slots=True)
class Point:
    """One InfluxDB point: what the collector writes (tags by name, fields in order)."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, Kpi]
    ts_ns: int


class KpiSettings(StrictModel):
    """``alarms.kpi`` in the collector config."""

    interval_s: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        allow_inf_nan=False,
        description="how often the KPIs are written (measurements alarm_kpi, alarm_top)",
    )
    window_s: float = Field(
        default=600.0,
        ge=60,
        le=86400,
        allow_inf_nan=False,
        description="window of the annunciation rate, flood and top alarms (EEMUA: 10 min)",
    )
    flood_per_window: int = Field(
        default=10,
        ge=1,
        le=1_000_000,
        description="more annunciations than this within window_s is an alarm flood",
    )
    chatter_transitions: int = Field(
        default=3,
        ge=2,
        le=100,
        description="activations (new or reactivated annunciations) within "
        "chatter_window_s that make an alarm chattering",
    )
    chatter_window_s: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        allow_inf_nan=False,
        description="window of the chattering count; an alarm stops chattering after "
        "this long without an activation",
    )
    standing_after_s: float = Field(
        default=86400.0,
        ge=60,
        le=30 * 86400,
        allow_inf_nan=False,
        description="an alarm active (and annunciated) for longer than this is standing",
    )
    top_n: int = Field(
        default=10,
        ge=1,
        le=100,
        description="how many of the most frequent alarms of the window are written",
    )


def _ns(seconds: float) -> int:
    return round(seconds * NS_PER_S)


class AlarmKpis:
    """Alarm KPIs of one collector. Feed :meth:`observe` with every batch of lifecycle
    effects; every ``interval_s`` call :meth:`stopped_chattering` (log them) and
    :meth:`points` (write them). Not thread-safe; cheap enough for the event loop."""

    def __init__(self, settings: KpiSettings | None = None) -> None:
        self.settings = settings or KpiSettings()
        self._window_ns = _ns(self.settings.window_s)
        self._step_ns = max(1, self._window_ns // WINDOW_STEPS)
        self._chatter_ns = _ns(self.settings.chatter_window_s)
        self._standing_ns = _ns(self.settings.standing_after_s)
        self._now: int | None = None  # newest time seen
        # Windowed annunciations: (step index, {alarm_id: count}) oldest first, plus totals.
        self._steps: deque[tuple[int, dict[str, int]]] = deque()
        self._counts: dict[str, int] = {}
        self._total = 0
        self._in_flood = False
        self._flood_ns = 0
        # Chattering: the last chatter_transitions activation times per alarm.
        self._activations: dict[str, deque[int]] = {}
        self._chattering: set[str] = set()
        self._stopped: list[str] = []  # stops noticed by observe, handed out later
        self._activated_at: dict[str, int] = {}  # standing: start of the current excursion

    # ------------------------------------------------------------------ inputs

    def observe(self, effects: Iterable[Effect]) -> list[str]:
        """Count lifecycle effects; return the alarm ids that started chattering with them."""
        started: list[str] = []
        for effect in effects:
            if isinstance(effect, Annunciate):
                now = self._advance(effect.ts_ns)
                self._annunciated(effect.alarm_id, now)
                if effect.reason is AnnounceReason.OFFLINE:  # an activation, over already
                    if self._activated(effect.alarm_id, now):
                        started.append(effect.alarm_id)
                elif effect.reason in _ACTIVATIONS:
                    self._activated_at[effect.alarm_id] = effect.ts_ns
                    if self._activated(effect.alarm_id, now):
                        started.append(effect.alarm_id)
                else:
                    self._activated_at.setdefault(effect.alarm_id, effect.ts_ns)
            elif isinstance(effect, Clear):
                self._advance(effect.ts_ns)
                self._activated_at.pop(effect.alarm_id, None)
        return started

    def _annunciated(self, alarm_id: str, now: int) -> None:
        step = now // self._step_ns
        if self._steps and self._steps[-1][0] == step:
            counts = self._steps[-1][1]
        else:
            counts = {}
            self._steps.append((step, counts))
        counts[alarm_id] = counts.get(alarm_id, 0) + 1
        self._counts[alarm_id] = self._counts.get(alarm_id, 0) + 1
        self._total += 1
        self._in_flood = self._total > self.settings.flood_per_window

    def _activated(self, alarm_id: str, now: int) -> bool:
        """Record an activation; True if the alarm starts chattering with it."""
        times = self._activations.get(alarm_id)
        if times is None:
            times = self._activations[alarm_id] = deque(maxlen=self.settings.chatter_transitions)
        if alarm_id in self._chattering and now - times[-1] >= self._chatter_ns:
            # It went quiet for a whole window and nobody asked: that episode is over.
            self._chattering.discard(alarm_id)
            self._stopped.append(alarm_id)
        times.append(now)
        if alarm_id in self._chattering:
            return False
        if len(times) == times.maxlen and now - times[0] < self._chatter_ns:
            self._chattering.add(alarm_id)
            return True
        return False

    def _advance(self, now_ns: int) -> int:
        """Move the clock to ``now_ns`` (never backwards): expire steps, integrate flood."""
        if self._now is None:
            self._now = now_ns
            return now_ns
        now = max(now_ns, self._now)
        while self._steps and self._steps[0][0] * self._step_ns + self._window_ns <= now:
            step, counts = self._steps.popleft()
            expiry = step * self._step_ns + self._window_ns
            if self._in_flood:
                self._flood_ns += expiry - self._now
            self._now = expiry
            for alarm_id, n in counts.items():
                left = self._counts[alarm_id] - n
                if left:
                    self._counts[alarm_id] = left
                else:
                    del self._counts[alarm_id]
                self._total -= n
            self._in_flood = self._total > self.settings.flood_per_window
        if self._in_flood:
            self._flood_ns += now - self._now
        self._now = now
        return now

    # ------------------------------------------------------------------ outputs

    def chattering(self, now_ns: int) -> set[str]:
        """Alarms chattering at ``now_ns`` (changes nothing)."""
        now = now_ns if self._now is None else max(now_ns, self._now)
        return {
            alarm_id
            for alarm_id in self._chattering
            if now - self._activations[alarm_id][-1] < self._chatter_ns
        }

    def stopped_chattering(self, now_ns: int) -> list[str]:
        """Alarms that stopped chattering since the last call (each once per episode), and
        forget activations too old to matter. Call it every ``interval_s`` and log them."""
        now = self._advance(now_ns)
        stopped, self._stopped = self._stopped, []
        for alarm_id in sorted(self._chattering):
            if now - self._activations[alarm_id][-1] >= self._chatter_ns:
                self._chattering.discard(alarm_id)
                stopped.append(alarm_id)
        self._activations = {
            alarm_id: times
            for alarm_id, times in self._activations.items()
            if now - times[-1] < self._chatter_ns or alarm_id in self._chattering
        }
        return stopped

    def top(self, now_ns: int) -> list[tuple[str, int]]:
        """The ``top_n`` alarms annunciated most often in the last ``window_s``:
        ``(alarm_id, annunciations)``, most first, ties by alarm id."""
        self._advance(now_ns)
        return heapq.nsmallest(
            self.settings.top_n, self._counts.items(), key=lambda item: (-item[1], item[0])
        )

    def snapshot(self, now_ns: int, records: Iterable[AlarmRecord]) -> dict[str, Kpi]:
        """The KPIs at ``now_ns``. ``records`` must be every alarm record (the manager's
        ``records.values()``): activation times of alarms not active in it are dropped."""
        now = self._advance(now_ns)
        counts = dict.fromkeys(("active", "unacked", "standing", *_HIDDEN_COUNTS.values()), 0)
        activated_at: dict[str, int] = {}
        for record in records:
            counts["unacked"] += not record.acked
            hidden = _HIDDEN_COUNTS.get(record.state)
            if hidden:
                counts[hidden] += 1
            known = self._activated_at.get(record.alarm_id)
            if record.state in _ANNUNCIATED_ACTIVE:
                since = record.last_transition_ns if known is None else known
                activated_at[record.alarm_id] = since
                counts["active"] += 1
                counts["standing"] += now - since > self._standing_ns
            elif record.active and known is not None:
                activated_at[record.alarm_id] = known  # hidden but still active
        self._activated_at = activated_at
        return {
            "alarms_per_window": self._total,
            "in_flood": self._in_flood,
            "flood_s_total": self._flood_ns / NS_PER_S,
            "active": counts["active"],
            "unacked": counts["unacked"],
            "standing": counts["standing"],
            "shelved": counts["shelved"],
            "suppressed": counts["suppressed"],
            "out_of_service": counts["out_of_service"],
            "chattering": len(self.chattering(now)),
        }

    def points(self, collector_id: str, now_ns: int, records: Iterable[AlarmRecord]) -> list[Point]:
        """The points to write at ``now_ns``: one ``alarm_kpi`` (the snapshot: counts are
        integers, ``in_flood`` a boolean, ``flood_s_total`` a float) and one ``alarm_top``
        per top alarm (``count`` an integer, ``chattering`` a boolean), tagged with the
        alarm id and what can be read of its parts (:meth:`AlarmId.parts_of`)."""
        if not collector_id:
            raise ValueError("collector_id must not be empty")
        snapshot = self.snapshot(now_ns, records)
        chattering = self.chattering(now_ns)
        out = [Point("alarm_kpi", {"collector": collector_id}, snapshot, now_ns)]
        for alarm_id, count in self.top(now_ns):
            tags = {"alarm": alarm_id, "collector": collector_id, **AlarmId.parts_of(alarm_id)}
            fields: dict[str, Kpi] = {"count": count, "chattering": alarm_id in chattering}
            out.append(Point("alarm_top", tags, fields, now_ns))
        return out

    def footprint(self) -> dict[str, int]:
        """How much is held (for tests and debugging): window steps, alarms counted in the
        window, alarms with activation times, activation times, tracked activations."""
        return {
            "window_steps": len(self._steps),
            "window_alarms": len(self._counts),
            "chatter_alarms": len(self._activations),
            "chatter_times": sum(len(times) for times in self._activations.values()),
            "activation_times": len(self._activated_at),
        }

    @property
    def max_window_steps(self) -> int:
        """Upper bound of ``footprint()["window_steps"]``."""
        return self._window_ns // self._step_ns + 1
