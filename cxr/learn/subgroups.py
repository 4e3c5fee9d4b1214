"""How a model does for subgroups of patients: by sex, by age band and by view position.

Chest X-ray classifiers trained on NIH are known to under-diagnose some subgroups (audits measured more
false "No Finding" calls for women and for the young). For each subgroup this module gives, per finding
and over all findings:

- the images and patients behind it, and per finding the labelled images and positives;
- AUROC with a patient-bootstrap interval (:func:`cxr.learn.metrics.auroc_intervals`, resampling the
  subgroup's own patients);
- a cell is *sufficient* when it holds at least :data:`MIN_CASES` positives and as many negatives; a
  report shows the others greyed out, never hides them;
- the false "No Finding" rate: among the subgroup's images with at least one positive label, the share the
  model calls healthy (no finding's probability at or above its threshold).

Labels may be missing (NaN, :mod:`cxr.data.label_rows`): each finding counts only the images that label
it, and an image with no positive label among the labelled ones is not "with a finding".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cxr.findings import FINDINGS
from cxr.learn.metrics import auroc, auroc_intervals, labelled, mean_defined

AGE_BANDS: tuple[tuple[int, int], ...] = ((0, 20), (20, 40), (40, 60), (60, 80), (80, 200))  # [lo, hi) years
MIN_CASES = 10  # positives (and negatives) a cell needs before its AUROC is read as a finding about the subgroup
ATTRIBUTES = ("sex", "age", "view")


def age_band(age: float | None) -> str:
    """``"40-59"``, ``"80+"``, or ``"unknown"`` (a source that does not state the age)."""
    if age is None or np.isnan(age):
        return "unknown"
    for lo, hi in AGE_BANDS:
        if lo <= age < hi:
            return f"{lo}+" if hi >= 200 else f"{lo}-{hi - 1}"
    return "unknown"


@dataclass(frozen=True)
class SubgroupCell:
    """One finding in one subgroup."""

    n: int  # images that label the finding
    n_pos: int
    auroc: float | None
    auroc_ci95: tuple[float, float] | None
    sufficient: bool  # at least MIN_CASES positives and negatives


@dataclass(frozen=True)
class Subgroup:
    """One subgroup (e.g. sex F): its counts, each finding's cell, and the false "No Finding" rate."""

    attribute: str  # sex, age, view
    group: str  # F, 40-59, PA, ...
    n_images: int
    n_patients: int
    findings: Mapping[str, SubgroupCell]
    mean_auroc: float | None  # over the findings whose cell is sufficient
    with_finding: int  # images with at least one positive label
    false_no_finding: float | None  # share of those the model calls healthy; None when there is none


def groups_of(sex: Sequence[str], age: Sequence[float | None], view: Sequence[str]) -> dict[str, np.ndarray]:
    """Each image's group under each attribute (age as its band)."""
    return {
        "sex": np.asarray([str(s) for s in sex]),
        "age": np.asarray([age_band(a) for a in age]),
        "view": np.asarray([str(v) for v in view]),
    }


def healthy_calls(probs: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Images the model calls healthy: no finding at or above its threshold."""
    return ~(probs >= np.asarray(thresholds, dtype=probs.dtype)).any(axis=1)


def false_no_finding_rate(
    labels: np.ndarray, probs: np.ndarray, thresholds: Sequence[float]
) -> tuple[int, float | None]:
    """(images with a positive label, the share of them called healthy)."""
    with_finding = np.nansum(labels, axis=1) > 0
    n = int(with_finding.sum())
    if n == 0:
        return 0, None
    return n, float(healthy_calls(probs[with_finding], thresholds).mean())


def subgroup(
    attribute: str,
    group: str,
    labels: np.ndarray,
    probs: np.ndarray,
    thresholds: Sequence[float],
    patients: np.ndarray,
    n_boot: int,
    seed: int,
) -> Subgroup:
    """The metrics of one subgroup's rows (``labels``, ``probs`` and ``patients`` already restricted to it)."""
    intervals = auroc_intervals(labels, probs, patients, n_boot, seed) if n_boot else [None] * len(FINDINGS)
    cells = {}
    for i, finding in enumerate(FINDINGS):
        y = labels[:, i]
        known = labelled(y)
        n, n_pos = int(known.sum()), int(np.nansum(y))
        cells[finding] = SubgroupCell(
            n, n_pos, auroc(y, probs[:, i]), intervals[i], n_pos >= MIN_CASES and n - n_pos >= MIN_CASES
        )
    with_finding, rate = false_no_finding_rate(labels, probs, thresholds)
    return Subgroup(
        attribute=attribute,
        group=group,
        n_images=len(labels),
        n_patients=len(np.unique(patients)),
        findings=cells,
        mean_auroc=mean_defined([c.auroc for c in cells.values() if c.sufficient]),
        with_finding=with_finding,
        false_no_finding=rate,
    )


def subgroup_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    thresholds: Sequence[float],
    patients: np.ndarray,
    groups: Mapping[str, np.ndarray],
    n_boot: int = 200,
    seed: int = 0,
) -> list[Subgroup]:
    """Every subgroup of every attribute in ``groups`` (:func:`groups_of`), attribute by attribute, groups sorted."""
    out = []
    for attribute in ATTRIBUTES:
        if attribute not in groups:
            continue
        values = groups[attribute]
        for group in sorted(set(values.tolist())):
            rows = values == group
            out.append(subgroup(attribute, group, labels[rows], probs[rows], thresholds, patients[rows], n_boot, seed))
    return out
