"""Every answer that is not a result: one JSON object ``{"error": "<one clear sentence>"}`` with its status.

400: the request itself is wrong (an empty body, malformed batch JSON or base64, an unknown query
parameter); 404 and 405: no such endpoint, or not with that method; 413: a body or batch over its limit;
422: an image that cannot be decoded (the reason and detail decoding gives, as ``cxr predict`` and ingest
state them); 500: anything unexpected, logged once on the server with its traceback and answered with a
short message (never the traceback). After each of them the server goes on serving.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from cxr.data.decode import ImageRejected
from cxr.serving.body import BodyTooLarge

ENDPOINTS = "POST /predict, POST /predict/batch, GET /health"
log = logging.getLogger("cxr.serving")

Endpoint = Callable[[Request], Awaitable[Response]]


class Problem(Exception):
    """A request that cannot be answered with a result: ``status`` and the sentence that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def rejection(err: ImageRejected) -> str:
    """What decoding said, as the client reads it: ``unreadable_image: not a PNG or JPEG or DICOM: text``."""
    return f"{err.reason}: {err.detail}"


def answered(endpoint: Endpoint) -> Endpoint:
    """``endpoint`` whose every failure is one JSON error: the expected ones with their status, anything else
    logged here, once, and answered 500."""

    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Problem as err:
            return error_response(err.status, err.message)
        except BodyTooLarge as err:
            return error_response(413, str(err), {"Connection": "close"})
        except ImageRejected as err:
            return error_response(422, rejection(err))
        except ClientDisconnect:  # the client left while sending: no one reads an answer
            return Response(status_code=400)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(500, "the server failed on this request (its log says why); it goes on serving")

    wrapper.__name__ = endpoint.__name__
    wrapper.__doc__ = endpoint.__doc__
    return wrapper


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such path, a method the path does not take) as JSON."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        message = f"there is no {path} here: this server answers {ENDPOINTS}"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{path} does not take {request.method}: use {allowed} ({ENDPOINTS})"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, dict(exc.headers or {}))
