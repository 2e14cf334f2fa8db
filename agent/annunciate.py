"""Local annunciation: edge alarms told to a receiver on the site LAN, without the uplink.

Optional per agent (``alarms.local``): a webhook (a beacon controller, an SMS gateway
box) or an SMTP relay on the site network hears of the alarms the agent evaluates,
while the broker is unreachable (``when: offline``) or always, for chosen priorities.

Same delivery terms as the collector's channels. A notice is a spool note written in
the transaction of the condition message that caused it, so it exists exactly when
the change does; a delivery task sends the notes in order, retries with backoff while
the receiver is down (order kept), and deletes a note once the receiver took it. A
crash between sending and deleting sends it again with the same idempotency key.

Keys are the collector's: an activation is ``<alarm id>:announce:<event time>``, the
key the collector gives the announcement of that activation (or, if nobody could hear
it, of the episode it became), and a clear ``<alarm id>:clear:<event time>``. So a
receiver that both an agent and a collector route to gets each notice once by its
``Idempotency-Key``, and can tell the local notice (``reason`` ``edge``) from the
central one of the same episode. The clear of an activation announced locally is
announced locally too, whatever the link does meanwhile.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from pydantic import ValidationError

from agent.config import LocalAnnunciation
from derrick.alarms.engine import ConditionChange
from derrick.notify.settings import DeliveryError
from derrick.plumbing.configfile import one_line
from derrick.spool.store import Spool
from derrick.wire.ids import AlarmId
from derrick.wire.payloads import AlarmNotice

if TYPE_CHECKING:
    from derrick.notify.channels import Sender

log = structlog.get_logger(__name__)

NOTE_PREFIX = "local:"
_NUMBER_WIDTH = 12  # zero-padded, so the notes sort in the order they were made


class LocalAnnunciator:
    """Local notices: made with the condition messages, sent by :meth:`deliver_forever`.

    ``connected()``: whether the broker is reachable now (``when: offline``).
    """

    def __init__(
        self,
        settings: LocalAnnunciation,
        spool: Spool,
        connected: Callable[[], bool],
        sender: Sender | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.connected = connected
        if sender is None:
            # The senders' libraries (http.client, smtplib, email: about 2 MB) are loaded
            # only by an agent that annunciates locally.
            from derrick.notify.channels import make_sender  # noqa: PLC0415

            sender = make_sender(settings.channel)
        self.sender = sender
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._pending = dict(sorted(spool.notes(NOTE_PREFIX).items()))
        numbers = [int(key.removeprefix(NOTE_PREFIX)) for key in self._pending]
        self._next = max(numbers, default=0) + 1
        self._wake = asyncio.Event()

    @property
    def pending(self) -> int:
        return len(self._pending)

    # --- making notices -------------------------------------------------------------------

    def wants(self, change: ConditionChange) -> bool:
        """Whether an activation is announced here (the clear follows it if so)."""
        if change.priority not in self.settings.priorities:
            return False
        return self.settings.when == "always" or not self.connected()

    def announce(self, change: ConditionChange) -> dict[str, str | None]:
        """The notes for an activation's notice (to commit with its condition message)."""
        return self._note(change, "announce", change.message)

    def clear(self, change: ConditionChange) -> dict[str, str | None]:
        """The notes for the clear of an activation announced here."""
        return self._note(change, "clear", f"back to normal (was: {change.message})")

    def _note(self, change: ConditionChange, event: str, message: str) -> dict[str, str | None]:
        alarm = AlarmId(change.rule, change.site, change.asset, change.device)
        notice = AlarmNotice(
            key=f"{alarm}:{event}:{change.ts_ns}",
            event=event,  # type: ignore[arg-type]
            alarm_id=str(alarm),
            rule=change.rule,
            site=change.site,
            asset=change.asset,
            device=change.device,
            priority=change.priority,  # type: ignore[arg-type]
            state="active" if event == "announce" else "normal",
            message=message[:1000],
            reason="edge",
            value=_number(change.value),
            limit=_number(change.limit),
            ts_ns=change.ts_ns,
        )
        key = f"{NOTE_PREFIX}{self._next:0{_NUMBER_WIDTH}d}"
        self._next += 1
        text = notice.model_dump_json()
        self._pending[key] = text
        notes: dict[str, str | None] = {key: text}
        while len(self._pending) > self.settings.max_pending:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            notes[oldest] = None
            self.dropped += 1
            log.error("local annunciation backlog full, oldest notice dropped",
                      max_pending=self.settings.max_pending)  # fmt: skip
        self._wake.set()
        return notes

    # --- delivering -----------------------------------------------------------------------

    async def deliver_forever(self) -> None:
        failures = 0
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            key, text = next(iter(self._pending.items()))
            try:
                notice = AlarmNotice.model_validate_json(text)
            except ValidationError as exc:  # a note this version cannot read: never sendable
                self.failed += 1
                log.error("local notice unreadable, dropped", note=key, reason=one_line(exc))
                self._pending.pop(key, None)
                self.spool.write_notes({key: None})
                continue
            try:
                await self.sender.send(notice)
            except DeliveryError as exc:
                if exc.retryable:
                    failures += 1
                    if failures == 1:
                        log.warning("local annunciation failing, retrying", key=notice.key,
                                    reason=str(exc))  # fmt: skip
                    await asyncio.sleep(self._backoff(failures, exc.retry_after_s))
                    continue
                self.failed += 1
                log.error("local notice refused, dropped", key=notice.key, reason=str(exc))
            else:
                self.delivered += 1
                if failures:
                    log.info("local annunciation delivering again", after_failures=failures)
                log.info("local notice delivered", key=notice.key, what=notice.event)
            failures = 0
            self._pending.pop(key, None)
            self.spool.write_notes({key: None})

    def _backoff(self, failures: int, retry_after_s: float | None) -> float:
        settings = self.settings
        delay = min(settings.retry_max_s, settings.retry_min_s * 2 ** min(failures - 1, 16))
        delay *= random.uniform(0.8, 1.0)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, settings.retry_max_s))
        return delay

    async def close(self) -> None:
        await self.sender.close()


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None
