"""Who may command alarms over MQTT (issue 18).

A broker account is a device's credential, not a person's: anyone who may publish on
``.../alarm-commands`` could otherwise acknowledge or shelve in anyone's name. With
named users (``alarms.http.users_file``) a command over MQTT must carry one of them's
API token in ``token``; ``who`` becomes that user (a ``who`` naming somebody else is
refused), the user's role must allow the action, and the token is dropped before the
command goes any further (it never reaches a log, the journal or a dead letter).

``alarms.mqtt_commands``: ``verified`` (the above), ``open`` (``who`` is whatever the
message says: the deprecated behaviour, only where no users are configured), ``off`` (MQTT
commands refused; the console and the API remain), ``auto`` (verified with users, open
without, said once at start-up).
"""

from __future__ import annotations

import json
from typing import Literal

import structlog

from collector.users import UsersError, UserStore, least_role
from derrick.wire.payloads import AlarmCommand

log = structlog.get_logger(__name__)

MqttCommands = Literal["auto", "verified", "open", "off"]
REDACTED = "<redacted>"


class CommandAuthority:
    """Vets each MQTT command: the command to run (``who`` verified), or why not."""

    def __init__(self, mode: MqttCommands, users: UserStore | None) -> None:
        if mode == "auto":
            mode = "verified" if users is not None else "open"
        if mode == "verified" and users is None:
            raise ValueError("alarms.mqtt_commands: verified needs alarms.http.users_file")
        self.mode = mode
        self._users = users

    def announce(self) -> None:
        """Say once how MQTT commands are treated (open mode is a warning)."""
        if self.mode == "open":
            log.warning("alarm commands over mqtt are not authenticated: anyone who may "
                        "publish on alarm-commands acts in any name; set "
                        "alarms.http.users_file")  # fmt: skip
        else:
            log.info("alarm commands over mqtt", mode=self.mode)

    def vet(self, command: AlarmCommand) -> AlarmCommand | str:
        """The command to run, or the reason it is refused."""
        if self.mode == "off":
            return "commands over MQTT are turned off here; use the console or the API"
        if self.mode == "open":
            if not command.who:
                return "who is required"
            return command.model_copy(update={"token": None})
        return self._verified(command)

    def _verified(self, command: AlarmCommand) -> AlarmCommand | str:
        assert self._users is not None
        token = command.token.get_secret_value() if command.token else ""
        if not token:
            return (
                'no credential: put a user\'s API token in "token" '
                "(derrick-collector users token NAME)"
            )
        try:
            identity = self._users.verify_token(token)
        except UsersError as exc:
            log.error("alarm command not vetted: users file", reason=str(exc))
            return "users cannot be read here; see the collector log"
        if identity is None:
            return "token not accepted"
        if command.who and command.who != identity.name:
            return f"who comes from the token ({identity.name}); leave it out"
        if not identity.may(command.action):
            needed = least_role(command.action).value
            return f"{identity.name} is {identity.role.value}: {command.action} needs {needed}"
        return command.model_copy(update={"who": identity.name, "token": None})


def redacted(payload: bytes) -> bytes:
    """A command payload fit to keep as a dead letter: its token replaced (a payload that
    is not a JSON object is kept whole only when it cannot hold one)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload if b"token" not in payload else REDACTED.encode()
    if isinstance(data, dict) and "token" in data:
        data["token"] = REDACTED
        return json.dumps(data).encode()
    return payload
