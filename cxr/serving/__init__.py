"""``cxr serve``: a model behind HTTP, loaded once, answering one image or a batch per request.

- :mod:`cxr.serving.limits`: how large a body and a batch may be (the defaults, in one place);
- :mod:`cxr.serving.body`: the request body read against that limit as it streams in;
- :mod:`cxr.serving.batch`: the JSON of a batch, checked whole;
- :mod:`cxr.serving.errors`: every error as one JSON object ``{"error": "..."}`` with its status;
- :mod:`cxr.serving.scoring`: uploads decoded in worker threads, scored one batch at a time, as JSON;
- :mod:`cxr.serving.app`: the Starlette app, its three endpoints;
- :mod:`cxr.serving.server`: the model loaded, the port bound, uvicorn serving until a signal.

Why Starlette rather than FastAPI (both are installed: MLflow depends on FastAPI): the endpoints need the
raw request body, streamed and counted against ``--max-body`` before it is held in memory; there are no
form fields to validate (bodies are the image file's bytes, or JSON for a batch; python-multipart is not
installed, so there are no multipart uploads); FastAPI's pydantic layer would add import time and
nothing these endpoints use. Nothing here is imported by ``import cxr.cli``: the command imports it when
it runs.
"""
