"""Latency of ``cxr predict`` on one 1024 px PNG on this machine, per model (issue 5: under a second on CPU;
issue 18: the whole command, as a user waits for it, under 5 s).

    .venv/bin/python bench/predict_latency.py [--models small densenet121] [--image-size 224] [--runs 3]

Writes a model bundle with untrained weights (latency does not depend on them; every finding is
then forced above its threshold so that the heatmap, box and overlay work is included), and times
the model load and, separately, the best of 5 single-image predictions in this process; then, in the
same run, the whole ``cxr predict IMAGE --model M.pt --json`` in a fresh process (``--runs`` times), the same
command with ``--model models:/NAME@champion`` against a real MLflow server on 127.0.0.1 and against a local
SQLite store as ``cxr demo`` uses (the first call with an empty model cache, then with the bundle cached),
beside the floor every such process pays, ``python -c "import torch"``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxr.findings import FINDINGS
from cxr.learn.checkpoint import ModelBundle
from cxr.learn.models import build_model
from cxr.learn.predict import predict_images

CXR = Path(sys.executable).parent / "cxr"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small", "densenet121"], help="(default: small densenet121)")
    parser.add_argument("--image-size", type=int, default=224, help="model input side (default 224)")
    parser.add_argument("--runs", type=int, default=3, help="fresh-process runs of the whole command (default 3)")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory() as tmp, registry(Path(tmp)) as register:
        png = Path(tmp) / "image.png"
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)).save(buf, format="PNG")
        png.write_bytes(buf.getvalue())
        for name in args.models:
            bundle = ModelBundle(
                build_model(name).state_dict(), name, args.image_size, list(FINDINGS), [0.0] * len(FINDINGS)
            )
            bundle.save(str(Path(tmp) / f"{name}.pt"))
            start = time.perf_counter()
            predict_images([str(png)], str(Path(tmp) / f"{name}.pt"))
            first = time.perf_counter() - start
            times = []
            for _ in range(5):
                start = time.perf_counter()
                result = predict_images([str(png)], str(Path(tmp) / f"{name}.pt"), str(Path(tmp) / "heatmaps"))
                times.append(time.perf_counter() - start)
            assert len(result[0].findings) == len(FINDINGS)
            print(
                f"{name:>12} at {args.image_size} px: first call {first:.2f} s; one image with 14 heatmaps, "
                f"boxes and overlays, model load included: {min(times):.2f} s (best of 5)"
            )
            command = [str(CXR), "predict", str(png), "--model", str(Path(tmp) / f"{name}.pt"), "--json"]
            walls = [wall([*command, "--device", "cpu"]) for _ in range(args.runs)]
            print(
                f"{name:>12} whole command in a fresh process: {', '.join(f'{w:.2f}' for w in walls)} s "
                f"(best {min(walls):.2f} s; {min(walls) / min(times):.1f}x the in-process call)"
            )
            for store in ("server", "sqlite"):
                uri = register(name, bundle, store)
                env = {**os.environ, "CXR_CACHE": str(Path(tmp) / f"cache-{name}-{store}")}
                env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
                registered = [str(CXR), "predict", str(png), "--model", uri, "--json", "--device", "cpu"]
                cold = wall(registered, env)
                warm = [wall(registered, env) for _ in range(args.runs)]
                print(
                    f"{name:>12} whole command with --model {uri} ({STORES[store]}): first (fetches the bundle) "
                    f"{cold:.2f} s, then {', '.join(f'{w:.2f}' for w in warm)} s (best {min(warm):.2f} s)"
                )
        floor = [wall([sys.executable, "-c", "import torch"]) for _ in range(args.runs)]
        print(f"floor, python -c 'import torch': {', '.join(f'{w:.2f}' for w in floor)} s (best {min(floor):.2f} s)")


def wall(command: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds one command takes in a fresh process, as a user waits for it."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - start


STORES = {"server": "an MLflow server on 127.0.0.1", "sqlite": "the local SQLite store, as cxr demo's"}


@contextmanager
def registry(tmp: Path) -> Iterator[Callable[[str, ModelBundle, str], str]]:
    """A real MLflow server on 127.0.0.1 (artifacts in a folder) and a local SQLite store, and a function that logs
    a bundle to a new run in one of them as training does (the pt2 model and ``bundle/model.pt``), registers it,
    makes it the champion, gives its ``models:/NAME@champion`` URI and leaves MLFLOW_TRACKING_URI on that store."""
    import mlflow
    from mlflow import MlflowClient

    from cxr.learn.inference import bundle_model
    from cxr.services.mlflowserver import MlflowServer
    from cxr.tracking.mlflow_run import MlflowRun
    from cxr.tracking.registry import log_model

    server = MlflowServer(tmp / "mlflow", str(tmp / "artifacts")).start()
    uris = {"server": server.url, "sqlite": f"sqlite:///{tmp / 'local' / 'mlflow.db'}"}
    (tmp / "local").mkdir()
    MlflowClient(uris["sqlite"]).create_experiment("bench-predict", artifact_location=str(tmp / "local" / "artifacts"))
    saved = os.environ.get("MLFLOW_TRACKING_URI")

    def register(name: str, bundle: ModelBundle, store: str) -> str:
        os.environ["MLFLOW_TRACKING_URI"] = uris[store]
        mlflow.set_tracking_uri(uris[store])
        run = MlflowRun("bench-predict", name, system_metrics=False)
        model_uri = log_model(run, bundle_model(bundle), int(bundle.image_size), bundle.to_bytes())
        run.close()
        version = mlflow.register_model(model_uri, f"bench-{name}")
        MlflowClient(uris[store]).set_registered_model_alias(f"bench-{name}", "champion", version.version)
        return f"models:/bench-{name}@champion"

    try:
        yield register
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


if __name__ == "__main__":
    main()
