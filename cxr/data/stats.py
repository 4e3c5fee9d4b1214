"""Label statistics per split, with Dask: frequencies, class weights, co-occurrence, views and sexes.

For each split and finding ``c`` (DESIGN.md):

- ``freq_pos[c] = n_pos[c] / N`` and ``freq_neg[c] = 1 - freq_pos[c]``
- ``w_pos[c] = freq_neg[c]`` and ``w_neg[c] = freq_pos[c]``, so ``w_pos * freq_pos == w_neg * freq_neg``:
  positives and negatives contribute equally to the weighted loss.

Everything is a column reduction over the Parquet metadata: each Dask partition is reduced to a few
hundred counts (one matrix product for the co-occurrence), and the counts are summed. No Python loop
runs over rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr.findings import FINDING_COLUMNS, FINDINGS

STATS_COLUMNS = ["split", "view", "sex", *FINDING_COLUMNS]
_F = len(FINDINGS)


def _partial(df: pd.DataFrame) -> pd.DataFrame:
    """Counts of one partition in long form: (split, kind, key, count)."""
    rows: list[tuple[str, str, str, int]] = []
    split_codes, split_names = pd.factorize(df["split"])
    view_codes, view_names = pd.factorize(df["view"])
    sex_codes, sex_names = pd.factorize(df["sex"])
    labels = df[list(FINDING_COLUMNS)].to_numpy(dtype=np.float64)
    for k, name in enumerate(split_names):
        mask = split_codes == k
        x = labels[mask]
        rows.append((name, "n", "", int(mask.sum())))
        rows.append((name, "no_finding", "", int((x.sum(axis=1) == 0).sum())))
        co = (x.T @ x).astype(np.int64)  # diagonal: positives per finding
        rows.extend((name, "co", f"{i},{j}", int(co[i, j])) for i in range(_F) for j in range(_F))
        for kind, codes, names in (("view", view_codes, view_names), ("sex", sex_codes, sex_names)):
            counts = np.bincount(codes[mask], minlength=len(names))
            rows.extend((name, kind, str(key), int(c)) for key, c in zip(names, counts, strict=True) if c)
    return pd.DataFrame(rows, columns=["split", "kind", "key", "count"]).astype({"count": "int64"})


_META = pd.DataFrame({"split": pd.Series(dtype=str), "kind": pd.Series(dtype=str), "key": pd.Series(dtype=str),
                      "count": pd.Series(dtype="int64")})  # fmt: skip


def count_table(paths: str | Sequence[str], client: Any | None = None, storage_options: dict | None = None) -> pd.DataFrame:
    """Sum the per-partition counts of one or more Parquet files with Dask (on ``client`` if given)."""
    import dask.dataframe as dd

    # one partition per row group: a single metadata file still spreads over the workers
    frame = dd.read_parquet(paths, storage_options=storage_options, split_row_groups=True)
    missing = [c for c in STATS_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{paths}: the metadata lacks column(s) {', '.join(missing)}")
    frame = frame[STATS_COLUMNS]
    partial = frame.map_partitions(_partial, meta=_META)
    summed = partial.groupby(["split", "kind", "key"])["count"].sum()
    if client is not None:
        result = client.compute(summed).result()
    else:
        result = summed.compute(scheduler="threads")
    return result.reset_index()


def finding_stats(n: int, n_pos: Sequence[int]) -> dict[str, dict[str, float | int]]:
    """Frequencies and balancing weights of each finding from its positive count out of ``n`` images."""
    out: dict[str, dict[str, float | int]] = {}
    for finding, pos in zip(FINDINGS, n_pos, strict=True):
        freq_pos = pos / n if n else 0.0
        freq_neg = 1.0 - freq_pos
        out[finding] = {
            "n_pos": int(pos),
            "n_neg": int(n - pos),
            "freq_pos": freq_pos,
            "freq_neg": freq_neg,
            "w_pos": freq_neg,
            "w_neg": freq_pos,
        }
    return out


def assemble(counts: pd.DataFrame) -> dict[str, Any]:
    """``stats.json`` content (per split) from summed counts."""
    splits: dict[str, Any] = {}
    order = {"train": 0, "val": 1, "test": 2}
    for name in sorted(counts["split"].unique(), key=lambda s: (order.get(s, 9), s)):
        part = counts[counts["split"] == name]
        get = {(k, key): int(c) for k, key, c in zip(part["kind"], part["key"], part["count"], strict=True)}
        n = get.get(("n", ""), 0)
        co = [[get.get(("co", f"{i},{j}"), 0) for j in range(_F)] for i in range(_F)]
        splits[name] = {
            "n": n,
            "findings": finding_stats(n, [co[i][i] for i in range(_F)]),
            "no_finding": get.get(("no_finding", ""), 0),
            "cooccurrence": co,
            "views": {k: v for (kind, k), v in sorted(get.items()) if kind == "view"},
            "sexes": {k: v for (kind, k), v in sorted(get.items()) if kind == "sex"},
        }
    return {"findings": list(FINDINGS), "splits": splits}


def compute_stats(paths: str | Sequence[str], client: Any | None = None, storage_options: dict | None = None) -> dict[str, Any]:
    """Statistics of every split found in the metadata Parquet file(s)."""
    return assemble(count_table(paths, client, storage_options))


def to_json(stats: dict[str, Any]) -> str:
    """Stable JSON text (sorted keys) for ``stats.json``."""
    return json.dumps(stats, indent=2, sort_keys=True) + "\n"


def dataset_stats(version: Any, client: Any | None = None) -> dict[str, Any]:
    """Statistics of a dataset version, tagged with its digest."""
    stats = compute_stats(version.file("metadata.parquet"), client)
    stats["dataset_digest"] = version.digest
    return stats


def write_stats(version: Any, stats: dict[str, Any]) -> list[str]:
    """``stats.json`` and the prevalence charts (linear and log) into the version folder; their URLs."""
    from cxr import storage
    from cxr.charts import prevalence_chart

    written = [version.file("stats.json"), version.file("charts/prevalence.png"), version.file("charts/prevalence_log.png")]
    storage.write_text(written[0], to_json(stats))
    storage.write_bytes(written[1], prevalence_chart(stats, log=False))
    storage.write_bytes(written[2], prevalence_chart(stats, log=True))
    return written
