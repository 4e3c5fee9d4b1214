"""Two models on the same images: a paired bootstrap over patients, and the gate's rule on it.

The gate scores the champion and the challenger on the *same* validation images (the challenger's), so
the two AUROCs share every source of sampling noise but the models' own. Each bootstrap resample draws
patients with replacement and computes both models' AUROC per finding on it; the distribution of the
differences gives the intervals. Per resample the mean difference is taken over the findings defined in
that resample.

A finding takes part only when the validation images hold at least ``min_patients`` positive and as
many negative patients (default 10): with fewer, a bootstrap over patients says nothing reliable (one
positive patient can make any difference look "significant"), so the finding is listed as not compared.

Missing labels (NaN: the source does not label the finding) are left out finding by finding: the patient
counts, both AUROCs and the resamples' AUROCs use only the rows where that finding is labelled (in a
resample its missing rows weigh nothing). Each resample still draws all patients once for all findings,
so the differences stay paired across models and findings.

The rule (:func:`decide`), at ``level`` (default 0.95):

- promote only if the one-sided lower bound of the mean AUROC gain is above ``margin``;
- block if any finding *significantly* regresses by more than ``max_drop``: the one-sided upper bound of its
  difference, Bonferroni-corrected over the findings compared, lies below ``-max_drop``. A drop inside
  the noise does not block, and neither does a noisy "gain" promote.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cxr.findings import FINDINGS
from cxr.learn.bootstrap import cluster_index, resample_weights, weighted_auroc
from cxr.learn.gate_rule import GateRule
from cxr.learn.metrics import auroc, mean_defined


@dataclass(frozen=True)
class FindingDifference:
    """One finding: both AUROCs on the same images, the challenger's gain, and its bounds."""

    n_pos: int  # positive images among the labelled ones
    n_pos_patients: int
    compared: bool  # enough positive and negative patients to take part
    challenger: float | None
    champion: float | None
    gain: float | None  # challenger - champion
    upper: float | None  # one-sided upper bound of the gain (Bonferroni over the findings compared)
    regression: bool  # upper < -max_drop: a drop beyond the tolerance, beyond noise


@dataclass(frozen=True)
class PairedComparison:
    n_images: int
    n_patients: int
    n_boot: int
    level: float
    challenger_mean: float | None
    champion_mean: float | None
    mean_gain: float | None
    mean_gain_lower: float | None  # one-sided lower bound at ``level``
    mean_gain_interval: tuple[float, float] | None  # two-sided, for the record
    findings: Mapping[str, FindingDifference]


def compare(
    labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray, patients: np.ndarray, rule: GateRule
) -> PairedComparison:
    """Paired patient bootstrap of the AUROC differences between two models' probabilities on one set."""
    n = len(labels)
    if challenger.shape != champion.shape or challenger.shape != labels.shape:
        raise ValueError(f"probabilities {challenger.shape} and {champion.shape} do not match labels {labels.shape}")
    clusters = cluster_index(patients, n)
    pos_patients = [len(np.unique(clusters[labels[:, i] == 1])) for i in range(len(FINDINGS))]  # NaN is neither
    neg_patients = [len(np.unique(clusters[labels[:, i] == 0])) for i in range(len(FINDINGS))]
    defined = [i for i in range(len(FINDINGS)) if min(pos_patients[i], neg_patients[i]) >= rule.min_patients]
    rng = np.random.default_rng(rule.seed)
    gains: list[np.ndarray] = []  # [b, defined findings] per block
    for w in resample_weights(clusters, rule.n_boot, rng):
        block = [
            weighted_auroc(labels[:, i], challenger[:, i], w) - weighted_auroc(labels[:, i], champion[:, i], w)
            for i in defined
        ]
        gains.append(np.stack(block, axis=1) if block else np.empty((len(w), 0)))
    diffs = np.concatenate(gains) if gains else np.empty((0, 0))
    alpha = 1 - rule.level
    per_finding_alpha = alpha / max(len(defined), 1)
    findings: dict[str, FindingDifference] = {}
    for i, f in enumerate(FINDINGS):
        new, old = auroc(labels[:, i], challenger[:, i]), auroc(labels[:, i], champion[:, i])
        gain = None if new is None or old is None else new - old
        upper = None
        if i in defined:
            column = diffs[:, defined.index(i)]
            column = column[~np.isnan(column)]
            upper = float(np.percentile(column, 100 * (1 - per_finding_alpha))) if len(column) else None
        regression = upper is not None and upper < -rule.max_drop
        findings[f] = FindingDifference(
            int((labels[:, i] == 1).sum()), pos_patients[i], i in defined, new, old, gain, upper, regression
        )
    challenger_mean = mean_defined([d.challenger for d in findings.values() if d.compared])
    champion_mean = mean_defined([d.champion for d in findings.values() if d.compared])
    mean_gain = lower = interval = None
    if defined:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no finding has both classes
            means = np.nanmean(diffs, axis=1)
        means = means[~np.isnan(means)]
        mean_gain = float(challenger_mean - champion_mean)  # type: ignore[operator]
        if len(means):
            lower = float(np.percentile(means, 100 * alpha))
            lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            interval = (float(lo), float(hi))
    return PairedComparison(
        n_images=n,
        n_patients=int(clusters.max()) + 1 if n else 0,
        n_boot=rule.n_boot,
        level=rule.level,
        challenger_mean=challenger_mean,
        champion_mean=champion_mean,
        mean_gain=mean_gain,
        mean_gain_lower=lower,
        mean_gain_interval=interval,
        findings=findings,
    )


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reasons: tuple[str, ...]


def decide(comparison: PairedComparison, rule: GateRule) -> Verdict:
    """The gate's rule on a paired comparison (see the module docstring)."""
    c = comparison
    compared = [f for f, d in c.findings.items() if d.compared]
    left_out = ", ".join(f"{f} ({d.n_pos_patients})" for f, d in c.findings.items() if not d.compared)
    if c.mean_gain is None or c.mean_gain_lower is None:
        return Verdict(
            False,
            (
                f"no finding has {rule.min_patients} positive and negative patients in the validation images: "
                f"nothing to compare on (positive patients: {left_out})",
            ),
        )
    better = c.mean_gain_lower > rule.margin
    reasons = [
        f"mean val AUROC over {len(compared)} findings {c.challenger_mean:.4f} vs champion {c.champion_mean:.4f} "
        "on the same "
        f"{c.n_images} images of {c.n_patients} patients: gain {c.mean_gain:+.4f}, one-sided {c.level:.0%} lower "
        f"bound {c.mean_gain_lower:+.4f} {'>' if better else '<='} margin {rule.margin:+.4f}"
        + ("" if better else " (not a significant improvement)")
    ]
    regressions = [(f, d) for f, d in c.findings.items() if d.regression]
    for f, d in regressions:
        reasons.append(
            f"{f} regresses: {d.champion:.4f} -> {d.challenger:.4f}, upper bound of the gain {d.upper:+.4f} "
            f"< -{rule.max_drop:.4f}"
        )
    if not regressions:
        reasons.append(f"no finding regresses significantly by more than {rule.max_drop:.4f}")
    if left_out:
        reasons.append(f"not compared, fewer than {rule.min_patients} positive patients: {left_out}")
    return Verdict(better and not regressions, tuple(reasons))
