"""Label frequencies over a large metadata Parquet: Dask on a LocalCluster vs. single-threaded baselines.

    .venv/bin/python bench/stats.py [--rows 1000000 3000000 10000000] [--workers 2] [--repeats 2]

For each size, writes a metadata-shaped Parquet file (split, view, sex, the 14 finding columns, plus
image_id and patient_id that the reduction does not read; 1M-row row groups, as pyarrow writes by
default) with NIH-like prevalence, then times the same reduction (per split: counts, positives,
co-occurrence, views, sexes):

- pandas, one thread: read the columns with pyarrow (use_threads=False), the reduction over the whole frame;
- pyarrow, one thread: read, then group_by/aggregate for the counts and numpy for the co-occurrence;
- Dask: ``cxr.data.stats.compute_stats`` on a LocalCluster (started before the clock starts).

Goals (issue 4): Dask at least as fast as the baseline on 2 cores; time growing linearly from 1M to 10M.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cxr.data.cluster import dask_client
from cxr.data.stats import STATS_COLUMNS, _partial, compute_stats
from cxr.data.synth import load_profile
from cxr.findings import FINDING_COLUMNS


def nih_prevalence() -> np.ndarray:
    profile = load_profile()
    counts = dict.fromkeys(FINDING_COLUMNS, 0)
    for labels, n in profile["label_sets"]:
        for f in labels.split("|"):
            if f.lower() in counts:
                counts[f.lower()] += n
    return np.array([counts[c] / profile["n_images"] for c in FINDING_COLUMNS])


def write_metadata(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    prevalence = nih_prevalence()
    writer = None
    chunk = 1_000_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        columns = {
            "image_id": pa.array([f"{i:08d}_000.png" for i in range(start, start + n)]),
            "patient_id": pa.array(np.arange(start, start + n, dtype=np.int64) // 3),
            "split": pa.DictionaryArray.from_arrays(
                rng.choice(3, n, p=[0.7, 0.1, 0.2]).astype(np.int8), ["train", "val", "test"]
            ).cast(pa.string()),
            "view": pa.DictionaryArray.from_arrays(rng.choice(2, n, p=[0.6, 0.4]).astype(np.int8), ["PA", "AP"]).cast(
                pa.string()
            ),
            "sex": pa.DictionaryArray.from_arrays(rng.choice(2, n).astype(np.int8), ["M", "F"]).cast(pa.string()),
        }
        draws = rng.random((n, len(FINDING_COLUMNS))) < prevalence
        for i, c in enumerate(FINDING_COLUMNS):
            columns[c] = pa.array(draws[:, i])
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table, row_group_size=chunk)
    assert writer is not None
    writer.close()


def pandas_one_thread(path: Path) -> int:
    frame = pq.read_table(path, columns=STATS_COLUMNS, use_threads=False).to_pandas(use_threads=False)
    return int(_partial(frame)["count"].sum())


def pyarrow_one_thread(path: Path) -> int:
    table = pq.read_table(path, columns=STATS_COLUMNS, use_threads=False)
    sums = table.group_by("split", use_threads=False).aggregate(
        [(c, "sum") for c in FINDING_COLUMNS] + [("split", "count")]
    )
    for key in ("view", "sex"):
        table.group_by(["split", key], use_threads=False).aggregate([(key, "count")])
    total = 0
    for name in ("train", "val", "test"):
        part = table.filter(pc.equal(table["split"], name))
        x = np.column_stack([part[c].to_numpy(zero_copy_only=False) for c in FINDING_COLUMNS]).astype(np.float64)
        total += int((x.T @ x).sum())
    return total + sums.num_rows


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000], help="sizes (default 1M 3M 10M)"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="LocalCluster workers (default: all cores)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement, best kept (default 2)")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"Dask workers: {args.workers}"
    )
    print(
        f"{'rows':>11} {'pandas 1 thread':>22} {'pyarrow 1 thread':>22} {'Dask':>22} "
        f"{'Dask vs pandas':>15} {'Dask vs pyarrow':>16}"
    )
    with tempfile.TemporaryDirectory() as tmp, dask_client(workers=args.workers) as client:
        client.run(importlib.import_module, "cxr.data.stats")
        for rows in args.rows:
            path = Path(tmp) / f"metadata-{rows}.parquet"
            write_metadata(path, rows)
            reference = compute_stats(str(path), client)
            assert sum(s["n"] for s in reference["splits"].values()) == rows
            t_pandas = best(lambda p=path: pandas_one_thread(p), args.repeats)
            t_arrow = best(lambda p=path: pyarrow_one_thread(p), args.repeats)
            t_dask = best(lambda p=path: compute_stats(str(p), client), args.repeats)
            cells = [f"{t:6.2f} s {rows / t / 1e6:6.2f} M rows/s" for t in (t_pandas, t_arrow, t_dask)]
            print(
                f"{rows:>11,} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} "
                f"{t_pandas / t_dask:>14.2f}x {t_arrow / t_dask:>15.2f}x"
            )
            path.unlink()


if __name__ == "__main__":
    main()
