"""Ingest throughput on 1024 px PNGs, measured side by side in one run.

    .venv/bin/python bench/ingest.py [--n-images 1024] [--repeats 3] [--images DIR]

Builds a temporary archive of N 1024 px PNGs (the real NIH sample images in ../shared/data/nih/images,
copied round-robin under new names; synthetic 1024 px images if that folder is absent), then times
each of these ``--repeats`` times, keeping the best:

1. the decode limit: a plain loop that reads each file and decodes it with Pillow, one process;
2. the whole ingest (plan, decode + validate + hash + resize to 256 px + shards, publish) on a Dask
   LocalCluster of 1 worker, then of 2 workers (clusters started and warmed before the clock starts).

Goals (issue 3): ingest images/s per core >= 0.85 of the decode limit; 1 -> 2 workers >= 1.7x.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from cxr.data.cluster import dask_client
from cxr.data.ingest import ingest
from cxr.data.parts import warm_up
from cxr.data.plan import IngestOptions

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih" / "images"


def build_archive(root: Path, n: int, images: Path | None) -> str:
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    originals = sorted(images.glob("*.png")) if images and images.is_dir() else []
    if originals:
        kind = f"real NIH PNGs ({len(originals)} distinct files, copied round-robin)"
        for i in range(n):
            shutil.copyfile(originals[i % len(originals)], folder / f"{i + 1:08d}_000.png")
    else:
        from cxr.data.synth import SynthConfig, synthesize

        synthesize(SynthConfig(out=str(root / "synth"), n_images=n, size=1024, workers=os.cpu_count() or 1))
        for i, p in enumerate(sorted((root / "synth").rglob("*.png"))):
            shutil.move(p, folder / f"{i + 1:08d}_000.png")
        shutil.rmtree(root / "synth")
        kind = "synthetic 1024 px PNGs"
    rows = [f"{i + 1:08d}_000.png,No Finding,0,{i + 1},50,F,PA,2500,2048,0.143,0.143" for i in range(n)]
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return kind


def decode_loop(folder: Path) -> tuple[float, int]:
    files = sorted(folder.glob("*.png"))
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image.load()
    return time.perf_counter() - start, len(files)


def timed_ingest(source: Path, out: Path, workers: int, repeats: int) -> float:
    """Best of ``repeats`` whole ingests into fresh output folders."""
    best = float("inf")
    with dask_client(workers=workers) as client:
        # Workers up, connected, the ingest code imported and run once on a tiny image before the clock
        # starts, as on a long-running cluster.
        client.run(warm_up)
        for attempt in range(repeats):
            target = out / str(attempt)
            start = time.perf_counter()
            result = ingest(str(source), str(target), IngestOptions(sizes=(256,)), client=client)
            best = min(best, time.perf_counter() - start)
            assert result.accounting.quarantined == 0, result.accounting
            shutil.rmtree(target)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=1024, help="images in the archive (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement, best kept (default 3)")
    parser.add_argument("--images", type=Path, default=REAL, help=f"folder of 1024 px PNGs (default {REAL})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kind = build_archive(root / "src", args.n_images, args.images)
        folder = root / "src" / "images_001" / "images"
        decode_loop(folder)  # warm the page cache: every run reads from memory
        decode_s, n = min(decode_loop(folder) for _ in range(args.repeats))
        one = timed_ingest(root / "src", root / "out1", 1, args.repeats)
        two = timed_ingest(root / "src", root / "out2", 2, args.repeats)
    limit = n / decode_s
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"archive: {n} x 1024 px, {kind}; shards at 256 px")
    print(f"decode limit (Pillow loop, 1 process) : {limit:7.1f} img/s")
    print(
        f"ingest, 1 Dask worker                 : {n / one:7.1f} img/s  = {n / one / limit:.2f} of the limit per core"
    )
    print(
        f"ingest, 2 Dask workers                : {n / two:7.1f} img/s  "
        f"= {n / two / 2 / limit:.2f} of the limit per core"
    )
    print(f"1 -> 2 workers                        : {one / two:.2f}x")


if __name__ == "__main__":
    main()
