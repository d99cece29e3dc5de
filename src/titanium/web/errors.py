"""Domain errors to HTTP: the one mapping every service installs.

Error bodies are `{"status": "failed", "message": ..., "detail": ...}`: the
old clients' login shape, with the same text under `detail` as well, where
the old FastAPI services put it and their clients read it; plus `errors` with
one entry per field on 422 (at most `MAX_FIELD_ERRORS`). Every error body is
made by `error_response`, so the two names cannot drift apart. They never carry
stack traces, SQL or driver messages.
"""

import logging
from collections.abc import Mapping
from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from titanium.errors import (
    BadGateway,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    TitaniumError,
    Unauthorized,
    Unavailable,
    UpstreamTimeout,
)

log = logging.getLogger("titanium.errors")


class FieldError(BaseModel):
    """What is wrong with one field."""

    field: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error answer."""

    status: Literal["failed"]
    message: str
    detail: str = Field(description="The same text as `message`, for FastAPI-style clients")
    errors: list[FieldError] | None = None


# Documented on every operation, so clients and fuzzers know the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": description}
    for code, description in [
        (400, "Malformed request body (for example not UTF-8)"),
        (401, "Missing, invalid or expired token"),
        (403, "Not the author"),
        (404, "Not found"),
        (409, "Conflict with existing data"),
        (413, "Request body too large"),
        (422, "Invalid input"),
        (429, "Too many attempts"),
        (503, "A dependency is unavailable"),
    ]
}

STATUS: dict[type[TitaniumError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    Conflict: 409,
    Unauthorized: 401,
    Forbidden: 403,
    RateLimited: 429,
    Unavailable: 503,
    BadGateway: 502,
    UpstreamTimeout: 504,
}


def error_response(
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    errors: list[FieldError] | None = None,
) -> JSONResponse:
    """The JSON error body every Titanium service answers with."""
    # Built from the documented model, so what is sent is what the OpenAPI says.
    body = ErrorBody(status="failed", message=message, detail=message, errors=errors)
    return JSONResponse(body.model_dump(exclude_none=True), status, dict(headers or {}))


def response_for(exc: TitaniumError | HTTPException) -> Response:
    """The JSON answer to a domain error or an HTTPException."""
    if isinstance(exc, HTTPException):
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)
    headers: dict[str, str] = {}
    errors: list[FieldError] | None = None
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = "1"
    if isinstance(exc, InvalidInput) and exc.field:
        errors = [FieldError(field=exc.field, message=exc.message)]
    if status == 500:
        log.error("unmapped domain error %r", exc)
        return error_response(500, "internal error")
    return error_response(status, exc.message, headers, errors)


async def _domain_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TitaniumError)
    return response_for(exc)


# A 422 lists what a person fixing a form needs, not one entry per unknown key:
# a 1 MiB body of extra keys made 73,843 errors, a 4.6 MB answer and about half a
# second of CPU spent here building it. Field names come from the client's keys,
# so they are cut too.
MAX_FIELD_ERRORS = 20
MAX_ERROR_TEXT = 200


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


def _field_name(location: tuple[Any, ...]) -> str:
    # ("body", "title") -> "title"; ("query", "limit") -> "limit"
    parts = [str(part) for part in location if part not in ("body", "query", "path", "header")]
    return _clip(".".join(parts) or str(location[0] if location else "request"))


def _field_error(error: Mapping[str, Any]) -> FieldError:
    return FieldError(
        field=_field_name(tuple(error["loc"])),
        message=_clip(str(error["msg"]).removeprefix("Value error, ")),
    )


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    found = exc.errors()
    # Only the listed ones are converted: the rest are counted, never built.
    errors = [_field_error(error) for error in found[:MAX_FIELD_ERRORS]]
    first = errors[0] if errors else FieldError(field="request", message="invalid")
    # `detail` is this one line, not FastAPI's list: the old clients showed it as text.
    message = f"{first.field}: {first.message}"
    if len(found) > len(errors):
        message += f" (and {len(found) - len(errors)} more errors not listed)"
    return error_response(422, message, errors=errors)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return response_for(exc)


async def _unexpected(_request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal error")


def install_error_handlers(app: Starlette) -> None:
    """Map domain, validation and HTTP errors of `app` to JSON error bodies."""
    app.add_exception_handler(TitaniumError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
