"""The Starlette app of ``cxr serve``: three endpoints over one :class:`cxr.serving.scoring.Scorer`.

- ``GET /health``: 200 and what is served: the model, its input size, the findings and their thresholds,
  the model URI as given (credentials redacted) and the limits. It answers only once the model is loaded.
- ``POST /predict?name=N&overlays=true|false``: the body is the image file's bytes (PNG, JPEG or DICOM;
  any content type); the result for it.
- ``POST /predict/batch?overlays=true|false``: the body is ``{"images": [{"name", "data": base64}, ...]}``;
  ``{"results": [...]}``, one entry per image in order, the usable images scored in one pass of the model.

Errors are :mod:`cxr.serving.errors`' JSON objects. Starlette rather than FastAPI: see :mod:`cxr.serving`.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cxr.redact import redact
from cxr.serving.batch import SHAPE, parse_batch
from cxr.serving.body import read_body
from cxr.serving.errors import Problem, answered, http_error
from cxr.serving.limits import ServeLimits
from cxr.serving.scoring import Scorer

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no", "")
UPLOAD = "upload"  # the image's name in a result when the request names none


def _parameters(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, refusing any the endpoint does not take (a misspelt one would be ignored)."""
    unknown = [key for key in request.query_params if key not in allowed]
    if unknown:
        raise Problem(400, f"unknown query parameter {unknown[0]!r}: {request.url.path} takes {', '.join(allowed)}")
    return dict(request.query_params)


def _flag(parameters: dict[str, str], key: str) -> bool:
    value = parameters.get(key, "false").lower()
    if value not in TRUE + FALSE:
        raise Problem(400, f"{key} must be true or false, got {parameters[key]!r}")
    return value in TRUE


def build_app(scorer: Scorer, model_uri: str, limits: ServeLimits) -> Starlette:
    """The app serving ``scorer``'s model, loaded from ``model_uri``, within ``limits``."""
    health_body: dict[str, Any] = {
        "status": "ok",
        **scorer.described(),
        "model_uri": redact(model_uri),
        "limits": limits.described(),
    }

    async def health(request: Request) -> Response:
        return JSONResponse(health_body)

    @answered
    async def predict(request: Request) -> Response:
        parameters = _parameters(request, ("name", "overlays"))
        overlays = _flag(parameters, "overlays")
        body = await read_body(request, limits.max_body)
        if not body:
            raise Problem(400, "the body is empty: send the image file's bytes (curl --data-binary @image.png)")
        return JSONResponse(await scorer.one(body, parameters.get("name") or UPLOAD, overlays))

    @answered
    async def predict_batch(request: Request) -> Response:
        overlays = _flag(_parameters(request, ("overlays",)), "overlays")
        body = await read_body(request, limits.max_body)
        if not body:
            raise Problem(400, f"the body is empty: send {SHAPE}")
        uploads = await anyio.to_thread.run_sync(parse_batch, body, limits.max_batch)  # 64 MiB of JSON: not here
        del body  # the decoded bytes are what is needed now, not their base64
        return JSONResponse({"results": await scorer.many(uploads, overlays)})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/predict/batch", predict_batch, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
