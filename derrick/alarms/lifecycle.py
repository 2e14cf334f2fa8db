"""Per-alarm lifecycle state machine after ISA-18.2 / IEC 62682 ("alarm states", A to H).

Pure: no I/O, no clock reads (every input carries ``now_ns``), no exceptions for operator
mistakes. ``apply(record, event)`` returns either a :class:`Transition` (the new immutable
:class:`AlarmRecord` plus the :class:`Effect` s the caller must carry out) or a
:class:`Rejected` with a reason the caller can send back to the HTTP/MQTT command.

States (``LifecycleState``; ISA-18.2 letters in brackets)
-------------------------------------------------------------
==================== ================================================================
NORMAL               [A] process normal, nothing to acknowledge, nothing annunciated
ACTIVE_UNACKED       [B] process active, annunciated, waiting for acknowledgement
ACTIVE_ACKED         [C] process active, acknowledged
RTN_UNACKED          [D] process back to normal, never acknowledged (non-latched alarms only)
LATCHED              [E] latched alarms only: the process is back to normal but the alarm stays
                     annunciated until an operator resets it. ``acked`` tells whether it
                     was acknowledged (before or after the process returned); reset needs
                     the process normal and implies acknowledgement.
SHELVED              [F] hidden by an operator for at most ``max_shelve_s``; expires on its own
SUPPRESSED_BY_DESIGN [G] hidden by machine state (input from the rule engine)
OUT_OF_SERVICE       [H] removed from service by an operator (maintenance, broken sensor)
==================== ================================================================

The three hiding conditions are independent flags (``shelved_until_ns``, ``suppressed``,
``out_of_service``); ``state`` shows the strongest: OUT_OF_SERVICE > SUPPRESSED_BY_DESIGN >
SHELVED. While hidden the process state (``active``, value, limit, priority, activation
count) is still tracked, but nothing is annunciated or cleared and nothing can be
acknowledged or reset; the ack/latch status is dropped on hiding (``acked`` is true: nothing
is owed). When the last hiding condition ends, the alarm re-announces as ACTIVE_UNACKED if
the process is still active, otherwise it goes to NORMAL silently (a latch is not restored).
Removing from service discards a shelf; commands on an out-of-service alarm other than
return-to-service are rejected. Shelving is allowed in any in-service state, also while
suppressed (the shelf then outlasts the suppression) and over an existing shelf (replaces
the expiry). Shelve expiry is processed by :class:`Tick` and, before anything else, by every
other input whose ``now_ns`` is at or past the expiry.

Transitions (non-latched / latched where they differ). Effects: A = Annunciate,
C = Clear, J = Journal; ``-`` = no-op (record unchanged, no effects); ``!`` = Rejected.
"hidden" = SHELVED, SUPPRESSED_BY_DESIGN or OUT_OF_SERVICE.

=============== ========== ============== ========== ========== ================
input           NORMAL     ACTIVE_UNACKED ACTIVE_ACK RTN_UNACK  LATCHED
=============== ========== ============== ========== ========== ================
process active  A_UNACK A  -              -          A_UNACK A  A_UNACK A
process normal  -          RTN_UNACK C /  NORMAL C / -          -
                           LATCHED        LATCHED
episode         RTN_UNACK  as process     as process RTN_UNACK  LATCHED A
                A / LATCH  normal         normal     A / LATCH
acknowledge     !          A_ACKED J      !          NORMAL J   LATCHED J (! if acked)
reset           !          !              !          !          NORMAL J C
shelve          SHELVED J  SHELVED J      SHELVED J  SHELVED J  SHELVED J
unshelve        !          !              !          !          !
suppress on     SUPPR      SUPPR          SUPPR      SUPPR      SUPPR
suppress off    -          -              -          -          -
remove from svc OOS J      OOS J          OOS J      OOS J      OOS J
return to svc   !          !              !          !          !
tick            -          -              -          -          -
=============== ========== ============== ========== ========== ================

Hidden states: process active/normal update the tracked process only (record changes, no
effects; ``-`` if already in that process state, except that process active on an active
process takes its new value, limit and priority: ``-`` only if they are unchanged).
acknowledge and reset are ``!``.
SHELVED: shelve ``J`` (new expiry), unshelve ``J`` then leave, expiry leaves. SUPPRESSED:
shelve ``J`` (state stays), unshelve ``J`` if shelved else ``!``, suppress off leaves.
OUT_OF_SERVICE: every command but return-to-service ``!``, suppress on/off only sets the
flag, return to service ``J`` then leaves. "Leaves" = ACTIVE_UNACKED + A if the process is
active, NORMAL (no effects) if not, or the next-strongest hiding state if one remains.

Decisions
---------
* Acknowledging RTN_UNACKED goes to NORMAL (journal only: the Clear went out when the
  process returned to normal).
* Clear means "the alarm is no longer a standing alarm for the crew": for non-latched
  alarms when the process returns to normal (acked or not), for latched alarms on reset.
* Process active while already active is a no-op (the evaluator reports transitions; a
  replay after a restart must not re-fire). While hidden it refreshes the tracked value,
  limit and priority instead (still no effects, no activation), so that leaving announces
  the process as it is then: a caller ending a hiding condition together with news of
  the process gives the process input first (``collector.alarms.manager`` does).
* A process that goes bad again from RTN_UNACKED or LATCHED re-announces
  (``AnnounceReason.REACTIVATED``): it is a new excursion the crew has not seen, even if
  the previous one is still unacknowledged. Chattering is therefore annunciated every
  time; damping it is the rule engine's job (deadband, on-delay) and the operator's
  (shelve). ``Annunciate.reason`` lets a notifier rate-limit re-announcements.
* Suppression is an input from the machine state, not an operator action: no journal.
  Shelve expiry is not an operator action either: no journal, but it re-announces.
* ``last_transition_ns`` is the ``now_ns`` of the last input that changed the record.
* Effect order: a due shelve expiry's effects first, then the input's Journal, then the
  Annunciate or Clear it caused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Literal, get_args

Priority = Literal["critical", "high", "medium", "low"]
PRIORITIES: frozenset[str] = frozenset(get_args(Priority))

RECORD_VERSION = 1
DEFAULT_MAX_SHELVE_S = 8 * 3600.0  # one shift
NS_PER_S = 1_000_000_000


class LifecycleState(StrEnum):
    NORMAL = "normal"
    ACTIVE_UNACKED = "active_unacked"
    ACTIVE_ACKED = "active_acked"
    RTN_UNACKED = "rtn_unacked"
    LATCHED = "latched"
    SHELVED = "shelved"
    SUPPRESSED_BY_DESIGN = "suppressed_by_design"
    OUT_OF_SERVICE = "out_of_service"


HIDDEN = frozenset(
    {
        LifecycleState.SHELVED,
        LifecycleState.SUPPRESSED_BY_DESIGN,
        LifecycleState.OUT_OF_SERVICE,
    }
)


class RecordError(ValueError):
    """A persisted alarm record that cannot be trusted (bad type, unknown state, broken rule)."""


# --------------------------------------------------------------------------- record


@dataclass(frozen=True, kw_only=True)
class AlarmRecord:
    """Everything known about one alarm; JSON-serialisable via ``to_dict``/``from_dict``.

    ``latched`` and ``max_shelve_s`` are configuration carried with the state so a restored
    record is self-consistent. ``value``/``limit`` are those of the last activation (value is
    updated by a process-normal input that carries one). Counts: ``activations`` = process
    normal -> active edges (also while hidden); ``annunciations`` = Annunciate effects.
    """

    alarm_id: str
    state: LifecycleState = LifecycleState.NORMAL
    active: bool = False
    acked: bool = True
    latched: bool = False
    max_shelve_s: float = DEFAULT_MAX_SHELVE_S
    shelved_until_ns: int | None = None
    suppressed: bool = False
    out_of_service: bool = False
    last_transition_ns: int = 0
    priority: Priority = "high"
    value: float | None = None
    limit: float | None = None
    activations: int = 0
    annunciations: int = 0
    # Who hid it and why, for the console's shelved and out-of-service lists (ISA-18.2
    # wants them shown); empty when it is not shelved / not out of service.
    shelved_by: str = ""
    shelve_reason: str = ""
    removed_by: str = ""
    remove_reason: str = ""

    @classmethod
    def new(
        cls,
        alarm_id: str,
        *,
        latched: bool = False,
        max_shelve_s: float = DEFAULT_MAX_SHELVE_S,
        priority: Priority = "high",
        now_ns: int = 0,
    ) -> AlarmRecord:
        """A fresh alarm in NORMAL. Raises ``ValueError`` on bad configuration."""
        record = cls(
            alarm_id=alarm_id,
            latched=latched,
            max_shelve_s=float(max_shelve_s),
            priority=priority,
            last_transition_ns=now_ns,
        )
        problem = invariant_violation(record)
        if problem:
            raise ValueError(problem)
        return record

    def to_dict(self) -> dict[str, Any]:
        """Only JSON types (str, int, float, bool, None); ``v`` is the schema version."""
        out: dict[str, Any] = {"v": RECORD_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, LifecycleState) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlarmRecord:
        """Inverse of ``to_dict``; strict, raises :class:`RecordError` on anything odd."""
        if not isinstance(data, dict):
            raise RecordError("alarm record must be an object")
        if data.get("v") != RECORD_VERSION:
            raise RecordError(f"unsupported alarm record version: {data.get('v')!r}")
        expected = {f.name for f in fields(cls)} | {"v"}
        if set(data) | _ADDED_LATER != expected:  # records stored before these were added
            raise RecordError(f"alarm record keys differ: {sorted(set(data) ^ expected)}")
        try:
            record = cls(
                alarm_id=_typed(data, "alarm_id", str),
                state=LifecycleState(_typed(data, "state", str)),
                active=_typed(data, "active", bool),
                acked=_typed(data, "acked", bool),
                latched=_typed(data, "latched", bool),
                max_shelve_s=float(_number(data, "max_shelve_s")),
                shelved_until_ns=_optional_int(data, "shelved_until_ns"),
                suppressed=_typed(data, "suppressed", bool),
                out_of_service=_typed(data, "out_of_service", bool),
                last_transition_ns=_typed(data, "last_transition_ns", int),
                priority=_typed(data, "priority", str),  # type: ignore[arg-type]
                value=_optional_float(data, "value"),
                limit=_optional_float(data, "limit"),
                activations=_typed(data, "activations", int),
                annunciations=_typed(data, "annunciations", int),
                **{key: _typed(data, key, str) for key in _ADDED_LATER if key in data},
            )
        except ValueError as exc:
            raise RecordError(f"bad alarm record: {exc}") from exc
        problem = invariant_violation(record)
        if problem:
            raise RecordError(f"inconsistent alarm record {record.alarm_id!r}: {problem}")
        return record


_ADDED_LATER = frozenset(("shelved_by", "shelve_reason", "removed_by", "remove_reason"))


def _typed(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data[key]
    # bool is an int subclass: an int field must not accept True, a bool field not 1.
    if type(value) is not kind:
        raise RecordError(f"{key} must be {kind.__name__}, got {value!r}")
    return value


def _number(data: dict[str, Any], key: str) -> float:
    value = data[key]
    if type(value) not in (int, float) or not math.isfinite(value):
        raise RecordError(f"{key} must be a finite number, got {value!r}")
    return value


def _optional_float(data: dict[str, Any], key: str) -> float | None:
    return None if data[key] is None else float(_number(data, key))


def _optional_int(data: dict[str, Any], key: str) -> int | None:
    return None if data[key] is None else _typed(data, key, int)


def invariant_violation(r: AlarmRecord) -> str | None:
    """Why ``r`` is not a reachable record, or None. Checked on restore and in tests."""
    return next(_violations(r), None)


def _violations(r: AlarmRecord) -> Iterator[str]:
    if not r.alarm_id:
        yield "alarm_id is empty"
    if r.priority not in PRIORITIES:
        yield f"unknown priority {r.priority!r}"
    if not (math.isfinite(r.max_shelve_s) and r.max_shelve_s > 0):
        yield "max_shelve_s must be a positive number"
    if r.activations < 0 or r.annunciations < 0:
        yield "counts must not be negative"
    hidden = _hidden_state(r)
    if hidden is not None:
        if r.state is not hidden:
            yield f"state {r.state} but the strongest hiding condition is {hidden}"
        if not r.acked:
            yield "a hidden alarm owes no acknowledgement"
        return
    rule = _BASE_RULES.get(r.state)
    if rule is None:
        yield f"state {r.state} without its hiding condition"
        return
    active, acked, latched = rule
    if r.active != active:
        yield f"state {r.state} needs active={active}"
    if acked is not None and r.acked != acked:
        yield f"state {r.state} needs acked={acked}"
    if latched is not None and r.latched != latched:
        yield f"state {r.state} needs latched={latched}"


# state -> (active, acked or None = either, latched or None = either)
_BASE_RULES: dict[LifecycleState, tuple[bool, bool | None, bool | None]] = {
    LifecycleState.NORMAL: (False, True, None),
    LifecycleState.ACTIVE_UNACKED: (True, False, None),
    LifecycleState.ACTIVE_ACKED: (True, True, None),
    LifecycleState.RTN_UNACKED: (False, False, False),
    LifecycleState.LATCHED: (False, None, True),
}


def _hidden_state(r: AlarmRecord) -> LifecycleState | None:
    if r.out_of_service:
        return LifecycleState.OUT_OF_SERVICE
    if r.suppressed:
        return LifecycleState.SUPPRESSED_BY_DESIGN
    if r.shelved_until_ns is not None:
        return LifecycleState.SHELVED
    return None


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, kw_only=True)
class ProcessActive:
    """The alarm condition became true (from the rule engine)."""

    now_ns: int
    value: float
    limit: float
    priority: Priority = "high"

    def __post_init__(self) -> None:
        _check_process(self.value, self.limit, self.priority)


def _check_process(value: float, limit: float, priority: str) -> None:
    """Programming errors, not operator mistakes: NaN would also break JSON persistence."""
    if not (math.isfinite(value) and math.isfinite(limit)):
        raise ValueError("value and limit must be finite")
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}")


@dataclass(frozen=True, kw_only=True)
class ProcessNormal:
    """The alarm condition became false; ``value`` is the clearing value if known."""

    now_ns: int
    value: float | None = None

    def __post_init__(self) -> None:
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError("value must be finite")


@dataclass(frozen=True, kw_only=True)
class ProcessEpisode:
    """The condition was true from ``since_ns`` to ``now_ns`` and is normal again, and
    both are news: it happened where nobody could hear (an agent's link was down).

    ``value`` is the episode's peak. The alarm is announced once, with reason
    ``OFFLINE`` and its true start and end (``Annunciate.ts_ns``, ``ended_ns``), and
    owes an acknowledgement (RTN_UNACKED; a latched alarm LATCHED, owing a reset), as
    an alarm that came and went unacknowledged would.
    """

    now_ns: int
    since_ns: int
    value: float
    limit: float
    priority: Priority = "high"

    def __post_init__(self) -> None:
        _check_process(self.value, self.limit, self.priority)
        if self.since_ns > self.now_ns:
            raise ValueError("an episode ends after it starts")


@dataclass(frozen=True, kw_only=True)
class Acknowledge:
    now_ns: int
    who: str
    comment: str = ""


@dataclass(frozen=True, kw_only=True)
class Reset:
    """Release a latched alarm; only when the process is normal. Implies acknowledge."""

    now_ns: int
    who: str
    comment: str = ""


@dataclass(frozen=True, kw_only=True)
class Shelve:
    now_ns: int
    who: str
    reason: str
    duration_s: float


@dataclass(frozen=True, kw_only=True)
class Unshelve:
    now_ns: int
    who: str
    comment: str = ""


@dataclass(frozen=True, kw_only=True)
class Suppress:
    """Suppression by design, driven by machine state (e.g. crane parked); not an operator."""

    now_ns: int
    on: bool


@dataclass(frozen=True, kw_only=True)
class RemoveFromService:
    now_ns: int
    who: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class ReturnToService:
    now_ns: int
    who: str
    comment: str = ""


@dataclass(frozen=True, kw_only=True)
class Tick:
    """Time passes: handles shelve expiry."""

    now_ns: int


Event = (
    ProcessActive
    | ProcessNormal
    | ProcessEpisode
    | Acknowledge
    | Reset
    | Shelve
    | Unshelve
    | Suppress
    | RemoveFromService
    | ReturnToService
    | Tick
)

# --------------------------------------------------------------------------- outputs


class AnnounceReason(StrEnum):
    NEW = "new"  # from NORMAL
    REACTIVATED = "reactivated"  # from RTN_UNACKED or LATCHED: the process went bad again
    UNSHELVED = "unshelved"
    SHELVE_EXPIRED = "shelve_expired"
    UNSUPPRESSED = "unsuppressed"
    RETURNED_TO_SERVICE = "returned_to_service"
    OFFLINE = "offline"  # a whole episode that happened while the link was down


class Action(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    RESET = "reset"
    SHELVE = "shelve"
    UNSHELVE = "unshelve"
    REMOVE_FROM_SERVICE = "remove_from_service"
    RETURN_TO_SERVICE = "return_to_service"


@dataclass(frozen=True, kw_only=True)
class Annunciate:
    """Notify crews: a new alarm, or one they must look at again."""

    alarm_id: str
    priority: Priority
    value: float | None
    limit: float | None
    reason: AnnounceReason
    ts_ns: int
    ended_ns: int | None = None  # reason OFFLINE: when the episode ended


@dataclass(frozen=True, kw_only=True)
class Clear:
    """Notify crews (informational): the alarm no longer stands."""

    alarm_id: str
    priority: Priority
    value: float | None
    ts_ns: int


@dataclass(frozen=True, kw_only=True)
class Journal:
    """An operator action for the audit trail."""

    alarm_id: str
    action: Action
    who: str
    comment: str
    ts_ns: int


Effect = Annunciate | Clear | Journal


@dataclass(frozen=True)
class Transition:
    """Result of an accepted input. No-op inputs give the same record and no effects."""

    record: AlarmRecord
    effects: tuple[Effect, ...] = field(default=())


@dataclass(frozen=True)
class Rejected:
    """An operator command that does not apply; ``reason`` is meant for the operator."""

    reason: str


# --------------------------------------------------------------------------- machine


def apply(record: AlarmRecord, event: Event) -> Transition | Rejected:
    """Feed one input to one alarm. Never raises for a well-formed input."""
    expired = _expire(record, event.now_ns)
    result = _dispatch(expired.record, event)
    if isinstance(result, Rejected):
        return result
    if not expired.effects:
        return result
    return Transition(result.record, expired.effects + result.effects)


def _dispatch(r: AlarmRecord, event: Event) -> Transition | Rejected:
    process_handler = _PROCESS_HANDLERS.get(type(event))
    if process_handler is not None:
        return process_handler(r, event)
    command_handler = _COMMAND_HANDLERS.get(type(event))
    if command_handler is None:
        raise TypeError(f"not an alarm input: {event!r}")
    refusal = _refuse_command(r, event)
    if refusal:
        return Rejected(refusal)
    return command_handler(r, event)


def _refuse_command(r: AlarmRecord, event: Event) -> str | None:
    """Checks shared by every operator command."""
    who = getattr(event, "who", "")
    if not who.strip():
        return "who is required"
    if r.out_of_service and not isinstance(event, ReturnToService):
        return "alarm is out of service; return it to service first"
    return None


def _changed(r: AlarmRecord, now_ns: int, *effects: Effect, **changes: Any) -> Transition:
    record = replace(r, last_transition_ns=now_ns, **changes)
    annunciations = sum(isinstance(e, Annunciate) for e in effects)
    if annunciations:
        record = replace(record, annunciations=record.annunciations + annunciations)
    return Transition(record, effects)


def _announce(r: AlarmRecord, now_ns: int, reason: AnnounceReason) -> Annunciate:
    return Annunciate(
        alarm_id=r.alarm_id,
        priority=r.priority,
        value=r.value,
        limit=r.limit,
        reason=reason,
        ts_ns=now_ns,
    )


def _journal(r: AlarmRecord, action: Action, who: str, comment: str, now_ns: int) -> Journal:
    return Journal(alarm_id=r.alarm_id, action=action, who=who, comment=comment, ts_ns=now_ns)


def _process_active(r: AlarmRecord, e: ProcessActive) -> Transition:
    if r.active:
        return _refresh(r, e)
    process = {
        "active": True,
        "value": e.value,
        "limit": e.limit,
        "priority": e.priority,
        "activations": r.activations + 1,
    }
    if r.state in HIDDEN:
        return _changed(r, e.now_ns, **process)
    reason = AnnounceReason.NEW if r.state is LifecycleState.NORMAL else AnnounceReason.REACTIVATED
    updated = replace(r, **process)
    return _changed(
        updated,
        e.now_ns,
        _announce(updated, e.now_ns, reason),
        state=LifecycleState.ACTIVE_UNACKED,
        acked=False,
    )


def _refresh(r: AlarmRecord, e: ProcessActive) -> Transition:
    """An active process reported active again: a no-op, except while hidden.

    A hidden alarm takes the new value, limit and priority (no effects, no activation),
    so leaving the hiding state announces what the process is now, not what it was when
    it was hidden. A visible one keeps what was announced; a replay must not re-fire.
    """
    process = {"value": e.value, "limit": e.limit, "priority": e.priority}
    if r.state not in HIDDEN or all(getattr(r, k) == v for k, v in process.items()):
        return Transition(r)
    return _changed(r, e.now_ns, **process)


def _process_normal(r: AlarmRecord, e: ProcessNormal) -> Transition:
    if not r.active:
        return Transition(r)
    value = r.value if e.value is None else e.value
    if r.state in HIDDEN:
        return _changed(r, e.now_ns, active=False, value=value)
    if r.latched:
        return _changed(r, e.now_ns, active=False, value=value, state=LifecycleState.LATCHED)
    state = LifecycleState.NORMAL if r.acked else LifecycleState.RTN_UNACKED
    clear = Clear(alarm_id=r.alarm_id, priority=r.priority, value=value, ts_ns=e.now_ns)
    return _changed(r, e.now_ns, clear, active=False, value=value, state=state)


def _process_episode(r: AlarmRecord, e: ProcessEpisode) -> Transition:
    """A whole excursion reported at once (see :class:`ProcessEpisode`).

    Already active (its start was heard after all): this is its end. Hidden: tracked
    only, as any process input. Otherwise announced once as an offline episode.
    """
    if r.active:
        return _process_normal(r, ProcessNormal(now_ns=e.now_ns, value=e.value))
    process = {
        "value": e.value,
        "limit": e.limit,
        "priority": e.priority,
        "activations": r.activations + 1,
    }
    if r.state in HIDDEN:
        return _changed(r, e.now_ns, **process)
    updated = replace(r, **process)
    announce = Annunciate(
        alarm_id=r.alarm_id,
        priority=e.priority,
        value=e.value,
        limit=e.limit,
        reason=AnnounceReason.OFFLINE,
        ts_ns=e.since_ns,
        ended_ns=e.now_ns,
    )
    state = LifecycleState.LATCHED if r.latched else LifecycleState.RTN_UNACKED
    return _changed(updated, e.now_ns, announce, state=state, acked=False)


def _acknowledge(r: AlarmRecord, e: Acknowledge) -> Transition | Rejected:
    if r.state in HIDDEN:
        return Rejected(f"alarm is {r.state}; nothing to acknowledge")
    if r.acked:
        return Rejected(
            "nothing to acknowledge" if r.state is LifecycleState.NORMAL else "already acknowledged"
        )
    journal = _journal(r, Action.ACKNOWLEDGE, e.who, e.comment, e.now_ns)
    state = {
        LifecycleState.ACTIVE_UNACKED: LifecycleState.ACTIVE_ACKED,
        LifecycleState.RTN_UNACKED: LifecycleState.NORMAL,
        LifecycleState.LATCHED: LifecycleState.LATCHED,
    }[r.state]
    return _changed(r, e.now_ns, journal, acked=True, state=state)


def _reset(r: AlarmRecord, e: Reset) -> Transition | Rejected:
    if not r.latched:
        return Rejected("reset applies only to latched alarms")
    if r.state in HIDDEN:
        return Rejected(f"alarm is {r.state}; nothing to reset")
    if r.active:
        return Rejected("process is still active; reset when it has returned to normal")
    if r.state is not LifecycleState.LATCHED:
        return Rejected("alarm is not latched; nothing to reset")
    journal = _journal(r, Action.RESET, e.who, e.comment, e.now_ns)
    clear = Clear(alarm_id=r.alarm_id, priority=r.priority, value=r.value, ts_ns=e.now_ns)
    return _changed(r, e.now_ns, journal, clear, acked=True, state=LifecycleState.NORMAL)


def _shelve(r: AlarmRecord, e: Shelve) -> Transition | Rejected:
    if not e.reason.strip():
        return Rejected("a reason is required to shelve an alarm")
    duration = e.duration_s
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        return Rejected("duration_s must be a number of seconds")
    if not (math.isfinite(duration) and 0 < duration <= r.max_shelve_s):
        return Rejected(f"duration_s must be more than 0 and at most {r.max_shelve_s:g} s")
    until = e.now_ns + math.ceil(duration * NS_PER_S)
    journal = _journal(r, Action.SHELVE, e.who, f"{e.reason} ({duration:g} s)", e.now_ns)
    hidden = _hide(r, shelved_until_ns=until)
    return _changed(r, e.now_ns, journal, **hidden, shelved_by=e.who, shelve_reason=e.reason)


def _unshelve(r: AlarmRecord, e: Unshelve) -> Transition | Rejected:
    if r.shelved_until_ns is None:
        return Rejected("alarm is not shelved")
    journal = _journal(r, Action.UNSHELVE, e.who, e.comment, e.now_ns)
    return _unhide(r, e.now_ns, AnnounceReason.UNSHELVED, journal, **_UNSHELVED)


def _suppress(r: AlarmRecord, e: Suppress) -> Transition:
    if e.on == r.suppressed:
        return Transition(r)
    if e.on:
        return _changed(r, e.now_ns, **_hide(r, suppressed=True))
    return _unhide(r, e.now_ns, AnnounceReason.UNSUPPRESSED, suppressed=False)


def _remove(r: AlarmRecord, e: RemoveFromService) -> Transition | Rejected:
    if not e.reason.strip():
        return Rejected("a reason is required to remove an alarm from service")
    journal = _journal(r, Action.REMOVE_FROM_SERVICE, e.who, e.reason, e.now_ns)
    changes = _hide(r, out_of_service=True, **_UNSHELVED)
    return _changed(r, e.now_ns, journal, **changes, removed_by=e.who, remove_reason=e.reason)


def _return(r: AlarmRecord, e: ReturnToService) -> Transition | Rejected:
    if not r.out_of_service:
        return Rejected("alarm is in service")
    journal = _journal(r, Action.RETURN_TO_SERVICE, e.who, e.comment, e.now_ns)
    back = {"out_of_service": False, "removed_by": "", "remove_reason": ""}
    return _unhide(r, e.now_ns, AnnounceReason.RETURNED_TO_SERVICE, journal, **back)


def _expire(r: AlarmRecord, now_ns: int) -> Transition:
    if r.shelved_until_ns is None or now_ns < r.shelved_until_ns:
        return Transition(r)
    return _unhide(r, now_ns, AnnounceReason.SHELVE_EXPIRED, **_UNSHELVED)


_UNSHELVED = {"shelved_until_ns": None, "shelved_by": "", "shelve_reason": ""}


def _hide(r: AlarmRecord, **flags: Any) -> dict[str, Any]:
    """Changes that set a hiding flag: state is the strongest one; ack/latch is dropped."""
    hidden = replace(r, **flags)
    return {**flags, "state": _hidden_state(hidden), "acked": True}


def _unhide(
    r: AlarmRecord, now_ns: int, reason: AnnounceReason, *effects: Effect, **flags: Any
) -> Transition:
    """Clear a hiding flag; if none is left, re-announce an active process or go NORMAL."""
    cleared = replace(r, **flags)
    still_hidden = _hidden_state(cleared)
    if still_hidden is not None:
        return _changed(r, now_ns, *effects, state=still_hidden, **flags)
    if not r.active:
        return _changed(r, now_ns, *effects, state=LifecycleState.NORMAL, acked=True, **flags)
    announce = _announce(r, now_ns, reason)
    return _changed(
        r, now_ns, *effects, announce, state=LifecycleState.ACTIVE_UNACKED, acked=False, **flags
    )


def _tick(r: AlarmRecord, _event: Tick) -> Transition:
    return Transition(r)  # expiry is handled by apply() before every input


# Inputs from the process, the machine state and the clock: never rejected.
_PROCESS_HANDLERS: dict[type, Callable[[AlarmRecord, Any], Transition]] = {
    ProcessActive: _process_active,
    ProcessNormal: _process_normal,
    ProcessEpisode: _process_episode,
    Suppress: _suppress,
    Tick: _tick,
}
# Operator commands: checked by _refuse_command first, then may be Rejected on their own.
_COMMAND_HANDLERS: dict[type, Callable[[AlarmRecord, Any], Transition | Rejected]] = {
    Acknowledge: _acknowledge,
    Reset: _reset,
    Shelve: _shelve,
    Unshelve: _unshelve,
    RemoveFromService: _remove,
    ReturnToService: _return,
}
