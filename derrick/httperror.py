"""The error our two small HTTP servers (simulator control, alarm API) answer with."""

from __future__ import annotations


class HttpError(Exception):
    """A request answered with an error status and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = headers or {}
