"""Label statistics with Dask: hand-computed values, the real NIH table, several files, a real cluster."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxr.data.labels import read_label_table
from cxr.data.stats import FindingStats, compute_stats
from cxr.findings import FINDING_COLUMNS, FINDINGS
from tests.conftest import NIH
from tests.test_labels import NIH_COUNTS


def hand_table() -> pa.Table:
    """Six train rows, two val rows; positives only in Atelectasis, Effusion and Hernia."""
    rows = [
        # split, view, sex, atelectasis, effusion, hernia
        ("train", "PA", "M", 1, 1, 0),
        ("train", "PA", "F", 1, 0, 0),
        ("train", "AP", "F", 0, 1, 0),
        ("train", "AP", "M", 0, 0, 0),
        ("train", "PA", "M", 0, 0, 1),
        ("train", "PA", "F", 1, 1, 1),
        ("val", "AP", "F", 0, 0, 0),
        ("val", "PA", "M", 1, 0, 0),
    ]
    cols: dict[str, list] = {"split": [], "view": [], "sex": []}
    cols.update({c: [] for c in FINDING_COLUMNS})
    for split, view, sex, a, e, h in rows:
        cols["split"].append(split)
        cols["view"].append(view)
        cols["sex"].append(sex)
        for c in FINDING_COLUMNS:
            cols[c].append(bool({"atelectasis": a, "effusion": e, "hernia": h}.get(c, 0)))
    return pa.table(cols)


def test_stats_of_a_hand_made_table_equal_hand_computed_values(tmp_path):
    pq.write_table(hand_table(), tmp_path / "m.parquet")
    stats = compute_stats(str(tmp_path / "m.parquet"))
    train, val = stats.splits["train"], stats.splits["val"]
    assert (train.n, val.n, train.no_finding, val.no_finding) == (6, 2, 1, 1)
    a = train.findings["Atelectasis"]
    assert (a.n_pos, a.n_neg) == (3, 3) and a.freq_pos == 0.5 and a.w_pos == 0.5 == a.w_neg
    h = train.findings["Hernia"]
    assert (h.n_pos, h.freq_pos, h.freq_neg, h.w_pos, h.w_neg) == (2, 2 / 6, 1 - 2 / 6, 1 - 2 / 6, 2 / 6)
    assert train.findings["Mass"] == FindingStats(n_pos=0, n_neg=6, freq_pos=0.0, freq_neg=1.0, w_pos=1.0, w_neg=0.0)
    i_a, i_e, i_h = FINDINGS.index("Atelectasis"), FINDINGS.index("Effusion"), FINDINGS.index("Hernia")
    co = np.array(train.cooccurrence)
    assert (co[i_a, i_e], co[i_e, i_a], co[i_a, i_h], co[i_e, i_h], co[i_e, i_e]) == (2, 2, 1, 1, 3)
    assert co.sum() == co.trace() + 2 * (2 + 1 + 1)
    assert train.views == {"AP": 2, "PA": 4} and train.sexes == {"F": 3, "M": 3}
    assert val.findings["Atelectasis"].n_pos == 1 and val.views == {"AP": 1, "PA": 1}


def test_the_full_real_table_as_one_split_matches_nih_and_balances_the_weights(tmp_path):
    rows = read_label_table((NIH / "Data_Entry_2017_v2020.csv.gz").read_bytes(), "v2020").rows
    pq.write_table(
        rows.append_column("split", pa.array(["train"] * rows.num_rows)),
        tmp_path / "all.parquet",
        row_group_size=20_000,
    )
    train = compute_stats(str(tmp_path / "all.parquet")).splits["train"]
    assert train.n == 112_120 and train.no_finding == 60_361
    assert {f: v.n_pos for f, v in train.findings.items()} == NIH_COUNTS
    for values in train.findings.values():
        assert abs(values.w_pos * values.freq_pos - values.w_neg * values.freq_neg) <= 1e-12
        assert values.n_pos + values.n_neg == 112_120
    assert train.views == {"AP": 44_810, "PA": 67_310}


def test_several_files_sum_like_one(tmp_path):
    table = hand_table()
    pq.write_table(table, tmp_path / "one.parquet")
    for i, (start, length) in enumerate([(0, 3), (3, 4), (7, 1)]):
        pq.write_table(table.slice(start, length), tmp_path / f"part{i}.parquet")
    one = compute_stats(str(tmp_path / "one.parquet"))
    many = compute_stats([str(tmp_path / f"part{i}.parquet") for i in range(3)])
    assert one.to_json() == many.to_json() and one == many


def test_a_dask_cluster_gives_the_same_stats_as_threads(tmp_path):
    from cxr.data.cluster import dask_client

    table = pa.concat_tables([hand_table()] * 500)
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=500)
    with dask_client(workers=2) as client:
        on_cluster = compute_stats(str(tmp_path / "m.parquet"), client)
        assert len(client.scheduler_info()["workers"]) == 2
    assert on_cluster == compute_stats(str(tmp_path / "m.parquet"))
    assert on_cluster.splits["train"].findings["Hernia"].n_pos == 1000


def test_missing_columns_are_named(tmp_path):
    pq.write_table(hand_table().drop_columns(["view"]), tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="lacks column\\(s\\) view"):
        compute_stats(str(tmp_path / "m.parquet"))
