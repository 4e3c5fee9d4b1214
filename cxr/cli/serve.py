"""``cxr serve``: a model behind HTTP (:mod:`cxr.serving`); Starlette, uvicorn and torch load when it runs."""

from __future__ import annotations

from typing import Annotated

import typer

from cxr.cli.console import announce, guarded
from cxr.cli.learn import DeviceOption, ModelOption
from cxr.serving.limits import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY  # light: the limits import no web framework


def serve(
    model_uri: ModelOption,
    host: Annotated[
        str,
        typer.Option(
            help="The address to listen on. 127.0.0.1 answers this machine only; 0.0.0.0 answers every network, "
            "and there is no authentication: put a proxy that has some in front first."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="The port; 0 takes a free one (the ready line names it).")
    ] = 8000,
    device: DeviceOption = "auto",
    max_body: Annotated[
        int,
        typer.Option(
            "--max-body",
            min=1,
            help="The largest request body in bytes (an image file, or a batch's JSON); larger is refused with 413 "
            "before it is read whole. The default is the largest image file decoding accepts (64 MiB).",
        ),
    ] = DEFAULT_MAX_BODY,
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch",
            min=1,
            help="The most images one POST /predict/batch may hold, all scored in one pass of the model "
            "(4 times cxr predict's batch: as many NIH PNGs in base64 fit well within the default --max-body).",
        ),
    ] = DEFAULT_MAX_BATCH,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log one line per request on stderr (uvicorn's access log).")
    ] = False,
) -> None:
    """Serve a model over HTTP: POST /predict (an image file's bytes), POST /predict/batch (JSON of base64 images),
    GET /health.

    The model loads once, before the port is bound: once GET /health answers, the server is ready, and one line
    on stderr says so. Answers are JSON: the 14 probabilities, and for each finding above its threshold its box
    (the image's own pixels and the 1024 px frame) and heatmap share, as `cxr predict --json` prints them;
    errors are {"error": "..."} with their HTTP status. Ctrl-C or SIGTERM stops it. docs/serving.md has the
    details and curl examples."""
    from cxr.learn.reference import check_device, model_reference
    from cxr.serving.limits import ServeLimits
    from cxr.serving.server import address, bind, open_scorer
    from cxr.serving.server import serve as run

    # a wrong --device, --model, limit or --host is named before torch and the model load (seconds)
    guarded(check_device, device)
    path = guarded(model_reference, model_uri)
    limits = guarded(ServeLimits, max_body, max_batch)
    guarded(address, host, port)
    scorer = guarded(open_scorer, path, device)
    sock = guarded(bind, host, port)
    run(scorer, model_uri, sock, limits, access_log, announce)
