"""The InfluxDB boundary: the only module that imports influxdb-client.

Two writers with one face, ``await writer.write(lines)``:

* :class:`V1Writer` posts to ``/write`` (every InfluxDB 1.x) with the standard library.
* :class:`V2Writer` uses influxdb-client's v2 write API (2.x, 3.x, Cloud, 1.8+).

Library and HTTP errors become :class:`StoreUnavailable` (worth retrying: connection
refused, timeout, 429, 5xx) or :class:`DataRejected` (4xx: the points themselves are
wrong; retrying would fail the same way), chained ``from exc``, in one place: the table
:data:`INFLUX_EXC_MAP` and the context manager :func:`map_influx_errors` that applies it
(an HTTP status, whichever writer got it, is classified by :func:`_classify`).

Blocking I/O runs in a daemon worker thread of each writer
(:class:`derrick.plumbing.threads.DaemonThreads`), so a write hung on a frozen InfluxDB
never holds up the collector's exit: its lines are not acknowledged yet, so the broker
(or the spool) still has them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from collector.config import InfluxV1, InfluxV2
from derrick.plumbing.threads import DaemonThreads

CLOSE_TIMEOUT_S = 2.0


class StoreError(Exception):
    """Writing to InfluxDB failed."""


class StoreUnavailable(StoreError):
    """InfluxDB cannot take the points now; try again later."""


class DataRejected(StoreError):
    """InfluxDB refused the points (HTTP 4xx); retrying will not help."""


class Writer(Protocol):
    url: str

    async def write(self, lines: list[str]) -> None: ...

    async def field_types(self, measurement: str) -> dict[str, set[str]]: ...

    async def close(self) -> None: ...


def _classify(status: int, body: str, url: str) -> StoreError:
    """4xx is bad data, except 404 (database or bucket missing: fix the server, keep data)."""
    if status in (0, 404, 429) or status >= 500:
        return StoreUnavailable(f"{url}: HTTP {status}: {body[:300]}")
    return DataRejected(f"{url}: HTTP {status}: {body[:300]}")


def _http_answer(exc: ApiException, url: str) -> StoreError:
    """An HTTP answer from the v2 client: its status picks the class (:func:`_classify`)."""
    return _classify(int(exc.status or 0), str(exc.body or exc.reason), url)


def _unavailable(exc: Exception, url: str) -> StoreError:
    return StoreUnavailable(f"{url}: {exc.__class__.__name__}: {exc}")


# What influxdb-client and the HTTP stacks under both writers raise -> how it becomes our
# error. Most specific first: the first entry the exception is an instance of wins.
INFLUX_EXC_MAP: dict[type[Exception], Callable[[Any, str], StoreError]] = {
    ApiException: _http_answer,  # 429 and 5xx: StoreUnavailable; other 4xx: DataRejected
    urllib3.exceptions.HTTPError: _unavailable,  # v2: timeout, refused, protocol error
    http.client.HTTPException: _unavailable,  # v1: the HTTP exchange broke off
    OSError: _unavailable,  # refused, reset, timed out, name not resolved
}


@contextlib.contextmanager
def map_influx_errors(url: str) -> Iterator[None]:
    """Raise what the block raises as our error (:data:`INFLUX_EXC_MAP`), ``from`` it.

    Anything not in the table passes untouched, as do cancellation, KeyboardInterrupt
    and SystemExit (not Exceptions).
    """
    try:
        yield
    except Exception as exc:
        mapped = next(
            (ours for theirs, ours in INFLUX_EXC_MAP.items() if isinstance(exc, theirs)), None
        )
        if mapped is None:
            raise
        raise mapped(exc, url) from exc


class V1Writer:
    """POST /write?db=...&precision=ns over one kept-alive HTTP connection."""

    def __init__(self, settings: InfluxV1) -> None:
        self.settings = settings
        self.url = settings.url
        parsed = urllib.parse.urlsplit(settings.url)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 8086
        self._https = parsed.scheme == "https"
        query = {"db": settings.database, "precision": "ns"}
        if settings.retention_policy:
            query["rp"] = settings.retention_policy
        self._path = f"{parsed.path.rstrip('/')}/write?{urllib.parse.urlencode(query)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        password = settings.password()
        if settings.username:
            secret = password.get_secret_value() if password else ""
            token = base64.b64encode(f"{settings.username}:{secret}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._conn: http.client.HTTPConnection | None = None
        self._thread = DaemonThreads("influx-v1")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.settings.timeout_s)
        return self._conn

    def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str]:
        conn = self._connection()
        try:
            with map_influx_errors(self.url):
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read().decode("utf-8", "replace")
        except StoreUnavailable:  # the connection is in no known state: the next opens anew
            conn.close()
            self._conn = None
            raise

    def _post_lines(self, lines: list[str]) -> None:
        data = "\n".join(lines).encode()
        status, body = self._request("POST", self._path, data, self._headers)
        if status == 404 and self.settings.create_database:
            self._create_database_sync()  # InfluxDB was down at start-up, or lost it
            status, body = self._request("POST", self._path, data, self._headers)
        if status != 204:
            raise _classify(status, body, self.url)

    async def write(self, lines: list[str]) -> None:
        await self._thread.run(self._post_lines, lines)

    def _create_database_sync(self) -> None:
        query = urllib.parse.urlencode({"q": f'CREATE DATABASE "{self.settings.database}"'})
        headers = {**self._headers, "Content-Type": "application/x-www-form-urlencoded"}
        status, body = self._request("POST", "/query", query.encode(), headers)
        if status != 200 or '"error"' in body:
            raise _classify(status if status != 200 else 400, body, self.url)

    async def create_database(self) -> None:
        await self._thread.run(self._create_database_sync)

    async def field_types(self, measurement: str) -> dict[str, set[str]]:
        """``SHOW FIELD KEYS``: the types each field of ``measurement`` is stored with."""
        return await self._thread.run(self._field_types_sync, measurement)

    def _field_types_sync(self, measurement: str) -> dict[str, set[str]]:
        query = urllib.parse.urlencode(
            {"db": self.settings.database, "q": f'SHOW FIELD KEYS FROM "{measurement}"'}
        )
        status, body = self._request("GET", f"/query?{query}", b"", self._headers)
        if status != 200:
            raise _classify(status, body, self.url)
        try:
            series = json.loads(body)["results"][0].get("series") or []
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise DataRejected(f"{self.url}: unreadable SHOW FIELD KEYS answer") from exc
        types: dict[str, set[str]] = {}
        for row in series[0]["values"] if series else []:
            types.setdefault(row[0], set()).add(row[1])
        return types

    async def query(self, influxql: str) -> list[dict[str, Any]]:
        """Run InfluxQL through ``GET /query`` (``epoch=ns``): the rows of every series of
        every statement, each a dict of its columns with the series' tags merged in (times
        as integer nanoseconds in ``time``). :class:`StoreError` when it fails."""
        return await self._thread.run(self._query_sync, influxql)

    def _query_sync(self, influxql: str) -> list[dict[str, Any]]:
        params = {"db": self.settings.database, "epoch": "ns", "q": influxql}
        if self.settings.retention_policy:
            params["rp"] = self.settings.retention_policy
        prefix = urllib.parse.urlsplit(self.url).path.rstrip("/")
        path = f"{prefix}/query?{urllib.parse.urlencode(params)}"
        status, body = self._request("GET", path, b"", self._headers)
        if status != 200:
            raise _classify(status, body, self.url)
        try:
            results = json.loads(body)["results"]
            return [row for result in results for row in self._result_rows(result)]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise DataRejected(f"{self.url}: unreadable /query answer") from exc

    def _result_rows(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        if "error" in result:
            raise DataRejected(f"{self.url}: query refused: {str(result['error'])[:300]}")
        rows: list[dict[str, Any]] = []
        for series in result.get("series") or []:
            tags = series.get("tags") or {}
            columns = series["columns"]
            for values in series.get("values") or []:
                rows.append({**tags, **dict(zip(columns, values, strict=True))})
        return rows

    async def close(self) -> None:
        """Close the connection; a write still hung on it is abandoned (see module doc)."""
        conn, self._conn = self._conn, None
        self._thread.close()
        if conn is not None:
            with contextlib.suppress(OSError):
                if conn.sock is not None:
                    conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()


class V2Writer:
    """influxdb-client's synchronous write API, run in a worker thread."""

    def __init__(self, settings: InfluxV2) -> None:
        self.settings = settings
        self.url = settings.url
        token = settings.token()
        self._client = InfluxDBClient(
            url=settings.url,
            token=token.get_secret_value() if token else "",
            org=settings.org,
            timeout=int(settings.timeout_s * 1000),
            retries=False,  # the store stage retries, with backoff and a log line
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        self._thread = DaemonThreads("influx-v2")

    def _write_sync(self, lines: list[str]) -> None:
        with map_influx_errors(self.url):
            self._api.write(
                bucket=self.settings.bucket,
                org=self.settings.org,
                record=lines,
                write_precision=WritePrecision.NS,
            )

    async def write(self, lines: list[str]) -> None:
        await self._thread.run(self._write_sync, lines)

    async def field_types(self, measurement: str) -> dict[str, set[str]]:
        """Not asked of a v2 server (no InfluxQL there): types are learned from values."""
        return {}

    async def query(self, influxql: str) -> list[dict[str, Any]]:
        """Not available: the console's reads are InfluxQL (see :meth:`V1Writer.query`)."""
        raise StoreError("the console's journal needs InfluxDB's v1 query API (InfluxDB 1.x)")

    async def close(self) -> None:
        """Close the client; bounded, as a write may still hang in the worker thread."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._thread.run(self._client.close), CLOSE_TIMEOUT_S)
        self._thread.close()


def make_writer(settings: InfluxV1 | InfluxV2) -> V1Writer | V2Writer:
    return V1Writer(settings) if isinstance(settings, InfluxV1) else V2Writer(settings)
