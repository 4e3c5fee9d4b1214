"""Subgroup metrics against a hand computation on a small table."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.findings import FINDINGS
from cxr.learn.subgroups import MIN_CASES, age_band, groups_of, subgroup_metrics

EFF = FINDINGS.index("Effusion")
NAN = float("nan")


def table() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Six images of women, six of men; only Effusion is ever positive; its threshold is 0.5.

    Women: Effusion labels 1 1 0 0 0 (missing), scores .45 .40 .50 .20 .10 .99.
      AUROC over the 5 labelled: positives .45 .40 against negatives .50 .20 .10: 4 of 6 pairs.
      With a finding: images 0 and 1, both under 0.5: both called healthy, false "No Finding" 2/2.
    Men: labels 1 0 0 1 0 0, scores .30 .60 .20 .70 .10 .05.
      AUROC: .30 beats 3 of 4 negatives, .70 all 4: 7 of 8. With a finding: images 0 (.30: healthy) and
      3 (.70): false "No Finding" 1/2.
    """
    labels = np.zeros((12, len(FINDINGS)), dtype=np.float32)
    labels[:, EFF] = [1, 1, 0, 0, 0, NAN, 1, 0, 0, 1, 0, 0]
    labels[5, FINDINGS.index("Mass")] = NAN  # a missing label elsewhere changes nothing for Effusion
    probs = np.zeros_like(labels)
    probs[:, EFF] = [0.45, 0.40, 0.50, 0.20, 0.10, 0.99, 0.30, 0.60, 0.20, 0.70, 0.10, 0.05]
    patients = np.array([1, 1, 2, 3, 3, 3, 4, 4, 5, 6, 6, 6])
    groups = groups_of(["F"] * 6 + ["M"] * 6, [25, 25, 35, 70, 70, None, 15, 15, 85, 50, 50, 50], ["PA", "AP"] * 6)
    return labels, probs, patients, groups


def test_subgroup_metrics_equal_the_hand_computation():
    labels, probs, patients, groups = table()
    result = {
        (s.attribute, s.group): s for s in subgroup_metrics(labels, probs, [0.5] * 14, patients, groups, n_boot=0)
    }
    women, men = result[("sex", "F")], result[("sex", "M")]
    assert (women.n_images, women.n_patients, men.n_images, men.n_patients) == (6, 3, 6, 3)
    eff_w, eff_m = women.findings["Effusion"], men.findings["Effusion"]
    assert (eff_w.n, eff_w.n_pos, eff_w.auroc) == (5, 2, pytest.approx(4 / 6))
    assert (eff_m.n, eff_m.n_pos, eff_m.auroc) == (6, 2, pytest.approx(7 / 8))
    assert (women.with_finding, women.false_no_finding) == (2, 1.0)
    assert (men.with_finding, men.false_no_finding) == (2, 0.5)
    assert women.findings["Mass"].n == 5 and women.findings["Mass"].auroc is None  # one class: no AUROC
    assert not eff_w.sufficient and women.mean_auroc is None  # 2 positives: shown greyed, not averaged
    assert set(result) >= {("age", "0-19"), ("age", "20-39"), ("age", "40-59"), ("age", "60-79"), ("age", "80+")}
    assert result[("age", "unknown")].n_images == 1  # a source that does not state the age
    assert result[("view", "PA")].n_images == result[("view", "AP")].n_images == 6


def test_a_cell_is_sufficient_with_enough_positives_and_negatives_and_intervals_resample_its_patients():
    rng = np.random.default_rng(0)
    n = 200
    labels = np.zeros((n, len(FINDINGS)), dtype=np.float32)
    labels[:, EFF] = rng.random(n) < 0.3
    probs = np.clip(labels * 0.3 + rng.random((n, len(FINDINGS))) * 0.7, 0, 1).astype(np.float32)
    patients = np.arange(n) // 2
    groups = groups_of(["F"] * n, [50] * n, ["PA"] * n)
    (women, *_) = subgroup_metrics(labels, probs, [0.5] * 14, patients, groups, n_boot=100, seed=1)
    cell = women.findings["Effusion"]
    assert cell.sufficient and cell.n_pos >= MIN_CASES and cell.auroc_ci95 is not None
    assert cell.auroc_ci95[0] < cell.auroc < cell.auroc_ci95[1]
    assert women.mean_auroc == pytest.approx(cell.auroc)  # the only sufficient cell


def test_age_bands():
    assert [age_band(a) for a in (0, 19, 20, 59.5, 79, 80, 120, None)] == [
        "0-19",
        "0-19",
        "20-39",
        "40-59",
        "60-79",
        "80+",
        "80+",
        "unknown",
    ]
