"""Latency, throughput and memory of ``cxr serve`` on this machine, per model, in one run.

    .venv/bin/python bench/serve_latency.py [--models small densenet121] [--image-size 224] [--requests 200]

For each model, an untrained bundle (latency does not depend on the weights) whose thresholds are 0, so
that all 14 findings are localized (a heatmap and a box each: the worst case), is served by ``cxr serve``
in a subprocess on 127.0.0.1, and the run prints:

- the server's start, from the command to its ready line (``GET /health`` answers from then on);
- one 1024 px PNG over HTTP, ``POST /predict``, best and median of 10 (goal: under 0.5 s on this CPU),
  beside ``Predictor.score`` on the same decoded image in this process; and with ``overlays=true`` (the 14
  PNG overlays at 1024 px, base64 in the answer), best and median of 3;
- images per second for ``POST /predict/batch`` of 1, 4 and 16 images;
- a load test: ``--requests`` single-image requests from 4 client threads at once: errors (must be 0),
  p50 and p95 latency, total time, and the server's RSS after warm-up, after half the requests and after
  all of them (flat: the last within a few % of the first).

Bounded: every request has a timeout, the server is killed at the end whatever happens.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch
from PIL import Image

from cxr.findings import FINDINGS
from cxr.learn.checkpoint import ModelBundle
from cxr.learn.models import build_model
from cxr.learn.predictor import Predictor
from cxr.serving.scoring import decoded

CLIENTS = 4
REQUEST_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 120.0


def start(model: Path) -> tuple[subprocess.Popen, str, float]:
    """``cxr serve`` on a free port of 127.0.0.1; the process, its URL and seconds to its ready line."""
    begun = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "cxr.cli", "serve", "--model", str(model), "--port", "0", "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stderr:  # type: ignore[union-attr]
            if line.startswith("serving ") and not found:
                found.append(line)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(READY_TIMEOUT_S) or not found:
        process.kill()
        raise RuntimeError("the server did not start")
    return process, found[0].split(" on ", 1)[1].split(" ", 1)[0], time.perf_counter() - begun


def timed(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        begun = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begun)
    return times


def interleaved(
    client: httpx.Client, predictor: Predictor, png: bytes, n: int
) -> tuple[list[float], list[float], list[float]]:
    """Seconds for ``POST /predict`` of the PNG, then to decode it here, then for ``Predictor.score`` here, in
    turn ``n`` times: this VM's CPUs slow down under sustained load, and the three see the same conditions."""
    gray = decoded(png)
    served, decoding, scoring = [], [], []
    for _ in range(n):
        served += timed(lambda: post(client, "/predict", content=png), 1)
        decoding += timed(lambda: decoded(png), 1)
        scoring += timed(lambda: predictor.score([gray], ["image.png"]), 1)
    return served, decoding, scoring


def post(client: httpx.Client, path: str, **kwargs) -> httpx.Response:
    answer = client.post(path, timeout=REQUEST_TIMEOUT_S, **kwargs)
    answer.raise_for_status()
    return answer


def bench_model(name: str, image_size: int, png: bytes, tmp: Path, requests: int) -> None:
    model = tmp / f"{name}.pt"
    torch.manual_seed(0)
    ModelBundle(build_model(name).state_dict(), name, image_size, list(FINDINGS), [0.0] * len(FINDINGS)).save(
        str(model)
    )
    predictor = Predictor.load(str(model), "cpu")  # idle while the server works, and the other way round
    predictor.score([decoded(png)], ["warm-up"])
    process, url, ready_s = start(model)
    try:
        server = psutil.Process(process.pid)
        with httpx.Client(base_url=url) as client:
            result = post(client, "/predict", content=png).json()  # warm-up
            assert len(result["findings"]) == len(FINDINGS)
            single, decoding, in_process = interleaved(client, predictor, png, 10)
            overlays = timed(lambda: post(client, "/predict", params={"overlays": "true"}, content=png), 3)
            print(
                f"{name:>12} at {image_size} px: server start to ready {ready_s:.2f} s; one 1024 px PNG, 14 findings "
                f"localized, over HTTP: best {min(single):.3f} s, median {statistics.median(single):.3f} s "
                f"(in process: decoding {min(decoding):.3f} s, then Predictor.score best {min(in_process):.3f} s, "
                f"median {statistics.median(in_process):.3f} s); with the 14 overlays: best {min(overlays):.2f} s, "
                f"median {statistics.median(overlays):.2f} s"
            )
            rates = []
            for n in (1, 4, 16):
                body = {"images": [{"name": f"{k}.png", "data": base64.b64encode(png).decode()} for k in range(n)]}
                post(client, "/predict/batch", json=body)  # warm-up at this size
                seconds = min(timed(lambda body=body: post(client, "/predict/batch", json=body), 3))
                rates.append(f"{n}: {n / seconds:.1f} images/s ({seconds:.2f} s)")
            print(f"{name:>12} POST /predict/batch, best of 3: {'; '.join(rates)}")
        load_test(name, url, png, server, requests)
    finally:
        process.kill()
        process.wait(30)


def load_test(name: str, url: str, png: bytes, server: psutil.Process, requests: int) -> None:
    """``requests`` single-image requests from CLIENTS threads, in two halves, RSS after each."""
    local = threading.local()
    errors: list[str] = []

    def one(_: int) -> float:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url)
        begun = time.perf_counter()
        try:
            post(local.client, "/predict", content=png)
        except httpx.HTTPError as err:
            errors.append(f"{type(err).__name__}: {err}")
        return time.perf_counter() - begun

    rss = [server.memory_info().rss]
    latencies: list[float] = []
    begun = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        for half in (requests // 2, requests - requests // 2):
            latencies += list(pool.map(one, range(half)))
            rss.append(server.memory_info().rss)
    total = time.perf_counter() - begun
    p50, p95 = np.percentile(latencies, [50, 95])
    mib = [f"{r / 2**20:.0f}" for r in rss]
    print(
        f"{name:>12} load: {requests} requests from {CLIENTS} clients at once: {len(errors)} errors, "
        f"p50 {p50:.2f} s, p95 {p95:.2f} s, total {total:.1f} s ({requests / total:.1f} requests/s); server RSS "
        f"after warm-up / {requests // 2} / {requests} requests: {' / '.join(mib)} MiB "
        f"({100 * (rss[-1] - rss[0]) / rss[0]:+.1f} %)"
    )
    if errors:
        print(f"{name:>12} first error: {errors[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small", "densenet121"], help="(default: small densenet121)")
    parser.add_argument("--image-size", type=int, default=224, help="model input side (default 224)")
    parser.add_argument("--requests", type=int, default=200, help="requests of the load test (default 200)")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}"
    )
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)).save(buf, format="PNG")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            bench_model(name, args.image_size, buf.getvalue(), Path(tmp), args.requests)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
