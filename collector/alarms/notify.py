"""Notify stage: alarm effects -> notices in the outbox -> one delivery worker per channel.

:class:`Router` turns lifecycle effects into :class:`~derrick.wire.payloads.AlarmNotice` s and
outbox rows: every notice goes to the built-in channels (the MQTT event stream, the
retained MQTT alarm state and the InfluxDB ``alarms`` journal) and to the channels of
every route whose priorities, site and asset match. It also makes the reminders and
escalations that time causes; their keys come from the alarm's history, so making them
twice (a restart) inserts nothing twice.

:class:`Deliverer` sends one channel's rows in order, retries with backoff while the
channel is down (order kept: a later notice never overtakes an earlier one), and groups
a burst of announcements from one asset into one ``flood`` notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any, Literal

import structlog
from pydantic import Field, model_validator

from collector.alarms.outbox import STATE_EVENT, Message, NewNotice, Outbox, Pending, fingerprint
from derrick.alarms.lifecycle import (
    HIDDEN,
    AlarmRecord,
    Annunciate,
    Clear,
    Effect,
    Journal,
)
from derrick.notify.settings import DeliveryError
from derrick.plumbing.configfile import StrictModel
from derrick.wire.ids import AlarmId, Ident
from derrick.wire.payloads import AlarmNotice, AlarmPriority, AlarmStateMessage, now_ns

log = structlog.get_logger(__name__)

NS = 1_000_000_000
EVENTS_CHANNEL = "_events"  # MQTT alarm-events stream, every notice
STATE_CHANNEL = "_state"  # MQTT retained alarm state, every change
JOURNAL_CHANNEL = "_journal"  # InfluxDB measurement ``alarms``, every notice
HISTORY_CHANNEL = "_history"  # InfluxDB measurement ``alarm_state``, every change
BUILT_IN = (EVENTS_CHANNEL, STATE_CHANNEL, JOURNAL_CHANNEL, HISTORY_CHANNEL)
PRIORITIES: tuple[AlarmPriority, ...] = ("critical", "high", "medium", "low")

RoutedEvent = Literal["announce", "clear", "reminder", "escalation", "journal"]


class RouteSettings(StrictModel):
    """Which notices reach which channels, and what happens while nobody acknowledges."""

    name: Ident
    priorities: list[AlarmPriority] = Field(
        default=list(PRIORITIES), min_length=1, description="alarm priorities this route takes"
    )
    site: str = Field(default="*", description="glob on the site")
    asset: str = Field(default="*", description="glob on the asset")
    events: list[RoutedEvent] = Field(
        default=["announce", "clear", "reminder", "escalation"],
        min_length=1,
        description="notice events sent: announce, clear, reminder, escalation, journal",
    )
    channels: list[Ident] = Field(min_length=1, description="channel names (alarms.channels)")
    reminder_s: float | None = Field(
        default=None, gt=0, description="remind this often while an alarm is unacknowledged"
    )
    escalate_after_s: float | None = Field(
        default=None, gt=0, description="escalate an alarm unacknowledged this long"
    )
    escalate_to: list[Ident] = Field(
        default_factory=list, description="channels for the escalation notice"
    )

    @model_validator(mode="after")
    def _escalation(self) -> RouteSettings:
        if (self.escalate_after_s is None) != (not self.escalate_to):
            raise ValueError("give escalate_after_s and escalate_to together")
        return self

    def matches(self, notice: AlarmNotice) -> bool:
        return (
            notice.priority in self.priorities
            and fnmatchcase(notice.site, self.site)
            and fnmatchcase(notice.asset, self.asset)
        )


class FloodSettings(StrictModel):
    """A burst of announcements from one asset becomes one message per channel."""

    window_s: float = Field(default=60.0, gt=0, description="length of the flood window")
    max_per_window: int = Field(
        default=3, ge=1, description="announcements of one asset sent singly per window"
    )
    exempt: list[AlarmPriority] = Field(
        default=["critical"], description="priorities never held back for grouping"
    )


class RetrySettings(StrictModel):
    min_s: float = Field(default=1.0, gt=0, description="first retry after a failed delivery")
    max_s: float = Field(default=60.0, gt=0, description="longest wait between retries")


def state_message(record: AlarmRecord, message: str) -> AlarmStateMessage:
    rule, site, asset, device = AlarmId.parse(record.alarm_id)
    return AlarmStateMessage(
        alarm_id=record.alarm_id,
        rule=rule,
        site=site,
        asset=asset,
        device=device,
        state=record.state.value,
        active=record.active,
        acked=record.acked,
        priority=record.priority,
        value=record.value,
        limit=record.limit,
        message=message,
        shelved_until_ns=record.shelved_until_ns,
        ts_ns=record.last_transition_ns,
    )


def console_view(record: AlarmRecord, message: str) -> dict[str, Any]:
    """An alarm as the operator API and console list it: its state message, plus what an
    operator needs to act on it (the longest shelve, latching) and who hid it and why."""
    return {
        **state_message(record, message).model_dump(),
        "latched": record.latched,
        "max_shelve_s": record.max_shelve_s,
        "suppressed": record.suppressed,
        "out_of_service": record.out_of_service,
        "shelved_by": record.shelved_by,
        "shelve_reason": record.shelve_reason,
        "removed_by": record.removed_by,
        "remove_reason": record.remove_reason,
    }


class Router:
    """Effects and elapsed time -> outbox rows (pure apart from its reminder memory)."""

    def __init__(
        self,
        routes: list[RouteSettings],
        messages: dict[str, str],
        announced: dict[str, int] | None = None,
    ) -> None:
        self.routes = routes
        self.messages = messages  # alarm id -> latest condition text (kept by the service)
        self.unacked_since: dict[str, int] = dict(announced or {})
        self._reminded: dict[tuple[str, str], int] = {}  # (alarm, route) -> reminders made

    # --- effects ----------------------------------------------------------------------

    def rows(self, effects: Iterable[Effect], changed: dict[str, AlarmRecord]) -> list[NewNotice]:
        """Rows for these effects, and a retained state row for every changed record."""
        rows: list[NewNotice] = []
        for effect in effects:
            record = changed.get(effect.alarm_id)
            if record is None:
                continue
            notice = self._notice(effect, record)
            if isinstance(effect, Annunciate):
                self.unacked_since[effect.alarm_id] = effect.ts_ns
            rows += self._route(notice, effect.ts_ns)
        for record in changed.values():
            if record.acked:
                self.unacked_since.pop(record.alarm_id, None)
            state = self._state_row(record)
            rows += [state, replace(state, channel=HISTORY_CHANNEL)]
        return rows

    def _notice(self, effect: Effect, record: AlarmRecord) -> AlarmNotice:
        rule, site, asset, device = AlarmId.parse(effect.alarm_id)
        common = {
            "alarm_id": effect.alarm_id, "rule": rule, "site": site, "asset": asset,
            "device": device, "priority": record.priority, "state": record.state.value,
            "message": self.messages.get(effect.alarm_id, rule), "ts_ns": effect.ts_ns,
        }  # fmt: skip
        if isinstance(effect, Annunciate):
            if effect.ended_ns is not None:
                common["message"] = _while_offline(effect, common["message"])
            return AlarmNotice(
                key=f"{effect.alarm_id}:announce:{effect.ts_ns}",
                event="announce",
                reason=effect.reason.value,
                value=effect.value,
                limit=effect.limit,
                ended_ns=effect.ended_ns,
                **common,
            )
        if isinstance(effect, Clear):
            return AlarmNotice(
                key=f"{effect.alarm_id}:clear:{effect.ts_ns}",
                event="clear",
                value=effect.value,
                limit=record.limit,
                **{**common, "message": f"back to normal (was: {common['message']})"},
            )
        assert isinstance(effect, Journal)
        return AlarmNotice(
            key=f"{effect.alarm_id}:{effect.action.value}:{effect.ts_ns}",
            event="journal",
            reason=effect.action.value,
            who=effect.who,
            comment=effect.comment,
            value=record.value,
            limit=record.limit,
            **common,
        )

    def _route(self, notice: AlarmNotice, now: int) -> list[NewNotice]:
        """The notice for the built-in channels and its routes' channels."""
        targets = [EVENTS_CHANNEL, JOURNAL_CHANNEL]
        for route in self.routes:
            if notice.event in route.events and route.matches(notice):
                targets += route.channels
        return _rows(notice, targets, now)

    def _state_row(self, record: AlarmRecord) -> NewNotice:
        message = state_message(record, self.messages.get(record.alarm_id, ""))
        return NewNotice(
            f"{record.alarm_id}:state:{record.last_transition_ns}:{fingerprint(message)}",
            STATE_CHANNEL,
            record.alarm_id,
            STATE_EVENT,
            record.priority,
            f"{message.site}/{message.asset}",
            message,
            record.last_transition_ns,
            record.last_transition_ns,
        )

    # --- time -------------------------------------------------------------------------

    def due(self, records: Iterable[AlarmRecord], now: int) -> list[NewNotice]:
        """Reminders and escalations for unacknowledged alarms, at most once each."""
        rows: list[NewNotice] = []
        for record in records:
            if record.acked or record.state in HIDDEN:
                continue
            since = self.unacked_since.setdefault(record.alarm_id, record.last_transition_ns)
            for route in self.routes:
                rows += self._reminder(record, route, since, now)
                rows += self._escalation(record, route, since, now)
        return rows

    def _reminder(
        self, record: AlarmRecord, route: RouteSettings, since: int, now: int
    ) -> list[NewNotice]:
        if route.reminder_s is None or "reminder" not in route.events:
            return []
        count = int((now - since) / (route.reminder_s * NS))
        key = (record.alarm_id, route.name)
        if count < 1 or self._reminded.get(key, 0) >= count:
            return []
        self._reminded[key] = count
        notice = self._timed(record, "reminder", f"{route.name}:{since}:{count}", now)
        if not route.matches(notice):
            return []
        return self._direct(notice, route.channels, now)

    def _escalation(
        self, record: AlarmRecord, route: RouteSettings, since: int, now: int
    ) -> list[NewNotice]:
        if route.escalate_after_s is None or now - since < route.escalate_after_s * NS:
            return []
        notice = self._timed(record, "escalation", f"{route.name}:{since}", now)
        if not route.matches(notice):
            return []
        return self._direct(notice, route.escalate_to, now)

    def _timed(self, record: AlarmRecord, event: str, suffix: str, now: int) -> AlarmNotice:
        rule, site, asset, device = AlarmId.parse(record.alarm_id)
        return AlarmNotice(
            key=f"{record.alarm_id}:{event}:{suffix}",
            event=event,  # type: ignore[arg-type]
            alarm_id=record.alarm_id,
            rule=rule,
            site=site,
            asset=asset,
            device=device,
            priority=record.priority,
            state=record.state.value,
            message=self.messages.get(record.alarm_id, rule),
            value=record.value,
            limit=record.limit,
            ts_ns=now,
        )

    @staticmethod
    def _direct(notice: AlarmNotice, channels: list[str], now: int) -> list[NewNotice]:
        """A timed notice: to the event stream, the journal and these channels only."""
        return _rows(notice, [EVENTS_CHANNEL, JOURNAL_CHANNEL, *channels], now)


