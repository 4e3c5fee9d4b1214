"""Ingest throughput on real 1024 px NIH PNGs, unpacked and packed, measured side by side in one run.

    .venv/bin/python bench/ingest.py [--n-images 1024] [--archives 12] [--repeats 3] [--images DIR]

Builds a temporary archive of N 1024 px PNGs (the real NIH sample images in ../shared/data/nih/images,
copied round-robin under new names; synthetic 1024 px images if that folder is absent), packs the same
images as ``--archives`` ``images_NNN.tar.gz`` files like the real download, then times each of these
``--repeats`` times, keeping the best:

1. decode loops, one process, files read from the page cache: Pillow (``Image.open`` + ``load``), the
   reference every PNG loader that decodes with Pillow is bound by; and ingest's decoder
   (:func:`cxr.data.decode.decode_image`, imagecodecs where it gives Pillow's pixels);
2. the whole ingest (plan, read, decode + validate + hash + resize to 256 px + shards, publish) on a Dask
   LocalCluster of 1 worker, then 2 workers (started and warmed before the clock starts), from the folder
   and from the ``.tar.gz`` files.

Goals (issue 15): ingest per core >= 1.15x the Pillow loop (faster than any loader that decodes with
Pillow); ingest from ``.tar.gz`` >= 0.95x ingest from the folder; 1 -> 2 workers >= 1.7x.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

from cxr.data.cluster import dask_client
from cxr.data.decode import decode_image
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
    """Pillow: read and decode every file."""
    files = sorted(folder.glob("*.png"))
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image.load()
    return time.perf_counter() - start, len(files)


def new_decode_loop(folder: Path) -> tuple[float, int]:
    """Ingest's decoder (with its validation), on the same files."""
    files = sorted(folder.glob("*.png"))
    start = time.perf_counter()
    for path in files:
        decode_image(path.read_bytes())
    return time.perf_counter() - start, len(files)


def pack(folder: Path, dst: Path, archives: int) -> None:
    """The folder's images as ``archives`` .tar.gz files (members ``images/<id>``), tables copied beside them."""
    dst.mkdir()
    images = sorted(folder.glob("*.png"))
    per = -(-len(images) // archives)
    for k in range(archives):
        with tarfile.open(dst / f"images_{k + 1:03d}.tar.gz", "w:gz", compresslevel=6) as tar:
            for image in images[k * per : (k + 1) * per]:
                tar.add(image, arcname=f"images/{image.name}")
    for table in folder.parent.parent.glob("*.csv"):
        shutil.copy(table, dst / table.name)


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
    parser.add_argument("--archives", type=int, default=12, help=".tar.gz files to pack them in (default 12)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement, best kept (default 3)")
    parser.add_argument("--images", type=Path, default=REAL, help=f"folder of 1024 px PNGs (default {REAL})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kind = build_archive(root / "src", args.n_images, args.images)
        folder = root / "src" / "images_001" / "images"
        pack(folder, root / "targz", args.archives)
        packed = sum(p.stat().st_size for p in (root / "targz").glob("*.tar.gz"))
        unpacked = sum(p.stat().st_size for p in folder.glob("*.png"))
        decode_loop(folder)  # warm the page cache: every run reads from memory
        decode_s, n = min(decode_loop(folder) for _ in range(args.repeats))
        new_s, _ = min(new_decode_loop(folder) for _ in range(args.repeats))
        times = {}
        for workers in (1, 2):
            for source in ("src", "targz"):
                times[source, workers] = timed_ingest(
                    root / source, root / f"out-{source}-{workers}", workers, args.repeats
                )
    limit = n / decode_s
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"archive: {n} x 1024 px, {kind}; shards at 256 px")
    print(f"packed: {args.archives} .tar.gz, {packed / 2**20:.1f} MiB for {unpacked / 2**20:.1f} MiB of PNGs")
    print(f"Pillow decode loop (1 process)        : {limit:7.1f} img/s")
    print(f"ingest's decoder loop (1 process)     : {n / new_s:7.1f} img/s  = {decode_s / new_s:.2f}x Pillow")
    for source, label in (("src", "folder"), ("targz", ".tar.gz")):
        for workers in (1, 2):
            rate = n / times[source, workers]
            print(
                f"ingest from {label:8s}, {workers} worker{'s' if workers > 1 else ' '}   : {rate:7.1f} img/s  "
                f"= {rate / workers / limit:.2f}x Pillow per core"
            )
    for source, label in (("src", "folder"), ("targz", ".tar.gz")):
        print(f"1 -> 2 workers, {label:8s}             : {times[source, 1] / times[source, 2]:.2f}x")
    for workers in (1, 2):
        ratio = times["src", workers] / times["targz", workers]
        print(f".tar.gz vs folder, {workers} worker{'s' if workers > 1 else ' '}         : {ratio:.2f}x")


if __name__ == "__main__":
    main()
