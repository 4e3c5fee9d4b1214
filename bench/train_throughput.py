"""Training throughput, measured side by side in one run:

- model only: the train step (forward, weighted BCE, backward, AdamW) on a batch already on the device;
- loader only: the training loader (:class:`cxr.learn.loader.Prefetcher`: gather from the memory-mapped
  shards in a background thread, pin and copy to the GPU), no model, on one CPU core, from the page cache;
- end to end: the loader, conversion, the resize and augmentation of training, and the train step;
- a PNG loader for reference: decoding the source files every step instead of reading shards.

    .venv/bin/python bench/train_throughput.py                      # CPU: DenseNet-121, 128 px model, 256 px shards
    .venv/bin/python bench/train_throughput.py --image-size 224 --batch-size 256 --compile   # on a GPU (bf16)

Goals (issue 12): the loader alone sustains at least 5x what one H200 consumes (DenseNet-121 at 224 px,
bf16, compiled: ~3,400 img/s, so >= 17,000 img/s) on one core; on a GPU, end to end >= 0.95 of model only.
The first 3 steps of each path are warm-up and not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cxr.data.decode import decode_image, resize_square
from cxr.data.ingest import ingest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version
from cxr.learn.augment import AugmentConfig, apply, epoch_parameters, resize
from cxr.learn.distributed import init_distributed
from cxr.learn.inference import to_device, to_float
from cxr.learn.loader import Prefetcher
from cxr.learn.loss import WeightedBCE
from cxr.learn.models import build_model
from cxr.learn.shards import ShardStore, split_rows

WARMUP = 3


def step_fn(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: torch.nn.Module, amp: bool, channels_last: bool
) -> Callable[[torch.Tensor, torch.Tensor], None]:
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(loop: Callable[[int], None], steps: int, batch: int, device: torch.device) -> float:
    for i in range(WARMUP):
        loop(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(WARMUP, WARMUP + steps):
        loop(i)
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def plan(order: np.ndarray, batch: int, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``steps`` batches of shuffled rows, wrapping around: (row positions, augmentation rows)."""
    take = [np.take(order, np.arange(i * batch, (i + 1) * batch), mode="wrap") for i in range(steps)]
    return [(t, t) for t in take]


def loader_only(
    store: ShardStore, rows: object, order: np.ndarray, batch: int, steps: int, device: torch.device
) -> float:
    """Batches through the training loader and nothing else, on one core (this process pinned to CPU 0)."""
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    try:
        with Prefetcher(store, rows, plan(order, batch, WARMUP), device) as warm:
            for _ in warm:
                pass
        synchronize(device)
        start = time.perf_counter()
        with Prefetcher(store, rows, plan(order, batch, steps), device) as batches:
            for images in batches:
                images.images.sum() if device.type == "cuda" else None  # touch on the device, as a step would
        synchronize(device)
        return steps * batch / (time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, affinity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121", help="model name (default densenet121)")
    parser.add_argument("--image-size", type=int, default=128, help="model input side (default 128)")
    parser.add_argument("--shard-size", type=int, default=256, help="shard side, as ingest writes them (default 256)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the model paths (default 10)")
    parser.add_argument("--loader-batch", type=int, default=256, help="batch of the loader-only path (default 256)")
    parser.add_argument("--loader-steps", type=int, default=40, help="timed batches of the loader path (default 40)")
    parser.add_argument("--images", type=int, default=2048, help="images in the synthetic archive (default 2048)")
    parser.add_argument("--png-size", type=int, default=512, help="side of the source PNGs (default 512)")
    parser.add_argument("--amp", default="auto", help="bf16 on GPU: auto|bf16|off (default auto)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="on GPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (default off)")
    args = parser.parse_args()
    info = init_distributed("auto")
    device = info.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp = device.type == "cuda" and args.amp != "off"
    channels_last = device.type == "cuda" and args.channels_last
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        workers = os.cpu_count() or 1
        synthesize(SynthConfig(out=str(root / "src"), n_images=args.images, size=args.png_size, workers=workers))
        ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(args.shard_size,)))
        version = open_version(str(root / "ds"))
        metadata = version.metadata()
        rows = split_rows(metadata, None, expand_repeats=False)
        sources = metadata["source_uri"].to_pylist()
        store = ShardStore(version.path, version.digest, args.shard_size)
        order = np.random.default_rng(0).permutation(len(rows))
        loader = loader_only(store, rows, order, args.loader_batch, args.loader_steps, device)

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
        fixed = torch.rand(b, 1, args.image_size, args.image_size, device=device)
        fixed_targets = torch.from_numpy(rows.labels[:b]).to(device)
        only = timed(lambda i: step(fixed, fixed_targets), args.steps, b, device)

        with Prefetcher(store, rows, plan(order, b, WARMUP + args.steps), device) as batches:
            it = iter(batches)

            def end_to_end(i: int) -> None:
                batch = next(it)
                images = apply(resize(to_float(batch.images), args.image_size), params[batch.places], args.image_size)
                step(images, batch.targets)

            e2e = timed(end_to_end, args.steps, b, device)

        def png_loader(i: int) -> None:
            take = np.take(order, np.arange(i * b, (i + 1) * b), mode="wrap")
            pixels = np.stack(
                [resize_square(decode_image(Path(sources[j]).read_bytes()), args.shard_size) for j in take]
            )
            images = apply(resize(to_device(pixels, info), args.image_size), params[take], args.image_size)
            step(images, torch.from_numpy(rows.labels[take]).to(device, non_blocking=True))

        png = timed(png_loader, args.steps, b, device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"machine: {platform.machine()}, {name}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.images} images, {args.shard_size} px shards (page cache), source PNGs {args.png_size} px")
    print(
        f"model {args.model}, {args.image_size} px, batch {b}, {args.steps} timed steps, "
        f"amp {'bf16' if amp else 'off'}, "
        f"channels_last {channels_last}, compile {args.compile}"
    )
    copy = "gather + pin + copy to the GPU" if device.type == "cuda" else "gather; no GPU to pin for or copy to"
    print(
        f"loader only ({copy}; one core, batch {args.loader_batch}): {loader:9.1f} img/s"
        f"  = {loader / only:.1f}x model only, {loader / 3400:.2f}x an H200's 3,400 img/s"
    )
    print(f"model only (tensors on the device)      : {only:9.1f} img/s")
    print(f"end to end (loader + augmentation + step): {e2e:9.1f} img/s  = {e2e / only:.2f} of model only")
    print(f"PNG decoding loader + step               : {png:9.1f} img/s  = {png / only:.2f} of model only")


if __name__ == "__main__":
    main()
