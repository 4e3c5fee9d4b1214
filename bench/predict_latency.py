"""Latency of ``cxr predict`` on one 1024 px PNG on this machine, per model (issue 5: under a second on CPU;
issue 18: the whole command, as a user waits for it, under 5 s).

    .venv/bin/python bench/predict_latency.py [--models small densenet121] [--image-size 224] [--runs 3]

Writes a model bundle with untrained weights (latency does not depend on them; every finding is
then forced above its threshold so that the heatmap, box and overlay work is included), and times
the model load and, separately, the best of 5 single-image predictions in this process; then, in the
same run, the whole ``cxr predict IMAGE --model M.pt --json`` in a fresh process (``--runs`` times) beside
the floor every such process pays, ``python -c "import torch"``.
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
    with tempfile.TemporaryDirectory() as tmp:
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
        floor = [wall([sys.executable, "-c", "import torch"]) for _ in range(args.runs)]
        print(f"floor, python -c 'import torch': {', '.join(f'{w:.2f}' for w in floor)} s (best {min(floor):.2f} s)")


def wall(command: list[str]) -> float:
    """Seconds one command takes in a fresh process, as a user waits for it."""
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
