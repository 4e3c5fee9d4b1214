"""Per-finding metrics with scikit-learn: AUROC and AUPRC (each with a patient-level bootstrap interval),
thresholds chosen on validation (Youden's J, or a fixed specificity), and sensitivity and specificity at a
threshold.

A finding whose labels hold a single class in the evaluated split has no AUROC: it is reported as
``None`` and left out of the mean, never counted as 0.5.

Missing labels: a label of NaN means the image's source does not label that finding (missing, not negative).
Every per-finding metric here is computed on the rows where that finding is labelled (:func:`labelled`), and
``n`` counts those rows; a finding with no labelled row has no AUROC, like one with a single class. The
bootstrap still resamples all patients, once for all findings; in each resample a finding's rows that are
missing weigh nothing (the weights restricted to its labelled rows). When every patient has a labelled row
for the finding this is exactly the bootstrap of its labelled rows with the same seed; when whole patients
lack the label (a source that never gives it) they are still drawn, so the number of labelled patients
varies between resamples and the draws, hence the interval's numbers, differ from those of a bootstrap of
the labelled rows alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from cxr.findings import FINDINGS
from cxr.learn.bootstrap import (
    LEVEL,
    cluster_index,
    percentile_interval,
    resample_weights,
    weighted_auprc,
    weighted_auroc,
)


def labelled(y: np.ndarray) -> np.ndarray:
    """The rows where a finding is labelled: a NaN label is missing (its source does not say), not negative."""
    return ~np.isnan(y)


def known(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of the rows where the finding is labelled."""
    rows = labelled(y)
    return y[rows], p[rows]


def _defined(y: np.ndarray) -> bool:
    """Both classes among the labelled rows."""
    y = y[labelled(y)]
    return 0 < y.sum() < len(y)


def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    y, p = known(y, p)
    return float(roc_auc_score(y, p)) if _defined(y) else None


def auprc(y: np.ndarray, p: np.ndarray) -> float | None:
    y, p = known(y, p)
    return float(average_precision_score(y, p)) if y.sum() > 0 else None


def per_finding_auroc(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    return {f: auroc(labels[:, i], probs[:, i]) for i, f in enumerate(FINDINGS)}


def mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def bootstrap_auroc(
    y: np.ndarray,
    p: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
    level: float = LEVEL,
) -> tuple[float, float] | None:
    """Percentile interval of AUROC over ``n_boot`` resamples of patients (``groups``: a patient key per row;
    None resamples images). Resamples that hold one class only are left out; rows whose label is missing weigh
    nothing (see the module docstring)."""
    if not _defined(y):
        return None
    clusters = cluster_index(groups, len(y))
    values = np.concatenate([weighted_auroc(y, p, w) for w in resample_weights(clusters, n_boot, rng)])
    return percentile_interval(values, level)


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximizing sensitivity + specificity - 1 (0.5 when the split has one class)."""
    y, p = known(y, p)
    if not _defined(y):
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def specificity_threshold(y: np.ndarray, p: np.ndarray, specificity: float) -> float:
    """The lowest threshold whose specificity on (y, p) is at least ``specificity``."""
    y, p = known(y, p)
    negatives = np.sort(p[y == 0])
    if len(negatives) == 0:
        return 0.5
    k = int(np.ceil(specificity * len(negatives)))  # negatives that must fall at or below
    if k <= 0:
        return float(negatives[0])
    if k >= len(negatives):
        return float(np.nextafter(negatives[-1], np.inf))
    return float(np.nextafter(negatives[k - 1], np.inf))


def sens_spec(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    y, p = known(y, p)
    pred = p >= threshold
    pos, neg = y == 1, y == 0
    sens = float(pred[pos].mean()) if pos.any() else None
    spec = float((~pred[neg]).mean()) if neg.any() else None
    return sens, spec


@dataclass(frozen=True)
class FindingMetrics:
    n_pos: int
    n: int  # rows where the finding is labelled
    auroc: float | None  # None: one class only in this split
    auroc_ci95: tuple[float, float] | None
    auprc: float | None
    threshold: float  # chosen on val
    sensitivity: float | None
    specificity: float | None
    n_missing: int = 0  # rows whose source does not label the finding
    auprc_ci95: tuple[float, float] | None = None  # on the same patient resamples as the AUROC's


@dataclass(frozen=True)
class SplitMetrics:
    findings: Mapping[str, FindingMetrics]
    mean_auroc: float | None  # over the findings with an AUROC


Interval = tuple[float, float]
Statistic = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (y, p, weights [b, n]) -> [b]


def resampled_intervals(
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
    statistics: Sequence[Statistic],
    level: float = LEVEL,
) -> list[list[Interval | None]]:
    """Each statistic's interval for each finding, all on the same patient resamples (one draw serves them all:
    the intervals of one statistic do not depend on which others are computed beside it). A finding without
    both classes among its labelled rows has none."""
    rng = np.random.default_rng(seed)
    clusters = cluster_index(groups, len(labels))
    values: list[list[list[np.ndarray]]] = [[[] for _ in FINDINGS] for _ in statistics]
    defined = [i for i in range(len(FINDINGS)) if _defined(labels[:, i])]
    for w in resample_weights(clusters, n_boot, rng):  # the statistics give missing rows no weight
        for i in defined:
            for k, statistic in enumerate(statistics):
                values[k][i].append(statistic(labels[:, i], probs[:, i], w))
    return [[percentile_interval(np.concatenate(v), level) if v else None for v in per] for per in values]


def auroc_intervals(
    labels: np.ndarray, probs: np.ndarray, groups: np.ndarray | None, n_boot: int, seed: int, level: float = LEVEL
) -> list[Interval | None]:
    """Each finding's AUROC interval, all findings on the same patient resamples (one draw serves 14)."""
    return resampled_intervals(labels, probs, groups, n_boot, seed, (weighted_auroc,), level)[0]


def evaluate_predictions(
    labels: np.ndarray,
    probs: np.ndarray,
    thresholds: Sequence[float],
    n_boot: int = 200,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> SplitMetrics:
    """AUROC with its interval (resampling patients when ``groups`` gives each row's patient), AUPRC,
    prevalence, sensitivity and specificity per finding, and the mean AUROC; each finding on its labelled rows."""
    none: list[Interval | None] = [None] * len(FINDINGS)
    both = (weighted_auroc, weighted_auprc)
    intervals, pr_intervals = resampled_intervals(labels, probs, groups, n_boot, seed, both) if n_boot else (none, none)
    findings: dict[str, FindingMetrics] = {}
    for i, f in enumerate(FINDINGS):
        y, p = known(labels[:, i], probs[:, i])
        sens, spec = sens_spec(y, p, thresholds[i])
        findings[f] = FindingMetrics(
            n_pos=int(y.sum()),
            n=len(y),
            auroc=auroc(y, p),
            auroc_ci95=intervals[i],
            auprc=auprc(y, p),
            auprc_ci95=pr_intervals[i],
            threshold=float(thresholds[i]),
            sensitivity=sens,
            specificity=spec,
            n_missing=len(labels) - len(y),
        )
    return SplitMetrics(findings, mean_defined([m.auroc for m in findings.values()]))


def sensitivity_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float = 0.9) -> float | None:
    """Sensitivity at the lowest threshold that keeps this set's specificity at or above the target."""
    if not _defined(y):
        return None
    sens, _ = sens_spec(y, p, specificity_threshold(y, p, specificity))
    return sens
