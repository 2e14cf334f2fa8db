"""What our two small HTTP/1.1 servers (simulator control, alarm API) share: the error
they answer with and the reading of a request's head (stdlib only)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection


class HttpError(Exception):
    """A request answered with an error status and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = headers or {}


async def read_head(
    reader: asyncio.StreamReader, max_head_bytes: int, unique: Collection[str] = ()
) -> tuple[str, str, dict[str, str]]:
    """Method, target and headers (names lower-case) of the next request.

    ``max_head_bytes`` must be the reader's ``limit`` (``asyncio.start_server(limit=...)``):
    a longer head is answered 431. A header named in ``unique`` (lower-case) may appear
    only once: a second ``Authorization`` must not be able to override the first.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise HttpError(431, f"request line and headers above {max_head_bytes} bytes") from exc
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise HttpError(400, f"malformed request line {request_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in filter(None, header_lines):
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        if name in headers and name in unique:
            raise HttpError(400, f"repeated header {name}")
        headers[name] = value.strip()
    return parts[0], parts[1], headers


def body_length(headers: dict[str, str]) -> int:
    """The Content-Length of a request; a chunked body is not supported (501)."""
    if "transfer-encoding" in headers:
        raise HttpError(501, "Transfer-Encoding is not supported; send Content-Length")
    length = headers.get("content-length", "0")
    if not length.isdigit():
        raise HttpError(400, f"bad Content-Length {length[:20]!r}")
    return int(length)
