"""One error shape for every failure: {"error": {"code", "message", "details"}}.

Clients switch on `code` (stable), show `message` (human), and may read `details` (per field).
Messages never echo request values back, so a mistyped identifier cannot leak into logs downstream.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cgthub.errors import CgthubError, Rejection

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: Rejection.TOO_LARGE.value,
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(CgthubError):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return JSONResponse(body, status_code=status, headers=headers)


def not_found(what: str = "order") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"location": ".".join(str(p) for p in err.get("loc", ())), "problem": err.get("msg", "invalid")}
            for err in exc.errors()
        ]
        where = ", ".join(d["location"] for d in details[:5])
        return error_response(422, "invalid_request", f"the request is not valid: {where}", details)

    @app.exception_handler(DataError)
    async def _does_not_fit(_: Request, exc: DataError) -> JSONResponse:
        # A value the database cannot hold or compare (a NUL in a body's string on PostgreSQL, an
        # integer past 64 bits): the caller's mistake, answered as such. As a 500 it was logged with
        # a traceback that quotes the statement's parameters, and the connection was dropped.
        log.info("a request value does not fit the store (%s)", type(exc.orig).__name__)
        return error_response(422, "invalid_request", "a value in the request cannot be stored or looked up")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in the API: %s", type(exc).__name__)
        return error_response(500, "internal_error", "the server failed to answer; the failure is logged")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad request (unknown parameter, invalid cursor)"},
    401: {"model": ErrorResponse, "description": "Missing, malformed, unknown or revoked API key"},
    403: {"model": ErrorResponse, "description": "The key lacks the scope this route needs"},
    422: {"model": ErrorResponse, "description": "A parameter or body field is invalid"},
}
NOT_FOUND_RESPONSE: dict[str, Any] = {
    "model": ErrorResponse,
    "description": "No such resource, or not in this key's data scope (the two are indistinguishable)",
}
