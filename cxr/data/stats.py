"""Label statistics per split, with Dask: frequencies, class weights, co-occurrence, views and sexes.

For each split and finding ``c`` (DESIGN.md), over the ``N[c]`` images that label ``c`` (a null label is
missing, not negative: :mod:`cxr.data.label_rows`; NIH labels every finding, so ``N[c]`` is the split's size):

- ``freq_pos[c] = n_pos[c] / N[c]`` and ``freq_neg[c] = 1 - freq_pos[c]``
- ``w_pos[c] = freq_neg[c]`` and ``w_neg[c] = freq_pos[c]``, so ``w_pos * freq_pos == w_neg * freq_neg``:
  positives and negatives contribute equally to the weighted loss.

Everything is a column reduction over the Parquet metadata: each Dask partition is reduced to a few
hundred counts (one matrix product for the co-occurrence), and the counts are summed. No Python loop
runs over rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from cxr import storage
from cxr.data.splits import SPLITS
from cxr.data.version import DatasetVersion
from cxr.findings import FINDING_COLUMNS, FINDINGS
from cxr.records import to_json

STATS_COLUMNS = ["split", "view", "sex", "source_format", *FINDING_COLUMNS]
_F = len(FINDINGS)


def _partial(df: pd.DataFrame) -> pd.DataFrame:
    """Counts of one partition in long form: (split, kind, key, count)."""
    rows: list[tuple[str, str, str, int]] = []
    split_codes, split_names = pd.factorize(df["split"])
    view_codes, view_names = pd.factorize(df["view"])
    sex_codes, sex_names = pd.factorize(df["sex"])
    source_codes, source_names = pd.factorize(df["source_format"])
    labels = df[list(FINDING_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    for k, name in enumerate(split_names):
        mask = split_codes == k
        known = ~np.isnan(labels[mask])
        x = np.where(known, labels[mask], 0.0)  # a missing label is neither positive nor negative
        rows.append((name, "n", "", int(mask.sum())))
        rows.append((name, "no_finding", "", int((x.sum(axis=1) == 0).sum())))
        rows.extend((name, "labelled", str(i), int(c)) for i, c in enumerate(known.sum(axis=0)))
        co = (x.T @ x).astype(np.int64)  # diagonal: positives per finding
        rows.extend((name, "co", f"{i},{j}", int(co[i, j])) for i in range(_F) for j in range(_F))
        kinds = (
            ("view", view_codes, view_names),
            ("sex", sex_codes, sex_names),
            ("source", source_codes, source_names),
        )
        for kind, codes, names in kinds:
            counts = np.bincount(codes[mask], minlength=len(names))
            rows.extend((name, kind, str(key), int(c)) for key, c in zip(names, counts, strict=True) if c)
    return pd.DataFrame(rows, columns=["split", "kind", "key", "count"]).astype({"count": "int64"})


_META = pd.DataFrame(
    {
        "split": pd.Series(dtype=str),
        "kind": pd.Series(dtype=str),
        "key": pd.Series(dtype=str),
        "count": pd.Series(dtype="int64"),
    }
)


def count_table(
    paths: str | Sequence[str], client: Any | None = None, storage_options: dict | None = None
) -> pd.DataFrame:
    """Sum the per-partition counts of one or more Parquet files with Dask (on ``client`` if given)."""
    import dask.dataframe as dd

    # one partition per row group: a single metadata file still spreads over the workers
    frame = dd.read_parquet(paths, storage_options=storage_options, split_row_groups=True)
    if "source_format" not in frame.columns:  # a version of schema 1: NIH rows
        frame = frame.assign(source_format="nih")
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


PREVALENCE_CHART = "charts/prevalence.png"  # in a version folder, beside stats.json


@dataclass(frozen=True)
class FindingStats:
    """One finding in one split: counts, frequencies, and the weights that balance them."""

    n_pos: int
    n_neg: int
    freq_pos: float  # n_pos / (n_pos + n_neg): over the images that label the finding
    freq_neg: float
    w_pos: float  # = freq_neg
    w_neg: float  # = freq_pos, so w_pos * freq_pos == w_neg * freq_neg
    n_missing: int = 0  # images whose label is missing (null): counted in neither


@dataclass(frozen=True)
class SplitStats:
    n: int
    findings: Mapping[str, FindingStats]
    no_finding: int
    cooccurrence: tuple[tuple[int, ...], ...]  # [i][j]: images with findings i and j (diagonal: positives)
    views: Mapping[str, int]
    sexes: Mapping[str, int]
    sources: Mapping[str, int] = field(default_factory=dict)  # images per source format (a mixed manifest: several)


@dataclass(frozen=True)
class LabelStats:
    """``stats.json``: per split, the findings' frequencies and weights, co-occurrence, views and sexes."""

    findings: tuple[str, ...]
    splits: Mapping[str, SplitStats]
    dataset_digest: str | None = None

    def to_json(self) -> str:
        """Stable JSON text (sorted keys) for ``stats.json``."""
        return to_json(self) + "\n"


