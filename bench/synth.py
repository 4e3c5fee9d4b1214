"""How fast ``cxr synth`` makes an archive: 2,000 images at 256 px, one process vs. all cores, in one run.

    .venv/bin/python bench/synth.py [--n-images 2000] [--size 256]

Goal (issue 2): 2,000 images at 256 px in under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from cxr.data.synth import SynthConfig, synthesize


def timed(n_images: int, size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthesize(SynthConfig(out=tmp, n_images=n_images, size=size, seed=0, workers=workers))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=2000, help="images per run (default 2000)")
    parser.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}")
    one = timed(args.n_images, args.size, 1)
    every = timed(args.n_images, args.size, cores)
    print(f"{args.n_images} images at {args.size} px")
    print(f"  1 process : {one:6.1f} s  {args.n_images / one:7.0f} img/s")
    print(f"  {cores} processes: {every:6.1f} s  {args.n_images / every:7.0f} img/s  ({one / every:.2f}x)")


if __name__ == "__main__":
    main()
