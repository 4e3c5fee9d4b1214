"""Training throughput, measured side by side in one run: end to end (shard loader + augmentation +
model + optimizer) vs. the model alone on tensors already on the device, vs. a loader that decodes
PNGs every step.

    .venv/bin/python bench/train_throughput.py [--model small] [--image-size 128] [--batch-size 32] [--steps 20]
    # on a GPU: --model densenet121 --image-size 224 --batch-size 256 --amp bf16 --channels-last

Goal (issue 5, on a GPU): end-to-end >= 0.95 of model-only for DenseNet-121 at 224 px in bf16.
All three paths run the same train step (AdamW, the weighted BCE); the first 3 steps of each are
warm-up and not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxr.data.decode import decode_image, resize_square
from cxr.data.ingest import ingest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version
from cxr.learn.augment import AugmentConfig, apply, epoch_parameters
from cxr.learn.distributed import init_distributed
from cxr.learn.inference import to_device
from cxr.learn.loss import WeightedBCE
from cxr.learn.models import build_model
from cxr.learn.shards import ShardStore, gather, split_rows

WARMUP = 3


def step_fn(model, optimizer, loss_fn, amp: bool, channels_last: bool):
    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False):
            logits = model(images)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(loop, steps: int, batch: int, device: torch.device) -> float:
    for i in range(WARMUP):
        loop(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(WARMUP, WARMUP + steps):
        loop(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", help="model name (default small)")
    parser.add_argument("--image-size", type=int, default=128, help="model input and shard side (default 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path (default 20)")
    parser.add_argument("--images", type=int, default=0, help="synthetic archive size (default: enough for all steps)")
    parser.add_argument(
        "--png-size", type=int, default=1024, help="side of the source PNGs, as in NIH's release (default 1024)"
    )
    parser.add_argument("--amp", default="auto", help="bf16 on GPU: auto|bf16|off (default auto)")
    parser.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=True, help="on GPU (default on)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (default off)")
    args = parser.parse_args()
    info = init_distributed("auto")
    device = info.device
    amp = device.type == "cuda" and args.amp != "off"
    channels_last = device.type == "cuda" and args.channels_last
    n_images = args.images or args.batch_size * (args.steps + WARMUP) + 64
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthesize(
            SynthConfig(out=str(root / "src"), n_images=n_images, size=args.png_size, workers=os.cpu_count() or 1)
        )
        ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(args.image_size,)))
        version = open_version(str(root / "ds"))
        metadata = version.metadata()
        rows = split_rows(metadata, None, expand_repeats=False)
        sources = metadata["source_uri"].to_pylist()
        store = ShardStore(version.path, version.digest, args.image_size)

        model = build_model(args.model).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if args.compile:
            model = torch.compile(model)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss_fn = WeightedBCE([0.9] * 14, [0.1] * 14).to(device)
        step = step_fn(model, optimizer, loss_fn, amp, channels_last)
        params = torch.from_numpy(epoch_parameters(AugmentConfig(), len(rows), 0, 0))
        b = args.batch_size
        order = np.random.default_rng(0).permutation(len(rows))

        fixed = torch.rand(b, 1, args.image_size, args.image_size, device=device)
        fixed_targets = torch.from_numpy(rows.labels[:b]).to(device)

        def model_only(i: int) -> None:
            step(fixed, fixed_targets)

        def end_to_end(i: int) -> None:
            take = order[(i * b) % (len(rows) - b) :][:b]
            images = apply(to_device(gather(store, rows, take), info), params[take], args.image_size)
            step(images, torch.from_numpy(rows.labels[take]).to(device, non_blocking=True))

        def png_loader(i: int) -> None:
            take = order[(i * b) % (len(rows) - b) :][:b]
            pixels = np.stack(
                [resize_square(decode_image(Path(sources[j]).read_bytes()), args.image_size) for j in take]
            )
            images = apply(to_device(pixels, info), params[take], args.image_size)
            step(images, torch.from_numpy(rows.labels[take]).to(device, non_blocking=True))

        only = timed(model_only, args.steps, b, device)
        e2e = timed(end_to_end, args.steps, b, device)
        png = timed(png_loader, args.steps, b, device)
    name = (
        torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    )
    print(f"machine: {platform.machine()}, {name}; torch {torch.__version__}")
    print(
        f"source PNGs {args.png_size} px; model {args.model}, {args.image_size} px, batch {b}, "
        f"{args.steps} timed steps, amp {'bf16' if amp else 'off'}, "
        f"channels_last {channels_last}, compile {args.compile}"
    )
    print(f"model only (tensors on the device) : {only:8.1f} img/s")
    print(f"end to end (shards + augmentation) : {e2e:8.1f} img/s  = {e2e / only:.2f} of model only")
    print(f"PNG decoding loader                : {png:8.1f} img/s  = {png / only:.2f} of model only")


if __name__ == "__main__":
    main()
