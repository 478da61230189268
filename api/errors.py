"""Errors at the HTTP boundary: domain errors become JSON {"error", "detail", "hint"} with the right status."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from shipper.errors import (
    ConfigError,
    DamagedObject,
    InvalidId,
    LogshipError,
    ObjectNotFound,
    StoreError,
    StoreUnavailable,
)
from shipper.format.archive import BytesMissing

from .source import LogNotFound

log = logging.getLogger("logship.api")


class BadRequest(LogshipError):
    code = "bad_request"


class Unauthorized(LogshipError):
    code = "unauthorized"


class Forbidden(LogshipError):
    code = "forbidden"


class TooLarge(LogshipError):
    code = "too_large"


STATUS: list[tuple[type[LogshipError], int]] = [
    (InvalidId, 400), (BadRequest, 400), (ConfigError, 400), (Unauthorized, 401), (Forbidden, 403), (TooLarge, 413),
    (LogNotFound, 404), (ObjectNotFound, 404), (BytesMissing, 416), (StoreUnavailable, 503), (StoreError, 502),
    (DamagedObject, 502),  # the store answered, with something logship did not write: a bad upstream answer
]


def json_error(status: int, code: str, detail: str, hint: str = "",
               headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": code, "detail": detail, "hint": hint}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except LogshipError as exc:
        if request.writer is not None and request.writer.output_size > 0:
            # The answer has begun: another one written now would land inside its body. Cut it instead,
            # so the client sees a failed transfer (api/logs.py abort_transfer does this in the handlers).
            log.warning("%s %s: answer cut after it began: %s", request.method, request.path, exc)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # not sent: the transport is closing
        status = next((s for cls, s in STATUS if isinstance(exc, cls)), 500)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc)
        return json_error(status, exc.code, exc.detail, exc.hint)
    except RecursionError:  # the parser of a hostile body (JSON nested 100,000 deep): the request's fault
        log.warning("%s %s: input nested too deeply", request.method, request.path)
        return json_error(400, BadRequest.code, f"{request.method} {request.path}: the input is nested too deeply",
                          "send a flatter body (JSON nested at most a few hundred levels)")
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        hint = {404: "see GET /api/v1/openapi.json for the routes",
                405: "see GET /api/v1/openapi.json for the methods of each route"}.get(exc.status, "")
        return json_error(exc.status, exc.reason.lower().replace(" ", "_"), f"{request.method} {request.path}: "
                          f"{exc.reason}", hint, headers={k: v for k, v in exc.headers.items() if k == "Allow"})