def finding_stats(n: int, n_pos: Sequence[int], n_labelled: Sequence[int] | None = None) -> dict[str, FindingStats]:
    """Frequencies and balancing weights of each finding from its positive count out of the ``n_labelled``
    images that label it (None: all ``n`` label every finding)."""
    out: dict[str, FindingStats] = {}
    labelled = [n] * len(FINDINGS) if n_labelled is None else list(n_labelled)
    for finding, pos, lab in zip(FINDINGS, n_pos, labelled, strict=True):
        freq_pos = pos / lab if lab else 0.0
        freq_neg = 1.0 - freq_pos
        out[finding] = FindingStats(
            int(pos), int(lab - pos), freq_pos, freq_neg, w_pos=freq_neg, w_neg=freq_pos, n_missing=int(n - lab)
        )
    return out


def assemble(counts: pd.DataFrame) -> LabelStats:
    """The statistics of every split from summed counts."""
    splits: dict[str, SplitStats] = {}
    order = {name: rank for rank, name in enumerate(SPLITS)}
    for name in sorted(counts["split"].unique(), key=lambda s: (order.get(s, len(SPLITS)), s)):
        part = counts[counts["split"] == name]
        get = {(k, key): int(c) for k, key, c in zip(part["kind"], part["key"], part["count"], strict=True)}
        n = get.get(("n", ""), 0)
        co = tuple(tuple(get.get(("co", f"{i},{j}"), 0) for j in range(_F)) for i in range(_F))
        labelled = [get.get(("labelled", str(i)), 0) for i in range(_F)]
        splits[name] = SplitStats(
            n=n,
            findings=finding_stats(n, [co[i][i] for i in range(_F)], labelled),
            no_finding=get.get(("no_finding", ""), 0),
            cooccurrence=co,
            views={k: v for (kind, k), v in sorted(get.items()) if kind == "view"},
            sexes={k: v for (kind, k), v in sorted(get.items()) if kind == "sex"},
            sources={k: v for (kind, k), v in sorted(get.items()) if kind == "source"},
        )
    return LabelStats(tuple(FINDINGS), splits)


def compute_stats(
    paths: str | Sequence[str], client: Any | None = None, storage_options: dict | None = None
) -> LabelStats:
    """Statistics of every split found in the metadata Parquet file(s)."""
    return assemble(count_table(paths, client, storage_options))


def dataset_stats(version: DatasetVersion, client: Any | None = None) -> LabelStats:
    """Statistics of a dataset version, tagged with its digest; a version without an accepted image is refused."""
    accounting = version.accounting
    if accounting.accepted == 0:
        raise ValueError(
            f"dataset {version.digest} has no accepted image (all {accounting.inputs} inputs are quarantined): "
            f"nothing to count; see its quarantine.parquet (reasons: "
            f"{', '.join(f'{k} {v}' for k, v in accounting.quarantined_by_reason.items()) or 'none'})"
        )
    return replace(compute_stats(version.verify_file("metadata.parquet"), client), dataset_digest=version.digest)


def write_stats(version: DatasetVersion, stats: LabelStats) -> list[str]:
    """``stats.json`` and the prevalence charts (linear and log) into the version folder; their URLs."""
    from cxr.charts import prevalence_chart

    written = [version.file("stats.json"), version.file(PREVALENCE_CHART), version.file("charts/prevalence_log.png")]
    storage.write_text(written[0], stats.to_json())
    storage.write_bytes(written[1], prevalence_chart(stats, log=False))
    storage.write_bytes(written[2], prevalence_chart(stats, log=True))
    return written