def _while_offline(effect: Annunciate, message: str) -> str:
    """The text of an episode that happened while its agent was cut off: when, first."""
    start, end = (
        datetime.fromtimestamp(ts // NS, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        for ts in (effect.ts_ns, effect.ended_ns or effect.ts_ns)
    )
    return f"occurred while offline, {start} to {end[11:]} UTC: {message}"


def _rows(notice: AlarmNotice, channels: Iterable[str], now: int) -> list[NewNotice]:
    """One outbox row per channel (each channel once) for this notice."""
    group = f"{notice.site}/{notice.asset}"
    return [
        NewNotice(
            key=notice.key,
            channel=channel,
            alarm_id=notice.alarm_id,
            event=notice.event,
            priority=notice.priority,
            group=group,
            message=notice,
            created_ns=now,
            due_ns=now,
        )
        for channel in dict.fromkeys(channels)
    ]


Send = Callable[[Message], Awaitable[None]]
"""A channel's sender: delivers the message (or raises DeliveryError). The channels of
state rows get AlarmStateMessages, all others AlarmNotices."""


class Deliverer:
    """Sends one channel's outbox rows in order, with retries and flood grouping.

    ``send`` gets each row's message as the outbox read it back (or a flood notice made
    here), never the stored JSON."""

    def __init__(  # noqa: PLR0917 - wired once by the service
        self,
        channel: str,
        send: Send,
        outbox: Outbox,
        retry: RetrySettings,
        flood: FloodSettings | None,
        on_outcome: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.channel = channel
        self.send = send
        self.outbox = outbox
        self.retry = retry
        self.flood = flood
        self.wake = asyncio.Event()
        self.failures = 0  # consecutive
        self.retry_after_s: float | None = None
        self._recent: dict[str, deque[int]] = {}  # group -> send times inside the window
        self._flood_end: dict[str, int] = {}  # group -> when its held announcements go
        self._down_logged = False
        self._on_outcome = on_outcome
        self._stopping = False  # cancelled during a send (see _send_to_the_end)

    async def run(self) -> None:
        while True:
            rows = self.outbox.pending(self.channel)
            now = now_ns()
            due = [row for row in rows if row.due_ns <= now]
            if not due:
                next_due = min((row.due_ns for row in rows), default=now + NS)
                await self._sleep(min(1.0, max(0.0, (next_due - now) / NS)))
                continue
            if not await self._deliver(self._plan(due, now)):
                await self._backoff()
                self.retry_after_s = None

    async def _sleep(self, seconds: float) -> None:
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)

    async def _backoff(self) -> None:
        """Exponential with jitter; at least what the receiver asked for (Retry-After)."""
        delay = min(self.retry.max_s, self.retry.min_s * 2 ** min(self.failures - 1, 16))
        delay *= random.uniform(0.8, 1.0)
        if self.retry_after_s is not None:
            delay = max(delay, min(self.retry_after_s, self.retry.max_s))
        await asyncio.sleep(delay)

    async def _deliver(self, batches: list[tuple[Message, list[Pending]]]) -> bool:
        """Send each batch; False at the first retryable failure (the rest waits)."""
        for message, rows in batches:
            ids = [row.id for row in rows]
            try:
                stopping = await self._send_to_the_end(message)
            except DeliveryError as exc:
                if self._stopping:
                    self.outbox.mark_attempt(ids)
                    raise asyncio.CancelledError from exc
                if exc.retryable:  # the loop backs off; this row stays first in line
                    self.retry_after_s = exc.retry_after_s
                    self._failed(str(exc), rows)
                    self.outbox.mark_attempt(ids)
                    return False
                log.error("notification refused", channel=self.channel, key=rows[0].key,
                          reason=str(exc))  # fmt: skip
                self.outbox.mark_failed(ids, str(exc))
                self._outcome(rows, ok=False)
                continue
            delivered_at = now_ns()
            self.outbox.mark_delivered(ids, delivered_at)
            self._sent(rows, delivered_at)
            self._outcome(rows, ok=True)
            if self._down_logged:
                log.info("notification channel back", channel=self.channel, after=self.failures)
            self.failures, self._down_logged = 0, False
            if stopping:
                raise asyncio.CancelledError
        return True

    async def _send_to_the_end(self, message: Message) -> bool:
        """``send``, finished even if the collector stops meanwhile (True then, and the
        caller stops once it has marked the row): the receiver may have the notice
        already, and a row left pending would be sent again under the same key by a
        successor or the next start. The channel's own timeout bounds the wait; a
        second cancel gives up on it."""
        sending = asyncio.ensure_future(self.send(message))
        try:
            await asyncio.shield(sending)
        except asyncio.CancelledError:
            if sending.done() and sending.cancelled():
                raise
            self._stopping = True
            log.info("stopping: finishing the notification on its way", channel=self.channel)
            try:
                await asyncio.wait([sending])
            except asyncio.CancelledError:
                sending.cancel()
                raise
            sending.result()  # DeliveryError: the caller marks the attempt and stops
            return True
        return False

    def _failed(self, reason: str, rows: list[Pending]) -> None:
        self.failures += 1
        if not self._down_logged:
            log.warning("notification channel failing, retrying", channel=self.channel,
                        reason=reason, pending=len(rows))  # fmt: skip
            self._down_logged = True

    def _outcome(self, rows: list[Pending], *, ok: bool) -> None:
        if self._on_outcome is not None:
            for row in rows:
                self._on_outcome(row.key, ok)

    # --- flood control ----------------------------------------------------------------

    def _plan(self, due: list[Pending], now: int) -> list[tuple[Message, list[Pending]]]:
        """Batches to send now: single rows, and one flood notice per group held back.

        An asset may send ``max_per_window`` announcements per window; beyond that they
        are held to the end of the window and then go together as one ``flood`` notice.
        """
        if self.flood is None:
            return [(row.message, [row]) for row in due]
        window = int(self.flood.window_s * NS)
        exempt = {_rank(p) for p in self.flood.exempt}
        batches: list[tuple[Message, list[Pending]]] = []
        held: dict[str, list[Pending]] = {}
        planned: dict[str, int] = {}  # group -> singles planned in this pass
        for row in due:
            if row.event != "announce" or row.rank in exempt:
                batches.append((row.message, [row]))
                continue
            if row.held:  # held back before: goes out with its group
                held.setdefault(row.group, []).append(row)
                continue
            recent = self._recent.setdefault(row.group, deque())
            while recent and recent[0] <= now - window:
                recent.popleft()
            if len(recent) + planned.get(row.group, 0) < self.flood.max_per_window:
                planned[row.group] = planned.get(row.group, 0) + 1
                batches.append((row.message, [row]))
                continue
            end = self._flood_end.get(row.group)
            if end is None or end <= now:
                end = self._flood_end[row.group] = (recent[0] if recent else now) + window
            self.outbox.hold([row.id], end)
        for rows in held.values():
            batches.append((_flood_notice(rows) if len(rows) > 1 else rows[0].message, rows))
        batches.sort(key=lambda batch: batch[1][0].id)
        return batches

    def _sent(self, rows: list[Pending], now: int) -> None:
        """Count a delivered announcement (single or flood) against its asset's window."""
        if self.flood is not None and rows[0].event == "announce":
            self._recent.setdefault(rows[0].group, deque()).append(now)


def _rank(priority: str) -> int:
    return {"low": 0, "medium": 1, "high": 2, "critical": 3}[priority]


def _flood_notice(rows: list[Pending]) -> AlarmNotice:
    """One notice for a group's held announcements, listing them."""
    members = [row.message for row in rows if isinstance(row.message, AlarmNotice)]
    first = members[0]
    worst = max(members, key=lambda notice: _rank(notice.priority))
    return AlarmNotice(
        key=f"flood:{first.key}",
        event="flood",
        alarm_id=first.alarm_id,
        rule=first.rule,
        site=first.site,
        asset=first.asset,
        device=first.device,
        priority=worst.priority,
        state=first.state,
        message=f"{len(members)} alarms on {first.site}/{first.asset}",
        ts_ns=max(member.ts_ns for member in members),
        alarms=members,
    )
