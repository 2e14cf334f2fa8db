"""Operator commands work against any collector: one that does not own the alarm passes
the command on to the one that does, and answers with that one's answer.

Collectors that fail over (:mod:`collector.alarms.ha`) publish their operator API's
address with their membership in etcd, so a member that gets a command for an alarm
another member owns knows where to send it. The command goes with the group's peer
secret (``X-Derrick-Peer``, kept in etcd: :meth:`Coordinator.peer_secret`) and the user
and role this member already checked (``X-Derrick-User``, ``X-Derrick-Role``), so the
owner journals the same verified ``who``; its ``request_id`` is marked (``fwd-``) so that
the receiving member, should it not own the alarm either (ownership moving at that
moment), answers 421 instead of passing it on again. Nobody is answered 421 except in
that moment, or when the owner's API cannot be reached (the 421 then names it).

stdlib ``http.client`` in a daemon thread, as the webhook channel does
(:mod:`derrick.notify.channels`): one small POST to a peer, with a timeout.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import quote, urlsplit

import structlog
from pydantic import SecretStr, ValidationError

from derrick.plumbing.threads import DaemonThreads
from derrick.wire.payloads import AlarmCommand, AlarmCommandResult

log = structlog.get_logger(__name__)

FORWARDED = "fwd-"  # request_id prefix of a command passed on by another member


def forwarded(order: AlarmCommand) -> bool:
    return order.request_id.startswith(FORWARDED)


class Forwarder:
    """POSTs a command to another member's operator API."""

    def __init__(self, peer_secret: SecretStr, timeout_s: float = 5.0) -> None:
        self._secret = peer_secret
        self._timeout_s = timeout_s
        self._threads = DaemonThreads("forward")

    async def forward(
        self, api: str, order: AlarmCommand, role: str
    ) -> tuple[int, AlarmCommandResult] | None:
        """The owner's (status, result); None when it could not be asked or answered
        with something that is not a command result."""
        try:
            return await self._threads.run(self._post, api, order, role)
        except (OSError, http.client.HTTPException, ValidationError, ValueError) as exc:
            log.warning("command not forwarded", alarm_id=order.alarm_id, owner_api=api,
                        reason=str(exc)[:200])  # fmt: skip
            return None

    def _post(self, api: str, order: AlarmCommand, role: str) -> tuple[int, AlarmCommandResult]:
        url = urlsplit(api)
        body: dict[str, object] = {
            "comment": order.comment,
            "request_id": FORWARDED + order.request_id[: 100 - len(FORWARDED)],
        }
        if order.action == "shelve":
            body["duration_s"] = order.duration_s
        headers = {
            "Content-Type": "application/json",
            "X-Derrick-Peer": self._secret.get_secret_value(),
            # UTF-8 bytes as latin-1 text: http.client sends them as they are
            "X-Derrick-User": order.who.encode().decode("latin-1"),
            "X-Derrick-Role": role,
        }
        connection = http.client.HTTPConnection(
            url.hostname or "127.0.0.1", url.port or 80, timeout=self._timeout_s
        )
        try:
            path = f"/alarms/{quote(order.alarm_id, safe='')}/{quote(order.action)}"
            connection.request("POST", path, json.dumps(body).encode(), headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        result = AlarmCommandResult.model_validate_json(data)
        return response.status, result.model_copy(update={"request_id": order.request_id})

    def close(self) -> None:
        self._threads.close()
