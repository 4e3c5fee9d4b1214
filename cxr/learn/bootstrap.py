"""Bootstrap resampling over patients, and AUROC on many resamples at once.

Chest X-ray splits hold several images per patient (NIH test: about 9), and a patient's images are
strongly correlated. Resampling images as if they were independent makes intervals far too narrow, so
every interval the project prints resamples *patients* (a cluster bootstrap): a resample draws as many
patients as the set has, with replacement, and takes all images of each drawn patient. A resample is
expressed as a weight per image (how many times its patient was drawn), so one sort of the scores serves
every resample: :func:`weighted_auroc` computes the Mann-Whitney statistic with weights, ties counted
half, which is exactly scikit-learn's ``roc_auc_score`` with ``sample_weight``; :func:`weighted_auprc`
likewise gives ``average_precision_score``.

Without patient keys (``groups=None``) each image is its own cluster: the ordinary bootstrap.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CHUNK = 256  # resamples per block: bounds memory to CHUNK x images weights at a time
LEVEL = 0.95  # the level of every two-sided interval the project prints


def cluster_index(groups: np.ndarray | None, n: int) -> np.ndarray:
    """For each row, the index of its cluster (patient); each row its own cluster when ``groups`` is None."""
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} patient keys for {n} rows")
    _, inverse = np.unique(groups, return_inverse=True)
    return inverse.reshape(-1)


def resample_weights(
    clusters: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = CHUNK
) -> Iterator[np.ndarray]:
    """Blocks of ``[b, rows]`` weights: how often each row's cluster was drawn, per resample."""
    n_clusters = int(clusters.max()) + 1 if len(clusters) else 0
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        counts = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=b)
        yield counts[:, clusters].astype(np.float64)
        done += b


def weighted_auroc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of scores ``p`` for labels ``y`` under each row of ``weights`` ([b, n]); NaN where undefined.

    Rows labelled neither 1 nor 0 (NaN: a missing label) weigh nothing: with a resample's integer weights the
    result is exactly that of the rows without them."""
    order = np.argsort(p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    w = weights[:, order]
    starts = np.flatnonzero(np.r_[True, p_sorted[1:] != p_sorted[:-1]])  # first row of each tied score
    pos = np.add.reduceat(np.where(y_sorted == 1, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(y_sorted == 0, w, 0.0), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    numerator = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def weighted_auprc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision of scores ``p`` for labels ``y`` under each row of ``weights`` ([b, n]); NaN where no
    positive weighs anything. The sum over score thresholds, highest first, of the recall gained times the
    precision there (tied scores one threshold): exactly scikit-learn's ``average_precision_score`` with
    ``sample_weight``. Rows whose label is missing (NaN) weigh nothing."""
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    w = weights[:, order]
    ends = np.flatnonzero(np.r_[p_sorted[1:] != p_sorted[:-1], True])  # last row of each tied score
    tp = np.cumsum(np.where(y_sorted == 1, w, 0.0), axis=1)[:, ends]
    fp = np.cumsum(np.where(y_sorted == 0, w, 0.0), axis=1)[:, ends]
    total = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        gained = np.diff(tp, axis=1, prepend=0.0) / total
        return np.where(total[:, 0] > 0, (gained * precision).sum(axis=1), np.nan)


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """The two-sided percentile interval of the defined (non-NaN) values; None when none is defined."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)
