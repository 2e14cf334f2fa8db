"""The API's one error shape, ``{"error": "..."}``, for our refusals and for those of the
framework (unknown path, wrong method, a query or path that does not validate)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

NO_STORE = {"Cache-Control": "no-store"}


class ApiError(Exception):
    """A request answered with ``status`` and ``{"error": message}`` (plus ``extra``)."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    return JSONResponse(
        {"error": message, **extra}, status, headers={**NO_STORE, **(headers or {})}
    )


ENDPOINTS = (
    "GET /health, GET /alarms, GET /alarms/<id>, POST /alarms/<id>/<action>, GET /journal, "
    "GET /me, GET /openapi.json, GET /api/docs, the console at /console"
)


def install(app: FastAPI) -> None:
    """Map every error of the app and the framework to ``{"error": ...}``."""

    @app.exception_handler(ApiError)
    async def _ours(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _framework(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path[:80]
        if exc.status_code == 404:
            return error_response(404, f"no endpoint {path!r}; have: {ENDPOINTS}")
        if exc.status_code == 405:
            allowed = [m for m in (exc.headers or {}).get("Allow", "").split(", ") if m != "HEAD"]
            allow = ", ".join(allowed)
            return error_response(
                405, f"{path} takes {allow}, not {request.method[:10]}", {"Allow": allow}
            )
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        return error_response(400, f"invalid request: {problems}")
